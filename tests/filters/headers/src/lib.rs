//! Header manipulation with the published proxy-wasm SDK: adds a request header from the
//! plugin configuration, removes one, answers `/hello` locally, and stamps the response.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { value: String::new() }));
}}

struct Root {
    value: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.value = self
            .get_plugin_configuration()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_else(|| "none".into());
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers {
            context_id,
            value: self.value.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Headers {
    context_id: u32,
    value: String,
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.get_http_request_header(":path").as_deref() == Some("/hello") {
            self.send_http_response(
                200,
                vec![("x-hello", "from-wasm")],
                Some(b"Hello, World!\n"),
            );
            return Action::Pause;
        }
        self.set_http_request_header("x-plugin-config", Some(&self.value));
        self.set_http_request_header("x-remove-me", None);
        self.add_http_request_header("x-context-id", &self.context_id.to_string());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.set_http_response_header("x-wasm-path", Some(&path));
        self.set_http_response_header("server", None);
        Action::Continue
    }
}
