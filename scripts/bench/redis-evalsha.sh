#!/usr/bin/env bash
# Redis's own limit for Surge's coupon issue: redis-benchmark calling the same issue script
# (check open, check holder, decrement, record holder, XADD) by SHA, with distinct members, on
# a throwaway key prefix in database 9. Usage: scripts/bench/redis-evalsha.sh [PIPELINE] [CLIENTS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
pipeline=${1:-1}
clients=${2:-50}
requests=${REQUESTS:-200000}
db=9
prefix="bench-evalsha-$$"
script=$(sed -n "/^const ISSUE_SCRIPT: &str = r\"/,/^\";/p" persistence/src/redis_coupons.rs | sed '1d;$d')
cli() { redis-cli -n "$db" "$@"; }
sha=$(cli SCRIPT LOAD "$script")
# Plenty left and already open, so every call takes the full path.
cli HSET "$prefix:coupon:1" quantity 100000000 remaining 100000000 opens_at 0 >/dev/null
redis-benchmark -n "$requests" -c "$clients" -P "$pipeline" -r 100000000 --dbnum "$db" --csv \
  EVALSHA "$sha" 3 "$prefix:coupon:1" "$prefix:coupon:1:holders" "$prefix:coupon-issues" 1 __rand_int__ ""
cli DEL "$prefix:coupon:1" "$prefix:coupon:1:holders" "$prefix:coupon-issues" >/dev/null
