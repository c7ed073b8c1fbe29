//! Safe wrappers over the host functions. Every call returns `Result`: a status the host
//! answers is an [`Error`] to handle, never a panic.

use std::ptr::null_mut;

use crate::abi;

/// A proxy-wasm status other than OK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    NotFound,
    BadArgument,
    SerializationFailure,
    ParseFailure,
    InvalidMemoryAccess,
    Empty,
    CasMismatch,
    InternalFailure,
    Unimplemented,
    Other(u32),
}

impl Status {
    fn from_code(code: u32) -> Status {
        match code {
            1 => Status::NotFound,
            2 => Status::BadArgument,
            3 => Status::SerializationFailure,
            4 => Status::ParseFailure,
            6 => Status::InvalidMemoryAccess,
            7 => Status::Empty,
            8 => Status::CasMismatch,
            10 => Status::InternalFailure,
            12 => Status::Unimplemented,
            n => Status::Other(n),
        }
    }
}

/// What went wrong, and during which host call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub status: Status,
    pub call: &'static str,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} returned {:?}", self.call, self.status)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn check(code: u32, call: &'static str) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error {
            status: Status::from_code(code),
            call,
        })
    }
}

/// Takes ownership of bytes the host wrote into memory it got from our allocator.
pub(crate) fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: the host allocated `len` bytes through `proxy_on_memory_allocate` (a Vec with
    // exactly this capacity) and filled them.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// Calls a host function that returns bytes; `NOT_FOUND` becomes `None`.
pub(crate) fn bytes_or_none(
    call: &'static str,
    f: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>> {
    let mut ptr = null_mut();
    let mut len = 0;
    match f(&mut ptr, &mut len) {
        0 => Ok(Some(take(ptr, len))),
        1 => Ok(None),
        code => Err(Error {
            status: Status::from_code(code),
            call,
        }),
    }
}

/// Log levels, as the host filters them.
#[derive(Clone, Copy, Debug)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// Writes to the proxy's log under the plugin's name.
pub fn log(level: Level, message: &str) {
    // SAFETY: pointer and length describe `message`.
    unsafe { abi::proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Reads a property (`request.path`, `source.address`, `wasmesh.upstream_cluster`, ...).
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>> {
    let joined = path.join("\0");
    // SAFETY: pointers describe `joined`; out-params are ours.
    bytes_or_none("proxy_get_property", |p, l| unsafe {
        abi::proxy_get_property(joined.as_ptr(), joined.len(), p, l)
    })
}

/// A property as text.
pub fn property_str(path: &[&str]) -> Result<Option<String>> {
    Ok(property(path)?.map(into_text))
}

/// Bytes the host gave as text: valid UTF-8 (the usual case) becomes the `String` without a
/// copy, anything else gets U+FFFD where it is not.
pub(crate) fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// An integer property (Envoy encodes integers as 8 little-endian bytes).
pub fn property_i64(path: &[&str]) -> Result<Option<i64>> {
    Ok(property(path)?
        .and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes))
}

/// Sets a property; later filters read it back (`wasmesh.*` paths are host extensions).
pub fn set_property(path: &[&str], value: &[u8]) -> Result<()> {
    let joined = path.join("\0");
    // SAFETY: pointers describe `joined` and `value`.
    check(
        unsafe {
            abi::proxy_set_property(joined.as_ptr(), joined.len(), value.as_ptr(), value.len())
        },
        "proxy_set_property",
    )
}

/// Shared data across workers (keyed by the plugin's vm_id): value and CAS token.
pub fn shared_get(key: &str) -> Result<Option<(Vec<u8>, u32)>> {
    let mut ptr = null_mut();
    let mut len = 0;
    let mut cas = 0;
    // SAFETY: pointers describe `key`; out-params are ours.
    match unsafe {
        abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut len, &mut cas)
    } {
        0 => Ok(Some((take(ptr, len), cas))),
        1 => Ok(None),
        code => Err(Error {
            status: Status::from_code(code),
            call: "proxy_get_shared_data",
        }),
    }
}

/// Sets shared data. With `cas` from [`shared_get`], fails with `CasMismatch` if another
/// worker wrote in between; `None` writes unconditionally.
pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Result<()> {
    // SAFETY: pointers describe `key` and `value`.
    check(
        unsafe {
            abi::proxy_set_shared_data(
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(0),
            )
        },
        "proxy_set_shared_data",
    )
}

/// A counter metric, exported on the proxy's `/stats/prometheus` (as `<name>_total`).
#[derive(Clone, Copy, Debug)]
pub struct Counter(u32);

impl Counter {
    pub fn define(name: &str) -> Result<Counter> {
        define_metric(0, name).map(Counter)
    }

    pub fn increment(self, by: u64) -> Result<()> {
        // SAFETY: plain values.
        check(
            unsafe { abi::proxy_increment_metric(self.0, by as i64) },
            "proxy_increment_metric",
        )
    }

    pub fn value(self) -> Result<u64> {
        let mut v = 0;
        // SAFETY: `v` is ours.
        check(
            unsafe { abi::proxy_get_metric(self.0, &mut v) },
            "proxy_get_metric",
        )?;
        Ok(v)
    }
}

/// A gauge metric.
#[derive(Clone, Copy, Debug)]
pub struct Gauge(u32);

impl Gauge {
    pub fn define(name: &str) -> Result<Gauge> {
        define_metric(1, name).map(Gauge)
    }

    pub fn set(self, value: u64) -> Result<()> {
        // SAFETY: plain values.
        check(
            unsafe { abi::proxy_record_metric(self.0, value) },
            "proxy_record_metric",
        )
    }

    pub fn change(self, delta: i64) -> Result<()> {
        // SAFETY: plain values.
        check(
            unsafe { abi::proxy_increment_metric(self.0, delta) },
            "proxy_increment_metric",
        )
    }

    /// The gauge's value across the proxy (all workers).
    pub fn value(self) -> Result<i64> {
        let mut v = 0u64;
        // SAFETY: `v` is ours.
        check(
            unsafe { abi::proxy_get_metric(self.0, &mut v) },
            "proxy_get_metric",
        )?;
        Ok(v as i64)
    }
}

/// A histogram metric.
#[derive(Clone, Copy, Debug)]
pub struct Histogram(u32);

impl Histogram {
    pub fn define(name: &str) -> Result<Histogram> {
        define_metric(2, name).map(Histogram)
    }

    pub fn record(self, value: u64) -> Result<()> {
        // SAFETY: plain values.
        check(
            unsafe { abi::proxy_record_metric(self.0, value) },
            "proxy_record_metric",
        )
    }
}

fn define_metric(kind: u32, name: &str) -> Result<u32> {
    let mut id = 0;
    // SAFETY: pointers describe `name`; `id` is ours.
    check(
        unsafe { abi::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) },
        "proxy_define_metric",
    )?;
    Ok(id)
}

/// Calls `on_tick` every `period` (zero stops it).
pub fn set_tick_period(period: std::time::Duration) -> Result<()> {
    // SAFETY: plain value.
    check(
        unsafe { abi::proxy_set_tick_period_milliseconds(period.as_millis() as u32) },
        "proxy_set_tick_period_milliseconds",
    )
}

/// Calls a host extension or Envoy foreign function by name.
pub fn foreign(name: &str, args: &[u8]) -> Result<Vec<u8>> {
    let mut ptr = null_mut();
    let mut len = 0;
    // SAFETY: pointers describe `name` and `args`; out-params are ours.
    check(
        unsafe {
            abi::proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                args.as_ptr(),
                args.len(),
                &mut ptr,
                &mut len,
            )
        },
        "proxy_call_foreign_function",
    )?;
    Ok(take(ptr, len))
}

/// The serialised header-map format of the ABI.
pub(crate) fn serialize_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let count = bytes.get(0..4).map_or(0, |b| {
        u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
    });
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        let (Some(k), Some(v)) = (bytes.get(at..at + 4), bytes.get(at + 4..at + 8)) else {
            return Vec::new();
        };
        sizes.push((
            u32::from_le_bytes(k.try_into().expect("4")) as usize,
            u32::from_le_bytes(v.try_into().expect("4")) as usize,
        ));
    }
    let mut pos = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for (k, v) in sizes {
        let (Some(key), Some(value)) = (
            bytes.get(pos..pos + k),
            bytes.get(pos + k + 1..pos + k + 1 + v),
        ) else {
            break;
        };
        out.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
        pos += k + v + 2;
    }
    out
}
