#!/usr/bin/env bash
# QEMU end-to-end test: boots a Linux guest whose only disks are two LUNs served by vscsid
# over vhost-user-scsi (LUN 0: 256 MiB sparse, writable, cache=none; LUN 1: 64 MiB
# read-only, 4096-byte blocks, known content; LUN 2: 128 MiB sparse, writable, 4096-byte
# blocks) and checks in the guest: discovery and capacity, sg3-utils output, read-only
# behaviour, fio crc32c verification with direct I/O, ext4 mkfs/remount/checksums/fsck,
# discard (and, on the host, that the backing files are sparse again) on 512- and
# 4096-byte blocks, and that a rebooted guest finds its disks again.
# Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
TIMEOUT=${VSCSID_E2E_TIMEOUT:-900}
source tests/qemu/lib.sh

need_tools run-e2e qemu-system-x86_64 cargo
cargo build --release --quiet
build_guest

work_dir

truncate -s 256M "$work/lun0.img"
truncate -s 128M "$work/lun2.img"
head -c $((64 << 20)) /dev/urandom > "$work/lun1.img"
md5_1=$(md5sum < "$work/lun1.img" | cut -d' ' -f1)

sock=$work/vscsid.sock
target/release/vscsid --socket "$sock" \
  --disk "$work/lun0.img,cache=none" \
  --disk "$work/lun1.img,readonly,block-size=4096,cache=writeback" \
  --disk "$work/lun2.img,block-size=4096,physical-block-size=4096,cache=none" \
  --num-queues 2 > "$work/vscsid.log" 2>&1 &
daemon_pid=$!
wait_vscsid "$sock" run-e2e "$work/vscsid.log"

serial=$work/serial.log
vhost_user_scsi "$sock"
guest_qemu "file:$serial" \
  "vscsid.test=e2e vscsid.disks=3 vscsid.size0=$((256 << 20)) vscsid.size1=$((64 << 20)) vscsid.size2=$((128 << 20)) vscsid.md5_1=$md5_1" \
  "${vus_args[@]}"
set +e
timeout "$TIMEOUT" "${qemu_cmd[@]}" > "$work/qemu.log" 2>&1
qemu_rc=$?
set -e

# The daemon exits by itself when QEMU disconnects.
for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
daemon_alive=0
kill -0 "$daemon_pid" 2>/dev/null && daemon_alive=1

source tests/qemu/report.sh
report_guest_checks "$serial" disks-found capacity sg_inq sg_vpd-0x83 sg_vpd-0xb0 sg_vpd-0xb2 \
  sg_modes-caching sg_readcap sg_opcodes readonly-content readonly-refuses-writes \
  readonly-write-sense fio-crc32c ext4-remount-checksums e2fsck-clean blkdiscard \
  discard-reads-zero lun2-block-size lun2-fio-crc32c lun2-ext4-remount-checksums lun2-fstrim \
  lun2-e2fsck-clean reboot-disks-found reboot-marker

# Host side: discard punched the file's blocks out (only the reboot marker and a little
# metadata may be allocated), and QEMU ended by the guest powering off.
alloc=$(( $(stat -c %b "$work/lun0.img") * $(stat -c %B "$work/lun0.img") ))
if grep -aq "VSCSID-HOST discarded" "$serial" && (( alloc < (1 << 20) )); then
  report host-file-sparse PASS "lun0.img allocates $alloc bytes after blkdiscard"
else
  report host-file-sparse FAIL "lun0.img allocates $alloc bytes"
fi
# LUN 2: after fstrim of a file system whose 24 MiB of files were removed, the 4096-byte
# LUN's backing file holds no more than what the file system still uses (its metadata).
alloc2=$(( $(stat -c %b "$work/lun2.img") * $(stat -c %B "$work/lun2.img") ))
fs2=$(tr -d '\r' < "$serial" | grep -ao "VSCSID-HOST lun2-trimmed fs-bytes=[0-9]*" | tail -n 1 | sed 's/.*=//')
if [[ -n $fs2 ]] && (( fs2 > 0 && alloc2 <= fs2 )); then
  report lun2-host-file-sparse PASS "lun2.img allocates $alloc2 bytes after fstrim, the file system uses $fs2"
else
  report lun2-host-file-sparse FAIL "lun2.img allocates $alloc2 bytes, the file system uses ${fs2:-?}"
fi
report_powered_off "$serial" "$qemu_rc" "QEMU exited 0 after the second boot"
if [[ $daemon_alive -eq 0 ]]; then
  report daemon-exit-on-disconnect PASS "vscsid exited when QEMU disconnected"
else
  report daemon-exit-on-disconnect FAIL "vscsid still running after QEMU exited"
fi
if grep -aqiE "panic|error" "$work/vscsid.log"; then
  report daemon-log-clean FAIL "$(grep -aiE 'panic|error' "$work/vscsid.log" | head -3 | tr '\n' ';')"
else
  report daemon-log-clean PASS "no errors logged"
fi
report_qemu_log_clean "$work/qemu.log"

if ((failed > 0)); then
  echo "--- serial console (last 60 lines) ---"; tail -n 60 "$serial" || true
  echo "--- vscsid log ---"; tail -n 30 "$work/vscsid.log" || true
  echo "--- qemu log ---"; cat "$work/qemu.log" || true
fi
echo "qemu-e2e: $passed passed, $failed failed"
((failed == 0))
