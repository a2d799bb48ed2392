#!/usr/bin/env bash
# Builds the sample patterns (hello-pattern, config-lookup) in release mode and installs their
# binaries next to their manifests under patterns/. Run from anywhere; honours CARGO_TARGET_DIR.
# It only writes patterns/<name>/<name>: it must not touch manifests or anything else.
set -euo pipefail

cd "$(dirname "$0")/.."

cargo build --release --bin hello-pattern --bin config-lookup

target_dir="${CARGO_TARGET_DIR:-target}"
for bin in hello-pattern config-lookup; do
    install -m 0755 "$target_dir/release/$bin" "patterns/$bin/$bin"
done
echo "installed hello-pattern and config-lookup into patterns/"
