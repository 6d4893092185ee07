#!/usr/bin/env bash
# A/B of two lostwrite builds serving the same workloads: `serve` of build A and of build B,
# each on its own non-sparse copy of one baselined image, driven by fio's nbd engine in
# rotating rounds (bench-lib.sh), which puts both copies in the same page-cache state before
# every run (written back, dropped, then read once the same way): how an image entered the cache
# moves 4 KiB write IOPS several-fold on ext4, and an A/B must measure the builds, not the cache.
#
#   tools/bench-ab.sh OLD_BINARY [NEW_BINARY=target/release/lostwrite] [WORKDIR=/var/tmp/lostwrite-ab]
#   RUNTIME=6 ROUNDS=4 SIZE_MIB=1024 ONLY=randwrite-4k-qd16,read-1m-qd4 tools/bench-ab.sh old/lostwrite
#
# NBDKIT=1 adds nbdkit's file plugin (its own copy of the image) to the same rounds, as the
# yardstick the writeback goals are set against.
#
# Build the old binary from another checkout, e.g.
#   git worktree add /tmp/old REV && (cd /tmp/old && cargo build --release)
set -euo pipefail
old=${1:?usage: tools/bench-ab.sh OLD_BINARY [NEW_BINARY] [WORKDIR]}
top=$(cd "$(dirname "$0")/.." && pwd)
new=${2:-$top/target/release/lostwrite}
work=${3:-/var/tmp/lostwrite-ab}
runtime=${RUNTIME:-6}
rounds=${ROUNDS:-4}
size_mib=${SIZE_MIB:-1024}
for t in fio python3 "$old" "$new"; do
  command -v "$t" >/dev/null || { echo "$t is missing" >&2; exit 2; }
done
# The binaries are run from the work directory: make relative paths absolute first.
old=$(realpath "$(command -v "$old")")
new=$(realpath "$(command -v "$new")")
mkdir -p "$work"
cd "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

[ -f base.img ] && [ "$(stat -c %s base.img)" -eq $((size_mib << 20)) ] || head -c $((size_mib << 20)) /dev/urandom > base.img
declare -A bin=([old]="$old" [new]="$new")
for s in old new; do
  rm -rf "$s.img" "$s.img.ledger" "$s.sock"
  cp --sparse=never base.img "$s.img"
  "${bin[$s]}" init --baseline "$s.img" >/dev/null
done
for s in old new; do
  "${bin[$s]}" serve "$s.img" --socket "$s.sock" 2>"$s.log" & pids+=($!)
done
servers=(old new)
if [ -n "${NBDKIT:-}" ]; then
  rm -f nbdkit.img nbdkit.sock
  cp --sparse=never base.img nbdkit.img
  nbdkit -U "$work/nbdkit.sock" -f file file=nbdkit.img & pids+=($!)
  servers+=(nbdkit)
fi
for s in "${servers[@]}"; do
  for _ in $(seq 100); do [ -S "$s.sock" ] && break; sleep 0.1; done
done

source "$top/tools/bench-lib.sh"
machine_line
echo "old: $old; new: $new"
echo "image: ${size_mib} MiB random bytes per build; fio $(fio --version); ${runtime}s per run, ${rounds} rotating rounds"
run_rounds results.tsv "${servers[@]}"
python3 "$top/tools/fio-table.py" table results.tsv old "old=old build" "new=new build" "nbdkit=nbdkit file"
