#!/usr/bin/env bash
# What retention costs and what it bounds: WRITES random 4 KiB writes (fio, QD16, a FLUSH every
# 256) through `lostwrite serve` on one image, in rotating rounds (each image written, then settled the same way: bench-lib.sh) without retention and with
# `--retain-bytes RETAIN`. For each: write IOPS, the journal's peak size (sampled every 20 ms),
# the ledger's final size, and with retention the number of folds and their median time (from
# the service log). Prints a markdown table for docs/PERFORMANCE.md.
#
#   tools/bench-retention.sh [WORKDIR=/var/tmp/lostwrite-bench]
#   WRITES=1048576 RETAIN=4M SIZE_MIB=64 ROUNDS=3 tools/bench-retention.sh
#
# Needs fio and a release build.
set -euo pipefail
work=${1:-/var/tmp/lostwrite-bench}
writes=${WRITES:-1048576}
retain=${RETAIN:-4M}
size_mib=${SIZE_MIB:-64}
rounds=${ROUNDS:-3}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/target/release/lostwrite
[ -x "$bin" ] || (cd "$top" && cargo build --release)
command -v fio >/dev/null || { echo "fio is missing" >&2; exit 2; }
mkdir -p "$work/retention"
cd "$work/retention"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

dir_bytes() { du -sb --apparent-size "$1" 2>/dev/null | cut -f1; }

# run MODE: one round; prints "MODE iops peak_journal ledger folds median_fold_ms".
run() {
  local mode=$1 extra=()
  [ "$mode" = retain ] && extra=(--retain-bytes "$retain")
  rm -rf disk.img disk.img.ledger disk.sock serve.log peak peak.tmp
  head -c $((size_mib << 20)) /dev/urandom > disk.img
  "$bin" init --baseline disk.img >/dev/null
  "$bin" serve disk.img --socket disk.sock "${extra[@]}" 2>serve.log & local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do [ -S disk.sock ] && break; sleep 0.1; done
  ( peak=0; while :; do b=$(dir_bytes disk.img.ledger/journal); [ "${b:-0}" -gt "$peak" ] && peak=$b && echo "$peak" > peak.tmp && mv peak.tmp peak; sleep 0.02; done ) &
  local sampler=$!
  # The same page-cache state for the image in every run (bench-lib.sh).
  sync; settle_cache disk.img; sleep 1
  fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$PWD/disk.sock" --rw=randwrite --bs=4k \
    --iodepth=16 --size="${size_mib}m" --io_size=$((writes * 4))k --fsync=256 \
    --output-format=json --output=fio.json >/dev/null 2>&1
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$mode" <<'EOF'
import json, re, statistics, sys, os
mode = sys.argv[1]
iops = json.load(open("fio.json"))["jobs"][0]["write"]["iops"]
peak = int(open("peak").read()) if os.path.exists("peak") else 0
total = 0
for root, _, files in os.walk("disk.img.ledger"):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
folds = [int(m) for m in re.findall(r"compacted history in (\d+) ms", open("serve.log").read())]
med = statistics.median(folds) if folds else 0
print(mode, round(iops), peak, total, len(folds), med)
EOF
}

source "$top/tools/bench-lib.sh"
machine_line
echo "image: ${size_mib} MiB; ${writes} writes of 4 KiB per run (fio randwrite QD16, --fsync=256); retention --retain-bytes ${retain}; ${rounds} rotating rounds"
: > results.txt
# Orders rotate: neither mode always runs first.
for r in $(seq "$rounds"); do
  modes=(none retain)
  [ $((r % 2)) = 1 ] || modes=(retain none)
  for m in "${modes[@]}"; do run "$m" >> results.txt; done
done
python3 - <<'EOF'
import statistics
rows = [l.split() for l in open("results.txt")]
def col(mode, i):
    return [float(r[i]) for r in rows if r[0] == mode]
print("| run | write IOPS (median, min–max) | journal peak | ledger at the end | folds | median fold |")
print("| --- | --- | --- | --- | --- | --- |")
for mode, name in (("none", "no retention"), ("retain", "--retain-bytes")):
    iops = col(mode, 1)
    mib = lambda v: f"{statistics.median(v) / 2**20:.1f} MiB"
    print(f"| {name} | {statistics.median(iops):.0f} ({min(iops):.0f}–{max(iops):.0f}) | "
          f"{mib(col(mode, 2))} | {mib(col(mode, 3))} | {statistics.median(col(mode, 4)):.0f} | "
          f"{statistics.median(col(mode, 5)):.0f} ms |")
none, ret = statistics.median(col("none", 1)), statistics.median(col("retain", 1))
print(f"\nretention's cost in write IOPS: {ret / none:.2f}x")
EOF
