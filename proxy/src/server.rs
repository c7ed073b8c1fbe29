//! Downstream connections: accept, pick HTTP/1.1 or HTTP/2, serve, time out, drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::config::DownstreamTlsMode;
use crate::conn::ConnCtx;
use crate::h1_guard::H1Guard;
use crate::h2_guard::H2Guard;
use crate::request;
use crate::rt::LocalExec;
use crate::worker::Worker;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accepts connections on one listener until the worker drains.
pub async fn accept_loop(worker: Rc<Worker>, listener_index: usize, listener: TcpListener) {
    let mut drain = worker.shared.drain_signal();
    let shared = &worker.shared;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let stats = shared.listener_stats[listener_index].shards.local();
        let active = &shared.listener_cx_active[listener_index];
        let max = worker.snapshot().bootstrap.listeners[listener_index].max_connections;
        if active.fetch_add(1, Relaxed) >= max {
            active.fetch_sub(1, Relaxed);
            stats.cx_overflow.inc();
            drop(stream);
            continue;
        }
        stats.cx_total.inc();
        let worker = worker.clone();
        tokio::task::spawn_local(async move {
            let _tracked = worker.track_connection();
            serve_connection(worker.clone(), listener_index, stream, peer).await;
            let shared = &worker.shared;
            shared.listener_cx_active[listener_index].fetch_sub(1, Relaxed);
            shared.listener_stats[listener_index]
                .shards
                .local()
                .cx_closed
                .inc();
        });
    }
}

/// How long a TLS handshake may take (at most; a shorter `request_headers_timeout` bounds it
/// too): a client that opens a connection and stalls holds nothing for longer.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_connection(
    worker: Rc<Worker>,
    mut listener: usize,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let mut local = stream.local_addr().unwrap_or(peer);
    // A redirected connection: served by the listener that handles where it was going.
    let passthrough = worker.snapshot().bootstrap.listeners[listener]
        .original_dst
        .as_ref()
        .map(|od| od.passthrough_source);
    if let Some(source) = passthrough {
        let destination = match crate::original_dst::original_dst(&stream) {
            Ok(d) if d != local => d,
            // Not redirected (a client connected here directly): passing it on would loop.
            Ok(_) | Err(_) => {
                tracing::debug!(%peer, %local, "no original destination: closed");
                return;
            }
        };
        let handler = worker.snapshot().handler(listener, destination);
        match handler {
            Some(target) => {
                listener = target;
                local = destination;
            }
            None => {
                return pass_through(&worker, listener, stream, peer, destination, source).await;
            }
        }
    }
    let (opts, tls, tcp) = {
        let snapshot = worker.snapshot();
        let l = &snapshot.bootstrap.listeners[listener];
        (
            l.http.clone(),
            l.tls.as_ref().map(|t| t.mode),
            l.tcp_proxy.as_ref().map(|t| t.cluster.clone()),
        )
    };
    if let Some(cluster) = tcp {
        return crate::tcp_proxy::serve(&worker, listener, &cluster, stream, peer).await;
    }
    let header_timeout = opts.request_headers_timeout.nonzero();
    let conn = |tls| Connection {
        worker: worker.clone(),
        listener,
        peer,
        local,
        opts: opts.clone(),
        header_timeout,
        tls,
    };
    let Some(mode) = tls else {
        return conn(None).serve(stream, BytesMut::new()).await;
    };
    let handshake_timeout =
        header_timeout.map_or(TLS_HANDSHAKE_TIMEOUT, |t| t.min(TLS_HANDSHAKE_TIMEOUT));
    match accept(&worker, listener, stream, peer, mode, handshake_timeout).await {
        Accepted::Closed => {}
        Accepted::Plaintext(stream, first) => conn(Some((None, None))).serve(stream, first).await,
        Accepted::Tls(tls) => {
            let certs = tls.get_ref().1.peer_certificates();
            let san = crate::tls::peer_uri_san(certs);
            let xfcc = crate::tls::xfcc(&worker.shared.identity, certs, san.as_deref());
            conn(Some((san, xfcc))).serve(tls, BytesMut::new()).await
        }
    }
}

/// A redirected connection no listener handles, passed through to its original destination
/// (from `source`, when given). Under the listener's PeerAuthentication mode, as Istio's
/// inbound passthrough chains: STRICT takes mTLS only, PERMISSIVE mTLS or plaintext; mTLS is
/// terminated here and what it carries goes on as plain TCP.
async fn pass_through(
    worker: &Rc<Worker>,
    listener: usize,
    stream: TcpStream,
    peer: SocketAddr,
    destination: SocketAddr,
    source: Option<std::net::IpAddr>,
) {
    let mode = worker.snapshot().bootstrap.listeners[listener]
        .tls
        .as_ref()
        .map(|t| t.mode);
    let Some(mode) = mode else {
        return crate::passthrough::serve(stream, peer, destination, source).await;
    };
    match accept(worker, listener, stream, peer, mode, TLS_HANDSHAKE_TIMEOUT).await {
        Accepted::Closed => {}
        Accepted::Plaintext(stream, first) => {
            let io = Rewind {
                prefix: first.freeze(),
                inner: stream,
            };
            crate::passthrough::serve(io, peer, destination, source).await
        }
        Accepted::Tls(tls) => crate::passthrough::serve(tls, peer, destination, source).await,
    }
}

/// What came of a connection to a listener that takes mTLS.
enum Accepted {
    /// Refused or failed (counted and logged).
    Closed,
    /// Plaintext on a PERMISSIVE listener, with the bytes read to tell.
    Plaintext(TcpStream, BytesMut),
    /// Boxed: the TLS state is large, the other variants small.
    Tls(Box<tokio_rustls::server::TlsStream<Rewind<TcpStream>>>),
}

/// Reads the first bytes to tell a TLS ClientHello from plaintext, and completes the mTLS
/// handshake (the client's certificate verified against the trust bundle) or, on a
/// PERMISSIVE listener, lets plaintext through; STRICT closes plaintext.
async fn accept(
    worker: &Rc<Worker>,
    listener: usize,
    mut stream: TcpStream,
    peer: SocketAddr,
    mode: DownstreamTlsMode,
    handshake_timeout: Duration,
) -> Accepted {
    let stats = &worker.shared.listener_stats[listener];
    let mut first = BytesMut::with_capacity(4096);
    match tokio::time::timeout(handshake_timeout, stream.read_buf(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Accepted::Closed,
    }
    if !crate::tls::is_client_hello(&first) {
        if mode == DownstreamTlsMode::Strict {
            stats.shards.local().tls_plaintext_refused.inc();
            tracing::debug!(%peer, "plaintext on a STRICT mTLS listener: closed");
            return Accepted::Closed;
        }
        return Accepted::Plaintext(stream, first);
    }
    let config = match worker.shared.tls.server_config() {
        Ok(c) => c,
        Err(e) => {
            stats.shards.local().tls_error.inc();
            tracing::warn!(%peer, error = %e, "cannot accept mTLS");
            return Accepted::Closed;
        }
    };
    let io = Rewind {
        prefix: first.freeze(),
        inner: stream,
    };
    let accepted = tokio::time::timeout(
        handshake_timeout,
        tokio_rustls::TlsAcceptor::from(config).accept(io),
    )
    .await;
    match accepted {
        Ok(Ok(tls)) => {
            stats.shards.local().tls_handshake.inc();
            Accepted::Tls(Box::new(tls))
        }
        Ok(Err(e)) => {
            stats.shards.local().tls_error.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            Accepted::Closed
        }
        Err(_) => {
            stats.shards.local().tls_error.inc();
            tracing::debug!(%peer, "TLS handshake timed out");
            Accepted::Closed
        }
    }
}

/// One downstream connection about to be served over HTTP.
struct Connection {
    worker: Rc<Worker>,
    listener: usize,
    peer: SocketAddr,
    local: SocketAddr,
    opts: crate::config::HttpOptions,
    header_timeout: Option<Duration>,
    /// On an mTLS listener: the client certificate's SPIFFE id and the
    /// `x-forwarded-client-cert` its requests carry (none for plaintext).
    tls: Option<(Option<std::sync::Arc<str>>, Option<http::HeaderValue>)>,
}

impl Connection {
    /// Serves HTTP/1.1 or HTTP/2 on `stream`, whose first bytes (if any were read) are in
    /// `read`.
    async fn serve<S>(self, mut stream: S, read: BytesMut)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            worker,
            listener,
            peer,
            local,
            opts,
            header_timeout,
            tls,
        } = self;
        let sniffed = match header_timeout {
            Some(t) => tokio::time::timeout(t, sniff(&mut stream, read))
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            None => sniff(&mut stream, read).await,
        };
        let Ok((is_h2, prefix)) = sniffed else { return };
        let io = Rewind {
            prefix,
            inner: stream,
        };
        let mut ctx = ConnCtx::new(worker.clone(), listener, peer, local, opts.clone());
        if let Some((san, xfcc)) = tls {
            ctx = ctx.with_tls(san, xfcc);
        }
        let ctx = Rc::new(ctx);
        worker.register_connection(&ctx);
        let service = {
            let ctx = ctx.clone();
            service_fn(move |req| request::serve(req, ctx.clone()))
        };
        if is_h2 {
            let flooded = ctx.clone();
            let io = H2Guard::new(io, move || {
                let stats = &flooded.worker.shared.listener_stats[flooded.listener];
                stats.shards.local().cx_control_frame_flood.inc();
                flooded.request_shutdown();
            });
            let conn = http2::Builder::new(LocalExec)
                .timer(TokioTimer::new())
                .max_concurrent_streams(opts.max_concurrent_streams)
                .max_header_list_size(opts.max_request_headers_kb * 1024)
                .max_pending_accept_reset_streams(opts.max_pending_accept_reset_streams as usize)
                .max_local_error_reset_streams(1024)
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(4 << 20)
                .serve_connection(TokioIo::new(io), service);
            drive(conn, &ctx, |c| c.graceful_shutdown()).await;
        } else {
            let max_head = opts.max_request_headers_kb as usize * 1024;
            let stats = worker.shared.listener_stats[listener].clone();
            let guard = H1Guard::new(io, max_head + 1024, header_timeout)
                .with_switch_watch(ctx.switch.clone())
                .on_reject(move |_| stats.shards.local().rq_rejected.inc());
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_header_size(max_head)
                .max_buf_size(max_head.max(8192) + 64 * 1024)
                .keep_alive(true);
            if opts.max_headers_count != 100 {
                // hyper keeps the default of 100 on the stack; other values allocate per request.
                builder.max_headers(opts.max_headers_count as usize);
            }
            let conn = builder
                .serve_connection(TokioIo::new(guard), service)
                .with_upgrades();
            drive(conn, &ctx, |c| c.graceful_shutdown()).await;
        }
    }
}

/// Runs a connection to its end. The worker asks it to shut down gracefully (on drain, or
/// when it sat idle past `idle_timeout`) through its [`ConnCtx`]; nothing else is polled per
/// wake-up, so a busy connection pays for no timers.
async fn drive<C>(conn: C, ctx: &ConnCtx, shutdown: impl Fn(Pin<&mut C>))
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    let result = std::future::poll_fn(|cx| {
        if !shutting_down && ctx.shutdown_requested() {
            shutting_down = true;
            shutdown(conn.as_mut());
        }
        ctx.set_waker(cx.waker());
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, peer = %ctx.peer, "downstream connection error");
    }
}

/// Reads the first bytes (after those already in `buf`) to tell an HTTP/2 prior-knowledge
/// preface from HTTP/1.
async fn sniff<S>(stream: &mut S, mut buf: BytesMut) -> io::Result<(bool, Bytes)>
where
    S: AsyncRead + Unpin,
{
    buf.reserve(4096);
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((false, buf.freeze()));
        }
        if n == H2_PREFACE.len() {
            return Ok((true, buf.freeze()));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A stream with bytes already read put back in front.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
