#!/usr/bin/env bash
# Crash loop: fio writes through `lostwrite serve` with a FLUSH every few writes; the service is
# killed with SIGKILL at a random moment, restarted, again and again. At the end a clean session,
# then `verify` (must exit 0: no failing finding) and `ledger check` (must be clean).
#
#   tools/crash-loop.sh [CYCLES=20] [WORKDIR=/var/tmp/lostwrite-crash]
#   SERVE_ARGS="--cache none" tools/crash-loop.sh    # more flags for every `serve`
#
# Needs fio and a release build. Prints each cycle and the final verdict; exits non-zero if
# verify or ledger check fails.
set -euo pipefail
cycles=${1:-20}
work=${2:-/var/tmp/lostwrite-crash}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/target/release/lostwrite
[ -x "$bin" ] || (cd "$top" && cargo build --release)
command -v fio >/dev/null || { echo "fio is missing: apt-get install fio" >&2; exit 2; }
rm -rf "$work"; mkdir -p "$work"; cd "$work"
head -c $((256 << 20)) /dev/urandom > disk.img
"$bin" init --baseline disk.img >/dev/null
uri="nbd+unix:///?socket=$work/disk.img.sock"
start() {
  # shellcheck disable=SC2086
  "$bin" serve disk.img ${SERVE_ARGS:-} 2>>serve.log & svc=$!
  for _ in $(seq 200); do [ -S disk.img.sock ] && return; sleep 0.05; done
  echo "serve did not start" >&2; exit 2
}
for c in $(seq "$cycles"); do
  start
  fio --name=crash --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=16 \
      --numjobs=2 --size=256m --time_based --runtime=30 --fsync=4 --output=/dev/null \
      --verify_state_save=0 >/dev/null 2>&1 & load=$!
  sleep "0.$((RANDOM % 9 + 1))"
  kill -9 "$svc"; wait "$svc" 2>/dev/null || true
  wait "$load" 2>/dev/null || true
  rm -f disk.img.sock
  echo "cycle $c: killed serve (pid $svc) under load"
done
start
fio --name=clean --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=8 --size=256m \
    --io_size=8m --end_fsync=1 --output=/dev/null >/dev/null 2>&1
kill -TERM "$svc"; wait "$svc"
echo "after $cycles kill -9 cycles and a clean session:"
"$bin" status disk.img | grep -E "sessions|journal"
set +e
"$bin" verify disk.img > verify.txt; v=$?
"$bin" ledger check disk.img > check.txt; k=$?
set -e
sed -n 2,3p verify.txt
tail -1 check.txt
echo "verify exit $v, ledger check exit $k"
[ "$v" -eq 0 ] && [ "$k" -eq 0 ]
