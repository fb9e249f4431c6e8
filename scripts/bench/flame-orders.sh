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
bin=${SURGE_BIN:-target/release/surge}
[ -n "${SURGE_BIN:-}" ] || cargo build --release --quiet
work=$(mktemp -d)
port=18493
export SURGE_HTTP_ADDR=127.0.0.1:$port SURGE_DATABASE_URL=sqlite://$work/surge.db RUST_LOG=warn \
  SURGE_RATE_LIMITS=off SURGE_BOOTSTRAP_ADMIN_LOGIN_ID=bench_admin SURGE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password
"$bin" & node=$!
trap 'kill $node 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.2; done
base=http://127.0.0.1:$port
python3 - "$base" "$work" <<'PY'
import json, sys, urllib.request
base, work = sys.argv[1], sys.argv[2]
def post(path, body, token=None):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    if token: req.add_header("Authorization", "Bearer " + token)
    return json.load(urllib.request.urlopen(req))
admin = post("/api/v1/auth/login", {"loginId": "bench_admin", "password": "bench-admin-password"})["accessToken"]
item = post("/api/v1/items", {"name": "Flame item", "price": 100, "stock": 1000000000}, admin)["itemId"]
with open(work + "/tokens.txt", "w") as f:
    for i in range(64):
        post("/api/v1/users", {"loginId": f"flame_{i}", "password": "bench-password", "name": "F"})
        f.write(post("/api/v1/auth/login", {"loginId": f"flame_{i}", "password": "bench-password"})["accessToken"] + "\n")
open(work + "/item", "w").write(str(item))
PY
TOKENS=$work/tokens.txt ITEM_ID=$(cat "$work/item") wrk -t2 -c64 -d15s -s scripts/bench/orders.lua "$base" \
  > "$work/wrk.txt" & load=$!
sleep 5
perf record -q -F 299 --call-graph dwarf,16384 -p "$node" -o "$work/perf.data" -- sleep 5 >/dev/null 2>&1
wait $load
grep -E 'Requests/sec|p50' "$work/wrk.txt"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "$title" > "$out"
echo "wrote $out"
