#!/usr/bin/env bash
# vscsid under a real systemd: boots a Debian 12 guest with systemd as PID 1 (QEMU, TCG;
# root filesystem from Debian's packages, built once and cached in target/sysguest by
# scripts/build-systemd-guest.sh), installs the freshly built vscsid in it as a package
# would (binary, vscsid@.service, vscsid@.socket, tmpfiles, a vscsid user) and checks
# through the units (tests/qemu/systemd-guest.sh runs in the guest as root):
#   - the unit stays activating while a LUN is not open (an iSCSI login that gets no
#     answer), and `systemctl start` returns with the unit active after READY=1;
#   - the socket vscsid creates has the configured group and mode (socket_group,
#     socket_mode), the project's vhost-user frontend (loadgen) runs I/O through it as a
#     member of that group, and is refused as another user;
#   - `systemctl reload` (SIGHUP) applies a configuration change: a LUN added;
#   - `journalctl -o json` carries VM=, LUN=, PRIORITY=;
#   - kill -9 of the daemon: systemd restarts it; a worker thread stopped (ptrace) stops
#     the watchdog pings and systemd restarts the daemon (WatchdogSec=4 in a drop-in);
#   - with vscsid@.socket: the socket is systemd's (owner, group, mode), the first
#     connection starts the daemon, a kill -9 restarts it and the path stays (same inode);
#   - `systemctl stop` under I/O drains and the daemon exits 0;
#   - `systemd-analyze security` rates the unit's exposure at most 2.0.
# The guest is fresh each run (a copy-on-write overlay on the cached image); the binary,
# the units and the guest script come on a second disk. Prints one line per check and
# "N passed, M failed"; exits non-zero on any failure, or when the guest does not finish
# within VSCSID_E2E_TIMEOUT seconds (default 600; its QEMU is then killed).
# VSCSID_E2E_KEEP=1 keeps the scratch directory (serial console log) and prints its path.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
TIMEOUT=${VSCSID_E2E_TIMEOUT:-600}
sysguest=$here/target/sysguest
source tests/qemu/lib.sh

start=$SECONDS
scripts/install-deps.sh
need_tools run-systemd-e2e cargo qemu-system-x86_64 qemu-img mkfs.ext4 mmdebstrap
cargo build --release --quiet
# The load generator (benches/loadgen.rs), built with the release profile.
loadgen=$(cargo build --release --quiet --bench loadgen --message-format=json \
  | grep '"kind":\["bench"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[[ -x $loadgen ]] || { echo "run-systemd-e2e: no load generator binary" >&2; exit 1; }
scripts/build-systemd-guest.sh "$sysguest"

work=$(mktemp -d)
qemu=""
cleanup() {
  if [[ -n $qemu ]] && kill -0 "$qemu" 2>/dev/null; then kill -9 "$qemu" 2>/dev/null || true; fi
  if [[ -n ${VSCSID_E2E_KEEP:-} ]]; then echo "run-systemd-e2e: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The second disk: what a package would install, and the guest's script.
mkdir -p "$work/payload/units"
cp target/release/vscsid "$work/payload/vscsid"
cp "$loadgen" "$work/payload/loadgen"
cp qemu-examples/vscsid@.service qemu-examples/vscsid@.socket qemu-examples/vscsid.tmpfiles.conf "$work/payload/units/"
install -m 755 tests/qemu/systemd-guest.sh "$work/payload/run.sh"
mkfs.ext4 -q -d "$work/payload" "$work/payload.img" "$(( $(du -sm "$work/payload" | cut -f1) + 32 ))M" > /dev/null
qemu-img create -q -f qcow2 -F raw -b "$sysguest/rootfs.img" "$work/root.qcow2"

serial=$work/serial.log
: > "$serial"
qemu-system-x86_64 -machine q35 -accel tcg -cpu max -m 1536M -smp 2 \
  -kernel "$sysguest/vmlinuz" -initrd "$sysguest/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 systemd.show_status=auto" \
  -drive "file=$work/root.qcow2,if=virtio,format=qcow2" \
  -drive "file=$work/payload.img,if=virtio,format=raw" \
  -nographic -no-user-config -nodefaults -no-reboot -serial "file:$serial" -monitor none \
  > "$work/qemu.log" 2>&1 &
qemu=$!
echo "run-systemd-e2e: guest booting (QEMU $qemu, TCG), at most $TIMEOUT s"

done_re='^[0-9]+ passed, [0-9]+ failed'
if wait_match "$done_re" "$serial" 1 "$TIMEOUT" "$qemu"; then
  wait_exit "$qemu" 60 || { echo "run-systemd-e2e: the guest did not power off"; kill -9 "$qemu"; }
  guest_done=1
else
  guest_done=0
  if kill -0 "$qemu" 2>/dev/null; then
    echo "run-systemd-e2e: the guest did not finish within $TIMEOUT s; QEMU killed"
    kill -9 "$qemu" 2>/dev/null || true
  else
    echo "run-systemd-e2e: QEMU exited before the guest finished"
    cat "$work/qemu.log"
  fi
fi

out=$(tr -d '\r' < "$serial")
# The guest's own lines: its checks and their details, the journal after a failure.
# (its first line may share the console's line with what systemd printed before it).
sed -n '/systemd-guest: /,$p' <<< "$out" | sed -E '1s/.*(systemd-guest: )/\1/' | grep -avE "$done_re" || true
if ((guest_done == 0)); then
  echo "--- the guest's console (last 60 lines) ---"
  tail -n 60 <<< "$out"
fi
# Every check the guest script has must have reported.
expected=$(grep -c '^check "' tests/qemu/systemd-guest.sh)
passed=$(grep -ac '^PASS: ' <<< "$out" || true)
failed=$(grep -ac '^FAIL: ' <<< "$out" || true)
missing=$((expected - passed - failed))
((missing > 0)) && failed=$((failed + missing)) && echo "run-systemd-e2e: $missing checks did not report"
echo "run-systemd-e2e: $((SECONDS - start)) s in all"
echo "$passed passed, $failed failed"
((failed == 0 && guest_done == 1))
