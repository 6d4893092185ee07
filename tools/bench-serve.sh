#!/usr/bin/env bash
# Side-by-side NBD server benchmark: `lostwrite serve` (recording), `lostwrite serve
# --no-record` (the cost of the ledger), `nbdkit file` and `qemu-nbd -t -e 8 -f raw`, each on its
# own non-sparse copy of one image, driven by fio's nbd engine in rotating rounds
# (A B C D, B C D A, ...). Prints a markdown table of medians and ratios to nbdkit.
#
#   tools/bench-serve.sh [WORKDIR=/var/tmp/lostwrite-bench]
#   RUNTIME=8 ROUNDS=5 SIZE_MIB=1024 tools/bench-serve.sh
#
# Shared virtual machines are noisy (the same run can differ by 2x); the table gives medians and
# the min–max of the rotating rounds. Put WORKDIR on tmpfs to take the disk out of it.
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

source "$top/tools/bench-lib.sh"
machine_line
echo "image: ${size_mib} MiB random bytes per server; fio $(fio --version); ${runtime}s per run, ${rounds} rotating rounds"
run_rounds results.tsv "${servers[@]}"
python3 "$top/tools/fio-table.py" table results.tsv nbdkit "serve=lostwrite serve" \
  "norecord=serve --no-record" "nbdkit=nbdkit file" "qemunbd=qemu-nbd -t -e 8"
