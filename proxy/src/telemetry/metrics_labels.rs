//! Istio's label sets, typed (as ztunnel's `CommonTrafficLabels`), and how a workload's labels
//! derive its `app`, `version` and canonical service and revision.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::stats::ResponseFlags;

/// A label value, shared by every series that carries it.
pub type Label = Arc<str>;

/// Istio's word for a value nobody told us.
pub const UNKNOWN: &str = "unknown";

pub fn unknown() -> Label {
    Label::from(UNKNOWN)
}

/// Who reports a series: the caller's proxy (outbound) or the callee's (inbound).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// One end of a hop, as Istio's `source_*` / `destination_*` labels name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadLabels {
    pub workload: Label,
    pub namespace: Label,
    pub app: Label,
    pub version: Label,
    pub canonical_service: Label,
    pub canonical_revision: Label,
    pub cluster: Label,
}

impl WorkloadLabels {
    /// A peer nobody described (Istio: `unknown`, and revision `latest`).
    pub fn unknown() -> WorkloadLabels {
        let u = unknown();
        WorkloadLabels {
            workload: u.clone(),
            namespace: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: Label::from("latest"),
            cluster: u,
        }
    }

    /// Istio's derivation from a workload's metadata: `app` from the `app` label, else
    /// `app.kubernetes.io/name`; `version` from `version`, else `app.kubernetes.io/version`;
    /// the canonical service from `service.istio.io/canonical-name`, else the app labels, else
    /// the workload's name; the canonical revision from
    /// `service.istio.io/canonical-revision`, else the version labels, else `latest`. The
    /// workload is `workload_name`, else the instance's name. Empty values count as absent.
    pub fn derive<'a>(
        name: &str,
        workload_name: &str,
        namespace: &str,
        cluster: &str,
        label: impl Fn(&str) -> Option<&'a str>,
    ) -> WorkloadLabels {
        let label = |k: &str| label(k).filter(|v| !v.is_empty());
        let present = |v: &str| (!v.is_empty()).then(|| Label::from(v));
        let or_unknown = |v: Option<&str>| v.map_or_else(unknown, Label::from);
        let workload = present(workload_name).or_else(|| present(name));
        let app = label("app").or_else(|| label("app.kubernetes.io/name"));
        let version = label("version").or_else(|| label("app.kubernetes.io/version"));
        let canonical_service = label("service.istio.io/canonical-name")
            .or_else(|| label("app.kubernetes.io/name"))
            .or_else(|| label("app"))
            .map(Label::from)
            .or_else(|| workload.clone())
            .unwrap_or_else(unknown);
        let canonical_revision = label("service.istio.io/canonical-revision")
            .or_else(|| label("app.kubernetes.io/version"))
            .or_else(|| label("version"))
            .unwrap_or("latest");
        WorkloadLabels {
            workload: workload.unwrap_or_else(unknown),
            namespace: present(namespace).unwrap_or_else(unknown),
            app: or_unknown(app),
            version: or_unknown(version),
            canonical_service,
            canonical_revision: Label::from(canonical_revision),
            cluster: present(cluster).unwrap_or_else(unknown),
        }
    }
}

/// The service a request went to (`destination_service*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    /// Its host (`reviews.default.svc.cluster.local`).
    pub host: Label,
    pub name: Label,
    pub namespace: Label,
}

impl ServiceLabels {
    pub fn unknown() -> ServiceLabels {
        ServiceLabels {
            host: unknown(),
            name: unknown(),
            namespace: unknown(),
        }
    }

    /// A service known only by the host a request named (Istio's fallback to `:authority`).
    pub fn from_host(host: &str) -> ServiceLabels {
        if host.is_empty() {
            return ServiceLabels::unknown();
        }
        let host = Label::from(host);
        ServiceLabels {
            name: host.clone(),
            host,
            namespace: unknown(),
        }
    }
}

/// `response_flags`: Envoy's codes joined by `,`, or `-`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flags(pub ResponseFlags);

impl EncodeLabelValue for Flags {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        write!(encoder, "{}", self.0)
    }
}

/// The labels every Istio series carries (the TCP metrics carry just these).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: &'static str,
    pub source_workload: Label,
    pub source_workload_namespace: Label,
    pub source_principal: Label,
    pub source_app: Label,
    pub source_version: Label,
    pub source_canonical_service: Label,
    pub source_canonical_revision: Label,
    pub source_cluster: Label,
    pub destination_workload: Label,
    pub destination_workload_namespace: Label,
    pub destination_principal: Label,
    pub destination_app: Label,
    pub destination_version: Label,
    pub destination_service: Label,
    pub destination_service_name: Label,
    pub destination_service_namespace: Label,
    pub destination_canonical_service: Label,
    pub destination_canonical_revision: Label,
    pub destination_cluster: Label,
    pub request_protocol: &'static str,
    pub response_flags: Flags,
    pub connection_security_policy: &'static str,
}

/// The labels of the HTTP and gRPC metrics: the common ones and the response's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    pub response_code: u16,
    /// The gRPC status; empty for plain HTTP (as Istio).
    pub grpc_response_status: Option<u8>,
}

/// What the labels of one hop are made of.
pub struct Hop<'a> {
    pub reporter: Reporter,
    pub source: &'a WorkloadLabels,
    pub source_principal: Label,
    pub destination: &'a WorkloadLabels,
    pub destination_principal: Label,
    pub service: &'a ServiceLabels,
    pub protocol: &'static str,
    pub flags: ResponseFlags,
    /// For the destination: whether the caller presented a verified certificate.
    pub mtls: bool,
}

impl Hop<'_> {
    pub fn labels(&self) -> TrafficLabels {
        let (s, d) = (self.source, self.destination);
        TrafficLabels {
            reporter: self.reporter.as_str(),
            source_workload: s.workload.clone(),
            source_workload_namespace: s.namespace.clone(),
            source_principal: self.source_principal.clone(),
            source_app: s.app.clone(),
            source_version: s.version.clone(),
            source_canonical_service: s.canonical_service.clone(),
            source_canonical_revision: s.canonical_revision.clone(),
            source_cluster: s.cluster.clone(),
            destination_workload: d.workload.clone(),
            destination_workload_namespace: d.namespace.clone(),
            destination_principal: self.destination_principal.clone(),
            destination_app: d.app.clone(),
            destination_version: d.version.clone(),
            destination_service: self.service.host.clone(),
            destination_service_name: self.service.name.clone(),
            destination_service_namespace: self.service.namespace.clone(),
            destination_canonical_service: d.canonical_service.clone(),
            destination_canonical_revision: d.canonical_revision.clone(),
            destination_cluster: d.cluster.clone(),
            request_protocol: self.protocol,
            response_flags: Flags(self.flags),
            // Istio: the source cannot tell how the destination took the connection.
            connection_security_policy: match (self.reporter, self.mtls) {
                (Reporter::Source, _) => UNKNOWN,
                (Reporter::Destination, true) => "mutual_tls",
                (Reporter::Destination, false) => "none",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn derive(name: &str, workload: &str, labels: &[(&str, &str)]) -> WorkloadLabels {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        WorkloadLabels::derive(name, workload, "shop", "", |k| labels.get(k).copied())
    }

    #[test]
    fn app_and_version_come_from_istio_labels_then_kubernetes_ones() {
        let w = derive(
            "reviews-v2-abc",
            "reviews-v2",
            &[("app", "reviews"), ("version", "v2")],
        );
        assert_eq!(&*w.workload, "reviews-v2");
        assert_eq!(&*w.namespace, "shop");
        assert_eq!((&*w.app, &*w.version), ("reviews", "v2"));
        assert_eq!(&*w.canonical_service, "reviews");
        assert_eq!(&*w.canonical_revision, "v2");
        assert_eq!(&*w.cluster, "unknown");

        let k8s = derive(
            "p",
            "",
            &[
                ("app.kubernetes.io/name", "ratings"),
                ("app.kubernetes.io/version", "1.2"),
            ],
        );
        assert_eq!(
            &*k8s.workload, "p",
            "the instance's name without a workload name"
        );
        assert_eq!((&*k8s.app, &*k8s.version), ("ratings", "1.2"));
        assert_eq!(
            (&*k8s.canonical_service, &*k8s.canonical_revision),
            ("ratings", "1.2")
        );
    }

    #[test]
    fn canonical_labels_win_and_fall_back_to_the_workload_and_latest() {
        let w = derive(
            "x",
            "details-v1",
            &[
                ("app", "details"),
                ("version", "v1"),
                ("service.istio.io/canonical-name", "details-svc"),
                ("service.istio.io/canonical-revision", "r7"),
            ],
        );
        assert_eq!((&*w.app, &*w.version), ("details", "v1"));
        assert_eq!(
            (&*w.canonical_service, &*w.canonical_revision),
            ("details-svc", "r7")
        );
        let bare = derive("x", "productpage-v1", &[("app", "")]);
        assert_eq!((&*bare.app, &*bare.version), ("unknown", "unknown"));
        assert_eq!(
            (&*bare.canonical_service, &*bare.canonical_revision),
            ("productpage-v1", "latest")
        );
        let nothing = WorkloadLabels::derive("", "", "", "", |_| None);
        assert_eq!(nothing, WorkloadLabels::unknown());
    }

    #[test]
    fn flags_label_is_envoys_codes_or_a_dash() {
        use crate::stats::ResponseFlag;
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        let family = prometheus_client::metrics::family::Family::<
            [(&str, Flags); 1],
            prometheus_client::metrics::counter::Counter,
        >::default();
        let mut flags = ResponseFlags::default();
        family
            .get_or_create(&[("response_flags", Flags(flags))])
            .inc();
        flags.insert(ResponseFlag::UpstreamConnectionFailure);
        flags.insert(ResponseFlag::UpstreamRetryLimitExceeded);
        family
            .get_or_create(&[("response_flags", Flags(flags))])
            .inc();
        registry.register("f", "f", family);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("f_total{response_flags=\"-\"} 1"), "{text}");
        assert!(
            text.contains("f_total{response_flags=\"UF,URX\"} 1"),
            "{text}"
        );
    }
}
