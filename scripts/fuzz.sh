#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a bounded time on the stable
# toolchain, installing cargo-fuzz if it is missing.
#
#   scripts/fuzz.sh TARGET SECONDS   one target (journal_files, journal_ops, journal_replica_ops, journal_damage_ops, cache_ops, snapshot_files)
#   scripts/fuzz.sh all SECONDS      every target, SECONDS each
#   scripts/fuzz.sh list             the targets
#
# Builds without a sanitizer (-s none: stable rustc has no ASan); for ASan
# use nightly or `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET` from the
# repository root. New inputs go to fuzz/target/corpus/TARGET (ignored by
# git; the committed seeds in fuzz/corpus/TARGET are read, never written),
# crashes to fuzz/artifacts/TARGET/, logs to fuzz/target/logs/TARGET.log and
# one line per panic to fuzz/target/logs/TARGET.panics.
# Prints the executions libFuzzer reported per target; exits non-zero if any
# target found a crash (or failed to build). Extra libFuzzer flags can be
# given in FUZZ_ARGS, e.g. FUZZ_ARGS="-fork=1 -ignore_crashes=1" to go on past
# crashes (see fuzz/README.md).
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
TARGETS=(journal_files journal_ops journal_replica_ops journal_damage_ops cache_ops snapshot_files)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
# cargo-fuzz builds into fuzz/target; a CARGO_TARGET_DIR from the caller's
# environment would send the instrumented build elsewhere.
unset CARGO_TARGET_DIR

usage() {
    sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
if [[ "$1" == list ]]; then
    printf '%s\n' "${TARGETS[@]}"
    exit 0
fi
[[ $# -eq 2 ]] || usage
target="$1"
seconds="$2"
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || {
    echo "fuzz.sh: SECONDS must be a positive integer, got '$seconds'" >&2
    exit 2
}
if [[ "$target" == all ]]; then
    selected=("${TARGETS[@]}")
else
    known=0
    for t in "${TARGETS[@]}"; do [[ "$t" == "$target" ]] && known=1; done
    [[ $known -eq 1 ]] || {
        echo "fuzz.sh: unknown target '$target' (known: ${TARGETS[*]} all)" >&2
        exit 2
    }
    selected=("$target")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
# libFuzzer is C++, built by libfuzzer-sys.
if ! command -v c++ >/dev/null 2>&1; then
    echo "== installing a C++ compiler" >&2
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
fi

# Largest input per target: journal_files carries up to 4 segment files of
# 256 KiB; the op lists are bounded far below libFuzzer's default of 4096.
max_len() {
    case "$1" in
        journal_files) echo 1048600 ;;
        *) echo 4096 ;;
    esac
}

mkdir -p fuzz/target/logs
# -a: debug assertions and overflow checks on, so arithmetic overflow on
# hostile input is a finding, as it is under `cargo test`.
echo "== building ${selected[*]}" >&2
for t in "${selected[@]}"; do
    cargo fuzz build -s none -a "$t"
done

# Each run of the simulation targets starts a glommio executor, and glommio
# 0.9 leaves two or three descriptors open per executor that ends
# (journal/src/glommio_quirks.rs, quirk 5): allow as many as the hard
# limit does, so a long run is not cut short at the soft limit (often 1024).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

failed=()
summary=()
for t in "${selected[@]}"; do
    log="fuzz/target/logs/$t.log"
    panics="$repo_root/fuzz/target/logs/$t.panics"
    : >"$panics"
    mkdir -p "fuzz/target/corpus/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
    echo "== fuzzing $t for ${seconds}s (log: $log)" >&2
    status=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    RINGSTORE_FUZZ_PANIC_LOG="$panics" \
        cargo fuzz run -s none -a "$t" "fuzz/target/corpus/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=60 \
        -max_len="$(max_len "$t")" ${FUZZ_ARGS:-} >"$log" 2>&1 || status=$?
    # The final stats line; in fork mode (-fork=N) the last progress line.
    execs="$(awk '/^stat::number_of_executed_units:/ {s += $2; found = 1}
                  /^#[0-9]+/ {last = substr($1, 2)}
                  END {print (found ? s : last + 0)}' "$log")"
    if [[ $status -ne 0 ]]; then
        failed+=("$t")
        summary+=("$(printf '%-14s %10s executions  CRASH (exit %d)' "$t" "$execs" "$status")")
        grep -E 'Test unit written to|SUMMARY|deadly signal|timeout' "$log" | head -n 10 >&2 || true
        echo "-- panics by location (count, location, first message) from $panics:" >&2
        awk -F'\t' '{n[$1]++; if (!($1 in m)) m[$1] = $2}
                     END {for (l in n) printf "%7d  %s  %s\n", n[l], l, substr(m[l], 1, 200)}' \
            "$panics" | sort -rn | head -n 20 >&2 || true
    else
        summary+=("$(printf '%-14s %10s executions  ok' "$t" "$execs")")
    fi
done

echo "== summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashes in: ${failed[*]} (inputs under fuzz/artifacts/, logs under fuzz/target/logs/)" >&2
    echo "replay one: cargo fuzz run -s none -a TARGET fuzz/artifacts/TARGET/crash-..." >&2
    exit 1
fi
