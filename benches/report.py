#!/usr/bin/env python3
"""Reads the benchmark's JSON lines, prints a table of ratios against QEMU's own device
(qsd-vhost-user-blk for local systems, qsd-iscsi for iSCSI ones) and, for local systems,
against the host reference (host-ref: the load generator's I/O shapes without
vhost-user), with each system's spread over the rounds, and writes an SVG bar chart of
IOPS relative to QEMU."""
import json
import sys

all_rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in all_rows if "iops" in r]
memory = [r for r in all_rows if "rss_mib" in r]
svg_path = sys.argv[2]
base_name = "qsd-vhost-user-blk"


def base_of(system):
    """The QEMU system a system is compared with."""
    return "qsd-iscsi" if system.endswith("-iscsi") else base_name


systems = []
workloads = []
for r in rows:
    if r["system"] not in systems:
        systems.append(r["system"])
    if r["workload"] not in workloads:
        workloads.append(r["workload"])
# Several rounds: each (system, workload) is represented by its median round by IOPS.
runs = {}
for r in rows:
    runs.setdefault((r["system"], r["workload"]), []).append(r)
by = {k: sorted(v, key=lambda r: r["iops"])[(len(v) - 1) // 2] for k, v in runs.items()}
rounds = max((len(v) for v in runs.values()), default=0)

def spread(system, workload):
    """(max - min) / median of a system's IOPS over the rounds, in percent."""
    v = [r["iops"] for r in runs[(system, workload)]]
    med = by[(system, workload)]["iops"]
    return 100.0 * (max(v) - min(v)) / med if med else float("nan")


print()
print(f"{rounds} round(s); median round per system and workload; spread = (max - min) / median")
print(f"{'workload':<20} {'system':<21} {'IOPS':>10} {'spread':>7} {'x qsd':>7} {'x ref':>7} "
      f"{'mean us':>9} {'-ref us':>8} {'p99 us':>8} {'CPU us/IO':>10}")
for w in workloads:
    ref = by.get(("host-ref", w))
    for s in systems:
        base = by.get((base_of(s), w))
        r = by.get((s, w))
        if not r:
            continue
        ratio = r["iops"] / base["iops"] if base and base["iops"] else float("nan")
        local = not s.endswith("-iscsi")
        x_ref = r["iops"] / ref["iops"] if local and ref and ref["iops"] else float("nan")
        d_ref = r["lat_mean_us"] - ref["lat_mean_us"] if local and ref else float("nan")
        cpu = r["cpu_us_per_io"]
        cpu = f"{cpu:.2f}" if cpu is not None else "-"
        print(f"{w:<20} {s:<21} {r['iops']:>10.0f} {spread(s, w):>6.1f}% {ratio:>7.2f} {x_ref:>7.2f} "
              f"{r['lat_mean_us']:>9.1f} {d_ref:>8.1f} {r['lat_p99_us']:>8.0f} {cpu:>10}")
    print()

# Where the CPU went, for runs that measured a target process (iSCSI: tgtd on this machine):
# the initiator's, the target's and the load generator's CPU per I/O, the target's share
# of one core and the machine's of all its CPUs, so a run shows which one set the pace.
party = [(w, s) for w in workloads for s in systems
         if (s, w) in by and by[(s, w)].get("target_cpu_us_per_io") is not None]
if party:
    print("CPU per I/O of each party (median round, us); target busy and its busiest thread in % of one core,")
    print("machine in % of all CPUs")
    print(f"{'workload':<20} {'system':<21} {'IOPS':>10} {'backend':>8} {'target':>8} {'generator':>9} "
          f"{'target %':>9} {'thread %':>9} {'machine %':>10}")
    for w, s in party:
        r = by[(s, w)]
        num = lambda k, f: f.format(r[k]) if r.get(k) is not None else "-"
        print(f"{w:<20} {s:<21} {r['iops']:>10.0f} {num('cpu_us_per_io', '{:.2f}'):>8} "
              f"{num('target_cpu_us_per_io', '{:.2f}'):>8} {num('gen_cpu_us_per_io', '{:.2f}'):>9} "
              f"{num('target_busy_pct', '{:.1f}'):>9} {num('target_top_thread_pct', '{:.1f}'):>9} "
              f"{num('machine_busy_pct', '{:.1f}'):>10}")
    print()

# Grouped bars: IOPS of each system relative to qsd-vhost-user-blk, per workload.
colors = ["#2b6cb0", "#718096", "#a0aec0", "#38a169", "#68d391", "#d69e2e", "#9f7aea", "#e53e3e", "#ed8936"]
W, H, left, bottom, top = 900, 420, 70, 60, 40
group_w = (W - left - 20) / max(1, len(workloads))
bar_w = group_w * 0.8 / max(1, len(systems))
ratios = [by[(s, w)]["iops"] / by[(base_of(s), w)]["iops"]
          for w in workloads for s in systems
          if (s, w) in by and (base_of(s), w) in by and by[(base_of(s), w)]["iops"]]
ymax = max(ratios + [1.0]) * 1.15
scale = (H - bottom - top) / ymax
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="22" text-anchor="middle" font-size="15">IOPS relative to QEMU (qsd-vhost-user-blk; qsd-iscsi for the iSCSI pair), same load generator</text>']
for i in range(0, int(ymax) + 2):
    y = H - bottom - i * scale
    if y < top:
        break
    out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{W-20}" y2="{y:.1f}" stroke="#ddd"/>')
    out.append(f'<text x="{left-8}" y="{y+4:.1f}" text-anchor="end">{i}x</text>')
for gi, w in enumerate(workloads):
    gx = left + gi * group_w + group_w * 0.1
    for si, s in enumerate(systems):
        r, b = by.get((s, w)), by.get((base_of(s), w))
        if not r or not b or not b["iops"]:
            continue
        v = r["iops"] / b["iops"]
        h = v * scale
        x = gx + si * bar_w
        out.append(f'<rect x="{x:.1f}" y="{H-bottom-h:.1f}" width="{bar_w-2:.1f}" height="{h:.1f}" fill="{colors[si % len(colors)]}"/>')
        out.append(f'<text x="{x+bar_w/2-1:.1f}" y="{H-bottom-h-4:.1f}" text-anchor="middle" font-size="10">{v:.2f}</text>')
    out.append(f'<text x="{gx+group_w*0.4:.1f}" y="{H-bottom+18}" text-anchor="middle">{w}</text>')
for si, s in enumerate(systems):
    x = left + (si % 5) * 170
    y = H - 38 + (si // 5) * 16
    out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{colors[si % len(colors)]}"/>')
    out.append(f'<text x="{x+16}" y="{y+10}">{s}</text>')
out.append("</svg>")
open(svg_path, "w").write("\n".join(out))
for r in memory:
    print(f"{r['system']} {r['workload']}: {r['rss_mib']} MiB resident")
print(f"chart: {svg_path}")
