#!/usr/bin/env bash
# The project's single test command: starts the services the tests need,
# then runs the whole workspace's tests. Extra arguments go to `cargo test`,
# e.g. `scripts/test.sh -p surge-persistence -- --nocapture`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$SECONDS
report_time() {
  local rc=$? elapsed=$((SECONDS - start))
  printf 'test.sh: finished in %dm%02ds (exit %d)\n' $((elapsed / 60)) $((elapsed % 60)) "$rc" >&2
}
trap report_time EXIT

if [ -n "${CI:-}" ]; then
  export CARGO_TERM_COLOR=never
fi

# Two steps on purpose: `eval "$(...)"` would ignore a failure of the script.
service_exports=$(bash scripts/ensure-services.sh postgres redis kafka mongo)
eval "$service_exports"

# `kafka`: the Kafka producer and consumer, tested against the tansu broker; `mongo`: the
# MongoDB read model, tested against the mongoeco wire server.
cargo_args=(test --workspace --features kafka,mongo)
if [ -f Cargo.lock ]; then
  cargo_args+=(--locked)
fi

echo "test.sh: cargo ${cargo_args[*]} $*" >&2
cargo "${cargo_args[@]}" "$@"

# The HTTP contract, machine-checked (the whole run only: arguments narrow `cargo test`).
if [ $# -eq 0 ]; then
  bash scripts/schemathesis.sh
fi
