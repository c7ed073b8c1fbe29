//! The authorization plugin's configuration (Istio's AuthorizationPolicy, as the control plane
//! selects it for one workload port) and its evaluation, kept here so that it is plain Rust
//! the control plane and native tests can run too.
//!
//! Evaluation is Istio's: DENY policies first (any rule that matches denies), then ALLOW
//! policies (if there is at least one, a request must match one of their rules), else the
//! request is allowed. AUDIT policies never change the outcome; the ones that match are
//! reported. A rule matches when all of its `from`, `to` and `when` hold; a list of sources or
//! operations holds when any one does; within one, every field set must hold, each field
//! holding when any of its values matches, and each `not` field when none does.

use serde::{Deserialize, Serialize};

/// One inbound listener's policies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// The workload port the listener serves: what `to.operation.ports` and the
    /// `destination.port` condition compare with.
    pub port: u32,
    pub policies: Vec<AuthzPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzPolicy {
    /// As Envoy's RBAC names it in response code details: `ns[<namespace>]-policy[<name>]`.
    pub name: String,
    pub action: AuthzAction,
    /// None: an ALLOW policy allows nothing, a DENY or AUDIT policy matches nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
    Audit,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthzSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthzOperation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<AuthzCondition>,
}

/// `from.source`. Principals are SPIFFE ids without `spiffe://` (`cluster.local/ns/x/sa/y`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzSource {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// JWT principals. wasmesh has no RequestAuthentication yet, so a request has none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Addresses or CIDR blocks of the peer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// The original client (no proxy in front is trusted, Istio's default: the peer).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `to.operation`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzOperation {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A `when` condition: `key` is one of Istio's condition keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzCondition {
    pub key: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// What a request is judged on. Each is looked up only when a rule asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribute<'a> {
    /// The peer's SPIFFE id without `spiffe://`; none on a plaintext connection.
    Principal,
    /// The namespace in the peer's SPIFFE id.
    Namespace,
    SourceIp,
    DestinationIp,
    /// `:authority`.
    Host,
    Method,
    /// The path without its query.
    Path,
    /// A request header, named as the rule names it: hosts look headers up without regard to
    /// case.
    Header(&'a str),
}

/// The request being judged.
pub trait Attributes {
    fn get(&mut self, attribute: Attribute<'_>) -> Option<&str>;
}

/// The outcome for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// None: allowed. Some: denied, with Envoy's response code details
    /// (`rbac_access_denied_matched_policy[ns[x]-policy[y]-rule[0]]`, or `[none]` when no
    /// ALLOW policy matched).
    pub denied: Option<String>,
    /// The AUDIT policies and rules that matched (`ns[x]-policy[y]-rule[0]`).
    pub audited: Vec<String>,
}

/// The keys a `when` condition may use, as Istio documents them.
pub fn condition_key_is_known(key: &str) -> bool {
    header_key(key).is_some()
        || key.starts_with("request.auth.claims[")
        || key.starts_with("experimental.envoy.filters.")
        || matches!(
            key,
            "source.ip"
                | "remote.ip"
                | "source.namespace"
                | "source.principal"
                | "request.auth.principal"
                | "request.auth.audiences"
                | "request.auth.presenter"
                | "destination.ip"
                | "destination.port"
                | "connection.sni"
        )
}

fn header_key(key: &str) -> Option<&str> {
    key.strip_prefix("request.headers[")?.strip_suffix(']')
}

impl AuthzConfig {
    /// Judges a request.
    pub fn decide(&self, req: &mut dyn Attributes) -> Decision {
        let mut decision = Decision {
            denied: None,
            audited: Vec::new(),
        };
        for p in self
            .policies
            .iter()
            .filter(|p| p.action == AuthzAction::Deny)
        {
            if let Some(i) = self.first_match(p, req) {
                decision.denied = Some(format!(
                    "rbac_access_denied_matched_policy[{}-rule[{i}]]",
                    p.name
                ));
                return decision;
            }
        }
        for p in self
            .policies
            .iter()
            .filter(|p| p.action == AuthzAction::Audit)
        {
            if let Some(i) = self.first_match(p, req) {
                decision.audited.push(format!("{}-rule[{i}]", p.name));
            }
        }
        let mut allows = self
            .policies
            .iter()
            .filter(|p| p.action == AuthzAction::Allow)
            .peekable();
        if allows.peek().is_some() && !allows.any(|p| self.first_match(p, req).is_some()) {
            decision.denied = Some("rbac_access_denied_matched_policy[none]".into());
        }
        decision
    }

    fn first_match(&self, p: &AuthzPolicy, req: &mut dyn Attributes) -> Option<usize> {
        p.rules.iter().position(|r| self.rule(r, req))
    }

    fn rule(&self, r: &AuthzRule, req: &mut dyn Attributes) -> bool {
        (r.from.is_empty() || r.from.iter().any(|s| source(s, req)))
            && (r.to.is_empty() || r.to.iter().any(|o| self.operation(o, req)))
            && r.when.iter().all(|c| self.condition(c, req))
    }

    fn operation(&self, o: &AuthzOperation, req: &mut dyn Attributes) -> bool {
        // Formatted only for rules that name ports: most requests allocate nothing here.
        let port = (!o.ports.is_empty() || !o.not_ports.is_empty()).then(|| self.port.to_string());
        both(&o.ports, &o.not_ports, port.as_deref(), exact)
            && both(
                &o.methods,
                &o.not_methods,
                req.get(Attribute::Method),
                wildcard,
            )
            && both(&o.hosts, &o.not_hosts, req.get(Attribute::Host), host)
            && both(&o.paths, &o.not_paths, req.get(Attribute::Path), path)
    }

    fn condition(&self, c: &AuthzCondition, req: &mut dyn Attributes) -> bool {
        let port;
        let (value, matches): (Option<&str>, Matcher) = match c.key.as_str() {
            "source.ip" | "remote.ip" => (req.get(Attribute::SourceIp), ip_block),
            "destination.ip" => (req.get(Attribute::DestinationIp), ip_block),
            "destination.port" => {
                port = self.port.to_string();
                (Some(&port), exact)
            }
            "source.principal" => (req.get(Attribute::Principal), wildcard),
            "source.namespace" => (req.get(Attribute::Namespace), wildcard),
            key => match header_key(key) {
                Some(name) => (req.get(Attribute::Header(name)), wildcard),
                // JWT claims, SNI and Envoy's filter metadata: wasmesh has none of them.
                None => (None, exact),
            },
        };
        both(&c.values, &c.not_values, value, matches)
    }
}

fn source(s: &AuthzSource, req: &mut dyn Attributes) -> bool {
    both(
        &s.principals,
        &s.not_principals,
        req.get(Attribute::Principal),
        wildcard,
    ) && both(
        &s.request_principals,
        &s.not_request_principals,
        None,
        wildcard,
    ) && both(
        &s.namespaces,
        &s.not_namespaces,
        req.get(Attribute::Namespace),
        wildcard,
    ) && both(
        &s.ip_blocks,
        &s.not_ip_blocks,
        req.get(Attribute::SourceIp),
        ip_block,
    ) && both(
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        req.get(Attribute::SourceIp),
        ip_block,
    )
}

/// How a rule's value is compared with a request's (rule value, request value).
type Matcher = fn(&str, &str) -> bool;

/// A field and its `not` field: any of `values` matches (or there are none), and none of
/// `not_values` does. An absent attribute matches no value.
fn both(values: &[String], not_values: &[String], have: Option<&str>, matches: Matcher) -> bool {
    let any = |list: &[String]| have.is_some_and(|h| list.iter().any(|v| matches(v, h)));
    (values.is_empty() || any(values)) && (not_values.is_empty() || !any(not_values))
}

fn exact(want: &str, have: &str) -> bool {
    want == have
}

/// Istio's string match: `*` (any value present), `prefix*`, `*suffix`, or exact.
fn wildcard(want: &str, have: &str) -> bool {
    if want == "*" {
        return !have.is_empty();
    }
    if let Some(prefix) = want.strip_suffix('*') {
        return have.starts_with(prefix);
    }
    if let Some(suffix) = want.strip_prefix('*') {
        return have.ends_with(suffix);
    }
    want == have
}

/// Hosts match without regard to case, with or without the request's port.
fn host(want: &str, have: &str) -> bool {
    let want = want.to_ascii_lowercase();
    let have = have.to_ascii_lowercase();
    if wildcard(&want, &have) {
        return true;
    }
    match have.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            wildcard(&want, name)
        }
        _ => false,
    }
}

/// Paths: Istio's string match, or a template whose segments may be `{*}` (one segment) and
/// end with `{**}` (the rest of the path).
fn path(want: &str, have: &str) -> bool {
    if !want.contains('{') {
        return wildcard(want, have);
    }
    let mut want_segments = want.split('/');
    let mut have_segments = have.split('/');
    loop {
        match (want_segments.next(), have_segments.next()) {
            (Some("{**}"), Some(_)) => return want_segments.next().is_none(),
            (Some("{*}"), Some(h)) if !h.is_empty() => {}
            (Some(w), Some(h)) if w == h => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// An address inside a block (`10.0.0.0/8`, `::1/128`, or one address).
fn ip_block(block: &str, have: &str) -> bool {
    let Ok(addr) = have.parse::<std::net::IpAddr>() else {
        return false;
    };
    let (net, len) = match block.split_once('/') {
        Some((net, len)) => match len.parse::<u32>() {
            Ok(len) => (net, len),
            Err(_) => return false,
        },
        None => (block, 128),
    };
    match (net.parse::<std::net::IpAddr>(), addr) {
        (Ok(std::net::IpAddr::V4(n)), std::net::IpAddr::V4(a)) => {
            let len = len.min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (Ok(std::net::IpAddr::V6(n)), std::net::IpAddr::V6(a)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Whether `block` is an address or a CIDR block (for validation).
pub fn is_ip_block(block: &str) -> bool {
    let (net, len) = match block.split_once('/') {
        Some((net, len)) => (net, Some(len)),
        None => (block, None),
    };
    let Ok(addr) = net.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    len.is_none_or(|l| l.parse::<u32>().is_ok_and(|l| l <= max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Req {
        principal: Option<&'static str>,
        ip: &'static str,
        host: &'static str,
        method: &'static str,
        path: &'static str,
        headers: Vec<(&'static str, &'static str)>,
    }

    impl Attributes for Req {
        fn get(&mut self, a: Attribute<'_>) -> Option<&str> {
            match a {
                Attribute::Principal => self.principal,
                Attribute::Namespace => self.principal.and_then(|p| p.split('/').nth(2)),
                Attribute::SourceIp => Some(self.ip),
                Attribute::DestinationIp => Some("10.0.0.9"),
                Attribute::Host => Some(self.host),
                Attribute::Method => Some(self.method),
                Attribute::Path => Some(self.path),
                Attribute::Header(name) => self
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| *v),
            }
        }
    }

    fn req(principal: Option<&'static str>, method: &'static str, path: &'static str) -> Req {
        Req {
            principal,
            ip: "10.1.2.3",
            host: "reviews:9080",
            method,
            path,
            ..Req::default()
        }
    }

    fn config(json: &str) -> AuthzConfig {
        serde_json::from_str(json).unwrap()
    }

    const PRODUCTPAGE: Option<&str> = Some("cluster.local/ns/default/sa/bookinfo-productpage");
    const SLEEP: Option<&str> = Some("cluster.local/ns/foo/sa/sleep");

    #[test]
    fn no_policy_allows_and_an_empty_allow_policy_denies_everything() {
        let none = config(r#"{"port": 9080, "policies": []}"#);
        assert_eq!(none.decide(&mut req(None, "GET", "/")).denied, None);
        let allow_nothing = config(
            r#"{"port": 9080, "policies": [{"name": "ns[default]-policy[allow-nothing]", "action": "ALLOW"}]}"#,
        );
        assert_eq!(
            allow_nothing
                .decide(&mut req(PRODUCTPAGE, "GET", "/"))
                .denied
                .as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
        // An empty rule matches every request.
        let allow_all = config(
            r#"{"port": 9080, "policies": [{"name": "a", "action": "ALLOW", "rules": [{}]}]}"#,
        );
        assert_eq!(allow_all.decide(&mut req(None, "GET", "/")).denied, None);
    }

    #[test]
    fn deny_comes_before_allow_and_names_the_rule() {
        let c = config(
            r#"{"port": 9080, "policies": [
              {"name": "ns[default]-policy[viewer]", "action": "ALLOW", "rules": [
                {"from": [{"principals": ["cluster.local/ns/default/sa/bookinfo-productpage"]}],
                 "to": [{"methods": ["GET"]}]}]},
              {"name": "ns[default]-policy[deny-path]", "action": "DENY", "rules": [
                {"to": [{"paths": ["/admin"]}]},
                {"to": [{"paths": ["/private/*", "*.secret", "/api/{*}/keys", "/blob/{**}"]}]}]}
            ]}"#,
        );
        let denied = |p, m, path| c.decide(&mut req(p, m, path)).denied;
        assert_eq!(denied(PRODUCTPAGE, "GET", "/reviews/1"), None);
        assert_eq!(
            denied(PRODUCTPAGE, "POST", "/reviews/1").as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
        assert!(denied(SLEEP, "GET", "/reviews/1").is_some());
        assert!(denied(None, "GET", "/reviews/1").is_some());
        for path in [
            "/private/x",
            "/a.secret",
            "/api/v1/keys",
            "/blob/a/b/c",
            "/blob/",
        ] {
            assert!(
                denied(PRODUCTPAGE, "GET", path)
                    .is_some_and(|d| d.contains("policy[deny-path]-rule[1]")),
                "{path}"
            );
        }
        for path in ["/api/v1/v2/keys", "/api//keys", "/blob", "/admin/x"] {
            assert_eq!(denied(PRODUCTPAGE, "GET", path), None, "{path}");
        }
        assert_eq!(
            denied(PRODUCTPAGE, "GET", "/admin").as_deref(),
            Some("rbac_access_denied_matched_policy[ns[default]-policy[deny-path]-rule[0]]")
        );
    }

    #[test]
    fn sources_operations_and_conditions() {
        let c = config(
            r#"{"port": 9080, "policies": [{"name": "p", "action": "ALLOW", "rules": [
              {"from": [{"namespaces": ["foo"], "not_principals": ["*/sa/blocked"]}],
               "to": [{"hosts": ["Reviews"], "ports": ["9080"], "not_methods": ["DELETE"]}]},
              {"from": [{"ip_blocks": ["192.168.0.0/16"]}]},
              {"when": [{"key": "request.headers[X-Token]", "values": ["admin-*"]},
                        {"key": "source.ip", "not_values": ["10.1.0.0/16"]}]}
            ]}]}"#,
        );
        let mut sleep = req(SLEEP, "GET", "/");
        assert_eq!(c.decide(&mut sleep).denied, None);
        sleep.method = "DELETE";
        assert!(c.decide(&mut sleep).denied.is_some());
        sleep.method = "GET";
        sleep.host = "ratings";
        assert!(c.decide(&mut sleep).denied.is_some());
        let mut blocked = req(Some("cluster.local/ns/foo/sa/blocked"), "GET", "/");
        assert!(c.decide(&mut blocked).denied.is_some());
        // Plaintext from an allowed block.
        let mut lan = req(None, "GET", "/");
        lan.ip = "192.168.7.7";
        assert_eq!(c.decide(&mut lan).denied, None);
        // A header condition, but not from 10.1.0.0/16.
        let mut token = req(None, "GET", "/");
        token.headers = vec![("x-token", "admin-1")];
        assert!(c.decide(&mut token).denied.is_some());
        token.ip = "172.16.0.1";
        assert_eq!(c.decide(&mut token).denied, None);
    }

    #[test]
    fn audit_policies_report_but_do_not_decide() {
        let c = config(
            r#"{"port": 80, "policies": [{"name": "ns[x]-policy[audit]", "action": "AUDIT", "rules": [
              {"to": [{"paths": ["/headers"]}]}]}]}"#,
        );
        let d = c.decide(&mut req(None, "GET", "/headers"));
        assert_eq!(d.denied, None);
        assert_eq!(d.audited, ["ns[x]-policy[audit]-rule[0]"]);
        assert!(c.decide(&mut req(None, "GET", "/ip")).audited.is_empty());
    }

    #[test]
    fn jwt_principals_are_never_present() {
        let c = config(
            r#"{"port": 80, "policies": [{"name": "p", "action": "ALLOW", "rules": [
              {"from": [{"request_principals": ["*"]}]}]},
              {"name": "d", "action": "DENY", "rules": [{"from": [{"not_request_principals": ["*"]}], "to": [{"paths": ["/deny"]}]}]}]}"#,
        );
        assert!(c.decide(&mut req(PRODUCTPAGE, "GET", "/")).denied.is_some());
        assert!(
            c.decide(&mut req(PRODUCTPAGE, "GET", "/deny"))
                .denied
                .is_some_and(|d| d.ends_with("[d-rule[0]]"))
        );
    }

    #[test]
    fn ip_blocks() {
        assert!(ip_block("10.0.0.0/8", "10.255.0.1"));
        assert!(!ip_block("10.0.0.0/8", "11.0.0.1"));
        assert!(ip_block("127.0.0.1", "127.0.0.1"));
        assert!(!ip_block("127.0.0.1", "127.0.0.2"));
        assert!(ip_block("0.0.0.0/0", "1.2.3.4"));
        assert!(ip_block("fd00::/8", "fd12::1"));
        assert!(!ip_block("fd00::/8", "10.0.0.1"));
        assert!(is_ip_block("10.0.0.0/8") && is_ip_block("::1") && is_ip_block("1.2.3.4"));
        assert!(!is_ip_block("10.0.0.0/33") && !is_ip_block("nope") && !is_ip_block("1.2.3.4/"));
    }
}
