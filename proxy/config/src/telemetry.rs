//! What the proxy reports about the traffic it carries: the workload it serves (the labels of
//! Istio's metrics, and the peer metadata it tells other sidecars), which side of the traffic
//! a listener is on, the service a cluster stands for, and tracing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Dur;

/// The proxy's telemetry (`Bootstrap.telemetry`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The workload this proxy serves; none: a proxy of no workload (its labels are
    /// `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// Spans, sampled and exported with OTLP; none: no span is made and trace headers pass
    /// untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

impl Telemetry {
    pub fn is_default(&self) -> bool {
        *self == Telemetry::default()
    }
}

/// A workload instance, as Istio's node metadata describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The instance (a pod's name).
    pub name: String,
    pub namespace: String,
    /// The workload the instance belongs to (a Deployment's name; Istio's `WORKLOAD_NAME`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    /// Its SPIFFE identity (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`), where it has one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub principal: String,
    /// The cluster it runs in (Istio's `CLUSTER_ID`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    /// Its labels: `app`, `version` and Istio's canonical-service labels name it in metrics.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Which side of the traffic a listener is on (Envoy's `traffic_direction`): Istio's metrics
/// are reported by the `source` on outbound listeners, by the `destination` on inbound ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficDirection {
    Inbound,
    Outbound,
}

/// The service a cluster's endpoints stand for (Istio's cluster metadata `istio.services`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    /// Its host (`reviews.default.svc.cluster.local`).
    pub host: String,
    pub name: String,
    pub namespace: String,
}

/// Tracing: Istio's `Telemetry` tracing and its mesh config's OpenTelemetry provider.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The percentage of requests that start a sampled trace, 0 to 100 (Istio's
    /// `randomSamplingPercentage`; default 1). A request with a sampling decision from
    /// upstream keeps it.
    #[serde(default = "default_sampling")]
    pub sampling: f64,
    /// Where spans go; none: spans are made (and propagated) but not exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<Otlp>,
}

fn default_sampling() -> f64 {
    1.0
}

/// An OTLP/gRPC collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// `http://host:port`.
    pub endpoint: String,
    /// How long one export may take before it is dropped.
    #[serde(default = "default_export_timeout")]
    pub timeout: Dur,
}

fn default_export_timeout() -> Dur {
    Dur::secs(5)
}

impl Telemetry {
    /// Checks what parsing cannot: returns the field (under `telemetry.`) and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Some(t) = &self.tracing {
            if !(0.0..=100.0).contains(&t.sampling) {
                return Err((
                    "tracing.sampling".into(),
                    format!("{} is not a percentage from 0 to 100", t.sampling),
                ));
            }
            if let Some(o) = &t.otlp {
                let rest = o
                    .endpoint
                    .strip_prefix("http://")
                    .or_else(|| o.endpoint.strip_prefix("https://"));
                if rest.is_none_or(|r| r.trim_end_matches('/').is_empty()) {
                    return Err((
                        "tracing.otlp.endpoint".into(),
                        format!("{:?} is not an http:// or https:// URL", o.endpoint),
                    ));
                }
            }
        }
        Ok(())
    }
}
