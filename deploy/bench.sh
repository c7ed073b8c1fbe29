#!/usr/bin/env bash
# The load benchmarks against nginx: `deploy/bench.sh` (load: direct vs nginx vs wasmesh-proxy)
# or `deploy/bench.sh mtls` (a proxy-to-proxy hop, plaintext and mTLS) or `deploy/bench.sh
# gateway_tls` (HTTPS termination at the gateway). Installs wrk, nginx and oha if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/setup.sh
if ! command -v oha >/dev/null 2>&1; then
  echo "bench: installing oha (cargo install oha)"
  cargo install oha --locked
fi
bench=load
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  bench=$1
  shift
fi
cargo bench -p wasmesh-benches --bench "$bench" "$@"
