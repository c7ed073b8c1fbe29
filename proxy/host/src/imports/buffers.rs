//! Buffers: request and response bodies (in their body callbacks), callout response bodies
//! and gRPC messages, the VM and plugin configurations.

use wasmtime::Linker;

use super::call::{Answer, C, answer, host_fn};
use super::guest::{give, memory_and_state};
use crate::abi::{Status, buffer};
use crate::state::HostState;
use crate::stream::BodyPhase;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn(linker, "proxy_get_buffer_bytes", get_buffer_bytes)?;
    host_fn(linker, "proxy_set_buffer_bytes", set_buffer_bytes)?;
    host_fn(linker, "proxy_get_buffer_status", get_buffer_status)?;
    // ABI 0.1.0, for modules built with old SDKs.
    host_fn(linker, "proxy_get_configuration", get_configuration)?;
    Ok(())
}

/// `(buffer_type, start, max_size, ret_ptr, ret_len)`: at most `max_size` bytes from `start`.
fn get_buffer_bytes(
    c: &mut C<'_>,
    t: i32,
    start: i32,
    max: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Answer {
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    let data = with_buffer(c.data(), t, |bytes, _| {
        let begin = start.min(bytes.len());
        let end = begin.saturating_add(max).min(bytes.len());
        bytes[begin..end].to_vec()
    })?;
    give(c, &data, ret_ptr, ret_len)
}

/// `(buffer_type, start, size, ptr, len)`: replaces `size` bytes at `start`.
fn set_buffer_bytes(c: &mut C<'_>, t: i32, start: i32, size: i32, ptr: i32, len: i32) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    let bytes = mem.read(ptr, len)?;
    answer(set_buffer(state, t, start as u32, size as u32, bytes))
}

/// `(buffer_type, ret_len, ret_flags)`: the length, and 1 in the flags at the end of stream.
fn get_buffer_status(c: &mut C<'_>, t: i32, ret_len: i32, ret_flags: i32) -> Answer {
    let (mut mem, state) = memory_and_state(c)?;
    let (len, flags) = with_buffer(state, t, |bytes, end| (bytes.len() as u32, end as u32))?;
    mem.write_u32(ret_len, len)?;
    mem.write_u32(ret_flags, flags)?;
    Ok(())
}

/// `(ret_ptr, ret_len)`: the configuration `proxy_on_vm_start` or `proxy_on_configure` is
/// given (ABI 0.1.0).
fn get_configuration(c: &mut C<'_>, ret_ptr: i32, ret_len: i32) -> Answer {
    let config = c
        .data()
        .config_buffer
        .as_ref()
        .map(|(_, b)| b.clone())
        .unwrap_or_default();
    give(c, &config, ret_ptr, ret_len)
}

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
