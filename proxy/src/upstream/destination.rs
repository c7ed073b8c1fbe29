//! Where a request to an `original_dst` cluster goes (Envoy's ORIGINAL_DST, Istio's
//! PassthroughCluster): the original destination of a redirected connection, else the
//! request's authority (port 80, or 443 for a cluster with TLS), resolved when the request
//! comes. Never one of the proxy's own listeners: that would send the request around again.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::uri::Authority;

/// Why a request has no destination.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// No redirected destination and no authority.
    #[error("no original destination and no authority")]
    Unknown,
    /// The authority's name did not resolve (in time).
    #[error("cannot resolve {host}: {error}")]
    Resolve { host: String, error: io::Error },
    /// The destination is one of the proxy's own listeners.
    #[error("{0} is this proxy's own listener")]
    Loop(SocketAddr),
}

/// The destination of a request: `redirected` when its connection was, else its authority.
/// `own` holds the proxy's bound listener addresses, `local` the connection's local address;
/// a name's lookup is bounded by `timeout`.
pub async fn destination(
    redirected: Option<SocketAddr>,
    authority: Option<&Authority>,
    tls: bool,
    own: &[SocketAddr],
    local: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, DestinationError> {
    let addr = match (redirected, authority) {
        (Some(addr), _) => addr,
        (None, Some(authority)) => resolve(authority, tls, timeout).await?,
        (None, None) => return Err(DestinationError::Unknown),
    };
    if is_own(addr, own, local) {
        return Err(DestinationError::Loop(addr));
    }
    Ok(addr)
}

async fn resolve(
    authority: &Authority,
    tls: bool,
    timeout: Duration,
) -> Result<SocketAddr, DestinationError> {
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = authority.host();
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if let Ok(ip) = literal.unwrap_or(host).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let failed = |error| DestinationError::Resolve {
        host: host.to_owned(),
        error,
    };
    // tokio's lookup runs getaddrinfo on its blocking pool, not on the worker.
    let lookup = tokio::net::lookup_host((host, port));
    let mut addrs = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(|_| failed(io::ErrorKind::TimedOut.into()))?
        .map_err(failed)?;
    addrs
        .next()
        .ok_or_else(|| failed(io::Error::other("no address")))
}

/// Whether `addr` reaches one of the proxy's listeners: bound there exactly, or bound on
/// every address with its port while `addr` is loopback, unspecified or the connection's own.
fn is_own(addr: SocketAddr, own: &[SocketAddr], local: SocketAddr) -> bool {
    let this_host =
        addr.ip().is_loopback() || addr.ip().is_unspecified() || addr.ip() == local.ip();
    own.iter().any(|l| {
        *l == addr
            || (l.port() == addr.port()
                && ((l.ip().is_unspecified() && this_host)
                    || (addr.ip().is_unspecified() && l.ip().is_loopback())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_listeners_are_loops() {
        let local = a("10.0.0.5:15001");
        let own = [a("127.0.0.1:8080"), a("0.0.0.0:15001")];
        assert!(is_own(a("127.0.0.1:8080"), &own, local));
        assert!(is_own(a("127.0.0.1:15001"), &own, local));
        assert!(is_own(a("10.0.0.5:15001"), &own, local));
        assert!(is_own(a("0.0.0.0:8080"), &own, local));
        assert!(!is_own(a("127.0.0.1:8081"), &own, local));
        assert!(!is_own(a("10.0.0.9:15001"), &own, local));
    }

    #[tokio::test]
    async fn authority_ports_default_by_tls_and_names_resolve() {
        let local = a("1.1.1.1:1");
        let find = |redirected: Option<SocketAddr>, authority: &str, tls: bool| {
            let authority = authority.parse::<Authority>().unwrap();
            async move {
                let t = Duration::from_secs(5);
                destination(redirected, Some(&authority), tls, &[], local, t).await
            }
        };
        assert_eq!(
            find(None, "10.1.2.3", false).await.unwrap(),
            a("10.1.2.3:80")
        );
        assert_eq!(find(None, "[::1]", true).await.unwrap(), a("[::1]:443"));
        assert!(
            find(None, "localhost:9", false)
                .await
                .unwrap()
                .ip()
                .is_loopback()
        );
        let unresolved = find(None, "no-such-host.invalid", false).await;
        assert!(matches!(unresolved, Err(DestinationError::Resolve { .. })));
        let redirected = Some(a("10.9.9.9:443"));
        assert_eq!(
            find(redirected, "other:1", false).await.unwrap(),
            a("10.9.9.9:443")
        );
    }
}
