//! A filter that misbehaves on purpose, as its plugin configuration says: `trap` panics,
//! `loop` never returns, `alloc` allocates until its memory cap, `wild` hands the host pointers
//! outside its memory, `ok` behaves.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { mode: String::new() }));
}}

struct Root {
    mode: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.mode = self
            .get_plugin_configuration()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        self.mode != "refuse"
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hostile {
            mode: self.mode.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Hostile {
    mode: String,
}

impl Context for Hostile {}

unsafe extern "C" {
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        ret: *mut *mut u8,
        ret_len: *mut usize,
    ) -> u32;
    fn proxy_log(level: u32, msg: *const u8, len: usize) -> u32;
}

impl HttpContext for Hostile {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // Only requests that ask for it misbehave, so one module can serve both kinds.
        let asked = self
            .get_http_request_header("x-misbehave")
            .unwrap_or_default();
        let mode = if asked.is_empty() {
            self.mode.clone()
        } else {
            asked
        };
        match mode.as_str() {
            "trap" => panic!("hostile filter panics"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "wild" => {
                let mut ret: *mut u8 = std::ptr::null_mut();
                let mut len: usize = 0;
                // SAFETY: deliberately wrong pointers; the host must refuse them, not crash.
                let a = unsafe {
                    proxy_get_header_map_value(0, 0xFFFF_FFF0 as *const u8, 64, &mut ret, &mut len)
                };
                let b = unsafe { proxy_log(2, 0xFFFF_0000 as *const u8, 1 << 20) };
                let c = unsafe {
                    proxy_get_header_map_value(
                        0,
                        b"x-misbehave".as_ptr(),
                        11,
                        0xFFFF_FFFC as *mut *mut u8,
                        0xFFFF_FFFC as *mut usize,
                    )
                };
                self.set_http_request_header("x-wild", Some(&format!("{a},{b},{c}")));
            }
            _ => {}
        }
        self.set_http_request_header("x-hostile", Some("passed"));
        Action::Continue
    }
}
