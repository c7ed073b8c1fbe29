//! Opaque TCP to a cluster (Envoy's `tcp_proxy`): each connection of a `tcp_proxy` listener
//! goes to an endpoint load balancing picks (TLS to it where the cluster has it: auto mTLS to
//! a sidecar), and bytes are copied both ways until both sides are done. A TCP service of the
//! mesh (a port of protocol TCP) reached at its address is served so.

use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::stats::ResponseFlag;
use crate::telemetry::metrics::{Counted, TcpTracker};
use crate::upstream::pick_endpoint;
use crate::worker::Worker;

/// Proxies `downstream` (from `peer`, accepted on `listener`) to an endpoint of `cluster`.
/// What was read of it already (a ClientHello routed by its SNI) is in front of it.
pub async fn serve<S>(
    worker: &Rc<Worker>,
    listener: usize,
    cluster: &str,
    downstream: S,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(cluster) = worker.snapshot().cluster(cluster).cloned() else {
        tracing::debug!(%peer, cluster, "tcp_proxy: no such cluster");
        return;
    };
    let pool = worker.pools.cluster(&cluster);
    let Some(index) = pick_endpoint(&pool, &[]) else {
        tracing::debug!(%peer, cluster = %cluster.name, "tcp_proxy: no endpoint");
        TcpTracker::failed(worker, listener, &cluster, ResponseFlag::NoHealthyUpstream);
        return;
    };
    let endpoint = pool.endpoints[index].clone();
    let (mut upstream, _counted) = match endpoint.connect_tcp().await {
        Ok(connected) => connected,
        Err(e) => {
            tracing::debug!(%peer, cluster = %cluster.name, error = %e, "tcp_proxy: no connection");
            let flag = ResponseFlag::UpstreamConnectionFailure;
            TcpTracker::failed(worker, listener, &cluster, flag);
            return;
        }
    };
    // Istio's TCP metrics count the bytes as they pass the downstream side.
    let tracker = TcpTracker::open(worker, listener, &cluster, Default::default());
    let mut downstream = Counted::new(downstream, tracker);
    match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::debug!(%peer, cluster = %cluster.name, sent, received, "tcp_proxy closed")
        }
        Err(e) => tracing::debug!(%peer, cluster = %cluster.name, error = %e, "tcp_proxy broken"),
    }
}
