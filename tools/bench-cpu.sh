#!/usr/bin/env bash
# CPU per request of NBD servers already running: for each server NAME, WORKDIR/NAME.sock is its
# socket and WORKDIR/NAME.pid its process. fio's nbd engine does a fixed amount of 4 KiB I/O at
# QD16 against each in rotating rounds, and the server's CPU time (user + system, from
# /proc/PID/stat) before and after gives microseconds of CPU per request. On a shared machine
# this moves far less than IOPS: a loaded core slows a server down, but costs it no more CPU.
#
#   tools/bench-cpu.sh WORKDIR ROUNDS randwrite|randread NAME...
#   IO_MIB=120 SIZE_MIB=256 tools/bench-cpu.sh /var/tmp/w 3 randwrite new old uring
#
# Prints one row per run: round, server, IOPS, CPU µs per request.
set -euo pipefail
work=${1:?usage: tools/bench-cpu.sh WORKDIR ROUNDS RW NAME...}
rounds=${2:?rounds}
rw=${3:?randwrite or randread}
shift 3
servers=("$@")
n=${#servers[@]}
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
printf 'round\tserver\tIOPS\tCPU µs per request\n'
for r in $(seq "$rounds"); do
  for i in $(seq 0 $((n - 1))); do
    s=${servers[$(( (r - 1 + i) % n ))]}
    pid=$(cat "$work/$s.pid")
    t0=$(cpu "$pid")
    fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$work/$s.sock" --rw="$rw" --bs=4k \
      --iodepth=16 --size="${SIZE_MIB:-256}m" --io_size="${IO_MIB:-120}m" --output-format=json \
      --output="$work/cpu-$s.json" >/dev/null 2>&1
    t1=$(cpu "$pid")
    python3 - "$work/cpu-$s.json" "$s" $((t1 - t0)) "$hz" "$r" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = "write" if j["write"]["total_ios"] else "read"
ios, iops = j[side]["total_ios"], j[side]["iops"]
ticks, hz = int(sys.argv[3]), int(sys.argv[4])
print(f"{sys.argv[5]}\t{sys.argv[2]}\t{iops:.0f}\t{ticks / hz / ios * 1e6:.1f}")
PY
  done
done
