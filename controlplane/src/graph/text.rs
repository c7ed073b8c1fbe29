//! The Prometheus text exposition format (0.0.4, and OpenMetrics' text, which the proxies'
//! `prometheus-client` writes), read strictly: a line that is not a comment, a blank or a
//! well-formed sample fails the whole scrape, as Prometheus fails it.
//!
//! Written here rather than taken from `prometheus-parse`, whose label reader splits on `,`
//! and `=` (a value holding either, or an escaped quote, comes out wrong) and which keeps one
//! label set per histogram name, losing the labels that tell Istio's series apart.

/// One sample: `name{labels} value`. Timestamps and exemplars are read past, not kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order written; values unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a text does not parse: its line (from 1) and what is wrong there.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// The samples of `text` whose metric name `wanted` accepts (every line is checked all the
/// same).
pub fn parse(text: &str, wanted: impl Fn(&str) -> bool) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |reason: String| ParseError {
            line: i + 1,
            reason,
        };
        let mut cursor = Cursor { rest: line };
        let name = cursor
            .name(true)
            .ok_or_else(|| error("no metric name".into()))?;
        let mut spaced = cursor.spaces();
        let labels = if cursor.eat('{') {
            let labels = cursor.labels().map_err(error)?;
            spaced = cursor.spaces();
            labels
        } else {
            Vec::new()
        };
        if !spaced {
            return Err(error(format!("{name}: no space before the value")));
        }
        let value = cursor.token();
        let value = parse_value(value).ok_or_else(|| error(format!("{value:?} is not a value")))?;
        // Then an optional timestamp, then (OpenMetrics) an optional exemplar: `# {...} v`.
        cursor.spaces();
        if !cursor.rest.is_empty() && !cursor.rest.starts_with('#') {
            let timestamp = cursor.token();
            if timestamp.parse::<f64>().is_err() {
                return Err(error(format!("{timestamp:?} is not a timestamp")));
            }
            cursor.spaces();
        }
        if !cursor.rest.is_empty() && !cursor.rest.starts_with('#') {
            return Err(error(format!("unexpected {:?}", cursor.rest)));
        }
        if wanted(name) {
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
    }
    Ok(samples)
}

/// A sample's value: a float, `+Inf`, `-Inf` or `NaN` (Go's spelling).
fn parse_value(text: &str) -> Option<f64> {
    // Rust reads `inf` and `infinity` in any case too; the format has only these.
    let lower = text.trim_start_matches(['+', '-']).to_ascii_lowercase();
    if lower.starts_with("inf") && lower != "inf" || lower.starts_with("nan") && lower != "nan" {
        return None;
    }
    text.parse().ok()
}

struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// Skips spaces and tabs; whether there were any.
    fn spaces(&mut self) -> bool {
        let trimmed = self.rest.trim_start_matches([' ', '\t']);
        let any = trimmed.len() != self.rest.len();
        self.rest = trimmed;
        any
    }

    /// Up to the next space.
    fn token(&mut self) -> &'a str {
        let end = self.rest.find([' ', '\t']).unwrap_or(self.rest.len());
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        token
    }

    /// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or, without `colons`, a label name.
    fn name(&mut self, colons: bool) -> Option<&'a str> {
        let ok = |c: char, first: bool| {
            c.is_ascii_alphabetic()
                || c == '_'
                || (colons && c == ':')
                || (!first && c.is_ascii_digit())
        };
        let end = self
            .rest
            .char_indices()
            .find(|&(i, c)| !ok(c, i == 0))
            .map_or(self.rest.len(), |(i, _)| i);
        if end == 0 {
            return None;
        }
        let (name, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(name)
    }

    /// `name="value", ...}` (the `{` eaten), a trailing comma allowed.
    fn labels(&mut self) -> Result<Vec<(String, String)>, String> {
        let mut labels = Vec::new();
        loop {
            self.spaces();
            if self.eat('}') {
                return Ok(labels);
            }
            let name = self
                .name(false)
                .ok_or_else(|| format!("expected a label name or '}}' at {:?}", self.rest))?;
            self.spaces();
            if !self.eat('=') {
                return Err(format!("label {name}: expected '='"));
            }
            self.spaces();
            if !self.eat('"') {
                return Err(format!("label {name}: expected a quoted value"));
            }
            let value = self.quoted().map_err(|e| format!("label {name}: {e}"))?;
            if labels.iter().any(|(n, _)| n == name) {
                return Err(format!("label {name} given twice"));
            }
            labels.push((name.to_owned(), value));
            self.spaces();
            if !self.eat(',') {
                self.spaces();
                if self.eat('}') {
                    return Ok(labels);
                }
                return Err(format!("expected ',' or '}}' at {:?}", self.rest));
            }
        }
    }

    /// The rest of a quoted value (the `"` eaten), unescaped: `\\`, `\"` and `\n`.
    fn quoted(&mut self) -> Result<String, String> {
        let mut value = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => return Err(format!("unknown escape \\{other}")),
                    None => break,
                },
                c => value.push(c),
            }
        }
        Err("unterminated value".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Result<Vec<Sample>, ParseError> {
        parse(text, |_| true)
    }

    #[test]
    fn reads_what_the_proxies_and_envoy_write() {
        // OpenMetrics as prometheus-client writes it, with Istio's labels (trimmed).
        let text = "# HELP istio_requests Total requests.
# TYPE istio_requests counter
istio_requests_total{reporter=\"destination\",source_workload=\"productpage-v1\",destination_service=\"reviews.default.svc.cluster.local\",response_code=\"200\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"} 12
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_sum{reporter=\"destination\",response_code=\"200\"} 53.5
istio_request_duration_milliseconds_count{reporter=\"destination\",response_code=\"200\"} 12
istio_request_duration_milliseconds_bucket{reporter=\"destination\",response_code=\"200\",le=\"0.5\"} 3
istio_request_duration_milliseconds_bucket{reporter=\"destination\",response_code=\"200\",le=\"+Inf\"} 12
envoy_server_live 1 1700000000000
up{} 1
with_exemplar_total{a=\"b\"} 7 # {trace_id=\"abc\"} 1.0 1700000000.1
# EOF
";
        let samples = all(text).unwrap();
        assert_eq!(samples.len(), 8);
        assert_eq!(samples[0].name, "istio_requests_total");
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[0].label("source_workload"), Some("productpage-v1"));
        assert_eq!(
            samples[0].label("connection_security_policy"),
            Some("mutual_tls")
        );
        assert_eq!(samples[4].label("le"), Some("+Inf"));
        assert_eq!(samples[4].value, 12.0);
        assert_eq!(samples[5].name, "envoy_server_live");
        assert!(samples[6].labels.is_empty());
        assert_eq!(samples[7].value, 7.0);

        let only = parse(text, |n| n == "istio_requests_total").unwrap();
        assert_eq!(only.len(), 1);
    }

    #[test]
    fn label_values_are_unescaped_and_may_hold_any_character() {
        let text = r#"m{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\"",odd="a,b=c}{ d",empty="",} 1.458255915e9
m { a = "x" , b="y" }   +Inf
m{a="\\"} NaN
m -Inf
"#;
        let samples = all(text).unwrap();
        assert_eq!(samples[0].label("path"), Some(r"C:\DIR\FILE.TXT"));
        assert_eq!(
            samples[0].label("error"),
            Some("Cannot find file:\n\"FILE.TXT\"")
        );
        assert_eq!(samples[0].label("odd"), Some("a,b=c}{ d"));
        assert_eq!(samples[0].label("empty"), Some(""));
        assert_eq!(samples[0].value, 1.458255915e9);
        assert_eq!(
            samples[1].labels,
            [("a".into(), "x".into()), ("b".into(), "y".into())]
        );
        assert_eq!(samples[1].value, f64::INFINITY);
        assert_eq!(samples[2].label("a"), Some("\\"));
        assert!(samples[2].value.is_nan());
        assert_eq!(samples[3].value, f64::NEG_INFINITY);
    }

    #[test]
    fn anything_malformed_fails_the_scrape_naming_the_line() {
        for (text, says) in [
            ("ok 1\nm{a=\"x} 1\n", "unterminated"),
            ("ok 1\nm{a=x} 1\n", "quoted value"),
            ("ok 1\nm{a=\"x\" b=\"y\"} 1\n", "expected ','"),
            ("ok 1\nm{a=\"\\t\"} 1\n", "unknown escape"),
            ("ok 1\nm{a=\"1\",a=\"2\"} 1\n", "given twice"),
            ("ok 1\nm one\n", "not a value"),
            ("ok 1\nm 1 later\n", "not a timestamp"),
            ("ok 1\nm 1 2 3\n", "unexpected"),
            ("ok 1\nm{a=\"x\"}1\n", "no space"),
            ("ok 1\n{a=\"x\"} 1\n", "no metric name"),
            ("ok 1\nm Infinity\n", "not a value"),
        ] {
            let e = all(text).expect_err(text);
            assert_eq!(e.line, 2, "{text:?}: {e}");
            assert!(e.reason.contains(says), "{text:?}: {e}");
        }
    }
}
