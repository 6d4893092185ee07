#!/usr/bin/env bash
# The ledger at scale: reopen time of a ledger whose journal holds 10 million records (after a
# crash and after a clean close), `lostwrite history` of 1,000 blocks in that journal, resident
# memory of `lostwrite serve` tracking a 1 TiB sparse file (at start and after fio writes), and
# ledger bytes per write. Prints a markdown table (docs/PERFORMANCE.md, "Ledger at scale").
#
#   tools/bench-ledger.sh [PARENT=/var/tmp]
#   RECORDS=10000000 DEVICE_GIB=64 RUNS=5 SERVE_RUNS=3 WRITES_MIB=1024 tools/bench-ledger.sh
#
# RECORDS, DEVICE_GIB and RUNS go to `cargo bench --bench ledger_scale` (benches/ledger_scale.rs:
# builds the ledger through the library's recording API and times Ledger::open); RUNS is also
# hyperfine's run count for `history`. SERVE_RUNS starts of `serve` on the 1 TiB file are
# measured; the first one also takes WRITES_MIB of fio 4 KiB random writes (QD16, a FLUSH every
# 1024 writes). Everything is created in a new directory PARENT/lostwrite-ledger-bench.XXXXXX and
# removed at the end (KEEP=1 keeps it). Needs hyperfine, fio (with its nbd engine), python3,
# about 4 GiB free in PARENT, and a machine that is otherwise idle (check `uptime`): figures are
# medians of the runs. The release binary is built only if missing: rebuild it first.
set -euo pipefail
parent=${1:-/var/tmp}
records=${RECORDS:-10000000}
device_gib=${DEVICE_GIB:-64}
runs=${RUNS:-5}
serve_runs=${SERVE_RUNS:-3}
writes_mib=${WRITES_MIB:-1024}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/target/release/lostwrite
for t in hyperfine fio python3 cargo; do
  command -v $t >/dev/null || { echo "$t is missing" >&2; exit 2; }
done
[ -x "$bin" ] || (cd "$top" && cargo build --release)
work=$(mktemp -d "$(cd "$parent" && pwd)/lostwrite-ledger-bench.XXXXXX")
serve_pid=
cleanup() {
  if [ -n "$serve_pid" ] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
res=$work/results.txt
: > "$res"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r); load: $(cut -d' ' -f1-3 /proc/loadavg)"

mem() { # name pid state-file: VmRSS VmHWM RssAnon RssFile (status), the Rss of the state
  # table's mapping (smaps) and the exact total Rss (smaps_rollup), all in kB
  local state_rss
  state_rss=$(awk -v f="$3" '$0 ~ /^[0-9a-f]+-[0-9a-f]+ / {m = ($6 == f)} m && $1 == "Rss:" {s += $2} END {print s + 0}' "/proc/$2/smaps")
  local line
  line="$1 $(awk '/^(VmRSS|VmHWM|RssAnon|RssFile):/{printf "%s ", $2}' "/proc/$2/status")$state_rss $(awk '$1 == "Rss:" {print $2}' "/proc/$2/smaps_rollup")"
  echo "$line" >&2
  echo "$line"
}
start_serve() { # log device [serve flags...]: starts serve in the background (pid in serve_pid) and
  # waits until it logs that it listens (the socket is bound before the ledger is open); the
  # milliseconds that took go to start_ms, the peak anonymous memory meanwhile (kB) to peak_anon
  local log=$1 t0 t1
  shift
  t0=$(date +%s%N)
  "$bin" serve "$@" 2> "$log" &
  serve_pid=$!
  peak_anon=0
  local a
  for _ in $(seq 1200); do
    grep -q 'listening on' "$log" && break
    # The peak of anonymous memory while it opens the ledger (exact, from smaps_rollup: status's
    # VmRSS and VmHWM are approximate on recent kernels).
    a=$(awk '$1 == "Anonymous:" {print $2}' "/proc/$serve_pid/smaps_rollup" 2>/dev/null || echo 0)
    [ "${a:-0}" -gt "$peak_anon" ] && peak_anon=$a
    sleep 0.02
  done
  grep -q 'listening on' "$log" || { echo "serve did not start" >&2; cat "$log" >&2; exit 1; }
  t1=$(date +%s%N)
  start_ms=$(( (t1 - t0) / 1000000 ))
}
stop_serve() { # the milliseconds from SIGTERM to exit go to stop_ms
  local t0 t1
  t0=$(date +%s%N)
  kill -TERM "$serve_pid"
  wait "$serve_pid"
  t1=$(date +%s%N)
  serve_pid=
  stop_ms=$(( (t1 - t0) / 1000000 ))
}

# ---- 1. Ledger::open at 10 million records (and the ledger kept for `history`) ----
(cd "$top" && LEDGER_SCALE_RECORDS=$records LEDGER_SCALE_DEVICE_GIB=$device_gib \
  LEDGER_SCALE_RUNS=$runs LEDGER_SCALE_WORKDIR=$work LEDGER_SCALE_KEEP=1 \
  cargo bench --quiet --bench ledger_scale) | tee "$work/scale.txt" | grep -v '^RESULT'
grep '^RESULT' "$work/scale.txt" | cut -d' ' -f2- >> "$res"
kept=$(awk '$2=="dir"{print $3}' "$work/scale.txt")
image=$(awk '$2=="image"{print $3}' "$work/scale.txt")
ledger=$(awk '$2=="ledger"{print $3}' "$work/scale.txt")

# ---- 2. `lostwrite history` of 1,000 blocks (and of one) in that journal ----
blocks=$(tr '\n' ' ' < "$kept/history-blocks.txt")
one=$(head -1 "$kept/history-blocks.txt")
"$bin" history --ledger "$ledger" "$image" $blocks > "$work/history.out"
echo "history of $(wc -w <<< "$blocks") blocks: $(grep -c '^block ' "$work/history.out") blocks listed, $(grep -cE '^ +[0-9]+ +[0-9]+ ' "$work/history.out") generations"
hyperfine --style basic --warmup 1 --runs "$runs" --export-json "$work/history.json" \
  -n history-1000 "$bin history --ledger $ledger $image $blocks" \
  -n history-1 "$bin history --ledger $ledger $image $one"
python3 - "$work/history.json" >> "$res" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    t = sorted(r["times"])
    print(f'{r["command"].replace("-", "_")} {r["median"]*1e3:.1f} {t[0]*1e3:.1f} {t[-1]*1e3:.1f} {len(t)}')
PY
# `serve` on that ledger: start time and memory (the journal is read at start)
for r in $(seq "$serve_runs"); do
  start_serve "$work/big-$r.log" "$image" --ledger "$ledger" --socket "$work/big.sock"
  echo "big_start_ms $start_ms" >> "$res"
  sleep 1
  mem mem_big "$serve_pid" "$ledger/state" >> "$res"
  echo "peak_big $peak_anon" >> "$res"
  stop_serve
done
rm -rf "$kept"

# ---- 3. `serve` on a 1 TiB sparse file: memory, start time, journal bytes per write ----
tib=$work/tib.img
truncate -s 1T "$tib"
"$bin" init "$tib" > /dev/null
state_file=$tib.ledger/state
echo "state_bytes_tib $(stat -c %s "$state_file")" >> "$res"
journal_bytes() { cat "$tib.ledger"/journal/*.seg | wc -c; }
for r in $(seq "$serve_runs"); do
  sock=$work/tib.sock
  start_serve "$work/serve-$r.log" "$tib" --socket "$sock"
  echo "serve_start_ms $start_ms" >> "$res"
  sleep 1
  mem mem_start "$serve_pid" "$state_file" >> "$res"
  echo "peak_start $peak_anon" >> "$res"
  if [ "$r" = 1 ]; then
    j0=$(journal_bytes)
    w0=$(awk '$1 == "write_bytes:" {print $2}' "/proc/$serve_pid/io")
    fio --name=w --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw=randwrite --bs=4k \
      --iodepth=16 --size=1t --io_size="${writes_mib}m" --fsync=1024 --randrepeat=1 \
      --output-format=json --output="$work/fio.json" > /dev/null
    j1=$(journal_bytes)
    w1=$(awk '$1 == "write_bytes:" {print $2}' "/proc/$serve_pid/io")
    mem mem_written "$serve_pid" "$state_file" >> "$res"
    echo "serve_dirtied $((w1 - w0))" >> "$res"
    python3 - "$work/fio.json" "$j0" "$j1" >> "$res" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
j = json.load(open(sys.argv[1]))["jobs"][0]
print(f'fio_writes {w["total_ios"]} {w["iops"]:.0f} {j.get("sync", {}).get("total_ios", "?")}')
print(f'serve_journal_bytes {int(sys.argv[3]) - int(sys.argv[2])}')
PY
  fi
  stop_serve
  echo "serve_stop_ms $stop_ms" >> "$res"
  if [ "$r" = 1 ]; then
    echo "serve_flushes $(grep -o 'closed cleanly: .*' "$work/serve-1.log" | grep -oE '[0-9]+ flushes' | cut -d' ' -f1)" >> "$res"
  fi
done

# ---- the table ----
python3 - "$res" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
one = {r[0]: r[1:] for r in rows}
many = {}
for r in rows:
    many.setdefault(r[0], []).append(r[1:])
MiB = 1 << 20
rec, writes, flushes = int(one["records"][0]), int(one["writes"][0]), int(one["flushes"][0])
dev_gib = int(one["device_gib"][0])
print()
print(f"Ledger: {rec:,} journal records ({writes:,} 4 KiB writes recorded at QD{one['qd'][0]}, "
      f"{flushes:,} flushes) on a {dev_gib} GiB device; journal {int(one['journal_bytes'][0]):,} bytes "
      f"in {one['segments'][0]} segments, built in {one['build_s'][0]} s")
print()
print("| what | median | min–max | runs | goal | met |")
print("| --- | --- | --- | --- | --- | --- |")
def opened(key, label, goal):
    med, lo, hi, n, replayed = one[key]
    ok = "" if not goal else ("yes" if float(med) <= 2000 else "**no**")
    print(f"| `Ledger::open` {label} (at most {int(replayed):,} records replayed) | {float(med)/1e3:.2f} s | "
          f"{float(lo)/1e3:.2f}–{float(hi)/1e3:.2f} s | {n} | {'≤ 2 s' if goal else '—'} | {ok} |")
opened("open_crash_write_hot", "after a crash, as `serve` (Write), hot cache", True)
opened("open_crash_write_cold", "after a crash, as `serve` (Write), cold cache", True)
opened("open_crash_read_hot", "after a crash, as `verify` (Read), hot cache", False)
opened("open_clean_write_hot", "after a clean close, as `serve` (Write), hot cache", True)
opened("open_clean_write_cold", "after a clean close, as `serve` (Write), cold cache", True)
opened("open_clean_read_hot", "after a clean close, as `verify` (Read), hot cache", False)
for key, label, goal_ms in (("history_1000", "`lostwrite history` of 1,000 blocks", None),
                            ("history_1", "`lostwrite history` of 1 block", 200)):
    med, lo, hi, n = one[key]
    goal, ok = ("—", "") if goal_ms is None else (f"≤ {goal_ms / 1e3:g} s", "yes" if float(med) <= goal_ms else "**no**")
    print(f"| {label} | {float(med)/1e3:.2f} s | {float(lo)/1e3:.2f}–{float(hi)/1e3:.2f} s | {n} | {goal} | {ok} |")
starts = [int(x[0]) / 1e3 for x in many["serve_start_ms"]]
stops = [int(x[0]) / 1e3 for x in many["serve_stop_ms"]]
def timerow(label, v):
    rng = f"{min(v):.2f}–{max(v):.2f} s" if len(v) > 1 else ""
    print(f"| {label} | {statistics.median(v):.2f} s | {rng} | {len(v)} | — | |")
timerow("`serve` on 1 TiB: first start after `init` (state table not cached), until it logs `listening on`", starts[:1])
if len(starts) > 1:
    timerow("`serve` on 1 TiB: restart (state table cached), until it logs `listening on`", starts[1:])
timerow("`serve` on 1 TiB: SIGTERM until exit after the fio writes (clean close)", stops[:1])
if len(stops) > 1:
    timerow("`serve` on 1 TiB: SIGTERM until exit, no writes (clean close)", stops[1:])
state_tib = int(one["state_bytes_tib"][0])
def memrow(key, label, table_bytes, peak_key=None):
    vals = many[key]
    col = lambda i: statistics.median(int(v[i]) for v in vals) / 1024
    rss, hwm, anon, file_, st, exact = (col(i) for i in range(6))
    other = statistics.median(int(v[5]) - int(v[4]) for v in vals) / 1024
    peak = ""
    worst = other
    if peak_key:
        p = statistics.median(int(v[0]) for v in many[peak_key]) / 1024
        # The peak besides the table: anonymous memory at its peak plus the file pages other
        # than the table (the program's own code) as they are now.
        worst = max(other, p + (file_ - st))
        peak = f"; anonymous memory peaked at {p:.1f} MiB while the ledger was opened"
    ok = "yes" if worst <= 64 and st * 1024 <= table_bytes / 1024 else "**no**"
    print(f"| RSS of `serve` {label}: Rss (smaps_rollup); VmRSS, VmHWM (status) | "
          f"{exact:,.0f} MiB; {rss:,.0f} MiB, {hwm:,.0f} MiB | RssAnon {anon:.1f} MiB, RssFile {file_:,.0f} MiB; "
          f"the state table's mapping {st:,.0f} MiB → {other:.1f} MiB besides the table{peak} | {len(vals)} | "
          f"≤ 64 MiB + table ({table_bytes/MiB:,.0f} MiB) | {ok} |")
memrow("mem_start", "on 1 TiB, 1 s after start", state_tib, "peak_start")
memrow("mem_written", f"on 1 TiB, after {int(one['fio_writes'][0]):,} fio 4 KiB random writes", state_tib)
big = [int(x[0]) / 1e3 for x in many["big_start_ms"]]
timerow(f"`serve` on the {rec:,}-record ledger ({dev_gib} GiB device): start, until it logs `listening on`", big)
memrow("mem_big", f"on the {rec:,}-record ledger, 1 s after start", int(one["state_bytes"][0]), "peak_big")
peaks = [int(v[0]) / 1024 for v in many["peak_big"]]
pk = statistics.median(peaks)
print(f"| anonymous memory of `serve` at its peak while opening the {rec:,}-record ledger (smaps_rollup's Anonymous, sampled every 20 ms until it listens) "
      f"| {pk:.1f} MiB | {min(peaks):.1f}–{max(peaks):.1f} MiB | {len(peaks)} | ≤ 16 MiB | {'yes' if pk <= 16 else '**no**'} |")
# Bytes per write.
lib_bpw = (int(one["journal_bytes"][0]) - 64 * int(one["segments"][0])) / writes
fio_writes, fio_iops = int(one["fio_writes"][0]), one["fio_writes"][1]
serve_bpw = int(one["serve_journal_bytes"][0]) / fio_writes
print(f"| journal bytes per 4 KiB write, library at QD{one['qd'][0]}, a FLUSH every {one['flush_every'][0]} writes | {lib_bpw:.2f} B | | 1 | — | |")
print(f"| journal bytes per 4 KiB write, `serve` + fio randwrite QD16 ({fio_iops} IOPS; fio counted {one['fio_writes'][2]} syncs, serve {int(one['serve_flushes'][0]):,} flushes) | {serve_bpw:.2f} B | | 1 | — | |")
dirtied = int(one["serve_dirtied"][0]) / fio_writes
print(f"| bytes `serve` sent toward storage per 4 KiB write during the fio run (`write_bytes` of /proc/PID/io: device data, journal and state table, counted whenever a clean page-cache folio is dirtied) | {dirtied:,.0f} B | | 1 | — | |")
print(f"| ledger bytes per million 4 KiB writes (journal) | {serve_bpw:.1f} MB ({serve_bpw*1e6/MiB:.1f} MiB) | | | — | |")
blocks = (1 << 40) // 4096
def table(entry_bytes):
    data = entry_bytes * blocks
    pages = -(-data // 4096)
    check = -(-(pages * 4) // 4096) * 4096
    return 4096 + check + pages * 4096
base = table(4)
assert table(8) == state_tib, (table(8), state_tib)
print(f"| fixed ledger size per TiB of device at 4 KiB blocks: state table (measured) | {state_tib/MiB:,.0f} MiB | | | — | |")
print(f"| … plus baseline (`init --baseline`; computed from the layout) | {base/MiB:,.0f} MiB | | | — | |")
PY
