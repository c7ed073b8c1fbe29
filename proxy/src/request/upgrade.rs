//! Forward, for a request that asks to switch protocols (WebSocket): a connection of its own,
//! then the two upgraded streams spliced together.

use http::request::Parts;
use http::uri::Authority;
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::context::Exchange;
use super::forward::Upstream;
use super::local_reply::LocalReply;
use super::retry::{AttemptError, Tried};
use crate::body::ProxyBody;
use crate::upstream::{self, ActiveRequest};

impl Upstream<'_> {
    /// Forwards an HTTP/1.1 upgrade (WebSocket): a dedicated upstream connection, then the two
    /// upgraded streams are spliced together.
    pub(super) async fn forward_upgrade(
        &self,
        parts: Parts,
        body: ProxyBody,
        authority: Option<Authority>,
        downstream: hyper::upgrade::OnUpgrade,
        ex: &mut Exchange,
    ) -> Result<Response<ProxyBody>, LocalReply> {
        let cluster = &self.route.cluster;
        let Some(mut active) = ActiveRequest::start(cluster) else {
            cluster.stats().rq_overflow.inc();
            return Err(LocalReply::overflow());
        };
        cluster.stats().rq_total.inc();
        let pool = &self
            .pick(&mut Tried::default())
            .ok_or_else(LocalReply::no_healthy_upstream)?;
        active.set_endpoint(pool);
        ex.upstream_host = Some(pool.endpoint().addr);
        let started = Instant::now();
        let mut parts = parts;
        let send = upstream::upgrade(pool, &mut parts, authority.as_ref(), body);
        let sent = match self.route.timeout {
            Some(t) => tokio::time::timeout(t, send)
                .await
                .map_err(|_| LocalReply::upstream_timeout())?,
            None => send.await,
        };
        let mut response =
            sent.map_err(|e| self.failure_reply(AttemptError::from(e), false, ex))?;
        ex.upstream_time = Some(started.elapsed());
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::task::spawn_local(async move {
                let (Ok(up), Ok(down)) = tokio::join!(upstream, downstream) else {
                    return;
                };
                let mut up = hyper_util::rt::TokioIo::new(up);
                let mut down = hyper_util::rt::TokioIo::new(down);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
            ex.active = Some(active);
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, ProxyBody::Empty));
        }
        Ok(self.finish_response(response.map(ProxyBody::Incoming), active, ex))
    }
}
