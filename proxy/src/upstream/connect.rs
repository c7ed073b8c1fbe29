//! Connections to endpoints: the one place a byte stream to an upstream is opened. Every
//! protocol runs over a [`Transport`]; plain TCP is the one there is today, and TLS (mTLS to
//! sidecars) plugs in here as another, with nothing above this module changing.

use std::io;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{Cluster, Endpoint};

/// A connected byte stream to an endpoint.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + 'static {
    /// True if the peer sent nothing and did not close since the last read: a pooled
    /// connection the upstream wrote to while idle must not be reused.
    fn quiet_while_idle(&mut self) -> bool;
}

/// The stream pools hold. With TLS it becomes an enum of plain and TLS streams.
pub type Stream = TcpStream;

impl Transport for TcpStream {
    /// Costs no system call in the usual case: tokio clears a socket's read readiness when a
    /// read leaves it drained, so readiness here means something arrived since.
    fn quiet_while_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                // Readiness may be left over from a read that filled its buffer: look.
                let mut probe = [0u8; 1];
                matches!(
                    self.try_read(&mut probe),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock
                )
            }
        }
    }
}

/// Opens a stream to `endpoint` within the cluster's connect timeout, counting the attempt
/// and reporting it to passive health checking.
pub(super) async fn connect(cluster: &Cluster, endpoint: &Endpoint) -> io::Result<Stream> {
    let stats = cluster.stats();
    stats.cx_total.inc();
    let result =
        tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(endpoint.addr)).await;
    let stream = match result {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            stats.cx_connect_fail.inc();
            endpoint.report_connect_failure();
            return Err(e);
        }
        Err(_) => {
            stats.cx_connect_fail.inc();
            stats.cx_connect_timeout.inc();
            endpoint.report_connect_failure();
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout"));
        }
    };
    endpoint.report_connect_success();
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
