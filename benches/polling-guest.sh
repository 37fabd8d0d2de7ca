#!/usr/bin/env bash
# Where the local workloads' gap to the host reference goes: the same file LUN
# (cache=none, one queue) driven by a load generator that sleeps for the device's
# notifications, as the comparison's does, and by one that polls its used ring and asks
# for no notifications (`loadgen --spin`, a guest driver with polling queues), against
# the host reference (the generator's I/O shapes straight on the file, no vhost-user) and
# qemu-storage-daemon 7.2 (vhost-user-blk, aio=io_uring, cache.direct=on) under both
# generators. vscsid runs with its default adaptive polling and with a fixed window
# (--poll-us 200) that keeps its worker awake between I/Os. What the polling generator
# takes away is the generator's own wake-up; what --poll-us 200 takes away is the
# daemon's. Rounds are interleaved (every system once per workload, in turn); the table
# is report.py's (ratios against the host reference and against qsd with a sleeping
# generator). The two-queue workload is left out: two polling workers and a polling
# generator need three CPUs.
# Usage: benches/polling-guest.sh [--runtime SECS] [--rounds N] (about 8 minutes)
# Writes target/bench/polling-guest.jsonl and prints the table.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
runtime=6 rounds=3
while (($#)); do
  case $1 in
    --runtime) runtime=${2:?}; shift ;;
    --rounds) rounds=${2:?}; shift ;;
    *) echo "polling-guest: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
scripts/install-deps.sh >/dev/null
for tool in qemu-storage-daemon fio python3; do
  command -v "$tool" >/dev/null || { echo "polling-guest: $tool is missing" >&2; exit 1; }
done
out=$here/target/bench
mkdir -p "$out"
results=$out/polling-guest.jsonl
: > "$results"
work=$(mktemp -d "$out/pguest.XXXXXX")
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT

# shellcheck source=benches/build-tools.sh
. benches/build-tools.sh
build_tools "$work" polling-guest

disk=$out/disk.img
size=$((1 << 30))
if [[ ! -f $disk || $(stat -c %s "$disk") -ne $size ]]; then
  fio --name=fill --filename="$disk" --rw=write --bs=1M --size=$size --direct=1 \
    --ioengine=io_uring --output=/dev/null
fi

declare -A pid_of sock_of proto_of
start() { # name proto socket command...
  local name=$1 proto=$2 sock=$3; shift 3
  "$@" 2>"$work/$name.log" &
  pids+=($!)
  pid_of[$name]=$!
  sock_of[$name]=$sock
  proto_of[$name]=$proto
  for _ in $(seq 200); do [[ -S $sock ]] && return 0; sleep 0.05; done
  echo "polling-guest: $name did not start" >&2; cat "$work/$name.log" >&2; exit 1
}
start vscsid scsi "$work/vscsid.sock" "$work/vscsid" --socket "$work/vscsid.sock" \
  --disk "$disk,cache=none,shared" --num-queues 1 --reconnect --state-dir "$work/state"
start vscsid-poll200 scsi "$work/poll.sock" "$work/vscsid" --socket "$work/poll.sock" \
  --disk "$disk,cache=none,shared" --num-queues 1 --reconnect --poll-us 200 \
  --state-dir "$work/state-poll"
start qsd-vhost-user-blk blk "$work/qsd.sock" qemu-storage-daemon \
  --blockdev "driver=file,node-name=file0,filename=$disk,aio=io_uring,cache.direct=on,locking=off" \
  --blockdev driver=raw,node-name=disk0,file=file0 \
  --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$work/qsd.sock,writable=on,num-queues=1"

run() { # system generator(sleep|spin) rw bs qd
  local system=$1 gen=$2 name=$1
  [[ $gen == spin ]] && name=$1-spin-gen
  "$work/loadgen" --socket "${sock_of[$system]}" --proto "${proto_of[$system]}" --rw "$3" \
    --bs "$4" --iodepth "$5" --runtime "$runtime" --size $size \
    --backend-pid "${pid_of[$system]}" --system "$name" --workload "$3-$(($4 / 1024))k-qd$5" \
    $([[ $gen == spin ]] && echo --spin) | tee -a "$results"
}
for _ in $(seq "$rounds"); do
  for w in "randread 4096 1" "randread 4096 32" "randwrite 4096 32" "read 131072 8"; do
    read -r rw bs qd <<< "$w"
    "$work/loadgen" --host-reference "$disk" --rw "$rw" --bs "$bs" --iodepth "$qd" \
      --runtime "$runtime" --size $size --system host-ref \
      --workload "$rw-$((bs / 1024))k-qd$qd" | tee -a "$results"
    for system in vscsid qsd-vhost-user-blk; do
      run "$system" sleep "$rw" "$bs" "$qd"
      run "$system" spin "$rw" "$bs" "$qd"
    done
    run vscsid-poll200 spin "$rw" "$bs" "$qd"
  done
done
stop_all
python3 benches/report.py "$results" "$out/polling-guest.svg"
