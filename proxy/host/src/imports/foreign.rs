//! Foreign functions: `proxy_call_foreign_function`, the host's extensions by name
//! (`crate::foreign` runs them).

use wasmtime::Linker;

use super::call::{Answer, C, host_fn};
use super::guest::{give, memory_and_state};
use crate::abi::Status;
use crate::state::HostState;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn(linker, "proxy_call_foreign_function", call_foreign_function)?;
    Ok(())
}

/// `(name_ptr, name_len, args_ptr, args_len, ret_ptr, ret_len)`.
fn call_foreign_function(
    c: &mut C<'_>,
    np: i32,
    nl: i32,
    ap: i32,
    al: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    let (name, args) = (mem.read(np, nl)?, mem.read(ap, al)?);
    // No function has a name that is not UTF-8.
    let name = std::str::from_utf8(name).map_err(|_| Status::NotFound)?;
    let result = crate::foreign::call(name, args, state.stream().map(|s| &**s), &*state.embedder)?;
    give(c, &result, ret_ptr, ret_len)
}
