#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need on a fresh Debian machine:
# Debian packages (curl, h2load, wrk, nginx, haproxy, openssl; iptables, iproute2 and tcpdump for
# the interception tests' pods; npm, with Node.js, for the AssemblyScript test filter, unless the
# machine has them already) and the wasm32-wasip1 target.
# Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
for pair in curl:curl h2load:nghttp2-client wrk:wrk nginx:nginx haproxy:haproxy openssl:openssl iptables:iptables ip:iproute2 tcpdump:tcpdump npm:npm; do
  cmd=${pair%%:*}
  pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
    need+=("$pkg")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# RUSTUP_AUTO_INSTALL=0 on the build machines: targets are added explicitly.
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "setup: adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi
