#!/usr/bin/env bash
# Runs dataward's whole test suite on a fresh machine: installs what the
# tests need (mosquitto, openssl, age, chromium and chromium-driver from
# Debian's packages, the OpenAPI validator and Home Assistant from PyPI) if missing, then runs
# `cargo test` over the workspace, then the Debian package's test
# (scripts/test-package.sh: it installs and purges the package, and
# installs lintian and cargo-deb if missing).
# Used as-is by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# age opens encrypted exports in the tests, as a user would.
command -v age >/dev/null 2>&1 || need+=(age)
# The web UI's tests run in a real headless browser.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The OpenAPI document is checked against the OpenAPI 3.1 schema by the
# validator from PyPI, in a virtualenv of its own under target/.
if ! command -v openapi-spec-validator >/dev/null 2>&1; then
  venv=target/tools/openapi
  if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
    echo "installing: openapi-spec-validator (PyPI)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check openapi-spec-validator==0.9.0
  fi
  export PATH="$PWD/$venv/bin:$PATH"
fi
# Home Assistant's discovery messages are checked by Home Assistant's own
# code (its discovery schema and template engine): the last release that
# runs on this Python, from PyPI, in a virtualenv of its own.
ha=target/tools/home-assistant
if [ ! -x "$ha/bin/python" ] || ! "$ha/bin/python" -c 'import homeassistant.components.mqtt.sensor' >/dev/null 2>&1; then
  echo "installing: homeassistant (PyPI), for the discovery check"
  rm -rf "$ha"
  python3 -m venv "$ha"
  "$ha/bin/pip" install --quiet --disable-pip-version-check homeassistant==2024.3.3 paho-mqtt==1.6.1
fi
# The tests start their own mosquitto on free loopback ports; the one the
# Debian package may have started as a service is not used.

cargo build --workspace --all-targets --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one per binary,
# the last of which is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
# The Debian package: built, installed, run as its user, purged (root, or
# sudo: it installs a package on this machine).
set +e
bash scripts/test-package.sh
package=$?
set -e
if [ "$package" -ne 0 ]; then
  echo "package test: failed"
  [ "$status" -ne 0 ] || status=$package
fi
exit "$status"
