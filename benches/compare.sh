#!/usr/bin/env bash
# Side-by-side device benchmark: the same load generator (benches/loadgen.rs) drives
#   vscsid              vscsid, cache=none, on the backing file (virtio-scsi)
#   qsd-vhost-user-blk  qemu-storage-daemon exporting the same file as vhost-user-blk,
#                       aio=io_uring, cache.direct=on: QEMU's own block layer and virtio-blk
#   qsd10-vhost-user-blk the same with QEMU 10.0's qemu-storage-daemon (Debian's
#                       bookworm-backports, unpacked by scripts/install-qemu10.sh)
#   vscsid-null         vscsid with a null LUN and default options (adaptive polling):
#                       the daemon's own ceiling
#   vscsid-null-poll    the same with --poll-us 50 (a fixed busy-polling window)
# and two references measure the machine's limit on the same file:
#   host-ref            the load generator's own I/O shapes (same buffers in a memfd
#                       mapping, same offsets, same depth per queue) issued straight with
#                       io_uring and O_DIRECT, no vhost-user in between: vscsid's limit
#   host-fio            fio, io_uring, direct=1
# Then, on one tgtd iSCSI LUN on 127.0.0.1:
#   vscsid-iscsi        vscsid --iscsi: its own initiator, CDBs passed through
#   qsd-iscsi           qemu-storage-daemon with QEMU's libiscsi driver (qemu-block-extra)
#                       exporting the same LUN as vhost-user-blk
#   qsd10-iscsi         the same with QEMU 10.0
# Workloads: randread-4k-qd1, randread-4k-qd32, randwrite-4k-qd32, read-128k-qd8, and for
# the local systems randread-4k-qd32-2q (two request queues of depth 32: multiqueue scaling).
# Prints one JSON object per line, then a table of ratios (local systems against
# qsd-vhost-user-blk, iSCSI systems against qsd-iscsi), and writes
# target/bench/results.jsonl and target/bench/chart.svg.
# Two more sections, each also runnable alone: polling's trade-off (benches/polling.sh:
# polling off, fixed and adaptive on a null and a file LUN, CPU per I/O and idle CPU side
# by side) and density (benches/density.sh: 64 daemons with 4 LUNs and an idle frontend
# each, then 16 of them under load at once).
# Usage: benches/compare.sh [--quick] [--repeat N] [--polling | --density | --iscsi | --main]
#        [--target-cpu]
#   --quick: 4 s per run, one round, under 5 minutes in all (the polling and density
#   sections shortened too); otherwise 15 s per run and 3 rounds. Each round runs every
#   system once per workload, taking turns; the table shows each system's median round.
#   --polling, --density, --iscsi: only that section (--iscsi: the iSCSI systems and
#   their table); --main: the local and iSCSI systems and their table, without the polling
#   and density sections.
#   --target-cpu: tgtd gets the last CPU to itself and the initiators (and the load
#   generator) the others, as a target on a machine of its own would; otherwise all share
#   every CPU.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
runtime=15
rounds=3
only=""
target_cpu=""
while (($#)); do
  case $1 in
    --quick) runtime=4; rounds=1 ;;
    --repeat) rounds=${2:?--repeat needs a count}; shift ;;
    --polling | --density | --iscsi | --main) only=${1#--} ;;
    --target-cpu) target_cpu=$(($(nproc) - 1)) ;;
    *) echo "compare: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
# The polling and density sections, shortened with --quick.
polling_section() {
  if ((runtime < 15)); then benches/polling.sh --runtime 2 --rounds 1 --idle 3
  else benches/polling.sh --rounds "$rounds"; fi
}
density_section() {
  # Unpinned (where the kernel puts each daemon and its generator), then pinned as an
  # operator would place them: both summaries land in target/bench/density.jsonl.
  : > target/bench/density.jsonl
  local args=()
  ((runtime < 15)) && args=(--daemons 16 --loaded 4 --idle 5 --runtime 3)
  benches/density.sh "${args[@]}"
  benches/density.sh "${args[@]}" --pin
}
case $only in
  polling) polling_section; exit ;;
  density) density_section; exit ;;
esac

scripts/install-deps.sh >/dev/null
for tool in qemu-storage-daemon fio python3; do
  command -v "$tool" >/dev/null || { echo "compare: $tool is missing" >&2; exit 1; }
done
for tool in /usr/sbin/tgtd /usr/sbin/tgtadm; do
  [[ -x $tool ]] || { echo "compare: $tool is missing (Debian package tgt)" >&2; exit 1; }
done
# QEMU 10.0's qemu-storage-daemon beside the stock 7.2, with its own modules (libiscsi).
qsd10=$(scripts/install-qemu10.sh | tail -n 1)
qsd10=${qsd10%/qemu-system-x86_64}/qemu-storage-daemon
[[ -x $qsd10 ]] || { echo "compare: QEMU 10's qemu-storage-daemon is missing ($qsd10)" >&2; exit 1; }
qsd10_modules=${qsd10%/usr/bin/qemu-storage-daemon}/usr/lib/x86_64-linux-gnu/qemu
qsd10() { QEMU_MODULE_DIR=$qsd10_modules exec "$qsd10" "$@"; }
out=$here/target/bench
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
work=$(mktemp -d "$out/run.XXXXXX")
pids=()
tgtd_pid=""
target_pid=""
stop_all() { # every backend started by start_backend
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}
stop_tgtd() {
  if [[ -n $tgtd_pid ]] && kill -0 "$tgtd_pid" 2>/dev/null; then
    kill -9 "$tgtd_pid"; wait "$tgtd_pid" 2>/dev/null || true
  fi
  tgtd_pid=""
}
trap 'stop_all; stop_tgtd; rm -rf "$work"' EXIT

# shellcheck source=benches/build-tools.sh
. benches/build-tools.sh
build_tools "$work" compare
loadgen() { "$work/loadgen" "$@"; }
# Backends start straight from $vscsid (not through a shell function) so $! is the
# daemon itself: its CPU time is measured and it is the process stopped.
vscsid=$work/vscsid

# One 1 GiB raw file on this (O_DIRECT-capable) filesystem, fully written so reads hit
# allocated blocks.
disk=$out/disk.img
size=$((1 << 30))
if [[ ! -f $disk || $(stat -c %s "$disk") -ne $size ]]; then
  echo "compare: writing the 1 GiB backing file" >&2
  fio --name=fill --filename="$disk" --rw=write --bs=1M --size=$size --direct=1 \
    --ioengine=io_uring --output=/dev/null
fi

# rw bs iodepth [queues]
WORKLOADS=("randread 4096 1" "randread 4096 32" "randwrite 4096 32" "read 131072 8")
LOCAL_WORKLOADS=("${WORKLOADS[@]}" "randread 4096 32 2")
name_of() { # rw bs qd [queues]
  local q=${4:-1}
  echo "$1-$(($2 / 1024))k-qd$3$( ((q > 1)) && echo "-${q}q")"
}

wait_socket() {
  for _ in $(seq 200); do [[ -S $1 ]] && return 0; sleep 0.05; done
  echo "compare: backend socket $1 did not appear" >&2; return 1
}

# Every backend runs for the whole comparison and the systems take turns workload by
# workload, so a drift of the disk's speed during the run hits them all alike.
declare -A sock_of proto_of pid_of size_of
start_backend() { # system proto socket size command...
  local system=$1 proto=$2 sock=$3 sz=$4; shift 4
  "$@" 2>"$work/$system.log" &
  pids+=($!)
  pid_of[$system]=$!
  sock_of[$system]=$sock
  proto_of[$system]=$proto
  size_of[$system]=$sz
  wait_socket "$sock" || { cat "$work/$system.log" >&2; exit 1; }
}
run_one() { # system rw bs qd [queues]
  local system=$1
  loadgen --socket "${sock_of[$system]}" --proto "${proto_of[$system]}" --rw "$2" --bs "$3" \
    --iodepth "$4" --queues "${5:-1}" --runtime "$runtime" --size "${size_of[$system]}" \
    --backend-pid "${pid_of[$system]}" ${target_pid:+--target-pid "$target_pid"} \
    --system "$system" \
    --workload "$(name_of "$2" "$3" "$4" "${5:-1}")" |
    tee -a "$results"
}
host_ref() { # rw bs qd [queues]: the load generator's I/O shapes, no vhost-user
  loadgen --host-reference "$disk" --rw "$1" --bs "$2" --iodepth "$3" --queues "${4:-1}" \
    --runtime "$runtime" --size $size --system host-ref \
    --workload "$(name_of "$1" "$2" "$3" "${4:-1}")" |
    tee -a "$results"
}
host_fio() { # rw bs qd [jobs]: one fio job per queue, each at depth qd
  fio --name=host --filename="$disk" --rw="$1" --bs="$2" --iodepth="$3" --direct=1 \
    --ioengine=io_uring --runtime="$runtime" --time_based --size=$size \
    --numjobs="${4:-1}" --group_reporting \
    --output-format=json --output="$work/fio.json" >/dev/null
  python3 - "$work/fio.json" "$(name_of "$1" "$2" "$3" "${4:-1}")" "$runtime" <<'PY' | tee -a "$results"
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
ios = d["total_ios"] or 1
cpu = (j["usr_cpu"] + j["sys_cpu"]) / 100.0 * float(sys.argv[3]) * 1e6 / ios
print(json.dumps({"system": "host-fio", "workload": sys.argv[2], "iops": round(d["iops"]),
  "bw_mib_s": round(d["bw"] / 1024.0, 1), "lat_mean_us": round(d["lat_ns"]["mean"] / 1000.0, 1),
  "lat_p99_us": round(d["clat_ns"]["percentile"]["99.000000"] / 1000.0),
  "cpu_us_per_io": round(cpu, 3)}))
PY
}

if [[ $only != iscsi ]]; then
# vscsid on the file; QEMU's block layer and virtio-blk exported by qemu-storage-daemon on
# the same file (both run at once, one measured at a time: the image is `shared` for
# vscsid and unlocked for qemu-storage-daemon); vscsid's own ceiling on null LUNs. Each offers two request queues (vscsid
# serves each with its own thread); the one-queue workloads use the first.
start_backend vscsid scsi "$work/vscsid.sock" $size \
  "$vscsid" --socket "$work/vscsid.sock" --disk "$disk,cache=none,shared" --num-queues 2 --reconnect \
  --state-dir "$work/state"
start_backend qsd-vhost-user-blk blk "$work/qsd.sock" $size \
  qemu-storage-daemon \
  --blockdev "driver=file,node-name=file0,filename=$disk,aio=io_uring,cache.direct=on,locking=off" \
  --blockdev driver=raw,node-name=disk0,file=file0 \
  --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$work/qsd.sock,writable=on,num-queues=2"
start_backend qsd10-vhost-user-blk blk "$work/qsd10.sock" $size \
  qsd10 \
  --blockdev "driver=file,node-name=file0,filename=$disk,aio=io_uring,cache.direct=on,locking=off" \
  --blockdev driver=raw,node-name=disk0,file=file0 \
  --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$work/qsd10.sock,writable=on,num-queues=2"
start_backend vscsid-null scsi "$work/null.sock" $size \
  "$vscsid" --socket "$work/null.sock" --null 1G --num-queues 2 --reconnect
start_backend vscsid-null-poll scsi "$work/null-poll.sock" $size \
  "$vscsid" --socket "$work/null-poll.sock" --null 1G --num-queues 2 --reconnect --poll-us 50
for _ in $(seq "$rounds"); do
  for w in "${LOCAL_WORKLOADS[@]}"; do
    read -r rw bs qd nq <<< "$w"
    for system in vscsid qsd-vhost-user-blk qsd10-vhost-user-blk vscsid-null vscsid-null-poll; do
      run_one "$system" "$rw" "$bs" "$qd" "${nq:-1}"
    done
    host_ref "$rw" "$bs" "$qd" "${nq:-1}"
    host_fio "$rw" "$bs" "$qd" "${nq:-1}"
  done
done
stop_all

# Idle memory: a daemon with 4 LUNs (two disks, a null LUN, a read-only disk) after a
# frontend connected, ran I/O and went away.
for f in b c; do truncate -s 64M "$work/$f.img"; done
start_backend vscsid-4-luns scsi "$work/rss.sock" $size \
  "$vscsid" --socket "$work/rss.sock" --disk "$disk,cache=none" --disk "$work/b.img" \
  --null 1G --disk "$work/c.img,readonly" --num-queues 4 --reconnect
loadgen --socket "$work/rss.sock" --proto scsi --rw randread --bs 4096 --iodepth 32 \
  --runtime 1 --size $size --system rss-warmup >/dev/null
sleep 1
rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/${pid_of[vscsid-4-luns]}/status")
echo "{\"system\": \"vscsid\", \"workload\": \"idle-rss-4-luns\", \"rss_mib\": $(python3 -c "print(round($rss_kib / 1024, 1))")}" | tee -a "$results"
stop_all
fi

# iSCSI: one tgtd LUN on 127.0.0.1, driven through vscsid's initiator and through QEMU's
# libiscsi driver. tgtd serves it from the page cache (its default rdwr backing store), so
# the initiators and the target's CPU, not the disk, set the pace.
iscsi_disk=$out/iscsi.img
iscsi_size=$((256 << 20))
if [[ ! -f $iscsi_disk || $(stat -c %s "$iscsi_disk") -ne $iscsi_size ]]; then
  fio --name=fill --filename="$iscsi_disk" --rw=write --bs=1M --size=$iscsi_size \
    --ioengine=psync --output=/dev/null
fi
# tgtd reads through the page cache: warm it, so the system that goes first in round one
# does not pay for the cold reads.
cat "$iscsi_disk" > /dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ctl=$((port % 32768 + 1))
iqn=iqn.2024-01.io.vscsid.bench:lun
if [[ -n $target_cpu ]]; then
  ((target_cpu > 0)) || { echo "compare: --target-cpu needs two CPUs or more" >&2; exit 1; }
  taskset -c "$target_cpu" /usr/sbin/tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$port" \
    >"$work/tgtd.log" 2>&1 &
  # Everything this script starts from here on (the initiators, the load generator)
  # inherits the other CPUs; given back after the section.
  taskset -p -c "0-$((target_cpu - 1))" $$ >/dev/null
else
  /usr/sbin/tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$port" >"$work/tgtd.log" 2>&1 &
fi
tgtd_pid=$!
# The load generator reports tgtd's CPU beside the initiator's: which one set the pace.
target_pid=$tgtd_pid
tgtadm() { /usr/sbin/tgtadm -C "$ctl" --lld iscsi "$@"; }
for _ in $(seq 100); do tgtadm --op show --mode sys >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm --op new --mode target --tid 1 -T "$iqn"
tgtadm --op new --mode logicalunit --tid 1 --lun 1 -b "$iscsi_disk"
tgtadm --op bind --mode target --tid 1 -I ALL
url=iscsi://127.0.0.1:$port/$iqn/1
start_backend vscsid-iscsi scsi "$work/vscsid-iscsi.sock" $iscsi_size \
  "$vscsid" --socket "$work/vscsid-iscsi.sock" --iscsi "$url" --num-queues 1 --reconnect
start_backend qsd-iscsi blk "$work/qsd-iscsi.sock" $iscsi_size \
  qemu-storage-daemon \
  --blockdev "driver=iscsi,node-name=disk0,transport=tcp,portal=127.0.0.1:$port,target=$iqn,lun=1,cache.direct=on" \
  --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$work/qsd-iscsi.sock,writable=on,num-queues=1"
start_backend qsd10-iscsi blk "$work/qsd10-iscsi.sock" $iscsi_size \
  qsd10 \
  --blockdev "driver=iscsi,node-name=disk0,transport=tcp,portal=127.0.0.1:$port,target=$iqn,lun=1,cache.direct=on" \
  --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$work/qsd10-iscsi.sock,writable=on,num-queues=1"
# Each round starts with another system, and each workload with the target's writes made
# durable: tgtd writes through the page cache, so the write-back of a randwrite run would
# otherwise land in the next workload's first run, always the same system's.
iscsi_systems=(vscsid-iscsi qsd-iscsi qsd10-iscsi)
for round in $(seq "$rounds"); do
  for w in "${WORKLOADS[@]}"; do
    read -r rw bs qd <<< "$w"
    sync "$iscsi_disk"
    for i in 0 1 2; do
      run_one "${iscsi_systems[(i + round - 1) % 3]}" "$rw" "$bs" "$qd"
    done
  done
done
stop_all
stop_tgtd
target_pid=""
[[ -z $target_cpu ]] || taskset -p -c "0-$target_cpu" $$ >/dev/null

python3 benches/report.py "$results" "$out/chart.svg"
[[ $only == iscsi || $only == main ]] && exit
polling_section
density_section
