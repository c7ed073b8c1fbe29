//! AuthorizationPolicy: the policies a workload's sidecar enforces, by Istio's selection
//! rules, as the authorization plugin's configuration for each of its inbound ports.
//!
//! A policy applies to a workload when it is in the workload's namespace or in the root
//! namespace (mesh-wide) and its `selector` matches the workload's labels (no selector: all of
//! them). Policies with `targetRefs` are for gateways and waypoints, not sidecars. A CUSTOM
//! policy, which wasmesh cannot enforce, denies every request of the workloads it selects, as
//! Istio does when a CUSTOM policy's provider is missing; other policies with errors are left
//! out (reported by the translation).

use std::collections::BTreeMap;

use wasmesh_config::filters::{FailStrategy, HttpFilter, Phase, VmConfig};
use wasmesh_policy::authz::{
    AuthzAction, AuthzCondition, AuthzConfig, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource,
};

use crate::istio::{self, AuthorizationPolicy};
use crate::manifests::{Resource, Spec};
use crate::plugins::ROOT_NAMESPACE;
use crate::translate::PluginModule;

/// The name of the authorization filter in a sidecar's inbound listeners.
pub const FILTER_NAME: &str = "istio.authz";

/// The policies that apply to a workload in `namespace` with `labels`, by namespace and name.
pub fn policies_for(
    resources: &[Resource],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<AuthzPolicy> {
    let mut selected: Vec<(&Resource, &AuthorizationPolicy)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::AuthorizationPolicy(ap) => Some((r, ap)),
            _ => None,
        })
        .filter(|(r, ap)| {
            (r.namespace() == namespace || r.namespace() == ROOT_NAMESPACE)
                && ap.target_refs.is_empty()
                && ap.target_ref.is_none()
                && ap
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .filter(|(r, ap)| {
            ap.action == istio::AuthzAction::Custom
                || !crate::translate::check(r).iter().any(|d| d.is_error())
        })
        .collect();
    selected.sort_by(|a, b| (a.0.namespace(), a.0.name()).cmp(&(b.0.namespace(), b.0.name())));
    selected.into_iter().map(|(r, ap)| policy(r, ap)).collect()
}

fn policy(r: &Resource, ap: &AuthorizationPolicy) -> AuthzPolicy {
    let name = format!("ns[{}]-policy[{}]", r.namespace(), r.name());
    let (action, rules) = match ap.action {
        // Fail closed: one rule that matches every request.
        istio::AuthzAction::Custom => (AuthzAction::Deny, vec![AuthzRule::default()]),
        istio::AuthzAction::Allow => (AuthzAction::Allow, rules(ap)),
        istio::AuthzAction::Deny => (AuthzAction::Deny, rules(ap)),
        istio::AuthzAction::Audit => (AuthzAction::Audit, rules(ap)),
    };
    AuthzPolicy {
        name,
        action,
        rules,
    }
}

fn rules(ap: &AuthorizationPolicy) -> Vec<AuthzRule> {
    ap.rules
        .iter()
        .map(|rule| AuthzRule {
            from: rule
                .from
                .iter()
                .map(|f| {
                    let s = &f.source;
                    AuthzSource {
                        principals: s.principals.clone(),
                        not_principals: s.not_principals.clone(),
                        request_principals: s.request_principals.clone(),
                        not_request_principals: s.not_request_principals.clone(),
                        namespaces: s.namespaces.clone(),
                        not_namespaces: s.not_namespaces.clone(),
                        ip_blocks: s.ip_blocks.clone(),
                        not_ip_blocks: s.not_ip_blocks.clone(),
                        remote_ip_blocks: s.remote_ip_blocks.clone(),
                        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
                    }
                })
                .collect(),
            to: rule
                .to
                .iter()
                .map(|t| {
                    let o = &t.operation;
                    AuthzOperation {
                        hosts: o.hosts.clone(),
                        not_hosts: o.not_hosts.clone(),
                        ports: o.ports.clone(),
                        not_ports: o.not_ports.clone(),
                        methods: o.methods.clone(),
                        not_methods: o.not_methods.clone(),
                        paths: o.paths.clone(),
                        not_paths: o.not_paths.clone(),
                    }
                })
                .collect(),
            when: rule
                .when
                .iter()
                .map(|c| AuthzCondition {
                    key: c.key.clone(),
                    values: c.values.clone(),
                    not_values: c.not_values.clone(),
                })
                .collect(),
        })
        .collect()
}

/// The authorization filter for an inbound listener serving workload port `port`; none when
/// no policy applies (the request path then has nothing to run).
pub fn filter(module: &PluginModule, port: u32, policies: &[AuthzPolicy]) -> Option<HttpFilter> {
    if policies.is_empty() {
        return None;
    }
    let config = AuthzConfig {
        port,
        policies: policies.to_vec(),
    };
    Some(HttpFilter {
        name: FILTER_NAME.into(),
        url: module.url.clone(),
        sha256: module.sha256.clone(),
        plugin_config: Some(serde_json::to_value(&config).expect("the config serializes")),
        plugin_name: String::new(),
        // Istio's RBAC filter: after the users' AUTHN and AUTHZ plugins, before STATS ones.
        phase: Phase::Authz,
        priority: i32::MIN,
        // A policy that cannot be judged must not let requests through.
        fail_strategy: FailStrategy::FailClose,
        vm_config: VmConfig::default(),
        applies_to: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_str;

    const POLICIES: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/bookinfo-productpage]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: CUSTOM
  provider: {name: my-ext-authz}
  rules: [{to: [{operation: {paths: [/x]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: foo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [not-an-ip]}}]}]
";

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_owned(), app.to_owned())].into()
    }

    #[test]
    fn policies_select_workloads_by_namespace_and_labels() {
        let resources = parse_str(POLICIES, None).resources;
        let names = |app: &str| {
            policies_for(&resources, "default", &labels(app))
                .into_iter()
                .map(|p| (p.name, p.action))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("reviews"),
            [
                (
                    "ns[default]-policy[allow-nothing]".into(),
                    AuthzAction::Allow
                ),
                (
                    "ns[default]-policy[reviews-viewer]".into(),
                    AuthzAction::Allow
                ),
                (
                    "ns[istio-system]-policy[deny-admin]".into(),
                    AuthzAction::Deny
                ),
            ]
        );
        // CUSTOM denies everything for the workloads it selects; the broken policy is out.
        let ratings = policies_for(&resources, "default", &labels("ratings"));
        let ext = ratings.iter().find(|p| p.name.contains("[ext]")).unwrap();
        assert_eq!(
            (ext.action, ext.rules.as_slice()),
            (AuthzAction::Deny, &[AuthzRule::default()][..])
        );
        assert!(!ratings.iter().any(|p| p.name.contains("broken")));
        assert_eq!(policies_for(&resources, "bar", &labels("x")).len(), 1);
    }

    #[test]
    fn validation_names_the_field() {
        let resources = parse_str(POLICIES, None).resources;
        let errors = |name: &str| {
            let r = resources.iter().find(|r| r.name() == name).unwrap();
            crate::translate::check(r)
                .into_iter()
                .filter(|d| d.is_error())
                .map(|d| d.field.unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert_eq!(errors("ext"), ["spec.action"]);
        assert_eq!(errors("broken"), ["spec.rules[0].from[0].source.ipBlocks"]);
        assert!(errors("reviews-viewer").is_empty());
        let bad = parse_str(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad}
spec:
  provider: {name: x}
  rules:
  - from: [{source: {}}]
    to: [{operation: {paths: [/a*b, '/x/{**}/y'], ports: ['0']}}]
    when: [{key: 'request.headers[x]'}, {key: source.bogus, values: [a]}]
",
            None,
        )
        .resources;
        let fields: Vec<String> = crate::translate::check(&bad[0])
            .into_iter()
            .filter(|d| d.is_error())
            .map(|d| d.field.unwrap_or_default())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.provider",
                "spec.rules[0].from[0].source",
                "spec.rules[0].to[0].operation.ports",
                "spec.rules[0].to[0].operation.paths",
                "spec.rules[0].to[0].operation.paths",
                "spec.rules[0].when[0]",
                "spec.rules[0].when[1].key",
            ]
        );
    }
}
