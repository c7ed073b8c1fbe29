//! Body types of the proxy. Bodies stream frame by frame; nothing here buffers a whole body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body as it crosses the proxy.
pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    Incoming(hyper::body::Incoming),
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
}

impl Default for ProxyBody {
    fn default() -> Self {
        ProxyBody::Empty
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
            ProxyBody::Boxed(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Incoming(body) => body.is_end_stream(),
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
            ProxyBody::Boxed(body) => body.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Fails a body that yields no frame for `timeout` (Envoy's stream idle timeout).
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: tokio::time::Sleep,
        timeout: std::time::Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, timeout: std::time::Duration) -> Self {
        IdleTimeout {
            inner,
            sleep: tokio::time::sleep(timeout),
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
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + *this.timeout;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(StreamIdleTimeout.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
