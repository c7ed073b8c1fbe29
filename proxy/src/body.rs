//! Body types of the proxy. Bodies stream frame by frame; nothing here buffers a whole body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body as it crosses the proxy.
#[derive(Default)]
pub enum ProxyBody {
    #[default]
    Empty,
    Full(Option<Bytes>),
    Incoming(hyper::body::Incoming),
    /// A response read from a pooled HTTP/1.1 upstream connection.
    Upstream(crate::upstream::h1::UpstreamBody<crate::upstream::connect::Stream>),
    /// Anything else: wrappers such as idle timeouts. Worker-local, so it need not be `Send`.
    Boxed(Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>),
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(bytes))
        }
    }

    pub fn boxed(body: impl Body<Data = Bytes, Error = BoxError> + 'static) -> Self {
        ProxyBody::Boxed(Box::pin(body))
    }

    /// True when the rest of the body is already in memory, so reading it cannot stall.
    pub fn is_buffered_whole(&self) -> bool {
        match self {
            ProxyBody::Empty | ProxyBody::Full(_) => true,
            ProxyBody::Upstream(body) => body.is_buffered_whole(),
            other => other.is_end_stream(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Incoming(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            ProxyBody::Boxed(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Incoming(body) => body.is_end_stream(),
            ProxyBody::Upstream(body) => body.is_end_stream(),
            ProxyBody::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Incoming(body) => body.size_hint(),
            ProxyBody::Upstream(body) => body.size_hint(),
            ProxyBody::Boxed(body) => body.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Fails a body that makes no progress for `timeout` (Envoy's stream idle timeout).
    ///
    /// The timer is armed only when the body has to wait, and is not reset per frame: when it
    /// fires after progress was made, it simply starts over. A body whose frames are ready when
    /// polled never touches the timer wheel.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        progressed: bool,
        timeout: std::time::Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, timeout: std::time::Duration) -> Self {
        IdleTimeout {
            inner,
            sleep: None,
            progressed: false,
            timeout,
        }
    }
}

/// The error a body reports when its stream idle timeout fires.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout")]
pub struct StreamIdleTimeout;

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.progressed = true;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = *this.timeout;
        let sleep = this.sleep.get_or_insert_with(|| {
            *this.progressed = false;
            Box::pin(tokio::time::sleep(timeout))
        });
        while sleep.as_mut().poll(cx).is_ready() {
            if !std::mem::take(this.progressed) {
                return Poll::Ready(Some(Err(StreamIdleTimeout.into())));
            }
            sleep.as_mut().reset(tokio::time::Instant::now() + timeout);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
