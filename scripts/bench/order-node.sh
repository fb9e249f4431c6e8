# Sourced by the wrk order scripts: starts one release node and prepares order placement.
#   start_order_node PORT DATABASE_URL [LINES]
# Starts "${SURGE_BIN:-target/release/surge}" on PORT against DATABASE_URL (empty: a fresh
# SQLite file), waits until it is ready, creates LINES items (default 1) with ample stock and 64
# members, and sets:
#   work   a temporary directory (removed on exit) holding tokens.txt (one bearer token per
#          member), item (the item ids, comma-separated) and admin (an admin's token);
#   node   the node's pid (stopped on exit);
#   base   http://127.0.0.1:PORT
start_order_node() {
  local port=$1 url=$2 lines=${3:-1}
  work=$(mktemp -d)
  export SURGE_HTTP_ADDR=127.0.0.1:$port SURGE_DATABASE_URL=${url:-sqlite://$work/surge.db} RUST_LOG=warn \
    SURGE_RATE_LIMITS=off SURGE_BOOTSTRAP_ADMIN_LOGIN_ID=bench_admin SURGE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password
  # Only an embedded node may generate its own signing secret.
  [[ $SURGE_DATABASE_URL == sqlite* ]] ||
    export SURGE_JWT_SECRET=${SURGE_JWT_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
  "${SURGE_BIN:-target/release/surge}" & node=$!
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
}
