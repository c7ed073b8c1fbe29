//! Header rules a proxy applies on every hop.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 7.6.1), including those named by `Connection`.
/// `keep_upgrade` keeps `Connection: upgrade` and `Upgrade` for a protocol upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names first: most messages carry few of these headers, and a
    // comparison is cheaper than a hash lookup per name.
    const CONN: u8 = 1;
    const UPG: u8 = 2;
    const TE_: u8 = 4;
    const TRANSFER: u8 = 8;
    const KEEP: u8 = 16;
    const PROXY: u8 = 32;
    let mut found = 0u8;
    for name in headers.keys() {
        found |= if name == header::CONNECTION {
            CONN
        } else if name == header::UPGRADE {
            UPG
        } else if name == header::TE {
            TE_
        } else if name == header::TRANSFER_ENCODING {
            TRANSFER
        } else if name == KEEP_ALIVE {
            KEEP
        } else if name == PROXY_CONNECTION {
            PROXY
        } else {
            0
        };
    }
    if found == 0 {
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

/// Adds `x-request-id` (a UUIDv4) when the client sent none; returns the request's id.
pub fn ensure_request_id(headers: &mut HeaderMap) -> &HeaderValue {
    headers.entry(&X_REQUEST_ID).or_insert_with(|| {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        HeaderValue::from_str(text).expect("a UUID is a valid header value")
    })
}

/// Appends the client's address to `x-forwarded-for` and sets `x-forwarded-proto` if absent.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    match headers.get(&X_FORWARDED_FOR) {
        Some(existing) => {
            let mut joined = Vec::with_capacity(existing.len() + 2 + client_ip.len());
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(&X_FORWARDED_FOR, v);
            }
        }
        None => {
            headers.insert(&X_FORWARDED_FOR, client_ip.clone());
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
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
    fn appends_forwarded_for_and_keeps_request_id() {
        let mut h = HeaderMap::new();
        let ip = HeaderValue::from_static("10.0.0.2");
        add_forwarded(&mut h, &ip);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.2");
        add_forwarded(&mut h, &ip);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.2, 10.0.0.2");
        let id = ensure_request_id(&mut h).clone();
        assert_eq!(id.len(), 36);
        assert_eq!(ensure_request_id(&mut h), &id);
    }
}
