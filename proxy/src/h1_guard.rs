//! A strict reader in front of hyper's HTTP/1 parser.
//!
//! hyper accepts some shapes that proxies must refuse because other hops may read them
//! differently (request smuggling): a bare LF as line end, `Content-Length` together with
//! `Transfer-Encoding` (hyper drops the length), and repeated `Content-Length` headers with the
//! same value. The guard follows the message framing on the byte stream, holds each request
//! head until it is complete, checks it, and hands it to hyper only if it is clean. A bad head
//! is replaced by one hyper cannot parse, so hyper answers `400 Bad Request` and closes the
//! connection, in order with any response still being written.
//!
//! A request asking to switch protocols (`Upgrade`, or `CONNECT`) ends the checking only once
//! the response switched (`101`, or a `2xx` to `CONNECT`): the guard watches the status line
//! hyper writes and holds back the bytes after such a request until it has seen it. Any other
//! answer leaves the connection HTTP/1, checked as before.
//!
//! It also enforces Envoy's `request_headers_timeout`: once the first byte of a head arrives,
//! the whole head must follow within the timeout or the connection is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What hyper is handed instead of a rejected head: a NUL method fails its parser with a 400.
const POISON: &[u8] = b"\0 / HTTP/1.1\r\n\r\n";

/// Why a request head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    BareLf,
    BareCr,
    ObsFold,
    ContentLengthAndTransferEncoding,
    DuplicateContentLength,
    BadContentLength,
    BadTransferEncoding,
    WhitespaceBeforeColon,
    /// More than one `Host` (RFC 9112 3.2): hops could route on different ones.
    DuplicateHost,
    BadChunkFraming,
}

/// How the message after a head is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// What a checked head says: its body's framing, and whether it asks to switch protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub framing: Framing,
    pub switch: Option<SwitchOn>,
}

/// The response that switches a connection away from HTTP/1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchOn {
    /// `101 Switching Protocols`, to a request with `Upgrade`.
    Upgrade,
    /// Any `2xx`, to `CONNECT`.
    Connect,
}

/// Shared by the guard and the request handler: the guard marks a request that asks to switch
/// protocols, and the handler says how it was answered. hyper switches on any `101` (and on a
/// `2xx` to `CONNECT`), so the status the handler returns is exactly what decides.
#[derive(Default)]
pub struct SwitchWatch {
    state: AtomicU8,
    reader: AtomicWaker,
}

const OFF: u8 = 0;
const PENDING_UPGRADE: u8 = 1;
const PENDING_CONNECT: u8 = 2;
const SWITCHED: u8 = 3;
const REFUSED: u8 = 4;

impl SwitchWatch {
    /// Whether a request asks to switch protocols, judged as the guard judges its head.
    pub fn asks(method: &Method, version: Version, headers: &HeaderMap) -> bool {
        method == Method::CONNECT
            || (version != Version::HTTP_10 && headers.contains_key(header::UPGRADE))
    }

    /// True while the guard waits for the answer to such a request. At most one is pending:
    /// the guard holds back everything after it.
    pub fn is_pending(&self) -> bool {
        matches!(self.state.load(Relaxed), PENDING_UPGRADE | PENDING_CONNECT)
    }

    /// The handler's answer (the response status) to the request that asked to switch.
    pub fn answered(&self, status: StatusCode) {
        let switched = match self.state.load(Relaxed) {
            PENDING_UPGRADE => status == StatusCode::SWITCHING_PROTOCOLS,
            PENDING_CONNECT => status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS,
            _ => return,
        };
        self.state
            .store(if switched { SWITCHED } else { REFUSED }, Relaxed);
        self.reader.wake();
    }

    fn start(&self, on: SwitchOn) {
        let state = match on {
            SwitchOn::Upgrade => PENDING_UPGRADE,
            SwitchOn::Connect => PENDING_CONNECT,
        };
        self.state.store(state, Relaxed);
    }

    /// The answer, once there is one: `Some(true)` if the connection switched. Clears it.
    fn take_answer(&self) -> Option<bool> {
        match self.state.load(Relaxed) {
            SWITCHED => Some(true),
            REFUSED => {
                self.state.store(OFF, Relaxed);
                Some(false)
            }
            _ => None,
        }
    }
}

enum State {
    /// Collecting a head; `scanned` bytes of `buf` were checked already.
    Head {
        scanned: usize,
    },
    /// `n` bytes at the front of `buf` are checked and go to hyper next; then `then`.
    Release {
        n: usize,
        then: Then,
    },
    Body {
        remaining: u64,
    },
    Chunked(Chunk),
    /// A request asking to switch protocols was passed on whole: what follows waits until its
    /// response says whether the connection is still HTTP/1.
    AwaitSwitch,
    Opaque,
    /// The poison head is being handed over; then end of stream.
    Rejected {
        sent: usize,
    },
}

#[derive(Clone, Copy)]
enum Then {
    /// The message ended: the next head, or the wait for a switch.
    NextMessage,
    Body(u64),
    Chunked(Chunk),
}

impl From<Framing> for Then {
    fn from(f: Framing) -> Then {
        match f {
            Framing::None | Framing::Length(0) => Then::NextMessage,
            Framing::Length(n) => Then::Body(n),
            Framing::Chunked => Then::Chunked(Chunk::START),
        }
    }
}

/// The outcome of checking bytes in place.
enum InPlace {
    /// All of them go to hyper.
    Pass,
    /// Bytes from this offset are an incomplete head, to be held back.
    Hold(usize),
    /// A head from this offset was refused; the state says what hyper gets next.
    Reject(usize),
}

#[derive(Clone, Copy)]
enum Chunk {
    Size {
        digits: u32,
        value: u64,
        ext: bool,
        /// Whitespace followed the digits: only more of it, `;` or CR may come.
        lws: bool,
        cr: bool,
    },
    Data(u64),
    DataCr,
    DataLf,
    Trailer {
        line: usize,
        cr: bool,
    },
}

impl Chunk {
    const START: Chunk = Chunk::Size {
        digits: 0,
        value: 0,
        ext: false,
        lws: false,
        cr: false,
    };
}

pub struct H1Guard<T> {
    inner: T,
    buf: BytesMut,
    state: State,
    /// Heads larger than this are passed to hyper unchecked; hyper's own limit (smaller) answers 431.
    max_head: usize,
    header_timeout: Option<Duration>,
    deadline: Option<Pin<Box<Sleep>>>,
    on_reject: Option<Box<dyn FnMut(Violation) + Send>>,
    /// How a request that asked to switch protocols was answered.
    switch: Arc<SwitchWatch>,
    /// Such a request was passed on: once its message ends, wait for the answer.
    switch_asked: bool,
}

impl<T> H1Guard<T> {
    pub fn new(inner: T, max_head: usize, header_timeout: Option<Duration>) -> Self {
        H1Guard {
            inner,
            buf: BytesMut::new(),
            state: State::Head { scanned: 0 },
            max_head,
            header_timeout,
            deadline: None,
            on_reject: None,
            switch: Arc::default(),
            switch_asked: false,
        }
    }

    /// Shares the record of switch requests with the handler that answers them.
    pub fn with_switch_watch(mut self, watch: Arc<SwitchWatch>) -> Self {
        self.switch = watch;
        self
    }

    /// Calls `f` with the reason whenever a head is refused.
    pub fn on_reject(mut self, f: impl FnMut(Violation) + Send + 'static) -> Self {
        self.on_reject = Some(Box::new(f));
        self
    }

    /// Advances the state machine over buffered bytes; returns how many bytes at the front of
    /// `buf` may be handed to hyper now.
    fn deliverable(&mut self) -> usize {
        loop {
            let next = match self.state {
                State::Head { scanned } => {
                    if self.buf.is_empty() {
                        return 0;
                    }
                    match scan_head(&self.buf, scanned) {
                        Scan::Incomplete(_) if self.buf.len() > self.max_head => {
                            // hyper refuses it with 431; the connection ends there.
                            State::Opaque
                        }
                        Scan::Incomplete(at) => {
                            self.state = State::Head { scanned: at };
                            return 0;
                        }
                        Scan::Bad(v) => return self.reject(v),
                        Scan::Complete(len) => {
                            self.deadline = None;
                            match validate_head(&self.buf[..len]) {
                                Ok(head) => State::Release {
                                    n: len,
                                    then: self.accept(head),
                                },
                                Err(v) => return self.reject(v),
                            }
                        }
                    }
                }
                State::Release { n, .. } => return n,
                State::Body { remaining: 0 } => self.next_message(),
                State::Body { remaining } => return remaining.min(self.buf.len() as u64) as usize,
                State::Chunked(mut chunk) => {
                    if self.buf.is_empty() {
                        return 0;
                    }
                    match walk_chunks(&mut chunk, &self.buf) {
                        Ok((n, true)) => State::Release {
                            n,
                            then: Then::NextMessage,
                        },
                        Ok((n, false)) => State::Release {
                            n,
                            then: Then::Chunked(chunk),
                        },
                        Err(v) => {
                            // A body cannot be answered with 400 any more: end the connection.
                            self.notify(v);
                            self.buf.clear();
                            self.state = State::Rejected { sent: POISON.len() };
                            return 0;
                        }
                    }
                }
                State::AwaitSwitch => match self.switch.take_answer() {
                    Some(true) => State::Opaque,
                    Some(false) => State::Head { scanned: 0 },
                    None => return 0,
                },
                State::Opaque => return self.buf.len(),
                State::Rejected { .. } => return 0,
            };
            self.state = next;
        }
    }

    /// Takes a checked head: notes a switch request, and says what follows the head.
    fn accept(&mut self, head: Head) -> Then {
        if let Some(on) = head.switch {
            self.switch.start(on);
            self.switch_asked = true;
        }
        head.framing.into()
    }

    /// The state after a message ends: the next head, or the wait for a switch's answer.
    fn next_message(&mut self) -> State {
        if std::mem::take(&mut self.switch_asked) {
            State::AwaitSwitch
        } else {
            State::Head { scanned: 0 }
        }
    }

    fn enter(&mut self, then: Then) {
        self.state = match then {
            Then::NextMessage => self.next_message(),
            Then::Body(len) => State::Body { remaining: len },
            Then::Chunked(chunk) => State::Chunked(chunk),
        };
    }

    fn reject(&mut self, v: Violation) -> usize {
        self.notify(v);
        self.buf.clear();
        self.deadline = None;
        self.state = State::Rejected { sent: 0 };
        0
    }

    fn notify(&mut self, v: Violation) {
        tracing::debug!(violation = ?v, "refusing HTTP/1 request");
        if let Some(f) = &mut self.on_reject {
            f(v);
        }
    }

    /// Follows framing over bytes read straight into hyper's buffer.
    fn frame_in_place(&mut self, bytes: &[u8]) -> InPlace {
        let mut pos = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            match self.state {
                State::Head { .. } => match scan_head(rest, 0) {
                    Scan::Complete(len) => match validate_head(&rest[..len]) {
                        Ok(head) => {
                            pos += len;
                            let then = self.accept(head);
                            self.enter(then);
                        }
                        Err(v) => {
                            self.reject(v);
                            return InPlace::Reject(pos);
                        }
                    },
                    Scan::Bad(v) => {
                        self.reject(v);
                        return InPlace::Reject(pos);
                    }
                    Scan::Incomplete(_) => {
                        self.state = State::Head { scanned: 0 };
                        return InPlace::Hold(pos);
                    }
                },
                State::Body { remaining } => {
                    let n = remaining.min(rest.len() as u64);
                    pos += n as usize;
                    self.state = if n == remaining {
                        self.next_message()
                    } else {
                        State::Body {
                            remaining: remaining - n,
                        }
                    };
                }
                State::Chunked(mut chunk) => match walk_chunks(&mut chunk, rest) {
                    Ok((n, done)) => {
                        pos += n;
                        self.state = if done {
                            self.next_message()
                        } else {
                            State::Chunked(chunk)
                        };
                    }
                    Err(v) => {
                        // A body cannot be answered with 400 any more: end the connection.
                        self.notify(v);
                        self.state = State::Rejected { sent: POISON.len() };
                        return InPlace::Reject(pos);
                    }
                },
                // Whatever follows a switch request waits for its answer.
                State::AwaitSwitch => return InPlace::Hold(pos),
                State::Opaque => return InPlace::Pass,
                State::Release { .. } | State::Rejected { .. } => {
                    unreachable!("only reached with an empty buffer")
                }
            }
        }
        InPlace::Pass
    }

    /// Records that `n` bytes of our buffer were handed to hyper.
    fn consumed(&mut self, n: usize) {
        self.buf.advance(n);
        self.passed(n);
    }

    /// Advances the framing state over `n` bytes handed to hyper.
    fn passed(&mut self, n: usize) {
        match &mut self.state {
            State::Release { n: left, then } => {
                *left -= n;
                if *left == 0 {
                    let then = *then;
                    self.enter(then);
                }
            }
            State::Body { remaining } => *remaining -= n as u64,
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for H1Guard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let State::Rejected { sent } = &mut this.state {
                let rest = &POISON[(*sent).min(POISON.len())..];
                let n = rest.len().min(out.remaining());
                out.put_slice(&rest[..n]);
                *sent += n;
                return Poll::Ready(Ok(()));
            }
            let n = this.deliverable().min(out.remaining());
            if n > 0 {
                out.put_slice(&this.buf[..n]);
                this.consumed(n);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.state, State::Rejected { .. }) {
                continue;
            }
            if matches!(this.state, State::AwaitSwitch) {
                // Nothing more goes to hyper until the handler answers the switch request.
                this.switch.reader.register(cx.waker());
                if this.switch.is_pending() {
                    return Poll::Pending;
                }
                continue;
            }
            // Bodies of known length go straight into hyper's buffer, without a copy.
            if let State::Body { remaining } = this.state
                && this.buf.is_empty()
                && remaining > 0
            {
                let limit = remaining.min(out.remaining() as u64) as usize;
                let mut sub = out.take(limit);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
                let read = sub.filled().len();
                // SAFETY: `sub` is a view of `out`'s unfilled part; `read` bytes were written.
                unsafe { out.assume_init(read) };
                out.advance(read);
                this.passed(read);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.state, State::Opaque) && this.buf.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // Nothing held back: read straight into hyper's buffer and check the bytes there.
            // Only what must wait (an incomplete head, or what follows a switch request) is
            // taken back into our buffer.
            if this.buf.is_empty()
                && matches!(
                    this.state,
                    State::Head { .. } | State::Chunked(_) | State::Body { .. }
                )
            {
                let start = out.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                let end = out.filled().len();
                if end == start {
                    return Poll::Ready(Ok(()));
                }
                match this.frame_in_place(&out.filled()[start..end]) {
                    InPlace::Pass => return Poll::Ready(Ok(())),
                    InPlace::Hold(at) => {
                        this.buf.extend_from_slice(&out.filled()[start + at..end]);
                        out.set_filled(start + at);
                        if at > 0 {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    InPlace::Reject(at) => out.set_filled(start + at),
                }
                continue;
            }
            // Read more into our buffer.
            this.buf.reserve(8 * 1024);
            let mut tmp = ReadBuf::uninit(this.buf.spare_capacity_mut());
            match Pin::new(&mut this.inner).poll_read(cx, &mut tmp) {
                Poll::Ready(Ok(())) => {
                    let read = tmp.filled().len();
                    if read == 0 {
                        // End of stream: hand over whatever is left (hyper decides what it means).
                        if !this.buf.is_empty() {
                            this.state = State::Opaque;
                            continue;
                        }
                        return Poll::Ready(Ok(()));
                    }
                    // SAFETY: `read` bytes of the spare capacity were initialised by the read.
                    unsafe { this.buf.set_len(this.buf.len() + read) };
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // The timer starts only when a head is left incomplete: a head that arrives
                    // in one read (the usual case) costs no timer at all.
                    if this.deadline.is_none()
                        && matches!(this.state, State::Head { .. })
                        && !this.buf.is_empty()
                        && let Some(t) = this.header_timeout
                    {
                        this.deadline = Some(Box::pin(tokio::time::sleep(t)));
                    }
                    if let Some(deadline) = &mut this.deadline
                        && deadline.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request headers timeout",
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H1Guard<T> {
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

enum Scan {
    Incomplete(usize),
    Complete(usize),
    Bad(Violation),
}

/// Looks for the end of a head (`\r\n\r\n`) from `from`, refusing bare LF and bare CR.
///
/// Jumps from LF to LF (memchr), then counts the CRs in one vectorised pass: a clean head has
/// one per LF. Only a head that fails this is walked byte by byte, to name the first fault.
fn scan_head(buf: &[u8], from: usize) -> Scan {
    let mut lfs = 0;
    let mut end = None;
    for i in memchr::memchr_iter(b'\n', &buf[from..]).map(|i| from + i) {
        if i == 0 || buf[i - 1] != b'\r' {
            return scan_head_bytewise(buf, from);
        }
        lfs += 1;
        if i >= 3 && &buf[i - 3..i - 1] == b"\r\n" {
            end = Some(i + 1);
            break;
        }
    }
    // A CR as the last byte may yet be followed by its LF.
    let checked = match end {
        Some(end) => end,
        None if buf.last() == Some(&b'\r') => buf.len() - 1,
        None => buf.len(),
    };
    if memchr::memchr_iter(b'\r', &buf[from.min(checked)..checked]).count() != lfs {
        return scan_head_bytewise(buf, from);
    }
    match end {
        Some(end) => Scan::Complete(end),
        None => Scan::Incomplete(checked),
    }
}

/// [`scan_head`] one byte at a time: the first bare LF or bare CR wins.
fn scan_head_bytewise(buf: &[u8], from: usize) -> Scan {
    let mut i = from;
    while i < buf.len() {
        match buf[i] {
            b'\n' if i == 0 || buf[i - 1] != b'\r' => return Scan::Bad(Violation::BareLf),
            b'\r' => match buf.get(i + 1) {
                None => return Scan::Incomplete(i),
                Some(b'\n') => {
                    // Leading empty lines before a request line are tolerated (RFC 9112 2.2).
                    if i >= 2 && &buf[i - 2..i] == b"\r\n" {
                        return Scan::Complete(i + 2);
                    }
                }
                Some(_) => return Scan::Bad(Violation::BareCr),
            },
            _ => {}
        }
        i += 1;
    }
    Scan::Incomplete(i)
}

/// Checks the header lines of a complete head and says how the body is framed.
pub fn validate_head(head: &[u8]) -> Result<Head, Violation> {
    // Line ends were checked by `scan_head`: every LF follows a CR.
    let mut start = 0;
    let mut lines = memchr::memchr_iter(b'\n', head).map(|end| {
        let line = &head[start..end];
        start = end + 1;
        line.strip_suffix(b"\r").unwrap_or(line)
    });
    // Skip empty lines before the request line, as hyper does.
    let request_line = lines.by_ref().find(|l| !l.is_empty()).unwrap_or_default();
    let is_connect = request_line.starts_with(b"CONNECT ");
    let http10 = request_line.ends_with(b"HTTP/1.0");
    let mut content_length: Option<u64> = None;
    let mut te_chunked_last = false;
    let mut te_chunked_count = 0;
    let mut has_te = false;
    let mut upgrade = false;
    let mut host = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(Violation::ObsFold);
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            // hyper rejects it with its own 400.
            continue;
        };
        let name = &line[..colon];
        if name.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err(Violation::WhitespaceBeforeColon);
        }
        let value = trim_ows(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(Violation::DuplicateContentLength);
            }
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(Violation::BadContentLength);
            }
            content_length = Some(
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or(Violation::BadContentLength)?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
            for coding in value
                .split(|&b| b == b',')
                .map(trim_ows)
                .filter(|c| !c.is_empty())
            {
                te_chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                te_chunked_count += te_chunked_last as u32;
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            if host {
                return Err(Violation::DuplicateHost);
            }
            host = true;
        }
    }
    if has_te {
        if content_length.is_some() {
            return Err(Violation::ContentLengthAndTransferEncoding);
        }
        if http10 || !te_chunked_last || te_chunked_count != 1 {
            return Err(Violation::BadTransferEncoding);
        }
    }
    let framing = match (has_te, content_length) {
        (true, _) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    let switch = if is_connect {
        Some(SwitchOn::Connect)
    } else if upgrade && !http10 {
        Some(SwitchOn::Upgrade)
    } else {
        None
    };
    Ok(Head { framing, switch })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Follows chunked framing over `buf`. Returns how many bytes belong to the body, and whether
/// the body (with its trailers) ends within them.
fn walk_chunks(state: &mut Chunk, buf: &[u8]) -> Result<(usize, bool), Violation> {
    let mut i = 0;
    while i < buf.len() {
        match state {
            Chunk::Data(left) => {
                let take = (*left).min((buf.len() - i) as u64);
                *left -= take;
                i += take as usize;
                if *left == 0 {
                    *state = Chunk::DataCr;
                }
                continue;
            }
            Chunk::Size {
                digits,
                value,
                ext,
                lws,
                cr,
            } => {
                let b = buf[i];
                match b {
                    b'\n' if !*cr => return Err(Violation::BareLf),
                    b'\n' => {
                        if *digits == 0 {
                            return Err(Violation::BadChunkFraming);
                        }
                        *state = if *value == 0 {
                            Chunk::Trailer { line: 0, cr: false }
                        } else {
                            Chunk::Data(*value)
                        };
                    }
                    _ if *cr => return Err(Violation::BareCr),
                    b'\r' => *cr = true,
                    _ if *ext => {}
                    b';' if *digits > 0 => *ext = true,
                    b' ' | b'\t' if *digits > 0 => *lws = true,
                    _ if *lws => return Err(Violation::BadChunkFraming),
                    _ => {
                        let d = (b as char).to_digit(16).ok_or(Violation::BadChunkFraming)?;
                        *digits += 1;
                        if *digits > 16 {
                            return Err(Violation::BadChunkFraming);
                        }
                        *value = *value * 16 + d as u64;
                    }
                }
            }
            Chunk::DataCr => match buf[i] {
                b'\r' => *state = Chunk::DataLf,
                _ => return Err(Violation::BadChunkFraming),
            },
            Chunk::DataLf => match buf[i] {
                b'\n' => *state = Chunk::START,
                _ => return Err(Violation::BadChunkFraming),
            },
            Chunk::Trailer { line, cr } => match buf[i] {
                b'\n' if !*cr => return Err(Violation::BareLf),
                b'\n' => {
                    if *line == 0 {
                        return Ok((i + 1, true));
                    }
                    *line = 0;
                    *cr = false;
                }
                b'\r' => *cr = true,
                _ if *cr => return Err(Violation::BareCr),
                _ => *line += 1,
            },
        }
        i += 1;
    }
    Ok((i, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn head(lines: &str) -> Result<Framing, Violation> {
        validate_head(lines.as_bytes()).map(|h| h.framing)
    }

    #[test]
    fn frames_clean_heads() {
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(Framing::None));
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        let switch = |text: &str| validate_head(text.as_bytes()).unwrap().switch;
        assert_eq!(
            switch("GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            Some(SwitchOn::Upgrade)
        );
        assert_eq!(
            switch("GET / HTTP/1.1\r\nUpgrade: x\r\n\r\n"),
            Some(SwitchOn::Upgrade),
            "hyper switches on any 101, whatever Connection says"
        );
        assert_eq!(switch("GET / HTTP/1.0\r\nUpgrade: x\r\n\r\n"), None);
        assert_eq!(
            switch("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            Some(SwitchOn::Connect)
        );
    }

    #[test]
    fn refuses_smuggling_shapes() {
        use Violation::*;
        let cases = [
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                ContentLengthAndTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                DuplicateContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
                BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
                BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                BadTransferEncoding,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                BadTransferEncoding,
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                BadTransferEncoding,
            ),
            ("GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", ObsFold),
            (
                "GET / HTTP/1.1\r\nContent-Length : 0\r\n\r\n",
                WhitespaceBeforeColon,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
                DuplicateHost,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(head(text), Err(want), "{text:?}");
        }
    }

    #[test]
    fn scan_finds_bare_line_ends() {
        assert!(matches!(
            scan_head(b"GET / HTTP/1.1\nHost: a\r\n\r\n", 0),
            Scan::Bad(Violation::BareLf)
        ));
        assert!(matches!(
            scan_head(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 0),
            Scan::Bad(Violation::BareCr)
        ));
        assert!(matches!(
            scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0),
            Scan::Complete(27)
        ));
        assert!(matches!(
            scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0),
            Scan::Incomplete(_)
        ));
    }

    /// The vectorised scan agrees with the byte-by-byte one on every shape, fed whole or a
    /// byte at a time (resuming where the last scan stopped, as the guard does).
    #[test]
    fn fast_scan_agrees_with_the_bytewise_scan() {
        fn outcome(scan: fn(&[u8], usize) -> Scan, input: &[u8], step: usize) -> String {
            let mut from = 0;
            let mut len = 0;
            loop {
                len = (len + step).min(input.len());
                match scan(&input[..len], from) {
                    Scan::Incomplete(at) if len < input.len() => from = at,
                    Scan::Incomplete(_) => return "incomplete".into(),
                    Scan::Complete(n) => return format!("complete {n}"),
                    Scan::Bad(v) => return format!("{v:?}"),
                }
            }
        }
        let clean = b"\r\nGET /a HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789abcdef0123456789abcdef\r\n\r\nrest";
        let mut cases = vec![clean.to_vec(), clean[..30].to_vec(), clean[..58].to_vec()];
        for at in 0..clean.len() {
            for fault in [b"\r".as_slice(), b"\n", b"\n\r", b"\r\r\n"] {
                let mut bad = clean[..at].to_vec();
                bad.extend_from_slice(fault);
                bad.extend_from_slice(&clean[at..]);
                cases.push(bad);
            }
        }
        for case in &cases {
            for step in [1, 2, 3, 7, case.len()] {
                assert_eq!(
                    outcome(scan_head, case, step),
                    outcome(scan_head_bytewise, case, step),
                    "{:?} fed {step} bytes at a time",
                    String::from_utf8_lossy(case)
                );
            }
        }
    }

    #[test]
    fn walks_chunked_bodies_across_reads() {
        let body = b"5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        let mut state = Chunk::START;
        let (n, done) = walk_chunks(&mut state, &body[..7]).unwrap();
        assert_eq!((n, done), (7, false));
        let (n, done) = walk_chunks(&mut state, &body[7..]).unwrap();
        assert!(done);
        assert_eq!(&body[7 + n..], b"GET /next");
    }

    async fn through_guard(input: &[u8]) -> Vec<u8> {
        let mut guard = H1Guard::new(input, 64 * 1024, None);
        let mut out = Vec::new();
        guard.read_to_end(&mut out).await.unwrap();
        out
    }

    /// A reader that yields `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.step.min(self.data.len()).min(out.remaining());
            out.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn same_result_whatever_the_read_sizes() {
        let clean = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        let smuggled = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, 16, 64, 4096] {
            let mut out = Vec::new();
            H1Guard::new(Trickle { data: clean, step }, 1024, None)
                .read_to_end(&mut out)
                .await
                .unwrap();
            assert_eq!(out, clean, "step {step}");
            let mut out = Vec::new();
            H1Guard::new(
                Trickle {
                    data: smuggled,
                    step,
                },
                1024,
                None,
            )
            .read_to_end(&mut out)
            .await
            .unwrap();
            assert_eq!(
                out,
                [&b"GET /a HTTP/1.1\r\n\r\n"[..], POISON].concat(),
                "step {step}"
            );
        }
    }

    #[tokio::test]
    async fn passes_pipelined_clean_requests_unchanged() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        assert_eq!(through_guard(input).await, input);
    }

    #[tokio::test]
    async fn poisons_a_bad_head_after_clean_ones() {
        let input = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\nHost: x\r\n\r\n";
        let out = through_guard(input).await;
        assert_eq!(out, [&b"GET /a HTTP/1.1\r\n\r\n"[..], POISON].concat());
    }

    /// Reads what the guard hands to hyper until it would wait.
    async fn read_available<T: AsyncRead + Unpin>(guard: &mut H1Guard<T>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let read = futures_util::FutureExt::now_or_never(guard.read(&mut buf));
            match read {
                Some(Ok(0)) | None => return out,
                Some(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Some(Err(e)) => panic!("{e}"),
            }
        }
    }

    /// What follows a request asking to switch protocols waits for its answer; a refusal
    /// leaves the connection checked as HTTP/1, a switch leaves it alone.
    #[tokio::test]
    async fn holds_what_follows_a_switch_request_until_it_is_answered() {
        let upgrade = b"GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\n\r\n";
        let smuggled = b"GET /b HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        let input = [&upgrade[..], smuggled].concat();
        for step in [1, 7, input.len()] {
            // Refused: the next head is checked (and poisoned).
            let watch = Arc::new(SwitchWatch::default());
            let mut guard = H1Guard::new(Trickle { data: &input, step }, 1024, None)
                .with_switch_watch(watch.clone());
            assert_eq!(read_available(&mut guard).await, upgrade, "step {step}");
            assert!(watch.is_pending());
            watch.answered(StatusCode::OK);
            let mut rest = Vec::new();
            guard.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, POISON, "step {step}");

            // Switched: the bytes after it are no longer HTTP and pass as they are.
            let watch = Arc::new(SwitchWatch::default());
            let mut guard = H1Guard::new(Trickle { data: &input, step }, 1024, None)
                .with_switch_watch(watch.clone());
            assert_eq!(read_available(&mut guard).await, upgrade, "step {step}");
            watch.answered(StatusCode::SWITCHING_PROTOCOLS);
            let mut rest = Vec::new();
            guard.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, smuggled, "step {step}");
        }
    }

    /// A refused CONNECT, even with a 101 for a later request, never switches the guard off:
    /// only the answer to the request that asked counts.
    #[tokio::test]
    async fn a_refused_connect_keeps_the_connection_checked() {
        let connect = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n";
        let bad = b"GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        let input = [&connect[..], bad].concat();
        let watch = Arc::new(SwitchWatch::default());
        let mut guard = H1Guard::new(&input[..], 1024, None).with_switch_watch(watch.clone());
        assert_eq!(read_available(&mut guard).await, connect);
        watch.answered(StatusCode::METHOD_NOT_ALLOWED);
        assert!(!watch.is_pending());
        watch.answered(StatusCode::SWITCHING_PROTOCOLS);
        let mut rest = Vec::new();
        guard.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, POISON);
    }

    /// A switch request's own body is passed on before the wait.
    #[tokio::test]
    async fn a_switch_request_body_passes_before_the_wait() {
        let upgrade =
            b"POST /a HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\nabc";
        let next = b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        let input = [&upgrade[..], next].concat();
        let watch = Arc::new(SwitchWatch::default());
        let mut guard = H1Guard::new(&input[..], 1024, None).with_switch_watch(watch.clone());
        assert_eq!(read_available(&mut guard).await, upgrade);
        watch.answered(StatusCode::OK);
        let mut rest = Vec::new();
        guard.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, next);
    }
}
