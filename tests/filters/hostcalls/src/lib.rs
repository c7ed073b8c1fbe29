//! Makes one kind of host call a configured number of times per request, to measure what a
//! host call costs. Configuration: `<kind> <count>` with kind `time`, `get-header`,
//! `set-header`, `property` or `none`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root { kind: String::new(), count: 0 }));
}}

struct Root {
    kind: String,
    count: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        let mut parts = config.split_whitespace();
        self.kind = parts.next().unwrap_or("none").to_owned();
        self.count = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Calls {
            kind: self.kind.clone(),
            count: self.count,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Calls {
    kind: String,
    count: u32,
}

impl Context for Calls {}

impl HttpContext for Calls {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        for _ in 0..self.count {
            match self.kind.as_str() {
                "get-header" => {
                    std::hint::black_box(self.get_http_request_header("x-a"));
                }
                "set-header" => self.set_http_request_header("x-b", Some("value")),
                "property" => {
                    std::hint::black_box(self.get_property(vec!["request", "path"]));
                }
                // The cheapest call there is: no guest allocation, the clock's read only.
                "time" => {
                    std::hint::black_box(self.get_current_time());
                }

                _ => {}
            }
        }
        Action::Continue
    }
}
