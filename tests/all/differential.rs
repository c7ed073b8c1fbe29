//! A bounded differential test of HTTP/1 request framing.
//!
//! A small, strict reference reader of request streams (RFC 9112) and the real proxy read the
//! same bytes, sent over a real socket; an upstream records every request that reaches it. The
//! upstream must receive exactly the requests the reference accepts (method, target, body), in
//! order, and the client must get a `400` where the reference refuses (inside a body: a `400`, or
//! just the end of the connection, as the response may have begun). Inputs come from a
//! seeded generator (clean requests, mutations of them, pipelined pairs, chunked bodies, requests
//! after an `Upgrade` or a `CONNECT`) and a few fixed cases; each input ends with a
//! `Connection: close` request, so the proxy closes the connection once it is done.
//!
//! `DIFF_SEED=<n>` runs another seed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Response;
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// The reference: a strict reader of HTTP/1.1 request streams.

/// A request read whole.
#[derive(Clone, PartialEq, Eq)]
struct Msg {
    method: String,
    target: String,
    body: Vec<u8>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} \"{}\"", self.method, self.target, esc(&self.body))
    }
}

/// What becomes of a request read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Forwarded; the upstream's `200` comes back.
    Forwarded,
    /// Answered by the proxy itself and not forwarded: `CONNECT` (405, the proxy does not
    /// tunnel) and HTTP/1.1 without `Host` (400, RFC 9112 3.2). Both are framed like any other
    /// request, so the stream goes on after them (a server may also close there; see `compare`).
    Answered(u16),
}

/// How the stream ends.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// The last request asked to close: `Connection: close`, or HTTP/1.0 without `keep-alive`.
    Closed,
    /// A head is refused: the client gets `400` and nothing from there on is read.
    RefusedHead(&'static str),
    /// Chunked framing goes wrong inside a body whose head was accepted: that request must not
    /// reach the upstream whole (its head may have); the client gets a `400`, or the
    /// connection just ends.
    RefusedBody(&'static str),
    /// The bytes run out; a server waits for more.
    Open,
}

#[derive(Debug)]
struct Expected {
    msgs: Vec<(Msg, Fate)>,
    end: End,
}

/// `Ok(None)`: the bytes ran out first; `Err`: refused, and why.
type Step<T> = Result<Option<T>, &'static str>;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// The next line; line ends are CRLF only (RFC 9112 2.2): a bare LF or CR is refused.
    fn line(&mut self) -> Step<&'a [u8]> {
        let rest = self.rest();
        let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
            return Ok(None);
        };
        match (rest[i], rest.get(i + 1)) {
            (b'\n', _) => Err("bare LF"),
            (_, None) => Ok(None),
            (_, Some(b'\n')) => {
                self.pos += i + 2;
                Ok(Some(&rest[..i]))
            }
            _ => Err("bare CR"),
        }
    }

    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let rest = self.rest();
        let n = usize::try_from(n).ok().filter(|&n| n <= rest.len())?;
        self.pos += n;
        Some(&rest[..n])
    }
}

fn token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn trim_ows_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    trim_ows_end(s)
}

/// The elements of a list field; empty elements are ignored (RFC 9110 5.6.1).
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// `token ":" OWS value OWS` (RFC 9112 5): no obs-fold, no whitespace before the colon, no
/// control bytes in the value.
fn field(line: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err("obs-fold");
    }
    let colon = line.iter().position(|&b| b == b':').ok_or("no colon")?;
    let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
    if !token(name) {
        return Err("bad field name (or whitespace before the colon)");
    }
    let vchar = |b: &u8| matches!(b, b'\t' | b' ' | 0x21..=0x7e | 0x80..);
    if !value.iter().all(vchar) {
        return Err("control byte in a field value");
    }
    Ok((name, value))
}

struct Head {
    msg: Msg,
    chunked: bool,
    length: u64,
    close: bool,
    fate: Fate,
}

fn head(c: &mut Cursor) -> Step<Head> {
    let Some(request_line) = c.line()? else {
        return Ok(None);
    };
    let mut lines = Vec::new();
    loop {
        match c.line()? {
            None => return Ok(None),
            Some([]) => break,
            Some(line) => lines.push(line),
        }
    }
    let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Err("request line is not method SP target SP version");
    };
    if !token(method) {
        return Err("bad method");
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("bad request target");
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err("bad version"),
    };
    let (mut length, mut hosts, mut te, mut codings, mut connection) =
        (None, 0, false, Vec::new(), Vec::new());
    for line in lines {
        let (name, value) = field(line)?;
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("content-length") {
            if length.is_some() {
                return Err("more than one Content-Length");
            }
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err("Content-Length is not digits");
            }
            // RFC 9110 8.6 allows any number of digits; the guard refuses more than 19 (a
            // u64's worth, leading zeros included). Refusing is never unsafe, so the reference
            // does the same.
            if value.len() > 19 {
                return Err("Content-Length over 19 digits");
            }
            let digits = std::str::from_utf8(value).unwrap();
            length = Some(digits.parse().map_err(|_| "Content-Length overflows")?);
        } else if is("transfer-encoding") {
            te = true;
            codings.extend(value.split(|&b| b == b',').map(trim_ows));
        } else if is("host") {
            hosts += 1;
        } else if is("connection") {
            connection.extend(list(value));
        }
        // `Upgrade` changes nothing: the upstream never answers 101, and an upgrade not
        // accepted leaves a normal request (RFC 9110 7.8).
    }
    if te {
        let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
        if length.is_some() {
            return Err("Transfer-Encoding with Content-Length");
        }
        if http10 {
            return Err("Transfer-Encoding on HTTP/1.0");
        }
        // Empty list elements are ignored (RFC 9110 5.6.1), except after the final `chunked`:
        // hyper refuses `chunked,` and so does the reference (refusing is never unsafe).
        let named: Vec<&[u8]> = codings.iter().copied().filter(|c| !c.is_empty()).collect();
        if !named.iter().all(|c| token(c))
            || named.iter().filter(|c| chunked(c)).count() != 1
            || !codings.last().is_some_and(|c| chunked(c))
        {
            return Err("Transfer-Encoding does not end with one chunked");
        }
    }
    if hosts > 1 {
        return Err("more than one Host");
    }
    let has = |t: &[u8]| connection.iter().any(|c| c.eq_ignore_ascii_case(t));
    let fate = match (method, hosts) {
        (b"CONNECT", _) => Fate::Answered(405),
        (_, 0) if !http10 => Fate::Answered(400),
        _ => Fate::Forwarded,
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(Some(Head {
        msg: Msg {
            method: text(method),
            target: text(target),
            body: Vec::new(),
        },
        chunked: te,
        length: length.unwrap_or(0),
        close: has(b"close") || (http10 && !has(b"keep-alive")),
        fate,
    }))
}

/// A chunked body (RFC 9112 7.1): hex sizes, extensions, CRLF after the data, trailers.
fn chunked(c: &mut Cursor) -> Step<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let Some(line) = c.line()? else {
            return Ok(None);
        };
        // `chunk-size [ chunk-ext ]`, read as hyper (and so the proxy) reads it: whitespace
        // may follow the size even without an extension (RFC 9112 7.1.1 has it only before
        // `;`), and an extension is ignored up to the line end, unchecked. Both are harmless:
        // the line still ends at a strict CRLF, and the proxy re-frames the body it forwards,
        // so no other hop reads this line.
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = trim_ows_end(size);
        if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err("bad chunk size");
        }
        let size = u64::from_str_radix(std::str::from_utf8(size).unwrap(), 16)
            .map_err(|_| "chunk size overflows")?;
        if size == 0 {
            break;
        }
        let Some(data) = c.take(size) else {
            return Ok(None);
        };
        body.extend_from_slice(data);
        match c.line()? {
            None => return Ok(None),
            Some([]) => {}
            Some(_) => return Err("chunk data not followed by CRLF"),
        }
    }
    loop {
        match c.line()? {
            None => return Ok(None),
            Some([]) => return Ok(Some(body)),
            Some(line) => {
                field(line)?;
            }
        }
    }
}

/// Splits a request stream into the requests a strict server reads from it.
fn reference(input: &[u8]) -> Expected {
    let mut c = Cursor { buf: input, pos: 0 };
    let mut msgs = Vec::new();
    let end = loop {
        // RFC 9112 2.2: a server SHOULD ignore at least one empty line (CRLF) before a request
        // line. The proxy (the guard and hyper) ignores any number; it is harmless, so does
        // the reference.
        while c.rest().starts_with(b"\r\n") {
            c.pos += 2;
        }
        if c.rest().is_empty() {
            break End::Open;
        }
        let head = match head(&mut c) {
            Ok(Some(head)) => head,
            Ok(None) => break End::Open,
            Err(why) => break End::RefusedHead(why),
        };
        let body = if head.chunked {
            match chunked(&mut c) {
                Ok(body) => body,
                Err(why) => break End::RefusedBody(why),
            }
        } else {
            c.take(head.length).map(<[u8]>::to_vec)
        };
        let Some(body) = body else {
            break End::Open;
        };
        msgs.push((Msg { body, ..head.msg }, head.fate));
        if head.close {
            break End::Closed;
        }
    };
    Expected { msgs, end }
}

// ---------------------------------------------------------------------------------------------
// Inputs: requests built from parts, so that mutations can aim at a line, a field or a line end.

#[derive(Clone)]
struct Req {
    /// Bytes before the request line.
    leading: Vec<u8>,
    line: String,
    /// Field lines, without their line ends.
    fields: Vec<Vec<u8>>,
    body: Body,
    /// Line ends replaced: (in the body's chunked framing?, which one (modulo their number), by what).
    eols: Vec<(bool, usize, &'static [u8])>,
}

#[derive(Clone)]
enum Body {
    Raw(Vec<u8>),
    Chunked {
        /// (size line, data)
        chunks: Vec<(Vec<u8>, Vec<u8>)>,
        last: Vec<u8>,
        trailers: Vec<Vec<u8>>,
    },
}

impl Req {
    fn render(&self) -> Vec<u8> {
        // `None` stands for a line end.
        let mut head: Vec<Option<&[u8]>> = vec![Some(&self.leading), Some(self.line.as_bytes())];
        for f in &self.fields {
            head.extend([None, Some(&f[..])]);
        }
        head.extend([None, None]);
        let mut body: Vec<Option<&[u8]>> = Vec::new();
        match &self.body {
            Body::Raw(b) => body.push(Some(&b[..])),
            Body::Chunked {
                chunks,
                last,
                trailers,
            } => {
                for (size, data) in chunks {
                    body.extend([Some(&size[..]), None, Some(&data[..]), None]);
                }
                body.extend([Some(&last[..]), None]);
                for t in trailers {
                    body.extend([Some(&t[..]), None]);
                }
                body.push(None);
            }
        }
        let mut out = Vec::new();
        for (in_body, pieces) in [(false, head), (true, body)] {
            let count = pieces.iter().filter(|p| p.is_none()).count().max(1);
            let mut nth = 0;
            for piece in pieces {
                match piece {
                    Some(bytes) => out.extend_from_slice(bytes),
                    None => {
                        let eol = self
                            .eols
                            .iter()
                            .find(|e| e.0 == in_body && e.1 % count == nth);
                        out.extend_from_slice(eol.map_or(b"\r\n".as_slice(), |e| e.2));
                        nth += 1;
                    }
                }
            }
        }
        out
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| {
            f.len() > name.len()
                && f[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && f[name.len()] == b':'
        })
    }

    fn insert(&mut self, rng: &mut StdRng, line: impl Into<Vec<u8>>) {
        let at = rng.random_range(0..=self.fields.len());
        self.fields.insert(at, line.into());
    }
}

fn pick<'a, T: ?Sized>(rng: &mut StdRng, items: &[&'a T]) -> &'a T {
    items[rng.random_range(0..items.len())]
}

fn choose(rng: &mut StdRng, items: &[String]) -> String {
    items[rng.random_range(0..items.len())].clone()
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
const TARGETS: &[&str] = &["/", "/a", "/a/b?c=d&e", "/x%20y", "/GET%20/%20HTTP/1.1"];
const EXTRA: &[&[u8]] = &[
    b"User-Agent: diff/1",
    b"Accept: */*",
    b"X-Trace:abc",
    b"X-Empty:",
    b"X-Tab:\tv\t",
    b"X-Spaces:   a  b   ",
    b"X-Obs-Text: caf\xe9",
];

/// Body bytes: anything, sometimes a whole request (which must stay a body).
fn data(rng: &mut StdRng, host: &str, max: usize) -> Vec<u8> {
    if rng.random_bool(0.2) {
        return format!("GET /inner HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    }
    let alphabet = b"abcXYZ019 :;\r\n";
    (0..rng.random_range(1..=max))
        .map(|_| alphabet[rng.random_range(0..alphabet.len())])
        .collect()
}

fn size_line(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let zeros = "0".repeat(rng.random_range(0..=2) * usize::from(rng.random_bool(0.2)));
    let hex = if rng.random_bool(0.5) {
        format!("{n:x}")
    } else {
        format!("{n:X}")
    };
    let ext = pick(
        rng,
        &["", "", "", ";a", ";a=b", ";a=\"q s\"", " ;a=b", ";a=b;c"],
    );
    format!("{zeros}{hex}{ext}").into_bytes()
}

fn chunked_body(rng: &mut StdRng, host: &str) -> Body {
    let chunks = (0..rng.random_range(0..=3))
        .map(|_| {
            let d = data(rng, host, 20);
            (size_line(rng, d.len()), d)
        })
        .collect();
    let last = pick(rng, &["0", "0", "000", "0;end"]).into();
    let trailers = (0..rng.random_range(0..=2))
        .map(|_| pick(rng, &["X-T: 1", "X-U:v"]).into())
        .collect();
    Body::Chunked {
        chunks,
        last,
        trailers,
    }
}

/// A well-formed request.
fn clean(rng: &mut StdRng, host: &str) -> Req {
    let method = pick(rng, METHODS);
    let target = pick(rng, TARGETS);
    let http10 = rng.random_bool(0.1);
    let mut r = Req {
        leading: Vec::new(),
        line: format!("{method} {target} HTTP/1.{}", u8::from(!http10)),
        fields: Vec::new(),
        body: Body::Raw(Vec::new()),
        eols: Vec::new(),
    };
    for _ in 0..rng.random_range(0..=2) {
        r.fields.push(pick(rng, EXTRA).to_vec());
    }
    if !http10 || rng.random_bool(0.5) {
        let ows = pick(rng, &[" ", "", "\t", "  "]);
        r.insert(rng, format!("Host:{ows}{host}"));
    }
    if http10 && rng.random_bool(0.5) {
        r.insert(rng, "Connection: keep-alive");
    }
    match rng.random_range(0..10) {
        0..=3 => {}
        4..=6 => {
            let d = data(rng, host, 40);
            r.insert(rng, format!("Content-Length: {}", d.len()));
            r.body = Body::Raw(d);
        }
        _ if http10 => r.insert(rng, "Content-Length: 0"),
        _ => {
            r.insert(rng, "Transfer-Encoding: chunked");
            r.body = chunked_body(rng, host);
        }
    }
    r
}

/// Mutations, most of them making the request one the reference refuses.
const MUTATIONS: usize = 22;

/// Applies mutation `kind` if it fits the request; returns its name.
fn mutate(rng: &mut StdRng, r: &mut Req, kind: usize, host: &str) -> Option<&'static str> {
    let cl = r.find("content-length");
    let te = r.find("transfer-encoding");
    let length = match &r.body {
        Body::Raw(b) => b.len(),
        Body::Chunked { .. } => 0,
    };
    let (method, target) = r.line.split_once(' ').unwrap_or(("GET", "/ HTTP/1.1"));
    let target = target.split(' ').next().unwrap_or("/").to_owned();
    let method = method.to_owned();
    match kind {
        0 => {
            let eol = pick(rng, &[b"\n".as_slice(), b"\r", b"\r\r\n", b"\n\r"]);
            r.eols.push((false, rng.random_range(0..64), eol));
            Some("head line end")
        }
        1 => {
            let n = length + usize::from(rng.random_bool(0.3));
            r.insert(rng, format!("Content-Length: {n}"));
            if cl.is_none() {
                r.insert(rng, format!("Content-Length: {length}"));
            }
            Some("second Content-Length")
        }
        2 => {
            let n = length;
            let value = choose(
                rng,
                &[
                    format!("+{n}"),
                    format!("{n}, {n}"),
                    format!("-{n}"),
                    format!("0x{n:x}"),
                    format!("{n} {n}"),
                    String::new(),
                    format!("{n}.0"),
                    format!("0{n}"),
                    format!("00000000000000000000{n}"),
                    format!(" {n}\t"),
                ],
            );
            r.fields[cl?] = format!("Content-Length:{value}").into_bytes();
            Some("Content-Length value")
        }
        3 => {
            cl?;
            r.insert(rng, "Transfer-Encoding: chunked");
            Some("Transfer-Encoding with Content-Length")
        }
        4 => {
            let te = te?;
            match rng.random_range(0..6) {
                0 => r.fields.insert(te, b"Transfer-Encoding: gzip".to_vec()),
                1 => r.insert(rng, "Transfer-Encoding: chunked"),
                _ => {
                    let value = pick(
                        rng,
                        &[
                            "chunked, identity",
                            "identity",
                            "xchunked",
                            "chunked, chunked",
                            "gzip, chunked",
                            "Chunked",
                            "chunked,",
                            ", chunked",
                            "chunked ",
                            "chunk",
                            "\"chunked\"",
                            "chunked;q=1",
                        ],
                    );
                    r.fields[te] = format!("Transfer-Encoding: {value}").into_bytes();
                }
            }
            Some("Transfer-Encoding value")
        }
        5 => {
            r.line = r.line.replace("HTTP/1.1", "HTTP/1.0");
            Some("HTTP/1.0")
        }
        6 => {
            let line = pick(rng, &[" folded", "\tfolded", " "]);
            r.insert(rng, line);
            Some("obs-fold")
        }
        7 => {
            let i = rng.random_range(0..r.fields.len().max(1));
            let f = r.fields.get_mut(i)?;
            let colon = f.iter().position(|&b| b == b':')?;
            f.insert(colon, *pick(rng, &[b" ", b"\t"]).first().unwrap());
            Some("whitespace before colon")
        }
        8 => {
            let other = pick(rng, &[host, "other"]).to_owned();
            r.insert(rng, format!("Host: {other}"));
            Some("second Host")
        }
        9 => {
            let i = r.find("host")?;
            r.fields.remove(i);
            Some("no Host")
        }
        10 => {
            let line = pick(rng, &["X@A: 1", "X A: 1", ": 1", "X-A", "[x]: 1"]);
            r.insert(rng, line);
            Some("bad field name")
        }
        11 => {
            let line = pick(
                rng,
                &[b"X-B: a\x00b".as_slice(), b"X-B: a\x7fb", b"X-B: a\x0bb"],
            );
            r.insert(rng, line);
            Some("control byte in value")
        }
        12 => {
            let (m, t) = (&method, &target);
            r.line = choose(
                rng,
                &[
                    format!("{m}  {t} HTTP/1.1"),
                    format!("{m}\t{t} HTTP/1.1"),
                    format!("{m} {t} http/1.1"),
                    format!("{m} {t} HTTP/1.2"),
                    format!("{m} {t}"),
                    format!("{m} {t} HTTP/1.1 "),
                    format!(" {m} {t} HTTP/1.1"),
                    format!("{m} /a b HTTP/1.1"),
                ],
            );
            Some("request line")
        }
        13 => {
            r.leading = pick(rng, &[b"\r\n".as_slice(), b"\r\n\r\n", b"\n", b"\r"]).to_vec();
            Some("before the request line")
        }
        14..=17 => {
            let Body::Chunked {
                chunks,
                last,
                trailers,
            } = &mut r.body
            else {
                return None;
            };
            match kind {
                14 if chunks.is_empty() => {
                    *last = pick(rng, &["", " 0", "0 ", "x", "00", "0\t"]).into();
                }
                14 => {
                    let i = rng.random_range(0..chunks.len());
                    let n = chunks[i].1.len();
                    let m = if rng.random_bool(0.5) { n + 1 } else { n - 1 };
                    chunks[i].0 = choose(
                        rng,
                        &[
                            "g".into(),
                            "-1".into(),
                            format!("0x{n:x}"),
                            String::new(),
                            format!(" {n:x}"),
                            format!("{n:x} "),
                            format!("{n:x}\t"),
                            format!("+{n:x}"),
                            format!("{n:x} {n:x}"),
                            format!("{m:x}"),
                        ],
                    )
                    .into();
                }
                15 => {
                    let eol = pick(rng, &[b"\n".as_slice(), b"\r", b"", b"\r\r\n"]);
                    r.eols.push((true, rng.random_range(0..64), eol));
                }
                16 => {
                    let ext = pick(
                        rng,
                        &[";", "; ", ";=b", ";a=", ";a=b c", ";a=\"open", ";a b"],
                    );
                    match chunks.last_mut() {
                        Some(chunk) => chunk.0.extend_from_slice(ext.as_bytes()),
                        None => last.extend_from_slice(ext.as_bytes()),
                    }
                }
                _ => {
                    let line = pick(rng, &["X-T : 1", " folded", "X@T: 1", "X-T"]);
                    trailers.insert(rng.random_range(0..=trailers.len()), line.into());
                }
            }
            Some(
                [
                    "bad chunk size",
                    "chunked line end",
                    "chunk extension",
                    "trailer",
                ][kind - 14],
            )
        }
        18 => {
            r.insert(rng, "Upgrade: x");
            if rng.random_bool(0.5) {
                r.insert(rng, "Connection: upgrade");
            }
            Some("Upgrade")
        }
        19 => {
            r.line = format!("CONNECT {host}:443 HTTP/1.1");
            r.fields
                .retain(|f| !f.to_ascii_lowercase().starts_with(b"content-length:"));
            r.fields
                .retain(|f| !f.to_ascii_lowercase().starts_with(b"transfer-encoding:"));
            r.body = Body::Raw(Vec::new());
            Some("CONNECT")
        }
        20 => {
            let n = if rng.random_bool(0.5) {
                length + 1
            } else {
                length.checked_sub(1)?
            };
            r.fields[cl?] = format!("Content-Length: {n}").into_bytes();
            Some("Content-Length off by one")
        }
        _ => {
            r.insert(rng, "Connection: close");
            Some("Connection: close")
        }
    }
}

/// Applies one mutation that fits, drawn from `kinds`.
fn mutate_any(rng: &mut StdRng, r: &mut Req, kinds: &[usize], host: &str) -> &'static str {
    for _ in 0..100 {
        let kind = kinds[rng.random_range(0..kinds.len())];
        let mut candidate = r.clone();
        if let Some(name) = mutate(rng, &mut candidate, kind, host) {
            *r = candidate;
            return name;
        }
    }
    "none"
}

struct Case {
    name: String,
    host: String,
    input: Vec<u8>,
}

/// Every input ends with this, so that the proxy closes once it has read everything.
fn closing(host: &str) -> Vec<u8> {
    format!("GET /end HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Fixed cases: named shapes, `{h}` standing for the case's host.
fn fixed_cases() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "bare LF request after an Upgrade request",
            "GET /u HTTP/1.1\r\nHost: {h}\r\nUpgrade: x\r\n\r\nGET /b HTTP/1.1\nHost: {h}\r\n\r\n",
        ),
        (
            "CL+TE request after an accepted-looking upgrade",
            "GET /u HTTP/1.1\r\nHost: {h}\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two Hosts after a CONNECT",
            "CONNECT {h}:443 HTTP/1.1\r\nHost: {h}:443\r\n\r\nGET /b HTTP/1.1\r\nHost: {h}\r\nHost: i\r\n\r\n",
        ),
        (
            "CL+TE request after a CONNECT",
            "CONNECT {h}:443 HTTP/1.1\r\nHost: {h}:443\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
              GET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n",
        ),
        (
            "an upgrade request with a body of known length",
            "POST /u HTTP/1.1\r\nHost: {h}\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "an upgrade request with a chunked body",
            "POST /u HTTP/1.1\r\nHost: {h}\r\nConnection: upgrade\r\nUpgrade: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "a bare LF ends the trailer section",
            "POST /a HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n\
              POST /b HTTP/1.1\r\nHost: {h}\r\nContent-Length: 30\r\n\r\nGET /c HTTP/1.1\nHost: x\n\n12345",
        ),
        (
            "a bare LF in a trailer line",
            "POST /a HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\n\r\n",
        ),
        (
            "a bare LF after a chunk size",
            "POST /a HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        ),
        (
            "leading empty lines",
            "\r\n\r\nGET /a HTTP/1.1\r\nHost: {h}\r\n\r\n",
        ),
        (
            "pipelined chunked with trailers",
            "POST /a HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3\r\n\r\nxyz",
        ),
    ]
}

fn cases(seed: u64) -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cases = Vec::new();
    let mut add = |name: String, host: String, mut input: Vec<u8>| {
        input.extend(closing(&host));
        cases.push(Case { name, host, input });
    };
    for (k, (name, input)) in fixed_cases().into_iter().enumerate() {
        let host = format!("f{k}");
        add(
            name.into(),
            host.clone(),
            input.replace("{h}", &host).into_bytes(),
        );
    }
    let all: Vec<usize> = (0..MUTATIONS).collect();
    for i in 0..460 {
        let host = format!("c{i}");
        let h = host.as_str();
        let (name, input) = match i {
            // One request, clean or with one or two mutations.
            0..=179 => {
                let mut r = clean(&mut rng, h);
                let mut names = Vec::new();
                for _ in 0..[0, 1, 1, 1, 1, 2][rng.random_range(0..6)] {
                    names.push(mutate_any(&mut rng, &mut r, &all, h));
                }
                (format!("single {names:?}"), r.render())
            }
            // A chunked request with a mutation of its framing, sometimes followed by another.
            180..=279 => {
                let mut r = clean(&mut rng, h);
                r.body = chunked_body(&mut rng, h);
                r.fields
                    .retain(|f| !f.to_ascii_lowercase().starts_with(b"content-length:"));
                r.line = r.line.replace("HTTP/1.0", "HTTP/1.1");
                if r.find("transfer-encoding").is_none() {
                    r.insert(&mut rng, "Transfer-Encoding: chunked");
                }
                if r.find("host").is_none() {
                    r.insert(&mut rng, format!("Host: {h}"));
                }
                let name = mutate_any(&mut rng, &mut r, &[4, 14, 15, 16, 17], h);
                let mut input = r.render();
                if rng.random_bool(0.5) {
                    input.extend(clean(&mut rng, h).render());
                }
                (format!("chunked [{name}]"), input)
            }
            // Two requests on one connection, either or both mutated.
            280..=409 => {
                let (mut a, mut b) = (clean(&mut rng, h), clean(&mut rng, h));
                let mut names = ["clean", "clean"];
                if rng.random_bool(0.3) {
                    names[0] = mutate_any(&mut rng, &mut a, &all, h);
                }
                if rng.random_bool(0.7) {
                    names[1] = mutate_any(&mut rng, &mut b, &all, h);
                }
                let mut input = a.render();
                input.extend(b.render());
                (format!("pipelined {names:?}"), input)
            }
            // An Upgrade or CONNECT request, then a request that is usually bad.
            _ => {
                let mut a = clean(&mut rng, h);
                a.body = Body::Raw(Vec::new());
                a.fields.retain(|f| {
                    let f = f.to_ascii_lowercase();
                    !f.starts_with(b"content-length:") && !f.starts_with(b"transfer-encoding:")
                });
                a.line = a.line.replace("HTTP/1.0", "HTTP/1.1");
                if a.find("host").is_none() {
                    a.insert(&mut rng, format!("Host: {h}"));
                }
                let first = mutate_any(&mut rng, &mut a, &[18, 19], h);
                let mut b = clean(&mut rng, h);
                let second = if rng.random_bool(0.8) {
                    mutate_any(&mut rng, &mut b, &all, h)
                } else {
                    "clean"
                };
                let mut input = a.render();
                input.extend(b.render());
                (format!("after {first}: {second}"), input)
            }
        };
        add(format!("#{i} {name}"), host, input);
    }
    cases
}

// ---------------------------------------------------------------------------------------------
// Running a case through the proxy.

/// A request as the upstream received it; `whole` is false if its body broke off.
#[derive(Debug)]
struct Seen {
    host: Option<String>,
    msg: Msg,
    whole: bool,
}

#[derive(Debug)]
struct Observed {
    statuses: Vec<u16>,
    /// What the proxy wrote after its last parsable response.
    junk: Vec<u8>,
    /// Whether the proxy closed the connection (rather than the wait running out).
    closed: bool,
    upstream: Vec<Seen>,
}

async fn recording_upstream(log: Arc<Mutex<Vec<Seen>>>) -> Upstream {
    Upstream::start(move |req| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes().to_vec());
            log.lock().unwrap().push(Seen {
                host: parts.headers.get("host").map(|h| {
                    let h = String::from_utf8_lossy(h.as_bytes());
                    h.split(':').next().unwrap_or_default().to_owned()
                }),
                msg: Msg {
                    method: parts.method.to_string(),
                    target: parts.uri.to_string(),
                    body: body.as_deref().unwrap_or_default().to_vec(),
                },
                whole: body.is_ok(),
            });
            Response::builder().body(full("ok")).unwrap()
        }
    })
    .await
}

/// Writes `input` on a fresh connection and reads until the proxy closes or `wait` passes.
async fn exchange(addr: SocketAddr, input: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The proxy may close before it has read everything.
    let _ = s.write_all(input).await;
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
        }
    };
    let closed = tokio::time::timeout(wait, read).await.is_ok();
    (out, closed)
}

/// The statuses of the responses in `bytes`, and what is left that does not parse as one.
fn responses(mut bytes: &[u8]) -> (Vec<u16>, Vec<u8>) {
    let mut statuses = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let Some(status) = head
            .strip_prefix("http/1.1 ")
            .or_else(|| head.strip_prefix("http/1.0 "))
            .and_then(|s| s.get(..3)?.parse().ok())
        else {
            break;
        };
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let rest = &bytes[end + 4..];
        match length {
            Some(n) if n <= rest.len() => bytes = &rest[n..],
            None if head.contains("transfer-encoding: chunked") => {
                match rest.windows(5).position(|w| w == b"0\r\n\r\n") {
                    Some(i) => bytes = &rest[i + 5..],
                    None => break,
                }
            }
            _ => break,
        }
        statuses.push(status);
    }
    (statuses, bytes.to_vec())
}

/// Whether what the proxy did is what the reference says.
fn compare(want: &Expected, got: &Observed, host: &str) -> Result<(), String> {
    if !got.junk.is_empty() {
        return Err(format!("unparsable response bytes: \"{}\"", esc(&got.junk)));
    }
    let mut statuses = got.statuses.iter().copied();
    let mut upstream = got.upstream.iter().filter(|s| s.whole).map(|s| &s.msg);
    for (i, (msg, fate)) in want.msgs.iter().enumerate() {
        let status = statuses.next();
        let what = format!("request {i} ({} {})", msg.method, msg.target);
        match *fate {
            Fate::Forwarded => {
                if status != Some(200) {
                    return Err(format!("{what}: client got {status:?}, want 200"));
                }
                match upstream.next() {
                    Some(seen) if seen == msg => {}
                    seen => return Err(format!("{what}: upstream got {seen:?}, want {msg:?}")),
                }
            }
            Fate::Answered(code) => {
                if status != Some(code) {
                    return Err(format!("{what}: client got {status:?}, want {code}"));
                }
                // After answering by itself a server may close rather than read on (RFC 9112
                // 9.3); hyper does when the unread body is not in its buffer yet. Closing
                // there is never unsafe.
                if got.closed && statuses.len() == 0 && upstream.clone().next().is_none() {
                    return Ok(());
                }
            }
        }
    }
    match (&want.end, statuses.next()) {
        (End::RefusedHead(_), Some(400)) | (End::Closed | End::Open, None) => {}
        // Bad framing inside a body is the client's error as much as a bad head: 400 if the
        // response has not started, else just the end of the connection. A 5xx would blame
        // (and count against) the upstream.
        (End::RefusedBody(_), Some(400) | None) => {}
        (end, s) => return Err(format!("at the end ({end:?}) the client got {s:?}")),
    }
    if let Some(s) = statuses.next() {
        return Err(format!("the client got an extra response: {s}"));
    }
    if let Some(m) = upstream.next() {
        return Err(format!(
            "the upstream got a request the reference does not: {m:?}"
        ));
    }
    if want.end != End::Open && !got.closed {
        return Err("the proxy left the connection open".into());
    }
    // The head of a request whose body then breaks may have been sent on already; its body
    // never completes, and nothing else may break off.
    let broken = got.upstream.iter().filter(|s| !s.whole);
    let allowed = usize::from(matches!(want.end, End::RefusedBody(_)));
    if broken.filter(|s| s.host.as_deref() == Some(host)).count() > allowed {
        return Err("the upstream got a request that broke off".into());
    }
    Ok(())
}

fn esc(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn describe(want: &Expected) -> String {
    let msgs: Vec<String> = want
        .msgs
        .iter()
        .map(|(m, fate)| format!("{m:?} {fate:?}"))
        .collect();
    format!("{msgs:?} then {:?}", want.end)
}

fn describe_observed(got: &Observed) -> String {
    let seen: Vec<String> = got
        .upstream
        .iter()
        .map(|s| {
            let cut = if s.whole { "" } else { " (broke off)" };
            format!("{:?}{cut}", s.msg)
        })
        .collect();
    let end = if got.closed { "closed" } else { "left open" };
    format!(
        "client got {:?} ({end}); upstream got {seen:?}",
        got.statuses
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_reads_requests_as_a_strict_reference_does() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let up = recording_upstream(log.clone()).await;
    let proxy = start_proxy(&simple_config(&[up.addr], "", ""));
    let addr = proxy.listener_addr("ingress").unwrap();
    let seed = std::env::var("DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_d1ff);
    let cases = cases(seed);
    let started = Instant::now();
    let mut failures = Vec::new();
    // What the cases covered: how the reference ended them, requests forwarded, and what the
    // client saw where a body was refused.
    let (mut ends, mut forwarded) = ([0; 4], 0);
    let mut body_refusals = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for case in &cases {
        let want = reference(&case.input);
        ends[match want.end {
            End::Closed => 0,
            End::RefusedHead(_) => 1,
            End::RefusedBody(_) => 2,
            End::Open => 3,
        }] += 1;
        forwarded += want.msgs.iter().filter(|m| m.1 == Fate::Forwarded).count();
        log.lock().unwrap().clear();
        let wait = if want.end == End::Open {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        };
        let (bytes, closed) = exchange(addr, &case.input, wait).await;
        let (statuses, junk) = responses(&bytes);
        let mut got = Observed {
            statuses,
            junk,
            closed,
            upstream: std::mem::take(&mut *log.lock().unwrap()),
        };
        if matches!(want.end, End::RefusedBody(_)) {
            *body_refusals
                .entry(got.statuses.get(want.msgs.len()).copied())
                .or_default() += 1;
        }
        if compare(&want, &got, &case.host).is_err() {
            // Give a straggling upstream request time to be recorded before judging.
            tokio::time::sleep(Duration::from_millis(50)).await;
            got.upstream.append(&mut log.lock().unwrap());
        }
        if let Err(why) = compare(&want, &got, &case.host) {
            let lower = case.input.to_ascii_lowercase();
            let involves = |s: &[u8]| lower.windows(s.len()).any(|w| w == s);
            let tag = if involves(b"\nupgrade:") || involves(b"connect ") {
                " (involves Upgrade or CONNECT)"
            } else {
                ""
            };
            failures.push(format!(
                "case {}{tag}: {why}\n  input:     \"{}\"\n  reference: {}\n  proxy:     {}",
                case.name,
                esc(&case.input),
                describe(&want),
                describe_observed(&got),
            ));
        }
    }
    let [closed, head, body, open] = ends;
    eprintln!(
        "{} cases (seed {seed:#x}) in {:?}: {closed} read to the end, {head} refused in a head, \
         {body} in a body (the client then saw {body_refusals:?}), {open} left open; \
         {forwarded} requests to forward",
        cases.len(),
        started.elapsed()
    );
    // The first ones in full, then one line each.
    let (full, short) = failures.split_at(failures.len().min(12));
    let short: Vec<&str> = short
        .iter()
        .map(|f| f.lines().next().unwrap_or_default())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from the reference (seed {seed:#x}):\n\n{}\n\n{}",
        failures.len(),
        cases.len(),
        full.join("\n\n"),
        short.join("\n")
    );
}
