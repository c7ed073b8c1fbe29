//! A deliberately slow filter, for `wasmesh bench`: `on_http_request_headers` does busy work
//! for about the number of microseconds in its plugin configuration (`200`; none or `0`: no
//! work). The loop is calibrated against the clock once, in `on_configure`, so a request makes
//! no host call for it.

use std::hint::black_box;
use std::time::{Duration, Instant};

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

/// Loop iterations per microsecond on this VM.
fn iterations_per_micro() -> u64 {
    let mut n = 1024u64;
    loop {
        let start = Instant::now();
        black_box(spin(n));
        let took = start.elapsed();
        if took >= Duration::from_millis(2) || n >= 1 << 32 {
            return (n as u128 * 1000 / took.as_nanos().max(1)).max(1) as u64;
        }
        n *= 2;
    }
}

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
            micros * iterations_per_micro()
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
