# Shared by tools/bench-serve.sh and tools/bench-proxy.sh (sourced, not run): the fio workloads
# and the alternating rounds. Expects $work, $top, $runtime, $rounds and $size_mib to be set and
# every server SERVER listening on $work/SERVER.sock.

# name | fio arguments
workloads=(
  "randwrite-4k-qd16|--rw=randwrite --bs=4k --iodepth=16"
  "randwrite-4k-qd1|--rw=randwrite --bs=4k --iodepth=1"
  "randread-4k-qd16|--rw=randread --bs=4k --iodepth=16"
  "write-1m-qd4|--rw=write --bs=1m --iodepth=4"
  "read-1m-qd4|--rw=read --bs=1m --iodepth=4"
)

# ONLY=name1,name2 keeps only those workloads.
if [ -n "${ONLY:-}" ]; then
  kept=()
  for w in "${workloads[@]}"; do
    case ",$ONLY," in *",${w%%|*},"*) kept+=("$w");; esac
  done
  workloads=("${kept[@]}")
fi

machine_line() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
}

# run_rounds RESULTS SERVER...: every workload, $rounds times, the servers in turn, each round
# starting one server later (A B C, B C A, C A B, ...) so that no server always runs first or
# right after the same neighbour; one fio result row each appended to RESULTS.
run_rounds() {
  local results=$1; shift
  : > "$results"
  local servers=("$@") n=$# w name args r i s
  for w in "${workloads[@]}"; do
    name=${w%%|*}; args=${w#*|}
    for r in $(seq "$rounds"); do
      for i in $(seq 0 $((n - 1))); do
        s=${servers[$(( (r - 1 + i) % n ))]}
        # Every run starts with no dirty pages, so one server's writeback does not land on the next.
        sync; sleep 1
        # shellcheck disable=SC2086
        fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$work/$s.sock" $args \
          --size="${size_mib}m" --runtime="$runtime" --time_based --output-format=json \
          --output="fio-$s.json" >/dev/null 2>&1
        python3 "$top/tools/fio-table.py" row "$name" "$s" "fio-$s.json" >> "$results"
      done
    done
  done
}
