#!/usr/bin/env bash
# Does the cost of an order stay constant as the tables grow? One release node places orders
# (one unit of one item with ample stock, 64 connections) in 15-second wrk windows until
# 1,000,000 orders exist, printing each window's rate; the first and the last window hold
# about 100k orders each.
#   scripts/bench/million-orders.sh DATABASE_URL     (PostgreSQL: a fresh, empty database)
# Needs wrk and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y wrk
cargo build --release --quiet
db_url=${1:?usage: $0 DATABASE_URL}
target=${TARGET_ORDERS:-1000000}
# shellcheck source=scripts/bench/order-node.sh
source scripts/bench/order-node.sh
start_order_node 18483 "$db_url"
total=0
window=0
while [ "$total" -lt "$target" ]; do
  window=$((window + 1))
  out=$(TOKENS=$work/tokens.txt ITEM_ID=$(cat "$work/item") wrk -t2 -c64 -d15s -s scripts/bench/orders.lua "$base")
  n=$(grep -Eo '^ +[0-9]+ requests in' <<<"$out" | grep -Eo '[0-9]+')
  non2xx=$(grep -Eo 'Non-2xx or 3xx responses: [0-9]+' <<<"$out" | grep -Eo '[0-9]+$' || echo 0)
  total=$((total + n - non2xx))
  rate=$(grep -Eo 'Requests/sec: +[0-9.]+' <<<"$out" | grep -Eo '[0-9.]+$')
  p99=$(grep -Eo 'p99 [0-9.]+ ms' <<<"$out")
  printf 'window %2d: %7s orders/s, %s, non-2xx %s, orders so far %d\n' "$window" "$rate" "$p99" "$non2xx" "$total"
done
