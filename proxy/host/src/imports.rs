//! The `env.proxy_*` host functions of proxy-wasm 0.2.1 (and the 0.1.0 and emscripten names
//! that SDK builds import), with Envoy's statuses. A bad guest pointer is
//! `INVALID_MEMORY_ACCESS`, never a host crash; nothing here calls back into the guest except
//! its allocator, and follow-up work is left in `HostState::effects`.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, request, response};
use wasmtime::{Caller, Linker};

use crate::abi::{MetricType, Status, buffer, map, stream as stream_type};
use crate::callout::{CalloutRequest, GrpcRequest};
use crate::pairs;
use crate::properties::{self, PluginFacts};
use crate::state::{Effect, HostState};
use crate::stream::{BodyPhase, LocalResponse};

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;
/// Header pairs as the guest sees them, borrowed where possible.
type Pairs<'a> = Vec<(Cow<'a, [u8]>, Cow<'a, [u8]>)>;

const OK: i32 = Status::Ok as i32;

fn st(s: Status) -> R {
    Ok(s as i32)
}

/// Guest memory and host state together.
fn parts<'a>(c: &'a mut C<'_>) -> Option<(&'a mut [u8], &'a mut HostState)> {
    let memory = c.data().memory?;
    Some(memory.data_and_store_mut(c))
}

fn slice(mem: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let start = ptr as u32 as usize;
    mem.get(start..start.checked_add(len as u32 as usize)?)
}

fn put_u32(mem: &mut [u8], ptr: i32, v: u32) -> bool {
    let at = ptr as u32 as usize;
    match mem.get_mut(at..at.saturating_add(4)) {
        Some(dst) => {
            dst.copy_from_slice(&v.to_le_bytes());
            true
        }
        None => false,
    }
}

fn put_u64(mem: &mut [u8], ptr: i32, v: u64) -> bool {
    let at = ptr as u32 as usize;
    match mem.get_mut(at..at.saturating_add(8)) {
        Some(dst) => {
            dst.copy_from_slice(&v.to_le_bytes());
            true
        }
        None => false,
    }
}

/// Reads a guest string argument into an owned buffer.
fn arg(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let (mem, _) = parts(c).ok_or(Status::InternalFailure)?;
    slice(mem, ptr, len)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Copies `data` into memory the guest allocates, and writes its address and length to the
/// guest's out-parameters. Empty data is returned as (0, 0) without allocating.
fn give(c: &mut C<'_>, data: &[u8], ret_ptr: i32, ret_len: i32) -> R {
    let mut ptr = 0i32;
    if !data.is_empty() {
        // Taken out for the call, not cloned: cloning a TypedFunc costs more than the call.
        let Some(alloc) = c.data_mut().alloc.take() else {
            return Err(wasmtime::Error::msg(
                "no guest allocator: the module exports neither malloc nor \
                 proxy_on_memory_allocate, or its allocator called back into the host",
            ));
        };
        let result = alloc.call(&mut *c, data.len() as i32);
        c.data_mut().alloc = Some(alloc);
        ptr = result?;

        if ptr == 0 {
            return st(Status::InvalidMemoryAccess);
        }
    }
    let Some((mem, _)) = parts(c) else {
        return st(Status::InternalFailure);
    };
    if !data.is_empty() {
        let at = ptr as u32 as usize;
        match mem.get_mut(at..at.saturating_add(data.len())) {
            Some(dst) => dst.copy_from_slice(data),
            None => return st(Status::InvalidMemoryAccess),
        }
    }
    if !put_u32(mem, ret_ptr, ptr as u32) || !put_u32(mem, ret_len, data.len() as u32) {
        return st(Status::InvalidMemoryAccess);
    }
    Ok(OK)
}

fn count(c: &mut C<'_>) {
    c.data_mut().host_calls += 1;
}

// ----- header maps -----

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

// ----- buffers -----

fn with_buffer<T>(
    state: &HostState,
    buffer_type: i32,
    f: impl FnOnce(&[u8], bool) -> T,
) -> Result<T, Status> {
    match buffer_type {
        buffer::VM_CONFIGURATION | buffer::PLUGIN_CONFIGURATION => match &state.config_buffer {
            Some((t, bytes)) if *t == buffer_type => Ok(f(bytes, true)),
            _ => Err(Status::NotFound),
        },
        buffer::HTTP_CALL_RESPONSE_BODY => state
            .call_response
            .as_ref()
            .map(|r| f(&r.body, true))
            .ok_or(Status::NotFound),
        buffer::GRPC_CALL_MESSAGE => state
            .grpc_message
            .as_ref()
            .map(|m| f(m, true))
            .ok_or(Status::NotFound),
        buffer::HTTP_REQUEST_BODY | buffer::HTTP_RESPONSE_BODY => {
            let stream = state.stream().ok_or(Status::NotFound)?;
            let data = stream.data.borrow();
            match (buffer_type, data.body_phase) {
                (buffer::HTTP_REQUEST_BODY, Some(BodyPhase::Request)) => {
                    Ok(f(&data.request_body, data.request_end))
                }
                (buffer::HTTP_RESPONSE_BODY, Some(BodyPhase::Response)) => {
                    Ok(f(&data.response_body, data.response_end))
                }
                _ => Err(Status::NotFound),
            }
        }
        _ => Err(Status::NotFound),
    }
}

fn set_buffer(state: &HostState, buffer_type: i32, start: u32, size: u32, bytes: &[u8]) -> Status {
    let Some(stream) = state.stream() else {
        return Status::NotFound;
    };
    let mut data = stream.data.borrow_mut();
    let body = match (buffer_type, data.body_phase) {
        (buffer::HTTP_REQUEST_BODY, Some(BodyPhase::Request)) => &mut data.request_body,
        (buffer::HTTP_RESPONSE_BODY, Some(BodyPhase::Response)) => &mut data.response_body,
        (buffer::HTTP_REQUEST_BODY | buffer::HTTP_RESPONSE_BODY, _) => return Status::NotFound,
        _ => return Status::BadArgument,
    };
    // Replace `size` bytes at `start`: (0, 0) prepends, a start past the end appends.
    let len = body.len();
    let start = (start as usize).min(len);
    let end = start.saturating_add(size as usize).min(len);
    let mut out = bytes::BytesMut::with_capacity(len - (end - start) + bytes.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(bytes);
    out.extend_from_slice(&body[end..]);
    *body = out;
    Status::Ok
}

// ----- the functions -----

/// Every `env` function defined here, for checking a module's imports before instantiating it.
pub const ENV_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_done",
    "proxy_set_effective_context",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_size",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_get_status",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_set_shared_data",
    "proxy_get_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_define_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
    "proxy_get_metric",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_call_foreign_function",
    "proxy_get_configuration",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
    "emscripten_notify_memory_growth",
    "pthread_equal",
];

macro_rules! wrap {
    ($linker:expr, $name:literal, $f:expr) => {
        $linker.func_wrap("env", $name, $f)?;
    };
}

/// Defines every `env` function a proxy-wasm module may import.
pub fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wrap!(linker, "proxy_log", |mut c: C<'_>,
                                level: i32,
                                ptr: i32,
                                len: i32|
     -> R {
        count(&mut c);
        let Some(level) = crate::abi::LogLevel::from_i32(level) else {
            return st(Status::BadArgument);
        };
        let msg = match arg(&mut c, ptr, len) {
            Ok(m) => m,
            Err(s) => return st(s),
        };
        let msg = String::from_utf8_lossy(&msg).into_owned();
        if level >= crate::abi::LogLevel::Error {
            c.data_mut().last_error = Some(msg.chars().take(300).collect());
        }
        let plugin = &c.data().plugin_label;
        match level {
            crate::abi::LogLevel::Trace => {
                tracing::trace!(target: "wasm", plugin = %plugin, "{msg}")
            }
            crate::abi::LogLevel::Debug => {
                tracing::debug!(target: "wasm", plugin = %plugin, "{msg}")
            }
            crate::abi::LogLevel::Info => tracing::info!(target: "wasm", plugin = %plugin, "{msg}"),
            crate::abi::LogLevel::Warn => tracing::warn!(target: "wasm", plugin = %plugin, "{msg}"),
            _ => tracing::error!(target: "wasm", plugin = %plugin, "{msg}"),
        }
        Ok(OK)
    });
    wrap!(linker, "proxy_get_log_level", |mut c: C<'_>,
                                          ret: i32|
     -> R {
        count(&mut c);
        let level = match tracing::level_filters::LevelFilter::current().into_level() {
            Some(tracing::Level::TRACE) => 0,
            Some(tracing::Level::DEBUG) => 1,
            Some(tracing::Level::INFO) => 2,
            Some(tracing::Level::WARN) => 3,
            Some(tracing::Level::ERROR) => 4,
            None => 5,
        };
        let Some((mem, _)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        if put_u32(mem, ret, level) {
            Ok(OK)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    });
    wrap!(linker, "proxy_get_current_time_nanoseconds", |mut c: C<
        '_,
    >,
                                                         ret: i32|
     -> R {
        count(&mut c);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let Some((mem, _)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        if put_u64(mem, ret, now) {
            Ok(OK)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    });
    wrap!(
        linker,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> R {
            count(&mut c);
            let state = c.data_mut();
            let root = state.root_of_effective();
            let period = (period != 0).then(|| Duration::from_millis(period as u32 as u64));
            state.effects.push(Effect::Tick { root, period });
            Ok(OK)
        }
    );
    wrap!(linker, "proxy_done", |mut c: C<'_>| -> R {
        count(&mut c);
        // No context of ours waits for proxy_done: contexts finish when the stream does.
        st(Status::NotFound)
    });
    wrap!(linker, "proxy_set_effective_context", |mut c: C<'_>,
                                                  context: i32|
     -> R {
        count(&mut c);
        let state = c.data_mut();
        if state.contexts.contains_key(&(context as u32)) {
            state.effective = context as u32;
            Ok(OK)
        } else {
            st(Status::BadArgument)
        }
    });
    wrap!(linker, "proxy_get_buffer_bytes", |mut c: C<'_>,
                                             t: i32,
                                             start: i32,
                                             max: i32,
                                             ret_ptr: i32,
                                             ret_len: i32|
     -> R {
        count(&mut c);
        let (start, max) = (start as u32 as usize, max as u32 as usize);
        let data = with_buffer(c.data(), t, |bytes, _| {
            let begin = start.min(bytes.len());
            let end = begin.saturating_add(max).min(bytes.len());
            bytes[begin..end].to_vec()
        });
        match data {
            Ok(d) => give(&mut c, &d, ret_ptr, ret_len),
            Err(s) => st(s),
        }
    });
    wrap!(linker, "proxy_set_buffer_bytes", |mut c: C<'_>,
                                             t: i32,
                                             start: i32,
                                             size: i32,
                                             ptr: i32,
                                             len: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let Some(bytes) = slice(mem, ptr, len) else {
            return st(Status::InvalidMemoryAccess);
        };
        st(set_buffer(state, t, start as u32, size as u32, bytes))
    });
    wrap!(linker, "proxy_get_buffer_status", |mut c: C<'_>,
                                              t: i32,
                                              ret_len: i32,
                                              ret_flags: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        match with_buffer(state, t, |bytes, end| (bytes.len() as u32, end as u32)) {
            Ok((len, flags)) => {
                if put_u32(mem, ret_len, len) && put_u32(mem, ret_flags, flags) {
                    Ok(OK)
                } else {
                    st(Status::InvalidMemoryAccess)
                }
            }
            Err(s) => st(s),
        }
    });
    wrap!(linker, "proxy_get_header_map_size", |mut c: C<'_>,
                                                t: i32,
                                                ret: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let size = with_pairs(state, t, |p| pairs::serialize(&p).len());
        match size {
            Ok(n) => {
                if put_u32(mem, ret, n as u32) {
                    Ok(OK)
                } else {
                    st(Status::InvalidMemoryAccess)
                }
            }
            Err(s) => st(s),
        }
    });
    wrap!(linker, "proxy_get_header_map_pairs", |mut c: C<'_>,
                                                 t: i32,
                                                 ret_ptr: i32,
                                                 ret_len: i32|
     -> R {
        count(&mut c);
        match with_pairs(c.data(), t, |p| pairs::serialize(&p)) {
            Ok(bytes) => give(&mut c, &bytes, ret_ptr, ret_len),
            Err(s) => st(s),
        }
    });
    wrap!(linker, "proxy_set_header_map_pairs", |mut c: C<'_>,
                                                 t: i32,
                                                 ptr: i32,
                                                 len: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let Some(bytes) = slice(mem, ptr, len) else {
            return st(Status::InvalidMemoryAccess);
        };
        st(set_map(state, t, bytes))
    });
    wrap!(linker, "proxy_get_header_map_value", |mut c: C<'_>,
                                                 t: i32,
                                                 kp: i32,
                                                 kl: i32,
                                                 ret_ptr: i32,
                                                 ret_len: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let Some(key) = slice(mem, kp, kl) else {
            return st(Status::InvalidMemoryAccess);
        };
        let mut value = std::mem::take(&mut state.scratch);
        value.clear();
        let status = match map_value(state, t, key, &mut value) {
            Ok(true) => give(&mut c, &value, ret_ptr, ret_len),
            Ok(false) => st(Status::NotFound),
            Err(s) => st(s),
        };
        c.data_mut().scratch = value;
        status
    });
    wrap!(linker, "proxy_add_header_map_value", |mut c: C<'_>,
                                                 t: i32,
                                                 kp: i32,
                                                 kl: i32,
                                                 vp: i32,
                                                 vl: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(k), Some(v)) = (slice(mem, kp, kl), slice(mem, vp, vl)) else {
            return st(Status::InvalidMemoryAccess);
        };
        st(edit_map(state, t, k, Edit::Add(v)))
    });
    wrap!(linker, "proxy_replace_header_map_value", |mut c: C<'_>,
                                                     t: i32,
                                                     kp: i32,
                                                     kl: i32,
                                                     vp: i32,
                                                     vl: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(k), Some(v)) = (slice(mem, kp, kl), slice(mem, vp, vl)) else {
            return st(Status::InvalidMemoryAccess);
        };
        st(edit_map(state, t, k, Edit::Replace(v)))
    });
    wrap!(linker, "proxy_remove_header_map_value", |mut c: C<'_>,
                                                    t: i32,
                                                    kp: i32,
                                                    kl: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let Some(k) = slice(mem, kp, kl) else {
            return st(Status::InvalidMemoryAccess);
        };
        st(edit_map(state, t, k, Edit::Remove))
    });
    wrap!(linker, "proxy_continue_stream", |mut c: C<'_>,
                                            t: i32|
     -> R {
        count(&mut c);
        let Some(stream) = c.data().stream().cloned() else {
            return st(Status::BadArgument);
        };
        match t {
            stream_type::HTTP_REQUEST => stream.request_resume.set(true),
            stream_type::HTTP_RESPONSE => stream.response_resume.set(true),
            _ => return st(Status::BadArgument),
        }
        stream.wake();
        Ok(OK)
    });
    wrap!(linker, "proxy_close_stream", |mut c: C<'_>, t: i32| -> R {
        count(&mut c);
        let Some(stream) = c.data().stream().cloned() else {
            return st(Status::BadArgument);
        };
        if !matches!(t, stream_type::HTTP_REQUEST | stream_type::HTTP_RESPONSE) {
            return st(Status::BadArgument);
        }
        stream.closed.set(true);
        stream.wake();
        Ok(OK)
    });
    wrap!(linker, "proxy_get_status", |mut c: C<'_>,
                                       ret_code: i32,
                                       ret_ptr: i32,
                                       ret_len: i32|
     -> R {
        count(&mut c);
        let (code, msg) = c.data().status.clone();
        let Some((mem, _)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        if !put_u32(mem, ret_code, code) {
            return st(Status::InvalidMemoryAccess);
        }
        give(&mut c, &msg, ret_ptr, ret_len)
    });
    wrap!(linker, "proxy_send_local_response", |mut c: C<'_>,
                                                status: i32,
                                                dp: i32,
                                                dl: i32,
                                                bp: i32,
                                                bl: i32,
                                                hp: i32,
                                                hl: i32,
                                                grpc: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(details), Some(body), Some(headers)) =
            (slice(mem, dp, dl), slice(mem, bp, bl), slice(mem, hp, hl))
        else {
            return st(Status::InvalidMemoryAccess);
        };
        let Some(headers) = pairs::deserialize(headers) else {
            return st(Status::BadArgument);
        };
        if !(100..=599).contains(&status) {
            return st(Status::BadArgument);
        }
        let Some(stream) = state.stream().cloned() else {
            return st(Status::BadArgument);
        };
        let reply = LocalResponse {
            status: status as u16,
            body: Bytes::copy_from_slice(body),
            headers: headers
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).to_ascii_lowercase(),
                        Bytes::copy_from_slice(v),
                    )
                })
                .collect(),
            grpc_status: (0..=16).contains(&grpc).then_some(grpc as u8),
            details: String::from_utf8_lossy(details).into_owned(),
        };
        *stream.local_response.borrow_mut() = Some(reply);
        stream.wake();
        Ok(OK)
    });
    wrap!(linker, "proxy_http_call", |mut c: C<'_>,
                                      up: i32,
                                      ul: i32,
                                      hp: i32,
                                      hl: i32,
                                      bp: i32,
                                      bl: i32,
                                      tp: i32,
                                      tl: i32,
                                      timeout: i32,
                                      ret: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(cluster), Some(headers), Some(body), Some(trailers)) = (
            slice(mem, up, ul),
            slice(mem, hp, hl),
            slice(mem, bp, bl),
            slice(mem, tp, tl),
        ) else {
            return st(Status::InvalidMemoryAccess);
        };
        let (Some(headers), Some(trailers)) =
            (pairs::deserialize(headers), pairs::deserialize(trailers))
        else {
            return st(Status::BadArgument);
        };
        let cluster = String::from_utf8_lossy(cluster).into_owned();
        let own = |v: Vec<(&[u8], &[u8])>| -> Vec<(Bytes, Bytes)> {
            v.into_iter()
                .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
                .collect()
        };
        let request = CalloutRequest {
            cluster,
            headers: own(headers),
            body: Bytes::copy_from_slice(body),
            trailers: own(trailers),
            timeout: Duration::from_millis(timeout as u32 as u64),
        };
        // Envoy: a missing :method, :path or :authority, or an unknown cluster, is BAD_ARGUMENT.
        let complete = [":method", ":path", ":authority"]
            .iter()
            .all(|h| request.header(h).is_some_and(|v| !v.is_empty()));
        if !complete || !state.embedder.cluster_exists(&request.cluster) {
            return st(Status::BadArgument);
        }
        let token = state.next_token();
        let root = state.root_of_effective();
        state.callouts.insert(token, root);
        state.effects.push(Effect::HttpCall { token, request });
        if put_u32(mem, ret, token) {
            Ok(OK)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    });
    wrap!(linker, "proxy_grpc_call", |mut c: C<'_>,
                                      up: i32,
                                      ul: i32,
                                      sp: i32,
                                      sl: i32,
                                      mp: i32,
                                      ml: i32,
                                      mdp: i32,
                                      mdl: i32,
                                      msgp: i32,
                                      msgl: i32,
                                      timeout: i32,
                                      ret: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(cluster), Some(service), Some(method), Some(md), Some(msg)) = (
            slice(mem, up, ul),
            slice(mem, sp, sl),
            slice(mem, mp, ml),
            slice(mem, mdp, mdl),
            slice(mem, msgp, msgl),
        ) else {
            return st(Status::InvalidMemoryAccess);
        };
        let cluster = String::from_utf8_lossy(cluster).into_owned();
        if !state.embedder.cluster_exists(&cluster) {
            return st(Status::ParseFailure);
        }
        let Some(md) = pairs::deserialize(md) else {
            return st(Status::ParseFailure);
        };
        let request = GrpcRequest {
            cluster,
            service: String::from_utf8_lossy(service).into_owned(),
            method: String::from_utf8_lossy(method).into_owned(),
            initial_metadata: md
                .into_iter()
                .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
                .collect(),
            message: Bytes::copy_from_slice(msg),
            timeout: Duration::from_millis(timeout as u32 as u64),
        };
        let token = state.next_token();
        let root = state.root_of_effective();
        state.callouts.insert(token, root);
        state.effects.push(Effect::GrpcCall { token, request });
        if put_u32(mem, ret, token) {
            Ok(OK)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    });
    // Streaming gRPC callouts are not supported: the SDKs treat INTERNAL_FAILURE as an error.
    wrap!(linker, "proxy_grpc_stream", |mut c: C<'_>,
                                        _: i32,
                                        _: i32,
                                        _: i32,
                                        _: i32,
                                        _: i32,
                                        _: i32,
                                        _: i32,
                                        _: i32,
                                        _: i32|
     -> R {
        count(&mut c);
        st(Status::InternalFailure)
    });
    wrap!(linker, "proxy_grpc_send", |mut c: C<'_>,
                                      _token: i32,
                                      _: i32,
                                      _: i32,
                                      _: i32|
     -> R {
        count(&mut c);
        st(Status::NotFound)
    });
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        linker.func_wrap("env", name, |mut c: C<'_>, token: i32| -> R {
            count(&mut c);
            let state = c.data_mut();
            if state.callouts.remove(&(token as u32)).is_some() {
                Ok(OK)
            } else {
                st(Status::NotFound)
            }
        })?;
    }
    wrap!(linker, "proxy_set_shared_data", |mut c: C<'_>,
                                            kp: i32,
                                            kl: i32,
                                            vp: i32,
                                            vl: i32,
                                            cas: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(k), Some(v)) = (slice(mem, kp, kl), slice(mem, vp, vl)) else {
            return st(Status::InvalidMemoryAccess);
        };
        let key = String::from_utf8_lossy(k);
        st(state
            .shared
            .set_data(&state.vm_id, &key, Bytes::copy_from_slice(v), cas as u32))
    });
    wrap!(linker, "proxy_get_shared_data", |mut c: C<'_>,
                                            kp: i32,
                                            kl: i32,
                                            ret_ptr: i32,
                                            ret_len: i32,
                                            ret_cas: i32|
     -> R {
        count(&mut c);
        // Looked up straight from guest memory: no copy of the key.
        let found = {
            let Some((mem, state)) = parts(&mut c) else {
                return st(Status::InternalFailure);
            };
            let Some(key) = slice(mem, kp, kl) else {
                return st(Status::InvalidMemoryAccess);
            };
            state
                .shared
                .get_data(&state.vm_id, &String::from_utf8_lossy(key))
        };
        let Some((value, cas)) = found else {
            return st(Status::NotFound);
        };
        let result = give(&mut c, &value, ret_ptr, ret_len)?;
        if result != OK {
            return Ok(result);
        }
        let Some((mem, _)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        if put_u32(mem, ret_cas, cas) {
            Ok(OK)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    });
    wrap!(linker, "proxy_register_shared_queue", |mut c: C<'_>,
                                                  np: i32,
                                                  nl: i32,
                                                  ret: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let Some(name) = slice(mem, np, nl) else {
            return st(Status::InvalidMemoryAccess);
        };
        let name = String::from_utf8_lossy(name);
        let root = state.root_of_effective();
        let id = state
            .shared
            .register_queue(&state.vm_id, &name, state.queue_notify.clone(), root);
        if put_u32(mem, ret, id) {
            Ok(OK)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    });
    wrap!(linker, "proxy_resolve_shared_queue", |mut c: C<'_>,
                                                 vp: i32,
                                                 vl: i32,
                                                 np: i32,
                                                 nl: i32,
                                                 ret: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(vm), Some(name)) = (slice(mem, vp, vl), slice(mem, np, nl)) else {
            return st(Status::InvalidMemoryAccess);
        };
        let vm = if vm.is_empty() {
            state.vm_id.clone()
        } else {
            String::from_utf8_lossy(vm).into_owned()
        };
        match state
            .shared
            .resolve_queue(&vm, &String::from_utf8_lossy(name))
        {
            Some(id) => {
                if put_u32(mem, ret, id) {
                    Ok(OK)
                } else {
                    st(Status::InvalidMemoryAccess)
                }
            }
            None => st(Status::NotFound),
        }
    });
    wrap!(linker, "proxy_enqueue_shared_queue", |mut c: C<'_>,
                                                 id: i32,
                                                 vp: i32,
                                                 vl: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let Some(v) = slice(mem, vp, vl) else {
            return st(Status::InvalidMemoryAccess);
        };
        st(state.shared.enqueue(id as u32, Bytes::copy_from_slice(v)))
    });
    wrap!(linker, "proxy_dequeue_shared_queue", |mut c: C<'_>,
                                                 id: i32,
                                                 ret_ptr: i32,
                                                 ret_len: i32|
     -> R {
        count(&mut c);
        match c.data().shared.dequeue(id as u32) {
            Ok(v) => give(&mut c, &v, ret_ptr, ret_len),
            Err(s) => st(s),
        }
    });
    wrap!(linker, "proxy_define_metric", |mut c: C<'_>,
                                          t: i32,
                                          np: i32,
                                          nl: i32,
                                          ret: i32|
     -> R {
        count(&mut c);
        let Some(kind) = MetricType::from_i32(t) else {
            return st(Status::BadArgument);
        };
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let Some(name) = slice(mem, np, nl) else {
            return st(Status::InvalidMemoryAccess);
        };
        let (id, metric) = state
            .shared
            .metrics
            .define(kind, &String::from_utf8_lossy(name));
        state.metrics.insert(id, metric);
        if put_u32(mem, ret, id) {
            Ok(OK)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    });
    wrap!(linker, "proxy_record_metric", |mut c: C<'_>,
                                          id: i32,
                                          value: i64|
     -> R {
        count(&mut c);
        match metric(c.data_mut(), id) {
            Some(m) => {
                m.record(value as u64);
                Ok(OK)
            }
            None => st(Status::NotFound),
        }
    });
    wrap!(linker, "proxy_increment_metric", |mut c: C<'_>,
                                             id: i32,
                                             delta: i64|
     -> R {
        count(&mut c);
        match metric(c.data_mut(), id) {
            Some(m) => st(m.increment(delta)),
            None => st(Status::NotFound),
        }
    });
    wrap!(linker, "proxy_get_metric", |mut c: C<'_>,
                                       id: i32,
                                       ret: i32|
     -> R {
        count(&mut c);
        let Some(m) = metric(c.data_mut(), id) else {
            return st(Status::NotFound);
        };
        let value = m.value.load(std::sync::atomic::Ordering::Relaxed) as u64;
        let Some((mem, _)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        if put_u64(mem, ret, value) {
            Ok(OK)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    });
    wrap!(linker, "proxy_get_property", |mut c: C<'_>,
                                         pp: i32,
                                         pl: i32,
                                         ret_ptr: i32,
                                         ret_len: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let Some(path) = slice(mem, pp, pl) else {
            return st(Status::InvalidMemoryAccess);
        };
        // Paths are short: split on the stack rather than allocate for every read.
        let Ok(path) = std::str::from_utf8(path) else {
            return st(Status::NotFound);
        };
        let mut segments = [""; 16];
        let mut n = 0;
        for segment in path.split('\0') {
            if n == segments.len() {
                return st(Status::NotFound);
            }
            segments[n] = segment;
            n += 1;
        }
        let plugin = state.plugin();
        let facts = PluginFacts {
            name: plugin.map_or("", |p| p.name.as_str()),
            root_id: plugin.map_or("", |p| p.root_id.as_str()),
            vm_id: &state.vm_id,
        };
        match properties::get(&segments[..n], &facts, state.stream().map(|s| &**s)) {
            Ok(v) => give(&mut c, &v, ret_ptr, ret_len),
            Err(s) => st(s),
        }
    });
    wrap!(linker, "proxy_set_property", |mut c: C<'_>,
                                         pp: i32,
                                         pl: i32,
                                         vp: i32,
                                         vl: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(path), Some(value)) = (slice(mem, pp, pl), slice(mem, vp, vl)) else {
            return st(Status::InvalidMemoryAccess);
        };
        let path = String::from_utf8_lossy(path);
        let segments: Vec<&str> = path.split('\0').collect();
        match state.stream() {
            Some(stream) => st(properties::set(&segments, value, stream)),
            None => Ok(OK),
        }
    });
    wrap!(linker, "proxy_call_foreign_function", |mut c: C<'_>,
                                                  np: i32,
                                                  nl: i32,
                                                  ap: i32,
                                                  al: i32,
                                                  ret_ptr: i32,
                                                  ret_len: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(name), Some(args)) = (slice(mem, np, nl), slice(mem, ap, al)) else {
            return st(Status::InvalidMemoryAccess);
        };
        let name = String::from_utf8_lossy(name).into_owned();
        match crate::foreign::call(&name, args, state.stream().map(|s| &**s), &*state.embedder) {
            Ok(result) => give(&mut c, &result, ret_ptr, ret_len),
            Err(s) => st(s),
        }
    });

    // ABI 0.1.0 names, for modules built with old SDKs.
    wrap!(linker, "proxy_get_configuration", |mut c: C<'_>,
                                              ret_ptr: i32,
                                              ret_len: i32|
     -> R {
        count(&mut c);
        let config = c
            .data()
            .config_buffer
            .as_ref()
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        give(&mut c, &config, ret_ptr, ret_len)
    });
    for (name, which) in [
        ("proxy_continue_request", 0),
        ("proxy_continue_response", 1),
    ] {
        linker.func_wrap("env", name, move |mut c: C<'_>| -> R {
            count(&mut c);
            let Some(stream) = c.data().stream().cloned() else {
                return st(Status::BadArgument);
            };
            if which == 0 {
                stream.request_resume.set(true)
            } else {
                stream.response_resume.set(true)
            }
            stream.wake();
            Ok(OK)
        })?;
    }
    wrap!(linker, "proxy_clear_route_cache", |mut c: C<'_>| -> R {
        count(&mut c);
        Ok(OK)
    });
    // Imported by modules built with emscripten (the C++ SDK).
    wrap!(
        linker,
        "emscripten_notify_memory_growth",
        |_: C<'_>, _: i32| {}
    );
    wrap!(linker, "pthread_equal", |_: C<'_>, a: i32, b: i32| -> i32 {
        (a == b) as i32
    });
    Ok(())
}

fn metric(state: &mut HostState, id: i32) -> Option<std::sync::Arc<crate::shared::Metric>> {
    let id = id as u32;
    if let Some(m) = state.metrics.get(&id) {
        return Some(m.clone());
    }
    let m = state.shared.metrics.get(id)?;
    state.metrics.insert(id, m.clone());
    Some(m)
}
