//! Reads properties with Envoy's encodings and reports them as response headers.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Props) });
}}

struct Props;

impl Context for Props {}

fn text(v: Option<Vec<u8>>) -> String {
    v.map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|| "<none>".into())
}

fn int(v: Option<Vec<u8>>) -> String {
    v.and_then(|b| b.try_into().ok())
        .map(|b: [u8; 8]| i64::from_le_bytes(b).to_string())
        .unwrap_or_else(|| "<none>".into())
}

impl HttpContext for Props {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_property(vec!["my_filter", "seen"], Some(b"yes"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let pairs = [
            (
                "x-prop-path",
                text(self.get_property(vec!["request", "path"])),
            ),
            (
                "x-prop-method",
                text(self.get_property(vec!["request", "method"])),
            ),
            (
                "x-prop-source",
                text(self.get_property(vec!["source", "address"])),
            ),
            (
                "x-prop-source-port",
                int(self.get_property(vec!["source", "port"])),
            ),
            (
                "x-prop-code",
                int(self.get_property(vec!["response", "code"])),
            ),
            (
                "x-prop-plugin",
                text(self.get_property(vec!["plugin_name"])),
            ),
            (
                "x-prop-state",
                text(self.get_property(vec!["my_filter", "seen"])),
            ),
            (
                "x-prop-missing",
                text(self.get_property(vec!["no", "such", "thing"])),
            ),
            // The peer, on an mTLS connection (Istio's attributes).
            (
                "x-prop-principal",
                text(self.get_property(vec!["source", "principal"])),
            ),
            (
                "x-prop-peer-san",
                text(self.get_property(vec!["connection", "uri_san_peer_certificate"])),
            ),
            (
                "x-prop-namespace",
                text(self.get_property(vec!["source", "namespace"])),
            ),
            (
                "x-prop-mtls",
                match self.get_property(vec!["connection", "mtls"]).as_deref() {
                    Some([1]) => "true".into(),
                    Some([0]) => "false".into(),
                    _ => "<none>".into(),
                },
            ),
        ];
        for (k, v) in pairs {
            self.set_http_response_header(k, Some(&v));
        }
        Action::Continue
    }
}
