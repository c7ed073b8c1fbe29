//! The callbacks the host calls, routed to the plugin and its per-request filters.

use std::cell::{Cell, RefCell};

// Context ids are small sequential integers looked up on every callback: FxHash, not SipHash.
use rustc_hash::FxHashMap as HashMap;

use crate::abi;
use crate::host::{Level, log};
use crate::http::{Body, Request, Response, read_callout_response};
use crate::{Action, Config, HttpFilter, Plugin};

type Factory = fn() -> Box<dyn Plugin>;
/// A stream context's root, and its filter (taken out while a callback runs).
type Stream = (u32, Option<Box<dyn HttpFilter>>);

thread_local! {
    static FACTORY: Cell<Option<Factory>> = const { Cell::new(None) };
    static ROOTS: RefCell<HashMap<u32, Box<dyn Plugin>>> = RefCell::default();
    /// Per stream context: its root and its filter (taken out while a callback runs).
    static STREAMS: RefCell<HashMap<u32, Stream>> = RefCell::default();
    /// Callout token -> the stream context that made it.
    static CALLOUTS: RefCell<HashMap<u32, u32>> = RefCell::default();
    static CURRENT: Cell<u32> = const { Cell::new(0) };
    static REPLIED: Cell<bool> = const { Cell::new(false) };
}

/// Registers the plugin (the `plugin!` macro calls it from `_initialize`).
pub fn register(factory: Factory) {
    FACTORY.with(|f| f.set(Some(factory)));
}

pub(crate) fn mark_replied() {
    REPLIED.with(|r| r.set(true));
}

pub(crate) fn track_callout(token: u32) {
    let ctx = CURRENT.with(Cell::get);
    CALLOUTS.with(|c| c.borrow_mut().insert(token, ctx));
}

const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

/// Runs a filter callback: the filter is taken out of the map meanwhile, so host calls it
/// makes may touch the map. An error answers the request with 500.
fn with_filter(ctx: u32, f: impl FnOnce(&mut dyn HttpFilter) -> crate::FilterResult) -> u32 {
    let Some(mut filter) =
        STREAMS.with(|s| s.borrow_mut().get_mut(&ctx).and_then(|(_, f)| f.take()))
    else {
        return CONTINUE;
    };
    CURRENT.with(|c| c.set(ctx));
    REPLIED.with(|r| r.set(false));
    let result = f(filter.as_mut());
    STREAMS.with(|s| {
        if let Some((_, slot)) = s.borrow_mut().get_mut(&ctx) {
            *slot = Some(filter);
        }
    });
    if REPLIED.with(Cell::get) {
        return PAUSE;
    }
    match result {
        Ok(Action::Continue) => CONTINUE,
        Ok(Action::Pause) => PAUSE,
        Err(e) => {
            log(Level::Error, &format!("filter error: {e}"));
            let _ = Request(()).respond(500, &[], format!("filter error: {e}\n").as_bytes());
            PAUSE
        }
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buf: Vec<u8> = Vec::with_capacity(size);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(context: u32, root: u32) {
    if root == 0 {
        if let Some(factory) = FACTORY.with(Cell::get) {
            ROOTS.with(|r| r.borrow_mut().insert(context, factory()));
        }
        return;
    }
    let filter = ROOTS.with(|r| r.borrow_mut().get_mut(&root).map(|p| p.new_http()));
    if let Some(filter) = filter {
        STREAMS.with(|s| s.borrow_mut().insert(context, (root, Some(filter))));
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> bool {
    true
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(root: u32, size: usize) -> bool {
    let config = Config {
        bytes: read_buffer(abi::BUFFER_PLUGIN_CONFIGURATION, size),
    };
    let Some(mut plugin) = ROOTS.with(|r| r.borrow_mut().remove(&root)) else {
        return false;
    };
    let result = plugin.configure(&config);
    ROOTS.with(|r| r.borrow_mut().insert(root, plugin));
    match result {
        Ok(()) => true,
        Err(e) => {
            log(Level::Error, &format!("configuration refused: {e}"));
            false
        }
    }
}

fn read_buffer(buffer: u32, size: usize) -> Vec<u8> {
    let mut ptr = std::ptr::null_mut();
    let mut len = 0;
    // SAFETY: out-params are ours.
    match unsafe { abi::proxy_get_buffer_bytes(buffer, 0, size, &mut ptr, &mut len) } {
        0 => crate::host::take(ptr, len),
        _ => Vec::new(),
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(root: u32) {
    let Some(mut plugin) = ROOTS.with(|r| r.borrow_mut().remove(&root)) else {
        return;
    };
    plugin.on_tick();
    ROOTS.with(|r| r.borrow_mut().insert(root, plugin));
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(ctx: u32, _headers: usize, end: bool) -> u32 {
    with_filter(ctx, |f| f.on_request_headers(&mut Request(()), end))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_body(ctx: u32, size: usize, end: bool) -> u32 {
    with_filter(ctx, |f| {
        f.on_request_body(
            &mut Body {
                buffer: abi::BUFFER_REQUEST_BODY,
                size,
            },
            end,
        )
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_trailers(_ctx: u32, _trailers: usize) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_headers(ctx: u32, _headers: usize, end: bool) -> u32 {
    with_filter(ctx, |f| f.on_response_headers(&mut Response(()), end))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_body(ctx: u32, size: usize, end: bool) -> u32 {
    with_filter(ctx, |f| {
        f.on_response_body(
            &mut Body {
                buffer: abi::BUFFER_RESPONSE_BODY,
                size,
            },
            end,
        )
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_trailers(_ctx: u32, _trailers: usize) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_http_call_response(
    _root: u32,
    token: u32,
    headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    let Some(ctx) = CALLOUTS.with(|c| c.borrow_mut().remove(&token)) else {
        return;
    };
    // SAFETY: plain value; the context is ours.
    if unsafe { abi::proxy_set_effective_context(ctx) } != 0 {
        return;
    }
    let response = if headers == 0 {
        None
    } else {
        read_callout_response(body_size).ok()
    };
    if with_filter(ctx, |f| f.on_callout_response(&mut Request(()), response)) == CONTINUE {
        // SAFETY: plain value.
        unsafe { abi::proxy_continue_stream(abi::STREAM_REQUEST) };
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_done(_ctx: u32) -> bool {
    true
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_log(ctx: u32) {
    let Some(mut filter) =
        STREAMS.with(|s| s.borrow_mut().get_mut(&ctx).and_then(|(_, f)| f.take()))
    else {
        return;
    };
    filter.on_log();
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_delete(ctx: u32) {
    STREAMS.with(|s| s.borrow_mut().remove(&ctx));
    ROOTS.with(|r| r.borrow_mut().remove(&ctx));
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_queue_ready(_root: u32, _queue: u32) {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_foreign_function(_root: u32, _function: u32, _size: usize) {}
