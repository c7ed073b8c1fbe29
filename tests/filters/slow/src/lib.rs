//! A deliberately slow filter, for `wasmesh bench`: `on_http_request_headers` does busy work
//! proportional to the number in its plugin configuration, roughly that many microseconds
//! (`200`; none or `0`: no work). The work is a fixed loop: it makes no host call.

use std::hint::black_box;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root { iterations: 0 }));
}}

struct Root {
    /// Loop iterations per request.
    iterations: u64,
}

/// The busy work: `n` rounds of a cheap hash the optimiser cannot remove.
fn spin(n: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        x = black_box(x.rotate_left(5) ^ i).wrapping_mul(0x0100_0000_01b3);
    }
    x
}

/// Loop iterations per configured microsecond: about a microsecond on a 3 GHz x86-64 core
/// under wasmtime. A fixed count rather than a calibration against the clock, so the work a
/// request costs does not depend on how busy the machine was when the plugin started.
const ITERATIONS_PER_MICRO: u64 = 870;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&config);
        let text = text.trim().trim_matches('"');
        let micros: u64 = if text.is_empty() {
            0
        } else {
            match text.parse() {
                Ok(n) => n,
                Err(_) => {
                    log::error!(
                        "slow: plugin_config must be a number of microseconds, not {text:?}"
                    );
                    return false;
                }
            }
        };
        self.iterations = if micros == 0 {
            0
        } else {
            micros.saturating_mul(ITERATIONS_PER_MICRO)
        };
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Slow {
            iterations: self.iterations,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Slow {
    iterations: u64,
}

impl Context for Slow {}

impl HttpContext for Slow {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        black_box(spin(self.iterations));
        Action::Continue
    }
}
