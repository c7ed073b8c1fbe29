//! Trace context on the wire: W3C `traceparent` / `tracestate` and Zipkin's B3 (multi-header
//! `x-b3-*` or single `b3`), read from a request and written onto it for the next hop.
//!
//! Hand-written, as linkerd2-proxy's `trace-context`: the formats are small, and parsing them
//! here keeps OpenTelemetry's API churn off the request path. Anything malformed (a wrong
//! length, a non-hex digit, an all-zero id, version `ff`) is ignored as if absent: the request
//! starts a new trace, it never fails.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// The caller's span, which the proxy's span continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// How the request carried B3, so the next hop gets it the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum B3Style {
    #[default]
    None,
    Multi,
    Single,
}

/// What a request says about its trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's span, when a valid one was sent.
    pub parent: Option<Parent>,
    /// The caller's sampling decision (B3 may send one without ids); none: ours to make.
    pub sampled: Option<bool>,
    /// B3's debug flag (`x-b3-flags: 1`, `b3: ...-d`): sampled, and said so to the next hop.
    pub debug: bool,
    /// The parent came from a valid `traceparent`, so `tracestate` goes on with it.
    pub w3c: bool,
    pub b3: B3Style,
}

/// Reads a request's trace context: a valid `traceparent` first, else B3 (`b3`, then the
/// `x-b3-*` headers).
pub fn extract(headers: &HeaderMap) -> Extracted {
    let b3 = if headers.contains_key(&B3) {
        B3Style::Single
    } else if [&B3_TRACE_ID, &B3_SPAN_ID, &B3_SAMPLED, &B3_FLAGS]
        .iter()
        .any(|n| headers.contains_key(*n))
    {
        B3Style::Multi
    } else {
        B3Style::None
    };
    if let Some((parent, sampled)) = only(headers, &TRACEPARENT).and_then(parse_traceparent) {
        return Extracted {
            parent: Some(parent),
            sampled: Some(sampled),
            debug: false,
            w3c: true,
            b3,
        };
    }
    let (parent, sampled, debug) = match b3 {
        B3Style::None => (None, None, false),
        B3Style::Single => only(headers, &B3).map_or((None, None, false), parse_b3_single),
        B3Style::Multi => parse_b3_multi(headers),
    };
    Extracted {
        parent,
        sampled: if debug { Some(true) } else { sampled },
        debug,
        w3c: false,
        b3,
    }
}

/// The value of a header sent once; a repeated one is as good as none.
fn only<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first.as_bytes())
}

/// The request's `tracestate` (a list that may come in several headers), as one value.
pub fn tracestate(headers: &HeaderMap) -> Option<String> {
    let mut joined = String::new();
    for v in headers.get_all(&TRACESTATE) {
        let v = v.to_str().ok()?;
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(v);
    }
    (!joined.is_empty()).then_some(joined)
}

/// `{version}-{trace-id}-{parent-id}-{flags}` (W3C Trace Context, level 1): lowercase hex,
/// version `ff` invalid; a later version may append `-...`, version 00 may not.
pub fn parse_traceparent(v: &[u8]) -> Option<(Parent, bool)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let [version] = hex::<1>(&v[..2], true)?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = nonzero(hex::<16>(&v[3..35], true)?)?;
    let span_id = nonzero(hex::<8>(&v[36..52], true)?)?;
    let [flags] = hex::<1>(&v[53..55], true)?;
    Some((Parent { trace_id, span_id }, flags & 1 == 1))
}

/// `b3: {trace-id}-{span-id}[-{sampled}[-{parent-span-id}]]`, or `b3: {sampled}` alone.
/// Returns the parent, the decision and the debug flag.
fn parse_b3_single(v: &[u8]) -> (Option<Parent>, Option<bool>, bool) {
    let mut fields = v.split(|&b| b == b'-');
    let first = fields.next().unwrap_or_default();
    let Some(span) = fields.next() else {
        // A decision alone.
        let (sampled, debug) = b3_sampling_state(first);
        return (None, sampled, debug);
    };
    let (sampled, debug) = fields.next().map_or((None, false), b3_sampling_state);
    let parent = b3_trace_id(first)
        .zip(b3_span_id(span))
        .map(|(trace_id, span_id)| Parent { trace_id, span_id });
    match parent {
        Some(_) => (parent, sampled, debug),
        // Ids sent but broken: nothing of it is trusted.
        None => (None, None, false),
    }
}

/// `1`, `0` or `d` (debug).
fn b3_sampling_state(v: &[u8]) -> (Option<bool>, bool) {
    match v {
        b"1" => (Some(true), false),
        b"0" => (Some(false), false),
        b"d" => (Some(true), true),
        _ => (None, false),
    }
}

fn parse_b3_multi(headers: &HeaderMap) -> (Option<Parent>, Option<bool>, bool) {
    let debug = only(headers, &B3_FLAGS) == Some(b"1");
    let sampled = only(headers, &B3_SAMPLED).and_then(|v| match v {
        b"1" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    });
    let trace = only(headers, &B3_TRACE_ID);
    let span = only(headers, &B3_SPAN_ID);
    if trace.is_none() && span.is_none() {
        return (None, sampled, debug);
    }
    match trace.and_then(b3_trace_id).zip(span.and_then(b3_span_id)) {
        Some((trace_id, span_id)) => (Some(Parent { trace_id, span_id }), sampled, debug),
        None => (None, None, false),
    }
}

/// 32 or 16 hex digits (a 64-bit id is the low half of a 128-bit one), not all zero.
fn b3_trace_id(v: &[u8]) -> Option<TraceId> {
    let id = match v.len() {
        32 => hex::<16>(v, false)?,
        16 => {
            let mut id = [0; 16];
            id[8..].copy_from_slice(&hex::<8>(v, false)?);
            id
        }
        _ => return None,
    };
    nonzero(id)
}

fn b3_span_id(v: &[u8]) -> Option<SpanId> {
    nonzero(hex::<8>(v, false)?)
}

fn nonzero<const N: usize>(id: [u8; N]) -> Option<[u8; N]> {
    (id != [0; N]).then_some(id)
}

/// Exactly `2 * N` hex digits (lowercase only if `lower`).
fn hex<const N: usize>(v: &[u8], lower: bool) -> Option<[u8; N]> {
    if v.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' if !lower => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in v.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Lowercase hex of `bytes`, appended to `out`.
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

#[cfg(test)]
pub fn hex_string(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).expect("hex is ASCII")
}

/// The context the request carries to the next hop: this hop's span as the parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span (B3 names it `parentspanid`).
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub debug: bool,
}

/// Writes `traceparent` (always) and B3 in the style the request came with, replacing what the
/// request carried. `tracestate` goes on untouched after a valid `traceparent`, and is dropped
/// otherwise (it belongs to the trace that was not continued).
pub fn inject(headers: &mut HeaderMap, out: &Outgoing, came: &Extracted) {
    let mut v = Vec::with_capacity(55);
    v.extend_from_slice(b"00-");
    push_hex(&mut v, &out.trace_id);
    v.push(b'-');
    push_hex(&mut v, &out.span_id);
    v.extend_from_slice(if out.sampled { b"-01" } else { b"-00" });
    headers.insert(&TRACEPARENT, value(v));
    if !came.w3c && headers.contains_key(&TRACESTATE) {
        headers.remove(&TRACESTATE);
    }
    // B3 ids keep their width: a 64-bit trace id stays 64-bit for Zipkin-era apps.
    let trace = if out.trace_id[..8] == [0; 8] {
        &out.trace_id[8..]
    } else {
        &out.trace_id[..]
    };
    match came.b3 {
        B3Style::None => {}
        B3Style::Single => {
            let mut v = Vec::with_capacity(68);
            push_hex(&mut v, trace);
            v.push(b'-');
            push_hex(&mut v, &out.span_id);
            v.extend_from_slice(match (out.debug, out.sampled) {
                (true, _) => b"-d",
                (false, true) => b"-1",
                (false, false) => b"-0",
            });
            if let Some(parent) = &out.parent {
                v.push(b'-');
                push_hex(&mut v, parent);
            }
            headers.insert(&B3, value(v));
        }
        B3Style::Multi => {
            let hex_value = |bytes: &[u8]| {
                let mut v = Vec::with_capacity(32);
                push_hex(&mut v, bytes);
                value(v)
            };
            headers.insert(&B3_TRACE_ID, hex_value(trace));
            headers.insert(&B3_SPAN_ID, hex_value(&out.span_id));
            match &out.parent {
                Some(parent) => {
                    headers.insert(&B3_PARENT_SPAN_ID, hex_value(parent));
                }
                None => {
                    headers.remove(&B3_PARENT_SPAN_ID);
                }
            }
            if out.debug {
                // Debug implies sampled; B3 sends `x-b3-flags: 1` instead of `x-b3-sampled`.
                headers.remove(&B3_SAMPLED);
            } else {
                headers.remove(&B3_FLAGS);
                headers.insert(
                    &B3_SAMPLED,
                    HeaderValue::from_static(if out.sampled { "1" } else { "0" }),
                );
            }
        }
    }
}

/// The buffer becomes the value without a copy.
fn value(v: Vec<u8>) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
        .expect("hex and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const S: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn trace(s: &str) -> TraceId {
        hex::<16>(s.as_bytes(), false).unwrap()
    }

    fn span(s: &str) -> SpanId {
        hex::<8>(s.as_bytes(), false).unwrap()
    }

    #[test]
    fn reads_a_valid_traceparent_and_its_flags() {
        let e = extract(&headers(&[("traceparent", &format!("00-{T}-{S}-01"))]));
        assert_eq!(
            e.parent,
            Some(Parent {
                trace_id: trace(T),
                span_id: span(S)
            })
        );
        assert_eq!(e.sampled, Some(true));
        assert!(e.w3c);
        assert_eq!(e.b3, B3Style::None);
        let e = extract(&headers(&[("traceparent", &format!("00-{T}-{S}-00"))]));
        assert_eq!(e.sampled, Some(false));
        // Other flag bits do not matter; the sampled bit does.
        let e = extract(&headers(&[("traceparent", &format!("00-{T}-{S}-03"))]));
        assert_eq!(e.sampled, Some(true));
        // A later version may carry more after a dash.
        let e = extract(&headers(&[(
            "traceparent",
            &format!("01-{T}-{S}-01-what-ever"),
        )]));
        assert!(e.parent.is_some());
    }

    #[test]
    fn ignores_invalid_traceparents() {
        let zeros_t = "0".repeat(32);
        let zeros_s = "0".repeat(16);
        for bad in [
            format!("ff-{T}-{S}-01"),                  // version ff
            format!("00-{T}-{S}-01-extra"),            // version 00 has nothing after the flags
            format!("01-{T}-{S}-01extra"),             // a later version still needs the dash
            format!("00-{zeros_t}-{S}-01"),            // all-zero trace id
            format!("00-{T}-{zeros_s}-01"),            // all-zero span id
            format!("00-{}-{S}-01", &T[1..]),          // short trace id
            format!("00-{T}-{}-01", &S[1..]),          // short span id
            format!("00-{}-{S}-01", T.to_uppercase()), // W3C hex is lowercase
            format!("00-{T}-{S}-0g"),                  // non-hex
            format!("00_{T}-{S}-01"),                  // separator
            format!("00-{T}-{S}-1"),                   // short flags
            "garbage".to_owned(),
            String::new(),
        ] {
            let e = extract(&headers(&[("traceparent", &bad)]));
            assert_eq!(e.parent, None, "{bad:?} must be ignored");
            assert_eq!(e.sampled, None, "{bad:?} makes no decision");
            assert!(!e.w3c);
        }
        // Sent twice: ambiguous, ignored.
        let tp = format!("00-{T}-{S}-01");
        let e = extract(&headers(&[("traceparent", &tp), ("traceparent", &tp)]));
        assert_eq!(e.parent, None);
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let e = extract(&headers(&[
            ("traceparent", &format!("00-{T}-{S}-00")),
            ("x-b3-traceid", "1111111111111111"),
            ("x-b3-spanid", "2222222222222222"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(e.parent.unwrap().trace_id, trace(T));
        assert_eq!(e.sampled, Some(false));
        assert_eq!(
            e.b3,
            B3Style::Multi,
            "B3 is still rewritten for the next hop"
        );
    }

    #[test]
    fn reads_b3_multi_headers() {
        let e = extract(&headers(&[
            ("x-b3-traceid", T),
            ("x-b3-spanid", S),
            ("x-b3-parentspanid", "1111111111111111"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(
            e.parent,
            Some(Parent {
                trace_id: trace(T),
                span_id: span(S)
            })
        );
        assert_eq!(
            (e.sampled, e.debug, e.b3),
            (Some(true), false, B3Style::Multi)
        );
        // A 64-bit trace id, upper case, no decision.
        let e = extract(&headers(&[
            ("x-b3-traceid", "A3CE929D0E0E4736"),
            ("x-b3-spanid", S),
        ]));
        let mut id = [0; 16];
        id[8..].copy_from_slice(&span("a3ce929d0e0e4736"));
        assert_eq!(e.parent.unwrap().trace_id, id);
        assert_eq!(e.sampled, None);
        // Debug means sampled; `true`/`false` are old spellings.
        let e = extract(&headers(&[
            ("x-b3-traceid", T),
            ("x-b3-spanid", S),
            ("x-b3-flags", "1"),
        ]));
        assert_eq!((e.sampled, e.debug), (Some(true), true));
        let e = extract(&headers(&[
            ("x-b3-traceid", T),
            ("x-b3-spanid", S),
            ("x-b3-sampled", "false"),
        ]));
        assert_eq!(e.sampled, Some(false));
        // A decision alone, with no ids.
        let e = extract(&headers(&[("x-b3-sampled", "0")]));
        assert_eq!(
            (e.parent, e.sampled, e.b3),
            (None, Some(false), B3Style::Multi)
        );
    }

    #[test]
    fn ignores_invalid_b3_multi_headers() {
        for bad in [
            vec![("x-b3-traceid", T)],                       // no span id
            vec![("x-b3-spanid", S), ("x-b3-sampled", "1")], // no trace id
            vec![("x-b3-traceid", "0000000000000000"), ("x-b3-spanid", S)],
            vec![("x-b3-traceid", T), ("x-b3-spanid", "0000000000000000")],
            vec![("x-b3-traceid", "abc"), ("x-b3-spanid", S)],
            vec![("x-b3-traceid", T), ("x-b3-spanid", "xyzxyzxyzxyzxyzx")],
            vec![
                ("x-b3-traceid", &T[..24]),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "1"),
            ],
        ] {
            let e = extract(&headers(&bad));
            assert_eq!(e.parent, None, "{bad:?}");
            assert_eq!(
                e.sampled, None,
                "a broken context makes no decision: {bad:?}"
            );
            assert_eq!(e.b3, B3Style::Multi);
        }
    }

    #[test]
    fn reads_b3_single() {
        let e = extract(&headers(&[("b3", &format!("{T}-{S}-1-1111111111111111"))]));
        assert_eq!(
            e.parent,
            Some(Parent {
                trace_id: trace(T),
                span_id: span(S)
            })
        );
        assert_eq!((e.sampled, e.b3), (Some(true), B3Style::Single));
        let e = extract(&headers(&[("b3", &format!("{T}-{S}"))]));
        assert!(e.parent.is_some());
        assert_eq!(e.sampled, None);
        let e = extract(&headers(&[("b3", &format!("{T}-{S}-d"))]));
        assert_eq!((e.sampled, e.debug), (Some(true), true));
        let e = extract(&headers(&[("b3", "0")]));
        assert_eq!((e.parent, e.sampled), (None, Some(false)));
        for bad in [
            T.to_owned(),
            format!("{T}-"),
            format!("{T}-{}", "0".repeat(16)),
            format!("{}-{S}-1", "0".repeat(32)),
            format!("{}-{S}-1", &T[..20]),
            "x".to_owned(),
        ] {
            let e = extract(&headers(&[("b3", &bad)]));
            assert_eq!((e.parent, e.sampled), (None, None), "{bad:?}");
        }
    }

    #[test]
    fn writes_traceparent_and_keeps_tracestate_only_after_a_valid_one() {
        let mut h = headers(&[
            ("traceparent", &format!("00-{T}-{S}-01")),
            ("tracestate", "vendor=1"),
        ]);
        let came = extract(&h);
        let out = Outgoing {
            trace_id: trace(T),
            span_id: span("1111111111111111"),
            parent: Some(span(S)),
            sampled: true,
            debug: false,
        };
        inject(&mut h, &out, &came);
        assert_eq!(h["traceparent"], format!("00-{T}-1111111111111111-01"));
        assert_eq!(h["tracestate"], "vendor=1");
        assert_eq!(h.len(), 2, "no B3 was sent, none is added");

        let mut h = headers(&[("traceparent", "bogus"), ("tracestate", "vendor=1")]);
        let came = extract(&h);
        inject(
            &mut h,
            &Outgoing {
                sampled: false,
                parent: None,
                ..out
            },
            &came,
        );
        assert_eq!(h["traceparent"], format!("00-{T}-1111111111111111-00"));
        assert!(!h.contains_key("tracestate"));
    }

    #[test]
    fn rewrites_b3_as_it_came() {
        let short = "a3ce929d0e0e4736";
        let mut h = headers(&[
            ("x-b3-traceid", short),
            ("x-b3-spanid", S),
            ("x-b3-sampled", "1"),
        ]);
        let came = extract(&h);
        let parent = came.parent.unwrap();
        let out = Outgoing {
            trace_id: parent.trace_id,
            span_id: span("1111111111111111"),
            parent: Some(parent.span_id),
            sampled: true,
            debug: false,
        };
        inject(&mut h, &out, &came);
        assert_eq!(h["x-b3-traceid"], short, "a 64-bit id stays 64-bit");
        assert_eq!(h["x-b3-spanid"], "1111111111111111");
        assert_eq!(h["x-b3-parentspanid"], S);
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(
            h["traceparent"],
            format!("00-0000000000000000{short}-1111111111111111-01")
        );

        let mut h = headers(&[("b3", &format!("{T}-{S}-1"))]);
        let came = extract(&h);
        let out = Outgoing {
            trace_id: trace(T),
            ..out
        };
        inject(&mut h, &out, &came);
        assert_eq!(h["b3"], format!("{T}-1111111111111111-1-{S}"));
        assert!(!h.contains_key("x-b3-traceid"));

        // A new trace: no parent to name.
        let mut h = headers(&[("x-b3-sampled", "0"), ("x-b3-parentspanid", S)]);
        let came = extract(&h);
        inject(
            &mut h,
            &Outgoing {
                parent: None,
                sampled: false,
                ..out
            },
            &came,
        );
        assert_eq!(h["x-b3-sampled"], "0");
        assert!(!h.contains_key("x-b3-parentspanid"));
        assert_eq!(h["x-b3-traceid"], T);
    }
}
