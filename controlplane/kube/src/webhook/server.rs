//! The webhook's HTTPS server: `POST /inject` (and Istio's `/inject/...` paths) over TLS 1.2
//! or 1.3, HTTP/1.1 or HTTP/2. Whatever a client sends, or fails to send in time, costs it a
//! status code, never the server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{Injector, ServingCertificate};

/// The largest review taken: a pod with room to spare (the API server's own limit on an
/// object is 3 MiB).
pub const MAX_BODY: usize = 4 << 20;
/// How long a client has to finish its TLS handshake, its request's head, and its body.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection lives before it is asked to close, and how long it then has.
const MAX_AGE: Duration = Duration::from_secs(300);
const GRACE: Duration = Duration::from_secs(10);

/// Serves the injector on `listener` until dropped, with `certificate` kept renewed.
pub async fn serve(listener: TcpListener, certificate: ServingCertificate, injector: Injector) {
    let mut tls = rustls::ServerConfig::builder_with_provider(certificate.provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certificate.resolver());
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let injector = Arc::new(injector);
    let renewal = certificate.keep_renewed();
    tokio::pin!(renewal);
    // Connections end with the server: dropping the set aborts them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Never ready: it renews forever.
            () = &mut renewal => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, acceptor.clone(), injector.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, say: wait for connections to close rather
                    // than spin.
                    tracing::warn!(error = %e, "the webhook cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = connections.join_next() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a webhook connection panicked");
                }
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    injector: Arc<Injector>,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let asked = Arc::new(AtomicBool::new(false));
    let service = hyper::service::service_fn({
        let asked = asked.clone();
        move |request| {
            asked.store(true, Ordering::Relaxed);
            let injector = injector.clone();
            async move { Ok::<_, Infallible>(handle(request, &injector).await) }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // Telling HTTP/1 from HTTP/2 waits without a limit, and HTTP/2 has no head timeout: a
    // client that asks nothing in HEAD_TIMEOUT is let go, and any after MAX_AGE (gracefully,
    // with GOAWAY for HTTP/2), given GRACE to finish what it is sending.
    let first_request = tokio::time::sleep(HEAD_TIMEOUT);
    let max_age = tokio::time::sleep(MAX_AGE);
    let grace = tokio::time::sleep(MAX_AGE + GRACE);
    tokio::pin!(first_request, max_age, grace);
    let (mut waiting, mut closing) = (true, false);
    let result = loop {
        let close = tokio::select! {
            result = connection.as_mut() => break result,
            () = &mut first_request, if waiting && !closing => {
                waiting = false;
                !asked.load(Ordering::Relaxed)
            }
            () = &mut max_age, if !closing => true,
            () = &mut grace, if closing => {
                break Err("the client did not finish in time".into());
            }
        };
        if close {
            tracing::debug!(%peer, "closing a webhook connection");
            connection.as_mut().graceful_shutdown();
            grace.as_mut().reset(tokio::time::Instant::now() + GRACE);
            closing = true;
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "webhook connection ended");
    }
}

async fn handle(request: Request<Incoming>, injector: &Injector) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path != "/inject" && !path.starts_with("/inject/") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the injector serves POST /inject",
        );
    }
    if request.method() != Method::POST {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only POST is allowed");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return response;
    }
    let content_type = request.headers().get(header::CONTENT_TYPE);
    if content_type.is_some_and(|t| !t.as_bytes().starts_with(b"application/json")) {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        );
    }
    let too_large = format!("the review is over {MAX_BODY} bytes");
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|l| l.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return text(StatusCode::PAYLOAD_TOO_LARGE, &too_large);
    }
    let body = Limited::new(request.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, &too_large);
        }
        Ok(Err(e)) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "the body came too slowly"),
    };
    match injector.review(&body) {
        Ok(review) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(review.into()))
            .expect("a valid response"),
        Err(e) => {
            tracing::debug!(error = %e, "bad review request");
            text(StatusCode::BAD_REQUEST, &e.to_string())
        }
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(format!("{message}\n").into()))
        .expect("a valid response")
}
