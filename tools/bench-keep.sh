#!/usr/bin/env bash
# What `serve --keep-data` costs: the same binary serving two copies of one baselined image, one
# without and one with --keep-data, driven by fio's nbd engine in alternating rounds
# (bench-lib.sh: both images in the same page-cache state before every run); then the bytes the
# data log takes for a known amount of written data, compressible and not.
#
#   tools/bench-keep.sh [BINARY=target/release/lostwrite] [WORKDIR=/var/tmp/lostwrite-keep]
#   RUNTIME=5 ROUNDS=4 SIZE_MIB=1024 KEEP=2G WRITTEN_MIB=256 tools/bench-keep.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$top/target/release/lostwrite}
work=${2:-/var/tmp/lostwrite-keep}
runtime=${RUNTIME:-5}
rounds=${ROUNDS:-4}
size_mib=${SIZE_MIB:-1024}
keep=${KEEP:-2G}
written_mib=${WRITTEN_MIB:-256}
for t in fio python3 "$bin"; do
  command -v "$t" >/dev/null || { echo "$t is missing" >&2; exit 2; }
done
bin=$(realpath "$(command -v "$bin")")
mkdir -p "$work"
cd "$work"
declare -A pid=()
cleanup() { for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() { # start NAME ARGS...: serve NAME.img on NAME.sock
  local s=$1; shift
  rm -f "$s.sock"
  "$bin" serve "$s.img" --socket "$s.sock" "$@" 2>>"$s.log" &
  pid[$s]=$!
  for _ in $(seq 200); do [ -S "$s.sock" ] && return; sleep 0.1; done
  echo "serve $s did not start" >&2; exit 2
}
stop() { kill "${pid[$1]}"; wait "${pid[$1]}" || true; unset "pid[$1]"; }

[ -f base.img ] && [ "$(stat -c %s base.img)" -eq $((size_mib << 20)) ] || head -c $((size_mib << 20)) /dev/urandom > base.img
for s in plain keep; do
  rm -rf "$s.img" "$s.img.ledger" "$s.sock" "$s.log"
  cp --sparse=never base.img "$s.img"
  "$bin" init --baseline "$s.img" >/dev/null
done
start plain
start keep --keep-data "$keep"

source "$top/tools/bench-lib.sh"
# fio's default buffers (random, not refilled: each 4 KiB block incompressible) and buffers
# refilled per write that LZ4 halves.
workloads=(
  "randwrite-4k-qd16|--rw=randwrite --bs=4k --iodepth=16"
  "randwrite-4k-qd16-compressible|--rw=randwrite --bs=4k --iodepth=16 --refill_buffers --buffer_compress_percentage=50 --buffer_compress_chunk=512"
)
machine_line
echo "binary: $bin; keep: serve --keep-data $keep; plain: serve"
echo "image: ${size_mib} MiB random bytes per server; fio $(fio --version); ${runtime}s per run, ${rounds} alternating rounds; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
run_rounds results.tsv plain keep
python3 "$top/tools/fio-table.py" table results.tsv plain "plain=serve" "keep=serve --keep-data $keep"
stop plain
stop keep

# Bytes on disk: a fresh data log, WRITTEN_MIB of 4 KiB random writes, then its size.
echo
echo "| data | written | data log | data log / written | journal | (data log + journal) / written |"
echo "| --- | --- | --- | --- | --- | --- |"
for kind in compressible incompressible; do
  rm -rf keep.img.ledger
  "$bin" init --baseline keep.img >/dev/null
  start keep --keep-data 64G
  if [ $kind = compressible ]; then pct=50; else pct=0; fi
  fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$work/keep.sock" --rw=randwrite --bs=4k \
    --iodepth=16 --size="${size_mib}m" --io_size="${written_mib}m" --refill_buffers \
    --buffer_compress_percentage=$pct --buffer_compress_chunk=512 >/dev/null
  stop keep
  d=$(du -sb keep.img.ledger/data | cut -f1)
  j=$(du -sb keep.img.ledger/journal | cut -f1)
  w=$((written_mib << 20))
  python3 -c "
w, d, j = $w, $d, $j
print(f'| $kind ($pct% compressible) | {w:,} | {d:,} | {d / w:.3f} | {j:,} | {(d + j) / w:.3f} |')"
done
