//! Route tables: virtual hosts chosen by host name, then the first route whose path matches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, RetryPolicy};
use crate::upstream::Cluster;

/// One listener's compiled routes, each with its cluster (if it has one) as `C` (the proxy's upstream; a name
/// where only the routing is wanted, as `wasmesh bench` does).
pub struct RouteTable<C = Arc<Cluster>> {
    exact: rustc_hash::FxHashMap<String, usize>,
    /// `*.example.com` / `*-suffix` domains, longest first.
    suffixes: Vec<(String, usize)>,
    /// `example.*` domains, longest first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
    vhosts: Vec<VirtualHost<C>>,
    /// Whether any virtual host has `require_tls` (else plaintext requests look none up).
    any_require_tls: bool,
}

pub struct VirtualHost<C> {
    pub routes: Vec<Route<C>>,
    /// Plaintext requests are redirected to `https` (Envoy's `require_tls: ALL`).
    pub require_tls: bool,
}

pub struct Route<C = Arc<Cluster>> {
    pub name: String,
    matcher: PathMatch,
    pub action: Action<C>,
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
}

/// What a route does with the requests it matches.
pub enum Action<C> {
    /// Sends them to a cluster.
    Cluster(C),
    /// Answers them itself (Envoy's `direct_response`).
    Direct(config::DirectResponse),
}

impl<C> Route<C> {
    /// The route's cluster; none for a direct response.
    pub fn cluster(&self) -> Option<&C> {
        match &self.action {
            Action::Cluster(c) => Some(c),
            Action::Direct(_) => None,
        }
    }
}

enum PathMatch {
    Prefix(String),
    Exact(String),
}

impl RouteTable {
    /// Compiles a listener's virtual hosts; `clusters` holds every cluster by name.
    pub fn new(
        vhosts: &[config::VirtualHost],
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> RouteTable {
        RouteTable::with_clusters(vhosts, |name| clusters[name].clone())
    }
}

impl<C> RouteTable<C> {
    /// Compiles a listener's virtual hosts, each route's cluster made by `cluster` from its
    /// name.
    pub fn with_clusters(
        vhosts: &[config::VirtualHost],
        mut cluster: impl FnMut(&str) -> C,
    ) -> RouteTable<C> {
        let mut table = RouteTable {
            exact: Default::default(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            any: None,
            vhosts: Vec::with_capacity(vhosts.len()),
            any_require_tls: vhosts.iter().any(|vh| vh.require_tls),
        };
        for (index, vh) in vhosts.iter().enumerate() {
            for domain in &vh.domains {
                let domain = domain.to_ascii_lowercase();
                if domain == "*" {
                    table.any.get_or_insert(index);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    table.suffixes.push((suffix.to_owned(), index));
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    table.prefixes.push((prefix.to_owned(), index));
                } else {
                    table.exact.entry(domain).or_insert(index);
                }
            }
            let routes = vh
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| Route {
                    name: r.name.clone().unwrap_or_else(|| format!("{}/{i}", vh.name)),
                    matcher: match (&r.matcher.path, &r.matcher.prefix) {
                        (Some(p), _) => PathMatch::Exact(p.clone()),
                        (None, Some(p)) => PathMatch::Prefix(p.clone()),
                        (None, None) => PathMatch::Prefix("/".to_owned()),
                    },
                    action: match &r.direct_response {
                        Some(d) => Action::Direct(d.clone()),
                        None => Action::Cluster(cluster(&r.cluster)),
                    },
                    timeout: r.timeout.nonzero(),
                    retry: r.retry_policy.clone(),
                })
                .collect();
            table.vhosts.push(VirtualHost {
                routes,
                require_tls: vh.require_tls,
            });
        }
        // Envoy: the longest wildcard wins.
        table
            .suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        table
            .prefixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        table
    }

    /// Finds the route for a host (with or without port) and a path.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route<C>> {
        let vh = self.virtual_host(host)?;
        vh.routes.iter().find(|r| r.matches(path))
    }

    /// Whether the virtual host for `host` takes only requests over TLS.
    pub fn requires_tls(&self, host: &str) -> bool {
        self.any_require_tls && self.virtual_host(host).is_some_and(|vh| vh.require_tls)
    }

    fn virtual_host(&self, host: &str) -> Option<&VirtualHost<C>> {
        if self.exact.is_empty() && self.suffixes.is_empty() && self.prefixes.is_empty() {
            // Only `*` (or nothing): the host need not be looked at.
            return self.any.map(|i| &self.vhosts[i]);
        }
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let name = strip_port(host);
        let index = self
            .exact(host)
            // Without the port, unless there was none.
            .or_else(|| (name.len() < host.len()).then(|| self.exact(name))?)
            .or_else(|| self.wildcard(name))
            .or(self.any)?;
        Some(&self.vhosts[index])
    }

    /// A domain named exactly. Most meshes' listeners have none, and a lookup hashes the host.
    fn exact(&self, host: &str) -> Option<usize> {
        if self.exact.is_empty() {
            return None;
        }
        self.exact.get(host).copied()
    }

    /// The longest `*.suffix` or `prefix.*` domain that matches.
    fn wildcard(&self, host: &str) -> Option<usize> {
        let suffix = self
            .suffixes
            .iter()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()));
        if let Some((_, i)) = suffix {
            return Some(*i);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
            .map(|(_, i)| *i)
    }
}

impl<C> Route<C> {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        }
    }
}

/// `host:port` -> `host`, leaving IPv6 literals (`[::1]:80` -> `[::1]`) intact.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Bootstrap;

    fn table(yaml_vhosts: &str) -> RouteTable {
        let yaml = format!(
            "listeners: [{{name: l, address: \"127.0.0.1:0\", virtual_hosts: {yaml_vhosts}}}]\n\
             clusters: [{{name: a, endpoints: [\"127.0.0.1:1\"]}}, {{name: b, endpoints: [\"127.0.0.1:2\"]}}]\n"
        );
        let b = Bootstrap::parse(&yaml).unwrap();
        let clusters = b
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Arc::new(Cluster::new(c, 1, None).unwrap())))
            .collect();
        RouteTable::new(&b.listeners[0].virtual_hosts, &clusters)
    }

    #[test]
    fn hosts_match_exact_then_wildcards_then_any() {
        let t = table(
            "[{name: exact, domains: [api.example.com], routes: [{cluster: a}]},
              {name: suffix, domains: ['*.example.com'], routes: [{cluster: b}]},
              {name: prefix, domains: ['api.*'], routes: [{cluster: b}]},
              {name: any, domains: ['*'], routes: [{cluster: a, match: {prefix: /only}}]}]",
        );
        // Unnamed routes are called `<virtual host>/<index>`.
        let vh = |h| t.find(h, "/only").map(|r| r.name.clone());
        assert_eq!(vh("api.example.com").as_deref(), Some("exact/0"));
        assert_eq!(vh("API.example.com:8080").as_deref(), Some("exact/0"));
        assert_eq!(vh("www.example.com").as_deref(), Some("suffix/0"));
        assert_eq!(vh("api.other.org").as_deref(), Some("prefix/0"));
        assert_eq!(vh("elsewhere").as_deref(), Some("any/0"));
        assert!(t.find("elsewhere", "/nope").is_none());
    }

    #[test]
    fn first_matching_route_wins() {
        let t = table(
            "[{name: v, domains: ['*'], routes: [
                {name: exact, match: {path: /health}, cluster: b},
                {name: api, match: {prefix: /api}, cluster: a},
                {name: rest, cluster: b}]}]",
        );
        assert_eq!(t.find("h", "/health").unwrap().name, "exact");
        assert_eq!(t.find("h", "/healthz").unwrap().name, "rest");
        assert_eq!(t.find("h", "/api/v1").unwrap().name, "api");
    }

    #[test]
    fn strips_ports_but_not_ipv6_brackets() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("host"), "host");
    }
}
