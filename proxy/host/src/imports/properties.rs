//! Properties: `proxy_get_property` and `proxy_set_property`.

use wasmtime::Linker;

use super::guest::{C, OK, R, count, give, parts, slice, st};
use crate::abi::Status;
use crate::properties::{self, PluginFacts};
use crate::state::HostState;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wrap!(linker, "proxy_get_property", |mut c: C<'_>,
                                         pp: i32,
                                         pl: i32,
                                         ret_ptr: i32,
                                         ret_len: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let Some(path) = slice(mem, pp, pl) else {
            return st(Status::InvalidMemoryAccess);
        };
        // Paths are short: split on the stack rather than allocate for every read.
        let Ok(path) = std::str::from_utf8(path) else {
            return st(Status::NotFound);
        };
        let mut segments = [""; 16];
        let mut n = 0;
        for segment in path.split('\0') {
            if n == segments.len() {
                return st(Status::NotFound);
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
        match properties::get(&segments[..n], &facts, state.stream().map(|s| &**s)) {
            Ok(v) => give(&mut c, &v, ret_ptr, ret_len),
            Err(s) => st(s),
        }
    });
    wrap!(linker, "proxy_set_property", |mut c: C<'_>,
                                         pp: i32,
                                         pl: i32,
                                         vp: i32,
                                         vl: i32|
     -> R {
        count(&mut c);
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let (Some(path), Some(value)) = (slice(mem, pp, pl), slice(mem, vp, vl)) else {
            return st(Status::InvalidMemoryAccess);
        };
        let path = String::from_utf8_lossy(path);
        let segments: Vec<&str> = path.split('\0').collect();
        match state.stream() {
            Some(stream) => st(properties::set(&segments, value, stream)),
            None => Ok(OK),
        }
    });
    Ok(())
}
