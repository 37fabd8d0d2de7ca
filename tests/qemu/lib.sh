# Sourced by the scripts that boot the test guest (tests/qemu/run-*.sh, scripts/demo.sh,
# benches/vm-fio.sh), from the repository's root: the guest's kernel and initramfs, the
# QEMU command line that boots it (the stock QEMU 7.2, or QEMU 10 after use_qemu10),
# vscsid's vhost-user-scsi device, the scratch directory and the waits for vscsid's socket
# and for a tgtd target; and for the iSCSI multipath tests, two network namespaces joined
# by two links (two paths) with tgtd in one of them, and the means to cut a path.

# Where scripts/build-guest.sh puts the guest: $guest/vmlinuz and $guest/initrd.gz.
guest=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/guest

# The QEMU that guest_qemu runs and the arguments it puts first: the stock one by default.
qemu_bin=qemu-system-x86_64
qemu_first_args=()

# use_qemu10: guest_qemu runs QEMU 10.0 from its private prefix from now on, installed
# first when missing (scripts/install-qemu10.sh: fails the script when it cannot be had).
# Its own data directory goes first (-L) and only its own modules load (QEMU_MODULE_DIR).
use_qemu10() {
  local bin prefix
  bin=$(scripts/install-qemu10.sh | tail -n 1)
  [[ -x $bin ]] || { echo "use_qemu10: no QEMU 10 binary ($bin)" >&2; exit 1; }
  prefix=${bin%/usr/bin/qemu-system-x86_64}
  qemu_bin=$bin
  qemu_first_args=(-L "$prefix/usr/share/qemu")
  export QEMU_MODULE_DIR=$prefix/usr/lib/x86_64-linux-gnu/qemu
}

# need_tools <script name> <tool>...: fails the script when a tool is missing.
need_tools() {
  local name=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$name: $tool is missing" >&2; exit 1; }
  done
}

# build_guest: builds the guest in $guest (reused while its inputs are unchanged).
build_guest() {
  scripts/build-guest.sh "$guest"
}

# work_dir: sets $work to a new scratch directory; at exit the vscsid whose PID the script
# keeps in $daemon_pid is stopped (when it still runs) and the directory removed.
work_dir() {
  work=$(mktemp -d)
  daemon_pid=""
  trap stop_daemon_remove_work EXIT
}
stop_daemon_remove_work() {
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then kill "$daemon_pid"; fi
  rm -rf "$work"
}

# wait_vscsid <socket> <script name> [vscsid's log]: waits (bounded, 10 s) for vscsid's
# socket; when it does not appear, says so, shows the log and fails the script.
wait_vscsid() {
  for _ in $(seq 100); do [[ -S $1 ]] && return 0; sleep 0.1; done
  echo "$2: vscsid did not create its socket"
  if [[ -n ${3:-} ]]; then cat "$3"; fi
  exit 1
}

# guest_qemu [-a ACCEL] [-m MEMORY] [-l LOGLEVEL] <serial> <kernel arguments> [QEMU arg...]:
# sets the array qemu_cmd to the QEMU command line ($qemu_bin) that boots the guest: q35, 2 vCPUs,
# guest RAM in a shared memfd made the guest's memory through a NUMA node (vhost-user
# backends map it), the guest kernel and initramfs with the kernel arguments after the
# console's, no display, monitor or default devices, the serial console on <serial>
# (a QEMU chardev: file:PATH, stdio), then the given QEMU arguments. Defaults: TCG, 512M,
# loglevel 4.
guest_qemu() {
  local accel=tcg mem=512M loglevel=4 opt OPTIND=1
  while getopts a:m:l: opt; do
    case $opt in
      a) accel=$OPTARG ;;
      m) mem=$OPTARG ;;
      l) loglevel=$OPTARG ;;
      *) echo "guest_qemu: unknown option" >&2; return 2 ;;
    esac
  done
  shift $((OPTIND - 1))
  local serial=$1 append=$2
  shift 2
  qemu_cmd=(
    "$qemu_bin" "${qemu_first_args[@]}"
    -machine q35 -accel "$accel" -cpu max -m "$mem" -smp 2
    -object "memory-backend-memfd,id=mem,size=$mem,share=on" -numa node,memdev=mem
    -kernel "$guest/vmlinuz" -initrd "$guest/initrd.gz"
    -append "console=ttyS0 loglevel=$loglevel panic=-1 $append"
    -nographic -no-user-config -nodefaults -serial "$serial" -monitor none
    "$@"
  )
}

# vhost_user_scsi <socket> [chardev options]: sets the array vus_args to the QEMU arguments
# of a vhost-user-scsi-pci device with two request queues, served by vscsid at <socket>;
# the options are added to the chardev's (e.g. reconnect-ms=1000, QEMU 10 only).
vhost_user_scsi() {
  vus_args=(-chardev "socket,id=vus0,path=$1${2:+,$2}" -device vhost-user-scsi-pci,chardev=vus0,num_queues=2)
}

# tgt_export <iqn> <backing file>: waits (bounded, 10 s) for the tgtd that the caller's
# tgtadm function manages, then exports the file as LUN 1 of target 1 named <iqn>, open
# to every initiator.
tgt_export() {
  for _ in $(seq 100); do tgtadm --op show --mode sys >/dev/null 2>&1 && break; sleep 0.1; done
  tgtadm --op new --mode target --tid 1 -T "$1"
  tgtadm --op new --mode logicalunit --tid 1 --lun 1 -b "$2"
  tgtadm --op bind --mode target --tid 1 -I ALL
}

# wait_match <regex> <file> <count> <seconds> [pid]: waits (bounded) until the extended
# regex matches at least <count> lines of <file>; returns 1 at the deadline, or as soon as
# the process <pid> (when given) has ended.
wait_match() {
  local deadline=$((SECONDS + $4)) n
  while :; do
    n=$(grep -acE -- "$1" "$2" 2>/dev/null || true)
    (( ${n:-0} >= $3 )) && return 0
    (( SECONDS < deadline )) || return 1
    if [[ -n ${5:-} ]] && ! kill -0 "$5" 2>/dev/null; then return 1; fi
    sleep 0.05
  done
}

# wait_exit <pid> <seconds>: waits (bounded) for a child of this shell to end and sets
# $exit_status to its exit status; returns 1 (leaving it running) at the deadline. Quiet:
# bash's own report of a child killed by a signal ("Killed") is not shown, the caller
# knows already.
wait_exit() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1"; do
    (( SECONDS < deadline )) || return 1
    sleep 0.05
  done
  exit_status=0
  wait "$1" || exit_status=$?
} 2>/dev/null

# log_time <log line>: the time of a line of vscsid's log (RFC 3339, UTC), in seconds since
# the epoch with a fraction.
log_time() {
  date -d "$(sed 's/\x1b\[[0-9;]*m//g' <<< "$1" | awk '{ print $1 }')" +%s.%N
}

# ms_between <t0> <t1>: milliseconds from t0 to t1 (seconds since the epoch, fractions).
ms_between() {
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'
}

# two_path_netns <tag>: two network namespaces, $ini (vscsid's side) and $tgt (tgtd's),
# joined by two veth links, one per path p (0 and 1): 192.168.5p.1 in $ini, 192.168.5p.2
# in $tgt. The names end in the script's PID; netns_cleanup deletes them.
#
#   ns $ini  192.168.50.1 ==== path 0 ==== 192.168.50.2  ns $tgt
#            192.168.51.1 ==== path 1 ==== 192.168.51.2
two_path_netns() {
  ini=vscsid-$1-ini-$$
  tgt=vscsid-$1-tgt-$$
  ip netns add "$ini"
  ip netns add "$tgt"
  ip -n "$ini" link set lo up
  ip -n "$tgt" link set lo up
  local p
  for p in 0 1; do
    ip link add "mp${p}i$$" netns "$ini" type veth peer name "mp${p}t$$" netns "$tgt"
    ip -n "$ini" addr add "192.168.5$p.1/24" dev "mp${p}i$$"
    ip -n "$tgt" addr add "192.168.5$p.2/24" dev "mp${p}t$$"
    ip -n "$ini" link set "mp${p}i$$" up
    ip -n "$tgt" link set "mp${p}t$$" up
  done
}
netns_cleanup() {
  if [[ -n ${ini:-} ]]; then ip netns del "$ini" 2>/dev/null || true; fi
  if [[ -n ${tgt:-} ]]; then ip netns del "$tgt" 2>/dev/null || true; fi
}

# netns_tgtd <iqn> <backing file> <log>: starts tgtd in $tgt on port 3260 of every address
# (its PID appended to the caller's array pids), with a control port of its own, and
# exports the file as LUN 1 of target <iqn> (tgt_export). tgtadm talks to it from then on.
netns_tgtd() {
  tgt_ctl=$(( ($$ % 20000) + 10000 ))
  ip netns exec "$tgt" /usr/sbin/tgtd -f -C "$tgt_ctl" --iscsi portal=0.0.0.0:3260 > "$3" 2>&1 &
  pids+=($!)
  tgt_export "$1" "$2"
}
tgtadm() { ip netns exec "$tgt" /usr/sbin/tgtadm -C "$tgt_ctl" --lld iscsi "$@"; }

# path_links <up|down> <path>...: the target side of each path's veth link (down: the
# carrier is lost, packets vanish).
path_links() {
  local state=$1 p
  shift
  for p in "$@"; do ip -n "$tgt" link set "mp${p}t$$" "$state"; done
}

# path_firewall <-I|-D> <path> <iptables target...>: adds or deletes a rule on the path's
# iSCSI traffic as it reaches the target (DROP: a silent path; REJECT --reject-with
# tcp-reset: a reset one).
path_firewall() {
  local op=$1 p=$2
  shift 2
  ip netns exec "$tgt" iptables "$op" INPUT -i "mp${p}t$$" -p tcp --dport 3260 -j "$@"
}

# stop_pids: ends the processes whose PIDs the caller keeps in the array pids (TERM, then
# KILL for those still there after 0.2 s) and reaps them.
stop_pids() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
