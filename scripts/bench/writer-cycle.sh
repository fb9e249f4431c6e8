#!/usr/bin/env bash
# Order placement for DUR seconds (default 10) with the writer's own counters read after it from
# /api/v1/admin/actors: commits, writes (orders), average batch, statement and COMMIT times.
#   scripts/bench/writer-cycle.sh          (DB=postgres://… for PostgreSQL, LINES=3 for 3-line orders)
# Needs wrk, python3 and a release build (cargo build --release; SURGE_BIN=/path measures another).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
port=18491
export SURGE_HTTP_ADDR=127.0.0.1:$port SURGE_DATABASE_URL=${DB:-sqlite://$work/surge.db} RUST_LOG=warn \
  SURGE_RATE_LIMITS=off SURGE_BOOTSTRAP_ADMIN_LOGIN_ID=bench_admin SURGE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password
[[ $SURGE_DATABASE_URL == sqlite* ]] || export SURGE_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
"${SURGE_BIN:-target/release/surge}" & node=$!
trap 'kill $node 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.2; done
base=http://127.0.0.1:$port
python3 - "$base" "$work" ${LINES:-1} <<'PY'
import json, sys, urllib.request
base, work, lines = sys.argv[1], sys.argv[2], int(sys.argv[3])
def post(path, body, token=None):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    if token: req.add_header("Authorization", "Bearer " + token)
    return json.load(urllib.request.urlopen(req))
admin = post("/api/v1/auth/login", {"loginId": "bench_admin", "password": "bench-admin-password"})["accessToken"]
items = [post("/api/v1/items", {"name": f"Bench item {n}", "price": 100, "stock": 1000000000}, admin)["itemId"] for n in range(lines)]
with open(work + "/tokens.txt", "w") as f:
    for i in range(64):
        post("/api/v1/users", {"loginId": f"bench_{i}", "password": "bench-password", "name": "B"})
        f.write(post("/api/v1/auth/login", {"loginId": f"bench_{i}", "password": "bench-password"})["accessToken"] + "\n")
with open(work + "/item", "w") as f: f.write(",".join(map(str, items)))
with open(work + "/admin", "w") as f: f.write(admin)
PY
TOKENS=$work/tokens.txt ITEM_ID=$(cat "$work/item") wrk -t2 -c64 -d${DUR:-10}s -s scripts/bench/orders.lua "$base" | grep -E 'Requests/sec|p50'
curl -s -H "authorization: Bearer $(cat $work/admin)" $base/api/v1/admin/actors | python3 -c "import json,sys; d=json.load(sys.stdin); w=d['writer']; print('writer', w, 'avg batch', w['writes']/max(1,w['commits']))"
