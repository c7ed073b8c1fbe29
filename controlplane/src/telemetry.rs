//! What a sidecar's bootstrap says for Istio's telemetry (`Bootstrap.telemetry`): the workload
//! it serves (the labels of Istio's metrics and the peer metadata it tells other sidecars), the
//! service behind each of its inbound clusters, and tracing.
//!
//! Tracing is configured as in Istio, by `Telemetry` resources and the mesh config (the
//! ConfigMap `istio-system/istio`):
//!
//! - The Telemetries that apply to a workload are, in this order, the mesh's (the first
//!   without a selector in the root namespace, `istio-system`), its namespace's (the first
//!   without a selector there) and its own (each one of its namespace whose
//!   `selector.matchLabels` its labels include). Istio takes the oldest of several; a
//!   directory has no creation times, so "first" is by name. `targetRefs` select gateways and
//!   waypoints, never a sidecar.
//! - Their `tracing[]` entries are merged field by field, later ones winning (Istio's
//!   `Telemetries.Tracing`): the mesh config's first `defaultProviders.tracing` is the
//!   provider to start with, an entry that names `providers` replaces it (by its first),
//!   `randomSamplingPercentage` and `disableSpanReporting` replace the value before.
//! - No Telemetry entry and no default provider: no tracing (`None`); nor with no provider
//!   at all after the merge, or with `disableSpanReporting: true` (Istio configures none: trace
//!   headers pass through untouched, so other workloads' spans keep their parents).
//! - The sampling percentage: the merged `randomSamplingPercentage`, else the mesh config's
//!   `defaultConfig.tracing.sampling` (0 meaning unset), else 1 (Istio's
//!   `PILOT_TRACE_SAMPLING`).
//! - An `opentelemetry` provider exports OTLP over gRPC to `http://<service>:<port>`
//!   (`[<namespace>/]` dropped from `service`), within its `grpc.timeout`. Other tracing
//!   providers (zipkin, datadog, ...) and OTLP over HTTP are reported; workloads traced with
//!   them make and propagate spans but export none.
//!
//! Diagnostics, beside the per-resource checks of the translation: a Telemetry that names a
//! provider the mesh config does not have (or one that does not trace) is an error and is
//! left out, so the workloads it selected keep the less specific configuration (Istio would
//! turn their tracing off); of two namespace-wide Telemetries in one namespace the second is
//! reported as shadowed.

use std::collections::{BTreeMap, BTreeSet};

use wasmesh_config::Dur;
use wasmesh_config::telemetry::{Otlp, ServiceRef, Tracing, Workload};

use crate::diag::{Diagnostic, code};
use crate::istio::{self, ExtensionProvider, MeshConfig};
use crate::manifests::{Resource, Spec};
use crate::plugins::ROOT_NAMESPACE;
use crate::sidecar::Node;
use crate::translate::Options;
use crate::translate::registry::{is_served, labels_match};

/// Istio's `CLUSTER_ID` when none is configured.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Istio's default sampling percentage (`PILOT_TRACE_SAMPLING`).
pub const DEFAULT_SAMPLING: f64 = 1.0;

/// How long an OTLP export may take when the provider does not say (`grpc.timeout`).
const DEFAULT_EXPORT_TIMEOUT: Dur = Dur::secs(5);

/// The workload `node` serves, as Istio's node metadata describes it.
pub fn workload(node: &Node, options: &Options) -> Workload {
    Workload {
        name: node.name.clone(),
        namespace: node.namespace.clone(),
        workload_name: workload_name(&node.name, &node.labels),
        service_account: node.service_account.clone(),
        principal: wasmesh_api::spiffe_id(
            &options.trust_domain,
            &node.namespace,
            &node.service_account,
        ),
        cluster_id: options.cluster_id.clone(),
        labels: node.labels.clone(),
    }
}

/// The workload a pod belongs to, as Istio names it (`WORKLOAD_NAME`: the label
/// `service.istio.io/workload-name`, else its controller by `GetDeployMetaFromPod`'s
/// heuristics), told from the pod's name and labels, since a sidecar's registration carries
/// no owner references:
///
/// - a Deployment's pod (`pod-template-hash` `h`, named `<deployment>-<h>-<suffix>`): the
///   Deployment; an Argo Rollout's (`rollouts-pod-template-hash`) likewise;
/// - an OpenShift DeploymentConfig's (`deploymentconfig`): that;
/// - a Job's (`batch.kubernetes.io/job-name` or `job-name`): the Job, or its CronJob when the
///   Job is named `<cronjob>-<8 to 10 digits>`;
/// - a StatefulSet's (`statefulset.kubernetes.io/pod-name`, named `<set>-<ordinal>`): the set;
/// - a DaemonSet's (`controller-revision-hash` and `pod-template-generation`, named
///   `<set>-<suffix>`): the set;
/// - anything else (a bare pod, a workload outside Kubernetes): its own name.
pub fn workload_name(pod: &str, labels: &BTreeMap<String, String>) -> String {
    let label = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if let Some(name) = label("service.istio.io/workload-name") {
        return name.to_owned();
    }
    for hash in ["pod-template-hash", "rollouts-pod-template-hash"] {
        if let Some(h) = label(hash)
            && let Some(i) = pod.rfind(&format!("-{h}-"))
            && i > 0
        {
            return pod[..i].to_owned();
        }
    }
    if let Some(dc) = label("deploymentconfig") {
        return dc.to_owned();
    }
    if let Some(job) = label("batch.kubernetes.io/job-name").or_else(|| label("job-name")) {
        return match job.rsplit_once('-') {
            Some((cron, stamp))
                if !cron.is_empty()
                    && (8..=10).contains(&stamp.len())
                    && stamp.bytes().all(|b| b.is_ascii_digit()) =>
            {
                cron.to_owned()
            }
            _ => job.to_owned(),
        };
    }
    let numbered = |suffix: &str| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit());
    if label("statefulset.kubernetes.io/pod-name") == Some(pod)
        && let Some((set, ordinal)) = pod.rsplit_once('-')
        && !set.is_empty()
        && numbered(ordinal)
    {
        return set.to_owned();
    }
    if label("controller-revision-hash").is_some()
        && label("pod-template-generation").is_some()
        && let Some((set, _)) = pod.rsplit_once('-')
        && !set.is_empty()
    {
        return set.to_owned();
    }
    pod.to_owned()
}

/// The service behind a workload's inbound port, as Istio's inbound clusters name it: of the
/// ServiceEntries of the workload's namespace whose `workloadSelector` matches its labels
/// (a Kubernetes Service is one), the ports that reach the workload at `port` (their
/// `targetPort`, else their number), the first host by name. `resources` are the valid ones.
pub fn inbound_service(
    resources: &[&Resource],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u32,
) -> Option<ServiceRef> {
    let mut hosts = BTreeSet::new();
    for r in resources.iter().filter(|r| r.namespace() == namespace) {
        let Spec::ServiceEntry(se) = &r.spec else {
            continue;
        };
        let Some(selector) = &se.workload_selector else {
            continue;
        };
        let reaches = se
            .ports
            .iter()
            .any(|p| is_served(p) && p.target_port.unwrap_or(p.number) == port);
        if !labels_match(&selector.labels, labels) || !reaches {
            continue;
        }
        for h in &se.hosts {
            let host = h.trim().to_ascii_lowercase();
            if !host.is_empty() && !host.contains('*') {
                hosts.insert(host);
            }
        }
    }
    let host = hosts.into_iter().next()?;
    Some(crate::translate::service_ref(&host, namespace))
}

/// The mesh's tracing configuration: its mesh config and the Telemetries that can apply
/// (valid, first of duplicates, naming providers that exist and trace).
pub struct MeshTracing<'a> {
    mesh: Option<&'a MeshConfig>,
    /// By namespace and name.
    telemetries: Vec<(&'a Resource, &'a istio::Telemetry)>,
}

impl<'a> MeshTracing<'a> {
    /// From the mesh's resources, all of them (the ones with errors are left out here).
    pub fn new(resources: &'a [Resource]) -> MeshTracing<'a> {
        let mut seen = BTreeSet::new();
        let valid: Vec<&Resource> = resources
            .iter()
            .filter(|r| matches!(r.spec, Spec::Telemetry(_) | Spec::MeshConfig(_)))
            .filter(|r| seen.insert((r.kind(), r.namespace(), r.name())))
            .filter(|r| !crate::translate::check(r).iter().any(Diagnostic::is_error))
            .collect();
        Self::of_valid(&valid).0
    }

    /// From valid resources (first of duplicates only): the configuration, and what is wrong
    /// between them (a provider not found, a shadowed Telemetry).
    fn of_valid(valid: &[&'a Resource]) -> (MeshTracing<'a>, Vec<Diagnostic>) {
        let mesh = valid.iter().find_map(|r| match &r.spec {
            Spec::MeshConfig(m) => Some(m),
            _ => None,
        });
        let mut diags = Vec::new();
        let mut telemetries: Vec<(&Resource, &istio::Telemetry)> = valid
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Telemetry(t) => Some((*r, t)),
                _ => None,
            })
            .collect();
        telemetries
            .sort_by(|a, b| (a.0.namespace(), a.0.name()).cmp(&(b.0.namespace(), b.0.name())));
        telemetries.retain(|(r, t)| {
            let found = providers_found(r, t, mesh);
            let ok = !found.iter().any(Diagnostic::is_error);
            diags.extend(found);
            ok
        });
        let mut wide = BTreeMap::new();
        for (r, t) in &telemetries {
            if !namespace_wide(t) {
                continue;
            }
            if let Some(first) = wide.insert(r.namespace(), r.name()) {
                wide.insert(r.namespace(), first);
                diags.push(r.diag(Diagnostic::warning(
                    code::SHADOWED,
                    format!(
                        "Telemetry {first}.{ns} also applies to the whole namespace {ns} and comes \
                         first (Istio takes the oldest; without creation times, the first by \
                         name): this one is ignored",
                        ns = r.namespace()
                    ),
                )));
            }
        }
        (MeshTracing { mesh, telemetries }, diags)
    }

    /// The provider named `name` (Istio matches names ignoring case).
    fn provider(&self, name: &str) -> Option<&'a ExtensionProvider> {
        provider(self.mesh, name)
    }

    /// The Telemetries that apply to a workload of `namespace` with `labels`, least specific
    /// first.
    fn applicable(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&'a istio::Telemetry> {
        let wide = |ns: &str| {
            self.telemetries
                .iter()
                .find(|(r, t)| r.namespace() == ns && namespace_wide(t))
                .map(|(_, t)| *t)
        };
        let mut out: Vec<&istio::Telemetry> = wide(ROOT_NAMESPACE).into_iter().collect();
        if namespace != ROOT_NAMESPACE {
            out.extend(wide(namespace));
        }
        out.extend(
            self.telemetries
                .iter()
                .filter(|(r, t)| {
                    r.namespace() == namespace
                        && targets(t) == 0
                        && t.selector.as_ref().is_some_and(|s| {
                            !s.match_labels.is_empty() && labels_match(&s.match_labels, labels)
                        })
                })
                .map(|(_, t)| *t),
        );
        out
    }

    /// The tracing of a workload of `namespace` with `labels`; None: no span is made.
    pub fn tracing(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Option<Tracing> {
        let entries: Vec<&istio::Tracing> = self
            .applicable(namespace, labels)
            .into_iter()
            .flat_map(|t| &t.tracing)
            .collect();
        let defaults = self
            .mesh
            .and_then(|m| m.default_providers.as_ref())
            .map_or(&[][..], |d| d.tracing.as_slice());
        if entries.is_empty() && defaults.is_empty() {
            return None;
        }
        let mut chosen = defaults.first().and_then(|name| self.provider(name));
        let mut disabled = false;
        let mut sampling = None;
        for e in entries {
            if let Some(first) = e.providers.first() {
                chosen = self.provider(&first.name);
            }
            if let Some(d) = e.disable_span_reporting {
                disabled = d;
            }
            if let Some(s) = e.random_sampling_percentage {
                sampling = Some(s);
            }
        }
        let chosen = chosen?;
        if disabled {
            return None;
        }
        Some(Tracing {
            sampling: sampling.unwrap_or_else(|| default_sampling(self.mesh)),
            otlp: otlp(chosen),
        })
    }
}

/// Cross-resource checks of Telemetries and the mesh config, in the translation's
/// diagnostics; `valid` are the resources without errors, first of duplicates only.
pub(crate) fn check(valid: &[&Resource]) -> Vec<Diagnostic> {
    MeshTracing::of_valid(valid).1
}

/// The mesh config in effect among `resources`: the first that validates.
fn mesh_in(resources: &[Resource]) -> Option<&MeshConfig> {
    resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::MeshConfig(_)))
        .find(|r| !crate::translate::check(r).iter().any(Diagnostic::is_error))
        .and_then(|r| match &r.spec {
            Spec::MeshConfig(m) => Some(m),
            _ => None,
        })
}

/// The Telemetries of `resources` (by index) that validate but name a provider their mesh
/// config lacks (or one that does not trace), with those errors: a source keeps their last
/// good versions, as for any resource that turns bad.
pub fn unresolved(resources: &[Resource]) -> Vec<(usize, Vec<Diagnostic>)> {
    let mesh = mesh_in(resources);
    resources
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.spec {
            Spec::Telemetry(t) => Some((i, r, t)),
            _ => None,
        })
        .filter(|(_, r, _)| !crate::translate::check(r).iter().any(Diagnostic::is_error))
        .filter_map(|(i, r, t)| {
            let errors: Vec<Diagnostic> = providers_found(r, t, mesh)
                .into_iter()
                .filter(Diagnostic::is_error)
                .collect();
            (!errors.is_empty()).then_some((i, errors))
        })
        .collect()
}

/// Whether a Telemetry's providers are all in the mesh config of `resources`.
pub fn resolves(resources: &[Resource], telemetry: &Resource) -> bool {
    let Spec::Telemetry(t) = &telemetry.spec else {
        return true;
    };
    !providers_found(telemetry, t, mesh_in(resources))
        .iter()
        .any(Diagnostic::is_error)
}

/// Without a selector or targetRefs: for its whole namespace (in the root namespace, the
/// mesh).
fn namespace_wide(t: &istio::Telemetry) -> bool {
    targets(t) == 0
        && t.selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
}

fn targets(t: &istio::Telemetry) -> usize {
    t.target_refs.len() + usize::from(t.target_ref.is_some())
}

fn provider<'a>(mesh: Option<&'a MeshConfig>, name: &str) -> Option<&'a ExtensionProvider> {
    mesh?
        .extension_providers
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
}

/// The errors of a Telemetry's provider names: each must name a tracing provider of the
/// mesh config.
fn providers_found(
    r: &Resource,
    t: &istio::Telemetry,
    mesh: Option<&MeshConfig>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, e) in t.tracing.iter().enumerate() {
        // Istio uses the first provider of an entry only.
        let Some(p) = e.providers.first() else {
            continue;
        };
        let field = format!("spec.tracing[{i}].providers[0].name");
        match provider(mesh, &p.name) {
            None => {
                let hint = match mesh {
                    None => format!(
                        " (there is no mesh config: the ConfigMap {}/{} with `data.mesh`)",
                        istio::MESH_CONFIG_MAP.0,
                        istio::MESH_CONFIG_MAP.1
                    ),
                    Some(_) => " in the mesh config's extensionProviders".into(),
                };
                out.push(
                    r.diag(
                        Diagnostic::error(
                            code::REFERENCED_RESOURCE_NOT_FOUND,
                            format!(
                                "Referenced provider not found: {:?}{hint}: the Telemetry is \
                                 left out",
                                p.name
                            ),
                        )
                        .at(field),
                    ),
                );
            }
            Some(found) => {
                if !found.traces() {
                    let kind = found.kinds().first().copied().unwrap_or("no");
                    out.push(
                        r.diag(
                            Diagnostic::error(
                                code::SCHEMA_VALIDATION_ERROR,
                                format!(
                                    "Schema validation error: {field}: provider {:?} is a {kind} \
                                     provider, which does not trace: the Telemetry is left out",
                                    p.name
                                ),
                            )
                            .at(field),
                        ),
                    );
                }
            }
        }
    }
    out
}

/// `defaultConfig.tracing.sampling` where set (and not 0), else Istio's default.
fn default_sampling(mesh: Option<&MeshConfig>) -> f64 {
    mesh.and_then(|m| m.default_config.as_ref())
        .and_then(|c| c.tracing.as_ref())
        .and_then(|t| t.sampling)
        .filter(|s| *s != 0.0)
        .unwrap_or(DEFAULT_SAMPLING)
}

/// Where an OpenTelemetry provider's spans go (OTLP over gRPC); None for any other provider
/// and for OTLP over HTTP.
fn otlp(p: &ExtensionProvider) -> Option<Otlp> {
    let o = p.opentelemetry.as_ref().filter(|o| o.http.is_none())?;
    Some(Otlp {
        endpoint: otlp_endpoint(&o.service, o.port),
        timeout: o
            .grpc
            .as_ref()
            .and_then(|g| g.timeout.as_deref())
            .and_then(|t| crate::duration::parse(t).ok())
            .map_or(DEFAULT_EXPORT_TIMEOUT, Dur),
    })
}

/// `http://<host>:<port>` for a provider's `[<namespace>/]<host>` service.
pub fn otlp_endpoint(service: &str, port: u32) -> String {
    let host = service.rsplit_once('/').map_or(service, |(_, h)| h).trim();
    if host.contains(':') && !host.starts_with('[') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

#[cfg(test)]
mod tests;
