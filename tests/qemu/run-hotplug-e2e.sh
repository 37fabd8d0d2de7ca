#!/usr/bin/env bash
# LUNs added, grown and removed while a Linux guest runs, through vscsid's control socket
# (`vscsid ctl`): the guest runs fio with crc32c verification on LUN 0 throughout; a disk
# added as LUN 1 appears as a new sd device by itself (virtio-scsi RESCAN event), takes an
# ext4 file system, is grown on the host (`ctl resize`) and the guest's size follows (a
# PARAM_CHANGE event) so resize2fs grows the mounted file system; it is removed and
# disappears (REMOVED event); an iSCSI LUN on tgtd is added as LUN 2 and written with
# verification. vscsid serves its metrics (--metrics): a scrape with curl while the guest
# runs must parse as Prometheus text and show LUN 0's reads and writes. Prints one line per
# check and "N passed, M failed".
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
TIMEOUT=${VSCSID_E2E_TIMEOUT:-600}
source tests/qemu/lib.sh

need_tools run-hotplug-e2e qemu-system-x86_64 cargo /usr/sbin/tgtd /usr/sbin/tgtadm curl \
  /usr/bin/python3
cargo build --release --quiet
build_guest
work_dir
pids=()
tgtd_pid=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ -n $tgtd_pid ]]; then kill -9 "$tgtd_pid" 2>/dev/null || true; fi
  stop_daemon_remove_work
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
metrics_port=$(free_port)
ctl_nr=$((port % 32768 + 1))
iqn=iqn.2024-01.io.vscsid.test:hotplug
truncate -s 64M "$work/target.img"
/usr/sbin/tgtd -f -C "$ctl_nr" --iscsi "portal=127.0.0.1:$port" > "$work/tgtd.log" 2>&1 &
tgtd_pid=$!
tgtadm() { /usr/sbin/tgtadm -C "$ctl_nr" --lld iscsi "$@"; }
tgt_export "$iqn" "$work/target.img"

truncate -s 256M "$work/a.img"
truncate -s 64M "$work/b.img"
control=$work/control.sock
target/release/vscsid --socket "$work/vscsid.sock" --control "$control" \
  --metrics "127.0.0.1:$metrics_port" --vm-name hotplug-vm \
  --disk "$work/a.img,cache=none" --num-queues 2 > "$work/vscsid.log" 2>&1 &
daemon_pid=$!
wait_vscsid "$work/vscsid.sock" run-hotplug-e2e "$work/vscsid.log"
for _ in $(seq 100); do [[ -S $control ]] && break; sleep 0.1; done
ctl() { target/release/vscsid ctl --control "$control" "$@"; }

serial=$work/serial.log
vhost_user_scsi "$work/vscsid.sock"
guest_qemu "file:$serial" "vscsid.test=hotplug vscsid.runtime=60" "${vus_args[@]}"
"${qemu_cmd[@]}" > "$work/qemu.log" 2>&1 &
qemu_pid=$!; pids+=("$qemu_pid")

source tests/qemu/report.sh
# step <name> <command...>: waits for the guest to ask for the step, then runs it.
step() {
  local name=$1
  shift
  if ! wait_match "VSCSID-HP-STEP ${name}([^-a-z]|$)" "$serial" 1 "$TIMEOUT" "$qemu_pid"; then
    report "host-$name" FAIL "the guest never asked for '$name'"
    return 1
  fi
  if out=$("$@" 2>&1); then
    report "host-$name" PASS "vscsid ctl: $out"
  else
    report "host-$name" FAIL "vscsid ctl: $out"
  fi
}
step add ctl add disk "$work/b.img,cache=none" &&
  step resize ctl resize 0:1 128M &&
  step remove ctl remove 0:1 &&
  step add-iscsi ctl add iscsi "iscsi://127.0.0.1:$port/$iqn/1" --lun 2 || true
echo "--- vscsid ctl luns at the end ---"
ctl luns || true
echo "--- vscsid ctl stats ---"
ctl stats || true

# The guest has run fio on LUN 0 through the steps: the metrics show it.
if curl -sSf --max-time 10 "http://127.0.0.1:$metrics_port/metrics" -o "$work/metrics.txt" \
  2> "$work/curl.err"; then
  if out=$(/usr/bin/python3 tests/qemu/check-metrics.py "$work/metrics.txt" hotplug-vm 0 0 2>&1); then
    report host-metrics-scrape PASS "$out"
  else
    report host-metrics-scrape FAIL "$out"
  fi
else
  report host-metrics-scrape FAIL "curl: $(head -c 300 "$work/curl.err")"
fi

set +e
wait_exit "$qemu_pid" "$TIMEOUT" || kill "$qemu_pid"
qemu_rc=${exit_status:-1}
set -e
report_guest_checks "$serial" hp-added-disk-appears hp-added-disk-ext4 hp-resize-seen \
  hp-resize2fs-online hp-ext4-intact hp-removed-disk-gone hp-iscsi-added hp-fio-lun0-verify \
  hp-no-guest-errors
report_powered_off "$serial" "$qemu_rc" "QEMU exited 0"
if ((failed > 0)); then
  echo "--- serial (last 40 lines) ---"; tail -n 40 "$serial" || true
  echo "--- vscsid log ---"; tail -n 30 "$work/vscsid.log" || true
fi
echo "qemu-hotplug-e2e: $passed passed, $failed failed"
((failed == 0))
