#!/usr/bin/env bash
# Side-by-side NBD server benchmark: `lostwrite serve` (recording), `lostwrite serve
# --no-record` (the cost of the ledger), `nbdkit file` and `qemu-nbd -t -e 8 -f raw`, each on its
# own non-sparse copy of one image, driven by fio's nbd engine in alternating rounds
# (A B C D A B C D ...). Prints a markdown table of medians and ratios to nbdkit.
#
#   tools/bench-serve.sh [WORKDIR=/var/tmp/lostwrite-bench]
#   RUNTIME=8 ROUNDS=5 SIZE_MIB=1024 tools/bench-serve.sh
#
# Shared virtual machines are noisy (the same run can differ by 2x); the table gives medians and
# the min–max of the alternating rounds. Put WORKDIR on tmpfs to take the disk out of it.
#
# Needs fio, nbdkit, qemu-nbd (apt-get install fio nbdkit qemu-utils) and a release build.
set -euo pipefail
work=${1:-/var/tmp/lostwrite-bench}
runtime=${RUNTIME:-8}
rounds=${ROUNDS:-5}
size_mib=${SIZE_MIB:-1024}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/target/release/lostwrite
[ -x "$bin" ] || (cd "$top" && cargo build --release)
for t in fio nbdkit qemu-nbd python3; do
  command -v $t >/dev/null || { echo "$t is missing" >&2; exit 2; }
done
mkdir -p "$work"
cd "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

servers=(serve norecord nbdkit qemunbd)
[ -f base.img ] && [ "$(stat -c %s base.img)" -eq $((size_mib << 20)) ] || head -c $((size_mib << 20)) /dev/urandom > base.img
for s in "${servers[@]}"; do
  rm -rf "$s.img" "$s.img.ledger" "$s.sock"
  cp --sparse=never base.img "$s.img"
done
"$bin" init --baseline serve.img >/dev/null
"$bin" serve serve.img --socket serve.sock 2>serve.log & pids+=($!)
"$bin" serve norecord.img --socket norecord.sock --no-record 2>norecord.log & pids+=($!)
nbdkit -U "$work/nbdkit.sock" -f file file=nbdkit.img & pids+=($!)
qemu-nbd -t -e 8 -f raw -k "$work/qemunbd.sock" qemunbd.img & pids+=($!)
for s in "${servers[@]}"; do
  for _ in $(seq 100); do [ -S "$s.sock" ] && break; sleep 0.1; done
done

# name | fio arguments
workloads=(
  "randwrite-4k-qd16|--rw=randwrite --bs=4k --iodepth=16"
  "randwrite-4k-qd1|--rw=randwrite --bs=4k --iodepth=1"
  "randread-4k-qd16|--rw=randread --bs=4k --iodepth=16"
  "write-1m-qd4|--rw=write --bs=1m --iodepth=4"
  "read-1m-qd4|--rw=read --bs=1m --iodepth=4"
)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
echo "image: ${size_mib} MiB random bytes per server; fio $(fio --version); ${runtime}s per run, ${rounds} alternating rounds"
results=results.tsv
: > $results
for w in "${workloads[@]}"; do
  name=${w%%|*}; args=${w#*|}
  for r in $(seq "$rounds"); do
    for s in "${servers[@]}"; do
      # Every run starts with no dirty pages, so one server's writeback does not land on the next.
      sync; sleep 1
      # shellcheck disable=SC2086
      fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$work/$s.sock" $args \
        --size=${size_mib}m --runtime="$runtime" --time_based --output-format=json \
        --output="fio-$s.json" >/dev/null 2>&1
      python3 - "$name" "$s" "fio-$s.json" >> $results <<'PY'
import json, sys
name, server, path = sys.argv[1:4]
j = json.load(open(path))["jobs"][0]
d = j["write"] if j["write"]["io_bytes"] else j["read"]
p = d["clat_ns"].get("percentile", {})
print(f"{name}\t{server}\t{d['iops']:.0f}\t{d['bw_bytes']/2**20:.1f}\t{p.get('50.000000',0)/1000:.0f}\t{p.get('99.000000',0)/1000:.0f}")
PY
    done
  done
done
python3 - $results <<'PY'
import sys, statistics as st
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by = {}
for w, s, iops, mib, p50, p99 in rows:
    by.setdefault((w, s), []).append((float(iops), float(mib), float(p50), float(p99)))
works = list(dict.fromkeys(r[0] for r in rows))
print("| workload | server | IOPS (median) | IOPS min–max | MiB/s | p50 µs | p99 µs | IOPS / nbdkit |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for w in works:
    ref = st.median(x[0] for x in by[(w, "nbdkit")])
    for s in ["serve", "norecord", "nbdkit", "qemunbd"]:
        v = by[(w, s)]
        med = [st.median(x[i] for x in v) for i in range(4)]
        label = {"serve": "lostwrite serve", "norecord": "serve --no-record", "nbdkit": "nbdkit file", "qemunbd": "qemu-nbd -t -e 8"}[s]
        lo, hi = min(x[0] for x in v), max(x[0] for x in v)
        print(f"| {w} | {label} | {med[0]:.0f} | {lo:.0f}–{hi:.0f} | {med[1]:.1f} | {med[2]:.0f} | {med[3]:.0f} | {med[0]/ref:.2f} |")
PY
