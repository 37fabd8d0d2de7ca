#!/usr/bin/env bash
# QEMU 10 end-to-end test of restarting vscsid under a running guest. QEMU 10.0 (from
# scripts/install-qemu10.sh, fetched when missing) attaches the guest's virtio-scsi
# controller through a chardev with reconnect-ms=, so it connects again when a new vscsid
# listens on the socket. The guest runs fio with crc32c verification (four jobs, 4 KiB and
# 64 KiB random writes with 8 and 4 in flight, over both request queues; every block read
# back and checked during the run) on a vscsid LUN, and a probe of timestamped O_DIRECT
# reads that reports every pause in completed I/O. Two variants, each with its own guest:
#
#   kill: vscsid is SIGKILLed 3 times during the run (8, 20 and 32 s into fio, each after
#         the guest's I/O resumed from the previous one); each time a new vscsid starts at
#         once on the same socket and configuration.
#   term: the same with SIGTERM (a planned restart: vscsid drains in-flight I/O, flushes,
#         exits 0), then a new vscsid.
#   upgrade: SIGUSR2 (upgrade in place: vscsid drains, executes its program again with
#         the listening socket, same process); QEMU reconnects to it.
#
# Checks per variant: every restart done while fio ran, each new vscsid got QEMU's
# connection (bounded) and the guest's I/O resumed; fio's verification passes; the guest's
# probe reads all succeed; the guest kernel logs no I/O error, timeout, abort or reset
# after fio started; QEMU stays up and the guest powers off at the end. Prints, per
# restart, the stall the guest saw (gap between completed probe reads around the restart,
# and kill to first completed read after it) and when QEMU reconnected and restarted the
# device (its vhost_user_write trace); and whether QEMU negotiated in-flight tracking
# (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD: QEMU then sends GET_INFLIGHT_FD, request 31),
# which decides whether requests in flight at a SIGKILL can be found again. The test does
# not depend on it.
# Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
# VSCSID_RESTART_MODES="kill term" selects the variants. For a closer look:
# VSCSID_E2E_GUEST_LOGLEVEL=7 shows the guest kernel's SCSI messages on its console,
# VSCSID_LOG=debug raises vscsid's log level, VSCSID_E2E_KEEP=1 keeps the scratch directory
# (logs, consoles) and prints its path.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
TIMEOUT=${VSCSID_E2E_TIMEOUT:-600}     # per guest, from boot to power-off
MODES=${VSCSID_RESTART_MODES:-kill term upgrade}
RUNTIME=50                             # seconds of fio in the guest
KILL_AT=(8 20 32)                      # restarts, seconds after fio started
RECONNECT_MS=1000                      # QEMU's chardev reconnect-ms
GUEST_LOGLEVEL=${VSCSID_E2E_GUEST_LOGLEVEL:-4}
source tests/qemu/lib.sh
source tests/qemu/report.sh

need_tools run-restart-e2e cargo date awk
use_qemu10
cargo build --release --quiet
build_guest

work=$(mktemp -d)
# At exit: the children still in the job table (started here and not yet reaped, so their
# PIDs are still theirs) are stopped, then the scratch directory removed.
cleanup() {
  local p
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
  for p in $(jobs -p); do wait_exit "$p" 5 || kill -9 "$p" 2>/dev/null || true; done
  if [[ -n ${VSCSID_E2E_KEEP:-} ]]; then echo "run-restart-e2e: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

log() { echo "[$(date +%T.%3N)] $*"; }
now() { date +%s.%N; }
# Guest kernel messages (on its console: errors and worse) that mean I/O went wrong.
console_errors='I/O error|timing out command|abort|reset|not a head|virtqueue|Buffer I/O|blk_update_request'

sock=$work/vscsid.sock
img=$work/lun0.img
cat > "$work/vscsid.toml" <<EOF
[daemon]
socket = "$sock"
num_queues = 2

[[lun]]
lun = 0
path = "$img"
cache = "none"
EOF

# start_vscsid <log>: a vscsid on the shared configuration; its PID in $daemon.
start_vscsid() {
  VSCSID_LOG=${VSCSID_LOG:-info} target/release/vscsid --config "$work/vscsid.toml" > "$1" 2>&1 &
  daemon=$!
}

# run_variant <kill|term>: one guest, three restarts with that signal, then the checks.
run_variant() {
  local mode=$1 sig k serial qlog qemu h0 u0 t ok
  report_prefix=$mode-
  case $mode in kill) sig=KILL ;; term) sig=TERM ;; *) sig=USR2 ;; esac
  echo "--- $mode: vscsid restarted with SIG$sig under fio (QEMU $($qemu_bin --version | head -n 1 | awk '{ print $4 }')) ---"
  rm -f "$img" "$sock"
  truncate -s 256M "$img"
  serial=$work/$mode-serial.log
  qlog=$work/$mode-qemu.log
  : > "$serial"
  vlogs=("$work/$mode-vscsid-0.log")
  start_vscsid "${vlogs[0]}"
  wait_match "listening" "${vlogs[0]}" 1 10 "$daemon" || { cat "${vlogs[0]}"; exit 1; }

  vhost_user_scsi "$sock" "reconnect-ms=$RECONNECT_MS"
  guest_qemu -l "$GUEST_LOGLEVEL" "file:$serial" "vscsid.test=restart vscsid.disks=1 vscsid.runtime=$RUNTIME" \
    "${vus_args[@]}" -msg timestamp=on -trace vhost_user_write
  "${qemu_cmd[@]}" > "$qlog" 2>&1 &
  qemu=$!
  local qemu_start=$SECONDS

  kill_t=(); conn_ms=(); old_rc=(); old_ms=(); restart_ok=(); resumed=()
  local events_ok=1 qemu_up=1 gaps stuck hung=0
  if wait_match "VSCSID-RS-FIO-START" "$serial" 1 300 "$qemu"; then
    h0=$(now)
    u0=$(tr -d '\r' < "$serial" | sed -n 's/.*VSCSID-RS-FIO-START \([0-9]*\).*/\1/p' | head -n 1)
    log "guest fio started (guest uptime ${u0}0 ms, $((SECONDS - qemu_start)) s after QEMU started)"
    for k in 1 2 3; do
      # The scheduled time, or at once when the previous restart took longer.
      t=$(awk -v a="$h0" -v b="${KILL_AT[k - 1]}" -v n="$(now)" 'BEGIN { d = a + b - n; print (d > 0 ? d : 0) }')
      sleep "$t"
      if grep -aq "VSCSID-RS-FIO-DONE" "$serial" || ! kill -0 "$qemu" 2>/dev/null; then
        log "fio ended or QEMU exited before restart $k"; events_ok=0
        kill -0 "$qemu" 2>/dev/null || qemu_up=0
        break
      fi
      gaps=$(grep -ac "VSCSID-GAP" "$serial" || true)
      stuck=$(grep -ac "VSCSID-STUCK" "$serial" || true)
      kill_t[k]=$(now)
      log "restart $k: SIG$sig to vscsid $daemon"
      kill -"$sig" "$daemon"
      ok=1
      if [[ $mode == upgrade ]]; then
        # The same process runs the program again and logs on in the same file.
        old_rc[k]="none (same process)"; old_ms[k]=0; vlogs[k]=${vlogs[0]}
        if wait_match "frontend connected" "${vlogs[0]}" $((k + 1)) 30 "$daemon"; then
          conn_ms[k]=$(ms_between "${kill_t[k]}" "$(log_time "$(grep -a 'frontend connected' "${vlogs[0]}" | sed -n "$((k + 1))p")")")
        else
          conn_ms[k]=""; ok=0
        fi
      elif wait_exit "$daemon" 45; then
        old_rc[k]=$exit_status
      else
        old_rc[k]="still running after 45 s"; ok=0
        kill -9 "$daemon" 2>/dev/null || true; wait_exit "$daemon" 5 || true
      fi
      if [[ $mode != upgrade ]]; then
        old_ms[k]=$(ms_between "${kill_t[k]}" "$(now)")
        vlogs[k]=$work/$mode-vscsid-$k.log
        start_vscsid "${vlogs[k]}"
        if wait_match "frontend connected" "${vlogs[k]}" 1 30 "$daemon"; then
          conn_ms[k]=$(ms_between "${kill_t[k]}" "$(log_time "$(grep -a 'frontend connected' "${vlogs[k]}" | head -n 1)")")
        else
          conn_ms[k]=""; ok=0
        fi
      fi
      # The guest's probe prints a gap when its first read after the stall completes.
      # (A stall too short to be a gap leaves the probe going: no VSCSID-STUCK line.)
      resumed[k]=1
      if ! wait_match "VSCSID-GAP" "$serial" $((gaps + 1)) 30 "$qemu" &&
        (( $(grep -ac "VSCSID-STUCK" "$serial" || true) > stuck )); then
        resumed[k]=0; ok=0
      fi
      log "restart $k: old vscsid ended (${old_rc[k]}) after ${old_ms[k]} ms; new vscsid connected ${conn_ms[k]:-never} ms after the signal; guest I/O resumed: ${resumed[k]}"
      restart_ok[k]=$ok
      kill -0 "$qemu" 2>/dev/null || qemu_up=0
      if [[ ${resumed[k]} == 0 ]]; then
        # A request the guest posted is never answered: virtio-scsi leaves timeouts to
        # the host, so the guest waits for it for ever. No point in going on.
        hung=1
        log "guest I/O did not resume: $(tr -d '\r' < "$serial" | grep -a 'VSCSID-STUCK' | tail -n 1 | sed 's/.*VSCSID-STUCK [0-9]* //')"
        events_ok=0
        break
      fi
    done
  else
    log "the guest's fio did not start"; events_ok=0
  fi
  grep -aq "VSCSID-RS-FIO-DONE" "$serial" && { log "fio ended before the last restart was over"; events_ok=0; }
  # fio ends RUNTIME s after it started; a guest whose requests are lost never gets there.
  if ((!hung)) && [[ -n ${h0:-} ]]; then
    t=$(awk -v a="$h0" -v r="$RUNTIME" -v n="$(now)" 'BEGIN { d = a + r + 60 - n; printf "%d", (d > 0 ? d : 0) }')
    if ! wait_match "VSCSID-RS-FIO-DONE" "$serial" 1 "$t" "$qemu" && kill -0 "$qemu" 2>/dev/null; then
      hung=1
      log "fio did not end $((RUNTIME + 60)) s after it started: $(tr -d '\r' < "$serial" | grep -a 'VSCSID-STUCK' | tail -n 1 | sed 's/.*VSCSID-STUCK [0-9]* //')"
    fi
  fi

  # The guest finishes its checks and powers off; the last vscsid then exits.
  local qemu_rc=0 left=$((TIMEOUT - (SECONDS - qemu_start)))
  ((hung)) && left=0
  if ! wait_exit "$qemu" "$left"; then
    ((hung)) || log "QEMU still running after $TIMEOUT s: stopping it"
    kill "$qemu"; wait_exit "$qemu" 10 || { kill -9 "$qemu"; wait_exit "$qemu" 5 || true; }
  fi
  qemu_rc=$exit_status
  local last_rc="still running 10 s after QEMU exited"
  if wait_exit "$daemon" 10; then last_rc=$exit_status; fi

  # --- checks ---
  if ((events_ok)); then
    report restarts-under-fio PASS "3 × SIG$sig while the guest's fio ran"
  else
    report restarts-under-fio FAIL "not every restart happened while fio ran"
  fi
  local expect_rc=137
  [[ $sig == TERM ]] && expect_rc=0
  [[ $sig == USR2 ]] && expect_rc="none (same process)"
  for k in 1 2 3; do
    [[ -n ${kill_t[k]:-} ]] || { report "restart-$k" FAIL "not done"; continue; }
    local detail="old vscsid exit ${old_rc[k]} after ${old_ms[k]} ms, new one connected ${conn_ms[k]:-never} ms after the signal, guest I/O resumed: $([[ ${resumed[k]} == 1 ]] && echo yes || echo no)"
    if [[ ${restart_ok[k]} == 1 && ${old_rc[k]} == "$expect_rc" ]]; then
      report "restart-$k" PASS "$detail"
    else
      [[ ${old_rc[k]} == "$expect_rc" ]] || detail+=" (expected exit $expect_rc)"
      report "restart-$k" FAIL "$detail"
    fi
  done
  report_guest_checks "$serial" rs-disk-found rs-fio-crc32c-verify rs-probe-reads rs-no-guest-errors
  # The console shows the guest kernel's errors even when the guest cannot finish.
  local cerr
  cerr=$(tr -d '\r' < "$serial" | sed -n '/VSCSID-RS-FIO-START/,$p' | grep -av 'VSCSID-' | grep -aE "$console_errors" | sed 's/^\[ *[0-9.]*\] //' | sort | uniq -c | sort -rn | head -n 3 | tr -s ' ' | tr '\n' ';' || true)
  if [[ -z $cerr ]]; then
    report guest-console-clean PASS "no I/O error, timeout, abort, reset or ring error on the guest's console after fio started"
  else
    report guest-console-clean FAIL "$cerr"
  fi
  if ((qemu_up)); then
    report qemu-stayed-up PASS "QEMU ran through every restart"
  else
    report qemu-stayed-up FAIL "QEMU exited during the restarts"
  fi
  report_powered_off "$serial" "$qemu_rc" "the guest finished its checks and powered off; QEMU exited 0"
  if [[ $last_rc == 0 ]]; then
    report last-vscsid-exit PASS "the last vscsid exited 0 when QEMU disconnected"
  else
    report last-vscsid-exit FAIL "the last vscsid: $last_rc"
  fi
  local bad
  bad=$(cat "${vlogs[@]}" | sed 's/\x1b\[[0-9;]*m//g' | grep -aE "panic|ERROR| WARN " | head -n 3 | tr '\n' ';' || true)
  if [[ -z $bad ]]; then
    report vscsid-logs-clean PASS "no panic, error or warning in the ${#vlogs[@]} vscsid logs"
  else
    report vscsid-logs-clean FAIL "$bad"
  fi
  report_prefix=""

  # --- figures ---
  # Guest time of each signal: the guest's uptime when it printed RS-FIO-START plus the
  # host time since the host saw that line (the host polls every 50 ms: the guest times
  # below are late by up to about 0.1 s). The stall is the gap between two completed
  # probe reads that spans the signal (the largest one starting at most 1 s after it).
  local gk end gap best_end best_gap qfirst qlast next
  for k in 1 2 3; do
    [[ -n ${kill_t[k]:-} ]] || continue
    gk=$(awk -v u="$u0" -v h="$h0" -v t="${kill_t[k]}" 'BEGIN { printf "%d", u + (t - h) * 100 }')
    best_end=""; best_gap=0
    while read -r end gap; do
      if (( end >= gk && end - gap <= gk + 100 && gap > best_gap )); then best_end=$end; best_gap=$gap; fi
    done < <(tr -d '\r' < "$serial" | sed -n 's/.*VSCSID-GAP \([0-9]*\) \([0-9]*\).*/\1 \2/p')
    # QEMU's messages to the new vscsid: first (reconnected) and last (device restarted)
    # before the next restart.
    next=${kill_t[k + 1]:-$(awk -v t="${kill_t[k]}" 'BEGIN { printf "%f", t + 30 }')}
    # (the burst of messages that starts at the reconnection: no pause of 0.5 s inside).
    read -r qfirst qlast < <(sed -n 's/^[0-9]*@\([0-9.]*\):vhost_user_write .*/\1/p' "$qlog" |
      awk -v a="${kill_t[k]}" -v b="$next" '$1 > a && $1 < b && (!f || $1 - l < 0.5) { if (!f) f = $1; l = $1 } END { print f, l }') || true
    printf 'stall: %s restart %d (SIG%s): guest I/O paused %s ms, first read completed %s ms after the signal; QEMU reconnected after %s ms, device restarted after %s ms\n' \
      "$mode" "$k" "$sig" \
      "$( [[ -n $best_end ]] && echo $((best_gap * 10)) || echo '<250')" \
      "$( [[ -n $best_end ]] && echo $(( (best_end - gk) * 10 )) || echo '?')" \
      "$( [[ -n ${qfirst:-} ]] && ms_between "${kill_t[k]}" "$qfirst" || echo '?')" \
      "$( [[ -n ${qlast:-} ]] && ms_between "${kill_t[k]}" "$qlast" || echo '?')"
  done
  local other
  other=$(tr -d '\r' < "$serial" | grep -ac "VSCSID-GAP" || true)
  echo "probe: $other pauses of 250 ms or more in all (the restarts' included)"
  # In-flight tracking: QEMU sends GET_INFLIGHT_FD (31) and SET_INFLIGHT_FD (32) at each
  # device start only when both sides have VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD.
  local n31
  n31=$(grep -ac "vhost_user_write req:31 " "$qlog" || true)
  if ! grep -aq "vhost_user_write" "$qlog"; then
    echo "inflight: unknown (QEMU printed no vhost_user_write trace)"
  elif (( n31 > 0 )); then
    echo "inflight: negotiated (QEMU sent GET_INFLIGHT_FD $n31 times): requests in flight at a restart are resubmitted from the shared in-flight region"
  else
    echo "inflight: not negotiated (QEMU sent no GET_INFLIGHT_FD): after a SIGKILL, QEMU restarts each queue at its used index; requests the old vscsid had taken but not completed are found again only when completions were in order"
  fi
  grep -aih "inflight" "${vlogs[@]}" | sed 's/\x1b\[[0-9;]*m//g' | sort | uniq -c | head -n 5 | sed 's/^/vscsid log: /' || true
  # What QEMU printed besides the trace.
  grep -av "vhost_user_write" "$qlog" | sed 's/^[0-9T:.-]*Z\? *//' | sort | uniq -c | head -n 10 | sed 's/^/qemu said: /' || true
  if ((failed > 0)); then
    echo "--- $mode: serial console (last 40 lines) ---"; tr -d '\r' < "$serial" | tail -n 40 || true
    echo "--- $mode: last vscsid log ---"; tail -n 20 "${vlogs[-1]}" || true
  fi
}

for mode in $MODES; do
  case $mode in
    kill|term|upgrade) run_variant "$mode" ;;
    *) echo "run-restart-e2e: unknown variant $mode (kill, term, upgrade)" >&2; exit 2 ;;
  esac
done
echo "qemu-restart-e2e: $passed passed, $failed failed"
((failed == 0))
