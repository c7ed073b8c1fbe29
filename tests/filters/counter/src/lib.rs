//! Shared data with compare-and-swap, metrics and a tick timer: every request increments a
//! counter shared by all workers (retrying on CAS mismatch), counts itself in a metric, and a
//! timer counts ticks.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { requests: 0, ticks: 0 }));
}}

struct Root {
    requests: u32,
    ticks: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.requests = hostcalls::define_metric(MetricType::Counter, "counter_requests").unwrap();
        self.ticks = hostcalls::define_metric(MetricType::Counter, "counter_ticks").unwrap();
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        self.set_tick_period(Duration::from_millis(20));
        true
    }

    fn on_tick(&mut self) {
        hostcalls::increment_metric(self.ticks, 1).unwrap();
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Counter {
            metric: self.requests,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Counter {
    metric: u32,
}

impl Context for Counter {}

impl HttpContext for Counter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        hostcalls::increment_metric(self.metric, 1).unwrap();
        // A correct counter across workers: read, add one, write back only if unchanged.
        let count = loop {
            let (value, cas) = self.get_shared_data("requests");
            let n = value.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8]))) + 1;
            match self.set_shared_data("requests", Some(&n.to_le_bytes()), cas) {
                Ok(()) => break n,
                Err(Status::CasMismatch) => continue,
                Err(e) => panic!("unexpected {e:?}"),
            }
        };
        self.set_http_request_header("x-request-count", Some(&count.to_string()));
        Action::Continue
    }
}
