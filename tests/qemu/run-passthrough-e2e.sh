#!/usr/bin/env bash
# QEMU end-to-end test of local SCSI passthrough: the build machines' kernel has no SCSI
# host adapters and no scsi_debug, so vscsid runs inside a TCG guest whose kernel has
# scsi_debug, against a scsi_debug disk (as `--sg /dev/sgN` and as `--disk
# /dev/sdX,passthrough`) and tape (ptype=1), driven by the project's own vhost-user frontend
# in the same guest (examples/passthrough_check.rs), which compares every answer with what
# the device gives straight through SG_IO: INQUIRY, VPD, READ CAPACITY, MODE SENSE unchanged,
# REPORT LUNS from vscsid's table, data written and read back both ways, an injected medium
# error's sense, a vendor opcode's sense, tape commands, and a device deleted at run time
# answered without a hang and, for the sg LUN, served again once a host scan brings it back. No vhost-user device in this guest: nested TCG would be slow.
# Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
TIMEOUT=${VSCSID_E2E_TIMEOUT:-600}
source tests/qemu/lib.sh

need_tools run-passthrough-e2e qemu-system-x86_64 cargo
cargo build --release --quiet
guest=$here/target/guest-passthrough
scripts/build-guest.sh "$guest" passthrough

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
serial=$work/serial.log
# VSCSID_PT_BENCH_ROUNDS=N: N more interleaved rounds of the sg LUN's two engines;
# VSCSID_PT_SDEBUG_NDELAY=ns: scsi_debug answers after that delay (a timer) instead of at once.
guest_qemu -m 1G "file:$serial" "vscsid.test=passthrough vscsid.disks=0 vscsid.bench_rounds=${VSCSID_PT_BENCH_ROUNDS:-0}${VSCSID_PT_SDEBUG_NDELAY:+ vscsid.sdebug_ndelay=$VSCSID_PT_SDEBUG_NDELAY}"
set +e
timeout "$TIMEOUT" "${qemu_cmd[@]}" > "$work/qemu.log" 2>&1
qemu_rc=$?
set -e

source tests/qemu/report.sh
checks=(pt-scsi-debug)
for prefix in sgthreads- sg- block-; do
  checks+=("${prefix}pt-vscsid-started" "${prefix}pt-inquiry-unchanged" "${prefix}pt-inquiry-is-scsi-debug"
    "${prefix}pt-vpd-00-unchanged" "${prefix}pt-vpd-80-unchanged" "${prefix}pt-vpd-83-unchanged"
    "${prefix}pt-read-capacity-unchanged" "${prefix}pt-mode-sense-unchanged"
    "${prefix}pt-report-luns-by-vscsid" "${prefix}pt-write-read-pattern"
    "${prefix}pt-injected-medium-error" "${prefix}pt-unknown-opcode-unchanged" "${prefix}pt-vscsid-log")
done
checks+=(sgthreads-pt-bench-ran sg-pt-bench-ran sg-pt-removed-device-answered sg-pt-daemon-serves-after-removal
  sg-pt-device-back sg-pt-read-after-return pt-scsi-debug-back block-pt-removed-device-answered block-pt-daemon-serves-after-removal pt-scsi-debug-tape
  tape-pt-vscsid-started tape-pt-tape-inquiry tape-pt-tape-rewind tape-pt-tape-write-filemarks
  tape-pt-tape-read-position tape-pt-tape-rewind-again tape-pt-vscsid-log)
report_guest_checks "$serial" "${checks[@]}"
report_powered_off "$serial" "$qemu_rc" "QEMU exited 0"
# What the sg LUN's two engines cost (4 KiB random reads of the RAM disk, IOPS under TCG):
# the device's own interfaces against the path through vscsid.
tr -d '\r' < "$serial" | grep -ao 'VSCSID-BENCH .*' | sed 's/^VSCSID-BENCH /bench: /' || true
if ((failed > 0)); then
  echo "--- serial (last 40 lines) ---"; tail -n 40 "$serial" || true
fi
echo "qemu-passthrough-e2e: $passed passed, $failed failed"
((failed == 0))
