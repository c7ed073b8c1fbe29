//! Foreign functions: `proxy_call_foreign_function` (see `crate::foreign`).

use wasmtime::Linker;

use super::guest::{C, R, count, give, parts, slice, st};
use crate::abi::Status;
use crate::state::HostState;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wrap!(linker, "proxy_call_foreign_function", |mut c: C<'_>,
                                                  np: i32,
                                                  nl: i32,
                                                  ap: i32,
                                                  al: i32,
                                                  ret_ptr: i32,
                                                  ret_len: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(name), Some(args)) = (slice(mem, np, nl), slice(mem, ap, al)) else {
            return st(Status::InvalidMemoryAccess);
        };
        let name = String::from_utf8_lossy(name).into_owned();
        match crate::foreign::call(&name, args, state.stream().map(|s| &**s), &*state.embedder) {
            Ok(result) => give(&mut c, &result, ret_ptr, ret_len),
            Err(s) => st(s),
        }
    });

    Ok(())
}
