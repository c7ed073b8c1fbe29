//! The router: Istio VirtualService `http` routes, as a proxy-wasm plugin. It picks the route
//! (matching uri, headers, method, authority, scheme, query parameters), then answers a
//! redirect or direct response itself, or picks a weighted destination cluster, rewrites the
//! path and authority, edits headers, and hands the route's timeout and retries to the core.
//! It publishes the route it chose as `wasmesh.route_name` for the fault and mirror plugins.

mod table;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use table::{RequestView, RouteAction, Table, rewrite_path};
use wasmesh_policy::{Dice, HeaderOps, Redirect, RouterConfig};
use wasmesh_sdk::{
    Action, Config, FilterResult, HttpFilter, Level, Plugin, Request, Response, mesh,
};

#[derive(Default)]
struct Router {
    table: Option<Rc<Table>>,
    dice: Option<Rc<RefCell<Dice>>>,
}

impl Plugin for Router {
    fn configure(&mut self, config: &Config) -> Result<(), Box<dyn std::error::Error>> {
        let config: RouterConfig = config.json()?;
        self.table = Some(Rc::new(Table::compile(&config)?));
        self.dice
            .get_or_insert_with(|| Rc::new(RefCell::new(Dice::seeded())));
        Ok(())
    }

    fn new_http(&mut self) -> Box<dyn HttpFilter> {
        Box::new(Exchange {
            table: self.table.clone(),
            dice: self.dice.clone(),
            chosen: None,
        })
    }
}

struct Exchange {
    table: Option<Rc<Table>>,
    dice: Option<Rc<RefCell<Dice>>>,
    /// Host, route and destination indexes, for the response's header edits.
    chosen: Option<(usize, usize, usize)>,
}

struct View<'a>(&'a Request);

impl RequestView for View<'_> {
    fn header(&mut self, name: &str) -> Option<String> {
        self.0.header(name).ok().flatten()
    }
}

impl HttpFilter for Exchange {
    fn on_request_headers(&mut self, req: &mut Request, _end: bool) -> FilterResult {
        let Some(table) = self.table.clone() else {
            return Ok(Action::Continue);
        };
        // No host of the mesh: the core's own routes decide (404 NR when none matches).
        let Some(h) = table.host_index(&req.authority()?) else {
            return Ok(Action::Continue);
        };
        let host = &table.hosts[h];
        let path = req.path()?;
        let Some((r, consumed)) = host.route_index(&path, &mut View(req)) else {
            wasmesh_sdk::log(
                Level::Debug,
                &format!("no route of {} matches {path}", host.name),
            );
            return Ok(Action::Continue);
        };
        let route = &host.routes[r];
        mesh::set_route_name(&route.id)?;
        match &route.action {
            RouteAction::Redirect(redirect) => {
                let location = location(req, &path, redirect)?;
                req.respond(redirect.status, &[("location", &location)], b"")?;
            }
            RouteAction::DirectResponse { status, body } => {
                let headers: &[(&str, &str)] = if body.is_empty() {
                    &[]
                } else {
                    &[("content-type", "text/plain")]
                };
                req.respond(*status, headers, body.as_bytes())?;
            }
            RouteAction::Route {
                destinations,
                total_weight,
                rewrite,
            } => {
                let draw = match (destinations.len(), &self.dice) {
                    (2.., Some(dice)) if *total_weight > 0 => {
                        dice.borrow_mut().below(*total_weight)
                    }
                    _ => 0,
                };
                let d = RouteAction::pick(destinations, *total_weight, draw);
                let di = destinations
                    .iter()
                    .position(|x| std::ptr::eq(x, d))
                    .unwrap_or(0);
                mesh::set_upstream_cluster(&d.cluster)?;
                if let Some(ms) = route.timeout_ms {
                    mesh::set_timeout((ms > 0).then(|| Duration::from_millis(ms)))?;
                }
                if let Some(policy) = &route.retry_policy {
                    mesh::set_retry_policy_spec(policy)?;
                }
                edit_request(req, &route.request_headers)?;
                edit_request(req, &d.request_headers)?;
                if let Some(rw) = rewrite {
                    if let Some(uri) = &rw.uri {
                        req.set_path(&rewrite_path(&path, consumed, uri))?;
                    } else if let Some((pattern, substitution)) = &rw.uri_regex {
                        let (only, query) = match path.split_once('?') {
                            Some((p, q)) => (p, Some(q)),
                            None => (path.as_str(), None),
                        };
                        let mut new = pattern
                            .replace_all(only, substitution.as_str())
                            .into_owned();
                        if let Some(q) = query {
                            new.push('?');
                            new.push_str(q);
                        }
                        req.set_path(&new)?;
                    }
                    if let Some(authority) = &rw.authority {
                        req.set_header(":authority", Some(authority))?;
                    }
                }
                self.chosen = Some((h, r, di));
            }
        }
        Ok(Action::Continue)
    }

    fn on_response_headers(&mut self, resp: &mut Response, _end: bool) -> FilterResult {
        if let (Some(table), Some((h, r, d))) = (&self.table, self.chosen) {
            let route = &table.hosts[h].routes[r];
            edit_response(resp, &route.response_headers)?;
            if let RouteAction::Route { destinations, .. } = &route.action {
                edit_response(resp, &destinations[d].response_headers)?;
            }
        }
        Ok(Action::Continue)
    }
}

/// Remove, then set, then add: Istio's order.
fn edit_request(req: &mut Request, ops: &HeaderOps) -> wasmesh_sdk::Result<()> {
    for name in &ops.remove {
        req.set_header(name, None)?;
    }
    for (name, value) in &ops.set {
        req.set_header(name, Some(value))?;
    }
    for (name, value) in &ops.add {
        req.add_header(name, value)?;
    }
    Ok(())
}

fn edit_response(resp: &mut Response, ops: &HeaderOps) -> wasmesh_sdk::Result<()> {
    for name in &ops.remove {
        resp.set_header(name, None)?;
    }
    for (name, value) in &ops.set {
        resp.set_header(name, Some(value))?;
    }
    for (name, value) in &ops.add {
        resp.add_header(name, value)?;
    }
    Ok(())
}

/// The redirect's `location`: the request's scheme, authority and path, each replaced where
/// the redirect says. A replacement path without a query keeps the request's query.
fn location(req: &Request, path: &str, redirect: &Redirect) -> wasmesh_sdk::Result<String> {
    let scheme = match &redirect.scheme {
        Some(s) => s.clone(),
        None => req.header(":scheme")?.unwrap_or_else(|| "http".to_owned()),
    };
    let mut authority = match &redirect.authority {
        Some(a) => a.clone(),
        None => req.authority()?,
    };
    if let Some(port) = redirect.port {
        if let Some((host, p)) = authority.rsplit_once(':')
            && p.bytes().all(|b| b.is_ascii_digit())
        {
            authority = host.to_owned();
        }
        authority = format!("{authority}:{port}");
    }
    let path = match &redirect.uri {
        Some(uri) if uri.contains('?') => uri.clone(),
        Some(uri) => match path.split_once('?') {
            Some((_, query)) => format!("{uri}?{query}"),
            None => uri.clone(),
        },
        None => path.to_owned(),
    };
    Ok(format!("{scheme}://{authority}{path}"))
}

wasmesh_sdk::plugin!(Router::default());
