//! An HTTP callout decides the request (the SDK's http_auth_random example): the request waits
//! while cluster `auth` is asked; 200 lets it through, anything else is answered 403.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Auth) });
}}

struct Auth;

impl HttpContext for Auth {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let user = self.get_http_request_header("x-user").unwrap_or_default();
        match self.dispatch_http_call(
            "auth",
            vec![
                (":method", "GET"),
                (":path", "/check"),
                (":authority", "auth"),
                ("x-user", &user),
            ],
            None,
            vec![],
            Duration::from_secs(5),
        ) {
            Ok(_) => Action::Pause,
            Err(status) => {
                self.send_http_response(
                    500,
                    vec![("x-dispatch-error", &format!("{status:?}"))],
                    None,
                );
                Action::Pause
            }
        }
    }
}

impl Context for Auth {
    fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
        let status = self.get_http_call_response_header(":status");
        if status.as_deref() == Some("200") {
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            self.set_http_request_header("x-auth", Some(&String::from_utf8_lossy(&body)));
            self.resume_http_request();
        } else {
            let reason = status.unwrap_or_else(|| "no response".into());
            self.send_http_response(
                403,
                vec![("x-auth-status", &reason)],
                Some(b"Access forbidden.\n"),
            );
        }
    }
}
