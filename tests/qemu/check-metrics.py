#!/usr/bin/python3
"""Checks a scrape of vscsid's metrics endpoint: every line is a HELP, a TYPE or a
well-formed sample (a strict line check), the text parses with the Prometheus client
library's parser (Debian's python3-prometheus-client), and LUN <target>:<lun> of VM <vm>
has read and written (commands and bytes > 0) and its latency histogram counted them.

Usage: check-metrics.py <file> <vm> <target> <lun>. Prints one line; exit 0 when it holds.
"""
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"(?:[+-]?Inf|NaN|[+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)"
SAMPLE = re.compile(rf"^{NAME}(?:\{{{LABEL}(?:,{LABEL})*\}})? {VALUE}$")
HELP = re.compile(rf"^# HELP {NAME} .*$")
TYPE = re.compile(rf"^# TYPE {NAME} (?:counter|gauge|histogram|summary|untyped)$")


def main():
    path, vm, target, lun = sys.argv[1:5]
    text = open(path, encoding="utf-8").read()
    if not text.endswith("\n"):
        sys.exit("metrics: the text does not end with a newline")
    for n, line in enumerate(text.splitlines(), 1):
        if not (SAMPLE.match(line) or HELP.match(line) or TYPE.match(line)):
            sys.exit(f"metrics: line {n} is not Prometheus text: {line!r}")
    want = {"vm": vm, "target": target, "lun": lun}
    found = {}
    families = 0
    for family in text_string_to_metric_families(text):
        families += 1
        for s in family.samples:
            if all(s.labels.get(k) == v for k, v in want.items()):
                key = (s.name, s.labels.get("kind", s.labels.get("le", "")))
                found[key] = s.value
    need = {
        "reads": ("vscsid_lun_commands_total", "read"),
        "writes": ("vscsid_lun_commands_total", "write"),
        "read-bytes": ("vscsid_lun_bytes_total", "read"),
        "written-bytes": ("vscsid_lun_bytes_total", "write"),
        "latency-count": ("vscsid_lun_latency_seconds_count", ""),
        "latency-inf": ("vscsid_lun_latency_seconds_bucket", "+Inf"),
    }
    got = {k: found.get(key, 0) for k, key in need.items()}
    summary = " ".join(f"{k}={v:.0f}" for k, v in got.items())
    if any(v <= 0 for v in got.values()):
        sys.exit(f"metrics: LUN {target}:{lun} of {vm} lacks I/O: {summary}")
    if got["latency-count"] != got["latency-inf"]:
        sys.exit(f"metrics: histogram count and +Inf bucket differ: {summary}")
    print(f"{families} families parse; LUN {target}:{lun}: {summary}")


main()
