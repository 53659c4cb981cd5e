#!/usr/bin/env bash
# Prints the module dependency graph of src/ and fails on a cycle between modules or on a
# command module (pull, convert, commit, run, cli) used from anywhere but cli/ and main.rs.
# The parser is scripts/check-layers.py (python3 stdlib); --dot prints Graphviz instead.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/check-layers.py "$@" src
