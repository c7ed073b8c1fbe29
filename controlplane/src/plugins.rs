//! WasmPlugins: where a module comes from, which workloads and which direction a plugin
//! applies to, and the HTTP filter it becomes in a sidecar's listener.

use std::collections::BTreeMap;

use wasmesh_config::filters::{EnvSource, EnvVar, FailStrategy, HttpFilter, Phase, VmConfig};

use crate::istio::{self, WasmPlugin, WorkloadMode};
use crate::manifests::{Resource, Spec};

/// Istio's root namespace: a WasmPlugin there applies to every namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// A WasmPlugin's `url`, as far as the control plane reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleUrl {
    /// A path or `file://`: the control plane reads it and ships it to proxies by sha256.
    File(std::path::PathBuf),
    /// `http://` or `https://`: the control plane downloads it and ships it by sha256,
    /// checked against `sha256` (required over plaintext; over TLS the server's certificate
    /// vouches for it).
    Http(String),
    /// `oci://`: an image in a registry, pulled by the control plane (`images`).
    Oci(String),
}

impl ModuleUrl {
    /// Reads a url; `Err` is the reason it cannot be used.
    pub fn parse(url: &str) -> Result<ModuleUrl, String> {
        let url = url.trim();
        if url.is_empty() {
            return Err("a module url is required".into());
        }
        if let Some(rest) = url.strip_prefix("file://") {
            return Ok(ModuleUrl::File(rest.into()));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(ModuleUrl::Http(url.to_owned()));
        }
        if url.starts_with("oci://") {
            crate::images::reference(url).map_err(|e| e.to_string())?;
            return Ok(ModuleUrl::Oci(url.to_owned()));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(format!("{url:?}: unknown scheme {scheme:?}"));
        }
        Ok(ModuleUrl::File(url.into()))
    }
}

/// Which side of a sidecar a filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The outbound listener: requests the workload sends.
    Client,
    /// An inbound listener (`port`: the workload's port): requests the workload receives.
    Server { port: u32 },
}

/// A workload as WasmPlugins select it.
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// The label Istio puts on the gateway it deploys for a Gateway API Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Whether `wp` (in `namespace`) applies to `workload`. `services` are the ServiceEntries
/// that `targetRefs` may name, with their workload selectors.
pub fn selects(
    wp_resource: &Resource,
    wp: &WasmPlugin,
    workload: &Workload,
    all: &[&Resource],
) -> bool {
    let ns = wp_resource.namespace();
    if ns != ROOT_NAMESPACE && ns != workload.namespace {
        return false;
    }
    let refs: Vec<&istio::PolicyTargetReference> =
        wp.target_refs.iter().chain(&wp.target_ref).collect();
    if !refs.is_empty() {
        return refs.iter().any(|t| {
            let t_ns = t.namespace.as_deref().unwrap_or(ns);
            // A Gateway API Gateway: the gateway deployed for it carries its name.
            if t.kind == "Gateway" {
                return t_ns == workload.namespace
                    && workload.labels.get(GATEWAY_NAME_LABEL) == Some(&t.name);
            }
            matches!(t.kind.as_str(), "Service" | "ServiceEntry")
                && t_ns == workload.namespace
                && all.iter().any(|r| {
                    r.namespace() == t_ns
                        && r.name() == t.name
                        && matches!(&r.spec, Spec::ServiceEntry(se)
                        if se.workload_selector.as_ref().is_some_and(|s| {
                            labels_match(&s.labels, workload.labels)
                        }))
                })
        });
    }
    match &wp.selector {
        Some(s) => labels_match(&s.match_labels, workload.labels),
        None => true,
    }
}

/// Whether the plugin's `match` lets it see traffic in `direction`. Without `match` a
/// sidecar runs it on inbound traffic only (Istio's default for sidecars); a selector with
/// mode UNDEFINED (or none) means client and server.
pub fn matches_direction(wp: &WasmPlugin, direction: Direction) -> bool {
    if wp.match_.is_empty() {
        return matches!(direction, Direction::Server { .. });
    }
    wp.match_.iter().any(|m| {
        let mode = m.mode.unwrap_or(WorkloadMode::Undefined);
        let side = match direction {
            Direction::Client => mode != WorkloadMode::Server,
            Direction::Server { .. } => mode != WorkloadMode::Client,
        };
        let port = match direction {
            // The outbound listener carries every destination port and cannot tell them
            // apart for a plugin: a selector with ports applies to inbound traffic only.
            Direction::Client => m.ports.is_empty(),
            Direction::Server { port } => {
                m.ports.is_empty() || m.ports.iter().any(|p| p.number == port)
            }
        };
        side && port
    })
}

fn labels_match(wanted: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// The filter for a WasmPlugin whose module is at `url` with `sha256`. Its name is
/// `<namespace>.<name>`, as Istio names the plugin's extension config.
pub fn filter(r: &Resource, wp: &WasmPlugin, url: String, sha256: Option<String>) -> HttpFilter {
    HttpFilter {
        name: format!("{}.{}", r.namespace(), r.name()),
        url,
        sha256,
        plugin_config: wp.plugin_config.clone(),
        plugin_name: wp.plugin_name.clone().unwrap_or_default(),
        phase: match wp.phase {
            Some(istio::PluginPhase::Authn) => Phase::Authn,
            Some(istio::PluginPhase::Authz) => Phase::Authz,
            Some(istio::PluginPhase::Stats) => Phase::Stats,
            Some(istio::PluginPhase::UnspecifiedPhase) | None => Phase::UnspecifiedPhase,
        },
        priority: wp.priority.unwrap_or(0),
        fail_strategy: match wp.fail_strategy {
            Some(istio::PluginFailStrategy::FailOpen) => FailStrategy::FailOpen,
            Some(istio::PluginFailStrategy::FailReload) => FailStrategy::FailReload,
            Some(istio::PluginFailStrategy::FailClose) | None => FailStrategy::FailClose,
        },
        vm_config: VmConfig {
            env: wp
                .vm_config
                .iter()
                .flat_map(|v| &v.env)
                .map(|e| EnvVar {
                    name: e.name.clone(),
                    value: e.value.clone(),
                    value_from: match e.value_from {
                        Some(istio::PluginEnvSource::Host) => EnvSource::Host,
                        _ => EnvSource::Inline,
                    },
                })
                .collect(),
            ..VmConfig::default()
        },
        applies_to: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            ModuleUrl::parse("file:///a/b.wasm"),
            Ok(ModuleUrl::File("/a/b.wasm".into()))
        );
        assert_eq!(
            ModuleUrl::parse("plugins/b.wasm"),
            Ok(ModuleUrl::File("plugins/b.wasm".into()))
        );
        assert!(matches!(
            ModuleUrl::parse("http://h/b.wasm"),
            Ok(ModuleUrl::Http(_))
        ));
        assert!(matches!(
            ModuleUrl::parse("https://h/b.wasm"),
            Ok(ModuleUrl::Http(_))
        ));
        assert_eq!(
            ModuleUrl::parse("oci://r.io/p:1"),
            Ok(ModuleUrl::Oci("oci://r.io/p:1".into()))
        );
        assert!(ModuleUrl::parse("oci://r.io/P:1").is_err());
        assert!(ModuleUrl::parse("ftp://x").unwrap_err().contains("ftp"));
        assert!(ModuleUrl::parse(" ").is_err());
    }

    #[test]
    fn directions() {
        let mut wp = WasmPlugin::default();
        assert!(!matches_direction(&wp, Direction::Client));
        assert!(matches_direction(&wp, Direction::Server { port: 80 }));
        wp.match_ = vec![istio::TrafficSelector {
            mode: Some(WorkloadMode::Server),
            ports: vec![istio::PortSelector { number: 9080 }],
        }];
        assert!(matches_direction(&wp, Direction::Server { port: 9080 }));
        assert!(!matches_direction(&wp, Direction::Server { port: 80 }));
        assert!(!matches_direction(&wp, Direction::Client));
        // Ports select inbound traffic only; without them, both sides.
        wp.match_[0].mode = Some(WorkloadMode::ClientAndServer);
        assert!(!matches_direction(&wp, Direction::Client));
        wp.match_[0].ports.clear();
        assert!(matches_direction(&wp, Direction::Client));
        assert!(matches_direction(&wp, Direction::Server { port: 80 }));
    }
}
