#!/usr/bin/env bash
# s3s-fs: an S3-compatible server that stores objects in a local directory.
# The cache's remote tests (cache/tests/remote_*.rs) start one per test on a
# loopback port; this script installs it and can start one by hand.
#
#   scripts/s3-server.sh install            install s3s-fs 0.14.1 unless it is there (idempotent)
#   scripts/s3-server.sh path               print the binary's path (exit 1 if missing)
#   scripts/s3-server.sh start DIR PORT     serve DIR on 127.0.0.1:PORT in the background,
#                                           wait until it accepts connections, print its pid
#   scripts/s3-server.sh stop PID           stop a server started by `start`
#
# Buckets are subdirectories of DIR; `start` creates DIR/$S3_BUCKET.
#   S3_ACCESS_KEY (default ringstore), S3_SECRET_KEY (default ringstore-secret),
#   S3_BUCKET (default ringstore-test): what `start` uses.
#
# 0.14.1 is pinned: later versions need a newer toolchain than this
# workspace's. `cargo install` builds it from crates.io (about 1.5 minutes on
# two cores) into ~/.cargo/bin, where the tests look for it.
set -euo pipefail

version=0.14.1
access_key="${S3_ACCESS_KEY:-ringstore}"
secret_key="${S3_SECRET_KEY:-ringstore-secret}"
bucket="${S3_BUCKET:-ringstore-test}"
ready_wait_s=20

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

binary() {
  local found
  if [[ -n "${RINGSTORE_S3S_FS:-}" && -x "${RINGSTORE_S3S_FS}" ]]; then
    echo "$RINGSTORE_S3S_FS"
    return 0
  fi
  if found="$(command -v s3s-fs 2>/dev/null)"; then
    echo "$found"
    return 0
  fi
  found="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
  if [[ -x "$found" ]]; then
    echo "$found"
    return 0
  fi
  return 1
}

install() {
  local bin
  if bin="$(binary)" && "$bin" --version 2>/dev/null | grep -q " ${version}\$"; then
    echo "s3s-fs ${version} already installed: $bin"
    return 0
  fi
  echo "== installing s3s-fs ${version} (cargo install)"
  cargo install s3s-fs --version "$version" --features binary --locked
  bin="$(binary)"
  echo "installed: $bin ($("$bin" --version))"
}

start() {
  local dir="$1" port="$2" bin log pid i
  bin="$(binary)" || { echo "s3s-fs not found: run $0 install" >&2; exit 1; }
  mkdir -p "$dir/$bucket"
  log="$dir.log"
  nohup "$bin" --host 127.0.0.1 --port "$port" \
    --access-key "$access_key" --secret-key "$secret_key" "$dir" >"$log" 2>&1 &
  pid=$!
  for ((i = 0; i < ready_wait_s * 10; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "s3s-fs exited; see $log" >&2
      exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$pid"
      return 0
    fi
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  echo "s3s-fs did not accept connections on port $port within ${ready_wait_s}s; see $log" >&2
  exit 1
}

stop() {
  local pid="$1"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

case "${1:-}" in
  install) install ;;
  path) binary ;;
  start) [[ $# -eq 3 ]] || usage; start "$2" "$3" ;;
  stop) [[ $# -eq 2 ]] || usage; stop "$2" ;;
  *) usage ;;
esac
