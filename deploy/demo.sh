#!/usr/bin/env bash
# The main job: a local mesh on the embedded default. Bookinfo's and httpbin's workloads on
# loopback, each behind a wasmesh-proxy sidecar that wasmesh-controlplane configures from a
# directory of Istio's task manifests (with the four traffic plugins); each task applied by
# editing the directory while traffic runs, and a short report of what the clients saw.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/setup.sh
cargo build --release --locked --target wasm32-wasip1 \
  -p plugin-router -p plugin-fault -p plugin-mirror -p plugin-circuit-breaker -p plugin-authz
cargo build --release --locked -p wasmesh-proxy -p wasmesh-kube -p wasmesh-demo
exec target/release/wasmesh-demo --plugins target/wasm32-wasip1/release "$@"
