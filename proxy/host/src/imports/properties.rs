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
    let path = std::str::from_utf8(mem.read(pp, pl)?).map_err(|_| Status::NotFound)?;
    let mut segments = [""; MAX_SEGMENTS];
    let n = split_path(path, &mut segments).ok_or(Status::NotFound)?;
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
    let path = std::str::from_utf8(path).map_err(|_| Status::BadArgument)?;
    let mut segments = [""; MAX_SEGMENTS];
    let n = split_path(path, &mut segments).ok_or(Status::BadArgument)?;
    match state.stream() {
        Some(stream) => answer(properties::set(&segments[..n], value, stream)),
        None => Ok(()),
    }
}

/// Paths deeper than this are refused (Envoy's attributes have at most four segments).
const MAX_SEGMENTS: usize = 16;

/// Splits a NUL-separated path on the stack (a property is read or set on most requests):
/// the number of segments, `None` past [`MAX_SEGMENTS`].
fn split_path<'a>(path: &'a str, segments: &mut [&'a str; MAX_SEGMENTS]) -> Option<usize> {
    let mut n = 0;
    for segment in path.split('\0') {
        *segments.get_mut(n)? = segment;
        n += 1;
    }
    Some(n)
}
