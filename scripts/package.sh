#!/usr/bin/env bash
# Builds the Debian package (target/debian/dataward_<version>_<arch>.deb)
# with cargo-deb, installing cargo-deb from crates.io if it is missing.
#   scripts/package.sh            a release build, as shipped
#   scripts/package.sh --profile dev   the debug build (the tests use it: faster)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
if [ "${1:-}" = "--profile" ]; then
  profile="${2:?--profile needs a name}"
fi
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "installing: cargo-deb (crates.io)"
  cargo install --locked --quiet cargo-deb --version 3.8.0
fi
cargo build --locked -p gateway --bin dataward --profile "$profile"
dir=debug
[ "$profile" = "release" ] && dir=release
[ "$profile" != "release" ] && [ "$profile" != "dev" ] && dir="$profile"
# Man pages and completions, from the binary's own command definitions.
rm -rf target/packaging
"target/$dir/dataward" generate-docs target/packaging
gzip -9n target/packaging/man/*.1
if [ "$dir" = "release" ]; then
  cargo deb --no-build --strip -p gateway
else
  # cargo-deb takes the binary from target/release: point it at this build.
  cargo deb --no-build --strip -p gateway --profile "$profile"
fi
ls -1 target/debian/*.deb
