#!/usr/bin/env bash
# FLUSH latency under a write load: fio 4 KiB random writes at QD16 with a FLUSH every 16 writes
# (`--fsync=16`; with the nbd engine an fsync is an NBD FLUSH), through `lostwrite serve` and
# through `nbdkit file`, in rotating rounds; against the raw fdatasync latency of the same
# filesystem: of the device (fio psync 4 KiB random writes to a copy of the image, fdatasync
# every 16) and of the journal (fio psync 64-byte appends, fdatasync after each, as a journal
# sync of one FLUSH record). The goals: FLUSH p99 through serve at most nbdkit's, and its p50 at
# most 1.2 × (device p50 + journal p50), what syncing both costs when they run one after the
# other. The four measurements rotate their order from round to round, and every image is put
# in the same page-cache state before each run (bench-lib.sh `settle_cache`). Prints a markdown
# table of medians over the rounds, and the ratios. A FLUSH through serve syncs the device and
# the journal side by side (format 5). BASE_BIN=/path/to/lostwrite adds another build as a
# third server in the rotation, and prints the per-round ratios against it (an A/B).
#
#   tools/bench-flush.sh [WORKDIR=/var/tmp/lostwrite-bench]
#   RUNTIME=8 ROUNDS=3 SIZE_MIB=1024 tools/bench-flush.sh
#
# Needs fio, nbdkit, python3 and a release build.
set -euo pipefail
work=${1:-/var/tmp/lostwrite-bench}
runtime=${RUNTIME:-8}
rounds=${ROUNDS:-3}
size_mib=${SIZE_MIB:-1024}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/target/release/lostwrite
[ -x "$bin" ] || (cd "$top" && cargo build --release)
for t in fio nbdkit python3; do
  command -v $t >/dev/null || { echo "$t is missing" >&2; exit 2; }
done
mkdir -p "$work/flush"
cd "$work/flush"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

[ -f base.img ] && [ "$(stat -c %s base.img)" -eq $((size_mib << 20)) ] || head -c $((size_mib << 20)) /dev/urandom > base.img
servers=(serve nbdkit)
[ -z "${BASE_BIN:-}" ] || servers+=(other)
for s in "${servers[@]}" raw; do
  rm -rf "$s.img" "$s.img.ledger" "$s.sock"
  cp --sparse=never base.img "$s.img"
done
rm -f journal.raw
"$bin" init --baseline serve.img >/dev/null
"$bin" serve serve.img --socket serve.sock 2>serve.log & pids+=($!)
nbdkit -U "$PWD/nbdkit.sock" -f file file=nbdkit.img & pids+=($!)
if [ -n "${BASE_BIN:-}" ]; then
  "$BASE_BIN" init --baseline other.img >/dev/null
  "$BASE_BIN" serve other.img --socket other.sock 2>other.log & pids+=($!)
fi
for s in "${servers[@]}"; do
  for _ in $(seq 100); do [ -S "$s.sock" ] && break; sleep 0.1; done
done

source "$top/tools/bench-lib.sh"
: > results.tsv
# One measurement of NAME in round R: a FLUSH-every-16 fio run through a server, or a raw sync
# of the same filesystem. Every image is written back, dropped and read the same way first.
measure() {
  local s=$1 r=$2
  sync
  case $s in
    serve|nbdkit|other)
      settle_cache "$s.img"
      sleep 1
      fio --name=f --ioengine=nbd --uri="nbd+unix:///?socket=$PWD/$s.sock" --rw=randwrite --bs=4k \
        --iodepth=16 --fsync=16 --size="${size_mib}m" --runtime="$runtime" --time_based \
        --output-format=json --output="fio-$s-$r.json" >/dev/null 2>&1 ;;
    device)
      settle_cache raw.img
      sleep 1
      fio --name=d --ioengine=psync --filename=raw.img --rw=randwrite --bs=4k --fdatasync=16 \
        --size="${size_mib}m" --runtime="$runtime" --time_based --output-format=json \
        --output="fio-$s-$r.json" >/dev/null 2>&1 ;;
    journal)
      # A fresh file each time, as a fresh journal segment.
      rm -f journal.raw
      sleep 1
      fio --name=j --ioengine=psync --filename=journal.raw --rw=write --bs=64 --fdatasync=1 \
        --size=64m --runtime="$runtime" --time_based --output-format=json \
        --output="fio-$s-$r.json" >/dev/null 2>&1 ;;
  esac
  echo "$s fio-$s-$r.json" >> results.tsv
}
# Orders rotate (serve nbdkit device journal, nbdkit device journal serve, ...): no measurement
# always runs first or right after the same neighbour.
order=("${servers[@]}" device journal)
n=${#order[@]}
for r in $(seq "$rounds"); do
  for i in $(seq 0 $((n - 1))); do
    measure "${order[$(( (r - 1 + i) % n ))]}" "$r"
  done
done

machine_line
echo "image: ${size_mib} MiB per server; ${runtime}s per run, ${rounds} rotating rounds; FLUSH every 16 writes at QD16"
python3 - <<'EOF'
import json, statistics
rows = [l.split() for l in open("results.tsv")]
def sync_lat(path):
    j = json.load(open(path))["jobs"][0]
    s = j["sync"]["lat_ns"]
    p = s.get("percentile", {})
    return (p.get("50.000000", 0) / 1e3, p.get("99.000000", 0) / 1e3, s.get("N", 0))
res = {}
for name, path in rows:
    res.setdefault(name, []).append(sync_lat(path))
med = {k: (statistics.median(v[0] for v in vs), statistics.median(v[1] for v in vs),
           sum(v[2] for v in vs)) for k, vs in res.items()}
label = {"serve": "FLUSH through lostwrite serve", "other": "FLUSH through BASE_BIN serve",
         "nbdkit": "FLUSH through nbdkit file",
         "device": "raw fdatasync, device file (psync, every 16 writes)",
         "journal": "raw fdatasync, 64-byte appends (a journal sync)"}
print("| what | p50 µs | p99 µs | syncs measured |")
print("| --- | --- | --- | --- |")
for k in ("serve", "other", "nbdkit", "device", "journal"):
    if k in med:
        p50, p99, n = med[k]
        print(f"| {label[k]} | {p50:.0f} | {p99:.0f} | {n} |")
if all(k in med for k in ("serve", "nbdkit", "device", "journal")):
    raw50 = med["device"][0] + med["journal"][0]
    print(f"\nserve FLUSH p50 / (device p50 + journal p50): {med['serve'][0] / raw50:.2f} (goal ≤ 1.2, i.e. p50 ≤ {1.2 * raw50:.0f} µs)")
    print(f"serve FLUSH p99 / nbdkit FLUSH p99: {med['serve'][1] / med['nbdkit'][1]:.2f} (goal ≤ 1)")
    print(f"serve FLUSH p50 / nbdkit FLUSH p50: {med['serve'][0] / med['nbdkit'][0]:.2f}")
    print(f"serve FLUSH p99 / (device p99 + journal p99): {med['serve'][1] / (med['device'][1] + med['journal'][1]):.2f}")
if "other" in med:
    for i, q in ((0, "p50"), (1, "p99")):
        per = [a[i] / b[i] for a, b in zip(res["serve"], res["other"]) if b[i]]
        print(f"serve / BASE_BIN FLUSH {q}: median {statistics.median(per):.2f} over {len(per)} rounds "
              f"({', '.join(f'{x:.2f}' for x in per)})")
EOF
