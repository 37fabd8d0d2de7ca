#!/usr/bin/env bash
# Density: many per-VM daemons on one host. Starts --daemons vscsid processes (default 64),
# each with default options and 4 LUNs (two null LUNs, two sparse 16 MiB files), and
# connects an idle frontend to each (the load generator: a short burst of I/O, then
# connected without I/O). Over --idle seconds it measures the daemons' total CPU (% of one
# core, from the scheduler's per-thread accounting) and each daemon's resident memory;
# then --loaded of them (default 16) run the same load at once (randread 4k, qd 4, on a
# null LUN, --runtime seconds): IOPS per daemon and the slowest against the mean.
# Every process it starts is stopped by its PID; counts and times are bounded.
# Usage: benches/density.sh [--daemons N] [--loaded N] [--idle SECS] [--runtime SECS]
#   [--poll-us SETTING] (passed to every daemon; default: the daemon's default)
# Appends its JSON lines to target/bench/density.jsonl and prints a summary.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
daemons=64 loaded=16 idle=20 runtime=10
poll=()
while (($#)); do
  case $1 in
    --daemons) daemons=${2:?}; shift ;;
    --loaded) loaded=${2:?}; shift ;;
    --idle) idle=${2:?}; shift ;;
    --runtime) runtime=${2:?}; shift ;;
    --poll-us) poll=(--poll-us "${2:?}"); shift ;;
    *) echo "density: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
((daemons >= 1 && daemons <= 256 && loaded >= 1 && loaded <= daemons)) ||
  { echo "density: 1 <= --loaded <= --daemons <= 256" >&2; exit 2; }
out=$here/target/bench
mkdir -p "$out"
results=$out/density.jsonl
: > "$results"
work=$(mktemp -d "$out/density.XXXXXX")
daemon_pids=()
frontend_pids=()
stop() { # pids...
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
trap 'stop "${frontend_pids[@]}"; stop "${daemon_pids[@]}"; rm -rf "$work"' EXIT

cargo build --release --quiet
cp target/release/vscsid "$work/vscsid"
lg=$(cargo bench --bench loadgen --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[[ -x $lg ]] || { echo "density: could not build the load generator" >&2; exit 1; }
cp "$lg" "$work/loadgen"

for i in $(seq 0 $((daemons - 1))); do
  truncate -s 16M "$work/$i-a.img" "$work/$i-b.img"
  "$work/vscsid" --socket "$work/$i.sock" --reconnect --null 64M --null 64M \
    --disk "$work/$i-a.img" --disk "$work/$i-b.img" "${poll[@]}" 2>"$work/$i.log" &
  daemon_pids+=($!)
done
for i in $(seq 0 $((daemons - 1))); do
  for _ in $(seq 200); do [[ -S $work/$i.sock ]] && break; sleep 0.05; done
  [[ -S $work/$i.sock ]] || { echo "density: daemon $i did not start" >&2; cat "$work/$i.log" >&2; exit 1; }
done

# Idle frontends: a short burst of I/O (queues set up, LUNs read), then connected without
# I/O for longer than the measurement.
hold=$((idle + 20))
for i in $(seq 0 $((daemons - 1))); do
  "$work/loadgen" --socket "$work/$i.sock" --proto scsi --rw randread --bs 4096 --iodepth 1 \
    --runtime 0.2 --size 64M --idle "$hold" --system idle >/dev/null 2>"$work/fe-$i.log" &
  frontend_pids+=($!)
done
sleep 5 # every burst over (64 × 0.2 s on two cores, with room)

# The daemons' CPU over the idle window and their resident memory.
python3 - "$idle" "$results" "${daemon_pids[@]}" <<'PY'
import glob, json, statistics, sys, time
idle, results, pids = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
def cpu_ns(pid):
    total = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            total += int(open(f).read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total
def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
t0, c0 = time.monotonic(), sum(cpu_ns(p) for p in pids)
time.sleep(idle)
t1, c1 = time.monotonic(), sum(cpu_ns(p) for p in pids)
rss = sorted(rss_kib(p) / 1024 for p in pids)
row = {"system": "vscsid", "workload": f"density-idle-{len(pids)}", "daemons": len(pids),
       "idle_s": round(t1 - t0, 1),
       "cpu_pct_total": round((c1 - c0) / ((t1 - t0) * 1e9) * 100, 4),
       "rss_mib_max": round(rss[-1], 1), "rss_mib_median": round(statistics.median(rss), 1)}
print(json.dumps(row))
open(results, "a").write(json.dumps(row) + "\n")
PY
stop "${frontend_pids[@]}"
frontend_pids=()

# Under load: the first $loaded daemons at once, the same workload each, all starting at
# the same instant (after every generator connected) so they share the whole interval.
start_at=$(python3 -c 'import time; print(f"{time.time() + 3:.3f}")')
for i in $(seq 0 $((loaded - 1))); do
  "$work/loadgen" --socket "$work/$i.sock" --proto scsi --rw randread --bs 4096 --iodepth 4 \
    --runtime "$runtime" --size 64M --system "vscsid-$i" --workload density-load \
    --start-at "$start_at" \
    --backend-pid "${daemon_pids[$i]}" >"$work/load-$i.json" 2>"$work/fe-$i.log" &
  frontend_pids+=($!)
done
for p in "${frontend_pids[@]}"; do wait "$p" || { echo "density: a load run failed" >&2; exit 1; }; done
frontend_pids=()
cat "$work"/load-*.json >> "$results"
python3 - "$results" "$loaded" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
load = [r for r in rows if r.get("workload") == "density-load"]
iops = [r["iops"] for r in load]
mean = statistics.mean(iops)
row = {"system": "vscsid", "workload": f"density-load-{len(load)}", "daemons": len(load),
       "iops_total": round(sum(iops)), "iops_mean": round(mean), "iops_min": round(min(iops)),
       "iops_max": round(max(iops)), "slowest_over_mean": round(min(iops) / mean, 3),
       "cpu_us_per_io_median": statistics.median(r["cpu_us_per_io"] for r in load)}
print(json.dumps(row))
open(sys.argv[1], "a").write(json.dumps(row) + "\n")
PY
