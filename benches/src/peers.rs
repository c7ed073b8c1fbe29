//! Servers the benchmarks run against or compare with.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::{find_program, wait_for_port};

/// A running process, killed on drop.
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx answering `200 hello world` itself: the upstream every target shares.
pub fn nginx_upstream(dir: &Path, addr: SocketAddr) -> anyhow::Result<Process> {
    let server = format!(
        "server {{ listen {addr} reuseport; location / {{ return 200 \"hello world\\n\"; }} }}"
    );
    nginx_with(dir, "upstream", addr, &server, "")
}

/// nginx as a reverse proxy with upstream keep-alive (the peer wasmesh is compared with).
pub fn nginx_proxy(dir: &Path, addr: SocketAddr, upstream: SocketAddr) -> anyhow::Result<Process> {
    let upstream_block = format!(
        "upstream backend {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}"
    );
    let server = format!(
        "server {{ listen {addr}; location / {{ proxy_pass http://backend; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
    );
    nginx_with(dir, "proxy", addr, &server, &upstream_block)
}

/// One single-process nginx named `name` with `server` blocks (and `extra` http-level
/// directives), ready when `addr` accepts connections.
pub fn nginx_with(
    dir: &Path,
    name: &str,
    addr: SocketAddr,
    server: &str,
    extra: &str,
) -> anyhow::Result<Process> {
    let binary = find_program("nginx").context("nginx not found (deploy/setup.sh installs it)")?;
    let conf = dir.join(format!("nginx-{name}.conf"));
    // One process (no master): it serves as a single worker does, and killing it leaves no
    // orphaned worker behind (a killed master's workers live on).
    let text = format!(
        "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  \
         client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; \
         uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n  {extra}\n  {server}\n}}\n",
        pid = dir.join(format!("{name}.pid")).display(),
        err = dir.join(format!("{name}.err")).display(),
        tmp = dir.display(),
    );
    std::fs::write(&conf, text)?;
    let child = Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start nginx")?;
    let process = Process { child, addr };
    wait_for_port(addr)?;
    Ok(process)
}

/// wasmesh-proxy with one listener routing everything to `upstream`.
pub fn wasmesh(
    binary: &Path,
    dir: &Path,
    addr: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
) -> anyhow::Result<Process> {
    wasmesh_with_filters(binary, dir, addr, upstream, workers, "")
}

/// A chain of four realistic proxy-wasm filters (built from `tests/filters`): header edits,
/// properties read into response headers, a shared-data counter with CAS and a metric, and a
/// filter written with wasmesh-sdk. As YAML, for the listener's `http_filters`.
pub fn realistic_chain() -> String {
    use wasmesh_artifacts::{COUNTER, HEADERS, PROPERTIES, SDK_DEMO};
    format!(
        "  http_filters:\n  \
         - {{name: headers, url: \"{HEADERS}\", plugin_config: bench}}\n  \
         - {{name: properties, url: \"{PROPERTIES}\"}}\n  \
         - {{name: counter, url: \"{COUNTER}\"}}\n  \
         - {{name: sdk-demo, url: \"{SDK_DEMO}\", plugin_config: {{header: x-mesh, value: \"1\"}}}}\n"
    )
}

/// wasmesh-proxy as [`wasmesh`], with `filters` (YAML lines of the listener) added.
pub fn wasmesh_with_filters(
    binary: &Path,
    dir: &Path,
    addr: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
    filters: &str,
) -> anyhow::Result<Process> {
    let conf = dir.join(format!("wasmesh-{}.yaml", addr.port()));
    std::fs::write(
        &conf,
        format!(
            "workers: {workers}\nlisteners:\n- name: ingress\n  address: \"{addr}\"\n{filters}  \
             virtual_hosts:\n  \
             - name: all\n    domains: [\"*\"]\n    routes:\n    - cluster: backend\n\
             clusters:\n- name: backend\n  endpoints: [\"{upstream}\"]\n"
        ),
    )?;

    spawn_wasmesh(binary, &conf, addr)
}

/// wasmesh-proxy as [`wasmesh`], its listener terminating TLS as a gateway does (`simple`)
/// with the PEM files `(chain, key)`: presented for `server_names`, and as the
/// default certificate (for clients that send no server name, or an IP address as wrk does).
pub fn wasmesh_tls(
    binary: &Path,
    dir: &Path,
    addr: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
    server_names: &[&str],
    (cert, key): (&Path, &Path),
) -> anyhow::Result<Process> {
    let files = format!(
        "certificate_chain: {{filename: \"{}\"}}\n      private_key: {{filename: \"{}\"}}\n",
        cert.display(),
        key.display()
    );
    let tls = format!(
        "  tls:\n    mode: simple\n    certificates:\n    - server_names: [{}]\n      {files}    \
         - {files}",
        server_names.join(", ")
    );
    wasmesh_with_filters(binary, dir, addr, upstream, workers, &tls)
}

/// The request of the plugins benchmark that takes the VirtualService's 6th route
/// (`checkout`: prefix and header match, a 90/10 split, a fault delay at 0%, retries, timeout).
pub const CATALOG_CHECKOUT: crate::load::LoadRequest = crate::load::LoadRequest {
    path: "/api/v1/checkout/cart?id=42",
    // `Host` capitalised: wrk adds its own unless the header is named exactly so.
    headers: &[
        "Host: catalog.shop.svc.cluster.local",
        "user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0",
        "accept: application/json",
        "cookie: session=3q2+7w; theme=dark",
        "x-api-version: 2",
    ],
};

/// The request of issue 16 (`GET /api/v1/cart?id=42` to the shop), with the catalog request's
/// other headers: it takes the shop's weighted default route, which enters the router and the
/// circuit breaker (the fault and the mirror are scoped to their routes).
pub const SHOP_CART: crate::load::LoadRequest = crate::load::LoadRequest {
    path: "/api/v1/cart?id=42",
    headers: &[
        "Host: shop.shop",
        "user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0",
        "accept: application/json",
        "cookie: session=3q2+7w; theme=dark",
        "x-api-version: 2",
    ],
};

/// A set of Istio manifests the benchmarks run as a mesh.
#[derive(Clone, Copy, Debug)]
pub struct MeshManifests {
    /// Where they come from, for errors.
    pub file: &'static str,
    pub yaml: &'static str,
}

/// The manifests of the plugins benchmark: a `catalog` service with a VirtualService of ten
/// routes and a DestinationRule with a connection pool and outlier detection.
pub const CATALOG: MeshManifests = MeshManifests {
    file: "benches/manifests/catalog.yaml",
    yaml: include_str!("../manifests/catalog.yaml"),
};

/// The manifests of issue 16's mesh: a `shop` service with a VirtualService of four routes (a
/// prefix with a 0% abort, a header match, a prefix with a 0% mirror, a 90/10 weighted default
/// with retries and a timeout) and a DestinationRule with a connection pool and outlier
/// detection.
pub const SHOP: MeshManifests = MeshManifests {
    file: "benches/shop/shop.yaml",
    yaml: include_str!("../shop/shop.yaml"),
};

/// wasmesh-proxy as the mesh runs it: its config translated by wasmesh-controlplane from
/// `mesh` ([`CATALOG`] or [`SHOP`]), with the router, fault, mirror and circuit-breaker
/// plugins, every cluster's endpoints pointed at `upstream`.
pub fn wasmesh_with_plugins(
    binary: &Path,
    dir: &Path,
    addr: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
    mesh: MeshManifests,
) -> anyhow::Result<Process> {
    let translation = translation(
        mesh,
        &wasmesh_controlplane::Options {
            listener_address: addr.to_string(),
            ..catalog_options()
        },
    )?;
    let mut bootstrap = translation.bootstrap;
    bootstrap.workers = Some(workers);
    // Every cluster (the PassthroughCluster too) is the upstream here.
    for cluster in &mut bootstrap.clusters {
        cluster.endpoints = vec![upstream.to_string()];
        cluster.resolution = Default::default(); // static
    }
    let conf = dir.join(format!("wasmesh-{}.yaml", addr.port()));
    std::fs::write(&conf, serde_saphyr::to_string(&bootstrap)?)?;
    spawn_wasmesh(binary, &conf, addr)
}

/// Translation options with the four plugins built from `plugins/`.
pub fn catalog_options() -> wasmesh_controlplane::Options {
    use wasmesh_artifacts::{AUTHZ, CIRCUIT_BREAKER, FAULT, MIRROR, ROUTER};
    use wasmesh_controlplane::{Options, PluginModule, PluginModules};
    Options {
        plugins: Some(PluginModules {
            router: PluginModule::new(ROUTER),
            fault: PluginModule::new(FAULT),
            mirror: PluginModule::new(MIRROR),
            circuit_breaker: PluginModule::new(CIRCUIT_BREAKER),
            authz: PluginModule::new(AUTHZ),
        }),
        ..Options::default()
    }
}

/// `mesh` translated; warnings and errors refuse it (the benchmarks measure the manifests as
/// written).
pub fn translation(
    mesh: MeshManifests,
    options: &wasmesh_controlplane::Options,
) -> anyhow::Result<wasmesh_controlplane::Translation> {
    use wasmesh_controlplane::{Level, manifests, translate_loaded};
    let translation = translate_loaded(&manifests::parse_str(mesh.yaml, None), options);
    let problems: Vec<String> = translation
        .diagnostics
        .iter()
        .filter(|d| d.level != Level::Info)
        .map(ToString::to_string)
        .collect();
    if !problems.is_empty() {
        anyhow::bail!("{}: {problems:#?}", mesh.file);
    }
    Ok(translation)
}

fn spawn_wasmesh(binary: &Path, conf: &Path, addr: SocketAddr) -> anyhow::Result<Process> {
    let child = Command::new(binary)
        .arg("--config")
        .arg(conf)
        .env("WASMESH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start wasmesh-proxy")?;
    let process = Process { child, addr };
    wait_for_port(addr)?;
    Ok(process)
}
