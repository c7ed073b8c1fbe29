//! Authorization: Istio's AuthorizationPolicy on a sidecar's inbound listener. The control
//! plane gives each listener the policies that select its workload ([`AuthzConfig`]); this
//! plugin judges every request with them (see `wasmesh_policy::authz` for the rules) and
//! answers a denied one as Envoy's RBAC filter does: `403 RBAC: access denied`, with the
//! matched policy in the response code details. Matched AUDIT policies are logged.

use std::rc::Rc;

use wasmesh_policy::authz::{Attribute, Attributes, AuthzConfig};
use wasmesh_sdk::{Action, Config, FilterResult, HttpFilter, Level, Plugin, Request, property_str};

#[derive(Default)]
struct Authz {
    config: Rc<AuthzConfig>,
}

impl Plugin for Authz {
    fn configure(&mut self, config: &Config) -> Result<(), Box<dyn std::error::Error>> {
        self.config = Rc::new(config.json()?);
        Ok(())
    }

    fn new_http(&mut self) -> Box<dyn HttpFilter> {
        Box::new(Judge {
            config: self.config.clone(),
        })
    }
}

struct Judge {
    config: Rc<AuthzConfig>,
}

impl HttpFilter for Judge {
    fn on_request_headers(&mut self, req: &mut Request, _end: bool) -> FilterResult {
        if self.config.policies.is_empty() {
            return Ok(Action::Continue);
        }
        let decision = self.config.decide(&mut Lookup::new(req));
        for audited in &decision.audited {
            wasmesh_sdk::log(Level::Info, &format!("audit: matched {audited}"));
        }
        if let Some(details) = decision.denied {
            req.respond_with_details(
                403,
                &details,
                &[("content-type", "text/plain")],
                b"RBAC: access denied",
            )?;
        }
        Ok(Action::Continue)
    }
}

/// The request's attributes, each read from the host once, when first asked for.
struct Lookup<'r> {
    req: &'r Request,
    principal: Option<Option<String>>,
    source_ip: Option<Option<String>>,
    destination_ip: Option<Option<String>>,
    host: Option<Option<String>>,
    method: Option<Option<String>>,
    path: Option<Option<String>>,
    header: Option<(String, Option<String>)>,
}

impl<'r> Lookup<'r> {
    fn new(req: &'r Request) -> Lookup<'r> {
        Lookup {
            req,
            principal: None,
            source_ip: None,
            destination_ip: None,
            host: None,
            method: None,
            path: None,
            header: None,
        }
    }
}

/// The IP of an `ip:port` (or `[v6]:port`) address.
fn ip(address: String) -> String {
    match address.rsplit_once(':') {
        Some((ip, _)) if address.contains('.') || address.starts_with('[') => {
            ip.trim_start_matches('[').trim_end_matches(']').to_owned()
        }
        _ => address,
    }
}

impl Attributes for Lookup<'_> {
    fn get(&mut self, attribute: Attribute<'_>) -> Option<&str> {
        let prop = |path: &[&str]| property_str(path).ok().flatten();
        match attribute {
            Attribute::Principal | Attribute::Namespace => {
                let principal = self.principal.get_or_insert_with(|| {
                    prop(&["source", "principal"])
                        .map(|p| p.strip_prefix("spiffe://").map(str::to_owned).unwrap_or(p))
                });
                let principal = principal.as_deref()?;
                if attribute == Attribute::Principal {
                    return Some(principal);
                }
                // `<trust domain>/ns/<namespace>/sa/<service account>`
                let mut parts = principal.split('/');
                match (parts.nth(1), parts.next()) {
                    (Some("ns"), Some(ns)) => Some(ns),
                    _ => None,
                }
            }
            Attribute::SourceIp => self
                .source_ip
                .get_or_insert_with(|| prop(&["source", "address"]).map(ip))
                .as_deref(),
            Attribute::DestinationIp => self
                .destination_ip
                .get_or_insert_with(|| prop(&["destination", "address"]).map(ip))
                .as_deref(),
            Attribute::Host => {
                let req = self.req;
                self.host
                    .get_or_insert_with(|| req.header(":authority").ok().flatten())
                    .as_deref()
            }
            Attribute::Method => {
                let req = self.req;
                self.method
                    .get_or_insert_with(|| req.header(":method").ok().flatten())
                    .as_deref()
            }
            Attribute::Path => self
                .path
                .get_or_insert_with(|| prop(&["request", "url_path"]))
                .as_deref(),
            Attribute::Header(name) => {
                if self.header.as_ref().is_none_or(|(n, _)| n != name) {
                    self.header = Some((name.to_owned(), self.req.header(name).ok().flatten()));
                }
                self.header.as_ref().and_then(|(_, v)| v.as_deref())
            }
        }
    }
}

wasmesh_sdk::plugin!(Authz::default());
