#!/usr/bin/env bash
# dataward against a mosquitto → mosquitto bridge, under the same load, in
# one run, printed as one table: max delivered msg/s (at each device count,
# and with one sealed field), CPU µs per delivered message (from
# /proc/PID/stat: dataward's process, the bridge's edge broker), p50/p99/max
# latency at a steady rate, RSS, and the ratios. dataward runs as a user
# would: encrypted history, a 10-rule policy over its destination, the
# ledger on.
#
#   bash scripts/bench.sh [--device-counts 10,100] [--devices 10]
#                         [--steady-rate 1000] [--seconds 10] [--payload 200]
#
# On a fresh machine it installs mosquitto (Debian's package) first.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! { [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1; }; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: mosquitto"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
fi
cargo build --release --locked -p gateway -p dataward-tests --bin dataward --bin loadgen
DATAWARD_BIN="$PWD/target/release/dataward" exec target/release/loadgen --table "$@"
