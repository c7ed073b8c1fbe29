//! Connections to endpoints: the one place a byte stream to an upstream is opened, plain TCP
//! or, for a cluster with TLS (mTLS to sidecars), TLS over it. Every protocol runs over a
//! [`Transport`], so nothing above this module knows which.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{Cluster, Endpoint};

/// A connected byte stream to an endpoint.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + 'static {
    /// True if the peer sent nothing and did not close since the last read: a pooled
    /// connection the upstream wrote to while idle must not be reused.
    fn quiet_while_idle(&mut self) -> bool;
}

/// The stream pools hold.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session is some kilobytes, and most streams are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport for Stream {
    /// Looks at the socket: for TLS too, since anything a quiet peer sends (an alert, a
    /// close) arrives there first.
    fn quiet_while_idle(&mut self) -> bool {
        match self {
            Stream::Plain(tcp) => tcp_quiet(tcp),
            Stream::Tls(tls) => tcp_quiet(tls.get_mut().0),
        }
    }
}

/// Costs no system call in the usual case: tokio clears a socket's read readiness when a read
/// leaves it drained, so readiness here means something arrived since.
fn tcp_quiet(tcp: &mut TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match tcp.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            // Readiness may be left over from a read that filled its buffer: look.
            let mut probe = [0u8; 1];
            matches!(
                tcp.try_read(&mut probe),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            )
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens a stream to `endpoint` (TCP, then TLS if the cluster has it) within the cluster's
/// connect timeout, counting the attempt and reporting it to passive health checking.
pub(super) async fn connect(cluster: &Cluster, endpoint: &Endpoint) -> io::Result<Stream> {
    let stats = cluster.stats();
    stats.cx_total.inc();
    let open = async {
        let tcp = TcpStream::connect(endpoint.addr).await?;
        let _ = tcp.set_nodelay(true);
        match &cluster.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => tls
                .connect(tcp)
                .await
                .map(|s| Stream::Tls(Box::new(s)))
                .map_err(|e| io::Error::new(e.kind(), format!("TLS error: {e}"))),
        }
    };
    match tokio::time::timeout(cluster.connect_timeout, open).await {
        Ok(Ok(stream)) => {
            endpoint.report_connect_success();
            Ok(stream)
        }
        Ok(Err(e)) => {
            stats.cx_connect_fail.inc();
            endpoint.report_connect_failure();
            Err(e)
        }
        Err(_) => {
            stats.cx_connect_fail.inc();
            stats.cx_connect_timeout.inc();
            endpoint.report_connect_failure();
            Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))
        }
    }
}
