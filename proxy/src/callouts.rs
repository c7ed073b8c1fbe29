//! Plugin callouts (`proxy_http_call`, `proxy_grpc_call`, outlier ejection) carried out
//! through the pools of the worker whose VMs made them.

use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, Version};
use http_body_util::BodyExt;
use wasmesh_host::{
    CalloutDone, CalloutFailure, CalloutRequest, CalloutResponse, Embedder, GrpcDone, GrpcRequest,
    GrpcResponse,
};

use crate::headers::Added;
use crate::upstream::{self, Outbound, Protocol, RequestBody, pick_endpoint};
use crate::worker::Worker;

/// Largest callout response body a plugin receives.
const CALLOUT_BODY_LIMIT: usize = 4 << 20;

/// A callout's timeout: `0` (none given) is 60 s.
fn or_default(timeout: Duration) -> Duration {
    if timeout.is_zero() {
        Duration::from_secs(60)
    } else {
        timeout
    }
}

/// Carries out a worker's plugin callouts through that worker's pools.
pub struct ProxyEmbedder {
    pub worker: Weak<Worker>,
}

impl Embedder for ProxyEmbedder {
    fn eject_endpoint(&self, cluster: &str, address: &str, millis: u64) {
        let Some(worker) = self.worker.upgrade() else {
            return;
        };
        let Ok(address) = address.parse::<std::net::SocketAddr>() else {
            return;
        };
        let snapshot = worker.snapshot();
        if let Some(c) = snapshot.cluster(cluster)
            && let Some(e) = c.endpoints_now().iter().find(|e| e.addr == address)
        {
            e.eject_until(crate::upstream::now_ms() + millis);
        }
    }

    fn cluster_exists(&self, cluster: &str) -> bool {
        self.worker
            .upgrade()
            .is_some_and(|w| w.snapshot().cluster(cluster).is_some())
    }

    fn http_call(&self, request: CalloutRequest, done: CalloutDone) {
        let worker = self.worker.clone();
        tokio::task::spawn_local(async move {
            let Some(worker) = worker.upgrade() else {
                return;
            };
            let timeout = or_default(request.timeout);
            let result = match tokio::time::timeout(timeout, http_callout(&worker, request)).await {
                Ok(r) => r,
                Err(_) => Err(CalloutFailure::Timeout),
            };
            done.complete(result);
        });
    }

    fn grpc_call(&self, request: GrpcRequest, done: GrpcDone) {
        let worker = self.worker.clone();
        tokio::task::spawn_local(async move {
            let Some(worker) = worker.upgrade() else {
                return;
            };
            let timeout = or_default(request.timeout);
            let response = match tokio::time::timeout(timeout, grpc_callout(&worker, request)).await
            {
                Ok(r) => r,
                Err(_) => GrpcResponse {
                    status: 4,
                    status_message: "deadline exceeded".into(),
                    ..Default::default()
                },
            };
            done.complete(response);
        });
    }
}

/// Sends one request to `cluster` through the upstream entry point and reads the whole
/// response.
async fn exchange(
    worker: &Rc<Worker>,
    cluster_name: &str,
    request: Request<Bytes>,
    grpc: bool,
) -> Result<(http::response::Parts, Bytes, Option<http::HeaderMap>), CalloutFailure> {
    let snapshot = worker.snapshot();
    let cluster = snapshot.cluster(cluster_name).ok_or_else(|| {
        CalloutFailure::ConnectionFailure(format!("unknown cluster {cluster_name}"))
    })?;
    let pool = worker.pools.cluster(cluster);
    let index = pick_endpoint(&pool, &[])
        .ok_or_else(|| CalloutFailure::ConnectionFailure("no endpoint".into()))?;
    let endpoint = pool.endpoints[index].clone();
    let fail = |e: String| CalloutFailure::ConnectionFailure(e);
    // gRPC needs HTTP/2 whatever the cluster says; else the cluster's protocol decides.
    let protocol = match grpc {
        true => Protocol::Http2,
        false => Protocol::of(cluster, Version::HTTP_11),
    };
    let (mut head, body) = request.into_parts();
    let authority = head.uri.authority().cloned();
    let mut body = RequestBody::whole(body);
    let request = Outbound {
        head: &mut head,
        added: &Added::default(),
        authority: authority.as_ref(),
        body: &mut body,
        last: true,
    };
    let response = upstream::send(&endpoint, protocol, request, None)
        .await
        .map_err(|e| fail(format!("{e:?}")))?;
    let (parts, mut body) = response.into_parts();
    let mut data = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(e.to_string()))?;
        match frame.into_data() {
            Ok(d) => {
                if data.len() + d.len() > CALLOUT_BODY_LIMIT {
                    return Err(fail("callout response body too large".into()));
                }
                data.extend_from_slice(&d);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((parts, data.freeze(), trailers))
}

fn pairs(map: &http::HeaderMap) -> Vec<(Bytes, Bytes)> {
    map.iter()
        .map(|(k, v)| {
            (
                Bytes::copy_from_slice(k.as_str().as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            )
        })
        .collect()
}

async fn http_callout(
    worker: &Rc<Worker>,
    call: CalloutRequest,
) -> Result<CalloutResponse, CalloutFailure> {
    let pseudo = |name: &str| {
        call.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let method = pseudo(":method").unwrap_or_else(|| "GET".into());
    let path = pseudo(":path").unwrap_or_else(|| "/".into());
    let authority = pseudo(":authority").unwrap_or_default();
    let bad = |e: String| CalloutFailure::ConnectionFailure(e);
    let mut builder = Request::builder().method(method.as_str()).uri(
        Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path.as_str())
            .build()
            .map_err(|e| bad(e.to_string()))?,
    );
    for (k, v) in &call.headers {
        if !k.starts_with(b":") {
            builder = builder.header(k.as_ref(), v.as_ref());
        }
    }
    let request = builder
        .body(call.body.clone())
        .map_err(|e| bad(e.to_string()))?;
    let (parts, body, trailers) = exchange(worker, &call.cluster, request, false).await?;
    let mut headers = vec![(
        Bytes::from_static(b":status"),
        Bytes::copy_from_slice(parts.status.as_str().as_bytes()),
    )];
    headers.extend(pairs(&parts.headers));
    Ok(CalloutResponse {
        headers,
        body,
        trailers: trailers.as_ref().map(pairs).unwrap_or_default(),
    })
}

async fn grpc_callout(worker: &Rc<Worker>, call: GrpcRequest) -> GrpcResponse {
    let failed = |status: u32, msg: String| GrpcResponse {
        status,
        status_message: msg,
        ..Default::default()
    };
    let mut framed = Vec::with_capacity(5 + call.message.len());
    framed.push(0);
    framed.extend_from_slice(&(call.message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&call.message);
    let uri = format!("http://{}/{}/{}", call.cluster, call.service, call.method);
    let mut builder = Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in &call.initial_metadata {
        builder = builder.header(k.as_ref(), v.as_ref());
    }
    let Ok(request) = builder.body(Bytes::from(framed)) else {
        return failed(13, "bad metadata".into());
    };
    match exchange(worker, &call.cluster, request, true).await {
        Err(e) => failed(14, format!("{e:?}")),
        Ok((parts, body, trailers)) => {
            let source = trailers.as_ref().unwrap_or(&parts.headers);
            let status = source
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(2);
            let status_message = source
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let message = (body.len() >= 5).then(|| body.slice(5..));
            GrpcResponse {
                initial_metadata: pairs(&parts.headers),
                message,
                trailing_metadata: trailers.as_ref().map(pairs).unwrap_or_default(),
                status,
                status_message,
            }
        }
    }
}
