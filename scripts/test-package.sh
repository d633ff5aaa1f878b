#!/usr/bin/env bash
# The Debian package on this machine, as a user would meet it (as root,
# as in CI): built, checked by lintian (no errors), installed (its user,
# paths, conffile, unit), run as its user (the setup link reaches
# `dataward status`), then purged, which must leave nothing behind.
# Installs lintian and systemd from Debian's packages if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
need=()
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v adduser >/dev/null 2>&1 || need+=(adduser)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

fail() { echo "package test FAILED: $*" >&2; exit 1; }
ok() { echo "package test: $*"; }

if dpkg -s dataward >/dev/null 2>&1; then
  fail "dataward is already installed here; purge it first (dpkg --purge dataward)"
fi
# The debug build: the package is the same, the build much faster.
bash scripts/package.sh --profile dev >/dev/null
deb=$(ls -1 target/debian/dataward_*.deb | head -n1)

lintian --fail-on error --tag-display-limit 0 "$deb" 2>&1 | grep -v "running with root privileges" || true
lintian --fail-on error "$deb" >/dev/null 2>&1 || fail "lintian reports errors"
ok "lintian: no errors"

$sudo dpkg -i "$deb" >/dev/null
trap '$sudo pkill -u dataward -f "dataward run" 2>/dev/null || true; $sudo dpkg --purge dataward >/dev/null 2>&1 || true' EXIT
getent passwd dataward >/dev/null || fail "no dataward user"
[ "$(stat -c %U:%a /var/lib/dataward)" = "dataward:700" ] || fail "/var/lib/dataward: $(stat -c %U:%a /var/lib/dataward)"
[ "$(stat -c %U:%G:%a /etc/dataward/dataward.toml)" = "root:dataward:640" ] || fail "config: $(stat -c %U:%G:%a /etc/dataward/dataward.toml)"
dpkg-query -W -f='${Conffiles}\n' dataward | grep -q "/etc/dataward/dataward.toml" || fail "the config is not a conffile"
/usr/bin/dataward --version | grep -q "^dataward " || fail "dataward --version"
[ -f /usr/share/man/man1/dataward.1.gz ] && [ -f /usr/share/man/man1/dataward-run.1.gz ] || fail "no man pages"
[ -f /usr/share/bash-completion/completions/dataward ] || fail "no bash completion"
ok "installed: user, /var/lib/dataward, conffile, --version, man pages, completions"

systemd-analyze verify /usr/lib/systemd/system/dataward.service || fail "systemd-analyze verify"
score=$(systemd-analyze security --offline=true /usr/lib/systemd/system/dataward.service 2>/dev/null | grep -o "exposure level for dataward.service: [0-9.]* [A-Z]*" | sed 's/.*: //')
[ -n "$score" ] || fail "no exposure score"
ok "unit verified; systemd-analyze security: $score"

# Run as the service would (no systemd as PID 1 here): the setup link
# reaches `dataward status`, run by root through the control socket.
$sudo runuser -u dataward -- /usr/bin/dataward run --config /etc/dataward/dataward.toml \
  --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >/dev/null 2>/tmp/dataward-package-test.log &
for _ in $(seq 1 100); do
  if dataward status 2>/dev/null | grep -q "^setup: open http://127.0.0.1:"; then break; fi
  sleep 0.2
done
dataward status | grep -q "^setup: open http://127.0.0.1:.*/setup?token=" || { cat /tmp/dataward-package-test.log; fail "dataward status shows no setup link"; }
ok "the setup link reaches dataward status"
# Root must not write the service's store behind its back.
$sudo pkill -TERM -u dataward -f "dataward run"
for _ in $(seq 1 50); do pgrep -u dataward -f "dataward run" >/dev/null || break; sleep 0.2; done
if dataward device add intruder >/dev/null 2>&1; then fail "root wrote to the service's store"; fi
[ -z "$(find /var/lib/dataward -not -user dataward)" ] || fail "files not owned by dataward: $(find /var/lib/dataward -not -user dataward)"
ok "a command as root on the stopped service's store is refused"

$sudo dpkg --purge dataward >/dev/null
trap - EXIT
for p in /var/lib/dataward /etc/dataward /usr/bin/dataward /usr/lib/systemd/system/dataward.service /usr/share/doc/dataward; do
  [ ! -e "$p" ] || fail "$p is left after purge"
done
getent passwd dataward >/dev/null && fail "the dataward user is left after purge"
dpkg -s dataward >/dev/null 2>&1 && fail "still installed"
ok "purge left nothing behind"
