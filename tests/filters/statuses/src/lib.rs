//! Calls every host function whose status the Rust SDK checks, in the situations where Envoy
//! answers something other than OK, and reports what came back. The SDK panics (a trap) on any
//! status it does not expect, so reaching the end proves the host answered as Envoy does.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Statuses) });
}}

struct Statuses;

impl Context for Statuses {}

impl HttpContext for Statuses {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let mut report = Vec::new();
        // OK | NOT_FOUND
        report.push(format!(
            "header={:?}",
            self.get_http_request_header("x-absent")
        ));
        report.push(format!(
            "body={:?}",
            hostcalls::get_buffer(BufferType::HttpRequestBody, 0, 10).map(|b| b.is_some())
        ));
        report.push(format!(
            "shared={:?}",
            self.get_shared_data("never-set").0.is_some()
        ));
        report.push(format!(
            "property={:?}",
            self.get_property(vec!["no", "such"]).is_some()
        ));
        // OK | CAS_MISMATCH
        self.set_shared_data("k", Some(b"1"), None).unwrap();
        let (_, cas) = self.get_shared_data("k");
        self.set_shared_data("k", Some(b"2"), cas).unwrap();
        report.push(format!(
            "cas={:?}",
            self.set_shared_data("k", Some(b"3"), cas)
        ));
        // OK | NOT_FOUND | EMPTY
        report.push(format!(
            "resolve={:?}",
            hostcalls::resolve_shared_queue("", "no-queue")
        ));
        let q = hostcalls::register_shared_queue("q").unwrap();
        report.push(format!("dequeue={:?}", hostcalls::dequeue_shared_queue(q)));
        report.push(format!(
            "enqueue-missing={:?}",
            hostcalls::enqueue_shared_queue(9999, Some(b"x"))
        ));
        // OK | BAD_ARGUMENT | INTERNAL_FAILURE: an unknown cluster and a missing :path.
        report.push(format!(
            "call-cluster={:?}",
            self.dispatch_http_call(
                "nowhere",
                vec![(":method", "GET"), (":path", "/"), (":authority", "a")],
                None,
                vec![],
                Duration::from_secs(1)
            )
            .map(|_| ())
        ));
        report.push(format!(
            "call-path={:?}",
            self.dispatch_http_call(
                "auth",
                vec![(":method", "GET"), (":authority", "a")],
                None,
                vec![],
                Duration::from_secs(1)
            )
            .map(|_| ())
        ));
        // OK | PARSE_FAILURE | INTERNAL_FAILURE
        report.push(format!(
            "grpc={:?}",
            self.dispatch_grpc_call("nowhere", "svc", "m", vec![], None, Duration::from_secs(1))
                .map(|_| ())
        ));
        report.push(format!(
            "grpc-stream={:?}",
            self.open_grpc_stream("auth", "svc", "m", vec![])
                .map(|_| ())
        ));
        // OK | NOT_FOUND | BAD_ARGUMENT ...
        report.push(format!(
            "foreign={:?}",
            hostcalls::call_foreign_function("no_such_function", None).map(|_| ())
        ));
        // Metrics: OK | NOT_FOUND | BAD_ARGUMENT
        let m = hostcalls::define_metric(MetricType::Counter, "statuses_counter").unwrap();
        report.push(format!("incr={:?}", hostcalls::increment_metric(m, 2)));
        report.push(format!(
            "decr-counter={:?}",
            hostcalls::increment_metric(m, -1)
        ));
        report.push(format!("get-metric={:?}", hostcalls::get_metric(m)));
        report.push(format!(
            "missing-metric={:?}",
            hostcalls::increment_metric(424242, 1)
        ));
        // Effective context: BAD_ARGUMENT for an unknown id.
        report.push(format!(
            "effective={:?}",
            hostcalls::set_effective_context(999999)
        ));
        // Absent trailers: Envoy answers BAD_ARGUMENT and the SDK panics; wasmesh reads them as
        // empty.
        report.push(format!(
            "trailer={:?}",
            hostcalls::get_map_value(MapType::HttpRequestTrailers, "x")
        ));
        report.push(format!(
            "response-headers={:?}",
            hostcalls::get_map(MapType::HttpResponseHeaders).map(|m| m.len())
        ));
        // Configuration buffers only exist in on_vm_start / on_configure.
        report.push(format!(
            "config={:?}",
            hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
                .map(|b| b.is_some())
        ));
        self.set_http_request_header("x-statuses", Some(&report.join(";")));
        Action::Continue
    }
}
