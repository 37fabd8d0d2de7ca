#!/usr/bin/env bash
# Side-by-side device benchmark: the same load generator (benches/loadgen.rs) drives
#   vscsid              vscsid, cache=none, on the backing file (virtio-scsi)
#   qsd-vhost-user-blk  qemu-storage-daemon exporting the same file as vhost-user-blk,
#                       aio=io_uring, cache.direct=on: QEMU's own block layer and virtio-blk
#   vscsid-null         vscsid with a null LUN: the daemon's own ceiling
# and fio measures the machine's limit on the same file:
#   host-fio            fio, io_uring, direct=1
# Workloads: randread-4k-qd1, randread-4k-qd32, randwrite-4k-qd32, read-128k-qd8.
# Prints one JSON object per line, then a table of ratios against qsd-vhost-user-blk, and
# writes target/bench/results.jsonl and target/bench/chart.svg.
# Usage: benches/compare.sh [--quick]     (--quick: 4 s per run, under 5 minutes in all)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
runtime=15
[[ ${1:-} == --quick ]] && runtime=4

scripts/install-deps.sh >/dev/null
for tool in qemu-storage-daemon fio python3; do
  command -v "$tool" >/dev/null || { echo "compare: $tool is missing" >&2; exit 1; }
done
cargo build --release --quiet
cargo bench --quiet --bench loadgen --no-run 2>/dev/null
loadgen() { cargo bench --quiet --bench loadgen -- "$@"; }

out=$here/target/bench
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
work=$(mktemp -d "$out/run.XXXXXX")
backend_pid=""
stop_backend() {
  if [[ -n $backend_pid ]] && kill -0 "$backend_pid" 2>/dev/null; then
    kill "$backend_pid"; wait "$backend_pid" 2>/dev/null || true
  fi
  backend_pid=""
}
trap 'stop_backend; rm -rf "$work"' EXIT

# One 1 GiB raw file on this (O_DIRECT-capable) filesystem, fully written so reads hit
# allocated blocks.
disk=$out/disk.img
size=$((1 << 30))
if [[ ! -f $disk || $(stat -c %s "$disk") -ne $size ]]; then
  echo "compare: writing the 1 GiB backing file" >&2
  fio --name=fill --filename="$disk" --rw=write --bs=1M --size=$size --direct=1 \
    --ioengine=io_uring --output=/dev/null
fi

WORKLOADS=("randread 4096 1" "randread 4096 32" "randwrite 4096 32" "read 131072 8")
name_of() { echo "$1-$(($2 / 1024))k-qd$3"; }

wait_socket() {
  for _ in $(seq 200); do [[ -S $1 ]] && return 0; sleep 0.05; done
  echo "compare: backend socket $1 did not appear" >&2; return 1
}

run_loadgen() { # system proto socket
  local system=$1 proto=$2 sock=$3
  for w in "${WORKLOADS[@]}"; do
    read -r rw bs qd <<< "$w"
    loadgen --socket "$sock" --proto "$proto" --rw "$rw" --bs "$bs" --iodepth "$qd" \
      --runtime "$runtime" --size $size --backend-pid "$backend_pid" \
      --system "$system" --workload "$(name_of "$rw" "$bs" "$qd")" | tee -a "$results"
  done
}

# vscsid on the file.
sock=$work/vscsid.sock
target/release/vscsid --socket "$sock" --disk "$disk,cache=none" --num-queues 1 --reconnect 2>"$work/vscsid.log" &
backend_pid=$!
wait_socket "$sock"
run_loadgen vscsid scsi "$sock"
stop_backend

# QEMU's block layer and virtio-blk, exported by qemu-storage-daemon.
sock=$work/qsd.sock
qemu-storage-daemon \
  --blockdev "driver=file,node-name=file0,filename=$disk,aio=io_uring,cache.direct=on" \
  --blockdev driver=raw,node-name=disk0,file=file0 \
  --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$sock,writable=on,num-queues=1" \
  2>"$work/qsd.log" &
backend_pid=$!
wait_socket "$sock"
run_loadgen qsd-vhost-user-blk blk "$sock"
stop_backend

# The daemon's own ceiling.
sock=$work/null.sock
target/release/vscsid --socket "$sock" --null 1G --num-queues 1 --reconnect 2>"$work/null.log" &
backend_pid=$!
wait_socket "$sock"
run_loadgen vscsid-null scsi "$sock"
stop_backend

# The machine's limit on the same file.
for w in "${WORKLOADS[@]}"; do
  read -r rw bs qd <<< "$w"
  fio --name=host --filename="$disk" --rw="$rw" --bs="$bs" --iodepth="$qd" --direct=1 \
    --ioengine=io_uring --runtime="$runtime" --time_based --size=$size \
    --output-format=json --output="$work/fio.json" >/dev/null
  python3 - "$work/fio.json" "$(name_of "$rw" "$bs" "$qd")" "$runtime" <<'PY' | tee -a "$results"
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
done

python3 benches/report.py "$results" "$out/chart.svg"
