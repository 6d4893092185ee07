#!/usr/bin/env bash
# The cost of putting `lostwrite serve` in front of an NBD upstream: fully preallocated qcow2
# images, each exported by its own `qemu-nbd -t -e 8 -f qcow2`, driven by fio's nbd engine
# straight at qemu-nbd, through `lostwrite serve nbd+unix:///?socket=...` (recording), and
# through `serve --no-record` (the proxy alone), in rotating rounds (A B C, B C A, ...). Prints a markdown table of medians and ratios to fio straight at qemu-nbd.
#
#   tools/bench-proxy.sh [WORKDIR=/var/tmp/lostwrite-proxy]
#   RUNTIME=8 ROUNDS=5 SIZE_MIB=1024 tools/bench-proxy.sh
#
# Needs fio and qemu-nbd/qemu-img (apt-get install fio qemu-utils) and a release build.
set -euo pipefail
work=${1:-/var/tmp/lostwrite-proxy}
runtime=${RUNTIME:-8}
rounds=${ROUNDS:-5}
size_mib=${SIZE_MIB:-1024}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/target/release/lostwrite
[ -x "$bin" ] || (cd "$top" && cargo build --release)
for t in fio qemu-nbd qemu-img python3; do
  command -v $t >/dev/null || { echo "$t is missing" >&2; exit 2; }
done
mkdir -p "$work"
cd "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return; sleep 0.1; done; echo "no socket $1" >&2; exit 2; }

rm -rf ./*.qcow2 ledger ./*.sock
# Each path has its own image and its own qemu-nbd: a write that reached one image behind the
# recording sidecar's back would be a lost write in its eyes (and would cost it the detection).
for s in direct serve norecord; do
  qemu-img create -q -f qcow2 -o preallocation=full "$s.qcow2" "${size_mib}M"
  qemu-nbd -t -e 8 -f qcow2 -k "$work/$s-up.sock" "$s.qcow2" & pids+=($!)
  wait_sock "$s-up.sock"
done
up() { echo "nbd+unix:///?socket=$work/$1-up.sock"; }
"$bin" init --baseline --ledger ledger "$(up serve)" >/dev/null
"$bin" serve --ledger ledger --socket "$work/serve.sock" "$(up serve)" 2>serve.log & pids+=($!)
"$bin" serve --no-record --socket "$work/norecord.sock" "$(up norecord)" 2>norecord.log & pids+=($!)
wait_sock serve.sock
wait_sock norecord.sock
ln -sf direct-up.sock direct.sock

declare -A images=([direct]="$work/direct.qcow2" [serve]="$work/serve.qcow2" [norecord]="$work/norecord.qcow2")
source "$top/tools/bench-lib.sh"
machine_line
echo "image: ${size_mib} MiB qcow2 (preallocation=full) behind qemu-nbd $(qemu-nbd --version | head -1 | awk '{print $2}'); fio $(fio --version); ${runtime}s per run, ${rounds} rotating rounds"
run_rounds results.tsv direct serve norecord
python3 "$top/tools/fio-table.py" table results.tsv direct "direct=fio → qemu-nbd" \
  "serve=fio → serve → qemu-nbd" "norecord=fio → serve --no-record → qemu-nbd"
