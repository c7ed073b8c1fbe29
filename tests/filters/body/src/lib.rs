//! Body rewriting with pause (the SDK's http_body example): the response body is buffered
//! until its end, then every "secret" is redacted; request bodies get a suffix.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Body) });
}}

struct Body;

impl Context for Body {}

impl HttpContext for Body {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // The body changes size: the length is recomputed downstream of the filter. A request
        // with `x-keep-length` keeps it, as a filter that forgets to remove it would.
        if self.get_http_request_header("x-keep-length").is_none() {
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, size) {
            let mut body = body;
            body.extend_from_slice(b" (seen by wasm)");
            self.set_http_request_body(0, size, &body);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            // Buffer until the whole body is here; the next call reports the total size.
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, size) {
            let text = String::from_utf8_lossy(&body).replace("secret", "******");
            self.set_http_response_body(0, size, text.as_bytes());
        }
        Action::Continue
    }
}
