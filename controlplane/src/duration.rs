//! Protobuf durations as Istio's YAML writes them: `2s`, `500ms`, `1.5s`, `1m`, `1h30m`.

use std::time::Duration;

/// Parses a duration (`2s`, `500ms`, `1h30m`): the same syntax as the proxy's bootstrap.
pub use wasmesh_config::parse_duration as parse;

/// Whole milliseconds, rounding a nonzero sub-millisecond remainder up.
pub fn millis(d: Duration) -> u64 {
    let ms = d.as_millis() as u64;
    if !d.as_nanos().is_multiple_of(1_000_000) {
        ms + 1
    } else {
        ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_durations() {
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
    }

    #[test]
    fn refuses_bad_durations() {
        assert!(parse("-1s").unwrap_err().contains("negative"));
        assert!(parse("5").unwrap_err().contains("no unit"));
        assert!(parse("5d").unwrap_err().contains("unknown unit"));
        assert!(parse("abc").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn rounds_up_to_millis() {
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_millis(3)), 3);
    }
}
