//! Properties: `proxy_get_property` and `proxy_set_property`, by a path of NUL-separated
//! segments (`crate::properties` knows the paths).

use wasmtime::Linker;

use super::call::{Answer, C, answer, host_fn};
use super::guest::{give, memory_and_state};
use crate::abi::Status;
use crate::properties::{self, PluginFacts};
use crate::state::HostState;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn(linker, "proxy_get_property", get_property)?;
    host_fn(linker, "proxy_set_property", set_property)?;
    Ok(())
}

/// `(path_ptr, path_len, ret_ptr, ret_len)`.
fn get_property(c: &mut C<'_>, pp: i32, pl: i32, ret_ptr: i32, ret_len: i32) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    let path = mem.read(pp, pl)?;
    // Paths are short: split on the stack rather than allocate for every read.
    let path = std::str::from_utf8(path).map_err(|_| Status::NotFound)?;
    let mut segments = [""; 16];
    let mut n = 0;
    for segment in path.split('\0') {
        if n == segments.len() {
            return Err(Status::NotFound.into());
        }
        segments[n] = segment;
        n += 1;
    }
    let plugin = state.plugin();
    let facts = PluginFacts {
        name: plugin.map_or("", |p| p.name.as_str()),
        root_id: plugin.map_or("", |p| p.root_id.as_str()),
        vm_id: &state.vm_id,
    };
    let value = properties::get(&segments[..n], &facts, state.stream().map(|s| &**s))?;
    give(c, &value, ret_ptr, ret_len)
}

/// `(path_ptr, path_len, value_ptr, value_len)`: outside a stream context, `OK` and nothing
/// set.
fn set_property(c: &mut C<'_>, pp: i32, pl: i32, vp: i32, vl: i32) -> Answer {
    let (mem, state) = memory_and_state(c)?;
    let (path, value) = (mem.read(pp, pl)?, mem.read(vp, vl)?);
    let path = String::from_utf8_lossy(path);
    let segments: Vec<&str> = path.split('\0').collect();
    match state.stream() {
        Some(stream) => answer(properties::set(&segments, value, stream)),
        None => Ok(()),
    }
}
