//! The host functions (module `env`). On targets other than wasm32 they are stubs answering
//! `UNIMPLEMENTED`, so filter crates build and check natively.

macro_rules! host_functions {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> u32;)*) => {
        #[cfg(target_arch = "wasm32")]
        #[link(wasm_import_module = "env")]
        unsafe extern "C" {
            $(pub fn $name($($arg: $ty),*) -> u32;)*
        }

        $(
            #[cfg(not(target_arch = "wasm32"))]
            #[allow(unused_variables, clippy::missing_safety_doc, clippy::too_many_arguments)]
            pub unsafe fn $name($($arg: $ty),*) -> u32 {
                12
            }
        )*
    };
}

host_functions! {
    fn proxy_log(level: u32, msg: *const u8, len: usize) -> u32;
    fn proxy_get_header_map_value(map: u32, key: *const u8, key_len: usize, ret: *mut *mut u8, ret_len: *mut usize) -> u32;
    fn proxy_get_header_map_pairs(map: u32, ret: *mut *mut u8, ret_len: *mut usize) -> u32;
    fn proxy_add_header_map_value(map: u32, key: *const u8, key_len: usize, value: *const u8, value_len: usize) -> u32;
    fn proxy_replace_header_map_value(map: u32, key: *const u8, key_len: usize, value: *const u8, value_len: usize) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_len: usize) -> u32;
    fn proxy_get_buffer_bytes(buffer: u32, start: usize, max: usize, ret: *mut *mut u8, ret_len: *mut usize) -> u32;
    fn proxy_set_buffer_bytes(buffer: u32, start: usize, size: usize, data: *const u8, len: usize) -> u32;
    fn proxy_get_property(path: *const u8, path_len: usize, ret: *mut *mut u8, ret_len: *mut usize) -> u32;
    fn proxy_set_property(path: *const u8, path_len: usize, value: *const u8, value_len: usize) -> u32;
    fn proxy_send_local_response(status: u32, details: *const u8, details_len: usize, body: *const u8, body_len: usize, headers: *const u8, headers_len: usize, grpc_status: i32) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_http_call(upstream: *const u8, upstream_len: usize, headers: *const u8, headers_len: usize, body: *const u8, body_len: usize, trailers: *const u8, trailers_len: usize, timeout_ms: u32, ret_token: *mut u32) -> u32;
    fn proxy_get_shared_data(key: *const u8, key_len: usize, ret: *mut *mut u8, ret_len: *mut usize, ret_cas: *mut u32) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_len: usize, value: *const u8, value_len: usize, cas: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_len: usize, ret_id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, delta: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_metric(id: u32, ret: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_call_foreign_function(name: *const u8, name_len: usize, args: *const u8, args_len: usize, ret: *mut *mut u8, ret_len: *mut usize) -> u32;
}

pub const MAP_REQUEST_HEADERS: u32 = 0;
pub const MAP_RESPONSE_HEADERS: u32 = 2;
pub const MAP_CALL_RESPONSE_HEADERS: u32 = 6;
pub const BUFFER_REQUEST_BODY: u32 = 0;
pub const BUFFER_RESPONSE_BODY: u32 = 1;
pub const BUFFER_CALL_RESPONSE_BODY: u32 = 4;
pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
pub const STREAM_REQUEST: u32 = 0;
