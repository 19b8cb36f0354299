#!/usr/bin/env bash
# Runs every check and test of the repository, on a fresh machine of this kind too: set-up
# (Debian packages, the Go-built test control plane), then format check, clippy and all tests.
# Build caches live in ${SHARDPLANE_CACHE:-~/.cache/shardplane}, outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
source tools/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "cargo test"
results=$(mktemp)
cargo test --locked --lib --bins --tests 2>&1 | tee "$results"

step "all checks passed in $(( $(date +%s) - started )) s"
# The closing line: the totals of every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$results"
