//! wasmesh on Kubernetes. The control plane's library knows nothing of the API server; this
//! crate connects the two:
//!
//! - [`crds`]: Istio's kinds as CustomResourceDefinitions, generated from the control plane's
//!   Rust types (`deploy/kubernetes/crds.yaml` is their rendering);
//! - [`source`]: the Kubernetes source, reflectors over the Istio kinds, Services,
//!   EndpointSlices, Pods and Namespaces, yielding what the directory source yields;
//! - [`status`]: diagnostics written back to the resources' `status`, by the Lease's holder;
//! - [`lease`]: the `coordination.k8s.io` Lease that elects one replica for what must be single;
//! - [`webhook`]: the mutating admission webhook that injects sidecars, and [`ca_bundle`]: its
//!   configuration's caBundle;
//! - [`ca_secret`]: the CA, one for every replica, in a Secret;
//! - [`pull_secrets`]: WasmPlugins' imagePullSecrets, copied where the image puller reads them;
//! - [`token_review`]: sidecars' service-account tokens reviewed by the API server, so each
//!   gets only its own pod's identity.

pub mod ca_bundle;
pub mod ca_secret;
pub mod crds;
pub mod lease;
pub mod pull_secrets;
pub mod source;
pub mod status;
pub mod token_review;
pub mod webhook;
