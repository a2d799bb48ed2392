#!/usr/bin/env bash
# Builds the launcher and the sample patterns (release), installs the
# patterns' executables next to their manifests, and starts the launcher on
# ./patterns and ./desired with the gRPC API on :8080. Extra arguments are
# passed to prism-launcher.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-patterns.sh
cargo build --release --bin prism-launcher
exec "${CARGO_TARGET_DIR:-target}/release/prism-launcher" \
  --patterns-dir ./patterns --desired-dir ./desired --grpc-port 8080 "$@"
