//! The `env` functions against the ABI's signatures, and what a guest gets for bad pointers.

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{Linker, Module};

use super::define;
use crate::abi::AbiVersion;
use crate::abi::ENV_FUNCTIONS;
use crate::state::HostState;
use crate::{FailStrategy, Host, NoCallouts, PluginModule, PluginSpec, VmLimits, WorkerVms};

/// Every `env` function with its parameters and result, as the ABI has them (0.2.1, with
/// the 0.1.0 and emscripten names).
const SIGNATURES: &[(&str, &str, &str)] = &[
    ("proxy_log", "i32 i32 i32", "i32"),
    ("proxy_get_log_level", "i32", "i32"),
    ("proxy_get_current_time_nanoseconds", "i32", "i32"),
    ("proxy_set_tick_period_milliseconds", "i32", "i32"),
    ("proxy_done", "", "i32"),
    ("proxy_set_effective_context", "i32", "i32"),
    ("proxy_get_buffer_bytes", "i32 i32 i32 i32 i32", "i32"),
    ("proxy_set_buffer_bytes", "i32 i32 i32 i32 i32", "i32"),
    ("proxy_get_buffer_status", "i32 i32 i32", "i32"),
    ("proxy_get_header_map_size", "i32 i32", "i32"),
    ("proxy_get_header_map_pairs", "i32 i32 i32", "i32"),
    ("proxy_set_header_map_pairs", "i32 i32 i32", "i32"),
    ("proxy_get_header_map_value", "i32 i32 i32 i32 i32", "i32"),
    ("proxy_add_header_map_value", "i32 i32 i32 i32 i32", "i32"),
    (
        "proxy_replace_header_map_value",
        "i32 i32 i32 i32 i32",
        "i32",
    ),
    ("proxy_remove_header_map_value", "i32 i32 i32", "i32"),
    ("proxy_continue_stream", "i32", "i32"),
    ("proxy_close_stream", "i32", "i32"),
    ("proxy_get_status", "i32 i32 i32", "i32"),
    (
        "proxy_send_local_response",
        "i32 i32 i32 i32 i32 i32 i32 i32",
        "i32",
    ),
    (
        "proxy_http_call",
        "i32 i32 i32 i32 i32 i32 i32 i32 i32 i32",
        "i32",
    ),
    (
        "proxy_grpc_call",
        "i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32",
        "i32",
    ),
    (
        "proxy_grpc_stream",
        "i32 i32 i32 i32 i32 i32 i32 i32 i32",
        "i32",
    ),
    ("proxy_grpc_send", "i32 i32 i32 i32", "i32"),
    ("proxy_grpc_cancel", "i32", "i32"),
    ("proxy_grpc_close", "i32", "i32"),
    ("proxy_set_shared_data", "i32 i32 i32 i32 i32", "i32"),
    ("proxy_get_shared_data", "i32 i32 i32 i32 i32", "i32"),
    ("proxy_register_shared_queue", "i32 i32 i32", "i32"),
    ("proxy_resolve_shared_queue", "i32 i32 i32 i32 i32", "i32"),
    ("proxy_enqueue_shared_queue", "i32 i32 i32", "i32"),
    ("proxy_dequeue_shared_queue", "i32 i32 i32", "i32"),
    ("proxy_define_metric", "i32 i32 i32 i32", "i32"),
    ("proxy_record_metric", "i32 i64", "i32"),
    ("proxy_increment_metric", "i32 i64", "i32"),
    ("proxy_get_metric", "i32 i32", "i32"),
    ("proxy_get_property", "i32 i32 i32 i32", "i32"),
    ("proxy_set_property", "i32 i32 i32 i32", "i32"),
    (
        "proxy_call_foreign_function",
        "i32 i32 i32 i32 i32 i32",
        "i32",
    ),
    ("proxy_get_configuration", "i32 i32", "i32"),
    ("proxy_continue_request", "", "i32"),
    ("proxy_continue_response", "", "i32"),
    ("proxy_clear_route_cache", "", "i32"),
    ("emscripten_notify_memory_growth", "i32", ""),
    ("pthread_equal", "i32 i32", "i32"),
];

/// WAT imports of every `env` function, as `$name`.
fn imports() -> String {
    let mut wat = String::new();
    for (name, params, result) in SIGNATURES {
        let result = if result.is_empty() {
            String::new()
        } else {
            format!(" (result {result})")
        };
        writeln!(
            wat,
            r#"(import "env" "{name}" (func ${name} (param {params}){result}))"#
        )
        .unwrap();
    }
    wat
}

#[test]
fn env_functions_are_the_ones_defined_with_the_abi_signatures() {
    let mut listed: Vec<&str> = ENV_FUNCTIONS.to_vec();
    let mut abi: Vec<&str> = SIGNATURES.iter().map(|(name, _, _)| *name).collect();
    listed.sort_unstable();
    abi.sort_unstable();
    assert_eq!(listed, abi);

    // Instantiating checks that each import is defined, with its type.
    let engine = crate::module::engine();
    let module = Module::new(engine, format!("(module {})", imports())).unwrap();
    let mut linker = Linker::<HostState>::new(engine);
    define(&mut linker).unwrap();
    if let Err(e) = linker.instantiate_pre(&module) {
        panic!("{e:#}");
    }
}

const BAD: i32 = -16; // 0xffff_fff0: no length fits after it in a 64 KiB memory
const KEY: i32 = 16; // "key1"
const VALUE: i32 = 32; // "val1"
const OUT: i32 = 512; // room for out-parameters
const OUT2: i32 = 520;
const OUT3: i32 = 528;

/// Host calls from a root context's `proxy_on_vm_start` (VM configuration "vm-config"), and
/// the status each gets. Checks run in order, so some see what earlier ones did.
const CHECKS: &[(&str, &[i32], i32)] = &[
    ("proxy_log", &[2, KEY, 4], 0),
    ("proxy_log", &[2, BAD, 8], 6),
    // The level is checked before the message is read.
    ("proxy_log", &[9, BAD, 8], 2),
    ("proxy_get_log_level", &[BAD], 6),
    ("proxy_get_current_time_nanoseconds", &[BAD], 6),
    ("proxy_get_buffer_bytes", &[6, 0, 100, OUT, OUT2], 0),
    ("proxy_get_buffer_bytes", &[6, 0, 100, BAD, OUT2], 6),
    ("proxy_get_buffer_bytes", &[6, 0, 100, OUT, BAD], 6),
    // A buffer that is not there is NOT_FOUND, before any out-parameter is written.
    ("proxy_get_buffer_bytes", &[0, 0, 100, BAD, BAD], 1),
    ("proxy_set_buffer_bytes", &[0, 0, 0, BAD, 8], 6),
    ("proxy_get_buffer_status", &[6, BAD, OUT], 6),
    ("proxy_get_buffer_status", &[6, OUT, BAD], 6),
    ("proxy_get_buffer_status", &[0, BAD, BAD], 1),
    ("proxy_get_configuration", &[BAD, OUT], 6),
    ("proxy_get_header_map_size", &[0, BAD], 6),
    ("proxy_get_header_map_pairs", &[0, BAD, OUT], 6),
    ("proxy_set_header_map_pairs", &[0, BAD, 8], 6),
    ("proxy_get_header_map_value", &[0, BAD, 4, OUT, OUT2], 6),
    ("proxy_add_header_map_value", &[0, BAD, 4, VALUE, 4], 6),
    ("proxy_add_header_map_value", &[0, KEY, 4, BAD, 4], 6),
    // Memory is checked before the map: without a stream, BAD_ARGUMENT.
    ("proxy_add_header_map_value", &[0, KEY, 4, VALUE, 4], 2),
    ("proxy_replace_header_map_value", &[0, KEY, 4, BAD, 4], 6),
    ("proxy_remove_header_map_value", &[0, BAD, 4], 6),
    ("proxy_remove_header_map_value", &[0, KEY, 4], 2),
    ("proxy_get_status", &[BAD, OUT, OUT2], 6),
    (
        "proxy_send_local_response",
        &[200, BAD, 4, 0, 0, 0, 0, -1],
        6,
    ),
    ("proxy_http_call", &[BAD, 4, 0, 0, 0, 0, 0, 0, 1000, OUT], 6),
    (
        "proxy_grpc_call",
        &[KEY, 4, 0, 0, 0, 0, 0, 0, BAD, 4, 1000, OUT],
        6,
    ),
    ("proxy_set_shared_data", &[BAD, 4, VALUE, 4, 0], 6),
    ("proxy_set_shared_data", &[KEY, 4, BAD, 4, 0], 6),
    ("proxy_set_shared_data", &[KEY, 4, VALUE, 4, 0], 0),
    ("proxy_get_shared_data", &[BAD, 4, OUT, OUT2, OUT3], 6),
    ("proxy_get_shared_data", &[KEY, 4, BAD, OUT2, OUT3], 6),
    // The value is handed over, then the CAS out-parameter is refused.
    ("proxy_get_shared_data", &[KEY, 4, OUT, OUT2, BAD], 6),
    ("proxy_register_shared_queue", &[BAD, 4, OUT], 6),
    // The queue is registered, though its id cannot be written...
    ("proxy_register_shared_queue", &[KEY, 4, BAD], 6),
    // ...so it resolves.
    ("proxy_resolve_shared_queue", &[0, 0, KEY, 4, BAD], 6),
    ("proxy_resolve_shared_queue", &[0, 0, BAD, 4, OUT], 6),
    ("proxy_enqueue_shared_queue", &[1, BAD, 4], 6),
    ("proxy_define_metric", &[0, BAD, 4, OUT], 6),
    // The metric type is checked before the name is read.
    ("proxy_define_metric", &[7, BAD, 4, OUT], 2),
    ("proxy_define_metric", &[0, KEY, 4, BAD], 6),
    // An unknown metric is NOT_FOUND before its out-parameter is looked at.
    ("proxy_get_metric", &[999, BAD], 1),
    ("proxy_get_property", &[BAD, 4, OUT, OUT2], 6),
    ("proxy_set_property", &[BAD, 4, VALUE, 4], 6),
    ("proxy_call_foreign_function", &[BAD, 4, 0, 0, OUT, OUT2], 6),
    ("proxy_done", &[], 1),
    ("proxy_continue_stream", &[0], 2),
];

/// A module whose `proxy_on_vm_start` makes the calls of `CHECKS`; at the first unexpected
/// status it logs `NNN:SS` (check index, status) at error level and traps.
fn checking_module() -> String {
    let mut calls = String::new();
    for (i, (name, args, want)) in CHECKS.iter().enumerate() {
        let args: String = args.iter().map(|a| format!(" (i32.const {a})")).collect();
        writeln!(
            calls,
            "(call $expect (i32.const {i}) (call ${name}{args}) (i32.const {want}))"
        )
        .unwrap();
    }
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (data (i32.const {KEY}) "key1")
  (data (i32.const {VALUE}) "val1")
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (global.get $heap)
    (global.set $heap (i32.add (global.get $heap) (local.get $size))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func $digit (param $at i32) (param $v i32)
    (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10)))))
  (func $expect (param $id i32) (param $got i32) (param $want i32)
    (if (i32.ne (local.get $got) (local.get $want))
      (then
        (call $digit (i32.const 256) (i32.div_u (local.get $id) (i32.const 100)))
        (call $digit (i32.const 257) (i32.div_u (local.get $id) (i32.const 10)))
        (call $digit (i32.const 258) (local.get $id))
        (i32.store8 (i32.const 259) (i32.const 58))
        (call $digit (i32.const 260) (i32.div_u (local.get $got) (i32.const 10)))
        (call $digit (i32.const 261) (local.get $got))
        (drop (call $proxy_log (i32.const 4) (i32.const 256) (i32.const 6)))
        unreachable)))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    {calls}
    (i32.const 1)))"#,
        imports = imports(),
    )
}

#[test]
fn bad_guest_pointers_get_statuses_not_a_crash() {
    let module = Arc::new(PluginModule {
        sha256: [7; 32],
        module: Module::new(crate::module::engine(), checking_module()).unwrap(),
        abi: AbiVersion::V0_2_1,
    });
    let spec = Arc::new(PluginSpec {
        name: "checks".to_owned(),
        root_id: String::new(),
        vm_id: "checks".to_owned(),
        configuration: Bytes::new(),
        vm_configuration: Bytes::from_static(b"vm-config"),
        env: Vec::new(),
        fail_strategy: FailStrategy::FailClose,
        limits: VmLimits::default(),
        reload_backoff: Duration::from_secs(1),
        module,
        scope: None,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let mut vms = WorkerVms::new(Host::new(None), Rc::new(NoCallouts)).unwrap();
        if let Err((_, failure)) = vms.chain(&[spec]) {
            let failure = failure.to_string();
            // "... (NNN:SS)": the check and the status it got.
            let check = failure
                .rsplit_once('(')
                .and_then(|(_, s)| s.get(..3)?.parse::<usize>().ok())
                .and_then(|i| CHECKS.get(i));
            panic!("{failure}: {check:?}");
        }
    });
}
