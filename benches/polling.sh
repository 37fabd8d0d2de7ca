#!/usr/bin/env bash
# Busy polling's trade-off: the load generator drives vscsid on a null LUN and on a file
# LUN (cache=none), one queue, at queue depth 1 and 32, with polling off (--poll-us 0), a
# fixed 50 µs window (--poll-us 50) and adaptive polling (the default). Each run reports
# IOPS, latency and vscsid's CPU per I/O, then stays connected without I/O for --idle
# seconds and reports vscsid's CPU meanwhile (idle_cpu_pct, % of one core). Rounds are
# interleaved (every setting once per workload, in turn); the table shows the median
# round and the spread (min–max) of IOPS and CPU per I/O.
# Usage: benches/polling.sh [--runtime SECS] [--rounds N] [--idle SECS]
# Writes target/bench/polling.jsonl and prints the table.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
runtime=5 rounds=3 idle=10
while (($#)); do
  case $1 in
    --runtime) runtime=${2:?}; shift ;;
    --rounds) rounds=${2:?}; shift ;;
    --idle) idle=${2:?}; shift ;;
    *) echo "polling: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
out=$here/target/bench
mkdir -p "$out"
results=$out/polling.jsonl
: > "$results"
work=$(mktemp -d "$out/poll.XXXXXX")
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT

# shellcheck source=benches/build-tools.sh
. benches/build-tools.sh
build_tools "$work" polling

disk=$out/disk.img
size=$((1 << 30))
if [[ ! -f $disk || $(stat -c %s "$disk") -ne $size ]]; then
  fio --name=fill --filename="$disk" --rw=write --bs=1M --size=$size --direct=1 \
    --ioengine=io_uring --output=/dev/null
fi

declare -A pid_of
start() { # name lun-args... (the poll setting is in the name: off, 50, adaptive)
  local name=$1; shift
  local setting=${name##*-}
  [[ $setting == off ]] && setting=0
  "$work/vscsid" --socket "$work/$name.sock" "$@" --num-queues 1 --reconnect \
    --poll-us "$setting" 2>"$work/$name.log" &
  pids+=($!)
  pid_of[$name]=$!
  for _ in $(seq 200); do [[ -S $work/$name.sock ]] && return 0; sleep 0.05; done
  echo "polling: $name did not start" >&2; cat "$work/$name.log" >&2; exit 1
}
for s in off 50 adaptive; do
  start "null-$s" --null 1G
  start "file-$s" --disk "$disk,cache=none,shared" --state-dir "$work/state-$s"
done
for r in $(seq "$rounds"); do
  for lun in null file; do
    for qd in 1 32; do
      for s in off 50 adaptive; do
        name=$lun-$s
        "$work/loadgen" --socket "$work/$name.sock" --proto scsi --rw randread --bs 4096 \
          --iodepth "$qd" --runtime "$runtime" --size $size --backend-pid "${pid_of[$name]}" \
          --system "$name" --workload "randread-4k-qd$qd" \
          $( ((qd == 32)) && echo "--idle $idle") | tee -a "$results"
      done
    done
  done
done
stop_all
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runs = {}
for r in rows:
    runs.setdefault((r["system"], r["workload"]), []).append(r)
def med(v):
    v = sorted(v)
    return v[(len(v) - 1) // 2]
print(f"{'system':<15} {'workload':<17} {'IOPS (min-max)':>26} {'CPU us/IO (min-max)':>22} {'lat us':>7} {'kicks/IO':>8} {'idle CPU %':>10}")
for (s, w), v in sorted(runs.items(), key=lambda kv: (kv[0][0].split('-')[0], kv[0][1], kv[0][0])):
    iops = [r["iops"] for r in v]
    cpu = [r["cpu_us_per_io"] for r in v if r["cpu_us_per_io"] is not None]
    idle = [r["idle_cpu_pct"] for r in v if r.get("idle_cpu_pct") is not None]
    lat = med([r["lat_mean_us"] for r in v])
    kicks = med([r.get("kicks_per_io", 0) for r in v])
    i = f"{med(iops)/1e3:.0f}k ({min(iops)/1e3:.0f}-{max(iops)/1e3:.0f}k)"
    c = f"{med(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f})" if cpu else "-"
    d = f"{med(idle):.3f}" if idle else "-"
    print(f"{s:<15} {w:<17} {i:>26} {c:>22} {lat:>7.1f} {kicks:>8.3f} {d:>10}")
PY
