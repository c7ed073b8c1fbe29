//! `deploy/kubernetes` and the generated CRDs, checked offline by independent validators from
//! PyPI, which `deploy/setup.sh` installs into /opt/wasmesh-py:
//!
//! - every document of `deploy/kubernetes/*.yaml` passes `kubernetes-validate --strict` for
//!   Kubernetes 1.33 (the CRDs as CustomResourceDefinitions);
//! - Istio's sample manifests validate with python-jsonschema against every version of the
//!   generated CRDs' `openAPIV3Schema`, and manifests with a typo or a wrong type do not;
//! - the control plane's own parser agrees with the schemas on all of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};
use wasmesh_controlplane::diag::Level;
use wasmesh_controlplane::{manifests, samples};
use wasmesh_kube::crds;

const VENV: &str = "/opt/wasmesh-py/bin";
const KUBERNETES_VERSION: &str = "1.33.0";

/// A tool of the virtualenv; missing, the test fails saying how to install it.
fn venv_tool(name: &str) -> PathBuf {
    let path = Path::new(VENV).join(name);
    assert!(
        path.is_file(),
        "{} is missing: run deploy/setup.sh, which installs kubernetes-validate and jsonschema \
         into {VENV}",
        path.display()
    );
    path
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// The documents of a multi-document YAML text (empty ones left out).
fn documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(yaml)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

#[test]
fn deploy_manifests_pass_kubernetes_validate() -> anyhow::Result<()> {
    let validate = venv_tool("kubernetes-validate");
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|f| f.ends_with(".yaml") && f != "kustomization.yaml");
    files.sort();

    // kustomization.yaml (not an API object) lists exactly the others.
    let kustomization = std::fs::read_to_string(deploy_dir().join("kustomization.yaml"))?;
    let kustomization = &documents(&kustomization)?[0];
    let mut resources: Vec<String> =
        serde_json::from_value(kustomization["resources"].clone()).context("resources")?;
    resources.sort();
    assert_eq!(resources, files, "kustomization.yaml's resources");

    let out = Command::new(&validate)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(&files)
        .current_dir(deploy_dir())
        .output()
        .with_context(|| format!("run {}", validate.display()))?;
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{report}"
    );
    // It only warns about a kind it has no schema for: every document must have passed.
    for file in &files {
        let docs = documents(&std::fs::read_to_string(deploy_dir().join(file))?)?;
        let passed = report
            .lines()
            .filter(|l| l.starts_with(&format!("INFO {file} passed for resource ")))
            .count();
        assert_eq!(
            passed,
            docs.len(),
            "{file}: {passed} of {} documents passed:\n{report}",
            docs.len()
        );
    }
    assert!(
        !report.contains("WARN") && !report.contains("ERROR"),
        "kubernetes-validate:\n{report}"
    );
    Ok(())
}

/// A CRD's OpenAPI v3 schema as JSON Schema draft 4, for python-jsonschema:
/// - `nullable: true` becomes a type list with `"null"` (draft 4 has no `nullable`); an `enum`
///   is left as it is (OpenAPI 3.0.3: `null` must be listed to be allowed);
/// - an object with `properties` and no `x-kubernetes-preserve-unknown-fields` takes no other
///   field (`additionalProperties: false`): the API server prunes unknown fields and
///   `kubectl apply` (strict field validation, its default) refuses them;
/// - `x-kubernetes-preserve-unknown-fields` needs nothing more, and `format` is not checked:
///   jsonschema ignores unknown keywords and, by default, formats.
fn draft4(mut schema: Value) -> Value {
    let Value::Object(node) = &mut schema else {
        return schema;
    };
    if node.remove("nullable") == Some(Value::Bool(true))
        && let Some(ty) = node.get("type").cloned()
    {
        node.insert("type".into(), json!([ty, "null"]));
    }
    let open = node.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if node.contains_key("properties") && !open {
        node.insert("additionalProperties".into(), json!(false));
    }
    for (key, value) in node.iter_mut() {
        match (key.as_str(), value) {
            ("items" | "additionalProperties" | "not", sub) => *sub = draft4(sub.take()),
            ("properties", Value::Object(subs)) => {
                subs.values_mut().for_each(|s| *s = draft4(s.take()))
            }
            ("allOf" | "anyOf" | "oneOf", Value::Array(subs)) => {
                subs.iter_mut().for_each(|s| *s = draft4(s.take()))
            }
            _ => {}
        }
    }
    schema
}

/// Validates each `(schema key, instance)` with python-jsonschema (Draft4Validator, after
/// checking the schema itself); returns each instance's errors.
fn jsonschema(
    schemas: &serde_json::Map<String, Value>,
    cases: &[(String, Value)],
) -> anyhow::Result<Vec<Vec<String>>> {
    const SCRIPT: &str = r#"
import json, sys
from jsonschema import Draft4Validator
given = json.load(sys.stdin)
for schema in given["schemas"].values():
    Draft4Validator.check_schema(schema)
validators = {k: Draft4Validator(s) for k, s in given["schemas"].items()}
json.dump([
    ["%s: %s" % (".".join(map(str, e.absolute_path)), e.message)
     for e in validators[key].iter_errors(instance)]
    for key, instance in given["cases"]
], sys.stdout)
"#;
    let python = venv_tool("python");
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", python.display()))?;
    let input = json!({ "schemas": schemas, "cases": cases });
    serde_json::to_writer(child.stdin.take().expect("piped"), &input)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "python-jsonschema failed (deploy/setup.sh installs it into {VENV}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Every version's schema, as draft 4, keyed `<crd name>/<version>`.
fn version_schemas(crds: &[CustomResourceDefinition]) -> serde_json::Map<String, Value> {
    let mut schemas = serde_json::Map::new();
    for crd in crds {
        for version in &crd.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref());
            let mut schema = serde_json::to_value(schema.expect("a schema")).expect("JSON");
            // What every object has, which the API server checks itself and a CRD's schema
            // leaves out.
            let implicit = json!({
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
            });
            for (name, property) in implicit.as_object().unwrap() {
                schema["properties"][name] = property.clone();
            }
            let key = format!(
                "{}/{}",
                crd.metadata.name.as_deref().unwrap_or_default(),
                version.name
            );
            schemas.insert(key, draft4(schema));
        }
    }
    schemas
}

/// The CRD serving a document's `apiVersion` and `kind`.
fn crd_of<'a>(crds: &'a [CustomResourceDefinition], doc: &Value) -> &'a CustomResourceDefinition {
    let (group, version) = doc["apiVersion"].as_str().unwrap().split_once('/').unwrap();
    crds.iter()
        .find(|c| {
            c.spec.group == group
                && c.spec.names.kind == doc["kind"]
                && c.spec.versions.iter().any(|v| v.name == version)
        })
        .unwrap_or_else(|| panic!("no CRD serves {} {}", doc["apiVersion"], doc["kind"]))
}

/// Istio's manifests: its tasks' (controlplane/samples), the sample services wasmesh renders
/// for them, and the reference documentation's examples (tests/istio-samples.yaml).
fn istio_samples() -> anyhow::Result<Vec<Value>> {
    let addr = "127.0.0.1:9080".parse().unwrap();
    let texts = [
        samples::DESTINATION_RULE_ALL.to_owned(),
        samples::VIRTUAL_SERVICE_ALL_V1.to_owned(),
        samples::VIRTUAL_SERVICE_REVIEWS_TEST_V2.to_owned(),
        samples::VIRTUAL_SERVICE_REVIEWS_50_V3.to_owned(),
        samples::VIRTUAL_SERVICE_REVIEWS_80_20.to_owned(),
        samples::VIRTUAL_SERVICE_RATINGS_TEST_DELAY.to_owned(),
        samples::VIRTUAL_SERVICE_RATINGS_TEST_ABORT.to_owned(),
        samples::HTTPBIN_DESTINATION_RULE.to_owned(),
        samples::HTTPBIN_MIRROR.to_owned(),
        samples::HTTPBIN_CIRCUIT_BREAKER.to_owned(),
        samples::httpbin(&samples::HttpbinEndpoints { v1: addr, v2: addr }),
        include_str!("istio-samples.yaml").to_owned(),
    ];
    let mut docs = Vec::new();
    for text in &texts {
        // The control plane takes every one of them as it is.
        let loaded = manifests::parse_str(text, None);
        let errors: Vec<_> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.level == Level::Error)
            .collect();
        ensure!(
            errors.is_empty(),
            "the control plane refuses a sample: {errors:#?}\n{text}"
        );
        let parsed = documents(text)?;
        ensure!(
            loaded.resources.len() == parsed.len(),
            "not every document loaded:\n{text}"
        );
        docs.extend(parsed);
    }
    Ok(docs)
}

#[test]
fn istio_samples_validate_against_every_crd_version() -> anyhow::Result<()> {
    let crds = crds::all();
    let schemas = version_schemas(&crds);
    let samples = istio_samples()?;
    let mut cases = Vec::new();
    for doc in &samples {
        // Against every version the kind is served as: they share one schema.
        let crd = crd_of(&crds, doc);
        for version in &crd.spec.versions {
            let key = format!("{}/{}", crd.metadata.name.as_deref().unwrap(), version.name);
            cases.push((key, doc.clone()));
        }
    }
    // Every version of every CRD is exercised.
    for key in schemas.keys() {
        assert!(cases.iter().any(|(k, _)| k == key), "no sample for {key}");
    }
    let results = jsonschema(&schemas, &cases)?;
    let failures: Vec<_> = cases
        .iter()
        .zip(&results)
        .filter(|(_, errors)| !errors.is_empty())
        .map(|((key, doc), errors)| format!("{key} {}: {errors:?}", doc["metadata"]["name"]))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

#[test]
fn typos_and_wrong_types_are_refused_by_the_schemas_and_the_control_plane() -> anyhow::Result<()> {
    let crds = crds::all();
    let schemas = version_schemas(&crds);
    let samples = istio_samples()?;
    let sample = |kind: &str| samples.iter().find(|d| d["kind"] == kind).unwrap().clone();
    // (what, the changed sample, what jsonschema must say)
    let mut bad: Vec<(&str, Value, &str)> = Vec::new();
    let mut typo = sample("VirtualService");
    let route = typo["spec"]["http"][0]
        .as_object_mut()
        .unwrap()
        .remove("route")
        .unwrap();
    typo["spec"]["http"][0]["rout"] = route;
    bad.push(("spec.http[0].rout", typo, "'rout' was unexpected"));
    let mut weight = sample("VirtualService");
    weight["spec"]["http"][0]["route"][0]["weight"] = json!("ten");
    bad.push(("a string weight", weight, "'ten' is not of type 'integer'"));
    let mut hosts = sample("VirtualService");
    hosts["spec"]["hosts"] = json!("reviews");
    bad.push((
        "hosts as a string",
        hosts,
        "'reviews' is not of type 'array'",
    ));
    let mut spec_typo = sample("DestinationRule");
    spec_typo["spec"]["subset"] = json!([]);
    bad.push(("spec.subset", spec_typo, "'subset' was unexpected"));
    let mut lb = sample("DestinationRule");
    lb["spec"]["trafficPolicy"] = json!({"loadBalancer": {"simple": "FASTEST"}});
    bad.push(("an unknown load balancer", lb, "'FASTEST' is not one of"));
    let mut mode = sample("PeerAuthentication");
    mode["spec"]["mtls"]["mode"] = json!("STRIKT");
    bad.push(("an unknown mTLS mode", mode, "'STRIKT' is not one of"));
    let mut principal = sample("AuthorizationPolicy");
    principal["spec"]["rules"][0]["from"][0]["source"]["principal"] = json!(["a"]);
    bad.push(("source.principal", principal, "'principal' was unexpected"));
    let mut priority = sample("WasmPlugin");
    priority["spec"]["priority"] = json!("high");
    bad.push((
        "a string priority",
        priority,
        "'high' is not of type 'integer'",
    ));
    let mut port = sample("WorkloadEntry");
    port["spec"]["ports"] = json!({"http": "eighty"});
    bad.push(("a string port", port, "'eighty' is not of type 'integer'"));

    let cases: Vec<_> = bad
        .iter()
        .map(|(_, doc, _)| {
            let crd = crd_of(&crds, doc);
            (
                format!(
                    "{}/{}",
                    crd.metadata.name.as_deref().unwrap(),
                    crd.spec.versions[0].name
                ),
                doc.clone(),
            )
        })
        .collect();
    let results = jsonschema(&schemas, &cases)?;
    for ((what, doc, expected), errors) in bad.iter().zip(&results) {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{what}: jsonschema should say {expected:?}, said {errors:?}"
        );
        let yaml = serde_saphyr::to_string(doc)?;
        let loaded = manifests::parse_str(&yaml, None);
        assert!(
            loaded.diagnostics.iter().any(|d| d.level == Level::Error),
            "{what}: the control plane should refuse it too:\n{yaml}"
        );
    }
    Ok(())
}
