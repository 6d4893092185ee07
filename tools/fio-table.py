#!/usr/bin/env python3
"""Turns fio JSON results into the rows and tables of the tools/bench-*.sh scripts.

  fio-table.py row WORKLOAD SERVER FIO.json >> results.tsv
  fio-table.py table results.tsv REF SERVER=LABEL [SERVER=LABEL ...]

`table` prints a markdown table of medians over the rotating rounds, the IOPS min-max,
each server's median IOPS as a ratio to the REF server's, and the median of the ratios taken
round by round (each round runs every server once, minutes apart at most, so this one is the
less sensitive to a machine whose speed drifts between rounds).
"""
import json
import statistics as st
import sys


def row(name, server, path):
    j = json.load(open(path))["jobs"][0]
    d = j["write"] if j["write"]["io_bytes"] else j["read"]
    p = d["clat_ns"].get("percentile", {})
    print(f"{name}\t{server}\t{d['iops']:.0f}\t{d['bw_bytes'] / 2**20:.1f}"
          f"\t{p.get('50.000000', 0) / 1000:.0f}\t{p.get('99.000000', 0) / 1000:.0f}")


def table(path, ref, labels):
    rows = [l.split("\t") for l in open(path).read().split("\n") if l]
    by = {}
    for w, s, iops, mib, p50, p99 in rows:
        by.setdefault((w, s), []).append((float(iops), float(mib), float(p50), float(p99)))
    works = list(dict.fromkeys(r[0] for r in rows))
    print(f"| workload | server | IOPS (median) | IOPS min–max | MiB/s | p50 µs | p99 µs "
          f"| IOPS / {labels[ref]} | same, round by round (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for w in works:
        base = st.median(x[0] for x in by[(w, ref)])
        # Rows are appended round after round, every server once per round.
        wrows = [r for r in rows if r[0] == w]
        n = len({r[1] for r in wrows})
        rounds = [{r[1]: float(r[2]) for r in wrows[i:i + n]} for i in range(0, len(wrows), n)]
        for s, label in labels.items():
            v = by.get((w, s))
            if not v:
                continue
            med = [st.median(x[i] for x in v) for i in range(4)]
            lo, hi = min(x[0] for x in v), max(x[0] for x in v)
            paired = [r[s] / r[ref] for r in rounds if s in r and r.get(ref)]
            print(f"| {w} | {label} | {med[0]:.0f} | {lo:.0f}–{hi:.0f} | {med[1]:.1f} "
                  f"| {med[2]:.0f} | {med[3]:.0f} | {med[0] / base:.2f} "
                  f"| {st.median(paired):.2f} |")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "row":
        row(*sys.argv[2:5])
    elif len(sys.argv) >= 5 and sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3], dict(a.split("=", 1) for a in sys.argv[4:]))
    else:
        sys.exit(__doc__)
