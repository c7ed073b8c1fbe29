//! The wasmesh control-plane API (`proto/wasmesh.proto`), shared by the proxy and the control
//! plane: the generated messages, the `MeshConfig` service proxies call and the `MeshAdmin`
//! service operators call.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("wasmesh.v1");

/// The largest message either side accepts. Snapshots of big meshes are a few hundred KiB;
/// modules travel in chunks of [`MODULE_CHUNK`].
pub const MAX_MESSAGE: usize = 16 << 20;

/// Bytes per `ModuleChunk`.
pub const MODULE_CHUNK: usize = 1 << 20;

/// The services' codec: prost's, with buffers that start at 1 KiB instead of 8 KiB. tonic keeps
/// a stream's encode and decode buffers for the stream's life, and a sidecar's stream carries
/// small messages (snapshots of about a kilobyte, since the bulk travels as shared parts, and
/// ACKs): with the defaults they would be a third of each connection's memory on the control
/// plane. Larger messages grow the buffers as needed.
#[derive(Debug, Clone)]
pub struct ApiCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for ApiCodec<T, U> {
    fn default() -> Self {
        ApiCodec(std::marker::PhantomData)
    }
}

fn buffers() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(1 << 10, 32 << 10)
}

impl<T, U> tonic::codec::Codec for ApiCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Encoder;
    type Decoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(buffers())
    }
}

/// The trust domain when none is configured (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The SPIFFE identity of a workload: `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`,
/// with Kubernetes' `default` account when none is given. Proxies ask for it in their CSRs and
/// the control plane's CA signs nothing else for them.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    let account = if service_account.is_empty() {
        "default"
    } else {
        service_account
    };
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{account}")
}

impl ControlMessage {
    /// The snapshot it carries, if it is one.
    pub fn into_snapshot(self) -> Option<Snapshot> {
        match self.kind {
            Some(control_message::Kind::Snapshot(s)) => Some(s),
            _ => None,
        }
    }
}
