#!/usr/bin/env bash
# Live migration end to end: a guest whose disk is served by vscsid (source) runs fio with
# crc32c verification (random reads and writes, every block written is read back and
# checked) while QEMU migrates it to a second QEMU on this host, whose disk is served by a
# second vscsid started with --incoming on the same image. Checks: the migration completes
# (vscsid offers dirty-page logging, so QEMU puts no blocker on it), the guest keeps running
# on the destination, fio's verification passes, the guest logs no I/O error or reset,
# both daemons exit 0 when their QEMU goes; prints QEMU's downtime and total time.
# With --iscsi the LUN is one iSCSI LUN (tgtd on 127.0.0.1) that both daemons log in to,
# instead of an image file.
# Usage: run-migration-e2e.sh [--iscsi] [QEMU binary [QEMU data dir]] (default: the stock
# QEMU, an image file).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
LUN_KIND=file
if [[ ${1:-} == --iscsi ]]; then LUN_KIND=iscsi; shift; fi
QEMU=${1:-qemu-system-x86_64}
QEMU_DATA=${2:-}
TIMEOUT=${VSCSID_E2E_TIMEOUT:-600}
source tests/qemu/lib.sh

need_tools run-migration-e2e "$QEMU" cargo python3
[[ $LUN_KIND == file ]] || need_tools run-migration-e2e /usr/sbin/tgtd /usr/sbin/tgtadm
cargo build --release --quiet
build_guest
work_dir
pids=()
tgtd_pid=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # tgtd ignores SIGTERM while it has targets.
  if [[ -n $tgtd_pid ]]; then kill -9 "$tgtd_pid" 2>/dev/null || true; fi
  stop_daemon_remove_work
}
trap cleanup EXIT

if [[ $LUN_KIND == file ]]; then
  truncate -s 256M "$work/disk.img"
  lun_args=(--disk "$work/disk.img,cache=none")
else
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ctl=$((port % 32768 + 1))
  iqn=iqn.2024-01.io.vscsid.test:migrate
  truncate -s 256M "$work/target.img"
  /usr/sbin/tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$port" > "$work/tgtd.log" 2>&1 &
  tgtd_pid=$!
  tgtadm() { /usr/sbin/tgtadm -C "$ctl" --lld iscsi "$@"; }
  tgt_export "$iqn" "$work/target.img"
  lun_args=(--iscsi "iscsi://127.0.0.1:$port/$iqn/1")
fi
# VSCSID_DEBUG_UNLOGGED_DATA=1 in the environment turns the logging of data buffers off on
# the source: the guest's check of a buffer the device wrote during the migration
# (mig-dma-buffer-intact) is then expected to fail on the destination.
target/release/vscsid --socket "$work/src.sock" "${lun_args[@]}" \
  --num-queues 2 > "$work/vscsid-src.log" 2>&1 &
src_daemon=$!; pids+=("$src_daemon")
wait_vscsid "$work/src.sock" run-migration-e2e "$work/vscsid-src.log"
target/release/vscsid --socket "$work/dst.sock" "${lun_args[@]}" \
  --num-queues 2 --incoming > "$work/vscsid-dst.log" 2>&1 &
dst_daemon=$!; pids+=("$dst_daemon")
wait_vscsid "$work/dst.sock" run-migration-e2e "$work/vscsid-dst.log"

# qemu_for <socket> <serial> <qmp socket> [extra...]: the guest's QEMU command line.
qemu_for() {
  local sock=$1 serial=$2 qmp=$3
  shift 3
  vhost_user_scsi "$sock"
  # init_on_alloc=0: a page the page cache takes is not zeroed by the CPU first, so its
  # content comes from the device alone (what the page-cache check needs).
  guest_qemu "file:$serial" "vscsid.test=migrate vscsid.runtime=45 init_on_alloc=0" "${vus_args[@]}" \
    -qmp "unix:$qmp,server=on,wait=off" "$@"
  qemu_cmd[0]=$QEMU
  if [[ -n $QEMU_DATA ]]; then qemu_cmd+=(-L "$QEMU_DATA"); fi
}

# qmp <socket> <command JSON>...: runs QMP commands, prints each reply's "return".
qmp() {
  python3 - "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rw")
json.loads(f.readline())
def run(cmd):
    f.write(cmd + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            return r
run('{"execute": "qmp_capabilities"}')
for cmd in sys.argv[2:]:
    r = run(cmd)
    print(json.dumps(r))
    if "error" in r:
        sys.exit(1)
PY
}

qemu_for "$work/dst.sock" "$work/serial-dst.log" "$work/dst.qmp" -incoming "unix:$work/mig.sock"
"${qemu_cmd[@]}" > "$work/qemu-dst.log" 2>&1 &
dst_qemu=$!; pids+=("$dst_qemu")
qemu_for "$work/src.sock" "$work/serial-src.log" "$work/src.qmp"
"${qemu_cmd[@]}" > "$work/qemu-src.log" 2>&1 &
src_qemu=$!; pids+=("$src_qemu")

# The guest boots on the source and starts fio; migrate a few seconds into it.
for _ in $(seq 600); do
  grep -aq VSCSID-MIG-FIO-START "$work/serial-src.log" 2>/dev/null && break
  kill -0 "$src_qemu" 2>/dev/null || break
  sleep 0.5
done
source tests/qemu/report.sh
if ! grep -aq VSCSID-MIG-FIO-START "$work/serial-src.log"; then
  report guest-started-fio FAIL "no fio start on the source (see $work/serial-src.log)"
  cat "$work/qemu-src.log" "$work/serial-src.log" | tail -n 20
  exit 1
fi
report guest-started-fio PASS "fio runs on the source"
sleep 1
status=""
if qmp "$work/src.qmp" "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"unix:$work/mig.sock\"}}" > "$work/migrate.out" 2>&1; then
  for _ in $(seq 600); do
    info=$(qmp "$work/src.qmp" '{"execute": "query-migrate"}' 2>/dev/null | tail -n 1 || true)
    status=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["return"].get("status",""))' "$info" 2>/dev/null || true)
    [[ $status == completed || $status == failed || $status == cancelled ]] && break
    sleep 0.5
  done
fi
if [[ $status == completed ]]; then
  figures=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1])["return"]; print("downtime %s ms, total %s ms" % (d.get("downtime"), d.get("total-time")))' "$info")
  report migration-completed PASS "$figures"
else
  report migration-completed FAIL "status '${status:-none}': $(cat "$work/migrate.out") $(tail -n 3 "$work/qemu-src.log")"
fi
# The source QEMU is done: quit it; its vscsid exits when it disconnects.
qmp "$work/src.qmp" '{"execute": "quit"}' > /dev/null 2>&1 || true
for _ in $(seq 100); do kill -0 "$src_qemu" 2>/dev/null || break; sleep 0.1; done

# The guest goes on on the destination, finishes fio and powers off.
set +e
for _ in $(seq $((TIMEOUT * 2))); do kill -0 "$dst_qemu" 2>/dev/null || break; sleep 0.5; done
kill "$dst_qemu" 2>/dev/null
wait "$dst_qemu"
dst_rc=$?
set -e
report_guest_checks "$work/serial-dst.log" mig-fio-crc32c-verify mig-page-cache-intact \
  mig-dma-buffer-intact mig-no-guest-errors
report_powered_off "$work/serial-dst.log" "$dst_rc" "the guest finished on the destination"
if ! grep -aq VSCSID-RESULT "$work/serial-dst.log" || ((failed > 0)); then
  echo "--- destination console (last lines) ---"; tail -n 25 "$work/serial-dst.log" || true
  echo "--- destination QEMU ---"; tail -n 10 "$work/qemu-dst.log" || true
  echo "--- source console (last lines) ---"; tail -n 10 "$work/serial-src.log" || true
fi

for name in src dst; do
  pid_var=${name}_daemon
  pid=${!pid_var}
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  set +e; wait "$pid"; rc=$?; set -e
  if [[ $rc -eq 0 ]]; then
    report "daemon-$name-exit" PASS "vscsid ($name) exited 0 when its QEMU went"
  else
    report "daemon-$name-exit" FAIL "exit $rc: $(tail -n 3 "$work/vscsid-$name.log")"
  fi
done
if grep -q "dirty page logging" "$work/vscsid-src.log"; then
  report source-logged-dirty-pages PASS "QEMU turned vscsid's dirty page logging on"
else
  report source-logged-dirty-pages FAIL "no dirty page logging on the source"
fi

echo "migration-e2e ($LUN_KIND LUN, $($QEMU --version | head -n 1)): $passed passed, $failed failed"
[[ $failed -eq 0 ]]
