//! The one way a request reaches an upstream. Forwarding (each attempt of it), mirrors,
//! plugin callouts and protocol upgrades all send through [`send`] (or [`upgrade`]): the
//! cluster's protocol decides HTTP/1.1 (the proxy's own client, [`super::h1`]) or HTTP/2
//! (hyper's, one shared connection per endpoint and worker), and every connection is opened
//! by [`super::connect`].

use std::rc::Rc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Cluster;
use super::h1::{ClientError, Outgoing};
use super::pool::{AcquireError, EndpointPool};
use crate::body::{BoxError, ProxyBody};
use crate::config::UpstreamProtocol;
use crate::headers::Added;

/// The protocol a request goes upstream in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    /// The protocol for a request that arrived as `version`: the cluster's, or the
    /// downstream's for a `downstream` cluster.
    pub fn of(cluster: &Cluster, version: Version) -> Protocol {
        match cluster.protocol {
            UpstreamProtocol::Http1 => Protocol::Http1,
            UpstreamProtocol::Http2 => Protocol::Http2,
            UpstreamProtocol::Downstream if version == Version::HTTP_2 => Protocol::Http2,
            // Never routed to (the config refuses it); HTTP/1.1 if it were.
            UpstreamProtocol::Downstream | UpstreamProtocol::Tcp => Protocol::Http1,
        }
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    Acquire(AcquireError),
    /// The request failed after it was handed to a connection; `refused` if the upstream
    /// cannot have processed it.
    Reset {
        refused: bool,
        error: BoxError,
    },
    /// The upstream's response broke HTTP framing or syntax.
    Protocol(BoxError),
    /// The request body failed (the client's framing broke, it stalled or went away, or a
    /// filter made it disagree with its declared length).
    RequestBody(BoxError),
    /// The deadline passed.
    Timeout,
}

/// A request body, kept for sending again when it is small enough.
pub enum RequestBody {
    /// Whole in memory: every attempt sends a copy.
    Replayable(Option<Bytes>),
    /// Streams once; back in the slot if an attempt failed before reading it.
    Streaming(Option<ProxyBody>),
}

impl RequestBody {
    pub fn whole(bytes: Bytes) -> RequestBody {
        RequestBody::Replayable((!bytes.is_empty()).then_some(bytes))
    }

    fn take(&mut self) -> ProxyBody {
        match self {
            RequestBody::Replayable(None) => ProxyBody::Empty,
            RequestBody::Replayable(Some(b)) => ProxyBody::Full(Some(b.clone())),
            RequestBody::Streaming(body) => body.take().unwrap_or_default(),
        }
    }

    fn put_back(&mut self, body: ProxyBody) {
        if let RequestBody::Streaming(slot) = self {
            *slot = Some(body);
        }
    }

    /// Whether another attempt can send the body.
    pub fn can_replay(&self) -> bool {
        !matches!(self, RequestBody::Streaming(None))
    }
}

/// One request as it goes to an endpoint.
pub struct Outbound<'a> {
    pub head: &'a mut Parts,
    /// Headers the proxy adds (see [`Added`]): an HTTP/1.1 upstream gets them written after
    /// the head's; for HTTP/2 they must already be in the head.
    pub added: &'a Added,
    /// The authority routed on: `:authority` for HTTP/2, `Host` when the head has none.
    pub authority: Option<&'a Authority>,
    pub body: &'a mut RequestBody,
    /// No attempt follows: the head may be moved out instead of copied.
    pub last: bool,
}

/// Sends a request to an endpoint and returns the response head with its body streaming,
/// within `deadline`. Each protocol's exchange is awaited directly under the deadline: a
/// further async block around it would be one more state machine every poll passes through.
pub async fn send(
    endpoint: &Rc<EndpointPool>,
    protocol: Protocol,
    request: Outbound<'_>,
    deadline: Option<Instant>,
) -> Result<Response<ProxyBody>, SendError> {
    let timed_out = |_| Err(SendError::Timeout);
    match (protocol, deadline) {
        (Protocol::Http1, Some(d)) => {
            let exchange = send_h1(endpoint, request, deadline);
            tokio::time::timeout_at(d, exchange)
                .await
                .unwrap_or_else(timed_out)
        }
        (Protocol::Http1, None) => send_h1(endpoint, request, None).await,
        // Boxed so the HTTP/2 path's state does not enlarge every HTTP/1 request.
        (Protocol::Http2, Some(d)) => {
            let exchange = Box::pin(send_h2(endpoint, request));
            tokio::time::timeout_at(d, exchange)
                .await
                .unwrap_or_else(timed_out)
        }
        (Protocol::Http2, None) => Box::pin(send_h2(endpoint, request)).await,
    }
}

async fn send_h1(
    endpoint: &Rc<EndpointPool>,
    request: Outbound<'_>,
    deadline: Option<Instant>,
) -> Result<Response<ProxyBody>, SendError> {
    let Outbound {
        head,
        added,
        authority,
        body,
        ..
    } = request;
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    loop {
        let conn = endpoint
            .acquire_h1(deadline)
            .await
            .map_err(SendError::Acquire)?;
        let reused = conn.uses > 0;
        let sent = conn
            .send(
                &head.method,
                target,
                &head.headers,
                added,
                authority,
                outgoing(body.take()),
            )
            .await;
        let e = match sent {
            Ok(response) => return Ok(response.map(ProxyBody::Upstream)),
            Err(e) => e,
        };
        let not_sent = e.body.is_some();
        if let Some(b) = e.body {
            body.put_back(incoming(b));
        }
        // A pooled connection the server closed while it sat idle: the request was not
        // processed, so it goes out again on another connection without counting as a retry.
        if reused && e.before_response && body.can_replay() {
            continue;
        }
        return Err(match e.error {
            ClientError::Invalid(_) => SendError::Protocol(e.error.into()),
            ClientError::RequestBody(error) => SendError::RequestBody(error),
            ClientError::BodyLength(_) => SendError::RequestBody(e.error.into()),
            error => SendError::Reset {
                refused: not_sent,
                error: error.into(),
            },
        });
    }
}

/// One request over the worker's multiplexed HTTP/2 connection to the endpoint.
async fn send_h2(
    endpoint: &Rc<EndpointPool>,
    request: Outbound<'_>,
) -> Result<Response<ProxyBody>, SendError> {
    let req = upstream_request(
        request.head,
        request.authority,
        request.body.take(),
        Protocol::Http2,
        endpoint,
        request.last,
    );
    let mut sender = endpoint.acquire_h2().await.map_err(SendError::Acquire)?;
    sender.ready().await.map_err(|error| SendError::Reset {
        refused: true,
        error: error.into(),
    })?;
    match sender.send_request(req).await {
        Ok(response) => Ok(response.map(ProxyBody::Incoming)),
        Err(error) => Err(SendError::Reset {
            refused: is_refused_stream(&error),
            error: error.into(),
        }),
    }
}

/// Sends a request that asks to switch protocols (WebSocket) on a connection of its own,
/// never pooled: on `101` the caller takes the upgraded stream with `hyper::upgrade::on`.
pub async fn upgrade(
    endpoint: &Rc<EndpointPool>,
    head: &mut Parts,
    authority: Option<&Authority>,
    body: ProxyBody,
) -> Result<Response<Incoming>, SendError> {
    let mut sender = endpoint
        .connect_for_upgrade()
        .await
        .map_err(SendError::Acquire)?;
    // The request's own body (rare, but legal) goes with it.
    let req = upstream_request(head, authority, body, Protocol::Http1, endpoint, true);
    let response = sender.send_request(req).await.map_err(|error| {
        if error.is_user() {
            SendError::RequestBody(error.into())
        } else {
            SendError::Reset {
                refused: false,
                error: error.into(),
            }
        }
    })?;
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING)
    {
        // hyper's client frames by the chunking and would pass the length on.
        return Err(SendError::Protocol(
            "both content-length and transfer-encoding".into(),
        ));
    }
    Ok(response)
}

/// The h1 client's view of a body: empty, whole (written with the head) or streaming.
fn outgoing(body: ProxyBody) -> Outgoing<ProxyBody> {
    match body {
        ProxyBody::Empty | ProxyBody::Full(None) => Outgoing::Empty,
        ProxyBody::Full(Some(bytes)) if bytes.is_empty() => Outgoing::Empty,
        ProxyBody::Full(Some(bytes)) => Outgoing::Whole(bytes),
        body => Outgoing::Stream(body),
    }
}

fn incoming(body: Outgoing<ProxyBody>) -> ProxyBody {
    match body {
        Outgoing::Empty => ProxyBody::Empty,
        Outgoing::Whole(bytes) => ProxyBody::Full(Some(bytes)),
        Outgoing::Stream(body) => body,
    }
}

/// Builds the request for one attempt. On the last possible attempt the headers are moved
/// instead of copied.
fn upstream_request(
    parts: &mut Parts,
    authority: Option<&Authority>,
    body: ProxyBody,
    protocol: Protocol,
    pool: &EndpointPool,
    last_possible: bool,
) -> Request<ProxyBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = if last_possible {
        std::mem::take(&mut parts.headers)
    } else {
        parts.headers.clone()
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if protocol == Protocol::Http2 {
        *req.version_mut() = Version::HTTP_2;
        let authority = authority.cloned().unwrap_or_else(|| {
            Authority::try_from(pool.endpoint().addr.to_string().as_str())
                .expect("an address is an authority")
        });
        req.headers_mut().remove(header::HOST);
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
    } else {
        *req.version_mut() = Version::HTTP_11;
        *req.uri_mut() = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
            parts.uri.clone()
        } else {
            Uri::from(path)
        };
        if let Some(a) = authority
            && !req.headers().contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req
}

fn is_refused_stream(e: &hyper::Error) -> bool {
    use std::error::Error;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}
