//! `proxy_get_property` / `proxy_set_property`: Envoy's attribute names and value encodings
//! (strings raw; integers 8 bytes little-endian; booleans 1 byte; timestamps and durations as
//! i64 nanoseconds; maps in the header-map pairs format), plus wasmesh's own under `wasmesh.`.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;

use crate::abi::Status;
use crate::pairs;
use crate::stream::Stream;

/// What a property lookup knows about the plugin asking.
pub struct PluginFacts<'a> {
    pub name: &'a str,
    pub root_id: &'a str,
    pub vm_id: &'a str,
}

fn int(v: i64) -> Bytes {
    Bytes::copy_from_slice(&v.to_le_bytes())
}

fn uint(v: u64) -> Bytes {
    Bytes::copy_from_slice(&v.to_le_bytes())
}

fn string(s: impl AsRef<str>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref().as_bytes())
}

/// Appends `a` as `10.1.0.7:8080` (or `[::1]:8080`). The circuit breaker reads the attempts
/// of every request: IPv4, the common case, goes without the formatting machinery (about 500
/// instructions an address).
fn push_addr(out: &mut String, a: std::net::SocketAddr) {
    match a {
        std::net::SocketAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
            out.push(':');
            out.push_str(digits.format(v4.port()));
        }
        std::net::SocketAddr::V6(_) => {
            use std::fmt::Write;
            let _ = write!(out, "{a}");
        }
    }
}

fn map(headers: &HeaderMap) -> Bytes {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
        .collect();
    Bytes::from(pairs::serialize(&pairs))
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Looks up a property by path segments (the guest sends them joined by NUL).
pub fn get(
    path: &[&str],
    plugin: &PluginFacts<'_>,
    stream: Option<&Stream>,
) -> Result<Bytes, Status> {
    match path {
        ["plugin_name"] => return Ok(string(plugin.name)),
        ["plugin_root_id"] => return Ok(string(plugin.root_id)),
        ["plugin_vm_id"] => return Ok(string(plugin.vm_id)),
        _ => {}
    }
    let Some(stream) = stream else {
        if let ["node", "id"] = path {
            return Ok(string("wasmesh"));
        }
        return Err(Status::NotFound);
    };
    // Values set by filters come first, as Envoy's filter state does.
    {
        let filter_state = stream.filter_state.borrow();
        if !filter_state.is_empty()
            && let Some(v) = filter_state.get_path(path)
        {
            return Ok(v.clone());
        }
    }

    let info = stream.info.borrow();
    let data = stream.data.borrow();
    let request = data.request.as_ref();
    let response = data.response.as_ref();
    let header = |h: Option<&HeaderMap>, name: &str| -> Result<Bytes, Status> {
        h.and_then(|h| h.get(name))
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            .ok_or(Status::NotFound)
    };
    let addr = |a: Option<std::net::SocketAddr>, port: bool| -> Result<Bytes, Status> {
        let a = a.ok_or(Status::NotFound)?;
        Ok(if port {
            int(a.port() as i64)
        } else {
            let mut text = String::with_capacity(21);
            push_addr(&mut text, a);
            Bytes::from(text)
        })
    };
    match path {
        ["request", "path"] => request
            .and_then(|r| r.uri.path_and_query())
            .map(|p| string(p.as_str()))
            .ok_or(Status::NotFound),
        ["request", "url_path"] => request
            .map(|r| string(r.uri.path()))
            .ok_or(Status::NotFound),
        ["request", "query"] => request
            .map(|r| string(r.uri.query().unwrap_or("")))
            .ok_or(Status::NotFound),
        ["request", "method"] => request
            .map(|r| string(r.method.as_str()))
            .ok_or(Status::NotFound),
        ["request", "scheme"] => request
            .map(|r| string(r.uri.scheme_str().unwrap_or("http")))
            .ok_or(Status::NotFound),
        ["request", "host"] => {
            let r = request.ok_or(Status::NotFound)?;
            match r.uri.authority() {
                Some(a) => Ok(string(a.as_str())),
                None => header(Some(&r.headers), "host"),
            }
        }
        ["request", "protocol"] => Ok(string(info.protocol)),
        ["request", "id"] => header(request.map(|r| &r.headers), "x-request-id"),
        ["request", "referer"] => header(request.map(|r| &r.headers), "referer"),
        ["request", "useragent"] => header(request.map(|r| &r.headers), "user-agent"),
        ["request", "headers"] => request.map(|r| map(&r.headers)).ok_or(Status::NotFound),
        ["request", "headers", name] => header(request.map(|r| &r.headers), name),
        ["request", "time"] => info
            .start_time
            .map(|t| int(nanos(t)))
            .ok_or(Status::NotFound),
        ["request", "duration"] => {
            let start = info.start_time.ok_or(Status::NotFound)?;
            Ok(int(start.elapsed().map_or(0, |d| d.as_nanos() as i64)))
        }
        ["request", "size"] | ["request", "total_size"] => Ok(int(info.request_size as i64)),
        ["response", "code"] => response
            .map(|r| int(r.status.as_u16() as i64))
            .ok_or(Status::NotFound),
        ["response", "code_details"] => Ok(string(&info.response_code_details)),
        ["response", "flags"] => Ok(uint(info.response_flags)),
        ["response", "grpc_status"] => {
            let v = header(response.map(|r| &r.headers), "grpc-status")
                .or_else(|_| header(data.response_trailers.as_ref(), "grpc-status"))?;
            let code: i64 = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Status::NotFound)?;
            Ok(int(code))
        }
        ["response", "headers"] => response.map(|r| map(&r.headers)).ok_or(Status::NotFound),
        ["response", "headers", name] => header(response.map(|r| &r.headers), name),
        ["response", "trailers"] => data
            .response_trailers
            .as_ref()
            .map(map)
            .ok_or(Status::NotFound),
        ["response", "size"] | ["response", "total_size"] => Ok(int(info.response_size as i64)),
        ["source", "address"] => addr(info.source, false),
        ["source", "port"] => addr(info.source, true),
        ["destination", "address"] => addr(info.destination, false),
        ["destination", "port"] => addr(info.destination, true),
        ["upstream", "address"] => addr(info.upstream_address, false),
        ["upstream", "port"] => addr(info.upstream_address, true),
        ["wasmesh", "upstream_attempts"] => {
            let mut text = String::with_capacity(26 * info.upstream_attempts.len());
            let mut digits = itoa::Buffer::new();
            for (i, (address, status)) in info.upstream_attempts.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                push_addr(&mut text, *address);
                text.push(' ');
                text.push_str(digits.format(*status));
            }
            Ok(Bytes::from(text))
        }

        ["connection", "id"] => Ok(uint(info.connection_id)),
        ["connection", "mtls"] => Ok(Bytes::from_static(if info.peer_uri_san.is_some() {
            &[1]
        } else {
            &[0]
        })),
        // The peer's SPIFFE id, as Istio's `source_principal`.
        ["connection", "uri_san_peer_certificate"] | ["source", "principal"] => info
            .peer_uri_san
            .as_deref()
            .map(string)
            .ok_or(Status::NotFound),
        ["source", "namespace"] => info
            .peer_uri_san
            .as_deref()
            .and_then(spiffe_namespace)
            .map(string)
            .ok_or(Status::NotFound),
        ["connection", "requested_server_name"] => Ok(Bytes::new()),
        ["xds", "cluster_name"] => Ok(string(&info.cluster_name)),
        ["xds", "route_name"] => Ok(info.route_name.clone()),
        ["xds", "listener_name"] | ["wasmesh", "listener"] => Ok(string(&info.listener)),
        ["node", "id"] => Ok(string(&info.node_id)),
        // The cluster a filter chose, else the one the proxy's route gives (known before the
        // filters run when plugins are scoped to routes or clusters, else after routing).
        ["wasmesh", "upstream_cluster"] => stream
            .decisions
            .borrow()
            .upstream_cluster
            .as_deref()
            .or((!info.cluster_name.is_empty()).then_some(&*info.cluster_name))
            .map(string)
            .ok_or(Status::NotFound),
        _ => Err(Status::NotFound),
    }
}

/// The namespace of `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
fn spiffe_namespace(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?;
    let (_, path) = path.split_once('/')?;
    let rest = path.strip_prefix("ns/")?;
    let (namespace, rest) = rest.split_once('/')?;
    rest.starts_with("sa/").then_some(namespace)
}

/// Stores a property. Paths under `wasmesh.` are the host extensions documented in
/// `docs/plugin-abi.md`; anything else is filter state that later filters can read.
pub fn set(path: &[&str], value: &[u8], stream: &Stream) -> Status {
    let text = || std::str::from_utf8(value).ok().map(str::to_owned);
    match path {
        ["wasmesh", "upstream_cluster"] => match text() {
            Some(c) if !c.is_empty() => stream.decisions.borrow_mut().upstream_cluster = Some(c),
            _ => return Status::BadArgument,
        },
        ["wasmesh", "timeout_ms"] => match text().and_then(|t| t.parse().ok()) {
            Some(ms) => stream.decisions.borrow_mut().timeout_ms = Some(ms),
            None => return Status::BadArgument,
        },
        _ => {
            stream
                .filter_state
                .borrow_mut()
                .insert(path.join("."), Bytes::copy_from_slice(value));
        }
    }
    Status::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::StreamInfo;

    fn facts() -> PluginFacts<'static> {
        PluginFacts {
            name: "p",
            root_id: "r",
            vm_id: "v",
        }
    }

    #[test]
    fn envoy_encodings() {
        let stream = Stream::new(StreamInfo {
            source: Some("10.0.0.1:5000".parse().unwrap()),
            ..Default::default()
        });
        let (mut parts, ()) = http::Request::get("/a/b?x=1")
            .header("user-agent", "ua")
            .body(())
            .unwrap()
            .into_parts();
        parts
            .headers
            .insert("x-request-id", "id-1".parse().unwrap());
        stream.data.borrow_mut().request = Some(parts);
        let get = |p: &[&str]| get(p, &facts(), Some(&stream));
        assert_eq!(get(&["request", "path"]).unwrap(), "/a/b?x=1");
        assert_eq!(get(&["request", "url_path"]).unwrap(), "/a/b");
        assert_eq!(get(&["request", "id"]).unwrap(), "id-1");
        assert_eq!(get(&["source", "address"]).unwrap(), "10.0.0.1:5000");
        assert_eq!(
            get(&["source", "port"]).unwrap(),
            &5000i64.to_le_bytes()[..]
        );
        assert_eq!(get(&["plugin_root_id"]).unwrap(), "r");
        assert_eq!(get(&["response", "code"]), Err(Status::NotFound));
        let headers = get(&["request", "headers"]).unwrap();
        assert!(
            pairs::deserialize(&headers)
                .unwrap()
                .contains(&(&b"user-agent"[..], &b"ua"[..]))
        );
    }

    #[test]
    fn upstream_attempts_name_each_endpoint_and_status() {
        let stream = Stream::new(StreamInfo {
            upstream_attempts: vec![
                ("10.1.0.7:8080".parse().unwrap(), 503),
                ("[fd00::1]:80".parse().unwrap(), 0),
                ("255.0.10.1:65535".parse().unwrap(), 200),
            ],
            upstream_address: Some("192.168.0.1:9".parse().unwrap()),
            ..Default::default()
        });
        let get = |p: &[&str]| get(p, &facts(), Some(&stream)).unwrap();
        assert_eq!(
            get(&["wasmesh", "upstream_attempts"]),
            "10.1.0.7:8080 503,[fd00::1]:80 0,255.0.10.1:65535 200"
        );
        assert_eq!(get(&["upstream", "address"]), "192.168.0.1:9");
    }

    #[test]
    fn set_property_is_filter_state_and_wasmesh_decisions() {
        let stream = Stream::new(StreamInfo::default());
        assert_eq!(set(&["my", "key"], b"v", &stream), Status::Ok);
        assert_eq!(get(&["my", "key"], &facts(), Some(&stream)).unwrap(), "v");
        assert_eq!(
            set(&["wasmesh", "upstream_cluster"], b"reviews-v2", &stream),
            Status::Ok
        );
        assert_eq!(
            stream.decisions.borrow().upstream_cluster.as_deref(),
            Some("reviews-v2")
        );
        assert_eq!(
            set(&["wasmesh", "timeout_ms"], b"soon", &stream),
            Status::BadArgument
        );
    }
}
