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
source tests/qemu/lib.sh

scripts/install-deps.sh >/dev/null
cargo build --release --quiet
build_guest >/dev/null
work_dir
disk=$work/disk.img
fio --name=fill --filename="$disk" --rw=write --bs=1M --size=512M --direct=1 --ioengine=io_uring --output=/dev/null

boot() { # system, extra QEMU args...
  local system=$1; shift
  guest_qemu -a "$ACCEL" -m 1G -l 3 "file:$work/$system.log" \
    "vscsid.test=fio vscsid.runtime=$runtime" "$@"
  timeout 900 "${qemu_cmd[@]}" > /dev/null 2>&1 || true
  tr -d '\r' < "$work/$system.log" | grep -ao 'VSCSID-FIO .*' | sed "s/^VSCSID-FIO {/{\"system\": \"$system\", /"
  grep -aq "VSCSID-RESULT PASS" "$work/$system.log" || { echo "vm-fio: $system: the guest run failed" >&2; return 1; }
}

sock=$work/vscsid.sock
target/release/vscsid --socket "$sock" --disk "$disk,cache=none" --num-queues 2 2>/dev/null &
daemon_pid=$!
wait_vscsid "$sock" vm-fio
vhost_user_scsi "$sock"
boot vscsid "${vus_args[@]}"
drive="file=$disk,if=none,id=d0,format=raw,aio=io_uring,cache.direct=on"
boot qemu-virtio-blk -drive "$drive" -device virtio-blk-pci,drive=d0,num-queues=2
boot qemu-virtio-scsi -drive "$drive" -device virtio-scsi-pci,id=scsi0,num_queues=2 -device scsi-hd,drive=d0,bus=scsi0.0
