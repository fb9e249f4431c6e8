#!/usr/bin/env bash
# The figures of BENCHMARKS.md that come from `surge bench`, each against a fresh release node
# started here as its own process (so the node's peak RSS can be read), one after another.
#   scripts/bench/issue-figures.sh OUT_DIR [RUN...]
# RUN: coupon-embedded coupon-redis flash-embedded flash-postgres seed-orders seed-coupons
#      (default: all). Needs PostgreSQL and Redis (scripts/ensure-services.sh postgres redis).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: $0 OUT_DIR [RUN...]}
shift
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(coupon-embedded coupon-redis flash-embedded flash-postgres seed-orders seed-coupons)
mkdir -p "$out"
cargo build --release --quiet
eval "$(bash scripts/ensure-services.sh postgres redis)"
bin=target/release/surge
port=18580
admin=(--admin-login-id bench_admin --admin-password bench-admin-password)

# start_node NAME [VAR=VALUE...]: a fresh node on $port with its own data directory.
start_node() {
  local name=$1
  shift
  work=$(mktemp -d)
  env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn SURGE_HTTP_ADDR=127.0.0.1:$port \
    SURGE_RATE_LIMITS=off SURGE_BOOTSTRAP_ADMIN_LOGIN_ID=bench_admin SURGE_BOOTSTRAP_ADMIN_PASSWORD=bench-admin-password \
    SURGE_DATABASE_URL="sqlite://$work/surge.db" "$@" "$bin" serve 2>"$out/$name.node.log" &
  node=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return; sleep 0.2; done
  echo "node $name did not start" >&2
  exit 1
}

stop_node() {
  grep VmHWM "/proc/$node/status" | tee "$out/$1.rss"
  kill "$node"
  wait "$node" || true
  rm -rf "$work"
}

# A fresh PostgreSQL database for one run.
pg_db() {
  local name=surge_bench_$RANDOM$RANDOM
  psql -q "$SURGE_TEST_PG_URL" -c "CREATE DATABASE $name" >/dev/null
  echo "${SURGE_TEST_PG_URL%/*}/$name?sslmode=disable"
}

secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
run() { # run NAME BENCH-ARGS...
  local name=$1
  shift
  echo "== $name: surge bench $* --url http://127.0.0.1:$port" | tee "$out/$name.cmd"
  "$bin" bench "$@" --url "http://127.0.0.1:$port" "${admin[@]}" --json >"$out/$name.json" || true
  python3 - "$out/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
print(f'  {r["requests"]} requests, {r["throughput_rps"]:.0f}/s, p50 {l["p50"]:.2f} p99 {l["p99"]:.2f} max {l["max"]:.2f} ms, '
      f'by_code {r.get("by_code")}, invariants_ok {r["invariants_ok"]}, setup {r.get("setup_s", 0):.1f}s, '
      f'duration {r["duration_s"]:.2f}s, ceiling {(r.get("ceiling") or {}).get("throughput_rps")}')
PY
}

for r in "${runs[@]}"; do
  case $r in
  coupon-embedded)
    start_node "$r"
    run "$r" coupon-rush --quantity 100 --users 1000 --attempts 50000 --concurrency 64 --seed 1
    stop_node "$r" ;;
  coupon-redis)
    start_node "$r" SURGE_DATABASE_URL="$(pg_db)" SURGE_JWT_SECRET="$secret" \
      SURGE_REDIS_URL="$SURGE_TEST_REDIS_URL" SURGE_REDIS_KEY_PREFIX="bench-$RANDOM"
    run "$r" coupon-rush --quantity 100 --users 1000 --attempts 50000 --concurrency 64 --seed 1
    stop_node "$r" ;;
  flash-embedded)
    start_node "$r"
    run "$r" flash-sale --units 1000 --users 10000 --attempts 100000 --concurrency 64 --seed 1
    stop_node "$r" ;;
  flash-postgres)
    start_node "$r" SURGE_DATABASE_URL="$(pg_db)" SURGE_JWT_SECRET="$secret"
    run "$r" flash-sale --units 1000 --users 10000 --attempts 100000 --concurrency 64 --seed 1
    stop_node "$r" ;;
  seed-orders)
    start_node "$r"
    run "$r" orders --items 10 --users 100 --attempts 1000 --concurrency 64 --seed 1 --no-ceiling
    stop_node "$r" ;;
  seed-coupons)
    start_node "$r"
    run "$r" coupon-rush --quantity 1000 --users 1000 --attempts 1000 --concurrency 64 --seed 1 --no-ceiling
    stop_node "$r" ;;
  *) echo "unknown run $r" >&2; exit 2 ;;
  esac
done
