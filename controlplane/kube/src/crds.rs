//! Istio's kinds as CustomResourceDefinitions (apiextensions.k8s.io/v1), generated from the
//! control plane's Rust types in [`wasmesh_controlplane::istio`], so that the schema the API
//! server checks is the one the control plane parses. Names, short names, categories, scope,
//! versions and printer columns are Istio's, so that Istio users' manifests and habits
//! (`kubectl get vs`, `kubectl get istio-io`) carry over.
//!
//! Each kind is one type: Istio serves its older versions (networking's `v1beta1` and
//! `v1alpha3`, security's `v1beta1`, telemetry's `v1alpha1`) with the same schema and no
//! conversion, storing `v1`, so
//! the derived `v1` entry is repeated under their names rather than derived once per version.
//!
//! `deploy/kubernetes/crds.yaml` is [`render`]'s output; a test fails when it drifts, and
//! `WASMESH_UPDATE_CRDS=1 cargo test -p wasmesh-kube crds` rewrites it.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
    JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use wasmesh_controlplane::istio;

/// The command that rewrites `deploy/kubernetes/crds.yaml` from the types.
pub const REGENERATE: &str = "WASMESH_UPDATE_CRDS=1 cargo test -p wasmesh-kube crds";

/// A resource's `status`, written by the control plane as Istio's (`conditions`,
/// `validationMessages`, `observedGeneration`) and opaque to the schema, as in Istio's CRDs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Status(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for Status {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Status".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
    }
}

/// Routing: hosts and their ordered HTTP routes.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    doc = "Routing: hosts and their ordered HTTP routes (Istio's VirtualService).",
    namespaced,
    status = "Status",
    shortname = "vs",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Gateways","type":"string","jsonPath":".spec.gateways","description":"The names of gateways and sidecars that should apply these routes"}"#,
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts","description":"The destination hosts to which traffic is being sent"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct VirtualServiceSpec(pub istio::VirtualService);

/// Policy for the traffic to one destination, and its named subsets.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    doc = "Policy for the traffic to one destination, and its named subsets (Istio's DestinationRule).",
    namespaced,
    status = "Status",
    shortname = "dr",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host","description":"The name of a service from the service registry"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct DestinationRuleSpec(pub istio::DestinationRule);

/// A service added to the mesh's registry.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    doc = "A service added to the mesh's registry (Istio's ServiceEntry).",
    plural = "serviceentries",
    namespaced,
    status = "Status",
    shortname = "se",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts","description":"The hosts associated with the ServiceEntry"}"#,
    printcolumn = r#"{"name":"Location","type":"string","jsonPath":".spec.location","description":"Whether the service is external to the mesh or part of the mesh (MESH_EXTERNAL or MESH_INTERNAL)"}"#,
    printcolumn = r#"{"name":"Resolution","type":"string","jsonPath":".spec.resolution","description":"Service resolution mode for the hosts (NONE, STATIC, or DNS)"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct ServiceEntrySpec(pub istio::ServiceEntry);

/// The ports, hosts and TLS that gateway proxies serve.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    doc = "The ports, hosts and TLS that gateway proxies serve (Istio's Gateway).",
    namespaced,
    status = "Status",
    shortname = "gw",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct GatewaySpec(pub istio::Gateway);

/// A workload outside Kubernetes (a VM, a bare-metal server), as a Pod is one inside.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    doc = "A workload outside Kubernetes (Istio's WorkloadEntry).",
    plural = "workloadentries",
    namespaced,
    status = "Status",
    shortname = "we",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address","description":"Address associated with the network endpoint"}"#
)]
#[serde(transparent)]
pub struct WorkloadEntrySpec(pub istio::WorkloadEntry);

/// A Wasm filter added to the sidecars it selects.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "extensions.istio.io",
    version = "v1alpha1",
    kind = "WasmPlugin",
    doc = "A Wasm filter added to the proxies it selects (Istio's WasmPlugin).",
    namespaced,
    status = "Status",
    category = "istio-io",
    category = "extensions-istio-io",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct WasmPluginSpec(pub istio::WasmPlugin);

/// What TLS the selected workloads accept from their peers.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    doc = "What TLS the selected workloads accept from their peers (Istio's PeerAuthentication).",
    namespaced,
    status = "Status",
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mtls.mode","description":"Defines the mTLS mode used for peer authentication"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct PeerAuthenticationSpec(pub istio::PeerAuthentication);

/// Who may do what to the selected workloads.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    doc = "Who may do what to the selected workloads (Istio's AuthorizationPolicy).",
    plural = "authorizationpolicies",
    namespaced,
    status = "Status",
    shortname = "ap",
    category = "istio-io",
    category = "security-istio-io",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action","description":"The operation to take"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct AuthorizationPolicySpec(pub istio::AuthorizationPolicy);

/// How the selected workloads report telemetry: wasmesh reads `tracing`.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "telemetry.istio.io",
    version = "v1",
    kind = "Telemetry",
    doc = "Telemetry configuration for workloads: tracing providers and sampling (Istio's Telemetry).",
    plural = "telemetries",
    namespaced,
    status = "Status",
    shortname = "telemetry",
    category = "istio-io",
    category = "telemetry-istio-io",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct TelemetrySpec(pub istio::Telemetry);

/// The CRDs of every kind wasmesh translates, each serving the versions the directory source
/// accepts (storing the first).
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        finish(VirtualService::crd(), &istio::VERSIONS),
        finish(DestinationRule::crd(), &istio::VERSIONS),
        finish(ServiceEntry::crd(), &istio::VERSIONS),
        finish(WorkloadEntry::crd(), &istio::VERSIONS),
        finish(Gateway::crd(), &istio::VERSIONS),
        finish(WasmPlugin::crd(), &istio::EXTENSIONS_VERSIONS),
        finish(PeerAuthentication::crd(), &istio::SECURITY_VERSIONS),
        finish(AuthorizationPolicy::crd(), &istio::SECURITY_VERSIONS),
        finish(Telemetry::crd(), &istio::TELEMETRY_VERSIONS),
    ]
}

/// Serves the derived (storage) version under the older names too, and drops the schema's
/// `default`s.
fn finish(mut crd: CustomResourceDefinition, versions: &[&str]) -> CustomResourceDefinition {
    let mut stored = crd.spec.versions.remove(0);
    assert_eq!(
        stored.name, versions[0],
        "{}: storage version",
        crd.spec.names.kind
    );
    if let Some(schema) = stored
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
    {
        visit_schemas(schema, "", &mut |_, node| {
            // schemars spells `#[serde(default)]` as `default`, which the API server would
            // write into every stored object (`hosts: []`, `mode: DISABLE`, ...); Istio's CRDs
            // default nothing, and the control plane applies the same defaults when it parses.
            node.default = None;
            // An `Option` of an enum lists `null` among the values; kube's other enums, and
            // Istio's, leave it to `nullable`.
            if let Some(values) = &mut node.enum_ {
                values.retain(|v| !v.0.is_null());
            }
        });
    }
    let older: Vec<_> = versions[1..]
        .iter()
        .map(|name| CustomResourceDefinitionVersion {
            name: (*name).to_owned(),
            storage: false,
            ..stored.clone()
        })
        .collect();
    crd.spec.versions = std::iter::once(stored).chain(older).collect();
    crd
}

/// Calls `f` on `schema` and every schema inside it, depth first, with its path
/// (`.spec.http[].route`; `{}` for a map's values, `|anyOf[0]` and the like for junctors).
fn visit_schemas(
    schema: &mut JSONSchemaProps,
    path: &str,
    f: &mut dyn FnMut(&str, &mut JSONSchemaProps),
) {
    f(path, schema);
    for (name, property) in schema.properties.iter_mut().flatten() {
        visit_schemas(property, &format!("{path}.{name}"), f);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => {
            visit_schemas(items, &format!("{path}[]"), f)
        }
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                visit_schemas(item, &format!("{path}[{i}]"), f);
            }
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
        visit_schemas(values, &format!("{path}{{}}"), f);
    }
    for (junctor, branches) in [
        ("allOf", &mut schema.all_of),
        ("anyOf", &mut schema.any_of),
        ("oneOf", &mut schema.one_of),
    ] {
        for (i, branch) in branches.iter_mut().flatten().enumerate() {
            visit_schemas(branch, &format!("{path}|{junctor}[{i}]"), f);
        }
    }
    if let Some(not) = &mut schema.not {
        visit_schemas(not, &format!("{path}|not"), f);
    }
}

/// `deploy/kubernetes/crds.yaml`: [`all`] as multi-document YAML, after a header.
pub fn render() -> String {
    let header = format!(
        "# Istio's CustomResourceDefinitions for the kinds wasmesh translates.\n\
         # Generated from the Rust types (controlplane/kube/src/crds.rs): do not edit.\n\
         # Regenerate with: {REGENERATE}\n"
    );
    let yaml = serde_saphyr::to_string_multiple(&all()).expect("CRDs serialize to YAML");
    format!("{header}{yaml}")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn crds_checked_in_match_the_types() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/crds.yaml");
        let rendered = render();
        if std::env::var_os("WASMESH_UPDATE_CRDS").is_some() {
            std::fs::write(&path, &rendered).expect("write crds.yaml");
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == rendered,
            "deploy/kubernetes/crds.yaml differs from the CRDs the Rust types generate; \
             regenerate it with `{REGENERATE}`"
        );
    }

    #[test]
    fn crds_resource_types_read_istio_manifests_and_write_them_back() {
        let text = wasmesh_controlplane::samples::VIRTUAL_SERVICE_REVIEWS_TEST_V2;
        let vs: VirtualService = serde_saphyr::from_str(text).unwrap();
        assert_eq!(vs.metadata.name.as_deref(), Some("reviews"));
        assert_eq!(vs.spec.0.hosts, ["reviews"]);
        assert_eq!(
            vs.spec.0.http[0].matches[0].headers["end-user"]
                .exact
                .as_deref(),
            Some("jason")
        );
        let again: VirtualService =
            serde_json::from_value(serde_json::to_value(&vs).unwrap()).unwrap();
        assert_eq!(again.spec, vs.spec);
    }

    #[test]
    fn crds_telemetry_reads_istio_s_manifest_and_bounds_the_sampling_percentage() {
        let text = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: mesh-default
  namespace: istio-system
spec:
  tracing:
  - providers:
    - name: otel-tracing
    randomSamplingPercentage: 10.00
";
        let t: Telemetry = serde_saphyr::from_str(text).unwrap();
        assert_eq!(t.spec.0.tracing[0].providers[0].name, "otel-tracing");
        assert_eq!(t.spec.0.tracing[0].random_sampling_percentage, Some(10.0));
        let crd = all().pop().unwrap();
        assert_eq!(
            crd.spec
                .versions
                .iter()
                .map(|v| (v.name.as_str(), v.storage))
                .collect::<Vec<_>>(),
            [("v1", true), ("v1alpha1", false)]
        );
        let schema = crd.spec.versions[0].schema.clone().unwrap();
        let spec = &schema.open_api_v3_schema.unwrap().properties.unwrap()["spec"];
        let tracing = &spec.properties.as_ref().unwrap()["tracing"];
        let Some(JSONSchemaPropsOrArray::Schema(entry)) = &tracing.items else {
            panic!("{tracing:?}")
        };
        let rate = &entry.properties.as_ref().unwrap()["randomSamplingPercentage"];
        assert_eq!((rate.minimum, rate.maximum), (Some(0.0), Some(100.0)));
    }

    #[test]
    fn crds_are_named_and_versioned_as_istio_s() {
        let crds = all();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "virtualservices.networking.istio.io",
                "destinationrules.networking.istio.io",
                "serviceentries.networking.istio.io",
                "workloadentries.networking.istio.io",
                "gateways.networking.istio.io",
                "wasmplugins.extensions.istio.io",
                "peerauthentications.security.istio.io",
                "authorizationpolicies.security.istio.io",
                "telemetries.telemetry.istio.io",
            ]
        );
        for crd in &crds {
            let spec = &crd.spec;
            let groups = [
                istio::GROUP,
                istio::EXTENSIONS_GROUP,
                istio::SECURITY_GROUP,
                istio::TELEMETRY_GROUP,
            ];
            assert!(groups.contains(&spec.group.as_str()), "{}", spec.group);
            assert_eq!(spec.scope, "Namespaced");
            let categories = spec.names.categories.clone().unwrap_or_default();
            assert_eq!(categories[0], "istio-io");
            assert_eq!(categories[1], spec.group.replace('.', "-"));
            let stored: Vec<_> = spec.versions.iter().filter(|v| v.storage).collect();
            assert_eq!(stored.len(), 1, "{}: one storage version", spec.names.kind);
            for version in &spec.versions {
                assert!(version.served);
                assert!(version.subresources.as_ref().unwrap().status.is_some());
                let schema = version.schema.as_ref().unwrap();
                let status = &schema
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap()
                    .properties
                    .as_ref()
                    .unwrap()["status"];
                assert_eq!(status.type_.as_deref(), Some("object"));
                assert_eq!(status.x_kubernetes_preserve_unknown_fields, Some(true));
            }
        }
        let short: Vec<_> = crds
            .iter()
            .map(|c| c.spec.names.short_names.clone())
            .collect();
        let short: Vec<_> = short
            .iter()
            .map(|s| s.as_deref().unwrap_or_default())
            .collect();
        let expected: [&[&str]; 9] = [
            &["vs"],
            &["dr"],
            &["se"],
            &["we"],
            &["gw"],
            &[],
            &["pa"],
            &["ap"],
            &["telemetry"],
        ];
        assert_eq!(short, expected);
    }

    /// The rules the API server applies to a CRD's schema (apiextensions' validation of
    /// `openAPIV3Schema`, and "Specifying a structural schema" in the Kubernetes docs).
    fn structural_violations(root: &JSONSchemaProps) -> Vec<String> {
        let mut root = root.clone();
        let mut violations = Vec::new();
        if root.type_.as_deref() != Some("object") {
            violations.push("the root is not of type object".to_owned());
        }
        visit_schemas(&mut root, "", &mut |path, node| {
            let mut bad = |what: &str| violations.push(format!("{path}: {what}"));
            let in_junctor = path.contains('|');
            let opaque = node.x_kubernetes_preserve_unknown_fields == Some(true)
                || node.x_kubernetes_int_or_string == Some(true);
            if in_junctor {
                // Junctors may only restrict what is specified outside them.
                if node.type_.is_some() || node.description.is_some() || node.nullable.is_some() {
                    bad("a type, description or nullable inside a junctor");
                }
                if node.default.is_some() || node.additional_properties.is_some() {
                    bad("a default or additionalProperties inside a junctor");
                }
            } else if node.type_.is_none() && !opaque {
                bad("no type");
            }
            match node.type_.as_deref() {
                None | Some("object" | "array" | "string" | "integer" | "number" | "boolean") => {}
                Some(other) => bad(&format!("type {other}")),
            }
            if node.x_kubernetes_preserve_unknown_fields == Some(false) {
                bad("x-kubernetes-preserve-unknown-fields: false");
            }
            if node.ref_path.is_some() || node.schema.is_some() || node.id.is_some() {
                bad("$ref, $schema or id");
            }
            if node.definitions.is_some() || node.dependencies.is_some() {
                bad("definitions or dependencies");
            }
            if node.pattern_properties.is_some() || node.additional_items.is_some() {
                bad("patternProperties or additionalItems");
            }
            if node.unique_items == Some(true) {
                bad("uniqueItems: true");
            }
            if node.default.is_some() {
                bad("a default (the API server would write it into stored objects)");
            }
            match &node.additional_properties {
                Some(JSONSchemaPropsOrBool::Bool(false)) => bad("additionalProperties: false"),
                Some(_) if node.properties.is_some() => {
                    bad("both properties and additionalProperties")
                }
                _ => {}
            }
            match (&node.items, node.type_.as_deref()) {
                (Some(JSONSchemaPropsOrArray::Schemas(_)), _) => bad("items as a list"),
                (None, Some("array")) => bad("an array without items"),
                _ => {}
            }
            // Our enums are of strings (and `null` is `nullable`'s to allow).
            if let Some(values) = &node.enum_
                && !values
                    .iter()
                    .all(|v| v.0.is_string() && node.type_.as_deref() == Some("string"))
            {
                bad("an enum value that is not a string of a string node");
            }
            if path == ".metadata" && node.properties.is_some() {
                bad("restrictions on metadata");
            }
        });
        violations
    }

    #[test]
    fn crds_schemas_are_structural() {
        for crd in all() {
            for version in &crd.spec.versions {
                let schema = version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref());
                let schema = schema.expect("every version has a schema");
                let violations = structural_violations(schema);
                assert!(
                    violations.is_empty(),
                    "{} {}: {violations:#?}",
                    crd.metadata.name.as_deref().unwrap_or_default(),
                    version.name
                );
            }
        }
    }

    #[test]
    fn structural_check_catches_what_the_api_server_refuses() {
        let bad: JSONSchemaProps = serde_json::from_value(serde_json::json!({
            "type": "object",
            "properties": {
                "untyped": {},
                "closed": {"type": "object", "properties": {"a": {"type": "string"}},
                           "additionalProperties": false},
                "list": {"type": "array"},
                "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "defaulted": {"type": "string", "default": "x"},
            }
        }))
        .unwrap();
        let violations = structural_violations(&bad);
        for path in [
            ".untyped",
            ".closed",
            ".list",
            ".either|anyOf[0]",
            ".defaulted",
        ] {
            assert!(
                violations
                    .iter()
                    .any(|v| v.starts_with(&format!("{path}:"))),
                "{path} not caught: {violations:#?}"
            );
        }
    }

    #[test]
    fn crds_keep_istio_s_field_names_and_leave_wasmesh_s_out() {
        let crd = &all()[3]; // WorkloadEntry
        let spec = &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema;
        let spec = &spec.as_ref().unwrap().properties.as_ref().unwrap()["spec"];
        let fields: Vec<_> = spec.properties.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(
            fields,
            [
                "address",
                "labels",
                "locality",
                "network",
                "ports",
                "serviceAccount",
                "weight"
            ]
        );
    }
}
