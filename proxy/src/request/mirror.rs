//! Mirrors: copies of a request sent to other clusters (Istio's `mirror`), their answers
//! discarded.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::prepare::head_copy;
use crate::conn::ConnCtx;
use crate::headers;
use crate::snapshot::Snapshot;
use crate::upstream::{self, Outbound, Protocol, RequestBody};

/// How long a mirrored request may take, its answer included.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends a copy of the request to a mirror cluster, Host suffixed `-shadow` as Istio does; the
/// answer is discarded and never delays the request.
pub(super) fn mirror(
    conn: &ConnCtx,
    snapshot: &Snapshot,
    cluster: &str,
    parts: &Parts,
    authority: Option<&Authority>,
    body: Bytes,
) {
    let Some(cluster) = snapshot.cluster(cluster).cloned() else {
        return;
    };
    let worker = conn.worker.clone();
    let mut head = head_copy(parts);
    let shadow = authority.map(|a| {
        let host = a.host();
        match a.port_u16() {
            Some(port) => format!("{host}-shadow:{port}"),
            None => format!("{host}-shadow"),
        }
    });
    if let Some(h) = shadow
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        head.headers.insert(header::HOST, h);
    }
    let shadow: Option<Authority> = shadow.and_then(|s| s.parse().ok());
    tokio::task::spawn_local(async move {
        let pool = worker.pools.cluster(&cluster);
        let Some(index) = crate::upstream::pick_endpoint(&pool, &[]) else {
            return;
        };
        let endpoint = pool.endpoints[index].clone();
        // The cluster's protocol, as for the request itself: a gRPC cluster's mirror is HTTP/2.
        let protocol = Protocol::of(&cluster, head.version);
        let mut body = RequestBody::whole(body);
        let request = Outbound {
            head: &mut head,
            added: &headers::Added::default(),
            authority: shadow.as_ref(),
            body: &mut body,
            last: true,
        };
        let deadline = Instant::now() + MIRROR_TIMEOUT;
        let send = async {
            let response = upstream::send(&endpoint, protocol, request, Some(deadline)).await;
            if let Ok(response) = response {
                let _ = response.into_body().collect().await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, send).await;
    });
}
