//! wasmesh's host extensions (`docs/plugin-abi.md`): what proxy-wasm cannot say.

use crate::host::{Result, foreign};

/// Sends the current request to `cluster` instead of the route's.
pub fn set_upstream_cluster(cluster: &str) -> Result<()> {
    foreign("wasmesh.set_upstream_cluster", cluster.as_bytes()).map(drop)
}

/// Sends a copy of the current request to `cluster`; its answer is discarded.
pub fn mirror(cluster: &str) -> Result<()> {
    foreign("wasmesh.mirror", cluster.as_bytes()).map(drop)
}

/// The route timeout for this request (`None`: no timeout).
pub fn set_timeout(timeout: Option<std::time::Duration>) -> Result<()> {
    let ms = timeout.map_or(0, |t| t.as_millis().max(1) as u64);
    foreign("wasmesh.set_timeout", ms.to_string().as_bytes()).map(drop)
}

/// Retries for this request: `attempts` retries, each with `per_try_timeout`, on `retry_on`
/// conditions (`5xx`, `gateway-error`, `connect-failure`, `reset`, ...).
pub fn set_retry_policy(
    attempts: u32,
    per_try_timeout: Option<std::time::Duration>,
    retry_on: &str,
) -> Result<()> {
    let mut policy = format!("attempts={attempts};retry_on={retry_on}");
    if let Some(t) = per_try_timeout {
        policy.push_str(&format!(";per_try_timeout_ms={}", t.as_millis()));
    }
    foreign("wasmesh.set_retry_policy", policy.as_bytes()).map(drop)
}

/// Retries for this request, as the core's policy string:
/// `attempts=3;per_try_timeout_ms=500;retry_on=5xx,reset[;retriable_status_codes=503,409]`.
pub fn set_retry_policy_spec(policy: &str) -> Result<()> {
    foreign("wasmesh.set_retry_policy", policy.as_bytes()).map(drop)
}

/// Names the route the request took (the access log's `%ROUTE_NAME%`, and what other
/// plugins read as the property `wasmesh.route_name`).
pub fn set_route_name(name: &str) -> Result<()> {
    crate::host::set_property(&["wasmesh", "route_name"], name.as_bytes())
}

/// Holds the request this long before it goes upstream, without blocking the proxy.
pub fn delay(duration: std::time::Duration) -> Result<()> {
    foreign("wasmesh.delay", duration.as_millis().to_string().as_bytes()).map(drop)
}

/// Adds an Envoy response flag (`FI`, `DI`, `UO`, ...) to the request's record.
pub fn response_flag(code: &str) -> Result<()> {
    foreign("wasmesh.response_flag", code.as_bytes()).map(drop)
}

/// Adds a header to the response the client gets.
pub fn add_response_header(name: &str, value: &str) -> Result<()> {
    foreign(
        "wasmesh.add_response_header",
        format!("{name}: {value}").as_bytes(),
    )
    .map(drop)
}

/// Makes load balancing skip `address` of `cluster` for `duration` (outlier ejection).
pub fn eject_endpoint(cluster: &str, address: &str, duration: std::time::Duration) -> Result<()> {
    let args = format!(
        "{{\"cluster\":{},\"address\":{},\"duration_ms\":{}}}",
        quote(cluster),
        quote(address),
        duration.as_millis()
    );
    foreign("wasmesh.eject_endpoint", args.as_bytes()).map(drop)
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
