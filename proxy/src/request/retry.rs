//! Envoy's retry policy: which outcomes are retried, the backoff between attempts, and the
//! endpoints a request already tried.

use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use crate::body::{BoxError, ProxyBody};
use crate::config::{MAX_RETRIES, RetryOn, RetryPolicy};
use crate::upstream::SendError;
use crate::upstream::pool::AcquireError;

/// How one attempt ended, when it did not produce a response.
pub(super) enum AttemptError {
    Acquire(AcquireError),
    /// The request failed after it was handed to a connection.
    Reset {
        refused: bool,
        error: BoxError,
    },
    /// The upstream's response broke HTTP framing or syntax.
    Protocol(BoxError),
    /// The client's request body failed (its framing broke, it stalled, or the client went
    /// away): the client's fault, never held against the endpoint.
    RequestBody(BoxError),
    PerTryTimeout,
    GlobalTimeout,
}

impl From<SendError> for AttemptError {
    fn from(e: SendError) -> AttemptError {
        match e {
            SendError::Acquire(e) => AttemptError::Acquire(e),
            SendError::Reset { refused, error } => AttemptError::Reset { refused, error },
            SendError::Protocol(error) => AttemptError::Protocol(error),
            SendError::RequestBody(error) => AttemptError::RequestBody(error),
            SendError::Timeout => AttemptError::PerTryTimeout,
        }
    }
}

/// Envoy's `retry_on` for a response.
pub(super) fn retriable_response(policy: &RetryPolicy, response: &Response<ProxyBody>) -> bool {
    let on = policy.retry_on;
    let status = response.status().as_u16();
    if on.contains(RetryOn::FIVE_XX) && response.status().is_server_error() {
        return true;
    }
    if on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504) {
        return true;
    }
    if on.contains(RetryOn::RETRIABLE_4XX) && status == 409 {
        return true;
    }
    if on.contains(RetryOn::RETRIABLE_STATUS_CODES)
        && policy.retriable_status_codes.contains(&status)
    {
        return true;
    }
    // gRPC: a trailers-only response carries `grpc-status` in its headers.
    if let Some(code) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        let wanted = match code {
            "1" => RetryOn::GRPC_CANCELLED,
            "4" => RetryOn::GRPC_DEADLINE_EXCEEDED,
            "8" => RetryOn::GRPC_RESOURCE_EXHAUSTED,
            "13" => RetryOn::GRPC_INTERNAL,
            "14" => RetryOn::GRPC_UNAVAILABLE,
            _ => return false,
        };
        return on.contains(wanted);
    }
    false
}

/// Envoy's `retry_on` for a failure without a response.
pub(super) fn retriable_error(on: RetryOn, e: &AttemptError) -> bool {
    let broad = RetryOn::FIVE_XX.union(RetryOn::GATEWAY_ERROR);
    match e {
        AttemptError::Acquire(AcquireError::ConnectFailed(_) | AcquireError::Handshake(_)) => {
            on.any(broad.union(RetryOn::CONNECT_FAILURE))
        }
        AttemptError::Acquire(AcquireError::PendingOverflow | AcquireError::Timeout) => false,
        AttemptError::Reset { refused: true, .. } => {
            on.any(broad.union(RetryOn::REFUSED_STREAM).union(RetryOn::RESET))
        }
        AttemptError::Reset { refused: false, .. } | AttemptError::Protocol(_) => {
            on.any(broad.union(RetryOn::RESET))
        }
        AttemptError::PerTryTimeout => on.any(broad.union(RetryOn::RESET)),
        AttemptError::GlobalTimeout | AttemptError::RequestBody(_) => false,
    }
}

/// Fully jittered exponential backoff: uniform in [0, min(base * 2^attempt, max)].
pub(super) fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let base = policy.base_interval.0.max(Duration::from_millis(1));
    let max = policy.max_interval.map_or(base * 10, |m| m.0.max(base));
    let ceiling = base.saturating_mul(1 << attempt.min(16)).min(max);
    ceiling.mul_f64(rand::random::<f64>())
}

pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Endpoints already tried by a request (the first attempt and at most [`MAX_RETRIES`] more).
#[derive(Default)]
pub(super) struct Tried {
    len: u8,
    slots: [usize; MAX_RETRIES as usize + 1],
}

impl Tried {
    pub(super) fn push(&mut self, i: usize) {
        if (self.len as usize) < self.slots.len() {
            self.slots[self.len as usize] = i;
            self.len += 1;
        }
    }
    pub(super) fn as_slice(&self) -> &[usize] {
        &self.slots[..self.len as usize]
    }
}
