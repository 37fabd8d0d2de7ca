#!/usr/bin/env bash
# QEMU end-to-end test of iSCSI multipath with real network failures. The test builds its
# own two network namespaces joined by two veth links (two paths):
#
#   ns "ini": vscsid  192.168.50.1 ==== p0 ==== 192.168.50.2  ns "tgt": tgtd
#                     192.168.51.1 ==== p1 ==== 192.168.51.2
#
# tgtd serves one LUN on both addresses; vscsid logs in through both (round-robin) and
# serves it to a Linux guest (vhost-user socket on the shared filesystem). While the guest
# runs fio with crc32c verification (in passes: every block written is read back and
# checked during the run), the script breaks the paths in turn:
#   1. path 0 link down (carrier lost, packets vanish: a silent path), then up again;
#   2. path 1 firewall DROP (silent), then removed;
#   3. path 0 firewall REJECT with TCP reset (a reset path), then removed;
#   4. both paths down for 3 s, less than no_path_retry (10 s): I/O only waits.
# The guest must finish fio with no error and no verification failure, and its kernel
# must log no I/O error. Then both paths go down for 14 s, longer than no_path_retry: the
# guest's reads must fail (HARDWARE ERROR / LOGICAL UNIT COMMUNICATION FAILURE once the
# queueing time is over) and work again when the paths return.
# ALUA (tgtd cannot change port group states): the scripted ALUA target
# (examples/alua_target.rs) serves a second LUN on two portals (127.0.0.1:3261 and :3262
# in vscsid's namespace, target port groups 1 and 2) and the guest runs the same fio on it
# at the same time. Before the path cuts, the script switches group 1 (the optimized one
# carrying the I/O) to standby and group 2 to active/optimized: the target's port
# counters must show the I/O moving to port 2; then group 1 goes through 2 s of
# transitioning back to optimized, group 2 to standby, and the I/O must return to port 1.
# fio on that LUN must also end with no error and no verification failure.
# The stall vscsid measured for each failover is printed
# ("failover: ..."); README numbers come from here.
# Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
TIMEOUT=${VSCSID_E2E_TIMEOUT:-600}
source tests/qemu/lib.sh

need_tools run-multipath-e2e qemu-system-x86_64 cargo ip iptables /usr/sbin/tgtd /usr/sbin/tgtadm
[[ $(id -u) == 0 ]] || { echo "run-multipath-e2e: needs root (network namespaces)" >&2; exit 1; }

cargo build --release --quiet
cargo build --release --quiet --example alua_target
build_guest

work=$(mktemp -d)
pids=()
cleanup() {
  stop_pids
  netns_cleanup
  rm -rf "$work"
}
trap cleanup EXIT

two_path_netns mp
iqn=iqn.2024-01.io.vscsid.test:multipath
truncate -s 128M "$work/target.img"
netns_tgtd "$iqn" "$work/target.img" "$work/tgtd.log"

alua_ctl=$work/alua.ctl
echo "optimized non-optimized" > "$alua_ctl"
ip netns exec "$ini" target/release/examples/alua_target \
  --listen 127.0.0.1:3261,127.0.0.1:3262 --size-mib 64 --control "$alua_ctl" \
  --transition-secs 10 --lifetime-secs $((TIMEOUT + 600)) > "$work/alua-target.log" 2>&1 &
pids+=($!)

sock=$work/vscsid.sock
ip netns exec "$ini" env VSCSID_LOG=info target/release/vscsid --socket "$sock" \
  --iscsi "iscsi://192.168.50.2:3260/$iqn/1,path=192.168.51.2:3260,no-path-retry=10" \
  --iscsi "iscsi://127.0.0.1:3261/iqn.2024-01.io.vscsid.test:alua/0,path=127.0.0.1:3262,no-path-retry=10" \
  --num-queues 2 > "$work/vscsid.log" 2>&1 &
pids+=($!)
wait_vscsid "$sock" run-multipath-e2e "$work/vscsid.log"

serial=$work/serial.log
: > "$serial"
vhost_user_scsi "$sock"
guest_qemu "file:$serial" "vscsid.test=multipath vscsid.disks=2 vscsid.alua=1 vscsid.runtime=90" \
  "${vus_args[@]}"
"${qemu_cmd[@]}" > "$work/qemu.log" 2>&1 &
qemu=$!
pids+=($qemu)

log() { echo "[$(date +%T.%3N)] $*"; }
# Waits (bounded) until $1 matches in file $2 at least $3 times.
wait_for() {
  local deadline=$((SECONDS + ${4:-120}))
  while (( $(grep -ac -- "$1" "$2" || true) < $3 )); do
    (( SECONDS < deadline )) || { log "timed out waiting for '$1'"; return 1; }
    kill -0 "$qemu" 2>/dev/null || { log "QEMU exited early"; return 1; }
    sleep 0.2
  done
}
ups() { grep -ac "iSCSI path up" "$work/vscsid.log" || true; }
# The ALUA target's last count of READs and WRITEs served per port: "<port 1> <port 2>".
alua_io() {
  grep -a '^states=' "$work/alua-target.log" | tail -n 1 |
    sed -n 's/.* io=\([0-9]*\),\([0-9]*\) .*/\1 \2/p'
}
alua_states() { echo "$1 $2" > "$alua_ctl"; log "ALUA: port group states $1, $2"; }
alua_ok=1
alua_detail="not run"
alua_events() {
  local a0 b0 a1 b1 a2 b2 a3 b3 moved
  sleep 3
  read -r a0 b0 <<< "$(alua_io)"
  (( a0 > 0 )) || { alua_detail="no I/O on port 1 before the switch"; return 1; }
  alua_states standby optimized
  # The target prints its counters every second: these are from after the move.
  sleep 5
  read -r a1 b1 <<< "$(alua_io)"
  sleep 3
  read -r a2 b2 <<< "$(alua_io)"
  if ! (( b2 > b1 && a2 == a1 )); then
    alua_detail="I/O did not move to port 2 (port 1 $a1 -> $a2, port 2 $b1 -> $b2)"
    return 1
  fi
  moved="port 1 stayed at $a2, port 2 $b1 -> $b2"
  log "ALUA: I/O on port 2 ($moved)"
  alua_states transitioning standby
  sleep 2
  alua_states optimized standby
  sleep 5
  read -r a3 b3 <<< "$(alua_io)"
  sleep 3
  read -r a2 b2 <<< "$(alua_io)"
  if ! (( a2 > a3 && b2 == b3 )); then
    alua_detail="I/O did not return to port 1 (port 1 $a3 -> $a2, port 2 $b3 -> $b2)"
    return 1
  fi
  alua_detail="I/O moved to port 2 ($moved), back to port 1 after a transition ($a3 -> $a2)"
  log "ALUA: $alua_detail"
}
events_ok=1
run_events() {
  wait_for VSCSID-MP-FIO-START "$serial" 1 300 || return 1
  log "guest fio started"
  alua_events || alua_ok=0
  sleep 4
  local n
  n=$(ups)
  log "path 0: link down"; path_links down 0
  sleep 4
  log "path 0: link up"; path_links up 0
  wait_for "iSCSI path up" "$work/vscsid.log" $((n + 1)) 30 || return 1
  sleep 3
  n=$(ups)
  log "path 1: firewall DROP"
  path_firewall -I 1 DROP
  sleep 4
  log "path 1: DROP removed"
  path_firewall -D 1 DROP
  wait_for "iSCSI path up" "$work/vscsid.log" $((n + 1)) 30 || return 1
  sleep 3
  n=$(ups)
  log "path 0: firewall REJECT with TCP reset"
  path_firewall -I 0 REJECT --reject-with tcp-reset
  sleep 4
  log "path 0: REJECT removed"
  path_firewall -D 0 REJECT --reject-with tcp-reset
  wait_for "iSCSI path up" "$work/vscsid.log" $((n + 1)) 30 || return 1
  sleep 3
  n=$(ups)
  log "both paths: link down for 3 s (no_path_retry is 10 s)"
  path_links down 0 1
  sleep 3
  path_links up 0 1
  log "both paths: links up"
  wait_for "iSCSI path up" "$work/vscsid.log" $((n + 2)) 30 || return 1
  grep -aq VSCSID-MP-FIO-DONE "$serial" && { log "fio ended before the last event"; return 1; }
  return 0
}
run_events || events_ok=0

outage_ok=1
long_outage() {
  wait_for VSCSID-MP-OUTAGE-READY "$serial" 1 300 || return 1
  local n
  n=$(ups)
  log "both paths: link down for 14 s (longer than no_path_retry)"
  path_links down 0 1
  sleep 14
  path_links up 0 1
  log "both paths: links up"
  wait_for "iSCSI path up" "$work/vscsid.log" $((n + 1)) 30
}
((events_ok)) && { long_outage || outage_ok=0; }

set +e
deadline=$((SECONDS + TIMEOUT))
while kill -0 "$qemu" 2>/dev/null && (( SECONDS < deadline )); do sleep 1; done
kill "$qemu" 2>/dev/null
wait "$qemu"
qemu_rc=$?
set -e

source tests/qemu/report.sh
if ((events_ok)); then
  report path-events PASS "every cut made while fio ran; every path came back"
else
  report path-events FAIL "a cut or a path's return did not happen in time"
fi
if ((outage_ok)); then
  report long-outage PASS "both paths cut for longer than no_path_retry, then restored"
else
  report long-outage FAIL "the long outage did not run to the end"
fi
if ((alua_ok)); then
  report alua-switch PASS "$alua_detail"
else
  report alua-switch FAIL "$alua_detail"
fi
# Each group went standby once: vscsid logged both paths' change.
n=$(sed 's/\x1b\[[0-9;]*m//g' "$work/vscsid.log" | grep -acE 'ALUA state.* state="?standby' || true)
report alua-states-followed "$( ((n >= 2)) && echo PASS || echo FAIL)" \
  "$n changes to standby logged by vscsid"
report_guest_checks "$serial" mp-disk-found mp-alua-disk-found mp-fio-crc32c-verify \
  mp-alua-fio-crc32c-verify mp-no-guest-errors mp-outage-past-no-path-retry
report_powered_off "$serial" "$qemu_rc" "QEMU exited 0"
report_qemu_log_clean "$work/qemu.log"
# The stalls vscsid measured: silence before detection plus reissue, per failover.
grep -a "iSCSI path failed" "$work/vscsid.log" | sed 's/\x1b\[[0-9;]*m//g' |
  sed -n 's/.*portal="\([^"]*\)".*silent_ms=\([0-9]*\) stall_ms=\([0-9]*\) reissued=\([0-9]*\) failed=\([0-9]*\).*/failover: portal \1 stall \3 ms (silent \2 ms), reissued \4, failed \5/p'
if ((failed > 0)); then
  echo "--- serial (last 40 lines) ---"; tail -n 40 "$serial" || true
  echo "--- vscsid log ---"; tail -n 30 "$work/vscsid.log" || true
  echo "--- ALUA target ---"; tail -n 5 "$work/alua-target.log" || true
fi
echo "qemu-multipath-e2e: $passed passed, $failed failed"
((failed == 0))
