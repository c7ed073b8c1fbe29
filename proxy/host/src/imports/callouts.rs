//! Callouts: HTTP and gRPC calls to a cluster, and the status of their results. A call is
//! recorded on the root context that makes it and left in `HostState::effects`, for the VM to
//! start once the guest returns.

use std::time::Duration;

use bytes::Bytes;
use wasmtime::Linker;

use super::call::{Answer, C, host_fn};
use super::guest::{give, memory, memory_and_state};
use crate::abi::Status;
use crate::callout::{CalloutRequest, GrpcRequest};
use crate::pairs;
use crate::state::{Effect, HostState};

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn(linker, "proxy_http_call", http_call)?;
    host_fn(linker, "proxy_grpc_call", grpc_call)?;
    host_fn(linker, "proxy_grpc_stream", grpc_stream)?;
    host_fn(linker, "proxy_grpc_send", grpc_send)?;
    host_fn(linker, "proxy_grpc_cancel", grpc_cancel)?;
    host_fn(linker, "proxy_grpc_close", grpc_cancel)?;
    host_fn(linker, "proxy_get_status", get_status)?;
    Ok(())
}

/// `(cluster_ptr, cluster_len, headers_ptr, headers_len, body_ptr, body_len, trailers_ptr,
/// trailers_len, timeout_ms, ret_token)`.
#[allow(clippy::too_many_arguments)] // the ABI's
fn http_call(
    c: &mut C<'_>,
    up: i32,
    ul: i32,
    hp: i32,
    hl: i32,
    bp: i32,
    bl: i32,
    tp: i32,
    tl: i32,
    timeout: i32,
    ret: i32,
) -> Answer {
    let (mut mem, state) = memory_and_state(c)?;
    let (cluster, headers, body, trailers) = (
        mem.read(up, ul)?,
        mem.read(hp, hl)?,
        mem.read(bp, bl)?,
        mem.read(tp, tl)?,
    );
    let (Some(headers), Some(trailers)) =
        (pairs::deserialize(headers), pairs::deserialize(trailers))
    else {
        return Err(Status::BadArgument.into());
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
        return Err(Status::BadArgument.into());
    }
    let token = state.next_token();
    let root = state.root_of_effective();
    state.callouts.insert(token, root);
    state.effects.push(Effect::HttpCall { token, request });
    mem.write_u32(ret, token)?;
    Ok(())
}

/// `(cluster_ptr, cluster_len, service_ptr, service_len, method_ptr, method_len,
/// metadata_ptr, metadata_len, message_ptr, message_len, timeout_ms, ret_token)`.
#[allow(clippy::too_many_arguments)] // the ABI's
fn grpc_call(
    c: &mut C<'_>,
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
    ret: i32,
) -> Answer {
    let (mut mem, state) = memory_and_state(c)?;
    let (cluster, service, method, md, msg) = (
        mem.read(up, ul)?,
        mem.read(sp, sl)?,
        mem.read(mp, ml)?,
        mem.read(mdp, mdl)?,
        mem.read(msgp, msgl)?,
    );
    let cluster = String::from_utf8_lossy(cluster).into_owned();
    if !state.embedder.cluster_exists(&cluster) {
        return Err(Status::ParseFailure.into());
    }
    let md = pairs::deserialize(md).ok_or(Status::ParseFailure)?;
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
    mem.write_u32(ret, token)?;
    Ok(())
}

/// Streaming gRPC callouts are not supported: the SDKs treat `INTERNAL_FAILURE` as an error.
#[allow(clippy::too_many_arguments)] // the ABI's
fn grpc_stream(
    _: &mut C<'_>,
    _: i32,
    _: i32,
    _: i32,
    _: i32,
    _: i32,
    _: i32,
    _: i32,
    _: i32,
    _: i32,
) -> Answer {
    Err(Status::InternalFailure.into())
}

/// `(token, message_ptr, message_len, end_stream)`: there are no streams to send on.
fn grpc_send(_: &mut C<'_>, _token: i32, _: i32, _: i32, _: i32) -> Answer {
    Err(Status::NotFound.into())
}

/// `(token)`, for `proxy_grpc_cancel` and `proxy_grpc_close`: forgets the call, so its answer
/// is dropped.
fn grpc_cancel(c: &mut C<'_>, token: i32) -> Answer {
    match c.data_mut().callouts.remove(&(token as u32)) {
        Some(_) => Ok(()),
        None => Err(Status::NotFound.into()),
    }
}

/// `(ret_code, ret_ptr, ret_len)`: the code and message of the last callout result.
fn get_status(c: &mut C<'_>, ret_code: i32, ret_ptr: i32, ret_len: i32) -> Answer {
    let (code, msg) = c.data().status.clone();
    memory(c)?.write_u32(ret_code, code)?;
    give(c, &msg, ret_ptr, ret_len)
}
