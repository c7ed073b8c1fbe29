//! Write wasmesh filters in Rust.
//!
//! A filter is a [`Plugin`] (one per VM and configuration) that makes an [`HttpFilter`] for
//! each request. Every host call returns [`Result`]: no status the host answers can panic
//! your filter. Build for `wasm32-wasip1`, test with `wasmesh-harness` against the real host.
//!
//! ```ignore
//! use wasmesh_sdk::{Action, Config, FilterResult, HttpFilter, Plugin, Request};
//!
//! #[derive(Default)]
//! struct AddHeader { value: String }
//!
//! impl Plugin for AddHeader {
//!     fn configure(&mut self, config: &Config) -> Result<(), Box<dyn std::error::Error>> {
//!         self.value = config.text();
//!         Ok(())
//!     }
//!     fn new_http(&mut self) -> Box<dyn HttpFilter> {
//!         Box::new(Stamp(self.value.clone()))
//!     }
//! }
//!
//! struct Stamp(String);
//!
//! impl HttpFilter for Stamp {
//!     fn on_request_headers(&mut self, req: &mut Request, _end: bool) -> FilterResult {
//!         req.set_header("x-stamp", Some(&self.0))?;
//!         Ok(Action::Continue)
//!     }
//! }
//!
//! wasmesh_sdk::plugin!(AddHeader::default());
//! ```

mod abi;
#[doc(hidden)]
pub mod dispatch;
mod host;
mod http;
pub mod mesh;

pub use host::{
    Counter, Error, Gauge, Histogram, Level, Result, Status, foreign, log, property, property_i64,
    property_str, set_property, set_tick_period, shared_get, shared_set,
};
pub use http::{Body, Callout, CalloutResponse, Request, Response};

/// What a callback tells the host: go on, or hold the request (or response) here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Stop iterating: for headers until the filter resumes (after a callout); for bodies,
    /// buffer the data until the end of the body.
    Pause,
}

/// What a request callback returns. An error answers the request with 500.
pub type FilterResult = std::result::Result<Action, Box<dyn std::error::Error>>;

/// The plugin configuration (`plugin_config` in the proxy config).
pub struct Config {
    pub bytes: Vec<u8>,
}

impl Config {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The configuration as JSON, into your own type.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
    ) -> std::result::Result<T, serde_json::Error> {
        serde_json::from_slice(if self.bytes.is_empty() {
            b"{}"
        } else {
            &self.bytes
        })
    }
}

/// A plugin: configured once per VM, making one [`HttpFilter`] per request.
pub trait Plugin: 'static {
    /// Receives the plugin configuration. An error refuses it (the proxy keeps its last
    /// good configuration).
    fn configure(
        &mut self,
        config: &Config,
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let _ = config;
        Ok(())
    }

    /// Called every tick period (see [`set_tick_period`]).
    fn on_tick(&mut self) {}

    fn new_http(&mut self) -> Box<dyn HttpFilter>;
}

/// The per-request part of a filter. Every callback has a default that continues.
pub trait HttpFilter: 'static {
    fn on_request_headers(&mut self, request: &mut Request, end_of_stream: bool) -> FilterResult {
        let _ = (request, end_of_stream);
        Ok(Action::Continue)
    }

    fn on_request_body(&mut self, body: &mut Body, end_of_stream: bool) -> FilterResult {
        let _ = (body, end_of_stream);
        Ok(Action::Continue)
    }

    fn on_response_headers(
        &mut self,
        response: &mut Response,
        end_of_stream: bool,
    ) -> FilterResult {
        let _ = (response, end_of_stream);
        Ok(Action::Continue)
    }

    fn on_response_body(&mut self, body: &mut Body, end_of_stream: bool) -> FilterResult {
        let _ = (body, end_of_stream);
        Ok(Action::Continue)
    }

    /// A callout this filter made answered (`None`: it failed or timed out). `Continue`
    /// resumes the request.
    fn on_callout_response(
        &mut self,
        request: &mut Request,
        response: Option<CalloutResponse>,
    ) -> FilterResult {
        let _ = (request, response);
        Ok(Action::Continue)
    }

    /// The request is done (access-log time): properties such as `response.code` are set.
    fn on_log(&mut self) {}
}

/// Declares the plugin: `wasmesh_sdk::plugin!(MyPlugin::default());`
#[macro_export]
macro_rules! plugin {
    ($factory:expr) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn _initialize() {
            #[cfg(target_os = "wasi")]
            {
                unsafe extern "C" {
                    fn __wasm_call_ctors();
                }
                // SAFETY: runs the static constructors once, as the WASI reactor ABI expects.
                unsafe { __wasm_call_ctors() };
            }
            $crate::dispatch::register(|| ::std::boxed::Box::new($factory));
        }
    };
}
