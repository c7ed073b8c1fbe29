//! JSON access logs: one line per request with the fields of Envoy's default format.
//!
//! Workers format lines into a local buffer and hand full buffers to a writer thread, so a
//! slow log destination never blocks a worker; if the writer falls behind, lines are dropped
//! and counted.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::SystemTime;

use serde::Serialize;

const FLUSH_BYTES: usize = 16 * 1024;

/// The process-wide end of the access log.
pub struct AccessLogSink {
    tx: mpsc::SyncSender<Vec<u8>>,
    pub dropped: AtomicU64,
}

fn is_stdout(path: &str) -> bool {
    path == "-" || path == "/dev/stdout"
}

/// The directory a log file goes in.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => Path::new("/"),
    }
}

/// Why the access log cannot be written where the config says.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The file cannot be opened for appending.
    #[error("cannot open {path:?} for appending: {error}")]
    Open { path: String, error: std::io::Error },
    #[error("cannot open {path:?} for appending: directory {:?} does not exist", .dir.display())]
    NoDirectory { path: String, dir: PathBuf },
    #[error("cannot open {path:?} for appending: {:?} is not a directory", .dir.display())]
    NotADirectory { path: String, dir: PathBuf },
    #[error("cannot start the access log's writer thread: {0}")]
    WriterThread(std::io::Error),
}

impl AccessLogError {
    /// Why `path` cannot be appended to: a missing directory is named as such.
    fn open(path: &str, error: std::io::Error) -> AccessLogError {
        let dir = dir_of(Path::new(path));
        if error.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() {
            AccessLogError::NoDirectory {
                path: path.to_owned(),
                dir: dir.to_owned(),
            }
        } else {
            AccessLogError::Open {
                path: path.to_owned(),
                error,
            }
        }
    }
}

/// Checks that the access log could be opened at `path` without creating or changing
/// anything (`--validate`): an existing file must open for appending, a new one needs its
/// directory. Returns the reason it cannot.
pub fn check_destination(path: &str) -> Result<(), AccessLogError> {
    if is_stdout(path) {
        return Ok(());
    }
    let p = Path::new(path);
    if p.exists() {
        return OpenOptions::new()
            .append(true)
            .open(p)
            .map(drop)
            .map_err(|e| AccessLogError::open(path, e));
    }
    let dir = dir_of(p);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(AccessLogError::NotADirectory {
            path: path.to_owned(),
            dir: dir.to_owned(),
        }),
        Err(e) => Err(AccessLogError::open(path, e)),
    }
}

impl AccessLogSink {
    /// Opens the destination and starts the writer thread. Returns the reason it cannot.
    pub fn open(path: &str) -> Result<AccessLogSink, AccessLogError> {
        let mut out: Box<dyn Write + Send> = if is_stdout(path) {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| AccessLogError::open(path, e))?,
            )
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(1024);
        std::thread::Builder::new()
            .name("wasmesh-access-log".into())
            .spawn(move || {
                for chunk in rx {
                    if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            })
            .map_err(AccessLogError::WriterThread)?;
        Ok(AccessLogSink {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    fn send(&self, chunk: Vec<u8>) {
        if self.tx.try_send(chunk).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// A worker's buffer of formatted lines.
#[derive(Default)]
pub struct LogBuffer {
    buf: RefCell<Vec<u8>>,
}

impl LogBuffer {
    pub fn write(&self, sink: &AccessLogSink, entry: &Entry<'_>) {
        let mut buf = self.buf.borrow_mut();
        if serde_json::to_writer(&mut *buf, entry).is_ok() {
            buf.push(b'\n');
        }
        if buf.len() >= FLUSH_BYTES {
            sink.send(std::mem::take(&mut *buf));
        }
    }

    /// Hands buffered lines to the writer (called on a short timer and at shutdown).
    pub fn flush(&self, sink: &AccessLogSink) {
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            sink.send(std::mem::take(&mut *buf));
        }
    }
}

/// One access log line. Field names follow Envoy's JSON access logs.
#[derive(Serialize)]
pub struct Entry<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub start_time: SystemTime,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub response_code: u16,
    pub response_flags: String,
    pub response_code_details: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Milliseconds from the first byte of the request to the last byte of the response.
    pub duration: u64,
    /// Milliseconds until the upstream's response headers, when there was an upstream.
    pub upstream_service_time: Option<u64>,
    pub x_forwarded_for: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub upstream_transport_failure_reason: Option<&'a str>,
    pub route_name: Option<&'a str>,
    pub downstream_remote_address: SocketAddr,
    pub downstream_local_address: SocketAddr,
    /// The client certificate's URI SAN on an mTLS connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downstream_peer_uri_san: Option<&'a str>,
    pub listener: &'a str,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}
