//! A local mesh for Istio's traffic-management tasks: sample services on 127.0.0.1:0, Istio
//! manifests translated by the control plane, and the proxy running the four traffic plugins
//! built from `plugins/`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use wasmesh_controlplane::samples::{self, BookinfoEndpoints, HttpbinEndpoints};
use wasmesh_controlplane::{Options, PluginModule, PluginModules, manifests, translate_loaded};
use wasmesh_proxy::Proxy;
use wasmesh_proxy::config::Bootstrap;

use super::{Body, Reply, Upstream, empty, h1_client, send};

/// The translation options of the tests: the four plugins from the artifacts, an admin port.
pub fn options() -> Options {
    Options {
        admin_address: Some("127.0.0.1:0".into()),
        plugins: Some(PluginModules {
            router: PluginModule::new(wasmesh_artifacts::ROUTER),
            fault: PluginModule::new(wasmesh_artifacts::FAULT),
            mirror: PluginModule::new(wasmesh_artifacts::MIRROR),
            circuit_breaker: PluginModule::new(wasmesh_artifacts::CIRCUIT_BREAKER),
            authz: PluginModule::new(wasmesh_artifacts::AUTHZ),
        }),
        ..Options::default()
    }
}

/// Translates manifests for a proxy of `workers` workers; any error diagnostic fails the test.
pub fn translate_yaml(yaml: &str, options: &Options, workers: usize) -> Bootstrap {
    let translation = translate_loaded(&manifests::parse_str(yaml, None), options);
    let errors: Vec<String> = translation.errors().map(ToString::to_string).collect();
    assert!(
        errors.is_empty(),
        "manifests rejected:\n{}",
        errors.join("\n")
    );
    let mut bootstrap = translation.bootstrap;
    bootstrap.workers = Some(workers);
    bootstrap
}

/// The proxy of a local mesh, serving the services of `services` with the policy of `policy`.
pub struct Mesh {
    pub proxy: Proxy,
    pub addr: SocketAddr,
    services: String,
    options: Options,
    workers: usize,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
}

impl Mesh {
    pub fn start(services: &str, policy: &str) -> Mesh {
        Mesh::start_with(services, policy, options())
    }

    pub fn start_with(services: &str, policy: &str, options: Options) -> Mesh {
        Mesh::launch(services, policy, options, 2)
    }

    /// A mesh whose proxy has one worker, so every client connection shares its pools.
    pub fn single_worker(services: &str, policy: &str) -> Mesh {
        Mesh::launch(services, policy, options(), 1)
    }

    fn launch(services: &str, policy: &str, options: Options, workers: usize) -> Mesh {
        let bootstrap = translate_yaml(&format!("{services}\n---\n{policy}"), &options, workers);
        let proxy = Proxy::start(bootstrap).expect("the mesh proxy starts");
        let addr = proxy
            .listener_addr(&options.listener_name)
            .expect("the outbound listener");
        Mesh {
            proxy,
            addr,
            services: services.to_owned(),
            options,
            workers,
            client: h1_client(),
        }
    }

    /// Replaces the policy (VirtualServices, DestinationRules) as a config change would.
    pub fn apply(&self, policy: &str) {
        let bootstrap = translate_yaml(
            &format!("{}\n---\n{policy}", self.services),
            &self.options,
            self.workers,
        );
        self.proxy
            .reload(bootstrap)
            .expect("the new config is accepted");
    }

    /// Replaces the policy and the plugins' modules (the options' `plugins`).
    pub fn apply_with(&self, policy: &str, options: &Options) {
        let bootstrap = translate_yaml(
            &format!("{}\n---\n{policy}", self.services),
            options,
            self.workers,
        );
        self.proxy
            .reload(bootstrap)
            .expect("the new config is accepted");
    }

    /// A request to `host` (the `Host` header) through the mesh.
    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = Request::get(format!("http://{}{path}", self.addr)).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(&self.client, req.body(empty()).unwrap()).await
    }

    /// The workload that served a reply (the echo servers' `x-served-by`).
    pub async fn served_by(&self, host: &str, headers: &[(&str, &str)]) -> String {
        let reply = self.get(host, "/", headers).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.header("x-served-by").unwrap_or("?").to_owned()
    }

    /// How many of `n` requests each workload served.
    pub async fn spread(&self, host: &str, n: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            *counts.entry(self.served_by(host, &[]).await).or_default() += 1;
        }
        counts
    }

    /// Requests the proxy answered with a response flag (`UO`, `DI`, `FI`, `UT`, `URX`).
    pub async fn flagged(&self, flag: &str) -> f64 {
        let sample = format!(
            r#"wasmesh_downstream_rq_flags_total{{listener="{}",response_flags="{flag}"}}"#,
            self.options.listener_name
        );
        super::metric(&self.proxy, &sample).await.unwrap_or(0.0)
    }
}

/// Echo servers for every Bookinfo workload, each answering with `x-served-by: <app>-<version>`.
pub struct Bookinfo {
    pub endpoints: BookinfoEndpoints,
    pub servers: Vec<Upstream>,
}

impl Bookinfo {
    pub async fn start() -> Bookinfo {
        let names = [
            "productpage-v1",
            "details-v1",
            "ratings-v1",
            "reviews-v1",
            "reviews-v2",
            "reviews-v3",
        ];
        let mut servers = Vec::new();
        for name in names {
            servers.push(Upstream::echo(name).await);
        }
        let endpoints = BookinfoEndpoints {
            productpage: servers[0].addr,
            details: servers[1].addr,
            ratings: servers[2].addr,
            reviews_v1: servers[3].addr,
            reviews_v2: servers[4].addr,
            reviews_v3: servers[5].addr,
        };
        Bookinfo { endpoints, servers }
    }

    pub fn manifests(&self) -> String {
        samples::bookinfo(&self.endpoints)
    }
}

/// The httpbin service's manifests for two running servers.
pub fn httpbin(v1: &Upstream, v2: &Upstream) -> String {
    samples::httpbin(&HttpbinEndpoints {
        v1: v1.addr,
        v2: v2.addr,
    })
}

/// A ServiceEntry for `<name>.default.svc.cluster.local:80` with inline endpoints (labels
/// `app: <name>`), for tests that need more than the samples.
pub fn service(name: &str, endpoints: &[SocketAddr]) -> String {
    let mut eps = String::new();
    for e in endpoints {
        eps.push_str(&format!(
            "  - address: \"{}\"\n    ports: {{http: {}}}\n    labels: {{app: {name}}}\n",
            e.ip(),
            e.port()
        ));
    }
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
{eps}"
    )
}

/// An upstream that answers `status` after `delay`, tagged `name`.
pub async fn slow(name: &'static str, status: u16, delay: Duration) -> Upstream {
    Upstream::start(move |_req| async move {
        tokio::time::sleep(delay).await;
        http::Response::builder()
            .status(status)
            .header("x-served-by", name)
            .body(super::full(name))
            .unwrap()
    })
    .await
}
