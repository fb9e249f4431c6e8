#!/usr/bin/env bash
# The load tools' own ceilings on one release node, in one run: wrk and `surge bench health`
# on GET /health/live, 64 connections each, one after the other, three rounds.
#   scripts/bench/ceilings.sh
# Needs wrk (apt-get install -y wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y wrk
cargo build --release --quiet
work=$(mktemp -d)
port=18482
SURGE_HTTP_ADDR=127.0.0.1:$port SURGE_DATABASE_URL="sqlite://$work/surge.db" RUST_LOG=warn \
  target/release/surge serve & node=$!
trap 'kill $node 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.2; done
for round in 1 2 3; do
  echo "== round $round"
  wrk -t2 -c64 -d10s "http://127.0.0.1:$port/health/live" | grep -E 'Requests/sec' | sed 's/^/wrk          /'
  target/release/surge bench health --url "http://127.0.0.1:$port" --concurrency 64 \
    --duration 10s --json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("surge bench  Requests/sec: %.2f  p99 %.2f ms" % (r["throughput_rps"], r["latency_ms"]["p99"]))'
done
