//! What one HTTP stream shares with the filters that see it: its headers, bodies and trailers
//! while filters work on them, its properties, and the requests filters make of the proxy.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, request, response};
use tokio::sync::Notify;
use wasmesh_config::RetryPolicy;

use crate::flags::ResponseFlag;

/// Connection and routing facts the proxy knows about a stream (read by `get_property`).
#[derive(Clone, Debug, Default)]
pub struct StreamInfo {
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    pub connection_id: u64,
    pub protocol: &'static str,
    pub listener: std::sync::Arc<str>,
    /// As the filters named it, or the route's name.
    pub route_name: Bytes,
    pub cluster_name: std::sync::Arc<str>,
    pub upstream_address: Option<SocketAddr>,
    /// Every upstream attempt (retries included): the endpoint and its response status, `0`
    /// when it gave none (connect failure, reset, timeout). For outlier detection.
    pub upstream_attempts: Vec<(SocketAddr, u16)>,
    pub response_flags: u64,

    pub response_code_details: String,
    pub start_time: Option<SystemTime>,
    pub request_size: u64,
    pub response_size: u64,
    pub node_id: std::sync::Arc<str>,
    /// The URI SAN of the client certificate of an mTLS connection (a SPIFFE id).
    pub peer_uri_san: Option<std::sync::Arc<str>>,
}

/// A reply a filter asked the proxy to send instead of going upstream.
#[derive(Clone, Debug)]
pub struct LocalResponse {
    pub status: u16,
    pub body: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// gRPC status for a gRPC reply; `None` for plain HTTP.
    pub grpc_status: Option<u8>,
    pub details: String,
}

/// What wasmesh's host extensions let a filter decide (see `docs/plugin-abi.md`).
#[derive(Clone, Debug, Default)]
pub struct Decisions {
    /// The cluster the request goes to, overriding the static route.
    pub upstream_cluster: Option<String>,
    /// Clusters a copy of the request goes to (shadow traffic).
    pub mirrors: Vec<String>,
    /// Route-level timeout and retries set by a filter (router plugin).
    pub timeout_ms: Option<u64>,
    pub retry_policy: Option<RetryPolicy>,
    /// Headers to add to the response the client gets.
    pub response_headers_to_add: Vec<(String, Bytes)>,
    /// A delay a filter injected before the request continues.
    pub delay_ms: Option<u64>,
    /// Extra response flags (such as `DI`, `FI`, `UO`) a filter reports.
    pub response_flags: Vec<ResponseFlag>,
}

/// The HTTP data of a stream while filters work on it.
#[derive(Default)]
pub(crate) struct StreamData {
    pub(crate) request: Option<request::Parts>,
    pub(crate) request_body: BytesMut,
    pub(crate) request_end: bool,
    pub(crate) request_trailers: Option<HeaderMap>,
    pub(crate) response: Option<response::Parts>,
    pub(crate) response_body: BytesMut,
    pub(crate) response_end: bool,
    pub(crate) response_trailers: Option<HeaderMap>,
    /// Which body is visible to the running body callback.
    pub(crate) body_phase: Option<BodyPhase>,
}

impl StreamData {
    /// The request's or the response's trailers slot.
    pub(crate) fn trailers(&mut self, response: bool) -> &mut Option<HeaderMap> {
        if response {
            &mut self.response_trailers
        } else {
            &mut self.request_trailers
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyPhase {
    Request,
    Response,
}

/// Shared by every filter of one stream (single-threaded: one worker). Embedders reach it
/// through [`crate::StreamDriver`]; its fields are the host's own.
pub struct Stream {
    pub(crate) data: RefCell<StreamData>,
    pub(crate) info: RefCell<StreamInfo>,
    /// Values set with `proxy_set_property` (Envoy's filter state), visible to later filters.
    pub(crate) filter_state: RefCell<FilterState>,
    pub(crate) decisions: RefCell<Decisions>,
    pub(crate) local_response: RefCell<Option<LocalResponse>>,
    /// Set by `proxy_continue_stream`, `proxy_send_local_response` or `proxy_close_stream`.
    pub(crate) resumed: Notify,
    pub(crate) request_resume: Cell<bool>,
    pub(crate) response_resume: Cell<bool>,
    pub(crate) closed: Cell<bool>,
    /// True once a filter's VM failed while serving this stream.
    pub(crate) failed: Cell<bool>,
}

impl Stream {
    pub(crate) fn new(info: StreamInfo) -> Rc<Stream> {
        Rc::new(Stream {
            data: RefCell::default(),
            info: RefCell::new(info),
            filter_state: RefCell::default(),
            decisions: RefCell::default(),
            local_response: RefCell::default(),
            resumed: Notify::new(),
            request_resume: Cell::new(false),
            response_resume: Cell::new(false),
            closed: Cell::new(false),
            failed: Cell::new(false),
        })
    }

    pub(crate) fn wake(&self) {
        self.resumed.notify_one();
    }
}

/// Values filters set with `proxy_set_property`, keyed by the dotted path. A request holds a
/// handful at most, and every later property read looks here first: a short list searched
/// without building the key beats a hash map that needs the joined path allocated per read.
#[derive(Debug, Default)]
pub struct FilterState(Vec<(String, Bytes)>);

impl FilterState {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at a dotted path (`wasmesh.route_name`).
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value at a path given as segments (`["wasmesh", "route_name"]`).
    pub fn get_path(&self, path: &[&str]) -> Option<&Bytes> {
        self.0
            .iter()
            .find(|(k, _)| dotted_eq(k, path))
            .map(|(_, v)| v)
    }

    pub fn insert(&mut self, key: String, value: Bytes) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }
}

/// Whether `key` is `path` joined with dots.
fn dotted_eq(key: &str, path: &[&str]) -> bool {
    let mut rest = key;
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            let Some(r) = rest.strip_prefix('.') else {
                return false;
            };
            rest = r;
        }
        let Some(r) = rest.strip_prefix(segment) else {
            return false;
        };
        rest = r;
    }
    rest.is_empty()
}

impl LocalResponse {
    /// What a plugin's failure answers with when its strategy closes the stream: 503, naming
    /// the plugin.
    pub fn plugin_failed(plugin: &str) -> LocalResponse {
        LocalResponse {
            status: 503,
            body: Bytes::from(format!("plugin {plugin} failed\n")),
            headers: Vec::new(),
            grpc_status: None,
            details: "wasm_fail_stream".into(),
        }
    }

    /// The reply as the client receives it, as Envoy's local-reply path makes it: the length
    /// is always the body's; an empty body goes without a content type, a non-empty one gets
    /// `text/plain` unless the filter gave one. To a gRPC request (`grpc`) a reply with a gRPC
    /// status is a trailers-only `200` carrying `grpc-status` and `grpc-message`.
    pub fn to_response(&self, grpc: bool) -> Result<http::Response<Bytes>, http::Error> {
        let mut builder = http::Response::builder().status(self.status);
        let empty = self.body.is_empty();
        let mut has_type = false;
        for (k, v) in &self.headers {
            let is_type = k.eq_ignore_ascii_case("content-type");
            if k.eq_ignore_ascii_case("content-length") || (empty && is_type) {
                continue;
            }
            has_type |= is_type;
            builder = builder.header(k.as_str(), v.as_ref());
        }
        match (self.grpc_status, grpc) {
            (Some(code), true) => builder
                .status(http::StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", code.to_string())
                .header(
                    "grpc-message",
                    String::from_utf8_lossy(&self.body).replace(['\r', '\n'], " "),
                )
                .body(Bytes::new()),
            _ if empty => builder.body(Bytes::new()),
            _ => {
                if !has_type {
                    builder = builder.header(http::header::CONTENT_TYPE, "text/plain");
                }
                builder
                    .header(http::header::CONTENT_LENGTH, self.body.len())
                    .body(self.body.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_state_is_found_by_segments() {
        let mut state = FilterState::default();
        state.insert("wasmesh.route_name".into(), Bytes::from_static(b"a"));
        state.insert("my.key".into(), Bytes::from_static(b"b"));
        state.insert("wasmesh.route_name".into(), Bytes::from_static(b"c"));
        assert_eq!(state.get("wasmesh.route_name").unwrap(), "c");
        assert_eq!(state.get_path(&["wasmesh", "route_name"]).unwrap(), "c");
        assert_eq!(state.get_path(&["my", "key"]).unwrap(), "b");
        assert!(state.get_path(&["wasmesh", "route"]).is_none());
        assert!(state.get_path(&["wasmesh.route_name"]).is_some());
        assert!(state.get_path(&["my", "key", "x"]).is_none());
        assert!(state.get_path(&["my"]).is_none());
    }
}
