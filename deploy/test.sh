#!/usr/bin/env bash
# Sets up a fresh machine and passes every check: formatting, clippy, and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The tests drive the control plane's binary; build it with the rest instead of from a test.
cargo build --workspace --locked --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --doc --locked
