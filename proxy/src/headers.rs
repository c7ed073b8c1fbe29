//! Header rules a proxy applies on every hop.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

// The names `scan` looks for, a bit each.
const CONN: u16 = 1;
const UPG: u16 = 2;
const TE_: u16 = 4;
const TRANSFER: u16 = 8;
const KEEP: u16 = 16;
const PROXY: u16 = 32;
const REQUEST_ID: u16 = 64;
const FORWARDED_FOR: u16 = 128;
const FORWARDED_PROTO: u16 = 256;
const HOP_BY_HOP: u16 = CONN | UPG | TE_ | TRANSFER | KEEP | PROXY;

/// One pass over the names: most messages carry few of the headers a proxy acts on, and
/// matching a name's text is cheaper than a hash lookup per header.
fn scan(headers: &HeaderMap) -> u16 {
    let mut found = 0;
    for name in headers.keys() {
        found |= match name.as_str() {
            "connection" => CONN,
            "upgrade" => UPG,
            "te" => TE_,
            "transfer-encoding" => TRANSFER,
            "keep-alive" => KEEP,
            "proxy-connection" => PROXY,
            "x-request-id" => REQUEST_ID,
            "x-forwarded-for" => FORWARDED_FOR,
            "x-forwarded-proto" => FORWARDED_PROTO,
            _ => 0,
        };
    }
    found
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1), including those named by `Connection`.
/// `keep_upgrade` keeps `Connection: upgrade` and `Upgrade` for a protocol upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_found(headers, keep_upgrade, scan(headers));
}

fn strip_found(headers: &mut HeaderMap, keep_upgrade: bool, found: u16) {
    if found & HOP_BY_HOP == 0 {
        return;
    }
    if found & CONN != 0 {
        // Headers named by `Connection` are hop-by-hop too; `keep-alive` and `close`, the
        // usual values, name nothing to remove.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or_default().split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
        if !keep_upgrade {
            headers.remove(header::CONNECTION);
        }
    }
    if found & UPG != 0 && !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
    if found & KEEP != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if found & PROXY != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if found & TRANSFER != 0 {
        headers.remove(header::TRANSFER_ENCODING);
    }
    // `TE: trailers` is end-to-end meaningful for gRPC; any other TE value is hop-by-hop.
    if found & TE_ != 0 && headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
}

/// What the proxy adds to a request on its way upstream: `x-request-id` (a UUIDv4) when the
/// client sent none, the client's address appended to `x-forwarded-for`, and
/// `x-forwarded-proto` if absent. Kept beside the request's headers until the upstream
/// encoder writes them: most requests carry none of these, and inserting three names into the
/// map hyper sized for the parsed headers would regrow it on every request.
#[derive(Debug, Default)]
pub struct Added {
    /// A new UUID's text, made into a header value only if something needs one.
    request_id: Option<[u8; uuid::fmt::Hyphenated::LENGTH]>,
    forwarded_for: Option<HeaderValue>,
    forwarded_proto: bool,
}

impl Added {
    /// Strips hop-by-hop headers (see [`strip_hop_by_hop`]) and works out what to add, in one
    /// pass over the names. An `x-forwarded-for` already present is extended in the map.
    pub fn prepare(headers: &mut HeaderMap, keep_upgrade: bool, client_ip: &HeaderValue) -> Added {
        let found = scan(headers);
        strip_found(headers, keep_upgrade, found);
        let request_id = (found & REQUEST_ID == 0).then(|| {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            buf
        });
        let mut forwarded_for = Some(client_ip.clone());
        if found & FORWARDED_FOR != 0
            && let Some(existing) = headers.get(&X_FORWARDED_FOR)
        {
            let mut joined = Vec::with_capacity(existing.len() + 2 + client_ip.len());
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(&X_FORWARDED_FOR, v);
            }
            forwarded_for = None;
        }
        Added {
            request_id,
            forwarded_for,
            forwarded_proto: found & FORWARDED_PROTO == 0,
        }
    }

    /// A request over TLS a gateway listener terminated: `x-forwarded-proto: https`, whatever
    /// the client sent (Envoy at the edge sets the scheme of the connection).
    pub fn set_https(&mut self, headers: &mut HeaderMap) {
        headers.insert(&X_FORWARDED_PROTO, HTTPS.clone());
        self.forwarded_proto = false;
    }

    /// Moves the added headers into the map (for filters, HTTP/2 and upgrades).
    pub fn apply_to(self, headers: &mut HeaderMap) {
        if let Some(id) = self.new_request_id() {
            headers.insert(&X_REQUEST_ID, id);
        }
        if let Some(v) = self.forwarded_for {
            headers.insert(&X_FORWARDED_FOR, v);
        }
        if self.forwarded_proto {
            headers.insert(&X_FORWARDED_PROTO, HTTP.clone());
        }
    }

    fn new_request_id(&self) -> Option<HeaderValue> {
        let id = self.request_id.as_ref()?;
        Some(HeaderValue::from_bytes(id).expect("a UUID is a valid header value"))
    }

    /// The request's id, added or sent by the client.
    pub fn request_id(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        self.new_request_id()
            .or_else(|| headers.get(&X_REQUEST_ID).cloned())
    }

    /// The request's `x-forwarded-for`, added or extended.
    pub fn forwarded_for<'a>(&'a self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        self.forwarded_for
            .as_ref()
            .or_else(|| headers.get(&X_FORWARDED_FOR))
    }

    /// The headers still to be written after the request's own.
    pub fn iter(&self) -> impl Iterator<Item = (&'static HeaderName, &[u8])> {
        [
            (&X_REQUEST_ID, self.request_id.as_ref().map(|id| &id[..])),
            (
                &X_FORWARDED_FOR,
                self.forwarded_for.as_ref().map(HeaderValue::as_bytes),
            ),
            (
                &X_FORWARDED_PROTO,
                self.forwarded_proto.then_some(HTTP.as_bytes()),
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

/// Is this an HTTP/1.1 protocol upgrade request (WebSocket and the like)?
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-app"));
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert!(
            h.contains_key(header::TE)
                && h.contains_key(header::UPGRADE)
                && h.contains_key(header::CONNECTION)
        );
    }

    #[test]
    fn adds_request_id_and_forwarded_headers_beside_the_map() {
        let ip = HeaderValue::from_static("10.0.0.2");
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let added = Added::prepare(&mut h, false, &ip);
        assert!(
            h.is_empty(),
            "hop-by-hop stripped, nothing added to the map"
        );
        let pairs: Vec<_> = added
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_vec()))
            .collect();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0].0, "x-request-id");
        assert_eq!(pairs[0].1.len(), 36);
        assert_eq!(pairs[1], ("x-forwarded-for", b"10.0.0.2".to_vec()));
        assert_eq!(pairs[2], ("x-forwarded-proto", b"http".to_vec()));
        assert_eq!(added.request_id(&h).unwrap().as_bytes(), pairs[0].1);

        added.apply_to(&mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.2");
        let id = h[&X_REQUEST_ID].clone();
        // A second hop keeps the id and the scheme and extends the chain.
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let added = Added::prepare(&mut h, false, &ip);
        assert_eq!(added.iter().count(), 0);
        assert_eq!(added.request_id(&h), Some(id));
        assert_eq!(added.forwarded_for(&h).unwrap(), "10.0.0.2, 10.0.0.2");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }
}
