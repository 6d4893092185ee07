#!/usr/bin/env bash
# The whole performance suite in one command, writing its results into docs/PERFORMANCE.md
# (between the `bench-all` markers at the top of the file):
#
#   1. tools/bench-serve.sh      serve vs serve --no-record vs nbdkit file vs qemu-nbd (fio, nbd)
#   2. tools/bench-direct.sh     serve --cache none vs qemu-nbd --cache=none, io_uring and native
#   3. tools/bench-flush.sh      FLUSH p50/p99 under a write load vs nbdkit and raw fdatasync
#   4. tools/bench-pgbench.sh    PostgreSQL on ext4 over nbdfuse, through serve and nbdkit
#   5. tools/bench-scan.sh 1, 8  verify and init --baseline vs cat (hot) and O_DIRECT (cold)
#   6. tools/bench-ledger.sh     reopen of 10 M records, history, serve's memory, bytes per write
#   7. tools/bench-retention.sh  what retention bounds and costs
#   then tools/bench-goals.py      the performance goals against this run's figures, and what
#                                  stands in the way of each goal missed
#
# Every comparison runs in rounds whose order rotates, with every image put in the same
# page-cache state before each run (tools/bench-lib.sh `settle_cache`); CORES=N adds
# multi-connection fio workloads with N connections (default: this machine's cores), so the same
# command measures a bigger host.
#
#   tools/bench-all.sh                 everything, the scripts' defaults (about an hour and a half)
#   QUICK=1 tools/bench-all.sh         fewer and shorter rounds, 1 M records, the 1 GiB scan only,
#                                      two of the --cache none workloads (about half an hour)
#   NO_WRITE=1 tools/bench-all.sh      print the section instead of writing it into the doc
#
# Run it on an otherwise idle machine (check `uptime`): every figure is a median of rotating
# rounds, and the section says when, where and with which settings it ran. Needs what the
# scripts need: fio, nbdkit, qemu-nbd, hyperfine, python3, nbdfuse and PostgreSQL's server
# (apt-get install nbdfuse postgresql) for the database rows, root for those and the cold scans,
# and about 30 GiB free under /var/tmp, on a filesystem that does direct I/O (not tmpfs).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
doc=$top/docs/PERFORMANCE.md
(cd "$top" && cargo build --release --benches >/dev/null 2>&1) || (cd "$top" && cargo build --release)
if [ "${QUICK:-0}" = 1 ]; then
  export RUNTIME=${RUNTIME:-5} ROUNDS=${ROUNDS:-3} RECORDS=${RECORDS:-1000000} RUNS=${RUNS:-3}
  export SERVE_RUNS=${SERVE_RUNS:-1} WRITES_MIB=${WRITES_MIB:-256} COLD_RUNS=${COLD_RUNS:-3}
  export WRITES=${WRITES:-262144}
  scans=(1)
  direct_only=${ONLY:-randwrite-4k-qd16,randread-4k-qd16}
else
  scans=(1 8)
  direct_only=${ONLY:-}
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# Runs one script; its markdown tables and summary lines go into the section (other lines
# are named as a list), everything to the terminal.
run() {
  local title=$1; shift
  echo "== $title: $*" >&2
  printf '\n### %s\n\nCommand: `%s%s`\n' "$title" "${ONLY:+ONLY=$ONLY }" "${*#$top/}" >> "$out"
  "$@" 2>&1 | tee -a /dev/stderr | python3 -c '
import re, sys
keep = re.compile(r"^(\||machine|image|hot|cold|direct |cat |verify|baseline|serve |retention|Ledger|pgbench)")
prev_table = False
for line in sys.stdin:
    line = line.rstrip("\n")
    if not keep.match(line):
        continue
    table = line.startswith("|")
    if table != prev_table or not table:
        print()
    print(line if table else "- " + line)
    prev_table = table
' >> "$out" || true
}

{
  echo "<!-- bench-all:begin -->"
  echo "## The suite's last run (tools/bench-all.sh)"
  echo
  echo "Written by \`tools/bench-all.sh\`$([ "${QUICK:-0}" = 1 ] && echo ' with QUICK=1') on $(date -u +%Y-%m-%dT%H:%MZ), commit $(cd "$top" && git rev-parse --short HEAD): $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r); load average at the start: $(cut -d' ' -f1-3 /proc/loadavg). The sections below it explain each figure and what stands in the way of the goals it misses."
} > "$out"
run "The sidecar against its peers" "$top/tools/bench-serve.sh"
ONLY=$direct_only run "\`--cache none\` against qemu-nbd with O_DIRECT" "$top/tools/bench-direct.sh"
run "FLUSH latency under a write load" "$top/tools/bench-flush.sh"
run "PostgreSQL (pgbench) on ext4 over nbdfuse" "$top/tools/bench-pgbench.sh"
for g in "${scans[@]}"; do
  run "Scan of a ${g} GiB image" "$top/tools/bench-scan.sh" "$g"
done
run "Ledger at scale" "$top/tools/bench-ledger.sh"
run "Retention" "$top/tools/bench-retention.sh"
{
  printf '\n### Against the goals\n\n'
  printf 'Computed from the figures above by `tools/bench-goals.py`, which also says what stands in the way of each goal missed; the sections after the suite'"'"'s run hold the measurements behind it.\n\n'
  python3 "$top/tools/bench-goals.py" "$out" || echo "(no goals table: $top/tools/bench-goals.py failed)"
} >> "$out"
echo "<!-- bench-all:end -->" >> "$out"

if [ "${NO_WRITE:-0}" = 1 ]; then
  cat "$out"
  exit 0
fi
python3 - "$doc" "$out" <<'EOF'
import sys
doc, new = sys.argv[1], open(sys.argv[2]).read().rstrip("\n") + "\n"
text = open(doc).read()
b, e = "<!-- bench-all:begin -->", "<!-- bench-all:end -->"
if b in text and e in text:
    text = text[: text.index(b)] + new + text[text.index(e) + len(e) + 1 :]
else:
    # After the title and its first paragraph.
    head, _, rest = text.partition("\n\n")
    text = head + "\n\n" + new + "\n" + rest
open(doc, "w").write(text)
print(f"wrote the suite's section into {doc}", file=sys.stderr)
EOF
