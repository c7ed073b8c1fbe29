#!/usr/bin/env bash
# User-space instructions per proxied request, wasmesh-proxy against nginx, counted by valgrind
# (callgrind; built by deploy/valgrind-wide.sh). Unlike throughput on a shared 2-core VM, the
# count repeats to within 0.1%, so it shows what a change to the request path is worth. Three
# proxies get the load benchmark's request from h2load over 8 keep-alive connections and forward
# it to the same nginx upstream:
# nginx, the bare wasmesh-proxy (one catch-all route), and the mesh: wasmesh-proxy configured as
# the load benchmark's "wasmesh+mesh" target, translated by wasmesh-controlplane from
# benches/manifests (a VirtualService of ten routes, a DestinationRule with a connection pool and
# outlier detection) with the router, fault, mirror and circuit-breaker plugins, every cluster
# pointed at the upstream; the request takes the 6th route (`checkout`); and the shop, issue 16's
# mesh (benches/shop: four routes, the request taking the weighted default one) made the same
# way. Each runs twice (N1 and N2 requests); the difference divided by N2 - N1 leaves out
# start-up.
#
#   deploy/bench-instructions.sh [N1 N2]        # default 5000 25000
#
# BENCH_INSTRUCTIONS_ONLY=mesh (or nginx, wasmesh, shop) counts only that proxy;
# BENCH_INSTRUCTIONS_KEEP=DIR keeps each run's callgrind profile there (<proxy>-<requests>.out),
# for `callgrind_annotate --inclusive=yes DIR/mesh-25000.out`.
# Honours CARGO_TARGET_DIR (the proxy, the plugins and the translator are built there).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

n1=${1:-5000}
n2=${2:-25000}
deploy/setup.sh
cargo build --release --locked -p wasmesh-proxy
target=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
# Stock valgrind cannot host the mesh: the Wasm host reserves ~250 GiB of address space for its
# pooling allocator. This one differs only in that limit (built once into the target dir).
valgrind=$(deploy/valgrind-wide.sh "$target/valgrind-wide")
proxy=$target/release/wasmesh-proxy
# The mesh's plugins, built as tests/artifacts/build.rs builds them for the load benchmark (the
# same packages in one invocation, so features unify the same way, into the same directory).
guests=()
for manifest in tests/filters/*/Cargo.toml plugins/*/Cargo.toml; do
  grep -q cdylib "$manifest" && guests+=(-p "$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest")")
done
env -u CARGO_TARGET_DIR -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
  -u CARGO_BUILD_TARGET -u RUSTC_WORKSPACE_WRAPPER \
  cargo build --quiet --locked --target wasm32-wasip1 --profile wasm \
  --target-dir "$target/wasm-artifacts" "${guests[@]}"
plugins=$target/wasm-artifacts/wasm32-wasip1/wasm
# The control plane's translation (translate_loaded, as the load benchmark's catalog_translation).
cargo build --quiet --locked -p wasmesh-controlplane --example translate
translate=$target/debug/examples/translate
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
wait_port() { # under valgrind the mesh's start (plugins loaded) takes a while
  for _ in $(seq 1200); do
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
  "$valgrind" --tool=callgrind --callgrind-out-file="$dir/cg.out" "$@" >"$dir/proxy.log" 2>&1 &
  local pid=$!
  wait_port "$port"
  h2load --h1 -n "$n" -c 8 \
    -H ":authority: $authority" \
    -H "user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0" \
    -H "accept: application/json" -H "cookie: session=3q2+7w; theme=dark" \
    -H "x-api-version: 2" \
    "http://127.0.0.1:$port$path" | grep -q "$n succeeded" ||
    { echo "bench-instructions: not every request succeeded" >&2; kill "$pid"; return 1; }
  kill "-$stop" "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ { print $2; exit }' "$dir/cg.out"
  if [ -n "${BENCH_INSTRUCTIONS_KEEP:-}" ]; then
    mkdir -p "$BENCH_INSTRUCTIONS_KEEP"
    cp "$dir/cg.out" "$BENCH_INSTRUCTIONS_KEEP/$counting-$n.out"
  fi
}
per_request() { # nginx | wasmesh | mesh | shop
  local a b
  a=$(count_one "$1" "$n1")
  b=$(count_one "$1" "$n2")
  echo $(((b - a) / (n2 - n1)))
}
count_one() { # nginx | wasmesh | mesh | shop, requests
  local port
  counting=$1
  # The catalog's checkout request; the shop's (issue 16's mesh) differs in its host and path.
  authority=catalog.shop.svc.cluster.local path=/api/v1/checkout/cart?id=42
  [ "$1" = shop ] && authority=shop.shop path=/api/v1/cart?id=42
  port=$(free_port)
  if [ "$1" = nginx ]; then
    nginx_conf "proxy-$port" "$port" \
      "upstream backend { server 127.0.0.1:$upstream; keepalive 64; keepalive_requests 1000000; }" \
      'proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";'
    count "$2" "$port" QUIT "$nginx" -c "$dir/proxy-$port.conf"
  elif [ "$1" = mesh ] || [ "$1" = shop ]; then
    local manifests=benches/manifests
    [ "$1" = shop ] && manifests=benches/shop
    mesh_config "$port" "$manifests" >"$dir/mesh-$port.yaml"
    warm_wasm_cache "$dir/mesh-$port.yaml" "$port"
    count "$2" "$port" TERM "$proxy" --config "$dir/mesh-$port.yaml"
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

# The mesh's config for a listener on port $1: the translation of the manifests in $2
# (benches/manifests or benches/shop) with the four plugins, then what the load benchmark's
# wasmesh_with_plugins changes in it: one worker, and every cluster's endpoints replaced by the
# upstream. Compiled modules are kept in $dir.
mesh_config() {
  "$translate" "$2" "$plugins" "127.0.0.1:$1" >"$dir/translated.yaml" 2>"$dir/translate.err" ||
    { cat "$dir/translate.err" >&2; return 1; }
  if grep -qv '^Info ' "$dir/translate.err"; then # the load benchmark refuses these too
    echo "bench-instructions: $2 does not translate cleanly:" >&2
    cat "$dir/translate.err" >&2
    return 1
  fi
  awk -v up="127.0.0.1:$upstream" -v cache="$dir/wasm-cache" '
    /^[^ -]/ { top = $1 }
    /^workers:/ { print "workers: 1"; workers = 1; next }
    /^wasm:/ { print "wasm: {cache_dir: \"" cache "\"}"; wasm = 1; next }
    top == "wasm:" && /^ / { next }
    # Every cluster, the PassthroughCluster (`endpoints: []`, original_dst) too, is a static one.
    top == "clusters:" && /^  endpoints:/ { print "  endpoints:"; print "  - " up; items = 1; clusters++; next }
    top == "clusters:" && /^  resolution:/ { next }
    items && /^  - / { next }
    { items = 0; print }
    END {
      if (!wasm) print "wasm: {cache_dir: \"" cache "\"}"
      if (!workers || !clusters) exit 1
    }' "$dir/translated.yaml" >"$dir/mesh.yaml"
  if grep -q '10\.[12]\.0\.' "$dir/mesh.yaml"; then
    echo "bench-instructions: an endpoint of $2 was left in the mesh config" >&2
    return 1
  fi
  cat "$dir/mesh.yaml"
}
# Starts the proxy once (under valgrind, whose CPU lacks some of the host's features, so that the
# modules are compiled for it) to fill the module cache: both counted runs then load the
# compiled modules instead of one of them compiling them (start-up must be the same to cancel).
warm_wasm_cache() { # config, port
  [ -n "$(ls -A "$dir/wasm-cache" 2>/dev/null)" ] && return 0
  "$valgrind" --tool=none "$proxy" --config "$1" >"$dir/warm.log" 2>&1 &
  local pid=$!
  wait_port "$2" || { cat "$dir/warm.log" >&2; kill "$pid"; return 1; }
  kill -TERM "$pid"
  wait "$pid" || true
}

echo "instructions per request (valgrind callgrind, user space, $((n2 - n1)) requests):"
only=${BENCH_INSTRUCTIONS_ONLY:-}
if [ -n "$only" ]; then
  printf '  %-14s %8d\n' "$only" "$(per_request "$only")"
  exit 0
fi
ng=$(per_request nginx)
wm=$(per_request wasmesh)
ms=$(per_request mesh)
sh=$(per_request shop)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
printf '  nginx          %8d\n' "$ng"
printf '  wasmesh-proxy  %8d  (%s of nginx)\n' "$wm" "$(ratio "$wm" "$ng")"
printf '  wasmesh mesh   %8d  (%s of nginx, %s of bare)\n' "$ms" "$(ratio "$ms" "$ng")" \
  "$(ratio "$ms" "$wm")"
printf '  wasmesh shop   %8d  (%s of nginx, %s of bare)\n' "$sh" "$(ratio "$sh" "$ng")" \
  "$(ratio "$sh" "$wm")"
