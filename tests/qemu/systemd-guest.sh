#!/bin/bash
# Runs inside the systemd test guest (run.sh of its second disk, started at boot as root by
# vscsid-guest-test.service; see tests/qemu/run-systemd-e2e.sh). Installs vscsid as a
# package would (binary, units, tmpfiles, the vscsid user), then checks, through the units,
# what the README's "Running under systemd" promises. One "PASS: name" or "FAIL: name"
# line per check (details on "  " lines), then "N passed, M failed"; the journal of the
# daemon after a failure; then the guest powers off.
set -uo pipefail # not -e: every check runs, each one says how it went
P=$(cd "$(dirname "$0")" && pwd)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SOCK=/run/vscsid/vm1.sock
U=vscsid@vm1.service
passed=0
failed=0

note() { echo "$*"; }
result() { # result <name> <status>
  if [[ $2 == 0 ]]; then
    echo "PASS: $1"
    passed=$((passed + 1))
  else
    echo "FAIL: $1"
    failed=$((failed + 1))
  fi
}
# check <name> <function>: runs the function (its output indented) and counts the result.
check() {
  local st=0
  "$2" > /tmp/check.out 2>&1 || st=$?
  sed 's/^/  /' /tmp/check.out
  result "$1" "$st"
}
# wait_for <seconds> <command...>: polls (every 0.2 s) until the command succeeds; 1 at
# the deadline.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
prop() { systemctl show -P "$2" "$1"; }
# main_pid <unit>: the unit's main process ID; fails (with a note) when it has none, so
# that no kill ever gets 0 (the whole process group).
main_pid() {
  local pid
  pid=$(prop "$1" MainPID)
  [[ $pid =~ ^[1-9][0-9]*$ ]] && echo "$pid" && return 0
  note "$1 has no main process" >&2
  return 1
}
is_active() { [[ $(prop "$1" ActiveState) == active ]]; }
status_has() { [[ $(prop $U StatusText) == *"$1"* ]]; }
# As QEMU would: a member of the socket's group, then a user who is not.
as_client() { setpriv --reuid qemu-client --regid qemu-client --init-groups "$@"; }
as_outsider() { setpriv --reuid outsider --regid outsider --clear-groups "$@"; }
# loadgen <lun> <rw> [seconds]: the project's vhost-user frontend, I/O on one LUN.
loadgen() {
  timeout 60 vscsid-loadgen --socket "$SOCK" --proto scsi --lun "$1" --rw "$2" --bs 4096 \
    --iodepth 8 --queues 2 --runtime "${3:-2}" --size 32M
}
client_io() { as_client bash -c "$(declare -f loadgen); SOCK=$SOCK; loadgen $1 randwrite && loadgen $1 randread"; }
journal_since() { journalctl -u $U --no-pager -o cat --since "@$1"; }

# --- Installation, as the README's "Running under systemd" says ---
install_vscsid() {
  useradd --system --no-create-home --shell /usr/sbin/nologin vscsid &&
    groupadd --system vscsid-clients &&
    useradd --system --no-create-home --shell /usr/sbin/nologin -G vscsid-clients qemu-client &&
    useradd --system --no-create-home --shell /usr/sbin/nologin outsider &&
    install -m 755 "$P/vscsid" /usr/local/bin/vscsid &&
    install -m 755 "$P/loadgen" /usr/local/bin/vscsid-loadgen &&
    install -m 644 "$P/units/vscsid@.service" "$P/units/vscsid@.socket" /etc/systemd/system/ &&
    install -m 644 "$P/units/vscsid.tmpfiles.conf" /etc/tmpfiles.d/vscsid.conf &&
    systemd-tmpfiles --create /etc/tmpfiles.d/vscsid.conf &&
    install -d -m 750 -o vscsid -g vscsid /var/lib/vscsid &&
    truncate -s 64M /var/lib/vscsid/vm1-root.img /var/lib/vscsid/vm1-data.img &&
    chown vscsid: /var/lib/vscsid/vm1-root.img /var/lib/vscsid/vm1-data.img || return 1
  # The socket vscsid creates itself goes to QEMU's group (README: the group must be one
  # of vscsid's and the filter must let fchownat through).
  cat > /tmp/vm1.toml <<'EOF'
[daemon]
socket = "/run/vscsid/vm1.sock"
num_queues = 2
threads = 2
reconnect = true
vm_name = "vm1"
socket_group = "vscsid-clients"
socket_mode = "0660"

[[lun]]
lun = 0
path = "/var/lib/vscsid/vm1-root.img"
cache = "none"
serial = "VM1-ROOT"
EOF
  install -D -m 640 -g vscsid /tmp/vm1.toml /etc/vscsid/vm1.toml || return 1
  mkdir -p /etc/systemd/system/vscsid@vm1.service.d /etc/systemd/system/vscsid@vm1.socket.d
  printf '[Service]\nSupplementaryGroups=vscsid-clients\nSystemCallFilter=@chown\n' \
    > /etc/systemd/system/vscsid@vm1.service.d/socket-group.conf
  printf '[Socket]\nSocketGroup=vscsid-clients\n' \
    > /etc/systemd/system/vscsid@vm1.socket.d/group.conf
  systemctl daemon-reload
  systemd-analyze verify /etc/systemd/system/vscsid@.service 2>&1 | grep -v '^$' || true
}

# --- READY gates the start: a LUN that never logs in keeps the unit activating ---
ready_gate() {
  # An iSCSI portal that accepts the connection and never answers the login (the kernel
  # completes the handshake on the listen backlog; nobody accepts).
  perl -MSocket -e 'socket(S, PF_INET, SOCK_STREAM, 0) or die; setsockopt(S, SOL_SOCKET, SO_REUSEADDR, 1);
    bind(S, pack_sockaddr_in(3260, inet_aton("127.0.0.1"))) or die "bind: $!"; listen(S, 8) or die; sleep 120' &
  local portal=$! st=0 state
  cat > /etc/vscsid/slow.toml <<'EOF'
[daemon]
socket = "/run/vscsid/slow.sock"

[[lun]]
lun = 0
kind = "iscsi"
url = "iscsi://127.0.0.1:3260/iqn.2003-01.org.example:never/0"
EOF
  chgrp vscsid /etc/vscsid/slow.toml
  sleep 0.5
  systemctl start --no-block vscsid@slow.service
  # The daemon runs and listens (its socket exists) but has not sent READY=1.
  if wait_for 30 test -S /run/vscsid/slow.sock; then
    sleep 2
    state=$(prop vscsid@slow.service ActiveState)/$(prop vscsid@slow.service SubState)
    note "2 s after its socket appeared, the LUN still logging in: $state, MainPID $(prop vscsid@slow.service MainPID)"
    [[ $state == activating/start ]] || st=1
  else
    note "vscsid@slow never created its socket"; st=1
  fi
  systemctl stop vscsid@slow.service
  systemctl reset-failed vscsid@slow.service 2>/dev/null
  kill "$portal" 2>/dev/null; wait "$portal" 2>/dev/null
  rm -f /etc/vscsid/slow.toml
  return $st
}

start_after_ready() {
  local t0 st=0
  t0=$(date +%s)
  timeout 90 systemctl start $U || { note "systemctl start failed"; return 1; }
  note "state $(prop $U ActiveState)/$(prop $U SubState), Type=$(prop $U Type), StatusText '$(prop $U StatusText)'"
  is_active $U && status_has "1 LUN, waiting for QEMU" || st=1
  # systemd's "Started" comes after the daemon's last "LUN ready" (sent just before READY=1).
  journal_since "$t0" > /tmp/j
  local ready started
  ready=$(grep -n 'LUN ready' /tmp/j | tail -n 1 | cut -d: -f1)
  started=$(grep -n '^Started ' /tmp/j | tail -n 1 | cut -d: -f1)
  note "journal line of the last 'LUN ready': ${ready:-none}, of 'Started': ${started:-none}"
  [[ -n $ready && -n $started && $ready -lt $started ]] || st=1
  return $st
}

socket_owner_mode() {
  local s
  s=$(stat -c '%U:%G %a %F' "$SOCK") || return 1
  note "$SOCK: $s"
  [[ $s == "vscsid:vscsid-clients 660 socket" ]]
}

io_as_group_member() {
  client_io 0
}

refused_as_outsider() {
  local out st
  out=$(as_outsider bash -c "$(declare -f loadgen); SOCK=$SOCK; loadgen 0 randread 1" 2>&1)
  st=$?
  note "$out"
  [[ $st != 0 && $out == *"ermission denied"* ]]
}

# The unit's StateDirectory= is vscsid's --state-dir ($STATE_DIRECTORY): LUN 1, shared
# since the reload, keeps its reservations there.
reservation_state_dir() {
  local f
  f=$(ls /var/lib/vscsid-reservations/reservations-*.state 2>/dev/null | head -n 1)
  note "state file '$f': $(stat -c '%U %a' "$f" 2>&1)"
  [[ -n $f && $(stat -c '%U %a' "$f") == "vscsid 600" ]]
}

reload_applies_config() {
  local pid0 pid1 st=0 t0 out
  pid0=$(main_pid $U) || return 1
  t0=$(date +%s)
  if out=$(loadgen 1 randread 1 2>&1); then note "LUN 1 served before it was configured"; st=1; fi
  note "LUN 1 before the reload: $out"
  cat >> /etc/vscsid/vm1.toml <<'EOF'

[[lun]]
lun = 1
path = "/var/lib/vscsid/vm1-data.img"
cache = "writeback"
serial = "VM1-DATA"
shared = true
EOF
  timeout 30 systemctl reload $U || { note "systemctl reload failed"; return 1; }
  wait_for 30 status_has "2 LUNs" || { note "StatusText '$(prop $U StatusText)'"; st=1; }
  pid1=$(prop $U MainPID)
  note "MainPID $pid0 -> $pid1, StatusText '$(prop $U StatusText)', state $(prop $U ActiveState)"
  [[ $pid0 == "$pid1" ]] && is_active $U || st=1
  journal_since "$t0" | grep -E 'reload' | sed 's/^/journal: /'
  client_io 1 || st=1
  return $st
}

journal_fields() {
  local j st=0
  j=$(journalctl -u $U -o json --no-pager)
  for f in '"VM":"vm1"' '"LUN":"0"' '"LUN":"1"' '"SYSLOG_IDENTIFIER":"vscsid"' '"PRIORITY":"6"'; do
    if grep -q -- "$f" <<< "$j"; then note "has $f"; else note "missing $f"; st=1; fi
  done
  grep -- '"LUN":"1"' <<< "$j" | head -n 1 | cut -c1-600 | sed 's/^/entry: /'
  return $st
}

# restarted <unit> <NRestarts before> <MainPID before>: the daemon runs again (another
# process, one more automatic restart) and is active.
restarted() {
  [[ $(prop "$1" NRestarts) -gt $2 && $(prop "$1" MainPID) != "$3" && $(prop "$1" MainPID) != 0 ]] &&
    is_active "$1" && status_has "waiting for QEMU"
}

kill9_restarts() {
  local n0 pid0 st=0
  n0=$(prop $U NRestarts)
  pid0=$(main_pid $U) || return 1
  kill -9 "$pid0"
  wait_for 30 restarted $U "$n0" "$pid0" || st=1
  note "after kill -9 of $pid0: MainPID $(prop $U MainPID), NRestarts $n0 -> $(prop $U NRestarts), $(prop $U ActiveState)"
  client_io 0 || st=1
  return $st
}

watchdog_restarts_stuck_worker() {
  local n0 pid0 tid t0 holder st=0
  printf '[Service]\nWatchdogSec=4\n' > /etc/systemd/system/vscsid@vm1.service.d/watchdog.conf
  systemctl daemon-reload
  timeout 60 systemctl restart $U || { note "restart failed"; return 1; }
  n0=$(prop $U NRestarts)
  pid0=$(main_pid $U) || return 1
  t0=$(date +%s)
  sleep 6 # longer than WatchdogSec: not restarted while every worker runs
  if [[ $(prop $U MainPID) != "$pid0" ]]; then note "restarted while nothing was stuck"; st=1; fi
  tid=$(grep -lx 'vscsid-q[0-9]*' /proc/"$pid0"/task/*/comm | head -n 1 | cut -d/ -f5)
  [[ -n $tid ]] || { note "no worker thread vscsid-q* in $pid0"; return 1; }
  # The worker stops where it is, as if stuck in a call: ptrace (PTRACE_SEIZE, then
  # PTRACE_INTERRUPT) stops that one thread; the others run on. Held (60 s at most) until
  # the thread has died with its process, then released: the tracer's exit reaps it.
  perl -e '$t = 0 + shift; syscall(101, 0x4206, $t, 0, 0) == 0 or die "seize: $!";
    syscall(101, 0x4207, $t, 0, 0) == 0 or die "interrupt: $!";
    for (1 .. 600) { open(my $f, "<", "/proc/$t/stat") or last; my $s = <$f>;
      last if !defined $s || $s =~ /\) [ZX] /; select(undef, undef, undef, 0.1) }' "$tid" &
  holder=$!
  note "stopped worker thread $(cat /proc/$pid0/task/$tid/comm) ($tid) of $pid0"
  wait_for 40 restarted $U "$n0" "$pid0" || st=1
  kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null
  note "MainPID $pid0 -> $(prop $U MainPID), NRestarts $n0 -> $(prop $U NRestarts), $(prop $U ActiveState)"
  journalctl -u $U --no-pager -o cat --since "@$t0" > /tmp/j
  grep -E 'no progress|Watchdog timeout|Killing process|Main process exited' /tmp/j | sed 's/^/journal: /'
  grep -q 'Watchdog timeout' /tmp/j || { note "no 'Watchdog timeout' in the journal"; st=1; }
  rm /etc/systemd/system/vscsid@vm1.service.d/watchdog.conf
  systemctl daemon-reload
  return $st
}

# --- Socket activation: the socket is systemd's and outlives the daemon ---
socket_activation() {
  local s st=0
  timeout 60 systemctl stop $U
  # The shipped unit alone from here on (the socket's group comes from the .socket unit).
  rm -rf /etc/systemd/system/vscsid@vm1.service.d
  systemctl daemon-reload
  timeout 30 systemctl enable --now vscsid@vm1.socket || return 1
  s=$(stat -c '%U:%G %a %F' "$SOCK")
  note "socket unit $(prop vscsid@vm1.socket ActiveState), $SOCK: $s, service $(prop $U ActiveState)"
  [[ $s == "vscsid:vscsid-clients 660 socket" ]] || st=1
  [[ $(prop $U ActiveState) == inactive ]] || st=1
  # The first connection starts the service.
  client_io 0 || st=1
  note "after the first connection: service $(prop $U ActiveState)"
  is_active $U || st=1
  journalctl -u $U --no-pager -o cat | grep -m1 'come from the .socket unit' | sed 's/^/journal: /'
  return $st
}

kill9_keeps_socket() {
  local n0 pid0 ino0 watcher st=0
  n0=$(prop $U NRestarts)
  pid0=$(main_pid $U) || return 1
  ino0=$(stat -c %i "$SOCK")
  # Watches the path every 50 ms through the restart; its exit status says whether the
  # socket was ever missing.
  (end=$((SECONDS + 20)); while ((SECONDS < end)); do [[ -S $SOCK ]] || exit 1; sleep 0.05; done) &
  watcher=$!
  kill -9 "$pid0"
  wait_for 30 restarted $U "$n0" "$pid0" || st=1
  kill "$watcher" 2>/dev/null
  wait "$watcher"
  [[ $? == 1 ]] && { note "the socket path was missing during the restart"; st=1; }
  note "after kill -9 of $pid0: MainPID $(prop $U MainPID), NRestarts $n0 -> $(prop $U NRestarts), socket inode $ino0 -> $(stat -c %i "$SOCK")"
  [[ $(stat -c %i "$SOCK") == "$ino0" ]] || st=1
  client_io 0 || st=1
  return $st
}

stop_drains() {
  local lg t0 st=0
  t0=$(date +%s)
  as_client bash -c "$(declare -f loadgen); SOCK=$SOCK; loadgen 0 randwrite 30" > /tmp/lg.out 2>&1 &
  lg=$!
  wait_for 20 status_has "QEMU connected" || { note "the frontend did not connect"; st=1; }
  sleep 1
  timeout 60 systemctl stop $U || st=1
  note "ExecMainCode=$(prop $U ExecMainCode) ExecMainStatus=$(prop $U ExecMainStatus) Result=$(prop $U Result) state $(prop $U ActiveState)"
  [[ $(prop $U ExecMainCode) == 1 && $(prop $U ExecMainStatus) == 0 && $(prop $U Result) == success ]] || st=1
  journal_since "$t0" | grep -E 'draining|STOPPING|stopping|flush|exited|Deactivated|Stopped' | sed 's/^/journal: /'
  journal_since "$t0" | grep -q 'shutting down: draining in-flight I/O' || { note "no drain in the journal"; st=1; }
  kill "$lg" 2>/dev/null; wait "$lg" 2>/dev/null
  [[ -S $SOCK ]] || { note "the socket unit's socket is gone"; st=1; }
  return $st
}

security_exposure() {
  local out level
  out=$(systemd-analyze security --no-pager $U 2>&1)
  grep -E 'Overall exposure' <<< "$out" | sed 's/^/analyze: /'
  level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<< "$out")
  [[ -n $level ]] || { tail -n 5 <<< "$out"; return 1; }
  echo "EXPOSURE $level"
  awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }'
}

echo "systemd-guest: $(systemctl --version | head -n 1), kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s"
wait_for 120 bash -c '[[ $(systemctl is-system-running) == @(running|degraded) ]]'
echo "systemd-guest: system $(systemctl is-system-running) at $(cut -d' ' -f1 /proc/uptime) s"
systemctl --failed --no-legend --no-pager | sed 's/^/failed unit: /'

check "install: binary, units, tmpfiles, vscsid user, config" install_vscsid
check "start: the unit stays activating until READY=1 (a LUN still logging in)" ready_gate
check "start: systemctl start returns active after READY=1, STATUS= shown" start_after_ready
check "socket: created by vscsid with socket_group/socket_mode (vscsid:vscsid-clients 0660)" socket_owner_mode
check "I/O: loadgen as a member of the socket's group writes and reads LUN 0" io_as_group_member
check "access: loadgen as another user is refused (EACCES)" refused_as_outsider
check "reload: upgrade in place re-reads the config (LUN 1 added, same MainPID)" reload_applies_config
check "reservations: the shared LUN's state file is in the unit's StateDirectory (vscsid, 0600)" reservation_state_dir
check "journal: -o json has VM=, LUN=, SYSLOG_IDENTIFIER=, PRIORITY=" journal_fields
check "kill -9: systemd restarts the daemon (Restart=on-failure), I/O again" kill9_restarts
check "watchdog: a stuck worker stops the pings, systemd restarts the daemon" watchdog_restarts_stuck_worker
check "socket activation: systemd's socket (vscsid:vscsid-clients 0660), first connection starts the service" socket_activation
check "socket activation: kill -9 restarts the daemon, the socket path stays (same inode)" kill9_keeps_socket
check "stop: systemctl stop under I/O drains, the daemon exits 0 (Result=success)" stop_drains
check "systemd-analyze security: exposure at most 2.0" security_exposure

if ((failed > 0)); then
  echo "--- journal of vscsid@vm1 ---"
  journalctl -u $U --no-pager -o short-monotonic | tail -n 150
fi
echo "systemd-guest: done at $(cut -d' ' -f1 /proc/uptime) s"
echo "$passed passed, $failed failed"
sync
systemctl poweroff --no-block
