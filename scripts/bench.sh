#!/usr/bin/env bash
# Builds ringstore-bench in release mode and runs it.
#
#   scripts/bench.sh journal [--quick] [--dir DIR]   journal vs the device limit (issue 2)
#   scripts/bench.sh device  [--quick] [--dir DIR]   the device limit alone
#
# Any further arguments go to the binary (`scripts/bench.sh journal --help`).
# DIR defaults to target/bench-data in the repository: on the real disk, and
# ignored by git. The table and the JSON line go to stdout, progress and build
# output to stderr. Installs nothing: only `cargo build`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-"$repo_root/target"}"

if [[ $# -eq 0 ]]; then
    sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
fi

# Default --dir unless the caller gave one (as `--dir X` or `--dir=X`).
dir_args=(--dir "$repo_root/target/bench-data")
for arg in "$@"; do
    case "$arg" in
        --dir | --dir=*) dir_args=() ;;
        -h | --help | help) dir_args=() ;;
    esac
done
# A bare subcommand with --help must not get an extra flag either.
if [[ "$1" != journal && "$1" != device ]]; then
    dir_args=()
fi

cargo build --release --quiet -p ringstore-bench \
    --manifest-path "$repo_root/Cargo.toml" --target-dir "$target_dir" >&2

exec "$target_dir/release/ringstore-bench" "$1" "${dir_args[@]}" "${@:2}"
