//! The operator's commands: `proxy-status` and `proxy-config` ask a running control plane;
//! `analyze` checks a directory of manifests offline, as `istioctl analyze` does.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use wasmesh_api as api;
use wasmesh_controlplane::diag::code;
use wasmesh_controlplane::manifests::{self, Resource, Spec};
use wasmesh_controlplane::{Diagnostic, Level, Options, translate_loaded};

pub(crate) async fn channel(address: &str) -> anyhow::Result<tonic::transport::Channel> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    tonic::transport::Endpoint::from_shared(uri.clone())?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {uri}"))
}

/// Every connected proxy and its sync state, as a table (istioctl proxy-status's columns).
pub async fn proxy_status(address: &str) -> anyhow::Result<(String, api::ProxyStatusReply)> {
    let mut admin = api::mesh_admin_client::MeshAdminClient::new(channel(address).await?);
    let reply = admin
        .proxy_status(api::ProxyStatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("proxy-status: {}", s.message()))?
        .into_inner();
    let mut rows = vec![[
        "NAME".to_owned(),
        "STATE".into(),
        "SENT".into(),
        "ACKED".into(),
        "OUTBOUND".into(),
        "CONNECTED".into(),
    ]];
    for p in &reply.proxies {
        rows.push([
            p.id.clone(),
            p.state.clone(),
            p.sent_version.clone(),
            p.acked_version.clone(),
            p.outbound_address.clone(),
            format!("{}s", p.connected_seconds),
        ]);
    }
    let mut out = table(&rows);
    for p in reply.proxies.iter().filter(|p| !p.error.is_empty()) {
        let _ = writeln!(out, "{} NACKED: {}", p.id, p.error);
    }
    if !reply.diagnostics.is_empty() {
        let _ = writeln!(out, "\nconfiguration diagnostics:");
        for d in &reply.diagnostics {
            let _ = writeln!(out, "  {d}");
        }
    }
    Ok((out, reply))
}

/// A proxy's config: listeners (with their plugins), routes and clusters; or the bootstrap
/// itself as JSON.
pub async fn proxy_config(address: &str, id: &str, json: bool) -> anyhow::Result<String> {
    let mut admin = api::mesh_admin_client::MeshAdminClient::new(channel(address).await?);
    let reply = admin
        .proxy_config(api::ProxyConfigRequest { id: id.to_owned() })
        .await
        .map_err(|s| anyhow::anyhow!("proxy-config {id}: {}", s.message()))?
        .into_inner();
    let bootstrap: wasmesh_proxy::config::Bootstrap =
        serde_json::from_str(&reply.bootstrap_json)
            .context("the control plane sent a config this wasmesh cannot read")?;
    if json {
        let value: serde_json::Value = serde_json::from_str(&reply.bootstrap_json)?;
        return Ok(serde_json::to_string_pretty(&value)? + "\n");
    }
    let mut out = format!("version {}\n\nLISTENERS\n", reply.version);
    let mut rows = vec![["NAME".to_owned(), "ADDRESS".into(), "PLUGINS".into()]];
    for l in &bootstrap.listeners {
        let plugins: Vec<&str> = l.http_filters.iter().map(|f| f.name.as_str()).collect();
        rows.push([l.name.clone(), l.address.clone(), plugins.join(", ")]);
    }
    out += &table(&rows);
    out += "\nROUTES\n";
    let mut rows = vec![[
        "LISTENER".to_owned(),
        "DOMAINS".into(),
        "MATCH".into(),
        "CLUSTER".into(),
    ]];
    for l in &bootstrap.listeners {
        for vh in &l.virtual_hosts {
            for r in &vh.routes {
                let m = r
                    .matcher
                    .path
                    .clone()
                    .or(r.matcher.prefix.as_ref().map(|p| format!("{p}*")))
                    .unwrap_or_else(|| "/*".into());
                let domains = if vh.domains.len() > 3 {
                    format!(
                        "{} +{} more",
                        vh.domains[..3].join(","),
                        vh.domains.len() - 3
                    )
                } else {
                    vh.domains.join(",")
                };
                rows.push([l.name.clone(), domains, m, r.cluster.clone()]);
            }
        }
    }
    out += &table(&rows);
    out += "\nCLUSTERS\n";
    let mut rows = vec![["NAME".to_owned(), "PROTOCOL".into(), "ENDPOINTS".into()]];
    for c in &bootstrap.clusters {
        rows.push([
            c.name.clone(),
            format!("{:?}", c.protocol).to_lowercase(),
            c.endpoints.join(", "),
        ]);
    }
    out += &table(&rows);
    Ok(out)
}

/// What `wasmesh analyze` found.
pub struct Analysis {
    pub diagnostics: Vec<Diagnostic>,
}

impl Analysis {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// istioctl's text form, one finding per line; a line saying so when there is none.
    pub fn text(&self) -> String {
        if self.diagnostics.is_empty() {
            return "✔ No validation issues found when analyzing the manifests.\n".into();
        }
        self.diagnostics.iter().map(|d| format!("{d}\n")).collect()
    }

    /// istioctl's `-o json` shape: `[{code, level, origin, reference, message}]`.
    pub fn json(&self) -> serde_json::Value {
        self.diagnostics
            .iter()
            .map(|d| {
                serde_json::json!({
                    "code": d.code,
                    "level": match d.level {
                        Level::Error => "Error",
                        Level::Warning => "Warning",
                        Level::Info => "Info",
                    },
                    "origin": d.origin(),
                    "reference": d.file.as_ref().map(|f| match d.line {
                        Some(l) => format!("{}:{l}", f.display()),
                        None => f.display().to_string(),
                    }),
                    "message": d.message,
                })
            })
            .collect()
    }
}

/// Analyzes the manifests in `path` (a file or a directory) as the control plane would
/// translate them, with hints for surprises Istio users meet.
pub fn analyze(path: &Path, options: &Options) -> anyhow::Result<Analysis> {
    let loaded = manifests::load_path(path)?;
    let t = translate_loaded(&loaded, options);
    let mut diagnostics = t.diagnostics;
    short_host_hints(&loaded.resources, &mut diagnostics);
    wasm_plugins_selecting_nothing(&loaded.resources, &mut diagnostics);
    Ok(Analysis { diagnostics })
}

/// A VirtualService or DestinationRule host written short (`reviews`) is read as
/// `reviews.<namespace>.svc.cluster.local`, but a ServiceEntry host is taken as written: a
/// ServiceEntry for `reviews` is never matched by it.
fn short_host_hints(resources: &[Resource], diags: &mut Vec<Diagnostic>) {
    let short_entries: BTreeSet<(&str, &str)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::ServiceEntry(se) => Some((r, se)),
            _ => None,
        })
        .flat_map(|(r, se)| {
            se.hosts
                .iter()
                .filter(|h| !h.contains('.') && h.as_str() != "*")
                .map(move |h| (r.name(), h.as_str()))
        })
        .collect();
    for r in resources {
        let hosts: Vec<&String> = match &r.spec {
            Spec::VirtualService(vs) => vs.hosts.iter().collect(),
            Spec::DestinationRule(dr) => vec![&dr.host],
            _ => continue,
        };
        for host in hosts {
            if host.contains('.') {
                continue;
            }
            if let Some((entry, _)) = short_entries.iter().find(|(_, h)| *h == host) {
                diags.push(r.diag(Diagnostic::info(
                    code::SHORT_SERVICE_ENTRY_HOST,
                    format!(
                        "Host {host:?} is read as {host}.{}.svc.cluster.local, but ServiceEntry {entry} \
                         declares the short host {host:?}, which Istio does not expand: write the \
                         full name in the ServiceEntry",
                        r.namespace()
                    ),
                )));
            }
        }
    }
}

/// A WasmPlugin whose selector or targetRefs match no workload known from the manifests
/// (WorkloadEntries and ServiceEntries' selectors). Sidecars registering at run time may
/// still match it: a warning, not an error.
fn wasm_plugins_selecting_nothing(resources: &[Resource], diags: &mut Vec<Diagnostic>) {
    let label_sets: Vec<(&str, &std::collections::BTreeMap<String, String>)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::WorkloadEntry(w) => Some((r.namespace(), &w.labels)),
            Spec::ServiceEntry(se) => se
                .workload_selector
                .as_ref()
                .map(|s| (r.namespace(), &s.labels)),
            _ => None,
        })
        .collect();
    let all: Vec<&Resource> = resources.iter().collect();
    for r in resources {
        let Spec::WasmPlugin(wp) = &r.spec else {
            continue;
        };
        let narrowed =
            wp.selector.is_some() || !wp.target_refs.is_empty() || wp.target_ref.is_some();
        if !narrowed {
            continue;
        }
        let selects_some = label_sets.iter().any(|(ns, labels)| {
            let w = wasmesh_controlplane::plugins::Workload {
                namespace: ns,
                labels,
            };
            wasmesh_controlplane::plugins::selects(r, wp, &w, &all)
        });
        if !selects_some {
            let what = if wp.selector.is_some() {
                "spec.selector"
            } else {
                "spec.targetRefs"
            };
            diags.push(
                r.diag(
                    Diagnostic::warning(
                        code::SELECTS_NOTHING,
                        "This WasmPlugin selects no workload known from the manifests",
                    )
                    .at(what),
                ),
            );
        }
    }
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (w, cell)) in widths.iter().zip(row).enumerate() {
            if i + 1 == N {
                line += cell;
            } else {
                let _ = write!(line, "{cell:<w$}   ");
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}
