#!/usr/bin/env bash
# The load benchmark (direct vs nginx vs wasmesh-proxy). Installs wrk, nginx and oha if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/setup.sh
if ! command -v oha >/dev/null 2>&1; then
  echo "bench: installing oha (cargo install oha)"
  cargo install oha --locked
fi
cargo bench -p wasmesh-benches --bench load "$@"
