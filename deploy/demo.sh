#!/usr/bin/env bash
# The main job: a local mesh on the embedded default. Sample services, the proxy in front of
# them, traffic through it, and a short report of what happened.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/setup.sh
cargo build --release --locked -p wasmesh-proxy -p wasmesh-demo
exec target/release/wasmesh-demo "$@"
