//! Connections no listener handles, on a transparent sidecar: passed through to their original
//! destination as TCP, as Istio's `PassthroughCluster` (outbound) and
//! `InboundPassthroughCluster` do, so that traffic to destinations outside the mesh, and
//! protocols the proxy does not speak, still flow.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

/// How long connecting to the original destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Copies bytes both ways between `downstream` (a TCP connection, or what a TLS one carries)
/// and a new connection to `destination` (made from `source`, when given) until both sides
/// are done.
pub async fn serve(
    mut downstream: impl AsyncRead + AsyncWrite + Unpin,
    peer: SocketAddr,
    destination: SocketAddr,
    source: Option<IpAddr>,
) {
    let mut upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(destination, source)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, %destination, error = %e, "passthrough connect failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, %destination, "passthrough connect timed out");
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::debug!(%peer, %destination, sent, received, "passthrough closed")
        }
        Err(e) => tracing::debug!(%peer, %destination, error = %e, "passthrough broken"),
    }
}

async fn connect(destination: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = match destination {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(destination).await
}
