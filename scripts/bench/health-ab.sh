#!/usr/bin/env bash
# The `/health/live` ceiling of two builds, in turn (A B A B …), each on a fresh SQLite node:
#   scripts/bench/health-ab.sh BIN_A BIN_B [PAIRS]      (default 3 pairs; wrk -t2 -c64 -d8s)
# Prints one line per pair with both rates and the ratio B/A.
set -euo pipefail
a=$1 b=$2 pairs=${3:-3}
command -v wrk >/dev/null || apt-get install -y wrk
rate() { # binary
  local work port node
  work=$(mktemp -d)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  SURGE_HTTP_ADDR=127.0.0.1:$port SURGE_DATABASE_URL="sqlite://$work/surge.db" RUST_LOG=warn \
    SURGE_RATE_LIMITS=off SURGE_MAX_CONNECTIONS_PER_IP=0 "$1" serve >/dev/null 2>&1 &
  node=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.1; done
  wrk -t2 -c64 -d8s "http://127.0.0.1:$port/health/live" | awk '/Requests\/sec/ {print $2}'
  kill "$node"; wait "$node" 2>/dev/null || true; rm -rf "$work"
}
for _ in $(seq "$pairs"); do
  ra=$(rate "$a"); rb=$(rate "$b")
  python3 -c "import sys; a, b = map(float, sys.argv[1:]); print(f'A {a:,.0f}  B {b:,.0f}  B/A {b / a:.2f}')" "$ra" "$rb"
done
