//! Shared data (a key-value store per VM id, with compare-and-swap) and shared queues, both
//! process-wide (`crate::shared`).

use bytes::Bytes;
use wasmtime::Linker;

use super::call::{Answer, C, answer, host_fn};
use super::guest::{give, memory, memory_and_state, text};
use crate::abi::Status;
use crate::state::HostState;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn(linker, "proxy_set_shared_data", set_shared_data)?;
    host_fn(linker, "proxy_get_shared_data", get_shared_data)?;
    host_fn(linker, "proxy_register_shared_queue", register_shared_queue)?;
    host_fn(linker, "proxy_resolve_shared_queue", resolve_shared_queue)?;
    host_fn(linker, "proxy_enqueue_shared_queue", enqueue_shared_queue)?;
    host_fn(linker, "proxy_dequeue_shared_queue", dequeue_shared_queue)?;
    Ok(())
}

/// `(key_ptr, key_len, value_ptr, value_len, cas)`: `CAS_MISMATCH` if `cas` is not 0 and
/// not the value's current one.
fn set_shared_data(c: &mut C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    let (key, value) = (mem.read(kp, kl)?, mem.read(vp, vl)?);
    let key = text(key);
    answer(state.shared.set_data(
        &state.vm_id,
        &key,
        Bytes::copy_from_slice(value),
        cas as u32,
    ))
}

/// `(key_ptr, key_len, ret_ptr, ret_len, ret_cas)`.
fn get_shared_data(
    c: &mut C<'_>,
    kp: i32,
    kl: i32,
    ret_ptr: i32,
    ret_len: i32,
    ret_cas: i32,
) -> Answer {
    // Looked up straight from guest memory: no copy of the key.
    let (mem, state) = memory_and_state(c)?;
    let key = mem.read(kp, kl)?;
    let (value, cas) = state
        .shared
        .get_data(&state.vm_id, &text(key))
        .ok_or(Status::NotFound)?;
    give(c, &value, ret_ptr, ret_len)?;
    memory(c)?.write_u32(ret_cas, cas)?;
    Ok(())
}

/// `(name_ptr, name_len, ret_id)`: a queue of this VM id, opened if it exists; its
/// `proxy_on_queue_ready` goes to the registering root context.
fn register_shared_queue(c: &mut C<'_>, np: i32, nl: i32, ret: i32) -> Answer {
    let (mut mem, state) = memory_and_state(c)?;
    let name = String::from_utf8_lossy(mem.read(np, nl)?);
    let root = state.root_of_effective();
    let id = state
        .shared
        .register_queue(&state.vm_id, &name, state.queue_notify.clone(), root);
    mem.write_u32(ret, id)?;
    Ok(())
}

/// `(vm_id_ptr, vm_id_len, name_ptr, name_len, ret_id)`: an empty VM id is this VM's.
fn resolve_shared_queue(c: &mut C<'_>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32) -> Answer {
    let (mut mem, state) = memory_and_state(c)?;
    let (vm, name) = (mem.read(vp, vl)?, mem.read(np, nl)?);
    let vm = if vm.is_empty() {
        state.vm_id.clone()
    } else {
        String::from_utf8_lossy(vm).into_owned()
    };
    let id = state
        .shared
        .resolve_queue(&vm, &String::from_utf8_lossy(name))
        .ok_or(Status::NotFound)?;
    mem.write_u32(ret, id)?;
    Ok(())
}

/// `(queue_id, value_ptr, value_len)`.
fn enqueue_shared_queue(c: &mut C<'_>, id: i32, vp: i32, vl: i32) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    let value = mem.read(vp, vl)?;
    answer(
        state
            .shared
            .enqueue(id as u32, Bytes::copy_from_slice(value)),
    )
}

/// `(queue_id, ret_ptr, ret_len)`: `EMPTY` when there is nothing to take.
fn dequeue_shared_queue(c: &mut C<'_>, id: i32, ret_ptr: i32, ret_len: i32) -> Answer {
    let value = c.data().shared.dequeue(id as u32)?;
    give(c, &value, ret_ptr, ret_len)
}
