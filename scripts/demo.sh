#!/usr/bin/env bash
# The main job: build vscsid, create a sparse disk image, start vscsid on it, and boot a
# small Linux guest (QEMU, TCG) whose only disk is that LUN. The guest prints the SCSI
# devices it sees, INQUIRY and capacity, makes a filesystem, mounts it and shows df.
# Installs the Debian packages it needs first. Usage: scripts/demo.sh [disk-size]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
size=${1:-1G}

scripts/install-deps.sh
cargo build --release
scripts/build-guest.sh target/guest

work=$(mktemp -d)
daemon_pid=""
cleanup() {
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then kill "$daemon_pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s "$size" "$work/disk.img"
echo "demo: sparse disk image $work/disk.img ($size)"
sock=$work/vscsid.sock
target/release/vscsid --socket "$sock" --disk "$work/disk.img,cache=none" --num-queues 2 &
daemon_pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
[[ -S $sock ]] || { echo "demo: vscsid did not start" >&2; exit 1; }

echo "demo: booting the guest (TCG, about 20 s)"
timeout 300 qemu-system-x86_64 \
  -machine q35 -accel tcg -cpu max -m 512M -smp 2 \
  -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
  -kernel target/guest/vmlinuz -initrd target/guest/initrd.gz \
  -append "console=ttyS0 loglevel=3 panic=-1 vscsid.test=demo vscsid.disks=1" \
  -nographic -no-user-config -nodefaults -serial stdio -monitor none \
  -chardev socket,id=vus0,path="$sock" \
  -device vhost-user-scsi-pci,chardev=vus0,num_queues=2 | tee "$work/serial.log" | tr -d '\r' |
  sed -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | grep -av "^SeaBIOS\|^Booting from\|^Probing EDD"

wait "$daemon_pid" 2>/dev/null || true
daemon_pid=""
allocated=$(du -h "$work/disk.img" | cut -f1)
echo "demo: the image now allocates $allocated on the host"
grep -aq "VSCSID-RESULT PASS" "$work/serial.log" || { echo "demo: the guest reported a failure" >&2; exit 1; }
echo "demo: done"
