#!/usr/bin/env bash
# User-space instructions per proxied request, wasmesh-proxy against nginx, counted by valgrind
# (callgrind). Unlike throughput on a shared 2-core VM, the count repeats to within 0.1%, so it
# shows what a change to the request path is worth. Both proxies get the load benchmark's
# request from h2load over 8 keep-alive connections and forward it to the same nginx upstream.
# Each runs twice (N1 and N2 requests); the difference divided by N2 - N1 leaves out start-up.
#
#   deploy/bench-instructions.sh [N1 N2]        # default 5000 25000
set -euo pipefail
cd "$(dirname "$0")/.."

n1=${1:-5000}
n2=${2:-25000}
deploy/setup.sh
if ! command -v valgrind >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "bench-instructions: installing valgrind"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
cargo build --release --locked -p wasmesh-proxy
proxy=$PWD/target/release/wasmesh-proxy
nginx=$(command -v nginx || echo /usr/sbin/nginx)

dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 200); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "bench-instructions: nothing answers on port $1" >&2
  return 1
}
nginx_conf() { # name, listen port, extra http config, location body
  cat >"$dir/$1.conf" <<EOF
worker_processes 1; master_process off; daemon off;
pid $dir/$1.pid; error_log $dir/$1.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  $3
  server { listen 127.0.0.1:$2; location / { $4 } } }
EOF
}

upstream=$(free_port)
nginx_conf upstream "$upstream" "" 'return 200 "hello world\n";'
"$nginx" -c "$dir/upstream.conf" &
pids+=($!)
wait_port "$upstream"

# Instructions the proxy started by "$@" executes to start, serve $1 requests on $2, and stop.
count() {
  local n=$1 port=$2 stop=$3
  shift 3
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$@" >"$dir/proxy.log" 2>&1 &
  local pid=$!
  wait_port "$port"
  h2load --h1 -n "$n" -c 8 \
    -H ":authority: catalog.shop.svc.cluster.local" \
    -H "user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0" \
    -H "accept: application/json" -H "cookie: session=3q2+7w; theme=dark" \
    -H "x-api-version: 2" \
    "http://127.0.0.1:$port/api/v1/checkout/cart?id=42" | grep -q "$n succeeded" ||
    { echo "bench-instructions: not every request succeeded" >&2; kill "$pid"; return 1; }
  kill "-$stop" "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ { print $2; exit }' "$dir/cg.out"
}
per_request() { # nginx | wasmesh
  local a b
  a=$(count_one "$1" "$n1")
  b=$(count_one "$1" "$n2")
  echo $(((b - a) / (n2 - n1)))
}
count_one() { # nginx | wasmesh, requests
  local port
  port=$(free_port)
  if [ "$1" = nginx ]; then
    nginx_conf "proxy-$port" "$port" \
      "upstream backend { server 127.0.0.1:$upstream; keepalive 64; keepalive_requests 1000000; }" \
      'proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";'
    count "$2" "$port" QUIT "$nginx" -c "$dir/proxy-$port.conf"
  else
    cat >"$dir/wasmesh-$port.yaml" <<EOF
workers: 1
listeners:
- name: ingress
  address: "127.0.0.1:$port"
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - cluster: backend
clusters:
- name: backend
  endpoints: ["127.0.0.1:$upstream"]
EOF
    count "$2" "$port" TERM "$proxy" --config "$dir/wasmesh-$port.yaml"
  fi
}

echo "instructions per request (valgrind callgrind, user space, $((n2 - n1)) requests):"
ng=$(per_request nginx)
wm=$(per_request wasmesh)
printf '  nginx          %8d\n  wasmesh-proxy  %8d  (%s of nginx)\n' "$ng" "$wm" \
  "$(awk -v a="$wm" -v b="$ng" 'BEGIN { printf "%.2fx", a / b }')"
