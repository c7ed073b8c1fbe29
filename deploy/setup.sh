#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need on a fresh Debian machine:
# Debian packages (curl, h2load, wrk, nginx, haproxy, openssl; iptables, iproute2 and tcpdump for
# the interception tests' pods; npm, with Node.js, for the AssemblyScript test filter, unless the
# machine has them already; docker-registry, the reference OCI distribution registry, and
# apache2-utils' htpasswd for the plugin-image tests; prometheus, whose server the metrics tests
# start on ports of their own and query; chromium, headless, for the browser test), the
# wasm32-wasip1 target, and a Python
# virtualenv at /opt/wasmesh-py with the `oras` client (PyPI) that pushes and pulls test images
# and the `kubernetes-validate` and `jsonschema` validators of the Kubernetes manifests.
# Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
for pair in curl:curl h2load:nghttp2-client wrk:wrk nginx:nginx haproxy:haproxy openssl:openssl iptables:iptables ip:iproute2 tcpdump:tcpdump npm:npm \
  docker-registry:docker-registry htpasswd:apache2-utils prometheus:prometheus chromium:chromium; do
  cmd=${pair%%:*}
  pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
    need+=("$pkg")
  fi
done
# The virtualenv below is made with Debian's python3 (not a pyenv one on PATH), which needs
# python3-venv for ensurepip.
if ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'ok installed'; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The prometheus package starts and enables a system server on :9090. The tests start
  # Prometheus servers of their own on free ports and need none: stop it, once, when this
  # script installed it (a server someone runs on purpose is left alone on later runs).
  if [[ " ${need[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi

# RUSTUP_AUTO_INSTALL=0 on the build machines: targets are added explicitly.
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "setup: adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

# Python tools in a virtualenv of their own (Debian's Python is externally managed): the ORAS
# client that pushes and pulls test images, and the independent validators of deploy/kubernetes
# (kubernetes-validate for built-in kinds, jsonschema for the CRDs' schemas).
venv=/opt/wasmesh-py
sudo=""
[ "$(id -u)" -ne 0 ] && sudo=sudo
if ! [ -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  $sudo /usr/bin/python3 -m venv "$venv"
fi
for pair in 'oras:oras>=0.2,<0.3' 'kubernetes_validate:kubernetes-validate>=1.33,<2' 'jsonschema:jsonschema>=4.23,<5'; do
  module=${pair%%:*}
  requirement=${pair#*:}
  if ! "$venv/bin/python" -c "import $module" >/dev/null 2>&1; then
    echo "setup: installing $requirement into $venv"
    $sudo "$venv/bin/pip" install -q --disable-pip-version-check "$requirement"
  fi
done
