#!/usr/bin/env bash
# Formatting and clippy, warnings as errors. Run by CI after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The Kafka and MongoDB clients are features: lint the build that has them too.
cargo clippy --workspace --all-targets --locked --features kafka,mongo -- -D warnings
