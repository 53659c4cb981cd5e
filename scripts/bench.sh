#!/usr/bin/env bash
# The whole benchmark suite, one command, about 20 minutes on 2 cores:
#   micro benchmarks (full pull, conversion, mount: start-up / metadata walk / cached read,
#   mount time against layers and entries), then the workload suite over emulated links with
#   what is left of the budget. Results: bench/results/<date>-<host>/.
#
# Usage: scripts/bench.sh [--budget SECONDS|none] [suite options…]
#   e.g. scripts/bench.sh --workloads python --links unlimited/1ms,20mbit/50ms --reps 5
# Needs root, FUSE and what scripts/setup.sh installs. The writable layer's benchmark
# (fio, tarball extraction; about 4 minutes) runs on its own: cargo bench --bench write.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=1200
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
start=$(date +%s)
out=bench/results/$(date +%Y-%m-%d)-$(hostname)
mkdir -p "$out"
# Every benchmark writes to the folder named when the run started.
export LAMINA_BENCH_RESULTS=$PWD/$out
cargo build --release --benches --quiet
for b in pull convert mount layers; do
  echo "== cargo bench --bench $b" >&2
  {
    echo "# cargo bench --bench $b"
    echo
    cargo bench --quiet --bench "$b" 2>/dev/null
  } | tee "$out/$b.txt"
done
if [ "$budget" = none ]; then
  left=none
else
  # The suite's planner predicts its runs from the fastest link's; keep 10% for its error.
  left=$(( (budget - ($(date +%s) - start)) * 9 / 10 - 30 ))
  [ "$left" -gt 60 ] || left=60
fi
echo "== cargo bench --bench suite -- --budget $left ${args[*]:-}" >&2
cargo bench --quiet --bench suite -- --budget "$left" "${args[@]}"
echo "all benchmarks ran in $(( $(date +%s) - start )) s; results in $out" >&2
