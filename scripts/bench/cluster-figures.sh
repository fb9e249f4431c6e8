#!/usr/bin/env bash
# The cluster's figures on this machine, with release nodes on one PostgreSQL and Redis:
#   scripts/bench/cluster-figures.sh [PG_SERVER_URL] [REDIS_URL]
#   1. forwarding cost: `surge bench orders` against one node alone, then against three nodes
#      (requests spread over the three, items on every shard: 2/3 of the lines are owned by
#      another node than the one that took the request), each next to the tool's own
#      /health/live ceiling in the same run;
#   2. lease and heartbeat load on the database at rest (three nodes, 10 s, pg_stat_database);
#   3. failover: 10 times, kill -9 the owner of a hot item while buyers order it through the
#      other nodes; the time from the kill to the first 201 on a request sent after it.
# Needs python3. Leaves nothing behind (fresh databases are dropped, nodes stopped).
set -euo pipefail
cd "$(dirname "$0")/../.."
pg=${1:-postgres://postgres@127.0.0.1:5432/postgres}
redis=${2:-redis://127.0.0.1:6379/9}
cargo build --release --quiet
bin=$PWD/target/release/surge
run=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SURGE_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SURGE_CLUSTER_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SURGE_RATE_LIMITS=off SURGE_BOOTSTRAP_ADMIN_LOGIN_ID=bench_admin SURGE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password
export SURGE_REDIS_URL=$redis RUST_LOG=warn
server=${pg%/*}
pids=()
dbs=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for d in "${dbs[@]}"; do psql -q "$pg" -c "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
fresh_db() { local d="surge_cluster_fig_${run}_$1"; psql -q "$pg" -c "CREATE DATABASE $d" >/dev/null; dbs+=("$d"); echo "$server/$d"; }
# start NAME HTTP_PORT CLUSTER_PORT DB_URL [cluster]
start() {
  local name=$1 port=$2 cport=$3 db=$4
  if [[ ${5:-} == cluster ]]; then
    SURGE_NODE_ID=$name SURGE_HTTP_ADDR=127.0.0.1:$port SURGE_CLUSTER_ADDR=127.0.0.1:$cport \
      SURGE_DATABASE_URL=$db SURGE_REDIS_KEY_PREFIX=fig$run "$bin" & pids+=($!)
  else
    SURGE_NODE_ID=$name SURGE_HTTP_ADDR=127.0.0.1:$port SURGE_DATABASE_URL=$db \
      SURGE_REDIS_KEY_PREFIX=fig$run "$bin" & pids+=($!)
  fi
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return; sleep 0.1; done
  echo "node $name did not start" >&2; exit 1
}
orders() { "$bin" bench orders --items 30 --users 200 --attempts 60000 --concurrency 64 --seed 1 --url "$1"; }

echo "== 1a. one node alone (orders on 30 items)"
db=$(fresh_db single)
start solo 18500 0 "$db"
orders http://127.0.0.1:18500
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

echo "== 1b. three nodes, requests spread over them (2/3 of the lines owned elsewhere)"
db=$(fresh_db three)
start f1 18501 19501 "$db" cluster
start f2 18502 19502 "$db" cluster
start f3 18503 19503 "$db" cluster
sleep 3
orders http://127.0.0.1:18501,http://127.0.0.1:18502,http://127.0.0.1:18503

echo "== 2. lease and heartbeat load at rest (three nodes, 10 s)"
name=${db##*/}
count() { psql -Atq "$pg" -c "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '$name'"; }
sleep 2; before=$(count); sleep 10; after=$(count)
echo "transactions/s at rest: $(( (after - before) / 10 ))"

echo "== 3. failover over 10 kills"
python3 - "$bin" "$db" <<'PY'
import json, os, signal, statistics, subprocess, sys, threading, time, urllib.request
binary, db = sys.argv[1], sys.argv[2]
ports = {"f1": (18501, 19501), "f2": (18502, 19502), "f3": (18503, 19503)}
def call(method, port, path, body=None, token=None, timeout=10):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", None if body is None else json.dumps(body).encode(), method=method)
    req.add_header("Content-Type", "application/json")
    if token: req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, json.load(r)
    except urllib.error.HTTPError as e: return e.code, None
    except Exception: return None, None
admin = call("POST", 18501, "/api/v1/auth/login", {"loginId": "bench_admin", "password": "bench-admin-password"})[1]["accessToken"]
call("POST", 18501, "/api/v1/users", {"loginId": "failover_buyer", "password": "failover-password", "name": "F"})
buyer = call("POST", 18501, "/api/v1/auth/login", {"loginId": "failover_buyer", "password": "failover-password"})[1]["accessToken"]
pids = {}
for name, (port, _) in ports.items():
    out = subprocess.run(["pgrep", "-f", f"{binary}"], capture_output=True, text=True).stdout.split()
    for pid in out:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        if f"SURGE_NODE_ID={name}".encode() in env: pids[name] = int(pid)
def spread():
    for _ in range(200):
        ok = True
        for port, _ in ports.values():
            s, v = call("GET", port, "/api/v1/admin/cluster", token=admin)
            if s != 200 or sum(1 for m in v["members"] if m["state"] == "UP") != 3 or any(x["owner"] is None for x in v["shards"]): ok = False
        if ok: return
        time.sleep(0.1)
    raise SystemExit("the cluster did not settle")
times = []
for kill in range(10):
    spread()
    item = call("POST", 18501, "/api/v1/items", {"name": f"Hot {kill}", "price": 100, "stock": 1000000}, admin)[1]["itemId"]
    owner = call("GET", 18501, f"/api/v1/admin/cluster/items/{item}", token=admin)[1]["owner"]
    others = [p for n, (p, _) in ports.items() if n != owner]
    for p in others: call("POST", p, "/api/v1/orders", {"lines": [{"itemId": item, "quantity": 1}]}, buyer)
    os.kill(pids[owner], signal.SIGKILL)
    killed = time.monotonic()
    done = None
    i = 0
    while done is None and time.monotonic() - killed < 30:
        i += 1
        s, _ = call("POST", others[i % 2], "/api/v1/orders", {"lines": [{"itemId": item, "quantity": 1}]}, buyer)
        if s == 201: done = time.monotonic() - killed
    times.append(done)
    print(f"kill {kill + 1}: owner {owner}, first 201 elsewhere after {done * 1000:.0f} ms", flush=True)
    port, cport = ports[owner]
    env = dict(os.environ, SURGE_NODE_ID=owner, SURGE_HTTP_ADDR=f"127.0.0.1:{port}", SURGE_CLUSTER_ADDR=f"127.0.0.1:{cport}", SURGE_DATABASE_URL=db)
    pids[owner] = subprocess.Popen([binary], env=env).pid
    for _ in range(200):
        if call("GET", port, "/health/ready")[0] == 200: break
        time.sleep(0.1)
ms = sorted(t * 1000 for t in times)
print(f"failover over {len(ms)} kills: median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms (lease {os.environ.get('SURGE_LEASE_MS', '3000')} ms)")
for pid in pids.values():
    try: os.kill(pid, signal.SIGTERM)
    except ProcessLookupError: pass
PY
