//! The requests a benchmark sends: one described on the command line, or a file of them, and
//! the response the upstream gives.
//!
//! A requests file is a JSON array of requests or one JSON request per line (empty lines and
//! lines starting with `#` are skipped):
//!
//! ```json
//! {"method": "POST", "path": "/api/v1/items?x=1", "headers": {"host": "shop", "x-user": "a"}, "body_size": 512}
//! ```
//!
//! Every field is optional: `GET`, `/`, `host: localhost`, no body. `body` gives the body's
//! text instead of `body_size` bytes of `x`. Requests are sent in turn, round robin.

use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;

use super::Error;

/// One request of the profile.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RequestSpec {
    /// The request head, as the proxy hands it to the filters.
    pub fn parts(&self) -> http::request::Parts {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.headers = self.headers.clone();
        parts
    }

    /// `GET /path (3 headers, 512 B body)`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({} headers, {} B body)",
            self.method,
            self.uri,
            self.headers.len(),
            self.body.len()
        )
    }
}

/// What the upstream answers.
#[derive(Clone, Debug)]
pub struct ResponseSpec {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ResponseSpec {
    /// `200` with a `body_size`-byte text body.
    pub fn ok(body_size: usize) -> ResponseSpec {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("content-length", HeaderValue::from(body_size));
        ResponseSpec {
            status: 200,
            headers,
            body: Bytes::from(vec![b'x'; body_size]),
        }
    }

    pub fn parts(&self) -> http::response::Parts {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::OK);
        parts.headers = self.headers.clone();
        parts
    }
}

/// The requests of a benchmark, sent in turn, and the upstream's answer.
#[derive(Clone, Debug)]
pub struct RequestProfile {
    pub requests: Vec<RequestSpec>,
    pub response: ResponseSpec,
}

/// One request as a requests file or the command line describes it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// `{"name": "value"}` or `[["name", "value"], ...]` (repeated names).
    #[serde(default)]
    pub headers: Option<Headers>,
    #[serde(default)]
    pub body_size: Option<usize>,
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Headers {
    Map(std::collections::BTreeMap<String, String>),
    List(Vec<(String, String)>),
}

impl RequestLine {
    /// Checks and builds the request.
    pub fn build(&self) -> Result<RequestSpec, String> {
        let method = self.method.as_deref().unwrap_or("GET");
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|_| format!("bad method {method:?}"))?;
        let path = self.path.as_deref().unwrap_or("/");
        if !path.starts_with('/') {
            return Err(format!("the path {path:?} must start with '/'"));
        }
        let uri: Uri = path
            .parse()
            .map_err(|e| format!("bad path {path:?}: {e}"))?;
        let mut headers = HeaderMap::new();
        let pairs: Vec<(String, String)> = match &self.headers {
            None => Vec::new(),
            Some(Headers::Map(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(Headers::List(l)) => l.clone(),
        };
        for (name, value) in pairs {
            let n = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("bad header name {name:?}"))?;
            let v = HeaderValue::from_str(&value)
                .map_err(|_| format!("bad value for header {name:?}"))?;
            headers.append(n, v);
        }
        if !headers.contains_key(http::header::HOST) {
            headers.insert(http::header::HOST, HeaderValue::from_static("localhost"));
        }
        let body = match (&self.body, self.body_size) {
            (Some(_), Some(_)) => return Err("give body or body_size, not both".into()),
            (Some(text), None) => Bytes::from(text.clone()),
            (None, Some(n)) => Bytes::from(vec![b'x'; n]),
            (None, None) => Bytes::new(),
        };
        if !body.is_empty() && !headers.contains_key(http::header::CONTENT_LENGTH) {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        Ok(RequestSpec {
            method,
            uri,
            headers,
            body,
        })
    }
}

/// Parses `name:value` (for `--header`).
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not name:value"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{text:?} has no header name"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// Reads a requests file. Errors name the file, the line and the reason.
pub fn read_requests(path: &Path) -> Result<Vec<RequestSpec>, Error> {
    let file = path.display().to_string();
    let bad = |reason: String| Error::Input {
        file: file.clone(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let lines: Vec<(usize, RequestLine)> = if text.trim_start().starts_with('[') {
        let all: Vec<RequestLine> = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a JSON array of requests: {e}")))?;
        all.into_iter()
            .enumerate()
            .map(|(i, r)| (i + 1, r))
            .collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let r: RequestLine = serde_json::from_str(line)
                .map_err(|e| bad(format!("line {}: not a JSON request: {e}", i + 1)))?;
            out.push((i + 1, r));
        }
        out
    };
    if lines.is_empty() {
        return Err(bad("no requests in the file".into()));
    }
    lines
        .into_iter()
        .map(|(n, r)| r.build().map_err(|e| bad(format!("request {n}: {e}"))))
        .collect()
}
