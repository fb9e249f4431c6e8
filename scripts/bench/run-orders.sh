#!/usr/bin/env bash
# Measures order placement next to the HTTP ceiling (GET /health/live) on one release node.
#   scripts/bench/run-orders.sh [DATABASE_URL] [LINES]
#     DATABASE_URL: default a fresh embedded SQLite file; LINES: lines per order, each on its own
#     item (default 1).
#     SURGE_BIN=/path/to/surge: measure that build instead of building this checkout (A/B runs).
# Needs wrk (apt-get install -y wrk) and python3. Prints both wrk reports.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y wrk
[ -n "${SURGE_BIN:-}" ] || cargo build --release --quiet
lines=${2:-1}
# shellcheck source=scripts/bench/order-node.sh
source scripts/bench/order-node.sh
start_order_node 18480 "${1:-}" "$lines"
echo "== GET /health/live (ceiling)"
wrk -t2 -c64 -d15s --latency "$base/health/live" | grep -E 'Requests/sec|^ +(50|90|99)%'
echo "== POST /api/v1/orders (ample stock, $lines line(s) per order)"
TOKENS=$work/tokens.txt ITEM_ID=$(cat "$work/item") wrk -t2 -c64 -d20s -s scripts/bench/orders.lua "$base" \
  | grep -E 'Requests/sec|Non-2xx|p50|requests in'
grep VmHWM /proc/$node/status
# The outbox relay's backlog when the load stops, and once it has had two seconds to catch up.
relay() { curl -s -H "Authorization: Bearer $(cat "$work/admin")" "$base/api/v1/admin/outbox"; echo; }
echo "== relay at the end of the load: $(relay)"
sleep 2
echo "== relay 2 s later: $(relay)"
