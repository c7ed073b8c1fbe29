//! Metrics: counters, gauges and histograms.

use wasmtime::Linker;

use super::guest::{C, OK, R, count, parts, put_u32, put_u64, slice, st};
use crate::abi::{MetricType, Status};
use crate::state::HostState;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wrap!(linker, "proxy_define_metric", |mut c: C<'_>,
                                          t: i32,
                                          np: i32,
                                          nl: i32,
                                          ret: i32|
     -> R {
        count(&mut c);
        let Some(kind) = MetricType::from_i32(t) else {
            return st(Status::BadArgument);
        };
        let Some((mem, state)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        let Some(name) = slice(mem, np, nl) else {
            return st(Status::InvalidMemoryAccess);
        };
        let (id, metric) = state
            .shared
            .metrics
            .define(kind, &String::from_utf8_lossy(name));
        state.metrics.insert(id, metric);
        if put_u32(mem, ret, id) {
            Ok(OK)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    });
    wrap!(linker, "proxy_record_metric", |mut c: C<'_>,
                                          id: i32,
                                          value: i64|
     -> R {
        count(&mut c);
        match metric(c.data_mut(), id) {
            Some(m) => {
                m.record(value as u64);
                Ok(OK)
            }
            None => st(Status::NotFound),
        }
    });
    wrap!(linker, "proxy_increment_metric", |mut c: C<'_>,
                                             id: i32,
                                             delta: i64|
     -> R {
        count(&mut c);
        match metric(c.data_mut(), id) {
            Some(m) => st(m.increment(delta)),
            None => st(Status::NotFound),
        }
    });
    wrap!(linker, "proxy_get_metric", |mut c: C<'_>,
                                       id: i32,
                                       ret: i32|
     -> R {
        count(&mut c);
        let Some(m) = metric(c.data_mut(), id) else {
            return st(Status::NotFound);
        };
        let value = m.value.load(std::sync::atomic::Ordering::Relaxed) as u64;
        let Some((mem, _)) = parts(&mut c) else {
            return st(Status::InternalFailure);
        };
        if put_u64(mem, ret, value) {
            Ok(OK)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    });
    Ok(())
}

fn metric(state: &mut HostState, id: i32) -> Option<std::sync::Arc<crate::shared::Metric>> {
    let id = id as u32;
    if let Some(m) = state.metrics.get(&id) {
        return Some(m.clone());
    }
    let m = state.shared.metrics.get(id)?;
    state.metrics.insert(id, m.clone());
    Some(m)
}
