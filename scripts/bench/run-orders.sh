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
bin=${SURGE_BIN:-target/release/surge}
[ -n "${SURGE_BIN:-}" ] || cargo build --release --quiet
work=$(mktemp -d)
db_url=${1:-"sqlite://$work/surge.db"}
lines=${2:-1}
port=18480
export SURGE_HTTP_ADDR=127.0.0.1:$port SURGE_DATABASE_URL=$db_url RUST_LOG=warn \
  SURGE_RATE_LIMITS=off SURGE_BOOTSTRAP_ADMIN_LOGIN_ID=bench_admin SURGE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password
[[ $db_url == sqlite* ]] || export SURGE_JWT_SECRET=${SURGE_JWT_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
"$bin" & node=$!
trap 'kill $node 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.2; done
base=http://127.0.0.1:$port
python3 - "$base" "$work" "$lines" <<'PY'
import json, sys, urllib.request
base, work, lines = sys.argv[1], sys.argv[2], int(sys.argv[3])
def post(path, body, token=None):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    if token: req.add_header("Authorization", "Bearer " + token)
    return json.load(urllib.request.urlopen(req))
admin = post("/api/v1/auth/login", {"loginId": "bench_admin", "password": "bench-admin-password"})["accessToken"]
items = [post("/api/v1/items", {"name": f"Bench item {n}", "price": 100, "stock": 1000000000}, admin)["itemId"]
         for n in range(lines)]
with open(work + "/tokens.txt", "w") as f:
    for i in range(64):
        post("/api/v1/users", {"loginId": f"bench_{i}", "password": "bench-password", "name": "B"})
        f.write(post("/api/v1/auth/login", {"loginId": f"bench_{i}", "password": "bench-password"})["accessToken"] + "\n")
with open(work + "/item", "w") as f: f.write(",".join(map(str, items)))
with open(work + "/admin", "w") as f: f.write(admin)
PY
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
