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
#   [--pin] (daemon i and its load generator on CPU i mod the CPU count, as an operator
#   would place a VM's vCPUs and its daemon together)
# During the load it samples which CPU each loaded daemon's threads last ran on, so the
# summary can show IOPS per CPU: on a small host the kernel may put more daemon and
# generator pairs on one CPU than on another, and pairs that share a CPU share its time.
# Appends its JSON lines to target/bench/density.jsonl and prints a summary.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
daemons=64 loaded=16 idle=20 runtime=10
poll=()
pin=0
while (($#)); do
  case $1 in
    --daemons) daemons=${2:?}; shift ;;
    --loaded) loaded=${2:?}; shift ;;
    --idle) idle=${2:?}; shift ;;
    --runtime) runtime=${2:?}; shift ;;
    --poll-us) poll=(--poll-us "${2:?}"); shift ;;
    --pin) pin=1 ;;
    *) echo "density: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
((daemons >= 1 && daemons <= 256 && loaded >= 1 && loaded <= daemons)) ||
  { echo "density: 1 <= --loaded <= --daemons <= 256" >&2; exit 2; }
out=$here/target/bench
mkdir -p "$out"
results=$out/density.jsonl
work=$(mktemp -d "$out/density.XXXXXX")
run=$work/run.jsonl
daemon_pids=()
frontend_pids=()
stop() { # pids...
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
trap 'stop "${frontend_pids[@]}"; stop "${daemon_pids[@]}"; rm -rf "$work"' EXIT

# shellcheck source=benches/build-tools.sh
. benches/build-tools.sh
build_tools "$work" density

ncpu=$(nproc)
on_cpu() { # i: the command prefix that places daemon i and its generator (nothing unpinned)
  ((pin)) && echo "taskset -c $(($1 % ncpu))"
  return 0
}
for i in $(seq 0 $((daemons - 1))); do
  truncate -s 16M "$work/$i-a.img" "$work/$i-b.img"
  $(on_cpu "$i") "$work/vscsid" --socket "$work/$i.sock" --reconnect --null 64M --null 64M \
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
python3 - "$idle" "$run" "${daemon_pids[@]}" <<'PY'
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
  $(on_cpu "$i") "$work/loadgen" --socket "$work/$i.sock" --proto scsi --rw randread \
    --bs 4096 --iodepth 4 --runtime "$runtime" --size 64M --system "vscsid-$i" \
    --workload density-load --start-at "$start_at" \
    --backend-pid "${daemon_pids[$i]}" >"$work/load-$i.json" 2>"$work/fe-$i.log" &
  frontend_pids+=($!)
done
# Where each loaded daemon's threads run: every 50 ms over the run, the CPU each thread
# that ran since the last sample last ran on (field 39 of /proc/PID/task/TID/stat),
# counted per daemon.
python3 - "$start_at" "$runtime" "$work/placement.json" "${daemon_pids[@]:0:loaded}" <<'PY' &
import collections, glob, json, sys, time
start, runtime, out, pids = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
time.sleep(max(0.0, start - time.time() + 0.5))
counts = {p: collections.Counter() for p in pids}
ran = {}
end = time.monotonic() + max(0.5, runtime - 1.0)
for _ in range(100000):
    if time.monotonic() >= end:
        break
    for p in pids:
        for f in glob.glob(f"/proc/{p}/task/*/stat"):
            try:
                fields = open(f).read().rsplit(")", 1)[1].split()
                spent = int(fields[11]) + int(fields[12])
                if f in ran and spent > ran[f]:
                    counts[p][int(fields[36])] += 1
                ran[f] = spent
            except (OSError, ValueError, IndexError):
                pass
    time.sleep(0.05)
json.dump({p: dict(c) for p, c in counts.items()}, open(out, "w"))
PY
sampler=$!
for p in "${frontend_pids[@]}"; do wait "$p" || { echo "density: a load run failed" >&2; exit 1; }; done
frontend_pids=()
wait "$sampler" || { echo "density: the placement sampler failed" >&2; exit 1; }
cat "$work"/load-*.json >> "$run"
python3 - "$run" "$work/placement.json" "$pin" "${daemon_pids[@]:0:loaded}" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
placement, pinned, pids = json.load(open(sys.argv[2])), sys.argv[3] == "1", sys.argv[4:]
load = [r for r in rows if r.get("workload") == "density-load"]
iops = [r["iops"] for r in load]
mean = statistics.mean(iops)
# The CPU each daemon ran on most, and the IOPS of the daemons that ran mostly there.
per_cpu = collections.defaultdict(list)
for r in load:
    i = int(r["system"].rsplit("-", 1)[1])
    seen = placement.get(pids[i], {})
    if seen:
        cpu = max(seen, key=seen.get)
        r["cpu"], r["cpu_share"] = int(cpu), round(seen[cpu] / sum(seen.values()), 2)
        per_cpu[int(cpu)].append(r["iops"])
row = {"system": "vscsid", "workload": f"density-load-{len(load)}", "daemons": len(load),
       "pinned": pinned,
       "iops_total": round(sum(iops)), "iops_mean": round(mean), "iops_min": round(min(iops)),
       "iops_max": round(max(iops)), "slowest_over_mean": round(min(iops) / mean, 3),
       "cpu_us_per_io_median": statistics.median(r["cpu_us_per_io"] for r in load),
       "per_cpu": {str(c): {"daemons": len(v), "iops_mean": round(statistics.mean(v)),
                            "iops_total": round(sum(v))}
                   for c, v in sorted(per_cpu.items())}}
print(json.dumps(row))
with open(sys.argv[1], "w") as f:
    for r in rows:
        if r.get("workload") == "density-load":
            r = next(x for x in load if x["system"] == r["system"])
        f.write(json.dumps(r) + "\n")
    f.write(json.dumps(row) + "\n")
PY
cat "$run" >> "$results"
