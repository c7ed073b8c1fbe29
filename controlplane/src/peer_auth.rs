//! PeerAuthentication: which TLS a workload's sidecar accepts on each of its ports, by
//! Istio's rules. The most specific policy wins: a workload's own (selecting its labels; its
//! `portLevelMtls` for the port, else its `mtls`), then its namespace's (no selector), then
//! the mesh's (no selector, in the root namespace); UNSET inherits from the next one out, and
//! with no policy at all the mode is PERMISSIVE. Where several policies tie, Istio takes the
//! oldest; a directory has no creation times, so the first by name is taken.

use std::collections::BTreeMap;

use crate::istio::{MtlsMode, PeerAuthentication};
use crate::manifests::{Resource, Spec};
use crate::plugins::ROOT_NAMESPACE;

/// The mode for `port` of a workload in `namespace` with `labels`, never UNSET.
/// `resources` are the valid ones.
pub fn inbound_mode(
    resources: &[&Resource],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u32,
) -> MtlsMode {
    mode(resources, namespace, labels, Some(port))
}

/// The mode for the ports of a workload no listener serves (passed through to the
/// workload): its policies' `mtls`, never their `portLevelMtls`, which Istio applies only to
/// ports it has a listener for.
pub fn passthrough_mode(
    resources: &[&Resource],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> MtlsMode {
    mode(resources, namespace, labels, None)
}

fn mode(
    resources: &[&Resource],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: Option<u32>,
) -> MtlsMode {
    let mut policies: Vec<(&Resource, &PeerAuthentication)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::PeerAuthentication(pa) => Some((*r, pa)),
            _ => None,
        })
        .collect();
    policies.sort_by(|a, b| a.0.name().cmp(b.0.name()));
    let wide = |pa: &PeerAuthentication| {
        pa.selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
    };
    let first = |ns: &str, pick: &dyn Fn(&PeerAuthentication) -> bool| {
        policies
            .iter()
            .find(|(r, pa)| r.namespace() == ns && pick(pa))
            .map(|(_, pa)| *pa)
    };
    let workload = first(namespace, &|pa| {
        !wide(pa)
            && pa
                .selector
                .as_ref()
                .is_some_and(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
    });
    let namespace_wide = first(namespace, &wide);
    let mesh = first(ROOT_NAMESPACE, &wide);
    let mode_of = |pa: Option<&PeerAuthentication>| {
        pa.and_then(|pa| pa.mtls.as_ref())
            .map_or(MtlsMode::Unset, |m| m.mode)
    };
    let port_mode = workload
        .zip(port)
        .and_then(|(pa, port)| pa.port_level_mtls.get(&port))
        .map_or(MtlsMode::Unset, |m| m.mode);
    [
        port_mode,
        mode_of(workload),
        mode_of(namespace_wide),
        mode_of(mesh),
    ]
    .into_iter()
    .find(|m| *m != MtlsMode::Unset)
    .unwrap_or(MtlsMode::Permissive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests;

    fn load(yaml: &str) -> Vec<Resource> {
        let loaded = manifests::parse_str(yaml, None);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        loaded.resources
    }

    fn inbound_mode(
        resources: &[Resource],
        namespace: &str,
        labels: &BTreeMap<String, String>,
        port: u32,
    ) -> MtlsMode {
        let refs: Vec<&Resource> = resources.iter().collect();
        super::inbound_mode(&refs, namespace, labels, port)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_most_specific_policy_wins_and_unset_inherits() {
        let app = labels(&[("app", "reviews")]);
        assert_eq!(
            inbound_mode(&[], "default", &app, 9080),
            MtlsMode::Permissive
        );
        // Istio's task: mesh-wide STRICT, a namespace PERMISSIVE, a workload DISABLE on one
        // port.
        let r = load(
            "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec:
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: UNSET}
  portLevelMtls:
    8080: {mode: DISABLE}
",
        );
        assert_eq!(inbound_mode(&r, "default", &app, 9080), MtlsMode::Strict);
        assert_eq!(inbound_mode(&r, "default", &app, 8080), MtlsMode::Disable);
        let other = labels(&[("app", "ratings")]);
        assert_eq!(inbound_mode(&r, "default", &other, 8080), MtlsMode::Strict);
        assert_eq!(inbound_mode(&r, "legacy", &app, 9080), MtlsMode::Permissive);
        // A PeerAuthentication in another namespace selects nothing here.
        assert_eq!(inbound_mode(&r, "legacy", &app, 8080), MtlsMode::Permissive);
        // Ports no listener serves take the policies' `mtls`, never a `portLevelMtls` (Istio
        // has no filter chain for them to carry it): 8080's DISABLE does not reach them.
        let refs: Vec<&Resource> = r.iter().collect();
        assert_eq!(passthrough_mode(&refs, "default", &app), MtlsMode::Strict);
        assert_eq!(
            passthrough_mode(&refs, "legacy", &app),
            MtlsMode::Permissive
        );
        assert_eq!(passthrough_mode(&[], "default", &app), MtlsMode::Permissive);
    }
}
