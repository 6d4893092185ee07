#!/usr/bin/env bash
# The cost of putting `lostwrite serve` in front of an NBD upstream: one qcow2 image (fully
# preallocated) exported by `qemu-nbd -t -e 16 -f qcow2`, driven by fio's nbd engine straight
# at qemu-nbd, through `lostwrite serve nbd+unix:///?socket=...` (recording), and through
# `serve --no-record` (the proxy alone), in alternating rounds (A B C A B C ...) on the same
# image. Prints a markdown table of medians and ratios to fio straight at qemu-nbd.
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

rm -rf disk.qcow2 ledger ./*.sock
qemu-img create -q -f qcow2 -o preallocation=full disk.qcow2 "${size_mib}M"
# -e 16: fio opens up to two connections, and each serve four (qemu-nbd allows multi-conn).
qemu-nbd -t -e 16 -f qcow2 -k "$work/upstream.sock" disk.qcow2 & pids+=($!)
wait_sock upstream.sock
up="nbd+unix:///?socket=$work/upstream.sock"
"$bin" init --baseline --ledger ledger "$up" >/dev/null
"$bin" serve --ledger ledger --socket "$work/serve.sock" "$up" 2>serve.log & pids+=($!)
"$bin" serve --no-record --socket "$work/norecord.sock" "$up" 2>norecord.log & pids+=($!)
wait_sock serve.sock
wait_sock norecord.sock
ln -sf upstream.sock direct.sock

source "$top/tools/bench-lib.sh"
machine_line
echo "image: ${size_mib} MiB qcow2 (preallocation=full) behind qemu-nbd $(qemu-nbd --version | head -1 | awk '{print $2}'); fio $(fio --version); ${runtime}s per run, ${rounds} alternating rounds"
run_rounds results.tsv direct serve norecord
python3 "$top/tools/fio-table.py" table results.tsv direct "direct=fio → qemu-nbd" \
  "serve=fio → serve → qemu-nbd" "norecord=fio → serve --no-record → qemu-nbd"
