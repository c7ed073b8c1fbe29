//! Envoy's response flags: why a request ended the way it did. Filters report them through
//! `wasmesh.response_flag` and read them back as `response.flags`; the proxy counts them.

/// Envoy's response flags: why a request ended the way it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResponseFlag {
    /// No healthy upstream host.
    NoHealthyUpstream,
    /// Upstream connection failure.
    UpstreamConnectionFailure,
    /// Upstream overflow: a circuit breaker was open.
    UpstreamOverflow,
    /// No route for the request.
    NoRouteFound,
    /// Retries exhausted (attempt limit or retry budget).
    UpstreamRetryLimitExceeded,
    /// Upstream request timeout.
    UpstreamRequestTimeout,
    /// The downstream connection closed before the response completed.
    DownstreamConnectionTermination,
    /// The upstream connection closed before the response completed.
    UpstreamConnectionTermination,
    /// The upstream reset the stream.
    UpstreamRemoteReset,
    /// A local reply was sent (a filter, or a protocol error).
    LocalReset,
    /// A stream made no progress for the stream idle timeout.
    StreamIdleTimeout,
    /// A request was delayed by fault injection.
    DelayInjected,
    /// A request was aborted by fault injection.
    FaultInjected,
    /// The cluster a filter chose does not exist.
    NoClusterFound,
    /// The upstream's response broke HTTP framing or syntax.
    UpstreamProtocolError,
}

impl ResponseFlag {
    /// The flag with Envoy's short code `code` (`UO`, `FI`...).
    pub fn from_code(code: &str) -> Option<ResponseFlag> {
        ResponseFlag::ALL.into_iter().find(|f| f.code() == code)
    }

    pub const ALL: [ResponseFlag; 15] = [
        ResponseFlag::NoHealthyUpstream,
        ResponseFlag::UpstreamConnectionFailure,
        ResponseFlag::UpstreamOverflow,
        ResponseFlag::NoRouteFound,
        ResponseFlag::UpstreamRetryLimitExceeded,
        ResponseFlag::UpstreamRequestTimeout,
        ResponseFlag::DownstreamConnectionTermination,
        ResponseFlag::UpstreamConnectionTermination,
        ResponseFlag::UpstreamRemoteReset,
        ResponseFlag::LocalReset,
        ResponseFlag::StreamIdleTimeout,
        ResponseFlag::DelayInjected,
        ResponseFlag::FaultInjected,
        ResponseFlag::NoClusterFound,
        ResponseFlag::UpstreamProtocolError,
    ];

    /// The bit Envoy uses for the flag in the `response.flags` property.
    pub fn envoy_bit(self) -> u64 {
        match self {
            ResponseFlag::NoHealthyUpstream => 0x2,
            ResponseFlag::UpstreamRequestTimeout => 0x4,
            ResponseFlag::LocalReset => 0x8,
            ResponseFlag::UpstreamRemoteReset => 0x10,
            ResponseFlag::UpstreamConnectionFailure => 0x20,
            ResponseFlag::UpstreamConnectionTermination => 0x40,
            ResponseFlag::UpstreamOverflow => 0x80,
            ResponseFlag::NoRouteFound => 0x100,
            ResponseFlag::DelayInjected => 0x200,
            ResponseFlag::FaultInjected => 0x400,
            ResponseFlag::DownstreamConnectionTermination => 0x4000,
            ResponseFlag::UpstreamRetryLimitExceeded => 0x8000,
            ResponseFlag::StreamIdleTimeout => 0x10000,
            ResponseFlag::UpstreamProtocolError => 0x800000,
            ResponseFlag::NoClusterFound => 0x1000000,
        }
    }

    /// Envoy's short code, as in access logs and Istio's `response_flags` label.
    pub fn code(self) -> &'static str {
        match self {
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamConnectionFailure => "UF",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::NoRouteFound => "NR",
            ResponseFlag::UpstreamRetryLimitExceeded => "URX",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::DownstreamConnectionTermination => "DC",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamRemoteReset => "UR",
            ResponseFlag::LocalReset => "LR",
            ResponseFlag::StreamIdleTimeout => "SI",
            ResponseFlag::DelayInjected => "DI",
            ResponseFlag::FaultInjected => "FI",
            ResponseFlag::NoClusterFound => "NC",
            ResponseFlag::UpstreamProtocolError => "UPE",
        }
    }
}
