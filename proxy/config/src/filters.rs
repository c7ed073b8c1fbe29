//! Wasm filter chains in the bootstrap: Istio's WasmPlugin fields, in snake_case.

use serde::{Deserialize, Serialize};

use super::Dur;

/// One proxy-wasm plugin in a listener's HTTP filter chain.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFilter {
    /// Unique in the listener; names the plugin in logs and metrics (`plugin_name` property).
    pub name: String,
    /// The module: a path (relative to the config file), `file://...` or `http://...`.
    pub url: String,
    /// Hex sha256 of the module; required for `http://`, checked whenever given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Handed to `proxy_on_configure`: a string as is, anything else as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_config: Option<serde_json::Value>,
    /// The root id inside the module (Istio's `pluginName`, Envoy's `root_id`).
    #[serde(default)]
    pub plugin_name: String,
    #[serde(default)]
    pub phase: Phase,
    /// Higher runs first within a phase.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub fail_strategy: FailStrategy,
    #[serde(default)]
    pub vm_config: VmConfig,
    /// Where the filter runs; omitted, on every request of the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applies_to: Option<FilterScope>,
}

/// The requests a filter runs on, as Envoy's per-route filter config disables a filter on
/// other routes. A filter out of scope is never entered for the stream: no context is made,
/// no callback runs. A request is in scope if each list that is given holds its route or
/// cluster, or, with `unrouted`, if it has no route.
///
/// The route and the cluster are what they are when the filter's turn comes: the route an
/// earlier filter named (`wasmesh.route_name`) and the cluster one chose, else the listener's
/// own route for the request and its cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterScope {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// Also the requests no filter before it named a route for and the listener has none for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unrouted: bool,
}

/// Istio's `phase`: where in the chain the plugin runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    Authn,
    Authz,
    Stats,
    /// The end of the chain, just before the request goes upstream.
    #[default]
    UnspecifiedPhase,
}

impl Phase {
    /// Position in the chain: AUTHN, AUTHZ, STATS, then unspecified.
    pub fn order(self) -> u8 {
        match self {
            Phase::Authn => 0,
            Phase::Authz => 1,
            Phase::Stats => 2,
            Phase::UnspecifiedPhase => 3,
        }
    }
}

/// Istio's `failStrategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailStrategy {
    /// Requests the failed plugin would see get 503.
    #[default]
    FailClose,
    /// The failed plugin is skipped.
    FailOpen,
    /// A new VM serves new requests after a backoff.
    FailReload,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// Plugins with the same module, vm_id and configuration share a VM; shared data and
    /// queues are keyed by it.
    pub vm_id: String,
    /// Handed to `proxy_on_vm_start`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration: Option<serde_json::Value>,
    /// The plugin's environment: `{name, value}`, or `{name, value_from: HOST}` to copy the
    /// proxy's own variable.
    pub env: Vec<EnvVar>,
    /// Linear memory cap of the VM, in MiB (at most 256).
    pub memory_limit_mb: u32,
    /// Longest a single call into the plugin may run.
    pub call_deadline: Dur,
    /// First wait before a failed VM is replaced under FAIL_RELOAD; doubles up to 30 s.
    pub reload_backoff: Dur,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            vm_id: String::new(),
            configuration: None,
            env: Vec::new(),
            memory_limit_mb: 64,
            call_deadline: Dur::millis(100),
            reload_backoff: Dur::secs(1),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub value_from: EnvSource,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnvSource {
    #[default]
    Inline,
    Host,
}

/// The bytes a plugin receives for a configuration value.
pub fn config_bytes(value: &Option<serde_json::Value>) -> bytes::Bytes {
    match value {
        None | Some(serde_json::Value::Null) => bytes::Bytes::new(),
        Some(serde_json::Value::String(s)) => bytes::Bytes::from(s.clone()),
        Some(v) => bytes::Bytes::from(v.to_string()),
    }
}

/// Checks one filter; `at` is its field path.
pub(super) fn validate(f: &HttpFilter, at: &str) -> Result<(), super::ConfigError> {
    use super::ConfigError;
    if f.name.is_empty() {
        return Err(ConfigError::at(format!("{at}.name"), "must not be empty"));
    }
    let scheme = f.url.split_once("://").map(|(s, _)| s);
    match scheme {
        None | Some("file") | Some("http") | Some("https") => {}
        Some(other) => {
            return Err(ConfigError::at(
                format!("{at}.url"),
                format!("unsupported scheme {other:?} (use a path, file://, http:// or https://)"),
            ));
        }
    }
    if let Some(sha) = &f.sha256
        && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ConfigError::at(
            format!("{at}.sha256"),
            "must be 64 hex digits",
        ));
    }
    // Over plaintext only the digest vouches for the bytes; over https:// the server's
    // certificate does, and a digest is checked when given.
    if scheme == Some("http") && f.sha256.is_none() {
        return Err(ConfigError::at(
            format!("{at}.sha256"),
            "required for an http:// module (https:// may go without)",
        ));
    }
    if !(1..=256).contains(&f.vm_config.memory_limit_mb) {
        return Err(ConfigError::at(
            format!("{at}.vm_config.memory_limit_mb"),
            "must be between 1 and 256",
        ));
    }
    if let Some(scope) = &f.applies_to
        && scope.routes.is_empty()
        && scope.clusters.is_empty()
        && !scope.unrouted
    {
        return Err(ConfigError::at(
            format!("{at}.applies_to"),
            "names no route, no cluster and not unrouted (omit it to run on every request)",
        ));
    }
    if f.vm_config.call_deadline.0.is_zero() {
        return Err(ConfigError::at(
            format!("{at}.vm_config.call_deadline"),
            "must be greater than 0",
        ));
    }
    Ok(())
}
