#!/usr/bin/env bash
# The main job: build vscsid, create a sparse disk image, start vscsid on it, and boot a
# small Linux guest (QEMU, TCG) whose only disk is that LUN. The guest prints the SCSI
# devices it sees, INQUIRY and capacity, makes a filesystem, mounts it and shows df.
# Installs the Debian packages it needs first. Usage: scripts/demo.sh [disk-size]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
size=${1:-1G}
source tests/qemu/lib.sh

scripts/install-deps.sh
cargo build --release
build_guest

work_dir

truncate -s "$size" "$work/disk.img"
echo "demo: sparse disk image $work/disk.img ($size)"
sock=$work/vscsid.sock
target/release/vscsid --socket "$sock" --disk "$work/disk.img,cache=none" --num-queues 2 &
daemon_pid=$!
wait_vscsid "$sock" demo

echo "demo: booting the guest (TCG, about 20 s)"
vhost_user_scsi "$sock"
guest_qemu -l 3 stdio "vscsid.test=demo vscsid.disks=1" "${vus_args[@]}"
timeout 300 "${qemu_cmd[@]}" | tee "$work/serial.log" | tr -d '\r' |
  sed -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | grep -av "^SeaBIOS\|^Booting from\|^Probing EDD"

wait "$daemon_pid" 2>/dev/null || true
daemon_pid=""
allocated=$(du -h "$work/disk.img" | cut -f1)
echo "demo: the image now allocates $allocated on the host"
grep -aq "VSCSID-RESULT PASS" "$work/serial.log" || { echo "demo: the guest reported a failure" >&2; exit 1; }
echo "demo: done"
