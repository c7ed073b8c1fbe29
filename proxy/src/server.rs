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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::config::DownstreamTlsMode;
use crate::conn::{ConnCtx, Transport};
use crate::gateway_tls::Gateway;
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
    let mut original_dst = None;
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
                original_dst = Some(destination);
            }
            None => {
                return pass_through(&worker, listener, stream, peer, destination, source).await;
            }
        }
    }
    let (opts, tls, tcp, gateway) = {
        let snapshot = worker.snapshot();
        let l = &snapshot.bootstrap.listeners[listener];
        (
            l.http.clone(),
            l.tls.as_ref().map(|t| t.mode),
            l.tcp_proxy.as_ref().map(|t| t.cluster.clone()),
            snapshot.gateways[listener].clone(),
        )
    };
    if let Some(cluster) = tcp {
        return crate::tcp_proxy::serve(&worker, listener, &cluster, stream, peer).await;
    }
    let header_timeout = opts.request_headers_timeout.nonzero();
    let conn = |tls, transport| Connection {
        worker: worker.clone(),
        listener,
        peer,
        local,
        original_dst,
        opts: opts.clone(),
        header_timeout,
        tls,
        transport,
    };
    let handshake_timeout =
        header_timeout.map_or(TLS_HANDSHAKE_TIMEOUT, |t| t.min(TLS_HANDSHAKE_TIMEOUT));
    if let Some(gateway) = gateway {
        let deadline = tokio::time::Instant::now() + handshake_timeout;
        match accept_gateway(&worker, listener, stream, peer, &gateway, deadline).await {
            GatewayAccepted::Closed => {}
            GatewayAccepted::Passthrough(cluster, io) => {
                crate::tcp_proxy::serve(&worker, listener, &cluster, io, peer).await
            }
            // Only this proxy says who the client is: a client's x-forwarded-client-cert goes.
            GatewayAccepted::Tls(tls) => {
                conn(Some((None, None)), Transport::GatewayTls)
                    .serve(tls, BytesMut::new())
                    .await
            }
        }
        return;
    }
    let Some(mode) = tls else {
        return conn(None, Transport::Plaintext)
            .serve(stream, BytesMut::new())
            .await;
    };
    match accept(&worker, listener, stream, peer, mode, handshake_timeout).await {
        Accepted::Closed => {}
        Accepted::Plaintext(stream, first) => {
            conn(Some((None, None)), Transport::Plaintext)
                .serve(stream, first)
                .await
        }
        Accepted::Tls(tls) => {
            let certs = tls.get_ref().1.peer_certificates();
            let san = crate::tls::peer_uri_san(certs);
            let xfcc = crate::tls::xfcc(&worker.shared.identity, certs, san.as_deref());
            conn(Some((san, xfcc)), Transport::Mtls)
                .serve(tls, BytesMut::new())
                .await
        }
    }
}

/// The most a ClientHello may take before a gateway listener decides what to do with it.
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// nginx's answer to plaintext HTTP on its HTTPS port.
const PLAIN_HTTP_TO_TLS_PORT: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain\r\n\
content-length: 46\r\n\
connection: close\r\n\
\r\n\
The plain HTTP request was sent to HTTPS port\n";

/// What came of a connection to a gateway listener (`simple`/`mutual` TLS, `sni_routes`).
enum GatewayAccepted {
    /// Refused or failed (counted and logged).
    Closed,
    /// An SNI route's cluster, and the connection with its ClientHello put back.
    Passthrough(String, Rewind<TcpStream>),
    /// Terminated here. Boxed: the TLS state is large.
    Tls(Box<tokio_rustls::server::TlsStream<Rewind<TcpStream>>>),
}

/// Reads the ClientHello (by `deadline`, at most [`MAX_CLIENT_HELLO`]) and, by its SNI,
/// passes the connection through to an SNI route's cluster or completes the handshake with
/// the listener's certificates. Plaintext HTTP gets nginx's `400`.
async fn accept_gateway(
    worker: &Rc<Worker>,
    listener: usize,
    mut stream: TcpStream,
    peer: SocketAddr,
    gateway: &Gateway,
    deadline: tokio::time::Instant,
) -> GatewayAccepted {
    let stats = &worker.shared.listener_stats[listener];
    let hello = tokio::time::timeout_at(deadline, read_client_hello(&mut stream)).await;
    let (read, sni) = match hello {
        Ok(Ok(Hello::Tls { read, sni })) => (read, sni),
        Ok(Ok(Hello::Plaintext)) => {
            stats.shards.local().tls_plaintext_refused.inc();
            tracing::debug!(%peer, "plaintext on a TLS listener: 400, closed");
            refuse_plaintext(stream).await;
            return GatewayAccepted::Closed;
        }
        Ok(Ok(Hello::Refused { reason, alert })) => {
            stats.shards.local().tls_error.inc();
            tracing::debug!(%peer, %reason, "bad ClientHello: closed");
            let _ = tokio::time::timeout_at(deadline, stream.write_all(&alert)).await;
            return GatewayAccepted::Closed;
        }
        Ok(Ok(Hello::Closed)) => return GatewayAccepted::Closed,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection failed before its ClientHello");
            return GatewayAccepted::Closed;
        }
        Err(_) => {
            stats.shards.local().tls_error.inc();
            tracing::debug!(%peer, "no ClientHello within the handshake timeout: closed");
            return GatewayAccepted::Closed;
        }
    };
    let io = Rewind {
        prefix: read,
        inner: stream,
    };
    if let Some(cluster) = sni.as_deref().and_then(|name| gateway.route(name)) {
        tracing::debug!(%peer, sni = sni.as_deref(), cluster, "TLS passed through by SNI");
        return GatewayAccepted::Passthrough(cluster.to_owned(), io);
    }
    let Some(tls) = &gateway.tls else {
        stats.shards.local().tls_error.inc();
        tracing::debug!(
            %peer,
            sni = sni.as_deref(),
            "no sni_route for this server name and no TLS to terminate: closed"
        );
        return GatewayAccepted::Closed;
    };
    let known = tls.has_certificate_for(sni.as_deref());
    let accepted = tokio::time::timeout_at(
        deadline,
        tokio_rustls::TlsAcceptor::from(tls.server_config()).accept(io),
    )
    .await;
    match accepted {
        Ok(Ok(stream)) => {
            stats.shards.local().tls_handshake.inc();
            GatewayAccepted::Tls(Box::new(stream))
        }
        Ok(Err(e)) => {
            stats.shards.local().tls_error.inc();
            if known {
                let mode = tls.mode();
                tracing::debug!(%peer, sni = sni.as_deref(), ?mode, error = %e, "TLS handshake failed");
            } else {
                tracing::debug!(%peer, sni = sni.as_deref(), "no certificate for this server name: handshake refused");
            }
            GatewayAccepted::Closed
        }
        Err(_) => {
            stats.shards.local().tls_error.inc();
            tracing::debug!(%peer, sni = sni.as_deref(), "TLS handshake timed out");
            GatewayAccepted::Closed
        }
    }
}

/// The start of a connection to a gateway listener.
enum Hello {
    /// A whole ClientHello: the bytes read (to replay) and its SNI.
    Tls { read: Bytes, sni: Option<String> },
    /// The first bytes are no TLS record.
    Plaintext,
    /// Not a ClientHello rustls takes, or too large; the alert to send.
    Refused { reason: String, alert: Vec<u8> },
    /// Closed before a whole ClientHello.
    Closed,
}

/// Reads until a whole ClientHello is in, handing a copy to rustls' `Acceptor` to parse (the
/// bytes are kept to replay: to an SNI route's endpoint, or to the real handshake).
async fn read_client_hello(stream: &mut TcpStream) -> io::Result<Hello> {
    let mut read = BytesMut::with_capacity(4096);
    let mut acceptor = rustls::server::Acceptor::default();
    loop {
        let before = read.len();
        if stream.read_buf(&mut read).await? == 0 {
            return Ok(Hello::Closed);
        }
        if before == 0 && !crate::tls::is_client_hello(&read) {
            return Ok(Hello::Plaintext);
        }
        let mut fresh = &read[before..];
        while !fresh.is_empty() {
            if let Err(e) = acceptor.read_tls(&mut fresh) {
                return Ok(Hello::Refused {
                    reason: e.to_string(),
                    alert: Vec::new(),
                });
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok(Hello::Tls {
                    read: read.freeze(),
                    sni,
                });
            }
            Ok(None) => {}
            Err((e, mut alert)) => {
                let mut bytes = Vec::new();
                let _ = alert.write_all(&mut bytes);
                return Ok(Hello::Refused {
                    reason: e.to_string(),
                    alert: bytes,
                });
            }
        }
        if read.len() >= MAX_CLIENT_HELLO {
            return Ok(Hello::Refused {
                reason: format!("no whole ClientHello in {MAX_CLIENT_HELLO} bytes"),
                alert: Vec::new(),
            });
        }
        read.reserve(4096);
    }
}

/// Answers plaintext on a TLS port with nginx's `400`, then closes after reading what the
/// client still sends for a moment (closing with unread bytes would reset the connection
/// before the client read the answer).
async fn refuse_plaintext(mut stream: TcpStream) {
    let wrote = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(PLAIN_HTTP_TO_TLS_PORT).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(wrote, Ok(Ok(()))) {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
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
    let snapshot = worker.snapshot();
    let l = &snapshot.bootstrap.listeners[listener];
    // Istio's BlackHoleCluster (REGISTRY_ONLY): what the mesh does not know goes nowhere.
    if l.original_dst.as_ref().is_some_and(|od| !od.passthrough) {
        tracing::debug!(%peer, %destination, "no listener handles it and passthrough is off: closed");
        return;
    }
    let mode = l.tls.as_ref().map(|t| t.mode);
    drop(snapshot);
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
    /// Where a handed-off connection was going (for `original_dst` clusters).
    original_dst: Option<SocketAddr>,
    opts: crate::config::HttpOptions,
    header_timeout: Option<Duration>,
    /// On an mTLS listener: the client certificate's SPIFFE id and the
    /// `x-forwarded-client-cert` its requests carry (none for plaintext).
    tls: Option<(Option<std::sync::Arc<str>>, Option<http::HeaderValue>)>,
    /// Whether TLS terminated here carries the requests, and which.
    transport: Transport,
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
            original_dst,
            opts,
            header_timeout,
            tls,
            transport,
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
        let mut ctx = ConnCtx::new(worker.clone(), listener, peer, local, opts.clone())
            .with_original_dst(original_dst);
        if let Some((san, xfcc)) = tls {
            ctx = ctx.with_tls(san, xfcc);
        }
        ctx.transport = transport;
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
