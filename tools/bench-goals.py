#!/usr/bin/env python3
"""The performance goals, checked against one run of the suite.

Reads the section tools/bench-all.sh writes (its markdown, on stdin or from a file) and prints a
table: each goal of the performance issue, the figure this run measured for it, and whether it
was met. Nothing here is measured; a figure the run did not produce is shown as "not run".

    python3 tools/bench-goals.py SECTION.md
"""
import re
import sys


def sections(text):
    """{title: body} of the '### ' sections."""
    out, title = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            out[title] = []
        elif title:
            out[title].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def table_rows(body):
    rows = []
    for line in body.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def number(s):
    m = re.search(r"[-\d][\d,]*\.?\d*", s or "")
    return float(m.group(0).replace(",", "")) if m else None


def main():
    text = open(sys.argv[1]).read() if len(sys.argv) > 1 else sys.stdin.read()
    sec = sections(text)
    goals = []  # (goal, measured, met)

    def add(goal, measured, met):
        goals.append((goal, measured, {True: "yes", False: "**no**", None: "—"}[met]))

    serve = {}
    for r in table_rows(sec.get("The sidecar against its peers", "")):
        if len(r) >= 8 and r[0] != "workload":
            serve[(r[0], r[1])] = {"iops": number(r[2]), "p99": number(r[6]), "ratio": number(r[7])}

    def peer(workload, server):
        return serve.get((workload, server))

    rw, nk, nr = (peer("randwrite-4k-qd16", s) for s in ("lostwrite serve", "nbdkit file", "serve --no-record"))
    if rw and nk:
        ratio = rw["ratio"]
        add("4 KiB random writes QD16: IOPS ≥ 0.9 × nbdkit (the floor)", f"{ratio:.2f}", ratio >= 0.9)
        add("… and 1.2 × nbdkit (the goal)", f"{ratio:.2f}", ratio >= 1.2)
        add(
            "… with a p99 latency below nbdkit's",
            f"{rw['p99']:,.0f} µs against {nk['p99']:,.0f} µs",
            rw["p99"] < nk["p99"],
        )
    else:
        add("4 KiB random writes QD16 against nbdkit", "not run", None)
    if rw and nr:
        r = rw["iops"] / nr["iops"]
        add("… recording on / off ≥ 0.95", f"{r:.2f}", r >= 0.95)
    w1 = peer("write-1m-qd4", "lostwrite serve")
    if w1:
        add("1 MiB sequential writes ≥ 0.95 × nbdkit", f"{w1['ratio']:.2f}", w1["ratio"] >= 0.95)
    else:
        add("1 MiB sequential writes ≥ 0.95 × nbdkit", "not run", None)

    flush = sec.get("FLUSH latency under a write load", "")
    m = re.search(r"serve FLUSH p99 / \(device p99 \+ journal p99\): ([\d.]+)", flush)
    add(
        "FLUSH p99 ≤ 1.2 × raw fdatasync p99 of the device plus the journal",
        f"{float(m.group(1)):.2f} ×" if m else "not run",
        float(m.group(1)) <= 1.2 if m else None,
    )
    m = re.search(r"serve FLUSH p99 / nbdkit FLUSH p99: ([\d.]+)", flush)
    add(
        "FLUSH p99 below nbdkit's",
        f"{float(m.group(1)):.2f} × nbdkit's" if m else "not run",
        float(m.group(1)) < 1 if m else None,
    )

    for gib in (1, 8):
        scan = sec.get(f"Scan of a {gib} GiB image")
        if scan is None:
            continue
        # The page-cache goals hold for `verify --cached`; plain `verify` reads the media
        # (O_DIRECT) and is held to the O_DIRECT read, hot or cold.
        m = re.search(r"verify-cached\s+median.*ratio ([\d.]+)", scan)
        if m:
            r = float(m.group(1))
            add(f"`verify --cached` {gib} GiB, hot: ≤ 1.5 × `cat` (the floor)", f"{r:.2f}", r <= 1.5)
            add(f"… ≤ 1.1 × `cat` (the goal)", f"{r:.2f}", r <= 1.1)
        dm = re.search(r"direct\s+median\s+([\d.]+) ms", scan)
        vm = re.search(r"verify\s+median\s+([\d.]+) ms", scan)
        if dm and vm:
            r = float(vm.group(1)) / float(dm.group(1))
            add(f"`verify` {gib} GiB, hot: within 10% of an O_DIRECT read", f"{r:.2f}", r <= 1.1)
        m = re.search(r"verify cold median.*ratio ([\d.]+)", scan)
        if m:
            r = float(m.group(1))
            add(f"`verify` {gib} GiB, cold: within 10% of an O_DIRECT read", f"{r:.2f}", r <= 1.1)

    ledger = sec.get("Ledger at scale", "")
    records = re.search(r"Ledger: ([\d,]+) journal records", ledger)
    for r in table_rows(ledger):
        if len(r) < 6 or r[4] == "—" or r[0] == "what":
            continue
        met = {"yes": True, "no": False, "**no**": False}.get(r[5])
        what = r[0].split(": Rss (")[0]
        if "Ledger::open" in what and records:
            what = f"{what}, {records.group(1)} records"
        add(f"{what}: {r[4]}", r[1].split(";")[0], met)
    if not goals:
        sys.exit("no results found: pass the section tools/bench-all.sh writes")
    print("| goal | this run | met |")
    print("| --- | --- | --- |")
    for g, m, ok in goals:
        print(f"| {g} | {m} | {ok} |")


if __name__ == "__main__":
    main()
