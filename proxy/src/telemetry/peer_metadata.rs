//! What Istio's peer metadata exchange (the `istio.metadata_exchange` filter) carries, so
//! that both ends of a hop can name each other in their metrics:
//!
//! - `x-envoy-peer-metadata-id`: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`;
//! - `x-envoy-peer-metadata`: base64 of a serialized `google.protobuf.Struct` with Istio's
//!   node-metadata keys (`NAME`, `NAMESPACE`, `LABELS`, `WORKLOAD_NAME`, `SERVICE_ACCOUNT`,
//!   `CLUSTER_ID`, `MESH_ID`, ...), which real Istio sidecars read and write.
//!
//! The codec, encoded with prost's `Struct` as Istio's sidecars do (`peer` exchanges it).
//! Malformed or oversized metadata decodes to nothing: the peer is `unknown`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use prost::Message as _;
use prost_types::value::Kind;
use prost_types::{Struct, Value};

use super::metrics_labels::WorkloadLabels;
use crate::config::telemetry::Workload;
use crate::config::{Cluster, UpstreamTlsMode};

pub static PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
pub static PEER_METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// A metadata header longer than this is ignored (Envoy caps the same Struct at 8 KiB).
pub const MAX_METADATA_LEN: usize = 8 * 1024;
/// A peer's value (a name, a label) longer than this is not taken: label values stay small.
pub const MAX_VALUE_LEN: usize = 253;
/// At most this many of a peer's labels are kept.
const MAX_LABELS: usize = 64;

/// Standard base64, padded when written; read padded or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a peer says about itself, under Istio's node-metadata keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    /// The instance (`NAME`: a pod's name).
    pub name: String,
    pub namespace: String,
    /// `WORKLOAD_NAME`: a Deployment's name, say.
    pub workload_name: String,
    pub service_account: String,
    pub cluster_id: String,
    pub mesh_id: String,
    pub labels: BTreeMap<String, String>,
    /// `INSTANCE_IPS`, comma-separated.
    pub instance_ips: String,
}

impl PeerMetadata {
    /// This proxy's own, from the bootstrap's workload.
    pub fn local(w: &Workload, mesh_id: &str) -> PeerMetadata {
        PeerMetadata {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            workload_name: w.workload_name.clone(),
            service_account: w.service_account.clone(),
            cluster_id: w.cluster_id.clone(),
            mesh_id: mesh_id.to_owned(),
            labels: w.labels.clone(),
            instance_ips: String::new(),
        }
    }

    /// Istio's labels for the peer.
    pub fn workload_labels(&self) -> WorkloadLabels {
        WorkloadLabels::derive(
            &self.name,
            &self.workload_name,
            &self.namespace,
            &self.cluster_id,
            |k| self.labels.get(k).map(String::as_str),
        )
    }

    /// The Struct Istio's metadata exchange sends (empty values left out).
    pub fn to_struct(&self) -> Struct {
        let string = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        let mut fields = BTreeMap::new();
        for (key, value) in [
            ("NAME", &self.name),
            ("NAMESPACE", &self.namespace),
            ("WORKLOAD_NAME", &self.workload_name),
            ("SERVICE_ACCOUNT", &self.service_account),
            ("CLUSTER_ID", &self.cluster_id),
            ("MESH_ID", &self.mesh_id),
            ("INSTANCE_IPS", &self.instance_ips),
        ] {
            if !value.is_empty() {
                fields.insert(key.to_owned(), string(value));
            }
        }
        if !self.labels.is_empty() {
            let labels = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), string(v)))
                .collect();
            fields.insert(
                "LABELS".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(Struct { fields: labels })),
                },
            );
        }
        Struct { fields }
    }

    /// Reads Istio's keys from a Struct; other keys and values of other kinds are ignored, and
    /// so are values longer than [`MAX_VALUE_LEN`].
    pub fn from_struct(s: &Struct) -> PeerMetadata {
        let text = |v: &Value| match &v.kind {
            Some(Kind::StringValue(s)) if s.len() <= MAX_VALUE_LEN => Some(s.clone()),
            _ => None,
        };
        let get = |key: &str| s.fields.get(key).and_then(text).unwrap_or_default();
        let labels = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(l)) => l
                .fields
                .iter()
                .filter(|(k, _)| k.len() <= MAX_VALUE_LEN)
                .filter_map(|(k, v)| Some((k.clone(), text(v)?)))
                .take(MAX_LABELS)
                .collect(),
            _ => BTreeMap::new(),
        };
        PeerMetadata {
            name: get("NAME"),
            namespace: get("NAMESPACE"),
            workload_name: get("WORKLOAD_NAME"),
            service_account: get("SERVICE_ACCOUNT"),
            cluster_id: get("CLUSTER_ID"),
            mesh_id: get("MESH_ID"),
            labels,
            instance_ips: get("INSTANCE_IPS"),
        }
    }

    /// The `x-envoy-peer-metadata` value: base64 of the serialized Struct.
    pub fn encode(&self) -> String {
        BASE64.encode(self.to_struct().encode_to_vec())
    }

    /// Reads an `x-envoy-peer-metadata` value; none if oversized, not base64 or not a Struct.
    pub fn decode(value: &[u8]) -> Option<PeerMetadata> {
        if value.len() > MAX_METADATA_LEN {
            return None;
        }
        let bytes = BASE64.decode(value).ok()?;
        let s = Struct::decode(bytes.as_slice()).ok()?;
        Some(PeerMetadata::from_struct(&s))
    }
}

/// Istio's node id, the `x-envoy-peer-metadata-id` value.
pub fn node_id(ip: &str, name: &str, namespace: &str) -> String {
    format!("sidecar~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local")
}

/// The header values this proxy sends, encoded once per config.
#[derive(Clone, Debug)]
pub struct LocalHeaders {
    pub id: HeaderValue,
    pub metadata: HeaderValue,
}

impl LocalHeaders {
    pub fn new(meta: &PeerMetadata, ip: &str) -> Option<LocalHeaders> {
        let value = |s: String| {
            HeaderValue::from_str(&s).ok()?;
            Some(HeaderValue::from_static(interned(s)))
        };
        Some(LocalHeaders {
            id: value(node_id(ip, &meta.name, &meta.namespace))?,
            metadata: value(meta.encode())?,
        })
    }

    pub fn insert_into(&self, headers: &mut HeaderMap) {
        headers.insert(PEER_METADATA_ID.clone(), self.id.clone());
        headers.insert(PEER_METADATA.clone(), self.metadata.clone());
    }
}

/// `s`, kept for the life of the process (once per distinct value: a workload's own metadata
/// changes with its config, rarely). Static header values clone without a reference count,
/// which every worker would otherwise bump on every request.
fn interned(s: String) -> &'static str {
    static KEPT: std::sync::Mutex<BTreeMap<String, &'static str>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut kept = KEPT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(k) = kept.get(&s) {
        return k;
    }
    let leaked: &'static str = Box::leak(s.clone().into_boxed_str());
    kept.insert(s, leaked);
    leaked
}

/// Whether a cluster's endpoints are sidecars: mTLS with the mesh's identities.
pub fn is_mesh(cluster: &Cluster) -> bool {
    cluster
        .tls
        .as_ref()
        .is_some_and(|t| t.mode == UpstreamTlsMode::IstioMutual)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real sidecar's response headers (Istio's Bookinfo, `details-v1`), as shown in a public
    /// write-up of a proxy-wasm plugin on Istio 1.5.
    const DETAILS_ID: &str =
        "sidecar~172.16.0.206~details-v1-75d94c48f5-7blxm.default~default.svc.cluster.local";
    const DETAILS_METADATA: &str = "Ch4KDElOU1RBTkNFX0lQUxIOGgwxNzIuMTYuMC4yMDYK1QEKBkxBQkVMUxLKASrHAQoQCgNhcHASCRoHZGV0YWlscwohChFwb2QtdGVtcGxhdGUtaGFzaBIMGgo3NWQ5NGM0OGY1CiQKGXNlY3VyaXR5LmlzdGlvLmlvL3Rsc01vZGUSBxoFaXN0aW8KLAofc2VydmljZS5pc3Rpby5pby9jYW5vbmljYWwtbmFtZRIJGgdkZXRhaWxzCisKI3NlcnZpY2UuaXN0aW8uaW8vY2Fub25pY2FsLXJldmlzaW9uEgQaAnYxCg8KB3ZlcnNpb24SBBoCdjEKGgoHTUVTSF9JRBIPGg1jbHVzdGVyLmxvY2FsCiUKBE5BTUUSHRobZGV0YWlscy12MS03NWQ5NGM0OGY1LTdibHhtChYKCU5BTUVTUEFDRRIJGgdkZWZhdWx0Ck4KBU9XTkVSEkUaQ2t1YmVybmV0ZXM6Ly9hcGlzL2FwcHMvdjEvbmFtZXNwYWNlcy9kZWZhdWx0L2RlcGxveW1lbnRzL2RldGFpbHMtdjEKJQoPU0VSVklDRV9BQ0NPVU5UEhIaEGJvb2tpbmZvLWRldGFpbHMKHQoNV09SS0xPQURfTkFNRRIMGgpkZXRhaWxzLXYx";

    #[test]
    fn reads_a_real_istio_sidecars_metadata() {
        let meta = PeerMetadata::decode(DETAILS_METADATA.as_bytes()).expect("decodes");
        assert_eq!(meta.name, "details-v1-75d94c48f5-7blxm");
        assert_eq!(meta.namespace, "default");
        assert_eq!(meta.workload_name, "details-v1");
        assert_eq!(meta.service_account, "bookinfo-details");
        assert_eq!(meta.mesh_id, "cluster.local");
        assert_eq!(meta.instance_ips, "172.16.0.206");
        assert_eq!(meta.labels["app"], "details");
        assert_eq!(meta.labels["version"], "v1");
        assert_eq!(meta.labels.len(), 6);
        let labels = meta.workload_labels();
        assert_eq!(&*labels.workload, "details-v1");
        assert_eq!((&*labels.app, &*labels.version), ("details", "v1"));
        assert_eq!(
            (&*labels.canonical_service, &*labels.canonical_revision),
            ("details", "v1")
        );
        assert_eq!(
            &*labels.cluster, "unknown",
            "that sidecar sent no CLUSTER_ID"
        );
        assert_eq!(
            node_id("172.16.0.206", &meta.name, &meta.namespace),
            DETAILS_ID
        );
    }

    #[test]
    fn what_we_encode_is_what_istio_encodes() {
        // Istio's Struct has keys it fills that we do not (OWNER, ISTIO_VERSION): dropped,
        // ours encodes the rest the same way, byte for byte (fields in key order).
        let meta = PeerMetadata::decode(DETAILS_METADATA.as_bytes()).unwrap();
        let ours = PeerMetadata::decode(meta.encode().as_bytes()).unwrap();
        assert_eq!(ours, meta, "round trip");
        let mut theirs =
            Struct::decode(BASE64.decode(DETAILS_METADATA).unwrap().as_slice()).unwrap();
        theirs.fields.remove("OWNER");
        assert_eq!(meta.to_struct(), theirs);
        assert_eq!(
            BASE64.decode(meta.encode()).unwrap(),
            theirs.encode_to_vec()
        );
    }

    #[test]
    fn local_metadata_round_trips() {
        let w = Workload {
            name: "reviews-v2-5c8f".into(),
            namespace: "shop".into(),
            workload_name: "reviews-v2".into(),
            service_account: "bookinfo-reviews".into(),
            principal: "spiffe://cluster.local/ns/shop/sa/bookinfo-reviews".into(),
            cluster_id: "Kubernetes".into(),
            labels: [("app", "reviews"), ("version", "v2")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        let local = PeerMetadata::local(&w, "cluster.local");
        let back = PeerMetadata::decode(local.encode().as_bytes()).unwrap();
        assert_eq!(back, local);
        let headers = LocalHeaders::new(&local, "10.0.0.7").unwrap();
        assert_eq!(
            headers.id,
            "sidecar~10.0.0.7~reviews-v2-5c8f.shop~shop.svc.cluster.local"
        );
        let labels = back.workload_labels();
        assert_eq!(&*labels.workload, "reviews-v2");
        assert_eq!(&*labels.cluster, "Kubernetes");
    }

    #[test]
    fn malformed_or_oversized_metadata_is_ignored() {
        assert_eq!(PeerMetadata::decode(b"not base64!"), None);
        // Base64 of bytes that are not a Struct (a field of wire type 7).
        assert_eq!(
            PeerMetadata::decode(BASE64.encode([0x0f, 1]).as_bytes()),
            None
        );
        let big = "A".repeat(MAX_METADATA_LEN + 4);
        assert_eq!(PeerMetadata::decode(big.as_bytes()), None);
        // Unpadded is read too; an empty Struct is a peer that says nothing.
        let unpadded = DETAILS_METADATA.trim_end_matches('=');
        assert!(PeerMetadata::decode(unpadded.as_bytes()).is_some());
        assert_eq!(PeerMetadata::decode(b""), Some(PeerMetadata::default()));
        // Values too long, or not strings, are left out, as are keys of other kinds.
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        let mut s = PeerMetadata {
            name: long.clone(),
            namespace: "ns".into(),
            ..Default::default()
        }
        .to_struct();
        s.fields.insert(
            "WORKLOAD_NAME".into(),
            Value {
                kind: Some(Kind::NumberValue(1.0)),
            },
        );
        let read = PeerMetadata::decode(BASE64.encode(s.encode_to_vec()).as_bytes()).unwrap();
        assert_eq!((read.name.as_str(), read.namespace.as_str()), ("", "ns"));
        assert_eq!(read.workload_name, "");
        assert_eq!(&*read.workload_labels().workload, "unknown");
    }
}
