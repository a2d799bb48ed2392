#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 30):
# builds them once, then runs each on a scratch corpus, with the committed
# corpus (fuzz/corpus/<target>) as a second, read-only directory, so a run
# adds no file to the clone. Fails on any crash, timeout (10 s per input)
# or out-of-memory (2 GiB); a failing input is kept in fuzz/artifacts/
# (`cargo +nightly fuzz run --sanitizer none TARGET fuzz/artifacts/TARGET/FILE`
# runs it again).
# Prints each target's final libFuzzer line (executions, coverage,
# features, exec/s).
#
#   scripts/fuzz.sh [SECONDS]     FUZZ_JOBS=N: targets run at once (default 4:
#                                 all together; each still runs SECONDS of wall
#                                 time, sharing the cores, and CI waits once)
#
# Installs the nightly toolchain and cargo-fuzz when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
jobs="${FUZZ_JOBS:-4}"
targets=(manifest desired launch_request authz_policy)
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "FUZZ_JOBS must be a number" >&2; exit 2; }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# The build: `--dev --sanitizer none`, with the opt-levels of
# fuzz/Cargo.toml's [profile.dev] (the crate and the YAML, protobuf and
# error-rendering code it runs at 2, libFuzzer's own C++ at 3, everything
# else at 0, line tables only). No AddressSanitizer: the crate's parsers
# are safe Rust (it denies unsafe code), where the bugs to find are panics,
# overflows, hangs and runaway allocation, which this build catches (panics,
# overflow checks and debug assertions are on: cargo-fuzz passes
# -Cdebug-assertions); ASan would only add checks of the dependencies'
# unsafe code, at about twice the build time. Cold builds of all four targets
# measured here on 2 cores shared with other work (wall; CPU user+sys) and
# the manifest target's speed in a 15-20 s run:
#   default (ASan, release, 1 codegen unit)   5-7 min (earlier, not again)
#   --sanitizer none (release, 1 unit)        391 s; 445 s CPU; 7800 exec/s
#   --sanitizer none --codegen-units 16       457 s; 491 s CPU
#   --sanitizer none --dev (all opt-level 0)  201 s; 250 s CPU;  170 exec/s
#   the same, hot crates at 2, libFuzzer at 0 180 s; 272 s CPU;  750 exec/s
#   this build (libFuzzer at 3 too)           231 s (less loaded); 7600 exec/s
# libFuzzer's runtime unoptimized made the --dev builds slow to run; with
# it optimized the cheap build runs as fast as the release one.
build=(--dev --sanitizer none)
profile=debug

start=$SECONDS
cargo +nightly fuzz build "${build[@]}"
echo "fuzz targets built in $((SECONDS - start)) s"
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin="fuzz/target/$host/$profile"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

run() {
  local t=$1
  mkdir -p "$scratch/$t/corpus" "$scratch/$t/artifacts"
  set +e
  "$bin/$t" "$scratch/$t/corpus" "fuzz/corpus/$t" \
    -dict="fuzz/dict/$t.dict" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$scratch/$t/artifacts/" -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1
  echo $? >"$scratch/$t.rc"
}

for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    wait -n || true
  done
  run "$t" &
done
wait

failed=0
for t in "${targets[@]}"; do
  log="$scratch/$t.log"
  rc="$(cat "$scratch/$t.rc")"
  done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE ' "$log" | tail -1 || true)"
  ran="$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)"
  ran_secs="$(sed -E 's/.* in ([0-9]+) second/\1/' <<<"$ran")"
  found="$(ls -A "$scratch/$t/artifacts")"
  if [ "$rc" != 0 ] || [ -z "$done_line" ] || [ -n "$found" ] ||
    [ -z "$ran_secs" ] || [ "$ran_secs" -lt "$secs" ]; then
    if [ -n "$found" ]; then
      mkdir -p "fuzz/artifacts/$t"
      cp "$scratch/$t/artifacts/"* "fuzz/artifacts/$t/"
    fi
    echo "FAIL $t: exit status $rc; failing inputs: ${found:-none} (kept in fuzz/artifacts/$t)" >&2
    tail -n 60 "$log" >&2
    failed=1
  else
    echo "$t: $done_line"
    echo "$t: ${ran}(s), 0 crashes, 0 timeouts, 0 out-of-memory"
  fi
done

# The committed corpora are read, never written.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 &&
  [ -n "$(git status --porcelain -- fuzz/corpus)" ]; then
  echo "FAIL: the run changed fuzz/corpus:" >&2
  git status --porcelain -- fuzz/corpus >&2
  failed=1
fi
exit "$failed"
