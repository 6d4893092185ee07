#!/usr/bin/env bash
# Side-by-side timing of `lostwrite verify` and `lostwrite init --baseline` (which read the media
# with O_DIRECT) and `verify --cached` against `cat IMAGE > /dev/null` on the same image with a
# hot page cache, then, cold (the image's pages dropped from the cache before each run), the same
# against `cat` and an O_DIRECT read of the image. hyperfine times each command; the commands run
# in rounds whose order rotates (ROUNDS hot rounds of HOT_RUNS runs each, COLD_RUNS cold rounds
# of one run each), and the medians are over every run of every round.
#
#   tools/bench-scan.sh [SIZE_GIB=1] [WORKDIR=/var/tmp/lostwrite-bench]
#   COLD=0 tools/bench-scan.sh 8     (hot only)
#   ROUNDS=5 HOT_RUNS=2 COLD_RUNS=5 tools/bench-scan.sh 1
#
# Prints hyperfine's table and the ratios (lostwrite time / cat time). Needs hyperfine
# (apt-get install hyperfine) and a release build (cargo build --release).
set -euo pipefail
size_gib=${1:-1}
work=${2:-/var/tmp/lostwrite-bench}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/target/release/lostwrite
[ -x "$bin" ] || (cd "$top" && cargo build --release)
command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install hyperfine" >&2; exit 2; }
mkdir -p "$work"
img=$work/scan-${size_gib}g.img
if [ ! -f "$img" ] || [ "$(stat -c %s "$img")" -ne $((size_gib << 30)) ]; then
  head -c $((size_gib << 30)) /dev/urandom > "$img"
fi
rm -rf "$img.ledger" "$work/tmp.ledger"
"$bin" init --baseline "$img" >/dev/null
cat "$img" > /dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "image:   $img ($size_gib GiB, random bytes, hot page cache)"
# Hot: every command HOT_RUNS times per round, the commands in an order that rotates from round
# to round (none always runs first or right after the same neighbour); the image stays cached.
hot=(
  "cat|cat $img > /dev/null"
  "direct|dd if=$img of=/dev/null bs=1M iflag=direct status=none"
  "verify|$bin verify $img"
  "verify-cached|$bin verify --cached $img"
  "baseline|rm -rf $work/tmp.ledger && $bin init --baseline --ledger $work/tmp.ledger $img"
  "baseline-cached|rm -rf $work/tmp.ledger && $bin init --baseline --cached --ledger $work/tmp.ledger $img"
)
# rotated R CMD...: the hyperfine arguments for the commands NAME|COMMAND, starting at the
# (R-1)th.
rotated() {
  local r=$1; shift
  local cmds=("$@") n=$# i c
  for i in $(seq 0 $((n - 1))); do
    c=${cmds[$(( (r - 1 + i) % n ))]}
    printf '%s\0%s\0%s\0' -n "${c%%|*}" "${c#*|}"
  done
}
# medians JSON...: {command: median seconds} over every run of every round.
medians='
import json, statistics, sys
t = {}
for f in sys.argv[1:]:
    for x in json.load(open(f))["results"]:
        t.setdefault(x["command"], []).extend(x["times"])
m = {k: statistics.median(v) for k, v in t.items()}
'
scan_rounds=${ROUNDS:-5}
hot_runs=${HOT_RUNS:-2}
rm -f "$work"/scan-hot-*.json "$work"/scan-cold-*.json
for r in $(seq "$scan_rounds"); do
  warm=0; [ "$r" = 1 ] && warm=2
  rotated "$r" "${hot[@]}" | xargs -0 hyperfine --style basic --warmup "$warm" --runs "$hot_runs" \
    --export-json "$work/scan-hot-$r.json" >&2
done
echo "hot: ${scan_rounds} rotating rounds of ${hot_runs} runs per command (medians)"
python3 - "$work"/scan-hot-*.json <<PY
$medians
cat = m["cat"]
for k in ("direct", "verify", "verify-cached", "baseline", "baseline-cached"):
    print(f"{k:9s} median {m[k]*1000:7.1f} ms   cat {cat*1000:7.1f} ms   ratio {m[k]/cat:.2f}")
PY

# Cold: the image's pages dropped from the page cache before every run (`dd iflag=nocache
# count=0`, which touches no other file's cache), against reading the image with O_DIRECT, the
# physical limit of a scan.
if [ "${COLD:-1}" = 1 ]; then
  drop="dd if=$img iflag=nocache count=0 status=none"
  echo "cold: the image dropped from the page cache before each run ($drop)"
  cold=(
    "direct|dd if=$img of=/dev/null bs=1M iflag=direct status=none"
    "cat|cat $img > /dev/null"
    "verify|$bin verify $img"
    "verify-cached|$bin verify --cached $img"
  )
  cold_runs=${COLD_RUNS:-5}
  # One run per command per round, the order rotating.
  for r in $(seq "$cold_runs"); do
    rotated "$r" "${cold[@]}" | xargs -0 hyperfine --style basic --runs 1 --prepare "$drop" \
      --export-json "$work/scan-cold-$r.json" >&2
  done
  python3 - "$work"/scan-cold-*.json <<PY
$medians
d = m["direct"]
for k in ("cat", "verify", "verify-cached"):
    print(f"{k} cold median {m[k]*1000:7.1f} ms   O_DIRECT read {d*1000:7.1f} ms   ratio {m[k]/d:.2f}")
PY
fi
