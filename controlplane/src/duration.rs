//! Protobuf durations as Istio's YAML writes them: `2s`, `500ms`, `1.5s`, `1m`, `1h30m`.

use std::time::Duration;

/// Parses a duration: one or more `<number><unit>` with units `ns`, `us`, `µs`, `ms`, `s`, `m`,
/// `h`; a bare `0` is zero. Negative durations are refused.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.starts_with('-') {
        return Err(format!("duration {text:?} must not be negative"));
    }
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    if rest.is_empty() {
        return Err(format!("invalid duration {text:?}"));
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} has no unit (use ms, s, m or h)"))?;
        let (number, after) = rest.split_at(num_end);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => {
                return Err(format!(
                    "duration {text:?} has unknown unit {unit:?} (use ms, s, m or h)"
                ));
            }
        };
        nanos += value * scale;
        rest = next;
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(format!("duration {text:?} is too large"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

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
