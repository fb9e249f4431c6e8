#!/usr/bin/env bash
# A flame graph (SVG) of the order path: one release node on a fresh SQLite file, wrk placing
# one-unit orders with 64 connections, `perf record --call-graph dwarf` on the node for 5 s in
# the middle of the load, folded with inferno.
#   scripts/bench/flame-orders.sh OUT.svg [TITLE]
#     SURGE_BIN=/path/to/surge: profile that build (e.g. an older commit's, for "before").
# Needs wrk, perf (linux-perf), python3 and inferno (cargo install inferno).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: $0 OUT.svg [TITLE]}
title=${2:-"POST /api/v1/orders, SQLite"}
for tool in wrk perf inferno-collapse-perf inferno-flamegraph; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -n "${SURGE_BIN:-}" ] || cargo build --release --quiet
# shellcheck source=scripts/bench/order-node.sh
source scripts/bench/order-node.sh
start_order_node 18493 ""
TOKENS=$work/tokens.txt ITEM_ID=$(cat "$work/item") wrk -t2 -c64 -d15s -s scripts/bench/orders.lua "$base" \
  > "$work/wrk.txt" & load=$!
sleep 5
perf record -q -F 299 --call-graph dwarf,16384 -p "$node" -o "$work/perf.data" -- sleep 5 >/dev/null 2>&1
wait $load
grep -E 'Requests/sec|p50' "$work/wrk.txt"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "$title" > "$out"
echo "wrote $out"
