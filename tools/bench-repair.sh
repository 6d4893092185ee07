#!/usr/bin/env bash
# How long `lostwrite repair --from BACKUP` takes to plan, against reading the backup once: a
# random image is baselined, copied as the backup, and DAMAGED scattered blocks of it are
# overwritten (findings the backup repairs); then, alternating, each of `cat BACKUP` (its pages
# dropped from the page cache first), `dd iflag=direct` of it, the plan, and `verify` alone, run
# RUNS times. Prints each command's median and the plan's ratio to each read.
#
#   tools/bench-repair.sh [SIZE_GIB=1] [DAMAGED=10000] [WORKDIR=/var/tmp/lostwrite-bench]
set -euo pipefail
size_gib=${1:-1}
damaged=${2:-10000}
work=${3:-/var/tmp/lostwrite-bench}
runs=${RUNS:-5}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/target/release/lostwrite
[ -x "$bin" ] || (cd "$top" && cargo build --release)
mkdir -p "$work"
img=$work/repair-${size_gib}g.img
backup=$work/repair-${size_gib}g.backup.img
head -c $((size_gib << 30)) /dev/urandom > "$img"
rm -rf "$img.ledger"
"$bin" init --baseline "$img" >/dev/null 2>&1
cp "$img" "$backup"
python3 - "$img" "$damaged" <<'PY'
import random, sys
path, n = sys.argv[1], int(sys.argv[2])
random.seed(7)
with open(path, "r+b") as f:
    f.seek(0, 2)
    blocks = f.tell() // 4096
    for b in sorted(random.sample(range(blocks), n)):
        f.seek(b * 4096)
        f.write(random.randbytes(4096))
PY
sync
secs() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; echo "$(date +%s.%N) - $s" | bc; }
for _ in $(seq "$runs"); do
  dd if="$backup" iflag=nocache count=0 status=none
  echo "cat $(secs cat "$backup")"
  echo "dd-direct $(secs dd if="$backup" of=/dev/null bs=1M iflag=direct)"
  echo "plan $(secs "$bin" repair "$img" --from "$backup" --json)"
  echo "verify $(secs "$bin" verify "$img" --json)"
done | sort -k1,1 -k2n | awk -v runs="$runs" '
  { v[$1, ++n[$1]] = $2 }
  END {
    for (k in n) med[k] = v[k, int((n[k] + 1) / 2)]
    for (k in n) printf "%-10s median %.2f s\n", k, med[k]
    printf "plan / cat %.2f, plan / dd-direct %.2f\n", med["plan"] / med["cat"], med["plan"] / med["dd-direct"]
  }'
"$bin" repair "$img" --from "$backup" --json | python3 -c '
import json, sys
p = json.load(sys.stdin)
print("plan:", p["failing"], "failing,", p["repairable"], "repairable in", len(p["runs"]), "runs")'
rm -rf "$img" "$img.ledger" "$backup"
