//! The request and response a filter works on, their bodies, local replies and callouts.

use std::ptr::null_mut;
use std::time::Duration;

use crate::abi;
use crate::host::{
    Result, bytes_or_none, check, deserialize_pairs, into_text, serialize_pairs, take,
};

fn get(map: u32, name: &str) -> Result<Option<Vec<u8>>> {
    // SAFETY: pointers describe `name`; out-params are ours.
    bytes_or_none("proxy_get_header_map_value", |p, l| unsafe {
        abi::proxy_get_header_map_value(map, name.as_ptr(), name.len(), p, l)
    })
}

fn all(map: u32) -> Result<Vec<(String, Vec<u8>)>> {
    let mut ptr = null_mut();
    let mut len = 0;
    // SAFETY: out-params are ours.
    check(
        unsafe { abi::proxy_get_header_map_pairs(map, &mut ptr, &mut len) },
        "proxy_get_header_map_pairs",
    )?;
    Ok(deserialize_pairs(&take(ptr, len)))
}

fn set(map: u32, name: &str, value: Option<&str>) -> Result<()> {
    // SAFETY: pointers describe `name` and `value`.
    match value {
        Some(v) => check(
            unsafe {
                abi::proxy_replace_header_map_value(
                    map,
                    name.as_ptr(),
                    name.len(),
                    v.as_ptr(),
                    v.len(),
                )
            },
            "proxy_replace_header_map_value",
        ),
        None => check(
            unsafe { abi::proxy_remove_header_map_value(map, name.as_ptr(), name.len()) },
            "proxy_remove_header_map_value",
        ),
    }
}

fn add(map: u32, name: &str, value: &str) -> Result<()> {
    // SAFETY: pointers describe `name` and `value`.
    check(
        unsafe {
            abi::proxy_add_header_map_value(
                map,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        },
        "proxy_add_header_map_value",
    )
}

fn text(v: Option<Vec<u8>>) -> Option<String> {
    v.map(into_text)
}

/// The request headers (pseudo-headers `:method`, `:path`, `:authority`, `:scheme` included).
pub struct Request(pub(crate) ());

impl Request {
    pub fn header(&self, name: &str) -> Result<Option<String>> {
        get(abi::MAP_REQUEST_HEADERS, name).map(text)
    }

    pub fn header_bytes(&self, name: &str) -> Result<Option<Vec<u8>>> {
        get(abi::MAP_REQUEST_HEADERS, name)
    }

    /// Replaces (or, with `None`, removes) a header.
    pub fn set_header(&mut self, name: &str, value: Option<&str>) -> Result<()> {
        set(abi::MAP_REQUEST_HEADERS, name, value)
    }

    pub fn add_header(&mut self, name: &str, value: &str) -> Result<()> {
        add(abi::MAP_REQUEST_HEADERS, name, value)
    }

    pub fn headers(&self) -> Result<Vec<(String, Vec<u8>)>> {
        all(abi::MAP_REQUEST_HEADERS)
    }

    pub fn method(&self) -> Result<String> {
        Ok(self.header(":method")?.unwrap_or_default())
    }

    pub fn path(&self) -> Result<String> {
        Ok(self.header(":path")?.unwrap_or_default())
    }

    pub fn set_path(&mut self, path: &str) -> Result<()> {
        self.set_header(":path", Some(path))
    }

    pub fn authority(&self) -> Result<String> {
        Ok(self.header(":authority")?.unwrap_or_default())
    }

    /// Answers the request without sending it upstream. The callback's result is then ignored.
    pub fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<()> {
        crate::dispatch::mark_replied();
        local_response(status, "", headers, body, None)
    }

    /// Answers the request, with `details` as the response code details the access log
    /// shows (Envoy's `%RESPONSE_CODE_DETAILS%`, one token: no spaces).
    pub fn respond_with_details(
        &mut self,
        status: u16,
        details: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<()> {
        crate::dispatch::mark_replied();
        local_response(status, details, headers, body, None)
    }

    /// Answers a gRPC request with a gRPC status.
    pub fn respond_grpc(&mut self, grpc_status: u8, message: &str) -> Result<()> {
        crate::dispatch::mark_replied();
        local_response(200, "", &[], message.as_bytes(), Some(grpc_status))
    }

    /// Calls out to `cluster`; the answer arrives in `on_callout_response` of this filter.
    /// The callback should then return `Action::Pause` until it comes.
    pub fn call(&mut self, cluster: &str, call: Callout<'_>) -> Result<u32> {
        let mut headers: Vec<(&str, &[u8])> = vec![
            (":method", call.method.as_bytes()),
            (":path", call.path.as_bytes()),
            (":authority", call.authority.as_bytes()),
        ];
        headers.extend(call.headers.iter().map(|(k, v)| (*k, v.as_bytes())));
        let headers = serialize_pairs(&headers);
        let trailers = serialize_pairs(&[]);
        let mut token = 0;
        // SAFETY: pointers describe local buffers; `token` is ours.
        check(
            unsafe {
                abi::proxy_http_call(
                    cluster.as_ptr(),
                    cluster.len(),
                    headers.as_ptr(),
                    headers.len(),
                    call.body.as_ptr(),
                    call.body.len(),
                    trailers.as_ptr(),
                    trailers.len(),
                    call.timeout.as_millis() as u32,
                    &mut token,
                )
            },
            "proxy_http_call",
        )?;
        crate::dispatch::track_callout(token);
        Ok(token)
    }
}

fn local_response(
    status: u16,
    details: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    grpc: Option<u8>,
) -> Result<()> {
    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    let headers = serialize_pairs(&pairs);
    // SAFETY: pointers describe local buffers.
    check(
        unsafe {
            abi::proxy_send_local_response(
                status as u32,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                grpc.map_or(-1, i32::from),
            )
        },
        "proxy_send_local_response",
    )
}

/// An HTTP callout.
pub struct Callout<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub timeout: Duration,
}

impl<'a> Callout<'a> {
    pub fn get(path: &'a str, authority: &'a str) -> Callout<'a> {
        Callout {
            method: "GET",
            path,
            authority,
            headers: &[],
            body: &[],
            timeout: Duration::from_secs(5),
        }
    }
}

/// A callout's answer.
#[derive(Debug)]
pub struct CalloutResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

pub(crate) fn read_callout_response(body_size: usize) -> Result<CalloutResponse> {
    let headers = all(abi::MAP_CALL_RESPONSE_HEADERS)?;
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    let mut ptr = null_mut();
    let mut len = 0;
    // SAFETY: out-params are ours.
    let body = match unsafe {
        abi::proxy_get_buffer_bytes(
            abi::BUFFER_CALL_RESPONSE_BODY,
            0,
            body_size,
            &mut ptr,
            &mut len,
        )
    } {
        0 => take(ptr, len),
        _ => Vec::new(),
    };
    Ok(CalloutResponse {
        status,
        headers,
        body,
    })
}

/// The response headers (`:status` included).
pub struct Response(pub(crate) ());

impl Response {
    pub fn status(&self) -> Result<u16> {
        Ok(text(get(abi::MAP_RESPONSE_HEADERS, ":status")?)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    pub fn set_status(&mut self, status: u16) -> Result<()> {
        set(
            abi::MAP_RESPONSE_HEADERS,
            ":status",
            Some(&status.to_string()),
        )
    }

    pub fn header(&self, name: &str) -> Result<Option<String>> {
        get(abi::MAP_RESPONSE_HEADERS, name).map(text)
    }

    pub fn set_header(&mut self, name: &str, value: Option<&str>) -> Result<()> {
        set(abi::MAP_RESPONSE_HEADERS, name, value)
    }

    pub fn add_header(&mut self, name: &str, value: &str) -> Result<()> {
        add(abi::MAP_RESPONSE_HEADERS, name, value)
    }

    pub fn headers(&self) -> Result<Vec<(String, Vec<u8>)>> {
        all(abi::MAP_RESPONSE_HEADERS)
    }

    /// Reads a request header (still available in the response phase).
    pub fn request_header(&self, name: &str) -> Result<Option<String>> {
        get(abi::MAP_REQUEST_HEADERS, name).map(text)
    }
}

/// The body data a body callback sees: with `Action::Pause` it accumulates until the end.
pub struct Body {
    pub(crate) buffer: u32,
    pub(crate) size: usize,
}

impl Body {
    pub fn len(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn bytes(&self) -> Result<Vec<u8>> {
        let mut ptr = null_mut();
        let mut len = 0;
        // SAFETY: out-params are ours.
        match unsafe { abi::proxy_get_buffer_bytes(self.buffer, 0, self.size, &mut ptr, &mut len) }
        {
            0 => Ok(take(ptr, len)),
            1 => Ok(Vec::new()),
            code => check(code, "proxy_get_buffer_bytes").map(|()| Vec::new()),
        }
    }

    /// Replaces the whole body.
    pub fn set(&mut self, data: &[u8]) -> Result<()> {
        // SAFETY: pointers describe `data`.
        check(
            unsafe {
                abi::proxy_set_buffer_bytes(self.buffer, 0, self.size, data.as_ptr(), data.len())
            },
            "proxy_set_buffer_bytes",
        )?;
        self.size = data.len();
        Ok(())
    }
}
