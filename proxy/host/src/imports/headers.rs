//! Header maps: `proxy_*_header_map_*`. Request headers carry Envoy's pseudo-headers
//! (`:authority`, `:path`, `:method`, `:scheme`; `host` is folded into `:authority`), response
//! headers `:status`. Reading a value is on every request's path: it is looked up in place and
//! copied once, into the guest.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, request, response};
use wasmtime::Linker;

use super::call::{Answer, C, answer, host_fn};
use super::guest::{give, memory_and_state};
use crate::abi::{Status, map};
use crate::pairs;
use crate::state::HostState;
use crate::stream::BodyPhase;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn(linker, "proxy_get_header_map_size", get_header_map_size)?;
    host_fn(linker, "proxy_get_header_map_pairs", get_header_map_pairs)?;
    host_fn(linker, "proxy_set_header_map_pairs", set_header_map_pairs)?;
    host_fn(linker, "proxy_get_header_map_value", get_header_map_value)?;
    host_fn(linker, "proxy_add_header_map_value", add_header_map_value)?;
    host_fn(
        linker,
        "proxy_replace_header_map_value",
        replace_header_map_value,
    )?;
    host_fn(
        linker,
        "proxy_remove_header_map_value",
        remove_header_map_value,
    )?;
    Ok(())
}

/// `(map_type, ret_size)`: the size of the map serialised.
fn get_header_map_size(c: &mut C<'_>, t: i32, ret: i32) -> Answer {
    let (mut mem, state) = memory_and_state(c)?;
    let size = with_pairs(state, t, |p| pairs::serialize(&p).len())?;
    mem.write_u32(ret, size as u32)?;
    Ok(())
}

/// `(map_type, ret_ptr, ret_len)`: the map, serialised.
fn get_header_map_pairs(c: &mut C<'_>, t: i32, ret_ptr: i32, ret_len: i32) -> Answer {
    let bytes = with_pairs(c.data(), t, |p| pairs::serialize(&p))?;
    give(c, &bytes, ret_ptr, ret_len)
}

/// `(map_type, ptr, len)`: replaces the whole map.
fn set_header_map_pairs(c: &mut C<'_>, t: i32, ptr: i32, len: i32) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    answer(set_map(state, t, mem.read(ptr, len)?))
}

/// `(map_type, key_ptr, key_len, ret_ptr, ret_len)`: the first value of a key.
fn get_header_map_value(
    c: &mut C<'_>,
    t: i32,
    kp: i32,
    kl: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    let key = mem.read(kp, kl)?;
    // The value goes through a buffer kept in the state, so reads do not allocate.
    let mut value = std::mem::take(&mut state.scratch);
    value.clear();
    let result = match map_value(state, t, key, &mut value) {
        Ok(true) => give(c, &value, ret_ptr, ret_len),
        Ok(false) => Err(Status::NotFound.into()),
        Err(s) => Err(s.into()),
    };
    c.data_mut().scratch = value;
    result
}

/// `(map_type, key_ptr, key_len, value_ptr, value_len)`: appends a value.
fn add_header_map_value(c: &mut C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    let (key, value) = (mem.read(kp, kl)?, mem.read(vp, vl)?);
    answer(edit_map(state, t, key, Edit::Add(value)))
}

/// `(map_type, key_ptr, key_len, value_ptr, value_len)`: sets a key to one value.
fn replace_header_map_value(c: &mut C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    let (key, value) = (mem.read(kp, kl)?, mem.read(vp, vl)?);
    answer(edit_map(state, t, key, Edit::Replace(value)))
}

/// `(map_type, key_ptr, key_len)`: removes a key (`OK` if it was not there).
fn remove_header_map_value(c: &mut C<'_>, t: i32, kp: i32, kl: i32) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    answer(edit_map(state, t, mem.read(kp, kl)?, Edit::Remove))
}

/// Header pairs as the guest sees them, borrowed where possible.
type Pairs<'a> = Vec<(Cow<'a, [u8]>, Cow<'a, [u8]>)>;

/// Request headers as the guest sees them: Envoy's pseudo-headers first, `host` folded into
/// `:authority`.
fn request_pairs(p: &request::Parts) -> Pairs<'_> {
    let mut out = Vec::with_capacity(p.headers.len() + 4);
    for (k, v) in request_pseudo_headers(p) {
        out.push((Cow::Borrowed(k), Cow::Borrowed(v)));
    }
    for (k, v) in &p.headers {
        if k != http::header::HOST {
            out.push((
                Cow::Borrowed(k.as_str().as_bytes()),
                Cow::Borrowed(v.as_bytes()),
            ));
        }
    }
    out
}

fn request_pseudo_headers(p: &request::Parts) -> [(&'static [u8], &[u8]); 4] {
    let authority = match p.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => p
            .headers
            .get(http::header::HOST)
            .map_or(&b""[..], |h| h.as_bytes()),
    };
    let path = p.uri.path_and_query().map_or("/", |pq| pq.as_str());
    [
        (b":authority", authority),
        (b":path", path.as_bytes()),
        (b":method", p.method.as_str().as_bytes()),
        (b":scheme", p.uri.scheme_str().unwrap_or("http").as_bytes()),
    ]
}

fn response_pairs(p: &response::Parts) -> Pairs<'_> {
    let mut out = Vec::with_capacity(p.headers.len() + 1);
    out.push((
        Cow::Borrowed(&b":status"[..]),
        Cow::Owned(p.status.as_str().as_bytes().to_vec()),
    ));
    for (k, v) in &p.headers {
        out.push((
            Cow::Borrowed(k.as_str().as_bytes()),
            Cow::Borrowed(v.as_bytes()),
        ));
    }
    out
}

fn map_pairs(m: &HeaderMap) -> Pairs<'_> {
    m.iter()
        .map(|(k, v)| {
            (
                Cow::Borrowed(k.as_str().as_bytes()),
                Cow::Borrowed(v.as_bytes()),
            )
        })
        .collect()
}

fn owned_pairs(v: &[(Bytes, Bytes)]) -> Pairs<'_> {
    v.iter()
        .map(|(k, v)| (Cow::Borrowed(k.as_ref()), Cow::Borrowed(v.as_ref())))
        .collect()
}

/// Runs `f` over the pairs of a map the guest can read now. A map not available in this phase
/// reads as empty: Envoy answers `BAD_ARGUMENT`, on which the Rust SDK panics (envoy#26485);
/// a filter written for Envoy never relies on that answer, so reading leniently keeps it
/// compatible and alive. Writes to an unavailable map still get `BAD_ARGUMENT`.
fn with_pairs<T>(
    state: &HostState,
    map_type: i32,
    f: impl FnOnce(Pairs<'_>) -> T,
) -> Result<T, Status> {
    let mut f = Some(f);
    match available_pairs(state, map_type, |p| (f.take().expect("called once"))(p)) {
        Err(Status::BadArgument) if (0..=7).contains(&map_type) => {
            Ok((f.take().expect("not called"))(Vec::new()))
        }
        other => other,
    }
}

fn available_pairs<T>(
    state: &HostState,
    map_type: i32,
    f: impl FnOnce(Pairs<'_>) -> T,
) -> Result<T, Status> {
    match map_type {
        map::HTTP_CALL_RESPONSE_HEADERS | map::GRPC_CALL_INITIAL_METADATA => {
            return state
                .call_response
                .as_ref()
                .map(|r| f(owned_pairs(&r.headers)))
                .ok_or(Status::BadArgument);
        }
        map::HTTP_CALL_RESPONSE_TRAILERS | map::GRPC_CALL_TRAILING_METADATA => {
            return state
                .call_response
                .as_ref()
                .map(|r| f(owned_pairs(&r.trailers)))
                .ok_or(Status::BadArgument);
        }
        _ => {}
    }
    let stream = state.stream().ok_or(Status::BadArgument)?;
    let data = stream.data.borrow();
    match map_type {
        map::HTTP_REQUEST_HEADERS => data.request.as_ref().map(|p| f(request_pairs(p))),
        map::HTTP_RESPONSE_HEADERS => data.response.as_ref().map(|p| f(response_pairs(p))),
        map::HTTP_REQUEST_TRAILERS => data.request_trailers.as_ref().map(|m| f(map_pairs(m))),
        map::HTTP_RESPONSE_TRAILERS => data.response_trailers.as_ref().map(|m| f(map_pairs(m))),
        _ => None,
    }
    .ok_or(Status::BadArgument)
}

/// Copies the first value of `key` in a map into `out`; false if there is none. The request
/// and response headers, read on every request by most filters, are searched in place.
fn map_value(
    state: &HostState,
    map_type: i32,
    key: &[u8],
    out: &mut Vec<u8>,
) -> Result<bool, Status> {
    if (map_type == map::HTTP_REQUEST_HEADERS || map_type == map::HTTP_RESPONSE_HEADERS)
        && let Some(stream) = state.stream()
    {
        let data = stream.data.borrow();
        let found = if map_type == map::HTTP_REQUEST_HEADERS {
            data.request.as_ref().map(|p| request_value(p, key, out))
        } else {
            data.response.as_ref().map(|p| response_value(p, key, out))
        };
        if let Some(found) = found {
            return Ok(found);
        }
    }

    with_pairs(state, map_type, |pairs| {
        match pairs.into_iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            Some((_, v)) => {
                out.extend_from_slice(&v);
                true
            }
            None => false,
        }
    })
}

fn request_value(p: &request::Parts, key: &[u8], out: &mut Vec<u8>) -> bool {
    if key.first() == Some(&b':') {
        return match request_pseudo_headers(p)
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
        {
            Some((_, v)) => {
                out.extend_from_slice(v);
                true
            }
            None => false,
        };
    }
    if key.eq_ignore_ascii_case(b"host") {
        return false; // folded into :authority, as Envoy has it
    }

    header_value(&p.headers, key, out)
}

fn response_value(p: &response::Parts, key: &[u8], out: &mut Vec<u8>) -> bool {
    if key.eq_ignore_ascii_case(b":status") {
        out.extend_from_slice(p.status.as_str().as_bytes());
        return true;
    }
    header_value(&p.headers, key, out)
}

fn header_value(headers: &HeaderMap, key: &[u8], out: &mut Vec<u8>) -> bool {
    // Lookup by &str lowercases on the stack; a HeaderName would allocate for custom names.
    match std::str::from_utf8(key).ok().and_then(|k| headers.get(k)) {
        Some(v) => {
            out.extend_from_slice(v.as_bytes());
            true
        }
        None => false,
    }
}

enum Edit<'a> {
    Add(&'a [u8]),
    Replace(&'a [u8]),
    Remove,
}

/// Applies an edit to a header map of the effective stream.
fn edit_map(state: &HostState, map_type: i32, key: &[u8], edit: Edit<'_>) -> Status {
    let Some(stream) = state.stream() else {
        return Status::BadArgument;
    };
    let mut data = stream.data.borrow_mut();
    // Header names are short: lowercase them on the stack.
    let mut buf = [0u8; 64];
    let owned;
    let key_lower: &[u8] = if key.len() <= buf.len() {
        let b = &mut buf[..key.len()];
        b.copy_from_slice(key);
        b.make_ascii_lowercase();
        b
    } else {
        owned = key.to_ascii_lowercase();
        &owned
    };
    match map_type {
        map::HTTP_REQUEST_HEADERS => match data.request.as_mut() {
            Some(p) => edit_request(p, key_lower, edit),
            None => Status::BadArgument,
        },
        map::HTTP_RESPONSE_HEADERS => match data.response.as_mut() {
            Some(p) if key_lower == b":status" => match edit {
                Edit::Add(v) | Edit::Replace(v) => {
                    match std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<u16>().ok())
                        .and_then(|c| StatusCode::from_u16(c).ok())
                    {
                        Some(code) => {
                            p.status = code;
                            Status::Ok
                        }
                        None => Status::BadArgument,
                    }
                }
                Edit::Remove => Status::Ok,
            },
            Some(p) => edit_headers(&mut p.headers, key_lower, edit),
            None => Status::BadArgument,
        },
        map::HTTP_REQUEST_TRAILERS | map::HTTP_RESPONSE_TRAILERS => {
            let (trailers, phase) = if map_type == map::HTTP_REQUEST_TRAILERS {
                (&mut data.request_trailers, BodyPhase::Request)
            } else {
                (&mut data.response_trailers, BodyPhase::Response)
            };
            if trailers.is_none() && !matches!(edit, Edit::Remove) {
                // Trailers may be added from the last body callback when there are none.
                if data.body_phase != Some(phase) {
                    return Status::BadArgument;
                }
                let trailers = if phase == BodyPhase::Request {
                    &mut data.request_trailers
                } else {
                    &mut data.response_trailers
                };
                *trailers = Some(HeaderMap::new());
                return edit_headers(trailers.as_mut().expect("just set"), key_lower, edit);
            }
            match trailers.as_mut() {
                Some(t) => edit_headers(t, key_lower, edit),
                None => Status::Ok,
            }
        }
        _ => Status::BadArgument,
    }
}

fn edit_headers(headers: &mut HeaderMap, key: &[u8], edit: Edit<'_>) -> Status {
    // Replacing the one value a header has, the common case, needs no new HeaderName (which
    // allocates for a custom name).
    if let Edit::Replace(v) = edit
        && let Ok(k) = std::str::from_utf8(key)
        && headers.get_all(k).iter().nth(1).is_none()
        && let Some(slot) = headers.get_mut(k)
    {
        return match HeaderValue::from_bytes(v) {
            Ok(value) => {
                *slot = value;
                Status::Ok
            }
            Err(_) => Status::BadArgument,
        };
    }
    let Ok(name) = HeaderName::from_bytes(key) else {
        return Status::BadArgument;
    };
    match edit {
        Edit::Remove => {
            headers.remove(&name);
        }
        Edit::Add(v) | Edit::Replace(v) => {
            let Ok(value) = HeaderValue::from_bytes(v) else {
                return Status::BadArgument;
            };
            if matches!(edit, Edit::Add(_)) {
                headers.append(name, value);
            } else {
                headers.insert(name, value);
            }
        }
    }
    Status::Ok
}

fn edit_request(p: &mut request::Parts, key: &[u8], edit: Edit<'_>) -> Status {
    let value = match edit {
        Edit::Add(v) | Edit::Replace(v) => Some(v),
        Edit::Remove => None,
    };
    match key {
        b":method" => match value.map(Method::from_bytes) {
            Some(Ok(m)) => p.method = m,
            Some(Err(_)) => return Status::BadArgument,
            None => {}
        },
        b":path" => {
            if let Some(v) = value {
                let mut uri = p.uri.clone().into_parts();
                match http::uri::PathAndQuery::try_from(v) {
                    Ok(pq) => uri.path_and_query = Some(pq),
                    Err(_) => return Status::BadArgument,
                }
                match Uri::from_parts(uri) {
                    Ok(u) => p.uri = u,
                    Err(_) => return Status::BadArgument,
                }
            }
        }
        b":authority" | b"host" => match value {
            Some(v) => {
                let Ok(hv) = HeaderValue::from_bytes(v) else {
                    return Status::BadArgument;
                };
                if p.uri.authority().is_some() {
                    let mut uri = p.uri.clone().into_parts();
                    match http::uri::Authority::try_from(v) {
                        Ok(a) => uri.authority = Some(a),
                        Err(_) => return Status::BadArgument,
                    }
                    if let Ok(u) = Uri::from_parts(uri) {
                        p.uri = u;
                    }
                }
                p.headers.insert(http::header::HOST, hv);
            }
            None => {
                p.headers.remove(http::header::HOST);
            }
        },
        b":scheme" => {}
        _ => return edit_headers(&mut p.headers, key, edit),
    }
    Status::Ok
}

/// Replaces a whole map from the serialised pairs.
fn set_map(state: &HostState, map_type: i32, pairs_bytes: &[u8]) -> Status {
    let Some(new) = pairs::deserialize(pairs_bytes) else {
        return Status::BadArgument;
    };
    let Some(stream) = state.stream() else {
        return Status::BadArgument;
    };
    {
        let mut data = stream.data.borrow_mut();
        let target = match map_type {
            map::HTTP_REQUEST_HEADERS => data.request.as_mut().map(|p| &mut p.headers),
            map::HTTP_RESPONSE_HEADERS => data.response.as_mut().map(|p| &mut p.headers),
            map::HTTP_REQUEST_TRAILERS => {
                Some(data.request_trailers.get_or_insert_with(HeaderMap::new))
            }
            map::HTTP_RESPONSE_TRAILERS => {
                Some(data.response_trailers.get_or_insert_with(HeaderMap::new))
            }
            _ => None,
        };
        let Some(target) = target else {
            return Status::BadArgument;
        };
        let keep_host = map_type == map::HTTP_REQUEST_HEADERS;
        let host = if keep_host {
            target.get(http::header::HOST).cloned()
        } else {
            None
        };
        target.clear();
        if let Some(h) = host {
            target.insert(http::header::HOST, h);
        }
    }
    for (k, v) in new {
        let status = if k.starts_with(b":") {
            edit_map(state, map_type, k, Edit::Replace(v))
        } else {
            edit_map(state, map_type, k, Edit::Add(v))
        };
        if status != Status::Ok {
            return status;
        }
    }
    Status::Ok
}
