//! The Gateway API's status, as Kubernetes users expect it: `status.conditions` and
//! `status.listeners` of the Gateways of our classes, our entries (`controllerName:
//! istio.io/gateway-controller`) of HTTPRoutes' `status.parents`. Computed by
//! [`gateway_api::to_istio`] from the source's state, the same conversion the mesh runs.
//!
//! Only the Lease's holder writes, only what changed: each object is read first (its
//! conditions' `lastTransitionTime` kept where their status did not change, other
//! controllers' parents kept), then patched through the status subresource with its
//! `resourceVersion` (a conflict is retried), at most once a second per object.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wasmesh_controlplane::gateway_api::{
    self, CONTROLLER_NAME, Condition, GatewayStatus, ParentReference, RouteStatus,
};
use wasmesh_controlplane::source::SourceState;

use super::{MANAGER, MIN_INTERVAL, backoff, sleep_until, within};
use crate::lease::has_code;
use crate::source::{IstioObjects, watched_kind};

/// An object: Gateway or HTTPRoute, namespace, name.
type Key = (&'static str, String, String);

/// Writes the Gateway API status of what `state` holds while `leader` is true. `objects`
/// gives each object's generation (`observedGeneration`). Ends when a sender closes.
pub fn start(
    client: Client,
    leader: watch::Receiver<bool>,
    state: watch::Receiver<Arc<SourceState>>,
    objects: watch::Receiver<Arc<IstioObjects>>,
    domain_suffix: String,
) -> JoinHandle<()> {
    tokio::spawn(run(client, leader, state, objects, domain_suffix))
}

async fn run(
    client: Client,
    mut leader: watch::Receiver<bool>,
    mut state: watch::Receiver<Arc<SourceState>>,
    mut objects: watch::Receiver<Arc<IstioObjects>>,
    domain_suffix: String,
) {
    // What each object's status was last made to be (ours, without times).
    let mut written: HashMap<Key, Value> = HashMap::new();
    let mut next: HashMap<Key, (Instant, u32)> = HashMap::new();
    let mut leading = false;
    loop {
        if *leader.borrow_and_update() != leading {
            leading = !leading;
            // What another holder wrote is unknown: read again before writing.
            written.clear();
            next.clear();
        }
        let mut wake: Option<Instant> = None;
        if leading {
            let wanted = {
                let state = state.borrow_and_update().clone();
                let objects = objects.borrow_and_update().clone();
                desired(&state, &objects, &domain_suffix)
            };
            for (key, want) in &wanted {
                if written.get(key) == Some(want) {
                    continue;
                }
                if let Some((at, _)) = next.get(key)
                    && *at > Instant::now()
                {
                    wake = Some(wake.map_or(*at, |w| w.min(*at)));
                    continue;
                }
                if !*leader.borrow() {
                    break;
                }
                match write(&client, key, want).await {
                    Ok(()) => {
                        written.insert(key.clone(), want.clone());
                        next.insert(key.clone(), (Instant::now() + MIN_INTERVAL, 0));
                    }
                    Err(e) => {
                        let failures = next.get(key).map_or(0, |(_, n)| *n) + 1;
                        if has_code(&e, 404) {
                            tracing::debug!(object = ?key, "no status written: the object does not exist");
                            written.insert(key.clone(), want.clone());
                        } else if has_code(&e, 409) {
                            tracing::debug!(object = ?key, "status conflict; retrying");
                        } else {
                            tracing::warn!(object = ?key, error = %e, "cannot write status");
                        }
                        let at = Instant::now() + backoff(failures);
                        next.insert(key.clone(), (at, failures));
                        wake = Some(wake.map_or(at, |w| w.min(at)));
                    }
                }
            }
            written.retain(|k, _| wanted.contains_key(k));
        }
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { return },
            changed = state.changed() => if changed.is_err() { return },
            changed = objects.changed() => if changed.is_err() { return },
            () = sleep_until(wake), if wake.is_some() => {}
        }
    }
}

/// Each object's status as ours should be: a Gateway's `{conditions, listeners}`, an
/// HTTPRoute's `{parents}` (ours only; empty removes ours). Objects the API does not hold (or
/// not at the state's generation) are left out.
fn desired(
    state: &SourceState,
    objects: &IstioObjects,
    domain_suffix: &str,
) -> BTreeMap<Key, Value> {
    let mut out = BTreeMap::new();
    if objects.generation != state.generation {
        return out;
    }
    let generation = |kind: &str, ns: &str, name: &str| {
        objects
            .objects
            .iter()
            .find(|o| {
                o.kind.group == gateway_api::GROUP
                    && o.kind.kind == kind
                    && o.namespace == ns
                    && o.name == name
            })
            .map(|o| o.generation)
    };
    let status = gateway_api::to_istio(&state.loaded.resources, domain_suffix).status;
    for g in &status.gateways {
        if let Some(generation) = generation("Gateway", &g.namespace, &g.name) {
            out.insert(
                ("Gateway", g.namespace.clone(), g.name.clone()),
                gateway_json(g, generation),
            );
        }
    }
    // Every HTTPRoute: one that no longer has a parent of ours loses our entries.
    for o in &objects.objects {
        if o.kind.group == gateway_api::GROUP && o.kind.kind == "HTTPRoute" {
            let ours = status
                .routes
                .iter()
                .find(|r| r.namespace == o.namespace && r.name == o.name);
            out.insert(
                ("HTTPRoute", o.namespace.clone(), o.name.clone()),
                route_json(ours, o.generation),
            );
        }
    }
    out
}

fn conditions_json(cs: &[Condition], generation: Option<i64>) -> Value {
    cs.iter()
        .map(|c| {
            let mut v = json!({
                "type": c.type_,
                "status": if c.status { "True" } else { "False" },
                "reason": c.reason,
                "message": c.message,
            });
            if let Some(g) = generation {
                v["observedGeneration"] = g.into();
            }
            v
        })
        .collect()
}

/// A Gateway's `status.conditions` and `status.listeners` (times not set).
pub fn gateway_json(g: &GatewayStatus, generation: Option<i64>) -> Value {
    let listeners: Vec<Value> = g
        .listeners
        .iter()
        .map(|l| {
            let kinds: Vec<Value> = l
                .supported_kinds
                .iter()
                .map(|k| {
                    json!({
                        "group": k.group.as_deref().unwrap_or(gateway_api::GROUP),
                        "kind": k.kind,
                    })
                })
                .collect();
            json!({
                "name": l.name,
                "supportedKinds": kinds,
                "attachedRoutes": l.attached_routes,
                "conditions": conditions_json(&l.conditions, generation),
            })
        })
        .collect();
    json!({
        "conditions": conditions_json(&g.conditions, generation),
        "listeners": listeners,
    })
}

/// An HTTPRoute's `status.parents`, ours only (times not set).
pub fn route_json(r: Option<&RouteStatus>, generation: Option<i64>) -> Value {
    let parents: Vec<Value> = r
        .into_iter()
        .flat_map(|r| &r.parents)
        .map(|p| {
            json!({
                "parentRef": parent_ref(&p.parent_ref),
                "controllerName": p.controller_name,
                "conditions": conditions_json(&p.conditions, generation),
            })
        })
        .collect();
    json!({ "parents": parents })
}

/// A parentRef as written, without the fields left out.
fn parent_ref(p: &ParentReference) -> Value {
    let mut v = json!({ "name": p.name });
    for (field, value) in [
        ("group", &p.group),
        ("kind", &p.kind),
        ("namespace", &p.namespace),
        ("sectionName", &p.section_name),
    ] {
        if let Some(value) = value {
            v[field] = value.clone().into();
        }
    }
    if let Some(port) = p.port {
        v["port"] = port.into();
    }
    v
}

/// The status to write over `current` (the object's), or None when it already says `want`:
/// conditions keep their `lastTransitionTime` while their status holds; other controllers'
/// parents are kept.
pub fn merge(kind: &str, current: &Value, want: &Value, now: &Value) -> Option<Value> {
    let mut merged = want.clone();
    if kind == "Gateway" {
        stamp(&mut merged["conditions"], &current["conditions"], now);
        let old_listeners = current["listeners"].as_array().cloned().unwrap_or_default();
        for l in merged["listeners"].as_array_mut().into_iter().flatten() {
            let old = old_listeners
                .iter()
                .find(|o| o["name"] == l["name"])
                .map_or(Value::Null, |o| o["conditions"].clone());
            stamp(&mut l["conditions"], &old, now);
        }
        let same = ["conditions", "listeners"]
            .iter()
            .all(|f| current[*f] == merged[*f]);
        return (!same).then_some(merged);
    }
    let old = current["parents"].as_array().cloned().unwrap_or_default();
    let (ours, mut parents): (Vec<Value>, Vec<Value>) = old
        .iter()
        .cloned()
        .partition(|p| p["controllerName"] == CONTROLLER_NAME);
    for mut p in merged["parents"].as_array().cloned().unwrap_or_default() {
        let before = ours
            .iter()
            .find(|o| o["parentRef"] == p["parentRef"])
            .map_or(Value::Null, |o| o["conditions"].clone());
        stamp(&mut p["conditions"], &before, now);
        parents.push(p);
    }
    let same = old.len() == parents.len() && parents.iter().all(|p| old.contains(p));
    (!same).then(|| json!({ "parents": parents }))
}

/// Sets each condition's `lastTransitionTime`: the old one's while its status is the same.
fn stamp(conditions: &mut Value, old: &Value, now: &Value) {
    let old = old.as_array().cloned().unwrap_or_default();
    for c in conditions.as_array_mut().into_iter().flatten() {
        let kept = old
            .iter()
            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
            .map(|o| o["lastTransitionTime"].clone())
            .filter(|t| !t.is_null());
        c["lastTransitionTime"] = kept.unwrap_or_else(|| now.clone());
    }
}

/// Reads the object, and patches its status if ours differs.
async fn write(client: &Client, key: &Key, want: &Value) -> Result<(), kube::Error> {
    let (kind, namespace, name) = key;
    let watched = watched_kind(gateway_api::GROUP, kind).expect("a watched Gateway API kind");
    let api =
        Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &watched.api_resource());
    let current = within(api.get_status(name)).await?;
    let now = serde_json::to_value(Time(Timestamp::now())).expect("a time serializes");
    let Some(status) = merge(kind, &current.data["status"], want, &now) else {
        return Ok(());
    };
    let patch = Patch::Merge(json!({
        "metadata": { "resourceVersion": current.metadata.resource_version },
        "status": status,
    }));
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    };
    within(api.patch_status(name, &params, &patch)).await?;
    tracing::debug!(kind, namespace, name, "Gateway API status written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_controlplane::manifests::parse_str;

    const YAML: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, protocol: HTTP, port: 80}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: web, sectionName: http}]
  rules: [{backendRefs: [{name: gone, port: 80}]}]
"#;

    fn status() -> gateway_api::Status {
        gateway_api::to_istio(&parse_str(YAML, None).resources, "svc.cluster.local").status
    }

    #[test]
    fn gateway_status_in_the_gateway_api_s_shape() {
        let v = gateway_json(&status().gateways[0], Some(3));
        assert_eq!(v["conditions"][0]["type"], "Accepted");
        assert_eq!(v["conditions"][0]["status"], "True");
        assert_eq!(v["conditions"][0]["observedGeneration"], 3);
        assert_eq!(v["listeners"][0]["name"], "http");
        assert_eq!(v["listeners"][0]["attachedRoutes"], 1);
        assert_eq!(
            v["listeners"][0]["supportedKinds"],
            json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}])
        );
    }

    #[test]
    fn times_are_kept_while_a_status_holds_and_others_parents_stay() {
        let status = status();
        let want = route_json(status.routes.first(), Some(1));
        assert_eq!(
            want["parents"][0]["parentRef"],
            json!({"name": "web", "sectionName": "http"})
        );
        assert_eq!(
            want["parents"][0]["conditions"][1]["reason"],
            "BackendNotFound"
        );
        let theirs = json!({"parentRef": {"name": "x"}, "controllerName": "example.com/other", "conditions": []});
        let t0 = json!("2026-01-01T00:00:00Z");
        let t1 = json!("2026-01-02T00:00:00Z");

        let first = merge(
            "HTTPRoute",
            &json!({"parents": [theirs.clone()]}),
            &want,
            &t0,
        )
        .unwrap();
        assert_eq!(first["parents"][0], theirs);
        assert_eq!(
            first["parents"][1]["conditions"][0]["lastTransitionTime"],
            t0
        );
        // Nothing changed: nothing to write.
        assert_eq!(merge("HTTPRoute", &first, &want, &t1), None);

        // A condition that changes gets a new time; the others keep theirs.
        let mut fixed = want.clone();
        fixed["parents"][0]["conditions"][1]["status"] = "True".into();
        fixed["parents"][0]["conditions"][1]["reason"] = "ResolvedRefs".into();
        let second = merge("HTTPRoute", &first, &fixed, &t1).unwrap();
        assert_eq!(
            second["parents"][1]["conditions"][0]["lastTransitionTime"],
            t0
        );
        assert_eq!(
            second["parents"][1]["conditions"][1]["lastTransitionTime"],
            t1
        );

        // A Gateway's listeners' conditions too.
        let g = gateway_json(&status.gateways[0], Some(1));
        let written = merge("Gateway", &Value::Null, &g, &t0).unwrap();
        assert_eq!(
            written["listeners"][0]["conditions"][0]["lastTransitionTime"],
            t0
        );
        assert_eq!(merge("Gateway", &written, &g, &t1), None);
    }
}
