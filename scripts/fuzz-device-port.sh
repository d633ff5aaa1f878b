#!/usr/bin/env bash
# The long packet fuzz of the device port: 20,000 mutated CONNECT, PUBLISH
# and SUBSCRIBE packets (or $1) over fresh connections against a real
# gateway, then a real device must still deliver. Needs mosquitto, like the
# test suite (scripts/test.sh installs it). Seed: $2 (optional).
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--packets "${1:-20000}")
if [ -n "${2:-}" ]; then args+=(--seed "$2"); fi
cargo run -q --locked -p dataward-tests --bin fuzz -- "${args[@]}"
