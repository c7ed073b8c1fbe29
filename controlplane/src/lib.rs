//! The wasmesh control plane: Istio manifests in, proxy configuration out.
//!
//! - [`manifests`] loads VirtualService, DestinationRule, ServiceEntry and WorkloadEntry
//!   resources from YAML (strings, files, directories);
//! - [`translate()`] turns them, by a pure function, into the proxy's
//!   [`Bootstrap`](wasmesh_config::Bootstrap) and the configuration of the four traffic
//!   plugins (router, fault, mirror, circuit-breaker; see `wasmesh-policy`);
//! - [`Diagnostic`]s report problems in the style of `istioctl analyze`;
//! - [`source`] yields resources from a watched directory, [`mesh`] turns them into each
//!   sidecar's snapshot ([`sidecar`], [`plugins`] for WasmPlugins) and [`server`] streams
//!   them to proxies over gRPC (`wasmesh-api`), where [`authn`] may ask proof of a proxy's
//!   identity;
//! - [`graph`] draws the service graph from the proxies' Istio metrics, which [`dashboard`]
//!   scrapes and serves as a web page;
//! - [`samples`] renders Bookinfo-like manifests and holds Istio's task manifests.

pub mod authn;
pub mod authz;
pub mod ca;
pub mod dashboard;
pub mod diag;
pub mod duration;
pub mod gateway;
pub mod gateway_api;
pub mod graph;
pub mod images;
pub mod istio;
pub mod manifests;
pub mod mesh;
pub mod modules;
pub mod peer_auth;
pub mod plugins;
pub mod samples;
pub mod server;
pub mod sidecar;
pub mod source;
pub mod telemetry;
mod translate;

pub use diag::{Diagnostic, Level};
pub use manifests::{Loaded, Resource, Source, Spec};
pub use translate::{
    AUTHZ_PLUGIN_FILE, Options, PLUGIN_FILES, PLUGIN_NAMES, PluginModule, PluginModules,
    Translation, check, cluster_name, translate, translate_loaded,
};

/// Installs ring as the process's rustls provider (the registry and https clients take the
/// process default); a no-op once one is installed.
pub(crate) fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
