//! Callouts: HTTP and gRPC calls plugins make to configured clusters. The host knows no
//! sockets; the embedder (the proxy, or the test harness) carries the calls out and hands the
//! answers back, on the worker that owns the VM.

use std::rc::Weak;
use std::time::Duration;

use bytes::Bytes;

/// An HTTP call as the plugin asked for it. `headers` carries `:method`, `:path` and
/// `:authority` (and optionally `:scheme`) as pseudo-headers.
#[derive(Clone, Debug)]
pub struct CalloutRequest {
    pub cluster: String,
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    pub trailers: Vec<(Bytes, Bytes)>,
    pub timeout: Duration,
}

impl CalloutRequest {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .map(|(_, v)| v.as_ref())
    }
}

/// An HTTP call's answer; `headers` carries `:status`.
#[derive(Clone, Debug, Default)]
pub struct CalloutResponse {
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    pub trailers: Vec<(Bytes, Bytes)>,
}

/// Why a callout produced no response (the plugin sees zero headers, as in Envoy).
#[derive(Clone, Debug)]
pub enum CalloutFailure {
    Timeout,
    ConnectionFailure(String),
}

/// A unary gRPC call.
#[derive(Clone, Debug)]
pub struct GrpcRequest {
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub initial_metadata: Vec<(Bytes, Bytes)>,
    pub message: Bytes,
    pub timeout: Duration,
}

/// A unary gRPC call's outcome.
#[derive(Clone, Debug, Default)]
pub struct GrpcResponse {
    pub initial_metadata: Vec<(Bytes, Bytes)>,
    pub message: Option<Bytes>,
    pub trailing_metadata: Vec<(Bytes, Bytes)>,
    /// gRPC status code (0 = OK).
    pub status: u32,
    pub status_message: String,
}

/// What the host needs from whoever runs it.
pub trait Embedder {
    /// Whether a callout may target `cluster` (unknown clusters are `BAD_ARGUMENT`, as in Envoy).
    fn cluster_exists(&self, cluster: &str) -> bool;
    /// Starts an HTTP call. `done` must be completed later, never from inside this call.
    fn http_call(&self, request: CalloutRequest, done: CalloutDone);
    /// Starts a unary gRPC call, completed through `done` likewise.
    fn grpc_call(&self, request: GrpcRequest, done: GrpcDone);
    /// Makes load balancing skip an endpoint of a cluster for `millis` (outlier ejection,
    /// `wasmesh.eject_endpoint`). Embedders without endpoints ignore it.
    fn eject_endpoint(&self, cluster: &str, address: &str, millis: u64) {
        let _ = (cluster, address, millis);
    }
}

/// Where a callout's answer goes: the VM that made the call (implemented by `vm::VmCell`).
pub(crate) trait Deliver {
    fn deliver_http_response(&self, token: u32, result: Result<CalloutResponse, CalloutFailure>);
    fn deliver_grpc_response(&self, token: u32, response: GrpcResponse);
}

/// Hands an HTTP call's answer back to the VM that made it.
pub struct CalloutDone {
    pub(crate) vm: Weak<dyn Deliver>,
    pub(crate) token: u32,
}

impl CalloutDone {
    pub fn token(&self) -> u32 {
        self.token
    }

    /// Delivers the answer (`proxy_on_http_call_response` on the calling root context). A VM
    /// replaced or gone meanwhile drops it.
    pub fn complete(self, result: Result<CalloutResponse, CalloutFailure>) {
        if let Some(vm) = self.vm.upgrade() {
            vm.deliver_http_response(self.token, result);
        }
    }
}

/// Hands a gRPC call's outcome back to the VM that made it.
pub struct GrpcDone {
    pub(crate) vm: Weak<dyn Deliver>,
    pub(crate) token: u32,
}

impl GrpcDone {
    pub fn complete(self, response: GrpcResponse) {
        if let Some(vm) = self.vm.upgrade() {
            vm.deliver_grpc_response(self.token, response);
        }
    }
}

/// An embedder for VMs that must not call out (validation, benchmarks): every cluster is
/// unknown, so callouts fail with `BAD_ARGUMENT`.
pub struct NoCallouts;

impl Embedder for NoCallouts {
    fn cluster_exists(&self, _: &str) -> bool {
        false
    }
    fn http_call(&self, _: CalloutRequest, _: CalloutDone) {}
    fn grpc_call(&self, _: GrpcRequest, _: GrpcDone) {}
}
