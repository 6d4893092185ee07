#!/usr/bin/env bash
# Side-by-side timing of `lostwrite verify` and `lostwrite init --baseline` against `cat IMAGE >
# /dev/null` on the same image with a hot page cache (hyperfine, alternating runs).
#
#   tools/bench-scan.sh [SIZE_GIB=1] [WORKDIR=/var/tmp/lostwrite-bench]
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
hyperfine --warmup 2 --runs 10 --export-json "$work/scan.json" \
  -n cat "cat $img > /dev/null" \
  -n verify "$bin verify $img" \
  -n baseline "rm -rf $work/tmp.ledger && $bin init --baseline --ledger $work/tmp.ledger $img"
python3 - "$work/scan.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
cat = r["cat"]["median"]
for k in ("verify", "baseline"):
    print(f"{k:9s} median {r[k]['median']*1000:7.1f} ms   cat {cat*1000:7.1f} ms   ratio {r[k]['median']/cat:.2f}")
PY
