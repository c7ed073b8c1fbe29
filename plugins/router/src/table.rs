//! The router's configuration compiled for lookups: domains in a hash map, regexes built
//! once, weights summed. Matching is pure: it reads the request through [`RequestView`], so it
//! is tested natively.

use rustc_hash::FxHashMap as HashMap;

use regex::Regex;
use wasmesh_policy::{
    Action, Destination, HeaderMatch, HeaderOps, Redirect, RouteMatch, RouterConfig, StringMatch,
};

/// What matching reads of a request. Header names are lowercase.
pub trait RequestView {
    fn header(&mut self, name: &str) -> Option<String>;
}

pub struct Table {
    exact: HashMap<String, usize>,
    /// `*.example.com` as `.example.com`, longest first.
    suffixes: Vec<(String, usize)>,
    any: Option<usize>,
    pub hosts: Vec<Host>,
}

pub struct Host {
    /// The VirtualService host this entry came from, for logs.
    pub name: String,
    pub routes: Vec<Route>,
}

pub struct Route {
    pub id: String,
    matches: Vec<Match>,
    pub action: RouteAction,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub timeout_ms: Option<u64>,
    pub retry_policy: Option<String>,
}

pub enum RouteAction {
    Route {
        destinations: Vec<Destination>,
        total_weight: u32,
        rewrite: Option<Rewrite>,
    },
    Redirect(Redirect),
    DirectResponse {
        status: u16,
        body: String,
    },
}

pub struct Rewrite {
    pub uri: Option<String>,
    pub uri_regex: Option<(Regex, String)>,
    pub authority: Option<String>,
}

struct Match {
    uri: Option<Matcher>,
    ignore_uri_case: bool,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    scheme: Option<Matcher>,
    headers: Vec<(String, Condition)>,
    without_headers: Vec<(String, Condition)>,
    query_params: Vec<(String, Matcher)>,
}

enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

enum Condition {
    Value(Matcher),
    Present,
    Absent,
}

/// The part of the path a match consumed, for `rewrite.uri` (Envoy's prefix rewrite).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumed {
    /// The whole path (an exact uri match).
    Path,
    /// This many leading bytes (a prefix match; `/` for regex or no uri match).
    Prefix(usize),
}

impl Matcher {
    fn new(m: &StringMatch, ignore_case: bool) -> Result<Matcher, String> {
        Ok(match m {
            StringMatch::Exact(s) if ignore_case => Matcher::Exact(s.to_ascii_lowercase()),
            StringMatch::Exact(s) => Matcher::Exact(s.clone()),
            StringMatch::Prefix(s) if ignore_case => Matcher::Prefix(s.to_ascii_lowercase()),
            StringMatch::Prefix(s) => Matcher::Prefix(s.clone()),
            StringMatch::Regex(r) => {
                let anchored = if ignore_case {
                    format!("^(?i:{r})$")
                } else {
                    format!("^(?:{r})$")
                };
                Matcher::Regex(Regex::new(&anchored).map_err(|e| format!("regex {r:?}: {e}"))?)
            }
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => value == s,
            Matcher::Prefix(p) => value.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

impl Condition {
    fn new(m: &HeaderMatch) -> Result<Condition, String> {
        Ok(match m {
            HeaderMatch::Value(v) => Condition::Value(Matcher::new(v, false)?),
            HeaderMatch::Present => Condition::Present,
            HeaderMatch::Absent => Condition::Absent,
        })
    }

    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Condition::Value(m), Some(v)) => m.matches(v),
            (Condition::Present, Some(_)) | (Condition::Absent, None) => true,
            _ => false,
        }
    }
}

impl Table {
    pub fn compile(config: &RouterConfig) -> Result<Table, String> {
        let mut table = Table {
            exact: HashMap::default(),
            suffixes: Vec::new(),
            any: None,
            hosts: Vec::new(),
        };
        for (index, vhost) in config.virtual_hosts.iter().enumerate() {
            for domain in &vhost.domains {
                let domain = domain.to_ascii_lowercase();
                if domain == "*" {
                    table.any.get_or_insert(index);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    table.suffixes.push((suffix.to_owned(), index));
                } else {
                    table.exact.entry(domain).or_insert(index);
                }
            }
            let routes = vhost
                .routes
                .iter()
                .map(|r| compile_route(r).map_err(|e| format!("route {}: {e}", r.id)))
                .collect::<Result<_, _>>()?;
            table.hosts.push(Host {
                name: vhost.name.clone(),
                routes,
            });
        }
        table.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Ok(table)
    }

    /// The virtual host for an authority: exact, then without its port, then the longest
    /// wildcard suffix, then `*`.
    #[cfg(test)]
    pub fn host(&self, authority: &str) -> Option<&Host> {
        self.host_index(authority).map(|i| &self.hosts[i])
    }

    pub fn host_index(&self, authority: &str) -> Option<usize> {
        let authority = authority.to_ascii_lowercase();
        let bare = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority.as_str(),
        };
        self.exact
            .get(authority.as_str())
            .or_else(|| self.exact.get(bare))
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(suffix, _)| bare.ends_with(suffix.as_str()))
                    .map(|(_, i)| *i)
            })
            .or(self.any)
    }
}

impl Host {
    /// The first route whose matches hold (its index), and the part of the path it consumed.
    pub fn route_index(&self, path: &str, req: &mut impl RequestView) -> Option<(usize, Consumed)> {
        let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
        self.routes.iter().enumerate().find_map(|(i, route)| {
            if route.matches.is_empty() {
                return Some((i, Consumed::Prefix(1)));
            }
            route
                .matches
                .iter()
                .find_map(|m| m.holds(path_only, query, req))
                .map(|consumed| (i, consumed))
        })
    }
}

impl Match {
    fn holds(&self, path: &str, query: &str, req: &mut impl RequestView) -> Option<Consumed> {
        let consumed = match &self.uri {
            None => Consumed::Prefix(1),
            Some(m) => {
                let lowered;
                let path = if self.ignore_uri_case {
                    lowered = path.to_ascii_lowercase();
                    lowered.as_str()
                } else {
                    path
                };
                if !m.matches(path) {
                    return None;
                }
                match m {
                    Matcher::Exact(_) => Consumed::Path,
                    Matcher::Prefix(p) => Consumed::Prefix(p.len()),
                    Matcher::Regex(_) => Consumed::Prefix(1),
                }
            }
        };
        let pseudo = [
            (":method", &self.method),
            (":authority", &self.authority),
            (":scheme", &self.scheme),
        ];
        for (name, matcher) in pseudo {
            if let Some(m) = matcher
                && !req.header(name).is_some_and(|v| m.matches(&v))
            {
                return None;
            }
        }
        for (name, condition) in &self.headers {
            if !condition.holds(req.header(name).as_deref()) {
                return None;
            }
        }
        for (name, condition) in &self.without_headers {
            if condition.holds(req.header(name).as_deref()) {
                return None;
            }
        }
        for (name, m) in &self.query_params {
            let value = query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then_some(v)
            });
            if !value.is_some_and(|v| m.matches(v)) {
                return None;
            }
        }
        Some(consumed)
    }
}

fn compile_route(r: &wasmesh_policy::Route) -> Result<Route, String> {
    let matches = r
        .matches
        .iter()
        .map(compile_match)
        .collect::<Result<_, _>>()?;
    let action = match &r.action {
        Action::Route {
            destinations,
            rewrite,
        } => {
            if destinations.is_empty() {
                return Err("no destinations".into());
            }
            let rewrite = rewrite
                .as_ref()
                .map(|rw| -> Result<Rewrite, String> {
                    Ok(Rewrite {
                        uri: rw.uri.clone(),
                        uri_regex: match &rw.uri_regex {
                            Some(r) => Some((
                                Regex::new(&r.pattern)
                                    .map_err(|e| format!("regex {:?}: {e}", r.pattern))?,
                                substitution(&r.substitution),
                            )),
                            None => None,
                        },
                        authority: rw.authority.clone(),
                    })
                })
                .transpose()?;
            RouteAction::Route {
                total_weight: destinations.iter().map(|d| d.weight).sum(),
                destinations: destinations.clone(),
                rewrite,
            }
        }
        Action::Redirect(redirect) => RouteAction::Redirect(redirect.clone()),
        Action::DirectResponse { status, body } => RouteAction::DirectResponse {
            status: *status,
            body: body.clone(),
        },
    };
    Ok(Route {
        id: r.id.clone(),
        matches,
        action,
        request_headers: r.request_headers.clone(),
        response_headers: r.response_headers.clone(),
        timeout_ms: r.timeout_ms,
        retry_policy: r.retry_policy.clone(),
    })
}

fn compile_match(m: &RouteMatch) -> Result<Match, String> {
    let matcher = |m: &Option<StringMatch>| m.as_ref().map(|m| Matcher::new(m, false)).transpose();
    let conditions = |h: &std::collections::BTreeMap<String, HeaderMatch>| {
        h.iter()
            .map(|(k, v)| Ok((k.to_ascii_lowercase(), Condition::new(v)?)))
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(Match {
        uri: m
            .uri
            .as_ref()
            .map(|u| Matcher::new(u, m.ignore_uri_case))
            .transpose()?,
        ignore_uri_case: m.ignore_uri_case,
        method: matcher(&m.method)?,
        authority: matcher(&m.authority)?,
        scheme: matcher(&m.scheme)?,
        headers: conditions(&m.headers)?,
        without_headers: conditions(&m.without_headers)?,
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| Ok((k.clone(), Matcher::new(v, false)?)))
            .collect::<Result<_, String>>()?,
    })
}

/// RE2-style `\1` references in a substitution, as regex's `${1}`.
fn substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

impl RouteAction {
    /// Picks a destination by weight; `draw` is uniform in `0..total_weight`.
    pub fn pick(destinations: &[Destination], total_weight: u32, draw: u32) -> &Destination {
        if total_weight == 0 {
            return &destinations[0];
        }
        let mut left = draw;
        for d in destinations {
            if left < d.weight {
                return d;
            }
            left -= d.weight;
        }
        destinations.last().expect("at least one destination")
    }
}

/// The path after `rewrite.uri` replaced what the match consumed (the query is kept).
pub fn rewrite_path(path: &str, consumed: Consumed, replacement: &str) -> String {
    let (path_only, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out = match consumed {
        Consumed::Path => replacement.to_owned(),
        Consumed::Prefix(n) => {
            let n = n.min(path_only.len());
            format!("{replacement}{}", &path_only[n..])
        }
    };
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_policy::{Route as PRoute, VirtualHost};

    struct Headers(Vec<(&'static str, &'static str)>);

    impl RequestView for Headers {
        fn header(&mut self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn to(cluster: &str) -> Action {
        Action::Route {
            destinations: vec![Destination {
                cluster: cluster.into(),
                ..Default::default()
            }],
            rewrite: None,
        }
    }

    fn table() -> Table {
        let jason = RouteMatch {
            headers: [(
                "end-user".to_owned(),
                HeaderMatch::Value(StringMatch::Exact("jason".into())),
            )]
            .into(),
            ..Default::default()
        };
        let v2_prefix = RouteMatch {
            uri: Some(StringMatch::Prefix("/v2".into())),
            ..Default::default()
        };
        let regex = RouteMatch {
            uri: Some(StringMatch::Regex("/items/[0-9]+".into())),
            query_params: [("debug".to_owned(), StringMatch::Exact("1".into()))].into(),
            ..Default::default()
        };
        let no_header = RouteMatch {
            headers: [("x-legacy".to_owned(), HeaderMatch::Absent)].into(),
            method: Some(StringMatch::Exact("DELETE".into())),
            ..Default::default()
        };
        Table::compile(&RouterConfig {
            virtual_hosts: vec![
                VirtualHost {
                    name: "reviews".into(),
                    domains: vec!["reviews".into(), "reviews:9080".into()],
                    routes: vec![
                        PRoute {
                            id: "jason".into(),
                            matches: vec![jason, v2_prefix],
                            action: to("v2"),
                            ..Default::default()
                        },
                        PRoute {
                            id: "regex".into(),
                            matches: vec![regex],
                            action: to("v3"),
                            ..Default::default()
                        },
                        PRoute {
                            id: "delete".into(),
                            matches: vec![no_header],
                            action: to("v3"),
                            ..Default::default()
                        },
                        PRoute {
                            id: "default".into(),
                            action: to("v1"),
                            ..Default::default()
                        },
                    ],
                },
                VirtualHost {
                    name: "wild".into(),
                    domains: vec!["*.example.com".into()],
                    routes: vec![PRoute {
                        id: "wild".into(),
                        action: to("w"),
                        ..Default::default()
                    }],
                },
            ],
        })
        .unwrap()
    }

    fn route_id(t: &Table, authority: &str, path: &str, headers: Headers) -> Option<String> {
        let mut headers = headers;
        let host = t.host(authority)?;
        host.route_index(path, &mut headers)
            .map(|(i, _)| host.routes[i].id.clone())
    }

    #[test]
    fn hosts_by_exact_port_stripped_and_wildcard() {
        let t = table();
        assert_eq!(t.host("reviews").unwrap().name, "reviews");
        assert_eq!(t.host("Reviews:9080").unwrap().name, "reviews");
        assert_eq!(t.host("reviews:1234").unwrap().name, "reviews");
        assert_eq!(t.host("a.example.com").unwrap().name, "wild");
        assert!(t.host("ratings").is_none());
    }

    #[test]
    fn routes_in_order_with_header_uri_query_and_method_matches() {
        let t = table();
        let h = |v: Vec<(&'static str, &'static str)>| Headers(v);
        assert_eq!(
            route_id(&t, "reviews", "/", h(vec![("end-user", "jason")])).unwrap(),
            "jason"
        );
        assert_eq!(
            route_id(&t, "reviews", "/v2/x", h(vec![])).unwrap(),
            "jason"
        );
        assert_eq!(
            route_id(&t, "reviews", "/", h(vec![("end-user", "bob")])).unwrap(),
            "default"
        );
        assert_eq!(
            route_id(&t, "reviews", "/items/42?debug=1", h(vec![])).unwrap(),
            "regex"
        );
        assert_eq!(
            route_id(&t, "reviews", "/items/42x?debug=1", h(vec![])).unwrap(),
            "default",
            "regexes match the whole path"
        );
        assert_eq!(
            route_id(&t, "reviews", "/items/42?debug=2", h(vec![])).unwrap(),
            "default"
        );
        assert_eq!(
            route_id(&t, "reviews", "/x", h(vec![(":method", "DELETE")])).unwrap(),
            "delete"
        );
        assert_eq!(
            route_id(
                &t,
                "reviews",
                "/x",
                h(vec![(":method", "DELETE"), ("x-legacy", "1")])
            )
            .unwrap(),
            "default"
        );
    }

    #[test]
    fn weights_split_draws() {
        let d = |c: &str, w| Destination {
            cluster: c.into(),
            weight: w,
            ..Default::default()
        };
        let ds = [d("a", 80), d("b", 20)];
        assert_eq!(RouteAction::pick(&ds, 100, 0).cluster, "a");
        assert_eq!(RouteAction::pick(&ds, 100, 79).cluster, "a");
        assert_eq!(RouteAction::pick(&ds, 100, 80).cluster, "b");
        assert_eq!(RouteAction::pick(&ds, 100, 99).cluster, "b");
    }

    #[test]
    fn prefix_rewrites_keep_the_rest_and_the_query() {
        assert_eq!(
            rewrite_path("/v2/items?x=1", Consumed::Prefix(3), "/api"),
            "/api/items?x=1"
        );
        assert_eq!(rewrite_path("/login", Consumed::Path, "/signin"), "/signin");
        assert_eq!(rewrite_path("/a", Consumed::Prefix(2), ""), "/");
        assert_eq!(substitution(r"/v\1/\2$"), "/v${1}/${2}$$");
    }
}
