#!/usr/bin/env bash
# The main job: a local Shardplane sandbox in one command, on a fresh machine of this kind
# too. Set-up as for the tests, then `shardplane demo`: control plane, chart, examples/, the
# operator and three agents running PostgreSQL on loopback, rows written through the router
# and shown where they live (pass --exit to stop after that instead of running until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
step "building shardplane"
cargo build --locked --bin shardplane
step "shardplane demo"
exec "$CARGO_TARGET_DIR/debug/shardplane" demo "$@"
