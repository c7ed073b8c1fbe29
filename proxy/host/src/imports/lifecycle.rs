//! A VM's and a stream's course: logging, time, ticks, the effective context, and a stream
//! continued, closed or answered locally; the names emscripten builds import.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use wasmtime::Linker;

use super::call::{Answer, C, host_fn};
use super::guest::{memory, memory_and_state};
use crate::abi::{LogLevel, Status, stream as stream_type};
use crate::pairs;
use crate::state::{Effect, HostState};
use crate::stream::LocalResponse;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn(linker, "proxy_log", log)?;
    host_fn(linker, "proxy_get_log_level", get_log_level)?;
    host_fn(
        linker,
        "proxy_get_current_time_nanoseconds",
        get_current_time,
    )?;
    host_fn(
        linker,
        "proxy_set_tick_period_milliseconds",
        set_tick_period,
    )?;
    host_fn(linker, "proxy_done", done)?;
    host_fn(linker, "proxy_set_effective_context", set_effective_context)?;
    host_fn(linker, "proxy_continue_stream", continue_stream)?;
    host_fn(linker, "proxy_close_stream", close_stream)?;
    host_fn(linker, "proxy_send_local_response", send_local_response)?;
    // ABI 0.1.0, for modules built with old SDKs.
    host_fn(linker, "proxy_continue_request", |c: &mut C<'_>| {
        continue_stream(c, stream_type::HTTP_REQUEST)
    })?;
    host_fn(linker, "proxy_continue_response", |c: &mut C<'_>| {
        continue_stream(c, stream_type::HTTP_RESPONSE)
    })?;
    host_fn(linker, "proxy_clear_route_cache", |_: &mut C<'_>| Ok(()))?;
    // Imported by modules built with emscripten (the C++ SDK); not host calls of the ABI.
    linker.func_wrap(
        "env",
        "emscripten_notify_memory_growth",
        |_: C<'_>, _: i32| {},
    )?;
    linker.func_wrap("env", "pthread_equal", |_: C<'_>, a: i32, b: i32| -> i32 {
        (a == b) as i32
    })?;
    Ok(())
}

/// `(level, ptr, len)`: logs under target `wasm`; an error-level message is kept as the
/// plugin's last error (a panic's message, before a trap).
fn log(c: &mut C<'_>, level: i32, ptr: i32, len: i32) -> Answer {
    let level = LogLevel::from_i32(level).ok_or(Status::BadArgument)?;
    let msg = String::from_utf8_lossy(memory(c)?.read(ptr, len)?).into_owned();
    if level >= LogLevel::Error {
        c.data_mut().last_error = Some(msg.chars().take(300).collect());
    }
    let plugin = &c.data().plugin_label;
    match level {
        LogLevel::Trace => tracing::trace!(target: "wasm", plugin = %plugin, "{msg}"),
        LogLevel::Debug => tracing::debug!(target: "wasm", plugin = %plugin, "{msg}"),
        LogLevel::Info => tracing::info!(target: "wasm", plugin = %plugin, "{msg}"),
        LogLevel::Warn => tracing::warn!(target: "wasm", plugin = %plugin, "{msg}"),
        _ => tracing::error!(target: "wasm", plugin = %plugin, "{msg}"),
    }
    Ok(())
}

/// `(ret_level)`: the most verbose level logged.
fn get_log_level(c: &mut C<'_>, ret: i32) -> Answer {
    let level = match tracing::level_filters::LevelFilter::current().into_level() {
        Some(tracing::Level::TRACE) => 0,
        Some(tracing::Level::DEBUG) => 1,
        Some(tracing::Level::INFO) => 2,
        Some(tracing::Level::WARN) => 3,
        Some(tracing::Level::ERROR) => 4,
        None => 5,
    };
    memory(c)?.write_u32(ret, level)?;
    Ok(())
}

/// `(ret_u64)`: wall-clock time in nanoseconds since the Unix epoch.
fn get_current_time(c: &mut C<'_>, ret: i32) -> Answer {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    memory(c)?.write_u64(ret, now)?;
    Ok(())
}

/// `(period_ms)`: `proxy_on_tick` on the root context every period; 0 stops it.
fn set_tick_period(c: &mut C<'_>, period: i32) -> Answer {
    let state = c.data_mut();
    let root = state.root_of_effective();
    let period = (period != 0).then(|| Duration::from_millis(period as u32 as u64));
    state.effects.push(Effect::Tick { root, period });
    Ok(())
}

/// `()`: no context of ours waits for `proxy_done` (contexts finish when the stream does), so
/// `NOT_FOUND`.
fn done(_: &mut C<'_>) -> Answer {
    Err(Status::NotFound.into())
}

/// `(context_id)`: the context later host calls act on.
fn set_effective_context(c: &mut C<'_>, context: i32) -> Answer {
    let state = c.data_mut();
    if !state.contexts.contains_key(&(context as u32)) {
        return Err(Status::BadArgument.into());
    }
    state.effective = context as u32;
    Ok(())
}

/// `(stream_type)`: resumes the request or response.
fn continue_stream(c: &mut C<'_>, t: i32) -> Answer {
    let stream = c.data().stream().cloned().ok_or(Status::BadArgument)?;
    match t {
        stream_type::HTTP_REQUEST => stream.request_resume.set(true),
        stream_type::HTTP_RESPONSE => stream.response_resume.set(true),
        _ => return Err(Status::BadArgument.into()),
    }
    stream.wake();
    Ok(())
}

/// `(stream_type)`: closes the stream.
fn close_stream(c: &mut C<'_>, t: i32) -> Answer {
    let stream = c.data().stream().cloned().ok_or(Status::BadArgument)?;
    if !matches!(t, stream_type::HTTP_REQUEST | stream_type::HTTP_RESPONSE) {
        return Err(Status::BadArgument.into());
    }
    stream.closed.set(true);
    stream.wake();
    Ok(())
}

/// `(status, details_ptr, details_len, body_ptr, body_len, headers_ptr, headers_len,
/// grpc_status)`: answers the stream from here (a grpc_status outside 0..=16 means none).
#[allow(clippy::too_many_arguments)] // the ABI's
fn send_local_response(
    c: &mut C<'_>,
    status: i32,
    dp: i32,
    dl: i32,
    bp: i32,
    bl: i32,
    hp: i32,
    hl: i32,
    grpc: i32,
) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    let (details, body, headers) = (mem.read(dp, dl)?, mem.read(bp, bl)?, mem.read(hp, hl)?);
    let headers = pairs::deserialize(headers).ok_or(Status::BadArgument)?;
    if !(100..=599).contains(&status) {
        return Err(Status::BadArgument.into());
    }
    let stream = state.stream().cloned().ok_or(Status::BadArgument)?;
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
    Ok(())
}
