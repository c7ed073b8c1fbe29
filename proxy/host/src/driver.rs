//! The one way an embedder runs a stream through a chain: a head goes in, a phase runs (its
//! pauses waited out), the head comes back out with the filters' changes, and what the
//! filters decided is read from [`StreamDriver::decisions`]. The proxy, the SDK's test
//! harness and `wasmesh bench` all drive filters through this, so a filter's harness tests
//! run the proxy's own flow.

use std::cell::{Ref, RefCell, RefMut};
use std::rc::Rc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, request, response};

use crate::chain::{BodyStep, Chain, FilterStream, HeadersStep, Verdict};
use crate::stream::{Decisions, FilterState, LocalResponse, Stream, StreamInfo};

/// One stream through one chain.
pub struct StreamDriver {
    filters: RefCell<FilterStream>,
    stream: Rc<Stream>,
}

impl StreamDriver {
    pub fn new(chain: &Rc<Chain>, info: StreamInfo) -> Rc<StreamDriver> {
        let stream = Stream::new(info);
        let filters = RefCell::new(chain.stream(stream.clone()));
        Rc::new(StreamDriver { filters, stream })
    }

    /// What the filters decided so far (cluster, timeout, retries, mirrors, flags, ...).
    pub fn decisions(&self) -> Ref<'_, Decisions> {
        self.stream.decisions.borrow()
    }

    /// The filters' state (`wasmesh.route_name` and what filters set).
    pub fn filter_state(&self) -> Ref<'_, FilterState> {
        self.stream.filter_state.borrow()
    }

    /// What the filters read as the stream's properties; the embedder fills in what it learns
    /// (route, cluster, upstream, sizes).
    pub fn info(&self) -> RefMut<'_, StreamInfo> {
        self.stream.info.borrow_mut()
    }

    /// `on_request_headers` through the chain. `head` comes back with the filters' changes.
    /// When the phase ends the request (a reply, a failure, a reset) a copy of the head stays
    /// for the response filters; when it goes on, the embedder hands over what it sends
    /// upstream with [`StreamDriver::request_sent`].
    pub async fn request_headers(&self, head: &mut request::Parts, end_of_stream: bool) -> Verdict {
        let placeholder = http::Request::new(()).into_parts().0;
        self.stream.data.borrow_mut().request = Some(std::mem::replace(head, placeholder));
        let verdict = self
            .run_headers(
                |f| f.request_headers(end_of_stream),
                FilterStream::poll_request_headers,
            )
            .await;
        let mut data = self.stream.data.borrow_mut();
        let kept = data.request.take().expect("the request head is back");
        if !matches!(verdict, Verdict::Continue) {
            data.request = Some(request_head_copy(&kept));
        }
        *head = kept;
        verdict
    }

    /// The request head as it went upstream: later phases (`on_response_headers`, `on_log`)
    /// read it.
    pub fn request_sent(&self, head: &request::Parts) {
        self.stream.data.borrow_mut().request = Some(request_head_copy(head));
    }

    /// `on_response_headers` through the chain, last filter first. `head` comes back with the
    /// filters' changes and, when it goes on, the headers filters asked to add
    /// (`response_headers_to_add`). A copy stays for `on_log`.
    pub async fn response_headers(
        &self,
        head: &mut response::Parts,
        end_of_stream: bool,
    ) -> Verdict {
        let placeholder = http::Response::new(()).into_parts().0;
        self.stream.data.borrow_mut().response = Some(std::mem::replace(head, placeholder));
        let verdict = self
            .run_headers(
                |f| f.response_headers(end_of_stream),
                FilterStream::poll_response_headers,
            )
            .await;
        {
            let mut data = self.stream.data.borrow_mut();
            *head = data.response.take().expect("the response head is back");
            data.response = Some(response_head_copy(head));
        }
        if matches!(verdict, Verdict::Continue) {
            for (name, value) in &self.stream.decisions.borrow().response_headers_to_add {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_maybe_shared(value.clone()),
                ) {
                    head.headers.append(n, v);
                }
            }
        }
        verdict
    }

    async fn run_headers(
        &self,
        start: impl FnOnce(&mut FilterStream) -> HeadersStep,
        poll: fn(&mut FilterStream) -> HeadersStep,
    ) -> Verdict {
        let mut step = start(&mut self.filters.borrow_mut());
        loop {
            match step {
                HeadersStep::Done(v) => return v,
                HeadersStep::Paused => {
                    self.stream.resumed.notified().await;
                    step = poll(&mut self.filters.borrow_mut());
                }
            }
        }
    }

    /// Whether a filter of the chain reads request bodies (a body it sees may change length).
    pub fn reads_request_body(&self) -> bool {
        self.filters.borrow().chain().reads_request_body()
    }

    /// One chunk of a body through the chain (`end`: the last). After [`BodyStep::Wait`],
    /// await [`StreamDriver::body_resumed`].
    pub fn body(&self, chunk: Bytes, end: bool, response: bool) -> BodyStep {
        let mut f = self.filters.borrow_mut();
        if response {
            f.response_body(chunk, end)
        } else {
            f.request_body(chunk, end)
        }
    }

    /// After [`BodyStep::Wait`]: waits until the paused filter resumes (or replies, or fails).
    pub async fn body_resumed(&self, response: bool) -> BodyStep {
        loop {
            if let Some(step) = self.filters.borrow_mut().poll_body(response) {
                return step;
            }
            self.stream.resumed.notified().await;
        }
    }

    /// A whole body through the chain as one chunk, then its trailers, if any, as the proxy
    /// streams them: what the filters let through, or the verdict that stopped it.
    pub async fn whole_body(
        &self,
        body: Bytes,
        trailers: Option<&mut HeaderMap>,
        response: bool,
    ) -> Result<Bytes, Verdict> {
        let mut out = self.chunk(body, trailers.is_none(), response).await?;
        if let Some(trailers) = trailers {
            match self.trailers(trailers, response) {
                Verdict::Continue => {}
                stop => return Err(stop),
            }
            let rest = self.chunk(Bytes::new(), true, response).await?;
            if out.is_empty() {
                out = rest;
            } else if !rest.is_empty() {
                out = [out, rest].concat().into();
            }
        }
        Ok(out)
    }

    async fn chunk(&self, chunk: Bytes, end: bool, response: bool) -> Result<Bytes, Verdict> {
        let step = match self.body(chunk, end, response) {
            BodyStep::Wait => self.body_resumed(response).await,
            step => step,
        };
        match step {
            BodyStep::Emit(b) => Ok(b),
            BodyStep::Held | BodyStep::Wait => Ok(Bytes::new()),
            BodyStep::Stop(v) => Err(v),
        }
    }

    /// `on_*_trailers` through the chain; `trailers` comes back with the filters' changes.
    pub fn trailers(&self, trailers: &mut HeaderMap, response: bool) -> Verdict {
        *self.stream.data.borrow_mut().trailers(response) = Some(std::mem::take(trailers));
        let verdict = {
            let mut f = self.filters.borrow_mut();
            if response {
                f.response_trailers()
            } else {
                f.request_trailers()
            }
        };
        *trailers = self
            .stream
            .data
            .borrow_mut()
            .trailers(response)
            .take()
            .unwrap_or_default();
        verdict
    }

    /// Keeps the verdict that stopped a body mid-way, for the embedder to answer with once
    /// the body's reader has failed.
    pub fn body_stopped(&self, verdict: Verdict) {
        let reply = match verdict {
            Verdict::Reply(local) => Some(local),
            Verdict::Fail { plugin, .. } => Some(LocalResponse::plugin_failed(&plugin)),
            Verdict::Continue | Verdict::Reset => None,
        };
        *self.stream.local_response.borrow_mut() = reply;
    }

    /// The reply a body filter made (or a failure's), which stopped the body.
    pub fn take_local_reply(&self) -> Option<LocalResponse> {
        self.stream.local_response.borrow_mut().take()
    }

    /// Ends the stream for the filters (`on_done`, `on_log`), with what the embedder learned
    /// about it. Dropping the driver ends it too.
    pub fn finish(&self, record: impl FnOnce(&mut StreamInfo)) {
        record(&mut self.stream.info.borrow_mut());
        self.filters.borrow_mut().finish();
    }
}

fn request_head_copy(parts: &request::Parts) -> request::Parts {
    let (mut copy, ()) = http::Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

fn response_head_copy(parts: &response::Parts) -> response::Parts {
    let (mut copy, ()) = http::Response::new(()).into_parts();
    copy.status = parts.status;
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}
