#!/usr/bin/env bash
# `serve --cache none` against qemu-nbd with O_DIRECT (`--cache=none`, with `--aio=io_uring` and
# with `--aio=native`), each on its own non-sparse copy of one image, driven by fio's nbd engine
# in rotating rounds (tools/bench-lib.sh). `serve --cache none --threads 1` runs one request
# at a time, as a connection's own thread would: what overlapping requests on the device buys.
# Prints a markdown table of medians and ratios to qemu-nbd with io_uring.
#
#   tools/bench-direct.sh [WORKDIR=/var/tmp/lostwrite-bench-direct]
#   RUNTIME=8 ROUNDS=3 SIZE_MIB=512 ONLY=randwrite-4k-qd16 tools/bench-direct.sh
#   OLD=/path/to/old/lostwrite NO_THREADS1=1 tools/bench-direct.sh
#
# OLD=BINARY adds `serve --cache none` of another build to the same rounds (an A/B beside
# qemu-nbd); NO_THREADS1=1 leaves out the `--threads 1` server.
#
# WORKDIR must be on a filesystem that does direct I/O (not tmpfs). Needs fio, qemu-nbd
# (apt-get install fio qemu-utils) and a release build.
set -euo pipefail
work=${1:-/var/tmp/lostwrite-bench-direct}
runtime=${RUNTIME:-8}
rounds=${ROUNDS:-3}
size_mib=${SIZE_MIB:-512}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/target/release/lostwrite
[ -x "$bin" ] || (cd "$top" && cargo build --release)
for t in fio qemu-nbd python3; do
  command -v $t >/dev/null || { echo "$t is missing" >&2; exit 2; }
done
mkdir -p "$work"
cd "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

servers=(direct)
[ -n "${NO_THREADS1:-}" ] || servers+=(direct1)
if [ -n "${OLD:-}" ]; then
  OLD=$(realpath "$(command -v "$OLD")")
  servers+=(old)
fi
servers+=(uring native)
[ -f base.img ] && [ "$(stat -c %s base.img)" -eq $((size_mib << 20)) ] || head -c $((size_mib << 20)) /dev/urandom > base.img
for s in "${servers[@]}"; do
  rm -rf "$s.img" "$s.img.ledger" "$s.sock"
  cp --sparse=never base.img "$s.img"
done
"$bin" init --baseline direct.img >/dev/null
"$bin" serve direct.img --cache none --socket direct.sock 2>direct.log & pids+=($!)
if [ -z "${NO_THREADS1:-}" ]; then
  "$bin" init --baseline direct1.img >/dev/null
  "$bin" serve direct1.img --cache none --threads 1 --socket direct1.sock 2>direct1.log & pids+=($!)
fi
if [ -n "${OLD:-}" ]; then
  "$OLD" init --baseline old.img >/dev/null
  "$OLD" serve old.img --cache none --socket old.sock 2>old.log & pids+=($!)
fi
qemu-nbd -t -e 8 -f raw --cache=none --aio=io_uring -k "$work/uring.sock" uring.img & pids+=($!)
qemu-nbd -t -e 8 -f raw --cache=none --aio=native -k "$work/native.sock" native.img & pids+=($!)
for s in "${servers[@]}"; do
  for _ in $(seq 100); do [ -S "$s.sock" ] && break; sleep 0.1; done
done

source "$top/tools/bench-lib.sh"
machine_line
echo "image: ${size_mib} MiB random bytes per server; fio $(fio --version); ${runtime}s per run, ${rounds} rotating rounds"
run_rounds results.tsv "${servers[@]}"
python3 "$top/tools/fio-table.py" table results.tsv uring \
  "direct=serve --cache none" "direct1=serve --cache none --threads 1" \
  "old=serve --cache none, old build" \
  "uring=qemu-nbd --cache=none --aio=io_uring" "native=qemu-nbd --cache=none --aio=native"
