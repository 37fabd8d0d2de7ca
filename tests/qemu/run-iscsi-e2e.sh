#!/usr/bin/env bash
# QEMU end-to-end test of an iSCSI passthrough LUN: tgtd serves a 128 MiB LUN on
# 127.0.0.1, vscsid logs in to it with its own initiator and serves it to a Linux guest as
# LUN 0 over vhost-user-scsi. The guest checks the target's INQUIRY, capacity, fio crc32c
# verification with direct I/O, and ext4 mkfs/remount/fsck.
# Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
TIMEOUT=${VSCSID_E2E_TIMEOUT:-600}
source tests/qemu/lib.sh

need_tools run-iscsi-e2e qemu-system-x86_64 cargo /usr/sbin/tgtd /usr/sbin/tgtadm
cargo build --release --quiet
build_guest

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  # tgtd ignores SIGTERM while it has targets: make sure nothing outlives the test.
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A free TCP port for the portal; tgtd's control number is derived from it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ctl=$((port % 32768 + 1))
iqn=iqn.2024-01.io.vscsid.test:e2e
truncate -s 128M "$work/target.img"
/usr/sbin/tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$port" > "$work/tgtd.log" 2>&1 &
pids+=($!)
tgtadm() { /usr/sbin/tgtadm -C "$ctl" --lld iscsi "$@"; }
tgt_export "$iqn" "$work/target.img"

sock=$work/vscsid.sock
target/release/vscsid --socket "$sock" --iscsi "iscsi://127.0.0.1:$port/$iqn/1" --num-queues 2 \
  > "$work/vscsid.log" 2>&1 &
pids+=($!)
wait_vscsid "$sock" run-iscsi-e2e "$work/vscsid.log"

serial=$work/serial.log
vhost_user_scsi "$sock"
guest_qemu "file:$serial" "vscsid.test=iscsi vscsid.disks=1 vscsid.size0=$((128 << 20))" \
  "${vus_args[@]}"
set +e
timeout "$TIMEOUT" "${qemu_cmd[@]}" > "$work/qemu.log" 2>&1
qemu_rc=$?
set -e

source tests/qemu/report.sh
report_guest_checks "$serial" iscsi-disk-found iscsi-inquiry-vendor iscsi-capacity \
  iscsi-fio-crc32c iscsi-ext4 iscsi-e2fsck-clean
report_powered_off "$serial" "$qemu_rc" "QEMU exited 0"
report_qemu_log_clean "$work/qemu.log"
if ((failed > 0)); then
  echo "--- serial (last 40 lines) ---"; tail -n 40 "$serial" || true
  echo "--- vscsid log ---"; tail -n 30 "$work/vscsid.log" || true
fi
echo "qemu-iscsi-e2e: $passed passed, $failed failed"
((failed == 0))
