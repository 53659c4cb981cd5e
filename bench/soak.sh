#!/usr/bin/env bash
# Soak of the writable layer: the differential test against kernel overlayfs and the fsx-style
# integrity test with many more seeds and operations than CI runs.
#
# Usage: bench/soak.sh [SEEDS] [OPS]     e.g. bench/soak.sh 200 2000 (seeds 1..200, 2000 ops)
# Needs root, FUSE, kernel overlayfs and what scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-50}
ops=${2:-1000}
list=$(seq -s, 1 "$seeds")
start=$(date +%s)
LAMINA_OVL_SEEDS=$list LAMINA_OVL_OPS=$ops \
  cargo test --release --test it random_operations_match_kernel_overlayfs -- --nocapture
LAMINA_FSX_SEEDS=$list LAMINA_FSX_OPS=$((ops * 5)) \
  cargo test --release --test it fsx_writes_match_the_model -- --nocapture
echo "soak: $seeds seeds × $ops operations (fsx: $((ops * 5))) passed in $(( $(date +%s) - start )) s" >&2
