#!/usr/bin/env bash
# QEMU end-to-end test of persistent reservations on an iSCSI LUN with two paths. tgtd (in
# a network namespace of its own) serves one LUN on two addresses; vscsid (in another)
# logs in through both, policy failover (path 0 carries the I/O), and serves it to a
# Linux guest as LUN 0, with a small mailbox disk as LUN 1 through which the host tells
# the guest what it did. The guest (guest-init.sh, mode iscsi-pr), with sg_persist:
#   1. registers a key: READ KEYS lists it twice (tgtd keeps one registration per I_T
#      nexus, and vscsid registered both paths); reserves, type 5 (write exclusive,
#      registrants only);
#   2. runs fio with crc32c verification; the host cuts path 0 (firewall DROP: a silent
#      path) and, once vscsid has seen it fail, says CUT: the guest's writes (read back)
#      still succeed, through path 1, and READ RESERVATION still shows its key;
#   3. the host restores path 0 and waits until vscsid has registered the path's new
#      session before it serves, then says RESTORED: fio ends with every block verified,
#      READ KEYS lists the key on both paths again (and on path 0's old nexus, which tgtd
#      keeps), the reservation is still there, writes go through path 0 again (failback;
#      vscsid ctl paths counts them);
#   4. clears the registrations.
# A second initiator (examples/iscsi_witness.rs, its own initiator name, straight to
# tgtd) checks the reservation from outside: while path 0 is cut and after it came back
# its writes get RESERVATION CONFLICT and its reads succeed; after the guest's CLEAR its
# write succeeds. Prints one line per check and "N passed, M failed"; exits non-zero on
# any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
TIMEOUT=${VSCSID_E2E_TIMEOUT:-600}
source tests/qemu/lib.sh

need_tools run-iscsi-reservations-e2e qemu-system-x86_64 cargo ip iptables /usr/sbin/tgtd \
  /usr/sbin/tgtadm sg_persist
[[ $(id -u) == 0 ]] || { echo "run-iscsi-reservations-e2e: needs root (network namespaces)" >&2; exit 1; }

cargo build --release --quiet
cargo build --release --quiet --example iscsi_witness
build_guest

work=$(mktemp -d)
pids=()
cleanup() {
  stop_pids
  netns_cleanup
  rm -rf "$work"
}
trap cleanup EXIT

two_path_netns ipr
iqn=iqn.2024-01.io.vscsid.test:reservations
truncate -s 64M "$work/target.img"
truncate -s 1M "$work/mailbox.img"
netns_tgtd "$iqn" "$work/target.img" "$work/tgtd.log"

sock=$work/vscsid.sock
log_file=$work/vscsid.log
ip netns exec "$ini" env VSCSID_LOG=info target/release/vscsid --socket "$sock" \
  --iscsi "iscsi://192.168.50.2:3260/$iqn/1,path=192.168.51.2:3260,policy=failover,no-path-retry=30" \
  --disk "$work/mailbox.img,readonly" --num-queues 2 --control "$work/ctl.sock" \
  > "$log_file" 2>&1 &
pids+=($!)
wait_vscsid "$sock" run-iscsi-reservations-e2e "$log_file"

serial=$work/serial.log
: > "$serial"
vhost_user_scsi "$sock"
guest_qemu "file:$serial" "vscsid.test=iscsi-pr vscsid.disks=2 vscsid.runtime=40" "${vus_args[@]}"
"${qemu_cmd[@]}" > "$work/qemu.log" 2>&1 &
qemu=$!
pids+=($qemu)

source tests/qemu/report.sh
log() { echo "[$(date +%T.%3N)] $*"; }
# say <word>: the host's word at the start of the mailbox, for the guest's hear.
say() {
  printf '%-511s\n' "$1" | dd of="$work/mailbox.img" bs=512 count=1 conv=notrunc,fsync 2>/dev/null
  log "told the guest: $1"
}
# guest_at <marker> <seconds>: waits (bounded) for the guest's marker on the console.
guest_at() {
  wait_match "$1" "$serial" 1 "$2" "$qemu" || { log "the guest never printed $1"; return 1; }
}
# vscsid_logged <regex> <count> <seconds>: waits (bounded) for vscsid's log lines.
vscsid_logged() {
  wait_match "$1" "$log_file" "$2" "$3" || { log "vscsid never logged '$1' ($2 times)"; return 1; }
}
# witness <check> <expected line regex> <step>...: the second initiator, from tgtd's
# namespace, whose traffic to 192.168.50.2 stays local: no firewall rule touches it.
witness() {
  local name=$1 want=$2 out
  shift 2
  out=$(ip netns exec "$tgt" target/release/examples/iscsi_witness \
    "iscsi://192.168.50.2:3260/$iqn/1" iqn.2024-01.io.vscsid.test:witness "$@" 2>&1 | tr '\n' ' ')
  if grep -qE -- "$want" <<< "$out"; then report "$name" PASS "$out"; else report "$name" FAIL "$out"; fi
}
path0=192.168.50.2:3260
joined() { grep -a "registration applied to the path" "$log_file" | grep -ac "$path0" || true; }
failed_paths() { grep -ac "iSCSI path failed" "$log_file" || true; }
ups() { grep -ac "iSCSI path up" "$log_file" || true; }
# path0_ios: the commands path 0 has carried, as `vscsid ctl paths` counts them.
path0_ios() {
  target/release/vscsid ctl --control "$work/ctl.sock" paths 0:0 |
    awk 'NR == 1 { for (i = 1; i < NF; i++) if ($i == "ios") print $(i + 1) }'
}

events_ok=1
run_events() {
  guest_at VSCSID-IPR-FIO-START 300 || return 1
  sleep 3
  local n_failed n_up n_joined
  n_failed=$(failed_paths); n_up=$(ups); n_joined=$(joined)
  log "path 0: firewall DROP"
  path_firewall -I 0 DROP
  vscsid_logged "iSCSI path failed" $((n_failed + 1)) 30 || return 1
  witness ipr-witness-conflict-path-down 'write:110000 status=0x18 .*read:110000 status=0x00' \
    write:110000 read:110000
  say CUT
  guest_at VSCSID-IPR-CHECKED-DOWN 120 || return 1
  log "path 0: DROP removed"
  path_firewall -D 0 DROP
  vscsid_logged "iSCSI path up" $((n_up + 1)) 60 || return 1
  # Registered before it carries guest I/O: vscsid logs the registration of the new session.
  local deadline=$((SECONDS + 30))
  while (( $(joined) <= n_joined )); do
    (( SECONDS < deadline )) || { log "path 0 was not registered again"; return 1; }
    sleep 0.1
  done
  report ipr-rejoined-path-registered PASS "vscsid registered path 0's new session with the guest's key"
  local ios
  ios=$(path0_ios)
  say RESTORED
  guest_at VSCSID-IPR-WITNESS 180 || return 1
  if (( $(path0_ios) > ios )); then
    report ipr-path0-carries-io-again PASS "path 0's commands $ios -> $(path0_ios) after its return"
  else
    report ipr-path0-carries-io-again FAIL "path 0's commands stayed at $ios"
  fi
  witness ipr-witness-conflict-restored \
    'write:110000 status=0x18 .*read:110000 status=0x00 .*keys status=0x00 keys=0x1f2e3d4c,0x1f2e3d4c,0x1f2e3d4c ' \
    write:110000 read:110000 keys
  say WITNESSED
  guest_at VSCSID-IPR-CLEARED 120 || return 1
  witness ipr-witness-writes-after-clear 'write:110000 status=0x00 .*keys status=0x00 keys= ' \
    write:110000 keys
}
run_events || events_ok=0

set +e
deadline=$((SECONDS + TIMEOUT))
while kill -0 "$qemu" 2>/dev/null && (( SECONDS < deadline )); do sleep 1; done
kill "$qemu" 2>/dev/null
wait "$qemu"
qemu_rc=$?
set -e

if ((events_ok)); then
  report ipr-path-events PASS "path 0 cut under fio and restored, every step in time"
else
  report ipr-path-events FAIL "a step did not happen in time"
fi
report_guest_checks "$serial" ipr-disks ipr-register ipr-key-on-both-paths ipr-reserve \
  ipr-reservation-shown ipr-writes-path-down ipr-reservation-held-path-down \
  ipr-key-registered-path-down ipr-fio-crc32c-verify ipr-key-on-both-paths-again \
  ipr-reservation-held-after-restore ipr-writes-after-restore ipr-no-guest-errors ipr-clear \
  ipr-no-keys-after-clear
report_powered_off "$serial" "$qemu_rc" "QEMU exited 0"
report_qemu_log_clean "$work/qemu.log"
grep -a "iSCSI path failed" "$log_file" | sed 's/\x1b\[[0-9;]*m//g' |
  sed -n 's/.*portal="\([^"]*\)".*stall_ms=\([0-9]*\).*/failover: portal \1 stall \2 ms/p'
if ((failed > 0)); then
  # Kept for a look after the run.
  mkdir -p target/iscsi-reservations-e2e
  cp "$work"/*.log target/iscsi-reservations-e2e/ 2>/dev/null || true
  echo "--- serial (last 40 lines) ---"; tail -n 40 "$serial" || true
  echo "--- vscsid log ---"; tail -n 30 "$log_file" || true
fi
echo "qemu-iscsi-reservations-e2e: $passed passed, $failed failed"
((failed == 0))
