//! Foreign functions (`proxy_call_foreign_function`): wasmesh's host extensions, and the
//! Envoy names filters commonly call. `docs/plugin-abi.md` documents each.

use std::cell::RefCell;

use bytes::Bytes;

use wasmesh_config::RetryPolicy;

use crate::abi::Status;
use crate::flags::ResponseFlag;
use crate::stream::Stream;

thread_local! {
    /// The retry policy last parsed on this worker, with its text: a router states the same
    /// policy for every request of a route, so a repeat costs a comparison instead of a parse.
    static LAST_RETRY_POLICY: RefCell<Option<(Box<[u8]>, RetryPolicy)>> =
        const { RefCell::new(None) };
}

/// `wasmesh.set_retry_policy`'s argument as a policy; a malformed one is `BadArgument`.
fn retry_policy(spec: &[u8]) -> Result<RetryPolicy, Status> {
    LAST_RETRY_POLICY.with_borrow_mut(|last| {
        if let Some((text, policy)) = last.as_ref()
            && **text == *spec
        {
            return Ok(policy.clone());
        }
        let text = std::str::from_utf8(spec).map_err(|_| Status::BadArgument)?;
        let policy = RetryPolicy::parse_spec(text).map_err(|reason| {
            tracing::debug!(%reason, "wasmesh.set_retry_policy refused");
            Status::BadArgument
        })?;
        *last = Some((spec.into(), policy.clone()));
        Ok(policy)
    })
}

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
        // Retry policy for this request: `attempts=3;per_try_timeout_ms=500;retry_on=5xx,reset`,
        // held to the bootstrap's limits; a policy that is not one is refused, not ignored.
        "wasmesh.set_retry_policy" => {
            let policy = retry_policy(args)?;
            stream_needed()?.decisions.borrow_mut().retry_policy = Some(policy);
        }
        // Hold the request this many milliseconds before it goes upstream (fault injection),
        // without blocking the worker.
        "wasmesh.delay" => {
            let ms = text()?.trim().parse().map_err(|_| Status::BadArgument)?;
            stream_needed()?.decisions.borrow_mut().delay_ms = Some(ms);
        }
        // Add an Envoy response flag (such as `FI`, `DI`, `UO`) to this request's record.
        "wasmesh.response_flag" => {
            let flag = ResponseFlag::from_code(text()?.trim()).ok_or(Status::BadArgument)?;
            stream_needed()?
                .decisions
                .borrow_mut()
                .response_flags
                .push(flag);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::{CalloutDone, CalloutRequest, Embedder, GrpcDone, GrpcRequest};
    use crate::stream::StreamInfo;

    struct NoUpstreams;
    impl Embedder for NoUpstreams {
        fn cluster_exists(&self, _: &str) -> bool {
            false
        }
        fn http_call(&self, _: CalloutRequest, _: CalloutDone) {}
        fn grpc_call(&self, _: GrpcRequest, _: GrpcDone) {}
    }

    fn call_on(stream: &Stream, name: &str, args: &str) -> Result<Bytes, Status> {
        call(name, args.as_bytes(), Some(stream), &NoUpstreams)
    }

    #[test]
    fn a_retry_policy_is_parsed_where_it_arrives_and_held_to_the_cap() {
        let stream = Stream::new(StreamInfo::default());
        let spec =
            "attempts=3;per_try_timeout_ms=500;retry_on=5xx,reset;retriable_status_codes=418";
        call_on(&stream, "wasmesh.set_retry_policy", spec).unwrap();
        let policy = stream.decisions.borrow().retry_policy.clone().unwrap();
        assert_eq!(policy.num_retries, 3);
        assert_eq!(policy.per_try_timeout.0.as_millis(), 500);
        assert_eq!(policy.retriable_status_codes, [418]);

        call_on(&stream, "wasmesh.set_retry_policy", "attempts=25").unwrap();
        let capped = stream.decisions.borrow().retry_policy.clone().unwrap();
        assert_eq!(capped.num_retries, wasmesh_config::MAX_RETRIES);
        call_on(&stream, "wasmesh.set_retry_policy", spec).unwrap();
        // A repeat of the last text is served from the worker's last parse: the same policy.
        call_on(&stream, "wasmesh.set_retry_policy", spec).unwrap();
        let again = stream.decisions.borrow().retry_policy.clone().unwrap();
        assert_eq!(again, policy);

        for bad in [
            "attempts=lots",
            "retry_on=sometimes",
            "retriable_status_codes=42",
            "colour=blue",
            "attempts",
        ] {
            let fresh = Stream::new(StreamInfo::default());
            assert_eq!(
                call_on(&fresh, "wasmesh.set_retry_policy", bad),
                Err(Status::BadArgument),
                "{bad}"
            );
            assert!(fresh.decisions.borrow().retry_policy.is_none(), "{bad}");
        }
        // Refused input leaves an earlier good policy in place.
        assert_eq!(
            call_on(&stream, "wasmesh.set_retry_policy", "attempts=-1"),
            Err(Status::BadArgument)
        );
        assert_eq!(
            stream
                .decisions
                .borrow()
                .retry_policy
                .as_ref()
                .unwrap()
                .num_retries,
            3
        );
    }

    #[test]
    fn response_flags_are_envoy_codes_or_refused() {
        let stream = Stream::new(StreamInfo::default());
        call_on(&stream, "wasmesh.response_flag", "FI").unwrap();
        call_on(&stream, "wasmesh.response_flag", " DI ").unwrap();
        assert_eq!(
            call_on(&stream, "wasmesh.response_flag", "XYZ"),
            Err(Status::BadArgument)
        );
        assert_eq!(
            stream.decisions.borrow().response_flags,
            [ResponseFlag::FaultInjected, ResponseFlag::DelayInjected]
        );
    }
}
