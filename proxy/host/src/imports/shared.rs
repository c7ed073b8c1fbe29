//! Shared data and shared queues.

use bytes::Bytes;
use wasmtime::Linker;

use super::guest::{C, OK, R, count, give, parts, put_u32, slice, st};
use crate::abi::Status;
use crate::state::HostState;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
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
    Ok(())
}
