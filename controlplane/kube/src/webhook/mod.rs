//! The sidecar injector: a mutating admission webhook, as Istio's, that adds the
//! `wasmesh-init` init container and the `wasmesh-proxy` sidecar to the pods that should
//! have them.
//!
//! - [`inject`]: the decision and the JSON Patch, pure;
//! - [`cert`]: the serving certificate, from the mesh's CA, renewed under the listener;
//! - [`server`]: HTTPS, `POST /inject`.
//!
//! ```no_run
//! # async fn run(authority: tokio::sync::watch::Receiver<std::sync::Arc<wasmesh_controlplane::ca::Authority>>) -> anyhow::Result<()> {
//! use wasmesh_kube::webhook::{self, Injector, InjectorConfig, ServingCertificate};
//! let names = webhook::service_dns_names("wasmesh-webhook", "wasmesh-system", "svc.cluster.local");
//! let certificate = ServingCertificate::issue(authority, names, webhook::DEFAULT_LIFETIME)?;
//! let injector = Injector::new(
//!     InjectorConfig {
//!         image: "ghcr.io/wasmesh/wasmesh:0.1.0".into(),
//!         image_pull_policy: None,
//!         control_plane: "wasmesh-controlplane.wasmesh-system.svc:15010".into(),
//!     },
//!     |_namespace| None, // the namespaces' labels, from the Kubernetes source
//! );
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:15017").await?;
//! webhook::serve(listener, certificate, injector).await;
//! # Ok(()) }
//! ```

pub mod cert;
pub mod inject;
pub mod server;

pub use cert::{CertificateError, DEFAULT_LIFETIME, ServingCertificate, service_dns_names};
pub use inject::{
    BadAnnotation, BadReview, INIT_CONTAINER, Injector, InjectorConfig, NamespaceLabels,
    PROXY_CONTAINER,
};
pub use server::{MAX_BODY, serve};
