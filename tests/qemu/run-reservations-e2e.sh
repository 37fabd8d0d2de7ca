#!/usr/bin/env bash
# QEMU end-to-end test of persistent reservations on a shared disk: two Linux guests, each
# with its own vscsid (one per VM, as in production), share one image as LUN 0 (and a
# small mailbox image as LUN 1, through which the guests take turns). The daemons keep the
# reservation state in one state directory. Guest A registers and reserves (exclusive
# access) and writes; guest B registers, sees both keys and A's reservation, is fenced
# (its writes and reads fail), preempts and aborts A and writes; A's writes then fail
# while its reads work (write exclusive); B clears. Both daemons' logs must be clean.
# Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
TIMEOUT=${VSCSID_E2E_TIMEOUT:-600}
source tests/qemu/lib.sh

need_tools run-reservations-e2e qemu-system-x86_64 cargo sg_persist
cargo build --release --quiet
build_guest

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s 64M "$work/cluster.img"
truncate -s 1M "$work/mailbox.img"
for role in a b; do
  target/release/vscsid --socket "$work/$role.sock" --num-queues 2 \
    --state-dir "$work/state" --initiator-id "iqn.2026-12.io.vscsid.test:node-$role" \
    --disk "$work/cluster.img,shared,cache=none" --disk "$work/mailbox.img,shared,cache=none" \
    > "$work/vscsid-$role.log" 2>&1 &
  pids+=($!)
  wait_vscsid "$work/$role.sock" run-reservations-e2e "$work/vscsid-$role.log"
done

qemu_pids=()
for role in a b; do
  vhost_user_scsi "$work/$role.sock"
  guest_qemu "file:$work/serial-$role.log" "vscsid.test=pr vscsid.role=$role vscsid.disks=2" \
    "${vus_args[@]}"
  timeout "$TIMEOUT" "${qemu_cmd[@]}" > "$work/qemu-$role.log" 2>&1 &
  qemu_pids+=($!)
done
rcs=()
for p in "${qemu_pids[@]}"; do
  rc=0
  wait "$p" || rc=$?
  rcs+=("$rc")
done

source tests/qemu/report.sh
report_guest_checks "$work/serial-a.log" pr-a-register pr-a-reserve-exclusive-access \
  pr-a-holder-writes pr-a-preempted-write-fails pr-a-preempted-reads pr-a-key-removed
report_guest_checks "$work/serial-b.log" pr-b-register pr-b-sees-both-keys \
  pr-b-sees-reservation pr-b-fenced-write-fails pr-b-fenced-read-fails \
  pr-b-preempt-and-abort pr-b-writes-after-preempt pr-b-clear
report_prefix=pr-a-
report_powered_off "$work/serial-a.log" "${rcs[0]}" "QEMU exited 0"
report_prefix=pr-b-
report_powered_off "$work/serial-b.log" "${rcs[1]}" "QEMU exited 0"
report_prefix=""
# The fenced guests' kernels saw RESERVATION CONFLICT: Linux reports it as a "critical
# nexus error" (BLK_STS_NEXUS), and a conflict is the only thing that gives one.
n=$(cat "$work/serial-a.log" "$work/serial-b.log" | grep -ac "critical nexus error" || true)
if ((n > 0)); then report pr-guests-saw-conflicts PASS "$n kernel lines"; else
  report pr-guests-saw-conflicts FAIL "no 'critical nexus error' in the guests' logs"; fi
for role in a b; do
  if grep -qE " (ERROR|WARN) " "$work/vscsid-$role.log"; then
    report "pr-vscsid-$role-log-clean" FAIL "$(grep -E ' (ERROR|WARN) ' "$work/vscsid-$role.log" | head -n 1)"
  else
    report "pr-vscsid-$role-log-clean" PASS "no warnings or errors"
  fi
done
if ((failed > 0)); then
  # Kept for a look after the run.
  mkdir -p target/reservations-e2e
  cp "$work"/*.log target/reservations-e2e/ 2>/dev/null || true
  for role in a b; do
    echo "--- serial $role (last 30 lines) ---"; tail -n 30 "$work/serial-$role.log" || true
    echo "--- vscsid $role log ---"; tail -n 20 "$work/vscsid-$role.log" || true
  done
fi
echo "qemu-reservations-e2e: $passed passed, $failed failed"
((failed == 0))
