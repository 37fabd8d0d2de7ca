#!/usr/bin/env bash
# QEMU end-to-end test of QEMU dying under vscsid (QEMU 7.2, the stock one). One vscsid,
# started with --reconnect, serves CYCLES guests one after the other; each guest starts
# fio (random reads and writes, 2 jobs × 16 in flight) as soon as it has booted, and the
# script SIGKILLs QEMU a few seconds later, mid-I/O. Checks:
#   - every cycle: the guest's I/O started, and vscsid saw the disconnect, kept running and
#     waited for the next connection;
#   - vscsid's thread count (/proc/PID/task) and open descriptors (/proc/PID/fd), taken
#     while it waits between connections, are no higher after the last cycle than after
#     the first (nothing leaks per connection);
#   - a last guest, after the cycles, gets the disk and passes fio with crc32c
#     verification, and vscsid exits 0 on SIGTERM;
#   - without --reconnect, a vscsid whose QEMU is SIGKILLed mid-I/O exits 0.
# Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
# VSCSID_QEMU_KILL_CYCLES sets the number of cycles (default 20). Run time: a cycle is a
# TCG boot to the guest's first I/O (13-29 s on 2 busy cores), 2 s of I/O and the kill;
# 20 cycles took 441 s there, the whole script 7 min 53 s.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
CYCLES=${VSCSID_QEMU_KILL_CYCLES:-20}
BOOT_TIMEOUT=120    # seconds from QEMU's start to the guest's I/O
KILL_AFTER=2        # seconds of guest I/O before QEMU is killed
source tests/qemu/lib.sh
source tests/qemu/report.sh

need_tools run-qemu-kill-e2e qemu-system-x86_64 cargo
cargo build --release --quiet
build_guest

work=$(mktemp -d)
# At exit: the children still in the job table (started here and not yet reaped, so their
# PIDs are still theirs) are stopped, then the scratch directory removed.
cleanup() {
  local p
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
  for p in $(jobs -p); do wait_exit "$p" 5 || kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

log() { echo "[$(date +%T.%3N)] $*"; }

sock=$work/vscsid.sock
truncate -s 128M "$work/lun0.img"
vhost_user_scsi "$sock"

# counts <pid>: "<threads> <open fds>" of a process.
counts() {
  echo "$(find "/proc/$1/task" -mindepth 1 -maxdepth 1 | wc -l) $(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l)"
}
# settled_counts <pid>: counts once three readings 0.5 s apart agree (io_uring's worker
# threads leave a while after the last I/O), bounded to 15 s; the last reading then.
settled_counts() {
  local a b c i
  a=$(counts "$1"); sleep 0.5; b=$(counts "$1")
  for i in $(seq 28); do
    sleep 0.5; c=$(counts "$1")
    [[ $a == "$b" && $b == "$c" ]] && break
    a=$b; b=$c
  done
  echo "$c"
}

# boot_and_kill <cycle> <daemon pid>: boots a guest that starts I/O at once,
# kills QEMU (SIGKILL) KILL_AFTER seconds into its I/O. Returns 1 when the guest's I/O did
# not start in time. Sets $io_s to the seconds from QEMU's start to the guest's I/O.
boot_and_kill() {
  local serial=$work/serial-$1.log start=$SECONDS qemu rc=0
  : > "$serial"
  guest_qemu "file:$serial" "vscsid.test=qemukill vscsid.disks=1" "${vus_args[@]}"
  "${qemu_cmd[@]}" > "$work/qemu-$1.log" 2>&1 &
  qemu=$!
  if wait_match "VSCSID-QK-IO-START" "$serial" 1 "$BOOT_TIMEOUT" "$qemu"; then
    io_s=$((SECONDS - start))
    sleep "$KILL_AFTER"
    kill -0 "$2" 2>/dev/null || { log "cycle $1: vscsid ended while the guest ran"; rc=1; }
  else
    io_s=-1
    log "cycle $1: the guest's I/O did not start within $BOOT_TIMEOUT s"
    tr -d '\r' < "$serial" | tail -n 5
    rc=1
  fi
  kill -9 "$qemu" 2>/dev/null || true
  wait_exit "$qemu" 10 || { log "cycle $1: QEMU did not end after SIGKILL"; return 1; }
  return $rc
}

# --- with --reconnect: CYCLES kills, then a guest that must get a working disk ---
vlog=$work/vscsid.log
VSCSID_LOG=info target/release/vscsid --socket "$sock" --disk "$work/lun0.img,cache=none" \
  --num-queues 2 --reconnect > "$vlog" 2>&1 &
daemon=$!
wait_match "listening" "$vlog" 1 10 "$daemon" || { cat "$vlog"; exit 1; }

started=$SECONDS
cycles_ok=0
first_counts=""
last_counts=""
boot_times=()
for c in $(seq "$CYCLES"); do
  ok=1
  boot_and_kill "$c" "$daemon" || ok=0
  boot_times+=("$io_s")
  # vscsid logs the disconnect and waits for the next frontend.
  if ! wait_match "waiting for the next connection" "$vlog" "$c" 30 "$daemon"; then
    log "cycle $c: vscsid did not go back to waiting (running: $(kill -0 "$daemon" 2>/dev/null && echo yes || echo no))"
    ok=0
  fi
  if ((ok)); then
    cycles_ok=$((cycles_ok + 1))
    if ((c == 1)); then
      first_counts=$(settled_counts "$daemon")
      log "after cycle 1: threads, fds = $first_counts"
    elif ((c == CYCLES)); then
      last_counts=$(settled_counts "$daemon")
      log "after cycle $c: threads, fds = $last_counts"
    fi
  else
    break
  fi
  log "cycle $c: guest I/O ${io_s} s after QEMU started, QEMU killed ${KILL_AFTER} s later"
done
cycles_s=$((SECONDS - started))

# The next QEMU: a guest that verifies what it writes and powers off.
final_serial=$work/serial-final.log
: > "$final_serial"
final_rc=1
if kill -0 "$daemon" 2>/dev/null; then
  guest_qemu "file:$final_serial" "vscsid.test=qemukill vscsid.disks=1 vscsid.final=1" "${vus_args[@]}"
  set +e
  timeout 300 "${qemu_cmd[@]}" > "$work/qemu-final.log" 2>&1
  final_rc=$?
  set -e
fi
daemon_alive_after=0
kill -0 "$daemon" 2>/dev/null && daemon_alive_after=1
term_rc="not running"
if ((daemon_alive_after)); then
  kill -TERM "$daemon"
  if wait_exit "$daemon" 45; then term_rc=$exit_status; else term_rc="still running 45 s after SIGTERM"; fi
fi

# --- without --reconnect: vscsid exits 0 when its QEMU is killed ---
sock1=$work/vscsid1.sock
vlog1=$work/vscsid-once.log
truncate -s 128M "$work/lun1.img"
VSCSID_LOG=info target/release/vscsid --socket "$sock1" --disk "$work/lun1.img,cache=none" \
  --num-queues 2 > "$vlog1" 2>&1 &
once=$!
wait_match "listening" "$vlog1" 1 10 "$once" || { cat "$vlog1"; exit 1; }
vhost_user_scsi "$sock1"
once_ok=1
boot_and_kill once "$once" || once_ok=0
once_rc="still running 30 s after QEMU was killed"
if wait_exit "$once" 30; then once_rc=$exit_status; fi

# --- checks ---
if ((cycles_ok == CYCLES)); then
  report qemu-kill-cycles PASS "$CYCLES × QEMU SIGKILLed mid-I/O; vscsid waited for the next QEMU each time ($cycles_s s)"
else
  report qemu-kill-cycles FAIL "cycle $((cycles_ok + 1)) of $CYCLES failed"
fi
read -r t1 f1 <<< "${first_counts:-? ?}"
read -r tn fn <<< "${last_counts:-? ?}"
if [[ -n $first_counts && -n $last_counts ]] && ((tn <= t1)); then
  report vscsid-threads-stable PASS "threads after cycle 1: $t1, after cycle $CYCLES: $tn"
else
  report vscsid-threads-stable FAIL "threads after cycle 1: $t1, after cycle $CYCLES: $tn"
fi
if [[ -n $first_counts && -n $last_counts ]] && ((fn <= f1)); then
  report vscsid-fds-stable PASS "open fds after cycle 1: $f1, after cycle $CYCLES: $fn"
else
  report vscsid-fds-stable FAIL "open fds after cycle 1: $f1, after cycle $CYCLES: $fn"
fi
report_prefix=after-kills-
report_guest_checks "$final_serial" qk-final-fio-crc32c
report_powered_off "$final_serial" "$final_rc" "the next guest got the disk, passed its checks and powered off"
report_prefix=""
if [[ $term_rc == 0 ]]; then
  report vscsid-sigterm-exit PASS "vscsid (--reconnect) exited 0 on SIGTERM after $((CYCLES + 1)) guests"
else
  report vscsid-sigterm-exit FAIL "vscsid (--reconnect) after SIGTERM: exit $term_rc"
fi
if ((once_ok)) && [[ $once_rc == 0 ]]; then
  report no-reconnect-exit-0 PASS "without --reconnect, vscsid exited 0 after its QEMU was SIGKILLed mid-I/O"
else
  report no-reconnect-exit-0 FAIL "without --reconnect: guest I/O started: $once_ok, vscsid exit: $once_rc"
fi
bad=$(cat "$vlog" "$vlog1" | sed 's/\x1b\[[0-9;]*m//g' | grep -aE "panic|ERROR| WARN " | head -n 3 | tr '\n' ';' || true)
if [[ -z $bad ]]; then
  report vscsid-logs-clean PASS "no panic, error or warning logged"
else
  report vscsid-logs-clean FAIL "$bad"
fi
echo "boot: seconds from QEMU's start to the guest's I/O per cycle: ${boot_times[*]}"
if ((failed > 0)); then
  echo "--- vscsid log (last 30 lines) ---"; tail -n 30 "$vlog" || true
  echo "--- vscsid without --reconnect ---"; tail -n 10 "$vlog1" || true
  echo "--- last guest's console (last 30 lines) ---"; tr -d '\r' < "$final_serial" | tail -n 30 || true
fi
echo "qemu-kill-e2e: $passed passed, $failed failed"
((failed == 0))
