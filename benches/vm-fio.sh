#!/usr/bin/env bash
# The same fio jobs inside a QEMU guest, against one raw file served three ways:
#   vscsid                 vhost-user-scsi-pci backed by vscsid (cache=none)
#   qemu-virtio-blk        QEMU's built-in virtio-blk-pci (aio=io_uring, cache.direct=on)
#   qemu-virtio-scsi       QEMU's built-in virtio-scsi-pci + scsi-hd (same options)
# On a host with KVM set ACCEL=kvm for meaningful numbers; here (TCG) it is a functional
# check. Prints one JSON object per system and workload.
# Usage: benches/vm-fio.sh [runtime-seconds]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
runtime=${1:-5}
ACCEL=${ACCEL:-tcg}

scripts/install-deps.sh >/dev/null
cargo build --release --quiet
scripts/build-guest.sh target/guest >/dev/null
work=$(mktemp -d)
daemon_pid=""
trap '[[ -n $daemon_pid ]] && kill $daemon_pid 2>/dev/null; rm -rf "$work"' EXIT
disk=$work/disk.img
fio --name=fill --filename="$disk" --rw=write --bs=1M --size=512M --direct=1 --ioengine=io_uring --output=/dev/null

boot() { # system, extra QEMU args...
  local system=$1; shift
  timeout 900 qemu-system-x86_64 -machine q35 -accel "$ACCEL" -cpu max -m 1G -smp 2 \
    -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
    -kernel target/guest/vmlinuz -initrd target/guest/initrd.gz \
    -append "console=ttyS0 loglevel=3 panic=-1 vscsid.test=fio vscsid.runtime=$runtime" \
    -nographic -no-user-config -nodefaults -serial "file:$work/$system.log" -monitor none "$@" \
    > /dev/null 2>&1 || true
  tr -d '\r' < "$work/$system.log" | grep -ao 'VSCSID-FIO .*' | sed "s/^VSCSID-FIO {/{\"system\": \"$system\", /"
  grep -aq "VSCSID-RESULT PASS" "$work/$system.log" || { echo "vm-fio: $system: the guest run failed" >&2; return 1; }
}

sock=$work/vscsid.sock
target/release/vscsid --socket "$sock" --disk "$disk,cache=none" --num-queues 2 2>/dev/null &
daemon_pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
boot vscsid -chardev socket,id=vus0,path="$sock" -device vhost-user-scsi-pci,chardev=vus0,num_queues=2
drive="file=$disk,if=none,id=d0,format=raw,aio=io_uring,cache.direct=on"
boot qemu-virtio-blk -drive "$drive" -device virtio-blk-pci,drive=d0,num-queues=2
boot qemu-virtio-scsi -drive "$drive" -device virtio-scsi-pci,id=scsi0,num_queues=2 -device scsi-hd,drive=d0,bus=scsi0.0
