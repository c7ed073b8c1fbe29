//! Guest memory, the one place a guest pointer is checked: arguments read, out-parameters
//! written, and bytes handed to the guest through its allocator. A pointer or length outside
//! linear memory is `INVALID_MEMORY_ACCESS` and a module without memory `INTERNAL_FAILURE`,
//! never a host panic; both come back as `Status` errors, for `?` in a host function.

use super::call::{Answer, C, Stop};
use crate::abi::Status;
use crate::state::HostState;

/// The guest's linear memory during a host call. Pointers and lengths are the guest's `u32`s,
/// passed as wasm `i32`s.
pub(super) struct Memory<'a>(&'a mut [u8]);

impl Memory<'_> {
    /// The `len` bytes at `ptr`, borrowed from guest memory (no copy).
    pub(super) fn read(&self, ptr: i32, len: i32) -> Result<&[u8], Status> {
        let start = ptr as u32 as usize;
        start
            .checked_add(len as u32 as usize)
            .and_then(|end| self.0.get(start..end))
            .ok_or(Status::InvalidMemoryAccess)
    }

    /// Copies `data` to `ptr`.
    pub(super) fn write(&mut self, ptr: i32, data: &[u8]) -> Result<(), Status> {
        let start = ptr as u32 as usize;
        let dst = start
            .checked_add(data.len())
            .and_then(|end| self.0.get_mut(start..end))
            .ok_or(Status::InvalidMemoryAccess)?;
        dst.copy_from_slice(data);
        Ok(())
    }

    /// Writes a `u32` out-parameter (little-endian, as wasm is).
    pub(super) fn write_u32(&mut self, ptr: i32, v: u32) -> Result<(), Status> {
        self.write(ptr, &v.to_le_bytes())
    }

    /// Writes a `u64` out-parameter.
    pub(super) fn write_u64(&mut self, ptr: i32, v: u64) -> Result<(), Status> {
        self.write(ptr, &v.to_le_bytes())
    }
}

/// Bytes from guest memory as text: borrowed when they are UTF-8 (checked by `from_utf8`,
/// several times quicker than the lossy walk), else with U+FFFD for what is not.
pub(super) fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    std::str::from_utf8(bytes)
        .map(std::borrow::Cow::Borrowed)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes))
}

/// Guest memory and host state together.
pub(super) fn memory_and_state<'a>(
    c: &'a mut C<'_>,
) -> Result<(Memory<'a>, &'a mut HostState), Status> {
    let memory = c.data().memory.ok_or(Status::InternalFailure)?;
    let (bytes, state) = memory.data_and_store_mut(c);
    Ok((Memory(bytes), state))
}

/// Guest memory alone.
pub(super) fn memory<'a>(c: &'a mut C<'_>) -> Result<Memory<'a>, Status> {
    memory_and_state(c).map(|(memory, _)| memory)
}

/// Copies `data` into memory the guest allocates, and writes its address and length to the
/// guest's out-parameters. Empty data is returned as (0, 0) without allocating. The guest's
/// allocator answering 0 is `INVALID_MEMORY_ACCESS`; its trapping, or there being none, traps.
pub(super) fn give(c: &mut C<'_>, data: &[u8], ret_ptr: i32, ret_len: i32) -> Answer {
    let mut ptr = 0i32;
    if !data.is_empty() {
        // Taken out for the call, not cloned: cloning a TypedFunc costs more than the call.
        let Some(alloc) = c.data_mut().alloc.take() else {
            return Err(Stop::Trap(wasmtime::Error::msg(
                "no guest allocator: the module exports neither malloc nor \
                 proxy_on_memory_allocate, or its allocator called back into the host",
            )));
        };
        let result = alloc.call(&mut *c, data.len() as i32);
        c.data_mut().alloc = Some(alloc);
        ptr = result?;

        if ptr == 0 {
            return Err(Status::InvalidMemoryAccess.into());
        }
    }
    let mut mem = memory(c)?;
    mem.write(ptr, data)?;
    mem.write_u32(ret_ptr, ptr as u32)?;
    mem.write_u32(ret_len, data.len() as u32)?;
    Ok(())
}
