#!/usr/bin/env bash
# Builds the launcher and the sample patterns (release), installs the
# patterns' executables next to their manifests, and starts the launcher on
# ./patterns and ./desired with the gRPC API on :8080. Extra arguments are
# passed to prism-launcher.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-patterns.sh
cargo build --release --bin prism-launcher
# The launcher's own defaults are ./patterns, ./desired and :8080, so the
# user's flags are the only ones it gets: each of them wins.
exec "${CARGO_TARGET_DIR:-target}/release/prism-launcher" "$@"
