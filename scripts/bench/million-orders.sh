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
work=$(mktemp -d)
port=18483
export SURGE_HTTP_ADDR=127.0.0.1:$port SURGE_DATABASE_URL=$db_url RUST_LOG=warn \
  SURGE_RATE_LIMITS=off SURGE_BOOTSTRAP_ADMIN_LOGIN_ID=bench_admin SURGE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password \
  SURGE_JWT_SECRET=${SURGE_JWT_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
target/release/surge & node=$!
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
item = post("/api/v1/items", {"name": "Million", "price": 100, "stock": 1000000000}, admin)["itemId"]
with open(work + "/tokens.txt", "w") as f:
    for i in range(64):
        post("/api/v1/users", {"loginId": f"bench_{i}", "password": "bench-password", "name": "B"})
        f.write(post("/api/v1/auth/login", {"loginId": f"bench_{i}", "password": "bench-password"})["accessToken"] + "\n")
with open(work + "/item", "w") as f: f.write(str(item))
PY
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
