//! Mirrors: copies of a request sent to other clusters (Istio's `mirror`), their answers
//! discarded.

use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http_body_util::BodyExt;

use super::filters::head_copy;
use super::forward::{send_h2, upstream_request};
use crate::body::ProxyBody;
use crate::config::UpstreamProtocol;
use crate::headers;
use crate::server::ConnCtx;
use crate::snapshot::Snapshot;

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
        let Some(index) = crate::upstream::pick_endpoint(&cluster, &pool.rr, &[]) else {
            return;
        };
        let endpoint = pool.endpoints[index].clone();
        let h2 = match cluster.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Downstream => head.version == Version::HTTP_2,
        };
        let send = async {
            if h2 {
                // The cluster speaks HTTP/2 (gRPC, say): so does its mirror.
                let req = upstream_request(
                    &mut head,
                    shadow.as_ref(),
                    ProxyBody::full(body),
                    true,
                    &endpoint,
                    true,
                );
                let response = send_h2(&endpoint, req).await.ok()?;
                let _ = response.into_body().collect().await;
                return Some(());
            }
            let conn = endpoint.acquire_h1(None).await.ok()?;
            let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
            let response = conn
                .send(
                    &head.method,
                    target,
                    &head.headers,
                    &headers::Added::default(),
                    shadow.as_ref(),
                    ProxyBody::full(body),
                )
                .await
                .ok()?;
            let _ = response.into_body().collect().await;
            Some(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), send).await;
    });
}
