//! A filter written with wasmesh's own SDK, exercising its API: JSON configuration, header
//! edits, callouts, host extensions, metrics, body rewriting and errors as values.

use std::time::Duration;

use serde::Deserialize;
use wasmesh_sdk::{
    Action, Body, Callout, CalloutResponse, Config, Counter, FilterResult, HttpFilter, Plugin,
    Request, Response, mesh,
};

#[derive(Deserialize, Default, Clone)]
struct Settings {
    header: String,
    value: String,
    #[serde(default)]
    canary_cluster: Option<String>,
}

#[derive(Default)]
struct Demo {
    settings: Settings,
    requests: Option<Counter>,
}

impl Plugin for Demo {
    fn configure(&mut self, config: &Config) -> Result<(), Box<dyn std::error::Error>> {
        let settings: Settings = config.json()?;
        if settings.header.is_empty() {
            return Err("`header` must not be empty".into());
        }
        self.settings = settings;
        self.requests = Some(Counter::define("sdk_demo_requests")?);
        Ok(())
    }

    fn new_http(&mut self) -> Box<dyn HttpFilter> {
        Box::new(Exchange {
            settings: self.settings.clone(),
            requests: self.requests,
            shout: false,
        })
    }
}

struct Exchange {
    settings: Settings,
    requests: Option<Counter>,
    shout: bool,
}

impl HttpFilter for Exchange {
    fn on_request_headers(&mut self, req: &mut Request, _end: bool) -> FilterResult {
        req.set_header(&self.settings.header, Some(&self.settings.value))?;
        self.shout = req.header("x-shout")?.is_some();
        if req.header("x-canary")?.as_deref() == Some("1")
            && let Some(cluster) = &self.settings.canary_cluster
        {
            mesh::set_upstream_cluster(cluster)?;
        }
        if req.path()?.starts_with("/check") {
            req.call(
                "auth",
                Callout {
                    timeout: Duration::from_secs(2),
                    ..Callout::get("/verify", "auth")
                },
            )?;
            return Ok(Action::Pause);
        }
        if req.path()? == "/teapot" {
            req.respond(418, &[("x-sdk", "local")], b"short and stout\n")?;
        }
        if req.path()? == "/fail" {
            return Err("asked to fail".into());
        }
        Ok(Action::Continue)
    }

    fn on_callout_response(
        &mut self,
        req: &mut Request,
        response: Option<CalloutResponse>,
    ) -> FilterResult {
        match response {
            Some(r) if r.status == 200 => {
                req.set_header("x-verified", Some(&String::from_utf8_lossy(&r.body)))?;
                Ok(Action::Continue)
            }
            _ => {
                req.respond(401, &[], b"not verified\n")?;
                Ok(Action::Pause)
            }
        }
    }

    fn on_response_headers(&mut self, resp: &mut Response, _end: bool) -> FilterResult {
        resp.set_header("x-sdk-status", Some(&resp.status()?.to_string()))?;
        if self.shout {
            resp.set_header("content-length", None)?;
        }
        Ok(Action::Continue)
    }

    fn on_response_body(&mut self, body: &mut Body, end: bool) -> FilterResult {
        if !self.shout {
            return Ok(Action::Continue);
        }
        if !end {
            return Ok(Action::Pause);
        }
        let upper = body.bytes()?.to_ascii_uppercase();
        body.set(&upper)?;
        Ok(Action::Continue)
    }

    fn on_log(&mut self) {
        if let Some(c) = self.requests {
            let _ = c.increment(1);
        }
    }
}

wasmesh_sdk::plugin!(Demo::default());
