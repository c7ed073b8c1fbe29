//! Retry conditions, spelled as Envoy's `x-envoy-retry-on` and Istio's `retryOn`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of retry conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

const NAMES: &[(&str, u32)] = &[
    ("5xx", 1 << 0),
    ("gateway-error", 1 << 1),
    ("reset", 1 << 2),
    ("connect-failure", 1 << 3),
    ("retriable-4xx", 1 << 4),
    ("refused-stream", 1 << 5),
    ("retriable-status-codes", 1 << 6),
    // gRPC conditions read `grpc-status` from the response headers (trailers-only responses).
    ("cancelled", 1 << 7),
    ("deadline-exceeded", 1 << 8),
    ("internal", 1 << 9),
    ("resource-exhausted", 1 << 10),
    ("unavailable", 1 << 11),
];

impl RetryOn {
    pub const FIVE_XX: RetryOn = RetryOn(1 << 0);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 7);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 8);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 9);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 10);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 11);

    pub fn parse(text: &str) -> Result<RetryOn, String> {
        let mut bits = 0;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (_, bit) = NAMES
                .iter()
                .find(|(name, _)| *name == token)
                .ok_or_else(|| {
                    let known: Vec<_> = NAMES.iter().map(|(n, _)| *n).collect();
                    format!(
                        "unknown retry condition {token:?}; known: {}",
                        known.join(", ")
                    )
                })?;
            bits |= bit;
        }
        Ok(RetryOn(bits))
    }

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn any(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    pub fn union(self, other: RetryOn) -> RetryOn {
        RetryOn(self.0 | other.0)
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = NAMES
            .iter()
            .filter(|(_, b)| self.0 & b != 0)
            .map(|(n, _)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        RetryOn::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_conditions() {
        let r = RetryOn::parse("5xx, connect-failure,unavailable").unwrap();
        assert!(r.contains(RetryOn::FIVE_XX));
        assert!(r.contains(RetryOn::CONNECT_FAILURE));
        assert!(r.contains(RetryOn::GRPC_UNAVAILABLE));
        assert!(!r.contains(RetryOn::RESET));
        assert_eq!(r.to_string(), "5xx,connect-failure,unavailable");
        assert!(
            RetryOn::parse("5xx,bogus")
                .unwrap_err()
                .contains("\"bogus\"")
        );
    }
}
