#!/usr/bin/env bash
# A database through the sidecar: PostgreSQL on ext4 on a loop device on an nbdfuse file, the
# NBD export served by `lostwrite serve` (recording, baselined) or by `nbdkit file`, each on its
# own non-sparse copy of one image that already holds an initialised pgbench database (scale
# SCALE). Two workloads: TPC-B (`pgbench -c 4`) and single-client simple updates (`pgbench -c 1
# -N`), where every transaction waits for its commit's fsync, i.e. an NBD FLUSH: the commit
# latency a VM's database pays. Rounds rotate the order of the servers; before every run the
# whole stack is taken down (PostgreSQL stopped, ext4 unmounted, loop device and nbdfuse gone)
# and the image is put in the same page-cache state as every other (tools/bench-lib.sh
# `settle_cache`), so every run starts from a cold PostgreSQL, a cold guest cache and the same
# host cache. Prints a markdown table: TPS, latency average, and the CPU seconds the NBD server
# used during the run (user + system, /proc/PID/stat), as medians over the rounds, with ratios to
# nbdkit.
#
#   tools/bench-pgbench.sh [WORKDIR=/var/tmp/lostwrite-bench]
#   SCALE=20 RUNTIME=30 ROUNDS=3 SIZE_MIB=3072 tools/bench-pgbench.sh
#
# Needs root (loop devices, mounts), PostgreSQL's server binaries (initdb, pg_ctl, postgres,
# pgbench: apt-get install postgresql; PGBIN=DIR picks a version, default the newest under
# /usr/lib/postgresql) and a `postgres` user to run them as, nbdfuse (apt-get install nbdfuse),
# nbdkit, mkfs.ext4, losetup, python3 and a release build. PostgreSQL runs as `postgres` with its
# own data directory on the mounted filesystem and its socket in WORKDIR (no TCP listener, port
# PGPORT, default 5433); the system's cluster is never touched. Every cluster, mount, loop device
# and process it starts is stopped by its PID, device or path on exit, also after a failure or
# Ctrl-C.
set -euo pipefail
work=${1:-/var/tmp/lostwrite-bench}/pgbench
scale=${SCALE:-20}
runtime=${RUNTIME:-30}
rounds=${ROUNDS:-3}
size_mib=${SIZE_MIB:-3072}
port=${PGPORT:-5433}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$top/target/release/lostwrite
[ -x "$bin" ] || (cd "$top" && cargo build --release)
if [ -z "${PGBIN:-}" ]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$PGBIN" ] || PGBIN=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")
fi
for t in "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/postgres" "$PGBIN/pgbench" nbdfuse nbdkit \
  mkfs.ext4 losetup runuser python3; do
  command -v "$t" >/dev/null || { echo "$t is missing (PostgreSQL: apt-get install postgresql; PGBIN=DIR)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "run as root: it attaches loop devices and mounts ext4" >&2; exit 2; }
id postgres >/dev/null 2>&1 || { echo "no 'postgres' user to run PostgreSQL as" >&2; exit 2; }
mkdir -p "$work"
cd "$work"
work=$(pwd)
# PostgreSQL's socket and its server logs, in directories its user can write.
sockdir=$work/pgsock
mkdir -p "$sockdir" "$work/pglog"
chown postgres: "$sockdir" "$work/pglog"
pg() { runuser -u postgres -- "$@"; }

# What is up, torn down in reverse on exit: servers by PID; the current stack by postmaster PID
# (from its data directory), mount point, loop device and nbdfuse PID.
servers_pids=()
pg_data= mnt= loopdev= fuse_pid= fuse_dir=
down() {
  if [ -n "$pg_data" ]; then
    if [ -f "$pg_data/postmaster.pid" ]; then
      pg "$PGBIN/pg_ctl" -D "$pg_data" -m fast -w -t 60 stop >/dev/null 2>&1 || {
        p=$(head -1 "$pg_data/postmaster.pid" 2>/dev/null || true)
        [ -z "$p" ] || kill -QUIT "$p" 2>/dev/null || true
        sleep 1
      }
    fi
    pg_data=
  fi
  if [ -n "$mnt" ]; then
    for _ in $(seq 50); do umount "$mnt" 2>/dev/null && break; sleep 0.2; done
    mountpoint -q "$mnt" && { echo "cannot unmount $mnt" >&2; return 1; }
    mnt=
  fi
  if [ -n "$loopdev" ]; then
    losetup -d "$loopdev" 2>/dev/null || true
    # A detached loop device lets go of its file only once closed by everyone.
    for _ in $(seq 100); do [ -e "/sys/block/${loopdev#/dev/}/loop/backing_file" ] || break; sleep 0.1; done
    loopdev=
  fi
  if [ -n "$fuse_pid" ]; then
    # nbdfuse exits once its filesystem is unmounted.
    for _ in $(seq 100); do
      umount "$fuse_dir" 2>/dev/null || true
      kill -0 "$fuse_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$fuse_pid" 2>/dev/null || true
    wait "$fuse_pid" 2>/dev/null || true
    fuse_pid=
  fi
}
cleanup() {
  down || true
  for p in "${servers_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${servers_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# up DEVICE_OR_SOCKET NAME: the stack for one image (a plain file, or an NBD server's socket),
# mounted on $work/mnt-NAME, PostgreSQL started on it.
up() {
  local src=$1 name=$2 file
  if [ -S "$src" ]; then
    fuse_dir=$work/fuse-$name
    mkdir -p "$fuse_dir"
    nbdfuse "$fuse_dir/disk" --unix "$src" </dev/null >/dev/null 2>"$work/nbdfuse-$name.log" &
    fuse_pid=$!
    for _ in $(seq 200); do [ -s "$fuse_dir/disk" ] && break; sleep 0.05; done
    [ -s "$fuse_dir/disk" ] || { echo "nbdfuse did not come up" >&2; cat "$work/nbdfuse-$name.log" >&2; return 1; }
    file=$fuse_dir/disk
  else
    file=$src
  fi
  loopdev=$(losetup -f --show "$file")
  mkdir -p "$work/mnt-$name"
  mount "$loopdev" "$work/mnt-$name"
  mnt=$work/mnt-$name
  pg_data=$mnt/pgdata
  if [ -f "$pg_data/PG_VERSION" ]; then
    pg "$PGBIN/pg_ctl" -D "$pg_data" -l "$work/pglog/$name.log" -w -t 300 \
      -o "-k $sockdir -p $port -c listen_addresses=''" start >/dev/null
  fi
}

# The database, once per SCALE and size: ext4 on a plain loop device over base.img, a cluster,
# `pgbench -i`. Both servers then get a non-sparse copy of it.
if [ ! -f base.img ] || [ "$(cat base.done 2>/dev/null)" != "$scale $size_mib $PGBIN" ]; then
  echo "creating the database (scale $scale) in base.img" >&2
  rm -f base.img base.done
  truncate -s "${size_mib}M" base.img
  mkfs.ext4 -q -F base.img
  up "$work/base.img" base
  mkdir "$mnt/pgdata"
  chown postgres: "$mnt/pgdata"
  chmod 700 "$mnt/pgdata"
  pg "$PGBIN/initdb" -D "$mnt/pgdata" -A trust -U postgres >"$work/initdb.log"
  pg "$PGBIN/pg_ctl" -D "$pg_data" -l "$work/pglog/base.log" -w -t 300 \
    -o "-k $sockdir -p $port -c listen_addresses=''" start >/dev/null
  pg "$PGBIN/pgbench" -h "$sockdir" -p "$port" -U postgres -i -s "$scale" -q postgres >"$work/init.log" 2>&1
  down
  echo "$scale $size_mib $PGBIN" > base.done
fi

for s in serve nbdkit; do
  rm -rf "$s.img" "$s.img.ledger" "$s.sock"
  cp --sparse=never base.img "$s.img"
done
"$bin" init --baseline serve.img >/dev/null
"$bin" serve serve.img --socket serve.sock 2>serve.log & servers_pids+=($!); serve_pid=$!
nbdkit -U "$work/nbdkit.sock" -f file file=nbdkit.img & servers_pids+=($!); nbdkit_pid=$!
for s in serve nbdkit; do
  for _ in $(seq 100); do [ -S "$s.sock" ] && break; sleep 0.1; done
  [ -S "$s.sock" ] || { echo "$s did not start" >&2; exit 1; }
done
declare -A pid_of=([serve]=$serve_pid [nbdkit]=$nbdkit_pid)
tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

source "$top/tools/bench-lib.sh"
machine_line
echo "pgbench: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), scale $scale, ${runtime}s per run, ${rounds} rotating rounds; ext4 on a loop device on nbdfuse on each server; ${size_mib} MiB image per server; the stack taken down and the image settled before every run"

# name | pgbench arguments
pgworkloads=(
  "tpcb-c4|-c 4"
  "simple-update-c1-N|-c 1 -N"
)
servers=(serve nbdkit)
: > results.tsv
for w in "${pgworkloads[@]}"; do
  name=${w%%|*}; args=${w#*|}
  for r in $(seq "$rounds"); do
    for i in 0 1; do
      s=${servers[$(( (r - 1 + i) % 2 ))]}
      sync
      settle_cache "$s.img"
      sleep 1
      up "$work/$s.sock" "$s"
      c0=$(cpu_ticks "${pid_of[$s]}")
      # shellcheck disable=SC2086
      pg "$PGBIN/pgbench" -h "$sockdir" -p "$port" -U postgres $args -T "$runtime" postgres \
        >"pgbench-$s.out" 2>&1 || { cat "pgbench-$s.out" >&2; exit 1; }
      c1=$(cpu_ticks "${pid_of[$s]}")
      down
      tps=$(sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\).*/\1/p' "pgbench-$s.out")
      lat=$(sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p' "pgbench-$s.out")
      tx=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "pgbench-$s.out")
      cpu=$(python3 -c "print(f'{($c1 - $c0) / $tck:.2f}')")
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$s" "$tps" "$lat" "$cpu" "$tx" | tee -a results.tsv >&2
    done
  done
done

python3 - <<'EOF'
import statistics as st
rows = [l.rstrip("\n").split("\t") for l in open("results.tsv") if l.strip()]
label = {"serve": "lostwrite serve", "nbdkit": "nbdkit file"}
works = list(dict.fromkeys(r[0] for r in rows))
print()
print("| workload | server | TPS (median) | TPS min–max | latency average ms | server CPU s per run "
      "| server CPU µs per transaction | TPS / nbdkit file | same, round by round (median) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
summary = []
for w in works:
    wr = [r for r in rows if r[0] == w]
    by = {s: [r for r in wr if r[1] == s] for s in label}
    med = {s: [st.median(float(r[i]) for r in v) for i in (2, 3, 4)] for s, v in by.items() if v}
    cpu_tx = {s: st.median(float(r[4]) / max(int(r[5]), 1) * 1e6 for r in v) for s, v in by.items() if v}
    # Rows come two by two, one round after another: pair them.
    pairs = [{r[1]: float(r[2]) for r in wr[i:i + 2]} for i in range(0, len(wr), 2)]
    for s in label:
        if s not in med:
            continue
        tps = [float(r[2]) for r in by[s]]
        paired = [p[s] / p["nbdkit"] for p in pairs if s in p and p.get("nbdkit")]
        print(f"| {w} | {label[s]} | {med[s][0]:.0f} | {min(tps):.0f}–{max(tps):.0f} | {med[s][1]:.2f} "
              f"| {med[s][2]:.2f} | {cpu_tx[s]:.0f} | {med[s][0] / med['nbdkit'][0]:.2f} "
              f"| {st.median(paired):.2f} |")
    if "serve" in med and "nbdkit" in med:
        lat = med["serve"][1] / med["nbdkit"][1]
        cpu = cpu_tx["serve"] / cpu_tx["nbdkit"]
        paired = st.median(p["serve"] / p["nbdkit"] for p in pairs if "serve" in p and p.get("nbdkit"))
        summary.append(f"pgbench {w}: serve TPS / nbdkit TPS {paired:.2f} round by round "
                       f"({med['serve'][0] / med['nbdkit'][0]:.2f} of the medians); latency average "
                       f"{lat:.2f}×; CPU per transaction {cpu:.2f}× nbdkit's")
print()
for s in summary:
    print(s)
EOF
