//! Prepare: the request as it will travel on. `CONNECT` is refused; hop-by-hop headers go;
//! `x-request-id`, `x-forwarded-for` and `x-forwarded-proto` are added; the authority it is
//! for is settled (and `Host` made to agree with it).

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Method, Request, StatusCode, Version};
use hyper::body::Incoming;

use super::context::Exchange;
use super::local_reply::LocalReply;
use crate::conn::{ConnCtx, Transport};
use crate::headers;

/// A request with its headers prepared.
pub(super) struct Prepared {
    pub parts: Parts,
    pub body: Incoming,
    /// Headers the proxy adds, kept beside the map when nothing reads the map before an
    /// HTTP/1.1 upstream writes them after it (see [`headers::Added`]); empty otherwise.
    pub added: headers::Added,
    pub authority: Option<Authority>,
    /// Set for a request that asks to switch protocols (WebSocket).
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Prepares a request. `filters` says, from the prepared head, whether the listener's filters
/// will see it: then the added headers go into the map, as filters see them in Envoy.
pub(super) fn prepare(
    mut req: Request<Incoming>,
    conn: &ConnCtx,
    filters: impl FnOnce(&Parts, Option<&Authority>) -> bool,
    ex: &mut Exchange,
) -> Result<Prepared, LocalReply> {
    if req.method() == Method::CONNECT {
        return Err(LocalReply::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
            "connect_not_supported",
        ));
    }
    let is_upgrade =
        req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
    let upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let authority = request_authority(&mut parts)?;
    if conn.opts.normalize_path && super::path::normalize_uri(&mut parts.uri).is_err() {
        return Err(LocalReply::new(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "path_normalization_failed",
        ));
    }
    let mut added = headers::Added::prepare(&mut parts.headers, is_upgrade, &conn.client_ip);
    if conn.transport == Transport::GatewayTls {
        added.set_https(&mut parts.headers);
    }
    if let Some(xfcc) = &conn.xfcc {
        // Only this proxy says who the client is.
        parts.headers.remove(&headers::X_FORWARDED_CLIENT_CERT);
        if let Some(value) = &xfcc.value {
            parts
                .headers
                .insert(headers::X_FORWARDED_CLIENT_CERT.clone(), value.clone());
        }
    }
    // Logged as received, even if a filter answers before the request goes anywhere (Envoy).
    ex.capture_request(&parts, authority.as_ref(), &added);
    crate::telemetry::peer::on_request(&mut parts.headers, authority.as_ref(), conn, &mut ex.istio);
    if filters(&parts, authority.as_ref()) || upgrade.is_some() {
        std::mem::take(&mut added).apply_to(&mut parts.headers);
    }
    Ok(Prepared {
        parts,
        body,
        added,
        authority,
        upgrade,
    })
}

/// The authority a request is for: `:authority` (HTTP/2, absolute-form) or `Host`.
///
/// A `Host` header that disagrees with the target's authority is replaced by it, so the
/// upstream sees the authority the request was routed on (RFC 9112 3.2.2; Envoy drops `host`
/// beside `:authority`).
pub(super) fn request_authority(parts: &mut Parts) -> Result<Option<Authority>, LocalReply> {
    if let Some(a) = parts.uri.authority() {
        if let Some(host) = parts.headers.get(header::HOST)
            && host.as_bytes() != a.as_str().as_bytes()
        {
            let routed = HeaderValue::from_str(a.as_str())
                .map_err(|_| LocalReply::bad_request("invalid authority"))?;
            parts.headers.insert(header::HOST, routed);
        }
        return Ok(Some(a.clone()));
    }
    match parts.headers.get(header::HOST) {
        Some(host) => Authority::try_from(host.as_bytes())
            .map(Some)
            .map_err(|_| LocalReply::bad_request("invalid Host header")),
        None if parts.version == Version::HTTP_11 => {
            Err(LocalReply::bad_request("missing Host header"))
        }
        None => Ok(None),
    }
}

/// A copy of the request head, for filters that read it in later phases.
pub(super) fn head_copy(parts: &Parts) -> Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}
