#!/usr/bin/env bash
# Side-by-side timing of `lostwrite verify` and `lostwrite init --baseline` (which read the media
# with O_DIRECT) and `verify --cached` against `cat IMAGE > /dev/null` on the same image with a
# hot page cache (hyperfine, alternating runs), then, cold (the image's pages dropped from the
# cache before each run), the same against `cat` and an O_DIRECT read of the image.
#
#   tools/bench-scan.sh [SIZE_GIB=1] [WORKDIR=/var/tmp/lostwrite-bench]
#   COLD=0 tools/bench-scan.sh 8     (hot only)
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
  -n direct "dd if=$img of=/dev/null bs=1M iflag=direct status=none" \
  -n verify "$bin verify $img" \
  -n verify-cached "$bin verify --cached $img" \
  -n baseline "rm -rf $work/tmp.ledger && $bin init --baseline --ledger $work/tmp.ledger $img" \
  -n baseline-cached "rm -rf $work/tmp.ledger && $bin init --baseline --cached --ledger $work/tmp.ledger $img"
python3 - "$work/scan.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
cat = r["cat"]["median"]
for k in ("direct", "verify", "verify-cached", "baseline", "baseline-cached"):
    print(f"{k:9s} median {r[k]['median']*1000:7.1f} ms   cat {cat*1000:7.1f} ms   ratio {r[k]['median']/cat:.2f}")
PY

# Cold: the image's pages dropped from the page cache before every run (`dd iflag=nocache
# count=0`, which touches no other file's cache), against reading the image with O_DIRECT, the
# physical limit of a scan.
if [ "${COLD:-1}" = 1 ]; then
  drop="dd if=$img iflag=nocache count=0 status=none"
  echo "cold: the image dropped from the page cache before each run ($drop)"
  hyperfine --runs "${COLD_RUNS:-5}" --prepare "$drop" \
    --export-json "$work/scan-cold.json" \
    -n direct "dd if=$img of=/dev/null bs=1M iflag=direct status=none" \
    -n cat "cat $img > /dev/null" \
    -n verify "$bin verify $img" \
    -n verify-cached "$bin verify --cached $img"
  python3 - "$work/scan-cold.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
d = r["direct"]["median"]
for k in ("cat", "verify", "verify-cached"):
    print(f"{k} cold median {r[k]['median']*1000:7.1f} ms   O_DIRECT read {d*1000:7.1f} ms   ratio {r[k]['median']/d:.2f}")
PY
fi
