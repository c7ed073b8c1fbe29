//! A frame counter in front of hyper's HTTP/2 server: bounds floods of control frames.
//!
//! Every PING and SETTINGS frame obliges the server to answer (an ACK), so a client can make
//! it work without limit at almost no cost to itself; h2 acknowledges them all. The guard
//! follows the frame boundaries of the bytes hyper reads (a 9-byte header, then the payload it
//! skips) and charges each such frame to a token bucket: a burst of [`BURST`] is allowed, refilled
//! at [`REFILL_PER_SEC`]. A client that empties it is sent away, as Envoy does with floods:
//! `on_flood` has the connection send GOAWAY, nothing more is read, and the connection is
//! closed [`FLOOD_GRACE`] later (time for the GOAWAY to leave). Nothing is copied: the bytes are
//! only looked at.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Control frames allowed at once (Envoy bounds queued control frames at 1,000).
pub const BURST: u32 = 1000;
/// Control frames a connection earns back per second.
pub const REFILL_PER_SEC: u32 = 100;
/// How long a flooding connection has to send its GOAWAY before it is closed.
pub const FLOOD_GRACE: Duration = Duration::from_millis(250);

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// Where the reader is in the frame stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    /// Inside the client's connection preface: this many bytes of it are left.
    Preface(usize),
    /// Collecting a frame header: `have` bytes of it in `header`.
    Header {
        header: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Skipping a frame's payload.
    Payload(u32),
}

/// Counts control frames over the bytes of one connection.
#[derive(Debug)]
pub struct ControlFrameBudget {
    cursor: Cursor,
    tokens: i64,
    refilled: Instant,
}

/// What the budget says after some bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// The budget ran out.
    Flood,
}

impl ControlFrameBudget {
    pub fn new(now: Instant) -> Self {
        ControlFrameBudget {
            cursor: Cursor::Preface(PREFACE_LEN),
            tokens: BURST as i64,
            refilled: now,
        }
    }

    /// Follows the frames in `bytes`, the next bytes the client sent.
    pub fn observe(&mut self, mut bytes: &[u8], now: Instant) -> Verdict {
        let mut verdict = Verdict::Fine;
        while !bytes.is_empty() {
            match &mut self.cursor {
                Cursor::Preface(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.cursor = Cursor::Header {
                            header: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                Cursor::Payload(left) => {
                    let n = (*left as usize).min(bytes.len());
                    *left -= n as u32;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.cursor = Cursor::Header {
                            header: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                Cursor::Header { header, have } => {
                    let n = (FRAME_HEADER_LEN - *have).min(bytes.len());
                    header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have < FRAME_HEADER_LEN {
                        continue;
                    }
                    let header = *header;
                    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                    let (kind, flags) = (header[3], header[4]);
                    if matches!(kind, SETTINGS | PING) && flags & ACK == 0 && !self.charge(now) {
                        verdict = Verdict::Flood;
                    }
                    self.cursor = if len == 0 {
                        Cursor::Header {
                            header: [0; FRAME_HEADER_LEN],
                            have: 0,
                        }
                    } else {
                        Cursor::Payload(len)
                    };
                }
            }
        }
        verdict
    }

    /// Takes a token; false if there was none.
    fn charge(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = (elapsed.as_millis() as u64 * REFILL_PER_SEC as u64 / 1000) as i64;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(BURST as i64);
            self.refilled = now;
        }
        self.tokens -= 1;
        self.tokens >= 0
    }
}

/// The connection's byte stream with its control frames counted.
pub struct H2Guard<T> {
    inner: T,
    budget: ControlFrameBudget,
    on_flood: Option<Box<dyn FnOnce()>>,
    /// Once the client flooded: when its connection is closed. Nothing is read until then.
    closing: Option<Pin<Box<Sleep>>>,
}

impl<T> H2Guard<T> {
    /// `on_flood` is called once, when the client first exhausts its budget.
    pub fn new(inner: T, on_flood: impl FnOnce() + 'static) -> Self {
        H2Guard {
            inner,
            budget: ControlFrameBudget::new(crate::rt::coarse_now()),
            on_flood: Some(Box::new(on_flood)),
            closing: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for H2Guard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(closing) = &mut this.closing {
            ready!(closing.as_mut().poll(cx));
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "HTTP/2 control frame flood",
            )));
        }
        let start = out.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
        let read = &out.filled()[start..];
        if !read.is_empty()
            && this.budget.observe(read, crate::rt::coarse_now()) == Verdict::Flood
            && let Some(on_flood) = this.on_flood.take()
        {
            tracing::warn!("HTTP/2 control frame flood: sending GOAWAY and closing");
            on_flood();
            // The frames of this read still go to h2; what follows is never read.
            this.closing = Some(Box::pin(tokio::time::sleep(FLOOD_GRACE)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H2Guard<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn counts_pings_and_settings_but_not_acks_or_payload_bytes() {
        let now = Instant::now();
        let mut budget = ControlFrameBudget::new(now);
        // A DATA payload made of bytes that look like PING headers is skipped, not counted.
        let fake_pings = frame(PING, 0, &[0; 8]).repeat(2000);
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(SETTINGS, 0, &[]));
        stream.extend(frame(SETTINGS, ACK, &[]));
        stream.extend(frame(0x0, 0, &fake_pings));
        stream.extend(frame(PING, ACK, &[0; 8]));
        // Fed a byte at a time, as the worst split of reads.
        for b in &stream {
            assert_eq!(budget.observe(std::slice::from_ref(b), now), Verdict::Fine);
        }
        assert_eq!(budget.tokens, BURST as i64 - 1);
    }

    #[test]
    fn a_flood_is_flagged_and_a_paced_client_is_not() {
        let now = Instant::now();
        let mut budget = ControlFrameBudget::new(now);
        budget.observe(PREFACE, now);
        let ping = frame(PING, 0, &[0; 8]);
        for _ in 0..BURST {
            assert_eq!(budget.observe(&ping, now), Verdict::Fine);
        }
        assert_eq!(budget.observe(&ping, now), Verdict::Flood);

        // At the refill rate, a client never runs out.
        let mut paced = ControlFrameBudget::new(now);
        paced.observe(PREFACE, now);
        let step = Duration::from_millis(1000 / REFILL_PER_SEC as u64);
        for i in 1..=10 * BURST {
            let at = now + step * i;
            assert_eq!(paced.observe(&ping, at), Verdict::Fine, "ping {i}");
        }
    }
}
