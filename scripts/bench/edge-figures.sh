#!/usr/bin/env bash
# Figures of the public edge (issue 13) on one release node (SQLite): login guesses and
# sign-ups per second from one address with the default limits and with SURGE_RATE_LIMITS=off
# (the "before"), idle sockets held while probes are answered, metric series after 1,000
# made-up methods and paths, and the node's memory under 5,000 order-stream attempts.
#   scripts/bench/edge-figures.sh            (uses target/release/surge, builds it if missing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[ -x target/release/surge ] || cargo build --release --locked --bin surge

run() { # extra env..., then python args
  local work port admin_port node
  work=$(mktemp -d)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  admin_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  env SURGE_HTTP_ADDR=127.0.0.1:$port SURGE_ADMIN_ADDR=127.0.0.1:$admin_port \
    SURGE_DATABASE_URL="sqlite://$work/surge.db" RUST_LOG=warn \
    SURGE_BOOTSTRAP_ADMIN_LOGIN_ID=edge_admin SURGE_BOOTSTRAP_ADMIN_PASSWORD=edge-admin-password-1 \
    "$@" target/release/surge serve >"$work/node.log" 2>&1 &
  node=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.1; done
  python3 scripts/bench/edge_figures.py "http://127.0.0.1:$port" "http://127.0.0.1:$admin_port" \
    "$work/surge.db" "$node" edge_admin edge-admin-password-1 ${EDGE_ARGS:-}
  kill "$node"; wait "$node" 2>/dev/null || true
  rm -rf "$work"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(git rev-parse --short HEAD)"
EDGE_ARGS= run SURGE_RATE_LIMITS=on
EDGE_ARGS=--limits-off run SURGE_RATE_LIMITS=off
