#!/usr/bin/env bash
# What CI runs (.ci/run calls this), and what a developer runs before pushing:
# formatting, lints, every test of the workspace on the real filesystem, the
# crash-recovery simulation (with its report), `ringstore stress` killed
# with SIGKILL at random moments and checked after each kill, the
# object-storage tests against LocalFileSystem and an s3s-fs server on
# loopback, and bounded fuzzing of every fuzz target. Some journal tests
# mount a small ext4 image on a loop device (a genuinely full disk), so run
# this as root. It installs what it needs (s3s-fs, cargo-fuzz, e2fsprogs).
#
#   FUZZ_SECONDS=60      seconds per fuzz target (0 skips fuzzing)
#   RINGSTORE_SIM_SEEDS  seeds per simulation profile (default in the test)
#   RINGSTORE_STRESS_KILLS  SIGKILLs of `ringstore stress` (default 12)
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds="${FUZZ_SECONDS:-60}"
# One build per run: incremental caches would double the target directory
# (3.9 GB of 12 GB in a CI run) for nothing.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
log=target/test-output.txt
mkdir -p target
: > "$log"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need mkfs.ext4 || ! need losetup; then
  echo "== installing e2fsprogs and mount (mkfs.ext4, losetup)"
  apt-get update -qq && apt-get install -y -qq e2fsprogs mount >/dev/null
fi
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi

echo "== disk free before the build: $(df -h --output=avail . | tail -1)"

echo "== s3s-fs (the S3-compatible server the object-storage tests start on loopback)"
scripts/s3-server.sh install

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings (with and without the openraft feature)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features ringstore/openraft,ringstore-bench/raft -- -D warnings
# The libraries as a product builds them: without the `sim` feature the
# tests turn on through their dev-dependencies.
cargo clippy -p ringstore-journal -p ringstore-cache -p ringstore --lib -- -D warnings
# The fuzz crate is outside the workspace (cargo-fuzz builds it apart).
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

echo "== cargo test (workspace; the journal's, the cache's and the engine's crash simulations print their reports)"
# Tests use temp dirs under target/ (the real disk: O_DIRECT needs it).
# The bench's tests, with its `raft` feature (the peers' pipelined links).
cargo test -p ringstore-bench --features raft 2>&1 | tee -a "$log"
# The cache's power-loss simulation prints its totals.
cargo test -p ringstore-cache -- --nocapture 2>&1 | tee -a "$log"
cargo test -p ringstore-journal -- --nocapture 2>&1 | tee -a "$log"
# With `openraft`: openraft's storage suite and the cluster's tests too.
cargo test -p ringstore --features openraft -- --nocapture 2>&1 | tee -a "$log"

echo "== fuzz corpus and regressions replayed (stable, no libFuzzer)"
cargo test --manifest-path fuzz/Cargo.toml 2>&1 | tee -a "$log"

if [[ "$fuzz_seconds" -gt 0 ]]; then
  echo "== fuzzing every target for ${fuzz_seconds}s"
  scripts/fuzz.sh all "$fuzz_seconds" 2>&1 | tee -a "$log"
fi

echo "== disk used by the build: target $(du -sh target | cut -f1), fuzz/target $(du -sh fuzz/target 2>/dev/null | cut -f1); free $(df -h --output=avail . | tail -1)"

echo "== summary"
grep -E '^test result:|^simulation total:|^engine simulation.*total:|^cache simulation total:|executions' "$log" || true
