# Shared by tools/bench-serve.sh, tools/bench-proxy.sh and tools/bench-ab.sh (sourced, not run):
# the fio workloads, the page-cache state every image is put in, and the rotating rounds.
# Expects $work, $top, $runtime, $rounds and $size_mib to be set and every server SERVER
# listening on $work/SERVER.sock; the image a server serves is ${images[SERVER]} when the caller
# declares that associative array, else $work/SERVER.img when it exists.
#
# CORES=N (default: the machine's cores) adds multi-connection workloads with N connections, one
# fio job each (as N disks of one host, or one disk with multi-conn), so the same command measures
# a bigger host.
cores=${CORES:-$(nproc)}

# name | fio arguments
workloads=(
  "randwrite-4k-qd16|--rw=randwrite --bs=4k --iodepth=16"
  "randwrite-4k-qd1|--rw=randwrite --bs=4k --iodepth=1"
  "randread-4k-qd16|--rw=randread --bs=4k --iodepth=16"
  "write-1m-qd4|--rw=write --bs=1m --iodepth=4"
  "read-1m-qd4|--rw=read --bs=1m --iodepth=4"
)
if [ "$cores" -gt 1 ]; then
  workloads+=("randwrite-4k-qd16-x${cores}conn|--rw=randwrite --bs=4k --iodepth=16 --numjobs=$cores --group_reporting")
  workloads+=("randread-4k-qd16-x${cores}conn|--rw=randread --bs=4k --iodepth=16 --numjobs=$cores --group_reporting")
fi

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

# settle_cache FILE...: the same page-cache state for every image: dirty pages written back, the
# file's cache dropped, then the whole file read once the same way. How a file entered the cache
# (written, copied, read ahead) sets its folio sizes, and on ext4 that alone moves 4 KiB write
# IOPS several-fold for every server: a comparison must measure the servers, not the cache.
settle_cache() {
  python3 - "$@" <<'PY'
import os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)
PY
}

# image_of SERVER: the file SERVER serves, if known (see the top of this file).
image_of() {
  if declare -p images >/dev/null 2>&1 && [ -n "${images[$1]:-}" ]; then
    echo "${images[$1]}"
  elif [ -f "$work/$1.img" ]; then
    echo "$work/$1.img"
  fi
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
        # Every run starts with no dirty pages, so one server's writeback does not land on the
        # next, and with its image in the same page-cache state as every other server's.
        sync
        img=$(image_of "$s")
        [ -z "$img" ] || settle_cache "$img"
        sleep 1
        # shellcheck disable=SC2086
        fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$work/$s.sock" $args \
          --size="${size_mib}m" --runtime="$runtime" --time_based --output-format=json \
          --output="fio-$s.json" >/dev/null 2>&1
        python3 "$top/tools/fio-table.py" row "$name" "$s" "fio-$s.json" >> "$results"
      done
    done
  done
}
