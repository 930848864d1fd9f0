#!/usr/bin/env bash
# What CI runs (.ci/run calls this), and what a developer runs before pushing:
# formatting, lints, and every test of the workspace on the real filesystem.
# Some journal tests mount a small ext4 image on a loop device (a genuinely
# full disk), so run this as root; it installs what it needs on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need mkfs.ext4 || ! need losetup; then
  echo "== installing e2fsprogs and mount (mkfs.ext4, losetup)"
  apt-get update -qq && apt-get install -y -qq e2fsprogs mount >/dev/null
fi
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
# Tests run on a temp dir under target/ (the real disk: O_DIRECT needs it).
cargo test --workspace 2>&1 | tee target/test-output.txt
echo "== summary"
grep -E '^test result:' target/test-output.txt
