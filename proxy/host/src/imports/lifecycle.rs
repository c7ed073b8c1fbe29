//! Logging, time, ticks, contexts, and the stream's course: continue, close, local responses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use wasmtime::Linker;

use super::guest::{C, OK, R, arg, count, parts, put_u32, put_u64, slice, st};
use crate::abi::{Status, stream as stream_type};
use crate::pairs;
use crate::state::{Effect, HostState};
use crate::stream::LocalResponse;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
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
