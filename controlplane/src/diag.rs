//! Diagnostics in the style of `istioctl analyze`.
//!
//! ```text
//! Error [IST0101] (VirtualService reviews.default manifests/bookinfo.yaml:12) Referenced host not found: "reviews2"
//! ```
//!
//! Codes are istioctl's where one fits ([`code`]); wasmesh's own findings use `WSM` codes.

use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

/// Severity, as istioctl prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        })
    }
}

/// Message codes. `IST` codes are istioctl's (`pkg/config/analysis/msg/messages.yaml`), with
/// istioctl's message text; `WSM` codes are wasmesh's.
pub mod code {
    /// IST0002 Deprecated: a deprecated field is used.
    pub const DEPRECATED: &str = "IST0002";
    /// IST0101 ReferencedResourceNotFound: `Referenced <what> not found: "<name>"`.
    pub const REFERENCED_RESOURCE_NOT_FOUND: &str = "IST0101";
    /// IST0106 SchemaValidationError: `Schema validation error: <reason>`.
    pub const SCHEMA_VALIDATION_ERROR: &str = "IST0106";
    /// IST0109 ConflictingMeshGatewayVirtualServiceHosts: two VirtualServices for one host.
    pub const CONFLICTING_VIRTUAL_SERVICE_HOSTS: &str = "IST0109";
    /// IST0112 VirtualServiceDestinationPortSelectorRequired.
    pub const DESTINATION_PORT_SELECTOR_REQUIRED: &str = "IST0112";
    /// IST0122 InvalidRegexp.
    pub const INVALID_REGEXP: &str = "IST0122";
    /// IST0173 DestinationRuleSubsetNotSelectPods: a subset selects no endpoint.
    pub const SUBSET_SELECTS_NO_ENDPOINTS: &str = "IST0173";
    /// WSM0001: a kind wasmesh does not translate (skipped).
    pub const UNSUPPORTED_KIND: &str = "WSM0001";
    /// WSM0002: a field wasmesh does not support yet (ignored, or the part it is in is left out).
    pub const UNSUPPORTED_FIELD: &str = "WSM0002";
    /// WSM0003: a service port with no endpoints; its cluster is left out.
    pub const NO_ENDPOINTS: &str = "WSM0003";
    /// WSM0004: a document that is not valid YAML, or not a Kubernetes object.
    pub const PARSE_ERROR: &str = "WSM0004";
    /// WSM0005: a resource shadowed by another (same identity, or same host).
    pub const SHADOWED: &str = "WSM0005";
    /// WSM0006: a translation note (what a setting turns into, or why it has no effect).
    pub const NOTE: &str = "WSM0006";
    /// WSM0007: a short host that will not match a ServiceEntry's short host (not expanded).
    pub const SHORT_SERVICE_ENTRY_HOST: &str = "WSM0007";
    /// WSM0008: a WasmPlugin whose selector or targetRefs match no known workload.
    pub const SELECTS_NOTHING: &str = "WSM0008";
}

/// One finding about the manifests, tied to a resource (and its file) when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub level: Level,
    /// `IST0101`, `WSM0003`, ... (see [`code`]).
    pub code: &'static str,
    /// The resource: `VirtualService`, ... (None for a document with no identity).
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub file: Option<PathBuf>,
    /// 1-based line in `file`: the resource's first line, or the line of a parse error.
    pub line: Option<usize>,
    /// The field at fault, such as `spec.http[0].route`, when there is one.
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(level: Level, code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            level,
            code,
            kind: None,
            name: None,
            namespace: None,
            file: None,
            line: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Level::Error, code, message)
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Level::Warning, code, message)
    }

    pub fn info(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Level::Info, code, message)
    }

    /// Sets the field path (kept apart from the message, for `-o json`).
    pub fn at(mut self, field: impl Into<String>) -> Diagnostic {
        self.field = Some(field.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.level == Level::Error
    }

    /// istioctl's origin: `VirtualService reviews.default`, then the file and line if known.
    pub fn origin(&self) -> String {
        let mut out = String::new();
        if let Some(kind) = &self.kind {
            out.push_str(kind);
            if let Some(name) = &self.name {
                out.push(' ');
                out.push_str(name);
                if let Some(ns) = &self.namespace {
                    out.push('.');
                    out.push_str(ns);
                }
            }
        }
        if let Some(file) = &self.file {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&file.display().to_string());
            if let Some(line) = self.line {
                out.push_str(&format!(":{line}"));
            }
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = self.origin();
        if origin.is_empty() {
            write!(f, "{} [{}] {}", self.level, self.code, self.message)
        } else {
            write!(
                f,
                "{} [{}] ({}) {}",
                self.level, self.code, origin, self.message
            )
        }
    }
}

/// istioctl's `-o json` fields (`code`, `documentationUrl`, `level`, `message`, `origin`), plus
/// the parts of the origin apart.
impl Serialize for Diagnostic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("code", self.code)?;
        if let Some(n) = self.code.strip_prefix("IST") {
            m.serialize_entry(
                "documentationUrl",
                &format!("https://istio.io/latest/docs/reference/config/analysis/ist{n}/"),
            )?;
        }
        m.serialize_entry("level", &self.level)?;
        m.serialize_entry("message", &self.message)?;
        m.serialize_entry("origin", &self.origin())?;
        if let Some(v) = &self.kind {
            m.serialize_entry("kind", v)?;
        }
        if let Some(v) = &self.name {
            m.serialize_entry("name", v)?;
        }
        if let Some(v) = &self.namespace {
            m.serialize_entry("namespace", v)?;
        }
        if let Some(v) = &self.file {
            m.serialize_entry("file", v)?;
        }
        if let Some(v) = &self.line {
            m.serialize_entry("line", v)?;
        }
        if let Some(v) = &self.field {
            m.serialize_entry("field", v)?;
        }
        m.end()
    }
}

/// Whether any diagnostic is an error.
pub fn has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(Diagnostic::is_error)
}
