//! Loading manifests: multi-document YAML from a string, a file or a directory.
//!
//! Each document is parsed on its own, so one bad document does not stop the others; each
//! resource remembers its file and the line its document starts at. Kinds other than the four
//! translated ones (and WasmPlugin, PeerAuthentication, AuthorizationPolicy and Telemetry) are
//! skipped with an Info diagnostic, as is any ConfigMap but Istio's mesh config
//! (`istio-system/istio`, whose `data.mesh` is read as [`istio::MeshConfig`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::diag::{Diagnostic, code};
use crate::gateway_api;
use crate::istio::{self, Object, ObjectMeta};

/// Where a resource came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub file: Option<PathBuf>,
    /// 1-based line of the document's first content line.
    pub line: Option<usize>,
}

/// One of the translated kinds, with its spec.
// A DestinationRule is the largest by a few hundred bytes (its fields Istio has but wasmesh
// does not translate are kept); specs are few and long-lived, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    VirtualService(istio::VirtualService),
    DestinationRule(istio::DestinationRule),
    ServiceEntry(istio::ServiceEntry),
    WorkloadEntry(istio::WorkloadEntry),
    WasmPlugin(istio::WasmPlugin),
    PeerAuthentication(istio::PeerAuthentication),
    AuthorizationPolicy(istio::AuthorizationPolicy),
    Telemetry(istio::Telemetry),
    /// The ConfigMap `istio-system/istio`'s `data.mesh`.
    MeshConfig(istio::MeshConfig),
    Gateway(istio::Gateway),
    /// A `v1` Secret: TLS credentials a Gateway names (`credentialName`).
    Secret(istio::TlsSecret),
    /// A Gateway API Gateway (`gateway.networking.k8s.io`), converted by [`gateway_api`].
    KubeGateway(gateway_api::Gateway),
    /// A Gateway API HTTPRoute, converted by [`gateway_api`].
    HttpRoute(gateway_api::HttpRoute),
}

impl Spec {
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::VirtualService(_) => "VirtualService",
            Spec::DestinationRule(_) => "DestinationRule",
            Spec::ServiceEntry(_) => "ServiceEntry",
            Spec::WorkloadEntry(_) => "WorkloadEntry",
            Spec::WasmPlugin(_) => "WasmPlugin",
            Spec::PeerAuthentication(_) => "PeerAuthentication",
            Spec::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Spec::Telemetry(_) => "Telemetry",
            Spec::MeshConfig(_) => "ConfigMap",
            Spec::Gateway(_) => "Gateway",
            Spec::Secret(_) => "Secret",
            Spec::KubeGateway(_) => "Gateway",
            Spec::HttpRoute(_) => "HTTPRoute",
        }
    }

    /// The API group: a kind's name is unique only within its group (`Gateway`).
    pub fn group(&self) -> &'static str {
        match self {
            Spec::VirtualService(_)
            | Spec::DestinationRule(_)
            | Spec::ServiceEntry(_)
            | Spec::WorkloadEntry(_)
            | Spec::Gateway(_) => istio::GROUP,
            Spec::WasmPlugin(_) => istio::EXTENSIONS_GROUP,
            Spec::PeerAuthentication(_) | Spec::AuthorizationPolicy(_) => istio::SECURITY_GROUP,
            Spec::Telemetry(_) => istio::TELEMETRY_GROUP,
            Spec::MeshConfig(_) | Spec::Secret(_) => "",
            Spec::KubeGateway(_) | Spec::HttpRoute(_) => gateway_api::GROUP,
        }
    }
}

/// A parsed Istio resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: Spec,
    pub source: Source,
}

impl Resource {
    /// A resource built in code (no file).
    pub fn new(name: &str, namespace: &str, spec: Spec) -> Resource {
        Resource {
            api_version: format!("{}/{}", istio::GROUP, istio::VERSIONS[0]),
            metadata: ObjectMeta {
                name: name.to_owned(),
                namespace: Some(namespace.to_owned()),
                labels: Default::default(),
            },
            spec,
            source: Source::default(),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }

    /// The API group of its kind.
    pub fn group(&self) -> &'static str {
        self.spec.group()
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace()
    }

    /// A diagnostic about this resource (kind, name, namespace, file and line filled in).
    pub fn diag(&self, d: Diagnostic) -> Diagnostic {
        Diagnostic {
            kind: Some(self.kind().to_owned()),
            name: Some(self.name().to_owned()),
            namespace: Some(self.namespace().to_owned()),
            file: self.source.file.clone(),
            line: self.source.line,
            ..d
        }
    }
}

/// What loading produced: the resources, and what was wrong with the rest.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub resources: Vec<Resource>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Appends another load's results.
    pub fn extend(&mut self, other: Loaded) {
        self.resources.extend(other.resources);
        self.diagnostics.extend(other.diagnostics);
    }
}

/// A file or directory that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Parses multi-document YAML text; `file` names it in diagnostics.
pub fn parse_str(text: &str, file: Option<&Path>) -> Loaded {
    let mut loaded = Loaded::default();
    for doc in split_documents(text) {
        parse_document(&doc, file, &mut loaded);
    }
    loaded
}

/// Reads and parses one file.
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse_str(&text, Some(path)))
}

/// Reads every `*.yaml` and `*.yml` file of a directory (not its subdirectories), by name.
pub fn load_dir(dir: &Path) -> Result<Loaded, LoadError> {
    let err = |source| LoadError {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut loaded = Loaded::default();
    for f in files {
        loaded.extend(load_file(&f)?);
    }
    Ok(loaded)
}

/// A file or a directory.
pub fn load_path(path: &Path) -> Result<Loaded, LoadError> {
    if path.is_dir() {
        load_dir(path)
    } else {
        load_file(path)
    }
}

/// One YAML document of a stream.
struct Document {
    text: String,
    /// 1-based line of the document's first line in the stream.
    first_line: usize,
    /// 1-based line of its first content line (not blank, not a comment).
    content_line: usize,
}

/// Splits a stream at `---` lines (and `...` document ends). A document marker is only ever at
/// the start of a line, and block scalars at the top level must be indented, so this never
/// splits inside a value.
fn split_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    let mut content_line = None;
    let mut flush = |current: &mut String, first_line: usize, content_line: &mut Option<usize>| {
        if let Some(content_line) = content_line.take() {
            docs.push(Document {
                text: std::mem::take(current),
                first_line,
                content_line,
            });
        }
        current.clear();
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker || line == "..." || line.starts_with("... ") {
            flush(&mut current, first_line, &mut content_line);
            first_line = n + 1;
            if marker {
                // `--- {inline: doc}`: the rest of the line belongs to the new document.
                let rest = line[3..].trim();
                if !rest.is_empty() && !rest.starts_with('#') {
                    first_line = n;
                    current.push_str(&" ".repeat(4));
                    current.push_str(rest);
                    current.push('\n');
                    content_line = Some(n);
                }
            }
            continue;
        }
        if line.starts_with('%') && content_line.is_none() {
            // A directive (`%YAML 1.2`) belongs to the stream, not the document.
            current.push('\n');
            continue;
        }
        let trimmed = line.trim();
        if content_line.is_none() && !trimmed.is_empty() && !trimmed.starts_with('#') {
            content_line = Some(n);
        }
        current.push_str(line);
        current.push('\n');
    }
    flush(&mut current, first_line, &mut content_line);
    docs
}

/// What every Kubernetes object has; read first, to know what the document is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeaderMeta>,
}

#[derive(Deserialize)]
struct HeaderMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}

/// A parse failure: the message without serde-saphyr's location suffix, the field path (if
/// any) and the 1-based line within the document.
struct ParseFailure {
    message: String,
    path: Option<String>,
    line: Option<usize>,
}

fn parse_tracked<T: DeserializeOwned>(text: &str) -> Result<T, ParseFailure> {
    let mut path = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let p = e.path().to_string();
            if p != "." {
                path = Some(p);
            }
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let line = e.location().map(|l| l.line() as usize);
        let mut message = e.without_snippet().to_string();
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        ParseFailure {
            message: message.trim().to_owned(),
            path,
            line,
        }
    })
}

fn parse_document(doc: &Document, file: Option<&Path>, loaded: &mut Loaded) {
    let located = |d: Diagnostic, line: Option<usize>| Diagnostic {
        file: file.map(Path::to_owned),
        line: Some(line.map_or(doc.content_line, |l| l + doc.first_line - 1)),
        ..d
    };
    let header: Header = match parse_tracked(&doc.text) {
        Ok(h) => h,
        Err(f) => {
            let what =
                if f.message.contains("invalid type") || f.message.contains("expected mapping") {
                    "not a Kubernetes object"
                } else {
                    "YAML parse error"
                };
            loaded.diagnostics.push(located(
                Diagnostic::error(code::PARSE_ERROR, format!("{what}: {}", f.message)),
                f.line,
            ));
            return;
        }
    };
    let meta = header.metadata.unwrap_or(HeaderMeta {
        name: None,
        namespace: None,
    });
    let identify = |d: Diagnostic| Diagnostic {
        kind: header.kind.clone(),
        name: meta.name.clone(),
        namespace: meta
            .name
            .as_ref()
            .map(|_| meta.namespace.clone().unwrap_or_else(|| "default".into())),
        ..d
    };
    let (Some(api_version), Some(kind)) = (&header.api_version, &header.kind) else {
        loaded.diagnostics.push(located(
            identify(Diagnostic::error(
                code::PARSE_ERROR,
                "not a Kubernetes object: apiVersion and kind are required",
            )),
            None,
        ));
        return;
    };
    if kind == "ConfigMap"
        && api_version == "v1"
        && meta.name.as_deref() == Some(istio::MESH_CONFIG_MAP.1)
        && meta.namespace.as_deref() == Some(istio::MESH_CONFIG_MAP.0)
    {
        let parsed = mesh_config(doc);
        match parsed {
            Ok((metadata, spec)) => loaded.resources.push(Resource {
                api_version: api_version.clone(),
                metadata,
                spec: Spec::MeshConfig(spec),
                source: Source {
                    file: file.map(Path::to_owned),
                    line: Some(doc.content_line),
                },
            }),
            Err(f) => {
                let mut d = identify(Diagnostic::error(
                    code::SCHEMA_VALIDATION_ERROR,
                    format!("Schema validation error: {}", schema_reason(&f)),
                ));
                d.field = f.path;
                loaded.diagnostics.push(located(d, f.line));
            }
        }
        return;
    }
    if kind == "Secret" && api_version == "v1" {
        match secret(doc) {
            Ok((metadata, spec)) => loaded.resources.push(Resource {
                api_version: api_version.clone(),
                metadata,
                spec: Spec::Secret(spec),
                source: Source {
                    file: file.map(Path::to_owned),
                    line: Some(doc.content_line),
                },
            }),
            Err(f) => {
                let mut d = identify(Diagnostic::error(
                    code::SCHEMA_VALIDATION_ERROR,
                    format!("Schema validation error: {}", schema_reason(&f)),
                ));
                d.field = f.path;
                loaded.diagnostics.push(located(d, f.line));
            }
        }
        return;
    }
    let (doc_group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gateway_api =
        doc_group == gateway_api::GROUP && matches!(kind.as_str(), "Gateway" | "HTTPRoute");
    let (group, versions) = match kind.as_str() {
        _ if gateway_api => (gateway_api::GROUP, &gateway_api::VERSIONS[..]),
        "VirtualService" | "DestinationRule" | "ServiceEntry" | "WorkloadEntry" | "Gateway" => {
            (istio::GROUP, &istio::VERSIONS[..])
        }
        "WasmPlugin" => (istio::EXTENSIONS_GROUP, &istio::EXTENSIONS_VERSIONS[..]),
        "PeerAuthentication" | "AuthorizationPolicy" => {
            (istio::SECURITY_GROUP, &istio::SECURITY_VERSIONS[..])
        }
        "Telemetry" => (istio::TELEMETRY_GROUP, &istio::TELEMETRY_VERSIONS[..]),
        _ => ("", &[][..]),
    };
    if group.is_empty() || doc_group != group {
        loaded.diagnostics.push(located(
            identify(Diagnostic::info(
                code::UNSUPPORTED_KIND,
                format!("{kind} ({api_version}) is not translated by wasmesh: skipped"),
            )),
            None,
        ));
        return;
    }
    if !versions.contains(&version) {
        loaded.diagnostics.push(located(
            identify(Diagnostic::error(
                code::SCHEMA_VALIDATION_ERROR,
                format!(
                    "Schema validation error: apiVersion {api_version:?} is not served (use {})",
                    versions
                        .iter()
                        .map(|v| format!("{group}/{v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
            .at("apiVersion"),
            None,
        ));
        return;
    }
    let parsed = match kind.as_str() {
        "Gateway" if gateway_api => typed(&doc.text, Spec::KubeGateway),
        "HTTPRoute" => typed(&doc.text, Spec::HttpRoute),
        "VirtualService" => typed(&doc.text, Spec::VirtualService),
        "DestinationRule" => typed(&doc.text, Spec::DestinationRule),
        "ServiceEntry" => typed(&doc.text, Spec::ServiceEntry),
        "WasmPlugin" => typed(&doc.text, Spec::WasmPlugin),
        "PeerAuthentication" => typed(&doc.text, Spec::PeerAuthentication),
        "AuthorizationPolicy" => typed(&doc.text, Spec::AuthorizationPolicy),
        "Telemetry" => typed(&doc.text, Spec::Telemetry),
        "Gateway" => typed(&doc.text, Spec::Gateway),
        _ => typed(&doc.text, Spec::WorkloadEntry),
    };
    match parsed {
        Ok((api_version, metadata, spec)) => loaded.resources.push(Resource {
            api_version,
            metadata,
            spec,
            source: Source {
                file: file.map(Path::to_owned),
                line: Some(doc.content_line),
            },
        }),
        Err(f) => {
            let reason = schema_reason(&f);
            let mut d = identify(Diagnostic::error(
                code::SCHEMA_VALIDATION_ERROR,
                format!("Schema validation error: {reason}"),
            ));
            d.field = f.path;
            loaded.diagnostics.push(located(d, f.line));
        }
    }
}

type Parsed = (String, ObjectMeta, Spec);

fn typed<S: DeserializeOwned>(text: &str, wrap: fn(S) -> Spec) -> Result<Parsed, ParseFailure> {
    let o: Object<S> = parse_tracked(text)?;
    Ok((o.api_version, o.metadata, wrap(o.spec)))
}

/// A ConfigMap as Istio's mesh config is kept (its fields checked as kubectl would; only
/// `metadata` and `data` are read).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct ConfigMap {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    binary_data: istio::Unsupported,
    #[serde(default)]
    immutable: Option<bool>,
}

/// A Secret as kubectl writes one (`data` base64, `stringData` plain).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct SecretDoc {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
    #[serde(default)]
    immutable: Option<bool>,
}

/// A Secret document: its `data` decoded, `stringData` over it (as the API server merges).
fn secret(doc: &Document) -> Result<(ObjectMeta, istio::TlsSecret), ParseFailure> {
    use base64::Engine as _;
    let s: SecretDoc = parse_tracked(&doc.text)?;
    let mut data = BTreeMap::new();
    for (k, v) in &s.data {
        let clean: String = v.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(clean.as_bytes())
            .map_err(|e| ParseFailure {
                path: Some(format!("data.{k}")),
                line: None,
                message: format!("not base64: {e}"),
            })?;
        data.insert(k.clone(), bytes);
    }
    for (k, v) in s.string_data {
        data.insert(k, v.into_bytes());
    }
    Ok((s.metadata, istio::TlsSecret { data }))
}

/// The mesh config in a ConfigMap document: its `data.mesh` parsed (none: Istio's defaults).
/// A failure's path is under `data.mesh` and its line is the document's, where the value is
/// a block scalar (`mesh: |`).
fn mesh_config(doc: &Document) -> Result<(ObjectMeta, istio::MeshConfig), ParseFailure> {
    let cm: ConfigMap = parse_tracked(&doc.text)?;
    let Some(text) = cm.data.get("mesh").filter(|t| !t.trim().is_empty()) else {
        return Ok((cm.metadata, istio::MeshConfig::default()));
    };
    let under = |f: ParseFailure| {
        // The block's first line, 1-based in the document.
        let block = doc.text.lines().position(|l| {
            let t = l.trim_start();
            t.len() < l.len()
                && t.strip_prefix("mesh:")
                    .is_some_and(|rest| rest.trim_start().starts_with(['|', '>']))
        });
        ParseFailure {
            path: Some(match f.path {
                Some(p) => format!("data.mesh.{p}"),
                None => "data.mesh".into(),
            }),
            line: block.zip(f.line).map(|(b, l)| b + 1 + l),
            message: f.message,
        }
    };
    let mut mesh: istio::MeshConfig = parse_tracked(text).map_err(under)?;
    // The fields as written, for what Istio does not know either.
    let raw: serde_json::Value = parse_tracked(text).map_err(under)?;
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    mesh.fields = keys(&raw);
    let providers = ["extensionProviders", "extension_providers"]
        .iter()
        .find_map(|k| raw.get(k)?.as_array());
    for (p, written) in mesh
        .extension_providers
        .iter_mut()
        .zip(providers.into_iter().flatten())
    {
        p.fields = keys(written);
    }
    Ok((cm.metadata, mesh))
}

/// kubectl-style reasons: `unknown field "spec.http[0].rout"`, else `path: message`.
fn schema_reason(f: &ParseFailure) -> String {
    match &f.path {
        Some(path) if f.message.starts_with("unknown field") => format!("unknown field {path:?}"),
        Some(path) => format!("{path}: {}", f.message),
        None => f.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_with_lines() {
        let docs =
            split_documents("# c\na: 1\n---\n\nb: 2\n--- {c: 3}\n...\n---\n# only a comment\n");
        let got: Vec<_> = docs
            .iter()
            .map(|d| (d.first_line, d.content_line, d.text.trim().to_owned()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 2, "# c\na: 1".to_owned()),
                (4, 5, "b: 2".to_owned()),
                (6, 6, "{c: 3}".to_owned()),
            ]
        );
    }
}
