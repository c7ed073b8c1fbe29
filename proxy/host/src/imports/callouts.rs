//! Callouts: HTTP and gRPC calls, and the status of their results.

use std::time::Duration;

use bytes::Bytes;
use wasmtime::Linker;

use super::guest::{C, OK, R, count, give, parts, put_u32, slice, st};
use crate::abi::Status;
use crate::callout::{CalloutRequest, GrpcRequest};
use crate::pairs;
use crate::state::{Effect, HostState};

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
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
    Ok(())
}
