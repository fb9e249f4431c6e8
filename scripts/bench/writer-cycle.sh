#!/usr/bin/env bash
# Order placement for DUR seconds (default 10) with the writer's own counters read after it from
# /api/v1/admin/actors: commits, writes (orders), average batch, statement and COMMIT times.
#   scripts/bench/writer-cycle.sh          (DB=postgres://… for PostgreSQL, LINES=3 for 3-line orders)
# Needs wrk, python3 and a release build (cargo build --release; SURGE_BIN=/path measures another).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/order-node.sh
source scripts/bench/order-node.sh
start_order_node 18491 "${DB:-}" "${LINES:-1}"
TOKENS=$work/tokens.txt ITEM_ID=$(cat "$work/item") wrk -t2 -c64 -d${DUR:-10}s -s scripts/bench/orders.lua "$base" | grep -E 'Requests/sec|p50'
curl -s -H "authorization: Bearer $(cat $work/admin)" $base/api/v1/admin/actors | python3 -c "import json,sys; d=json.load(sys.stdin); w=d['writer']; print('writer', w, 'avg batch', w['writes']/max(1,w['commits']))"
