#!/usr/bin/env bash
# Builds ringstore-bench in release mode and runs it.
#
#   scripts/bench.sh [--quick] [--dir DIR]           ringstore side by side with its peers and the
#                                                    device limit (issue 8); --quick: about 2 minutes
#   scripts/bench.sh peers [--quick] [--dir DIR]     the same, spelled out
#   scripts/bench.sh journal [--quick] [--dir DIR]   the journal alone against the device limit (issue 2)
#   scripts/bench.sh engine [--quick] [--dir DIR]    a shard of broker metadata: submits, snapshots,
#                                                    a checkpoint's effect on latency, recovery (issue 4)
#   scripts/bench.sh shards [--quick] [--dir DIR]    the multi-shard runtime: 1 vs 2 shards, the client
#                                                    handle, restart time (issue 5)
#   scripts/bench.sh remote [--quick] [--dir DIR]    snapshot upload and cold restore of a 1 GiB state,
#                                                    s3s-fs on loopback and LocalFileSystem (issue 7)
#   scripts/bench.sh raft [--quick] [--dir DIR]      a 3-node openraft cluster on ringstore, on openraft's
#                                                    in-memory and RocksDB reference stores, and the
#                                                    single-node engine (issue 14); --replication
#                                                    pipelined|sequential, --preallocation fallocate|zero-fill
#   scripts/bench.sh recycle [--quick] [--dir DIR]   retired segments recycled against new files:
#                                                    sustained appends, watermark keeping pace (issue 16)
#   scripts/bench.sh one-appender [--quick] [--dir DIR]
#                                                    one appender's durable write on every path (inline
#                                                    or io_uring, O_DSYNC or fdatasync), one run (issue 16)
#   scripts/bench.sh device [--quick] [--dir DIR]    the device limit alone
#   scripts/bench.sh micro [CRITERION ARGS]          criterion micro-benchmarks of the hot paths
#
# Any further arguments go to the binary (`scripts/bench.sh peers --help`).
# DIR defaults to target/bench-data in the repository: on the real disk, and
# ignored by git. The table and the JSON line go to stdout; progress and
# build output go to stderr. `peers` also writes target/bench-results/
# peers.json and throughput.svg (`--out` to change).
#
# The RocksDB peer links Debian's librocksdb (bindings need libclang): when
# they are missing and this runs as root, apt-get installs librocksdb-dev and
# libclang-dev; otherwise the run goes on without the RocksDB peer and says so.
# Set RINGSTORE_BENCH_ROCKSDB=0 to leave it out on purpose.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-"$repo_root/target"}"

# No subcommand (or only flags): the side-by-side run.
if [[ $# -eq 0 || "$1" == -* && "$1" != -h && "$1" != --help ]]; then
    set -- peers "$@"
fi
if [[ "$1" == -h || "$1" == --help || "$1" == help ]]; then
    sed -n '2,33s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 0
fi
command="$1"
shift

if [[ "$command" == micro ]]; then
    exec cargo bench --quiet -p ringstore-bench --bench hot_paths \
        --manifest-path "$repo_root/Cargo.toml" --target-dir "$target_dir" -- "$@"
fi
case "$command" in
    peers | journal | engine | shards | remote | recycle | one-appender | device | raft) ;;
    *)
        echo "unknown command: $command (peers, journal, engine, shards, remote, recycle, one-appender, device, raft, micro)" >&2
        exit 2
        ;;
esac

# Default --dir unless the caller gave one (as `--dir X` or `--dir=X`).
dir_args=(--dir "$repo_root/target/bench-data")
out_args=()
if [[ "$command" == peers ]]; then
    out_args=(--out "$repo_root/target/bench-results")
fi
for arg in "$@"; do
    case "$arg" in
        --dir | --dir=*) dir_args=() ;;
        --out | --out=*) out_args=() ;;
        -h | --help) dir_args=() out_args=() ;;
    esac
done

# Where Debian installs librocksdb.so, if it does.
rocksdb_lib_dir() {
    local lib
    lib="$(dpkg -L librocksdb-dev 2>/dev/null | grep -m1 '/librocksdb\.so$' || true)"
    [[ -n "$lib" ]] && dirname "$lib"
}

features=()
if [[ ( "$command" == peers || "$command" == raft ) && "${RINGSTORE_BENCH_ROCKSDB:-1}" != 0 ]]; then
    if [[ -z "$(rocksdb_lib_dir)" ]] || ! dpkg -s libclang-dev >/dev/null 2>&1; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            echo "bench.sh: installing librocksdb-dev and libclang-dev for the RocksDB peer" >&2
            apt-get update -qq >&2 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq librocksdb-dev libclang-dev >&2 || true
        fi
    fi
    lib_dir="$(rocksdb_lib_dir || true)"
    if [[ -n "$lib_dir" ]] && dpkg -s libclang-dev >/dev/null 2>&1; then
        export ROCKSDB_LIB_DIR="$lib_dir"
        features=(--features rocksdb)
        if [[ "$command" == raft ]]; then features=(--features rocksdb,raft); fi
    else
        echo "bench.sh: librocksdb-dev or libclang-dev missing; running without the RocksDB peer" >&2
        if [[ "$command" == raft ]]; then features=(--features raft); fi
    fi
elif [[ "$command" == raft ]]; then
    features=(--features raft)
fi

cargo build --release --quiet -p ringstore-bench "${features[@]}" \
    --manifest-path "$repo_root/Cargo.toml" --target-dir "$target_dir" >&2

exec "$target_dir/release/ringstore-bench" "$command" "${dir_args[@]}" "${out_args[@]}" "$@"
