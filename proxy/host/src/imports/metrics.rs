//! Metrics: counters, gauges and histograms, defined process-wide by name
//! (`crate::shared::Metrics`) and cached per VM by id.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasmtime::Linker;

use super::call::{Answer, C, answer, host_fn};
use super::guest::{memory, memory_and_state};
use crate::abi::{MetricType, Status};
use crate::shared::Metric;
use crate::state::HostState;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn(linker, "proxy_define_metric", define_metric)?;
    host_fn(linker, "proxy_record_metric", record_metric)?;
    host_fn(linker, "proxy_increment_metric", increment_metric)?;
    host_fn(linker, "proxy_get_metric", get_metric)?;
    Ok(())
}

/// `(metric_type, name_ptr, name_len, ret_id)`: a name already defined keeps its id.
fn define_metric(c: &mut C<'_>, t: i32, np: i32, nl: i32, ret: i32) -> Answer {
    let kind = MetricType::from_i32(t).ok_or(Status::BadArgument)?;
    let (mut mem, state) = memory_and_state(c)?;
    let name = mem.read(np, nl)?;
    let (id, metric) = state
        .shared
        .metrics
        .define(kind, &String::from_utf8_lossy(name));
    state.metrics.insert(id, metric);
    mem.write_u32(ret, id)?;
    Ok(())
}

/// `(metric_id, value: i64)`.
fn record_metric(c: &mut C<'_>, id: i32, value: i64) -> Answer {
    let m = metric(c.data_mut(), id).ok_or(Status::NotFound)?;
    m.record(value as u64);
    Ok(())
}

/// `(metric_id, delta: i64)`: `BAD_ARGUMENT` for a counter going down.
fn increment_metric(c: &mut C<'_>, id: i32, delta: i64) -> Answer {
    let m = metric(c.data_mut(), id).ok_or(Status::NotFound)?;
    answer(m.increment(delta))
}

/// `(metric_id, ret_u64)`.
fn get_metric(c: &mut C<'_>, id: i32, ret: i32) -> Answer {
    let m = metric(c.data_mut(), id).ok_or(Status::NotFound)?;
    let value = m.value.load(Ordering::Relaxed) as u64;
    memory(c)?.write_u64(ret, value)?;
    Ok(())
}

fn metric(state: &mut HostState, id: i32) -> Option<Arc<Metric>> {
    let id = id as u32;
    if let Some(m) = state.metrics.get(&id) {
        return Some(m.clone());
    }
    let m = state.shared.metrics.get(id)?;
    state.metrics.insert(id, m.clone());
    Some(m)
}
