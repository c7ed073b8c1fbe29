//! Telemetry: what the proxy records about the traffic it carries, in Istio's terms.
//!
//! - `metrics`: Istio's standard metrics (`istio_requests_total`, ...) with typed label sets.
//! - `peer`: Istio's peer metadata exchange, so both ends of a hop know each other's workload.
//! - `trace`: W3C and B3 trace context, spans per hop, exported with OTLP off the workers.

pub mod metrics;
mod metrics_family;
mod metrics_labels;
pub mod metrics_store;
mod metrics_worker;
pub mod peer;
mod peer_metadata;
pub mod trace;
