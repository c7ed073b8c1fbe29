//! A lean HTTP/1.1 client for upstream connections.
//!
//! hyper's client runs each connection as its own task and talks to it over channels; for a
//! proxy that costs more per request than the parsing itself. This client is driven directly by
//! the request that uses it: the request future writes the request and reads the response
//! head, and the response body reads the rest from the socket as the downstream consumes it.
//! When the body ends, the connection goes straight back to its pool. Parsing uses `httparse`.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::connect::Transport;
use crate::headers::Added;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange on an upstream connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream connection closed before the response started")]
    ClosedBeforeResponse,
    #[error("upstream I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("invalid response from upstream: {0}")]
    Invalid(&'static str),
    #[error("request body failed: {0}")]
    RequestBody(BoxError),
    /// The body did not match the `Content-Length` sent ahead of it; the connection is closed.
    #[error("request body {0} its content-length")]
    BodyLength(&'static str),
}

/// Where a connection belongs: its pool, which takes it back when a response is done and
/// counts it while it lives.
pub trait Home<S> {
    fn release(&self, conn: Box<H1Conn<S>>);
    /// The endpoint's address, for logs.
    fn peer(&self) -> SocketAddr;
}

/// An idle or checked-out HTTP/1.1 connection over a transport `S`.
pub struct H1Conn<S> {
    io: S,
    buf: BytesMut,
    head: Vec<u8>,
    pub uses: u32,
    home: Rc<dyn Home<S>>,
}

/// A request body as the client sends it.
pub enum Outgoing<B> {
    Empty,
    /// Known whole: written with the head, in one system call when it fits.
    Whole(Bytes),
    Stream(B),
}

/// The failure of [`H1Conn::send`], with the request body if it was never read from.
pub struct SendError<B> {
    pub error: ClientError,
    /// True if no byte of the response arrived and the request may not have been processed:
    /// on a reused connection that means the server closed it while idle.
    pub before_response: bool,
    pub body: Option<Outgoing<B>>,
}

impl<S: Transport> H1Conn<S> {
    /// Boxed once per connection, so handing it between pool, request and body moves a pointer.
    pub fn new(io: S, home: Rc<dyn Home<S>>) -> Box<H1Conn<S>> {
        Box::new(H1Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::with_capacity(512),
            uses: 0,
            home,
        })
    }

    /// True if the upstream sent nothing (no byte, no end of stream) since the last response.
    pub fn quiet_while_idle(&mut self) -> bool {
        let quiet = self.io.quiet_while_idle();
        if !quiet {
            tracing::debug!(
                upstream = %self.home.peer(),
                "closing an idle upstream connection that received data or was closed"
            );
        }
        quiet
    }

    /// Writes the request and reads the response head. The returned body owns the connection
    /// and hands it back to the pool once the response is complete.
    pub async fn send<B>(
        mut self: Box<Self>,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        added: &Added,
        authority: Option<&Authority>,
        body: Outgoing<B>,
    ) -> Result<Response<UpstreamBody<S>>, SendError<B>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        self.uses += 1;
        let framing = self.encode_head(method, target, headers, added, authority, &body);
        // A body known whole must match the length declared for it before anything is sent.
        let known = match &body {
            Outgoing::Empty => Some(0),
            Outgoing::Whole(bytes) => Some(bytes.len() as u64),
            Outgoing::Stream(_) => None,
        };
        if let (Some(len), BodyFraming::Length(declared)) = (known, framing)
            && len != declared
        {
            let error = ClientError::BodyLength(if len > declared {
                "is longer than"
            } else {
                "is shorter than"
            });
            // Not `before_response`: another connection would fail the same way.
            return Err(fail(error, false));
        }
        // A small body goes out with the head in one write; others stream after it.
        let written = match &body {
            Outgoing::Whole(bytes) => write_all_vectored(&mut self.io, &self.head, bytes).await,
            _ => self.io.write_all(&self.head).await,
        };
        if let Err(e) = written {
            return Err(SendError {
                error: e.into(),
                before_response: true,
                body: Some(body),
            });
        }
        // Boxed: streaming a body is the rarer path and its state is large.
        if let Outgoing::Stream(mut body) = body
            && let Err(error) = Box::pin(self.write_body(&mut body, framing)).await
        {
            return Err(SendError {
                error,
                before_response: false,
                body: None,
            });
        }
        self.read_response(method == Method::HEAD).await
    }

    /// Serialises the request head: its headers, then those the proxy adds. `Host` comes from
    /// `authority` when the request has none (HTTP/2 downstream); `Expect: 100-continue` is
    /// answered by the proxy, not forwarded.
    fn encode_head<B: Body>(
        &mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        added: &Added,
        authority: Option<&Authority>,
        body: &Outgoing<B>,
    ) -> BodyFraming {
        let head = &mut self.head;
        head.clear();
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let mut declared = None;
        let mut has_host = false;
        for (name, value) in headers {
            if name == header::CONTENT_LENGTH {
                // Checked downstream (and a filter's is held to the body by the count).
                let n = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|v| v.parse().ok());
                declared = Some(n.unwrap_or(u64::MAX));
            } else if name == header::HOST {
                has_host = true;
            } else if name == header::EXPECT
                && value.as_bytes().eq_ignore_ascii_case(b"100-continue")
            {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        for (name, value) in added.iter() {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        if let (false, Some(authority)) = (has_host, authority) {
            head.extend_from_slice(b"host: ");
            head.extend_from_slice(authority.as_str().as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        let exact = match body {
            Outgoing::Empty => None,
            Outgoing::Whole(bytes) => Some(bytes.len() as u64),
            Outgoing::Stream(body) => body.size_hint().exact(),
        };
        let framing = match (body, declared) {
            (_, Some(n)) => BodyFraming::Length(n),
            (Outgoing::Empty, None) => BodyFraming::None,
            (_, None) => match exact {
                Some(n) => {
                    head.extend_from_slice(b"content-length: ");
                    head.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    head.extend_from_slice(b"\r\n");
                    BodyFraming::Length(n)
                }
                None => {
                    head.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    BodyFraming::Chunked
                }
            },
        };
        head.extend_from_slice(b"\r\n");
        framing
    }

    async fn write_body<B>(&mut self, body: &mut B, framing: BodyFraming) -> Result<(), ClientError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let chunked = framing == BodyFraming::Chunked;
        // What the declared length still allows: a body that says otherwise fails the request
        // and its connection (never pooled), rather than desynchronise it.
        let mut left = match framing {
            BodyFraming::Length(n) => n,
            _ => u64::MAX,
        };
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
            let frame = match frame {
                None => break,
                Some(Err(e)) => return Err(ClientError::RequestBody(e.into())),
                Some(Ok(f)) => f,
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) if chunked => {
                    let mut size = [0u8; 18];
                    let n = hex_len(data.len(), &mut size);
                    write_all_vectored3(&mut self.io, &size[..n], &data, b"\r\n").await?;
                }
                Ok(data) => {
                    left = left
                        .checked_sub(data.len() as u64)
                        .ok_or(ClientError::BodyLength("is longer than"))?;
                    self.io.write_all(&data).await?
                }
                Err(frame) => {
                    if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                        let mut out = b"0\r\n".to_vec();
                        for (name, value) in &trailers {
                            out.extend_from_slice(name.as_str().as_bytes());
                            out.extend_from_slice(b": ");
                            out.extend_from_slice(value.as_bytes());
                            out.extend_from_slice(b"\r\n");
                        }
                        out.extend_from_slice(b"\r\n");
                        self.io.write_all(&out).await?;
                        return Ok(());
                    }
                }
            }
        }
        if chunked {
            self.io.write_all(b"0\r\n\r\n").await?;
        } else if matches!(framing, BodyFraming::Length(_)) && left > 0 {
            return Err(ClientError::BodyLength("is shorter than"));
        }
        Ok(())
    }

    async fn read_response<B>(
        mut self: Box<Self>,
        head_request: bool,
    ) -> Result<Response<UpstreamBody<S>>, SendError<B>> {
        let mut got_bytes = false;
        loop {
            if !self.buf.is_empty() {
                got_bytes = true;
                match parse_head(&mut self.buf, head_request) {
                    Ok(Some((response, framing, keep_alive))) => {
                        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                            // Upgrades have connections of their own: this one never asked.
                            return Err(fail(
                                ClientError::Invalid("unsolicited 101 Switching Protocols"),
                                false,
                            ));
                        }
                        if response.status().is_informational() {
                            continue; // 100 Continue, 103 Early Hints: wait for the real response.
                        }
                        let body = UpstreamBody {
                            conn: Some(self),
                            framing,
                            keep_alive,
                        };
                        let mut body = body;
                        body.release_if_done();
                        return Ok(response.map(|()| body));
                    }
                    Ok(None) if self.buf.len() > MAX_HEAD => {
                        return Err(fail(ClientError::Invalid("response head too large"), false));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(fail(e, false)),
                }
            }
            self.buf.reserve(READ_CHUNK);
            match self.io.read_buf_once(&mut self.buf).await {
                Ok(0) if !got_bytes => return Err(fail(ClientError::ClosedBeforeResponse, true)),
                Ok(0) => {
                    return Err(fail(
                        ClientError::Invalid("connection closed inside the response head"),
                        false,
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(fail(e.into(), !got_bytes)),
            }
        }
    }
}

fn fail<B>(error: ClientError, before_response: bool) -> SendError<B> {
    SendError {
        error,
        before_response,
        body: None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyFraming {
    None,
    /// As declared: this many bytes follow.
    Length(u64),
    Chunked,
}

trait ReadOnce {
    async fn read_buf_once(&mut self, buf: &mut BytesMut) -> io::Result<usize>;
}

impl<S: AsyncRead + Unpin> ReadOnce for S {
    async fn read_buf_once(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        std::future::poll_fn(|cx| poll_read_buf(self, cx, buf)).await
    }
}

fn poll_read_buf<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut read = ReadBuf::uninit(buf.spare_capacity_mut());
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let n = read.filled().len();
    // SAFETY: the read initialised `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

async fn write_all_vectored<S>(io: &mut S, a: &[u8], b: &[u8]) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    write_all_vectored3(io, a, b, &[]).await
}

/// Writes three slices with as few syscalls as the socket allows.
async fn write_all_vectored3<S>(io: &mut S, a: &[u8], b: &[u8], c: &[u8]) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let total = a.len() + b.len() + c.len();
    let mut written = 0;
    while written < total {
        let mut slices = [IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[])];
        let mut k = 0;
        let mut skip = written;
        for part in [a, b, c] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[k] = IoSlice::new(&part[skip..]);
            skip = 0;
            k += 1;
        }
        let n = io.write_vectored(&slices[..k]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    Ok(())
}

/// Writes `n` as hex followed by CRLF (a chunk-size line); returns the length.
fn hex_len(mut n: usize, out: &mut [u8; 18]) -> usize {
    let mut digits = [0u8; 16];
    let mut k = 0;
    loop {
        digits[k] = b"0123456789abcdef"[n & 0xf];
        k += 1;
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    for i in 0..k {
        out[i] = digits[k - 1 - i];
    }
    out[k] = b'\r';
    out[k + 1] = b'\n';
    k + 2
}

/// How the rest of a response is framed.
#[derive(Debug)]
enum Framing {
    Done,
    Length(u64),
    Chunked(Chunked),
    /// Until the server closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy)]
enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Parses a response head from the front of `buf`; `Ok(None)` if it is incomplete.
#[allow(clippy::type_complexity)]
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<(Response<()>, Framing, bool)>, ClientError> {
    // Uninitialised: zeroing room for every possible header cost more than parsing the usual few.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ClientError::Invalid("too many response headers"));
        }
        Err(_) => return Err(ClientError::Invalid("malformed response head")),
    };
    // httparse takes a bare LF as a line end; the downstream guard refuses it, and so do we.
    // httparse refuses a CR that does not end a line, so a head whose every line (the status
    // line, each field, the empty line) ends in CRLF has exactly that many CRs.
    if memchr::memchr_iter(b'\r', &buf[..len]).count() != parsed.headers.len() + 2 {
        return Err(ClientError::Invalid("bare LF in the response head"));
    }
    let code = parsed.code.ok_or(ClientError::Invalid("missing status"))?;
    if !(100..=599).contains(&code) {
        return Err(ClientError::Invalid("status code outside 100-599"));
    }
    let status = StatusCode::from_u16(code).map_err(|_| ClientError::Invalid("bad status code"))?;
    let http10 = parsed.version == Some(0);
    let count = parsed.headers.len();
    // Copy out the offsets, then take the head bytes so header values share them.
    let base = buf.as_ptr() as usize;
    let spans: Vec<_> = parsed
        .headers
        .iter()
        .map(|h| {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            (name, name + h.name.len(), value, value + h.value.len())
        })
        .collect();
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut has_te = false;
    let mut close = http10;
    for &(ns, ne, vs, ve) in &spans {
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| ClientError::Invalid("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| ClientError::Invalid("bad header value"))?;
        if name == header::CONTENT_LENGTH {
            // Digits only, and once (as the downstream guard has it): `+5` or `5, 5` are refused.
            let digits = value.as_bytes();
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(ClientError::Invalid("bad content-length"));
            }
            if content_length.is_some() {
                return Err(ClientError::Invalid("more than one content-length"));
            }
            let n = value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(ClientError::Invalid("bad content-length"))?;
            content_length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            has_te = true;
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            // Hop-by-hop headers this connection has consumed are not handed on: the
            // downstream side would only strip them again.
            continue;
        } else if name == header::CONNECTION {
            let v = value.as_bytes();
            if contains_token(v, b"close") {
                close = true;
            } else if http10 && contains_token(v, b"keep-alive") {
                close = false;
            }
            // Kept only when it names other headers, which must then be stripped too.
            if v.split(|&b| b == b',').all(|t| {
                let t = t.trim_ascii();
                t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive")
            }) {
                continue;
            }
        } else if name.as_str() == "keep-alive" {
            continue;
        }
        headers.append(name, value);
    }
    if has_te && content_length.is_some() {
        // Which one frames the body is exactly what a smuggler hopes hops disagree on.
        return Err(ClientError::Invalid(
            "both content-length and transfer-encoding",
        ));
    }
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if (status == StatusCode::NO_CONTENT || status.is_informational())
        && (has_te || content_length.is_some_and(|n| n > 0))
    {
        // A response that cannot have a body announces one: whatever follows is in doubt, so
        // the connection is not reused.
        close = true;
    }
    let framing = if no_body {
        Framing::Done
    } else if has_te {
        if chunked {
            Framing::Chunked(Chunked::Size)
        } else {
            close = true;
            Framing::Close
        }
    } else {
        match content_length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => {
                close = true;
                Framing::Close
            }
        }
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    // The client gets the proxy's own version (Envoy's too), whatever the upstream spoke;
    // an HTTP/1.0 upstream's framing was settled above.
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = headers;
    Ok(Some((response, framing, !close)))
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A response body read straight from the upstream connection.
pub struct UpstreamBody<S> {
    conn: Option<Box<H1Conn<S>>>,
    framing: Framing,
    keep_alive: bool,
}

impl<S: Transport> UpstreamBody<S> {
    /// True when the rest of the body has already arrived: reading it cannot stall.
    pub fn is_buffered_whole(&self) -> bool {
        match (&self.framing, &self.conn) {
            (Framing::Done, _) => true,
            (Framing::Length(left), Some(conn)) => conn.buf.len() as u64 >= *left,
            _ => false,
        }
    }

    /// Hands the connection back once the response is complete.
    fn release_if_done(&mut self) {
        if !matches!(self.framing, Framing::Done) {
            return;
        }
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            let home = conn.home.clone();
            home.release(conn);
        }
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match &mut self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) if !buf.is_empty() => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    let data = buf.split_to(n).freeze();
                    if *left == 0 {
                        self.framing = Framing::Done;
                        self.release_if_done();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) => match decode_chunked(state, buf)? {
                    Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Decoded::Trailers(trailers) => {
                        self.framing = Framing::Done;
                        self.release_if_done();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Decoded::End => {
                        self.framing = Framing::Done;
                        self.release_if_done();
                        return Poll::Ready(None);
                    }
                    Decoded::NeedMore => {}
                },
                _ => {}
            }
            // Need more bytes.
            let conn = self.conn.as_mut().expect("checked above");
            conn.buf.reserve(READ_CHUNK);
            let n = ready!(poll_read_buf(&mut conn.io, cx, &mut conn.buf))?;
            if n == 0 {
                return match self.framing {
                    Framing::Close => {
                        self.framing = Framing::Done;
                        self.conn = None;
                        Poll::Ready(None)
                    }
                    _ => Poll::Ready(Some(Err(ClientError::Invalid(
                        "connection closed inside the response body",
                    )))),
                };
            }
        }
    }
}

/// What the chunked decoder found at the front of the buffer.
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The last chunk, without trailers.
    End,
    NeedMore,
}

/// Decodes chunked framing from the front of `buf`. Line ends must be CRLF, as the downstream
/// guard requires of requests.
fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Decoded, ClientError> {
    loop {
        match state {
            Chunked::Size => {
                let Some(eol) = memchr::memchr(b'\n', buf) else {
                    if buf.len() > 4096 {
                        return Err(ClientError::Invalid("chunk size line too long"));
                    }
                    return Ok(Decoded::NeedMore);
                };
                let line = buf[..eol]
                    .strip_suffix(b"\r")
                    .ok_or(ClientError::Invalid("bare LF in chunked framing"))?;
                if memchr::memchr(b'\r', line).is_some() {
                    return Err(ClientError::Invalid("bare CR in chunked framing"));
                }
                let digits = line
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii_end();
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.iter().all(u8::is_ascii_hexdigit)
                {
                    return Err(ClientError::Invalid("bad chunk size"));
                }
                let size = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| u64::from_str_radix(d, 16).ok())
                    .ok_or(ClientError::Invalid("bad chunk size"))?;
                buf.advance(eol + 1);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                let data = buf.split_to(n).freeze();
                if *left == 0 {
                    *state = Chunked::DataEnd;
                }
                return Ok(Decoded::Data(data));
            }
            Chunked::DataEnd => match (buf.first(), buf.get(1)) {
                (None, _) | (Some(b'\r'), None) => return Ok(Decoded::NeedMore),
                (Some(b'\r'), Some(b'\n')) => {
                    buf.advance(2);
                    *state = Chunked::Size;
                }
                _ => return Err(ClientError::Invalid("missing CRLF after chunk")),
            },
            Chunked::Trailers => {
                // Trailer fields end with an empty line.
                match (buf.first(), buf.get(1)) {
                    (None, _) | (Some(b'\r'), None) => return Ok(Decoded::NeedMore),
                    (Some(b'\r'), Some(b'\n')) => {
                        buf.advance(2);
                        return Ok(Decoded::End);
                    }
                    _ => {}
                }
                let Some(i) = find(buf, b"\r\n\r\n") else {
                    if buf.len() > MAX_HEAD {
                        return Err(ClientError::Invalid("trailers too large"));
                    }
                    return Ok(Decoded::NeedMore);
                };
                let fields = buf.split_to(i + 4);
                let mut trailers = HeaderMap::new();
                for line in fields[..i + 2].split_inclusive(|&b| b == b'\n') {
                    let line = line
                        .strip_suffix(b"\r\n")
                        .filter(|l| !l.contains(&b'\r') && !l.contains(&b'\n'))
                        .ok_or(ClientError::Invalid("bare CR or LF in trailers"))?;
                    let colon =
                        memchr::memchr(b':', line).ok_or(ClientError::Invalid("bad trailer"))?;
                    let name = HeaderName::from_bytes(&line[..colon])
                        .map_err(|_| ClientError::Invalid("bad trailer name"))?;
                    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
                        .map_err(|_| ClientError::Invalid("bad trailer value"))?;
                    trailers.append(name, value);
                }
                return Ok(Decoded::Trailers(trailers));
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl<S: Transport> Body for UpstreamBody<S> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.poll_next(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, head_request: bool) -> (Response<()>, Framing, bool, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        let (r, f, k) = parse_head(&mut buf, head_request).unwrap().unwrap();
        (r, f, k, buf)
    }

    #[test]
    fn parses_heads_and_framing() {
        let (r, f, keep, rest) = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            false,
        );
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-a"], "b");
        assert!(matches!(f, Framing::Length(5)));
        assert!(keep);
        assert_eq!(&rest[..], b"hello");

        let (_, f, keep, _) = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            false,
        );
        assert!(matches!(f, Framing::Chunked(_)));
        assert!(!keep);

        let (r, _, keep, _) = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Content-Length: 0\r\nX-A: b\r\n\r\n",
            false,
        );
        assert!(keep);
        assert_eq!(
            r.headers().keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["content-length", "x-a"],
            "consumed hop-by-hop headers are left out"
        );
        let (r, _, _, _) = parse(
            "HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(
            r.headers()["connection"],
            "x-hop",
            "kept for the strip of x-hop"
        );

        let (_, f, keep, _) = parse("HTTP/1.0 200 OK\r\n\r\n", false);
        assert!(matches!(f, Framing::Close));
        assert!(!keep);

        let (_, f, _, _) = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert!(matches!(f, Framing::Done), "HEAD responses have no body");
        let (_, f, _, _) = parse(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert!(matches!(f, Framing::Done));
    }

    #[test]
    fn refuses_bare_line_ends() {
        for bad in [
            &b"HTTP/1.1 200 OK\nA: b\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nA: b\nC: d\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n\n",
            b"HTTP/1.1 200 OK\r\nA: \rb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\r\nA: b\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                parse_head(&mut buf, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn refuses_conflicting_lengths() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
        );
        assert!(parse_head(&mut buf, false).is_err());
    }

    #[test]
    fn decodes_chunks_and_trailers() {
        let mut buf =
            BytesMut::from(&b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n"[..]);
        let mut state = Chunked::Size;
        let mut data = Vec::new();
        let trailers = loop {
            match decode_chunked(&mut state, &mut buf).unwrap() {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => break t,
                Decoded::End | Decoded::NeedMore => panic!("input is complete and has trailers"),
            }
        };
        assert_eq!(data, b"hello world");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(buf.is_empty());
    }

    #[test]
    fn waits_for_split_chunks_and_sees_the_end() {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::from(&b"a\r"[..]);
        assert!(matches!(
            decode_chunked(&mut state, &mut buf).unwrap(),
            Decoded::NeedMore
        ));
        buf.extend_from_slice(b"\n0123");
        assert!(
            matches!(decode_chunked(&mut state, &mut buf).unwrap(), Decoded::Data(d) if d == "0123")
        );
        assert!(matches!(state, Chunked::Data(6)));
        buf.extend_from_slice(b"456789\r\n0\r\n\r\nNEXT");
        assert!(
            matches!(decode_chunked(&mut state, &mut buf).unwrap(), Decoded::Data(d) if d == "456789")
        );
        assert!(matches!(
            decode_chunked(&mut state, &mut buf).unwrap(),
            Decoded::End
        ));
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn writes_chunk_sizes_in_hex() {
        let mut out = [0u8; 18];
        let n = hex_len(0x1a2b, &mut out);
        assert_eq!(&out[..n], b"1a2b\r\n");
        let n = hex_len(0, &mut out);
        assert_eq!(&out[..n], b"0\r\n");
    }
}
