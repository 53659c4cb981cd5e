#!/usr/bin/env bash
# Everything CI checks, in order: formatting, the module layering (scripts/check-layers.sh),
# lints, then every test (unit and integration).
# Integration tests start their own registry on a free loopback port; run scripts/setup.sh
# first on a fresh machine. With CI=true a missing tool fails the tests instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
bash scripts/check-layers.sh
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
