//! Foreign functions (`proxy_call_foreign_function`): wasmesh's host extensions, and the
//! Envoy names filters commonly call. `docs/plugin-abi.md` documents each.

use bytes::Bytes;

use crate::abi::Status;
use crate::stream::Stream;

/// Runs foreign function `name`. Extensions that act on a request need a stream context
/// (`proxy_set_effective_context` from a root context).
pub fn call(
    name: &str,
    args: &[u8],
    stream: Option<&Stream>,
    embedder: &dyn crate::Embedder,
) -> Result<Bytes, Status> {
    let text = || std::str::from_utf8(args).map_err(|_| Status::BadArgument);
    let stream_needed = || stream.ok_or(Status::BadArgument);
    match name {
        // The cluster this request goes to, instead of the static route's.
        "wasmesh.set_upstream_cluster" => {
            let cluster = text()?.trim();
            if cluster.is_empty() {
                return Err(Status::BadArgument);
            }
            stream_needed()?.decisions.borrow_mut().upstream_cluster = Some(cluster.to_owned());
        }
        // Send a copy of this request to a cluster; its response is discarded.
        "wasmesh.mirror" => {
            let cluster = text()?.trim();
            if cluster.is_empty() {
                return Err(Status::BadArgument);
            }
            stream_needed()?
                .decisions
                .borrow_mut()
                .mirrors
                .push(cluster.to_owned());
        }
        // Route timeout for this request in milliseconds (0 disables).
        "wasmesh.set_timeout" => {
            let ms = text()?.trim().parse().map_err(|_| Status::BadArgument)?;
            stream_needed()?.decisions.borrow_mut().timeout_ms = Some(ms);
        }
        // Retry policy for this request: `attempts=3;per_try_timeout_ms=500;retry_on=5xx,reset`.
        "wasmesh.set_retry_policy" => {
            stream_needed()?.decisions.borrow_mut().retry_policy = Some(text()?.to_owned());
        }
        // Hold the request this many milliseconds before it goes upstream (fault injection),
        // without blocking the worker.
        "wasmesh.delay" => {
            let ms = text()?.trim().parse().map_err(|_| Status::BadArgument)?;
            stream_needed()?.decisions.borrow_mut().delay_ms = Some(ms);
        }
        // Add an Envoy response flag (such as `FI`, `DI`, `UO`) to this request's record.
        "wasmesh.response_flag" => {
            let flag = text()?.trim();
            if flag.is_empty() || flag.len() > 4 {
                return Err(Status::BadArgument);
            }
            stream_needed()?
                .decisions
                .borrow_mut()
                .response_flags
                .push(flag.to_owned());
        }
        // A header for the response the client gets: `name: value`.
        "wasmesh.add_response_header" => {
            let (k, v) = text()?.split_once(':').ok_or(Status::BadArgument)?;
            stream_needed()?
                .decisions
                .borrow_mut()
                .response_headers_to_add
                .push((
                    k.trim().to_ascii_lowercase(),
                    Bytes::copy_from_slice(v.trim().as_bytes()),
                ));
        }
        // Skip an endpoint in load balancing: JSON {"cluster", "address", "duration_ms"}.
        "wasmesh.eject_endpoint" => {
            let v: serde_json::Value =
                serde_json::from_slice(args).map_err(|_| Status::BadArgument)?;
            let (Some(cluster), Some(address), Some(millis)) = (
                v["cluster"].as_str(),
                v["address"].as_str(),
                v["duration_ms"].as_u64(),
            ) else {
                return Err(Status::BadArgument);
            };
            // A stream's outcome is what ejects (outlier detection, from its log phase); carried
            // out at once, as the request is already over.
            stream_needed()?;
            embedder.eject_endpoint(cluster, address, millis);
        }
        // Envoy's: accepted and meaningless here (routes are chosen after filters run).
        "clear_route_cache" | "declare_property" => {}
        _ => return Err(Status::NotFound),
    }
    Ok(Bytes::new())
}
