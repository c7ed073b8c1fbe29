//! Guest memory: reading arguments, writing out-parameters, and handing bytes to the guest
//! through its allocator.

use wasmtime::Caller;

use crate::abi::Status;
use crate::state::HostState;

pub(super) type C<'a> = Caller<'a, HostState>;
pub(super) type R = wasmtime::Result<i32>;

pub(super) const OK: i32 = Status::Ok as i32;

pub(super) fn st(s: Status) -> R {
    Ok(s as i32)
}

/// Guest memory and host state together.
pub(super) fn parts<'a>(c: &'a mut C<'_>) -> Option<(&'a mut [u8], &'a mut HostState)> {
    let memory = c.data().memory?;
    Some(memory.data_and_store_mut(c))
}

pub(super) fn slice(mem: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let start = ptr as u32 as usize;
    mem.get(start..start.checked_add(len as u32 as usize)?)
}

pub(super) fn put_u32(mem: &mut [u8], ptr: i32, v: u32) -> bool {
    let at = ptr as u32 as usize;
    match mem.get_mut(at..at.saturating_add(4)) {
        Some(dst) => {
            dst.copy_from_slice(&v.to_le_bytes());
            true
        }
        None => false,
    }
}

pub(super) fn put_u64(mem: &mut [u8], ptr: i32, v: u64) -> bool {
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
pub(super) fn arg(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let (mem, _) = parts(c).ok_or(Status::InternalFailure)?;
    slice(mem, ptr, len)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Copies `data` into memory the guest allocates, and writes its address and length to the
/// guest's out-parameters. Empty data is returned as (0, 0) without allocating.
pub(super) fn give(c: &mut C<'_>, data: &[u8], ret_ptr: i32, ret_len: i32) -> R {
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

pub(super) fn count(c: &mut C<'_>) {
    c.data_mut().host_calls += 1;
}
