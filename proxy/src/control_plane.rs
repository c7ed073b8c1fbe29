//! The control plane as a config source: a sidecar's stream to `wasmesh-controlplane`.
//!
//! It runs on its own thread (the workers only ever see a new snapshot). The proxy binds its
//! listeners' ports first and tells the control plane its identity and addresses; the first
//! snapshot starts the proxy, each later one is applied as a reload and answered with an ACK,
//! or a NACK carrying the error (the proxy keeps its last good config). Modules named by
//! sha256 are fetched once and kept on disk; the part of the config a namespace's sidecars
//! share is fetched by sha256 when it changes, and the proxy's own part is laid over it. When
//! the control plane is gone the proxy keeps serving and reconnects with jittered backoff; on
//! reconnect it says which version it serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use wasmesh_api as api;

use crate::config::{AccessLog, Admin, Bootstrap};
use crate::config_source::ConfigSource;
use crate::identity::{Identity, IdentityError, PendingKey, Svid, TrustBundle};
use crate::{Proxy, StartError};

/// How a sidecar joins its control plane.
#[derive(Clone, Debug)]
pub struct SidecarOptions {
    /// `host:port` (or `http://host:port`) of the control plane.
    pub control_plane: String,
    /// Its identity; listen addresses may have port 0 (the bound port is reported).
    pub node: api::Node,
    /// The admin API's address, if any (not the control plane's to choose).
    pub admin: Option<String>,
    pub workers: Option<usize>,
    /// Where modules fetched from the control plane and compiled modules are kept.
    pub cache_dir: PathBuf,
    /// The workload certificate's lifetime to ask for (the control plane's default if none).
    pub cert_ttl: Option<Duration>,
    /// Where the access log goes (Istio's `accessLogFile`); none: no access log.
    pub access_log: Option<String>,
    /// The pod's service-account token (audience `istio-ca`), sent in the Hello as proof of
    /// its identity. Read at every connect: the kubelet rotates it.
    pub token_file: Option<PathBuf>,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{field}: {address:?}: {reason}")]
    Address {
        field: String,
        address: String,
        reason: String,
    },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot start the control-plane thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The service-account token could not be read.
#[derive(Debug, thiserror::Error)]
#[error("--token-file {path}: {reason}")]
pub struct TokenError {
    path: String,
    reason: String,
}

/// The token in `path`, which must not be empty.
fn read_token(path: &Path) -> Result<String, TokenError> {
    let error = |reason: String| TokenError {
        path: path.display().to_string(),
        reason,
    };
    let token = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(error("empty".into()));
    }
    Ok(token.to_owned())
}

/// Starts a sidecar: binds its ports, waits for its first snapshot from the control plane
/// (retrying until one comes and starts), and keeps following the control plane.
pub fn start(options: SidecarOptions) -> Result<Proxy, SidecarError> {
    // A token that cannot be read now is a mistake in the pod, not a moment's trouble.
    if let Some(path) = &options.token_file {
        read_token(path)?;
    }
    let mut node = options.node.clone();
    // Hold every listen port (bound, not listening, SO_REUSEPORT) until the workers bind it.
    let mut held = Vec::new();
    let mut reserve = |field: String, address: &mut String| -> Result<(), SidecarError> {
        let err = |reason: String| SidecarError::Address {
            field: field.clone(),
            address: address.clone(),
            reason,
        };
        let wanted = crate::config::parse_listen_address(address).map_err(err)?;
        let socket = hold(wanted).map_err(|e| err(e.to_string()))?;
        let bound = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| err("no local address".into()))?;
        *address = bound.to_string();
        held.push(socket);
        Ok(())
    };
    // A gateway has no outbound listener.
    if !node.outbound_address.is_empty() || node.gateway_ports.is_empty() {
        reserve("--outbound".into(), &mut node.outbound_address)?;
    }
    for (i, p) in node.inbound.iter_mut().enumerate() {
        reserve(format!("--inbound[{i}]"), &mut p.listen_address)?;
    }
    for (i, p) in node.gateway_ports.iter_mut().enumerate() {
        reserve(format!("--gateway-port[{i}]"), &mut p.listen_address)?;
    }
    // The admin's port too (the admin binds it with SO_REUSEADDR beside the held socket,
    // which never listens): the Hello says where the metrics are before the proxy starts.
    // An admin on every address is reached at the pod's IP or the stream's peer's: the
    // control plane knows which.
    let mut admin = options.admin.clone();
    if let Some(address) = &mut admin {
        reserve("--admin".into(), address)?;
        if node.metrics_address.is_empty() {
            node.metrics_address.clone_from(address);
        }
    }

    let (first_tx, first_rx) = std::sync::mpsc::channel::<First>();
    let identity = Arc::new(Identity::default());
    let client = Client {
        options: SidecarOptions {
            node,
            admin,
            ..options
        },
        source: None,
        first: Some(first_tx),
        serving: String::new(),
        shared: None,
        identity: identity.clone(),
        certificates: Certificates::default(),
    };
    std::thread::Builder::new()
        .name("wasmesh-control-plane".into())
        .spawn(move || client.run())
        .map_err(SidecarError::Thread)?;

    // The first snapshot that starts the proxy wins; one that does not is NACKed.
    loop {
        let Ok(first) = first_rx.recv() else {
            unreachable!("the control-plane thread runs until the proxy stops")
        };
        match Proxy::start_with(first.bootstrap, None, identity.clone()) {
            Ok(proxy) => {
                let _ = first.reply.send(Ok(proxy.source.clone()));
                drop(held);
                return Ok(proxy);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the control plane's first snapshot does not start");
                let _ = first.reply.send(Err(e.to_string()));
            }
        }
    }
}

/// The first snapshot, handed to the thread starting the proxy.
struct First {
    bootstrap: Bootstrap,
    reply: std::sync::mpsc::Sender<Result<Arc<ConfigSource>, String>>,
}

struct Client {
    options: SidecarOptions,
    /// Set once the proxy runs.
    source: Option<Arc<ConfigSource>>,
    first: Option<std::sync::mpsc::Sender<First>>,
    /// The version in effect.
    serving: String,
    /// The last shared part fetched: `(sha256, bootstrap JSON)`.
    shared: Option<(String, Arc<str>)>,
    /// The workload identity the proxy serves with.
    identity: Arc<Identity>,
    certificates: Certificates,
}

/// The certificate requests of one stream.
#[derive(Default)]
struct Certificates {
    /// The request in flight: its id and the key it is for.
    pending: Option<(u64, PendingKey)>,
    last_id: u64,
    /// When to ask after a refusal or a bad answer.
    retry_at: Option<tokio::time::Instant>,
    retry_backoff: Duration,
}

/// Certificate retries after a refusal: from `MIN` doubling to `MAX`.
const CERT_RETRY_MIN: Duration = Duration::from_secs(1);
const CERT_RETRY_MAX: Duration = Duration::from_secs(30);

/// Reconnect backoff: from `MIN` doubling to `MAX`, each wait jittered down by up to half.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Client {
    fn run(mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the control-plane client");
        rt.block_on(async {
            let mut backoff = BACKOFF_MIN;
            loop {
                if self.source.as_ref().is_some_and(|s| s.is_draining()) {
                    return;
                }
                match self.session().await {
                    Ok(()) => tracing::info!("control plane closed the stream"),
                    Err(Session::Synced(e)) => {
                        tracing::warn!(error = %e, "control plane stream lost");
                        backoff = BACKOFF_MIN;
                    }
                    Err(Session::Failed(e)) => {
                        tracing::warn!(error = %e, "control plane unreachable")
                    }
                    Err(Session::NoToken(e)) => {
                        tracing::warn!(error = %e, "no service-account token to connect with")
                    }
                    Err(Session::Refused(e)) => {
                        tracing::warn!(code = ?e.code(), error = %e.message(), "the control plane refused this sidecar's identity")
                    }
                }
                let jitter = rand::random_range(0.5..=1.0);
                tokio::time::sleep(backoff.mul_f64(jitter)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        });
    }

    async fn session(&mut self) -> Result<(), Session> {
        let failed = |e: &dyn std::fmt::Display| Session::Failed(e.to_string());
        let token = match &self.options.token_file {
            Some(path) => read_token(path).map_err(Session::NoToken)?,
            None => String::new(),
        };
        let uri = if self.options.control_plane.contains("://") {
            self.options.control_plane.clone()
        } else {
            format!("http://{}", self.options.control_plane)
        };
        let channel = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| failed(&e))?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .connect()
            .await
            .map_err(|e| failed(&e))?;
        let mut config = api::mesh_config_client::MeshConfigClient::new(channel)
            .max_decoding_message_size(api::MAX_MESSAGE);
        let (tx, rx) = mpsc::channel(4);
        let hello = api::ProxyMessage {
            kind: Some(api::proxy_message::Kind::Hello(api::Hello {
                node: Some(self.options.node.clone()),
                version: self.serving.clone(),
                token,
            })),
        };
        tx.send(hello).await.expect("the stream's receiver is here");
        let mut messages = config
            .sync(ReceiverStream::new(rx))
            .await
            .map_err(|e| match e.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Session::Refused(e),
                _ => failed(&e),
            })?
            .into_inner();
        tracing::info!(control_plane = %self.options.control_plane, "connected to the control plane");
        let mut synced = false;
        let mut drain_check = tokio::time::interval(Duration::from_secs(1));
        // A new stream: an answer to a request sent on the last one will not come.
        self.certificates.pending = None;
        let mut deferred = None;
        loop {
            let renew = self.next_certificate_request();
            let message = tokio::select! {
                m = messages.message() => m,
                _ = drain_check.tick() => {
                    if self.source.as_ref().is_some_and(|s| s.is_draining()) {
                        return Ok(());
                    }
                    continue;
                }
                _ = sleep_until(renew) => {
                    if let Some(request) = self.certificate_request()
                        && tx.send(request).await.is_err()
                    {
                        return Err(Session::Synced("the stream closed".into()));
                    }
                    continue;
                }
            };
            let kind = match message {
                Ok(Some(api::ControlMessage { kind: Some(kind) })) => kind,
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) if synced => return Err(Session::Synced(e.to_string())),
                Err(e) => return Err(Session::Failed(e.to_string())),
            };
            let snapshot = match kind {
                // The first snapshot waits for the first certificate: a sidecar serves its
                // inbound mTLS from the start (Istio's waits for its SDS secret too).
                api::control_message::Kind::Snapshot(s) if self.awaits_first_certificate() => {
                    deferred = Some(s);
                    continue;
                }
                api::control_message::Kind::Snapshot(s) => s,
                api::control_message::Kind::TrustBundle(bundle) => {
                    self.trust(bundle);
                    continue;
                }
                api::control_message::Kind::Certificate(answer) => {
                    self.certificate(answer);
                    match deferred.take() {
                        Some(s) if !self.awaits_first_certificate() => s,
                        other => {
                            deferred = other;
                            continue;
                        }
                    }
                }
            };
            synced = true;
            let error = match self.apply(&mut config, &snapshot).await {
                Ok(()) => None,
                // A newer push is on its way: that one gets the answer.
                Err(Rejected::Superseded) => continue,
                Err(Rejected::Error(e)) => Some(e),
            };
            if let Some(e) = &error {
                tracing::warn!(version = %snapshot.version, error = %e, "snapshot rejected (NACK); the last good config keeps serving");
            }
            let ack = api::ProxyMessage {
                kind: Some(api::proxy_message::Kind::Ack(api::Ack {
                    version: snapshot.version.clone(),
                    nonce: snapshot.nonce.clone(),
                    error: error.unwrap_or_default(),
                })),
            };
            if tx.send(ack).await.is_err() {
                return Err(Session::Synced("the stream closed".into()));
            }
        }
    }

    /// True before the proxy runs while it has a trust bundle and its first certificate is
    /// being asked for (not after a refusal: then it starts without one, and asks again).
    fn awaits_first_certificate(&self) -> bool {
        self.source.is_none()
            && self.identity.trust().is_some()
            && self.identity.svid().is_none()
            && self.certificates.retry_at.is_none()
    }

    /// The SPIFFE identity this proxy is entitled to, once the trust domain is known.
    fn spiffe_id(&self) -> Option<String> {
        let trust = self.identity.trust()?;
        let node = &self.options.node;
        Some(api::spiffe_id(
            &trust.trust_domain,
            &node.namespace,
            &node.service_account,
        ))
    }

    /// A new trust bundle: kept; a certificate is asked for at once if the one held is not
    /// for this trust domain or was issued under a root no longer trusted.
    fn trust(&mut self, bundle: api::TrustBundle) {
        let trust = match TrustBundle::from_pem(&bundle.trust_domain, &bundle.roots_pem) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "the control plane's trust bundle is unusable: ignored");
                return;
            }
        };
        tracing::info!(trust_domain = %trust.trust_domain, roots = trust.roots.len(), "trust bundle received");
        self.identity.set_trust(trust);
        self.certificates.retry_at = None;
    }

    /// When the next certificate request is due: now for a proxy without a usable
    /// certificate, at its renewal time otherwise; never while one is in flight.
    fn next_certificate_request(&self) -> Option<tokio::time::Instant> {
        let certs = &self.certificates;
        if certs.pending.is_some() {
            return None;
        }
        let wanted = self.spiffe_id()?;
        let now = tokio::time::Instant::now();
        let due = match self.identity.svid() {
            Some(svid) if svid.spiffe_id == wanted && self.issued_under_trusted_root(&svid) => {
                let wait = svid
                    .renew_at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                now + wait
            }
            _ => now,
        };
        Some(certs.retry_at.map_or(due, |r| r.max(due)))
    }

    fn issued_under_trusted_root(&self, svid: &Svid) -> bool {
        let (Some(trust), Some(root)) = (self.identity.trust(), &svid.root) else {
            return true;
        };
        trust.roots.contains(root)
    }

    /// A new key pair and the request for its certificate.
    fn certificate_request(&mut self) -> Option<api::ProxyMessage> {
        let id = self.spiffe_id()?;
        let (key, csr_pem) = match PendingKey::new(&id) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "cannot make a certificate request");
                self.certificate_retry();
                return None;
            }
        };
        self.certificates.last_id += 1;
        let request_id = self.certificates.last_id;
        self.certificates.pending = Some((request_id, key));
        tracing::debug!(identity = %id, "requesting a certificate");
        Some(api::ProxyMessage {
            kind: Some(api::proxy_message::Kind::CertificateRequest(
                api::CertificateRequest {
                    csr_pem,
                    validity_seconds: self.options.cert_ttl.map_or(0, |d| d.as_secs().max(1)),
                    id: request_id,
                },
            )),
        })
    }

    /// The control plane's answer to a certificate request.
    fn certificate(&mut self, answer: api::Certificate) {
        let Some((id, key)) = self.certificates.pending.take() else {
            return;
        };
        if id != answer.id {
            self.certificates.pending = Some((id, key));
            return;
        }
        let svid = if answer.error.is_empty() {
            key.complete(&answer.cert_chain_pem)
        } else {
            Err(IdentityError::Refused(answer.error))
        };
        match svid {
            Ok(svid) => {
                tracing::info!(
                    identity = %svid.spiffe_id,
                    serial = %svid.leaf.serial,
                    expires = %humantime::format_rfc3339_seconds(svid.leaf.not_after),
                    "workload certificate installed"
                );
                self.identity.set_svid(svid);
                self.certificates.retry_at = None;
                self.certificates.retry_backoff = Duration::ZERO;
            }
            Err(e) => {
                tracing::warn!(error = %e, "no new workload certificate; asking again later");
                self.certificate_retry();
            }
        }
    }

    fn certificate_retry(&mut self) {
        let certs = &mut self.certificates;
        certs.retry_backoff = (certs.retry_backoff * 2).clamp(CERT_RETRY_MIN, CERT_RETRY_MAX);
        let jitter = rand::random_range(0.5..=1.0);
        certs.retry_at = Some(tokio::time::Instant::now() + certs.retry_backoff.mul_f64(jitter));
    }

    /// Applies a snapshot.
    async fn apply(
        &mut self,
        config: &mut api::mesh_config_client::MeshConfigClient<tonic::transport::Channel>,
        snapshot: &api::Snapshot,
    ) -> Result<(), Rejected> {
        if snapshot.version == self.serving && self.source.is_some() {
            return Ok(());
        }
        let mut bootstrap: Bootstrap = serde_json::from_str(&snapshot.bootstrap_json)
            .map_err(|e| format!("the snapshot is not a bootstrap: {e}"))?;
        if let Some(part) = &snapshot.shared {
            let json = self.shared_part(config, &part.sha256).await?;
            let shared: Bootstrap = serde_json::from_str(&json)
                .map_err(|e| format!("shared part {}: not a bootstrap: {e}", part.sha256))?;
            bootstrap = bootstrap.laid_over(shared);
        }
        let modules_dir = self.options.cache_dir.join("modules");
        // Modules sent though no filter uses them yet: compiled ahead, once the config is in.
        let mut unused = Vec::new();
        for module in &snapshot.modules {
            let path = fetch_module(config, &modules_dir, &module.sha256).await?;
            let mut used = false;
            for f in bootstrap
                .listeners
                .iter_mut()
                .flat_map(|l| &mut l.http_filters)
                .filter(|f| f.sha256.as_deref() == Some(module.sha256.as_str()))
            {
                f.url = path.display().to_string();
                used = true;
            }
            if !used {
                unused.push((path, module.sha256.clone()));
            }
        }
        // What is the proxy's own to decide.
        bootstrap.admin = self.options.admin.clone().map(|address| Admin { address });
        bootstrap.workers = self.options.workers;
        if let Some(path) = &self.options.access_log {
            bootstrap.access_log = Some(AccessLog { path: path.clone() });
        }
        bootstrap.wasm.cache_dir = Some(self.options.cache_dir.join("compiled"));
        bootstrap.validate().map_err(|e| e.to_string())?;

        match &self.source {
            Some(source) => {
                let source = source.clone();
                // Compiling and starting plugins runs its own runtime: off this one.
                tokio::task::spawn_blocking(move || source.reload(bootstrap))
                    .await
                    .map_err(|e| format!("the reload panicked: {e}"))?
                    .map_err(|e| e.to_string())?;
            }
            None => {
                let first = self.first.as_ref().expect("set until the proxy starts");
                let (reply_tx, reply_rx) = std::sync::mpsc::channel();
                let _ = first.send(First {
                    bootstrap,
                    reply: reply_tx,
                });
                let started = tokio::task::spawn_blocking(move || reply_rx.recv())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|_| "the proxy stopped".to_owned())?;
                self.source = Some(started?);
                self.first = None;
            }
        }
        self.serving = snapshot.version.clone();
        tracing::info!(version = %snapshot.version, "control plane config applied");
        if !unused.is_empty()
            && let Some(source) = self.source.clone()
        {
            // Before the ACK, as the modules in use were compiled before it: a sidecar that
            // says it is in sync has its CPU back (at start, the whole set is compiled here
            // once; later snapshots find them in the cache).
            let _ = tokio::task::spawn_blocking(move || source.warm(&unused)).await;
        }
        Ok(())
    }
}

impl Client {
    /// The shared part with `sha256`: the last one again, or fetched (and checked).
    async fn shared_part(
        &mut self,
        config: &mut api::mesh_config_client::MeshConfigClient<tonic::transport::Channel>,
        sha256: &str,
    ) -> Result<Arc<str>, Rejected> {
        if let Some((sha, json)) = &self.shared
            && sha == sha256
        {
            return Ok(json.clone());
        }
        let json = config
            .get_shared(api::SharedRequest {
                sha256: sha256.to_owned(),
            })
            .await
            .map_err(|e| match e.code() {
                // The control plane serves only its current parts: it has pushed since.
                tonic::Code::NotFound => Rejected::Superseded,
                _ => Rejected::Error(format!("shared part {sha256}: {}", e.message())),
            })?
            .into_inner()
            .bootstrap_json;
        let actual = wasmesh_host::module::sha256_hex(json.as_bytes());
        if actual != sha256 {
            return Err(Rejected::Error(format!(
                "shared part {sha256}: received bytes with sha256 {actual}"
            )));
        }
        let json: Arc<str> = json.into();
        self.shared = Some((sha256.to_owned(), json.clone()));
        Ok(json)
    }
}

/// Why a snapshot was not applied.
enum Rejected {
    /// Its shared part is no longer served: a newer snapshot follows. No answer is due.
    Superseded,
    /// The NACK's error.
    Error(String),
}

impl From<String> for Rejected {
    fn from(e: String) -> Rejected {
        Rejected::Error(e)
    }
}

enum Session {
    /// The stream broke after it had delivered a snapshot.
    Synced(String),
    /// No stream, or it broke before any snapshot.
    Failed(String),
    /// The token to prove the sidecar's identity with could not be read.
    NoToken(TokenError),
    /// The control plane did not take the identity the Hello claims (its token was missing,
    /// invalid or another workload's).
    Refused(tonic::Status),
}

/// The module with `sha256`, from the disk cache or the control plane (checked, then kept).
async fn fetch_module(
    config: &mut api::mesh_config_client::MeshConfigClient<tonic::transport::Channel>,
    dir: &Path,
    sha256: &str,
) -> Result<PathBuf, String> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("module {sha256:?}: not a sha256"));
    }
    let path = dir.join(format!("{sha256}.wasm"));
    if path.is_file() {
        return Ok(path);
    }
    let mut chunks = config
        .get_module(api::ModuleRequest {
            sha256: sha256.to_owned(),
        })
        .await
        .map_err(|e| format!("module {sha256}: {}", e.message()))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(|e| format!("module {sha256}: {}", e.message()))?
    {
        bytes.extend_from_slice(&chunk.data);
    }
    let actual = wasmesh_host::module::sha256_hex(&bytes);
    if actual != sha256 {
        return Err(format!(
            "module {sha256}: received bytes with sha256 {actual}"
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!("{sha256}.wasm.{}", std::process::id()));
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A socket bound to `addr` with SO_REUSEPORT but not listening: it holds the port (and picks
/// one for port 0) without taking connections, until the workers' sockets are bound.
fn hold(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admins_port_is_held_beside_a_listener_binding_it_with_reuseaddr() {
        let held = hold("127.0.0.1:0".parse().unwrap()).unwrap();
        let bound = held.local_addr().unwrap().as_socket().unwrap();
        // What the proxy's admin does (std's bind sets SO_REUSEADDR), the port still held.
        let admin = std::net::TcpListener::bind(bound).expect("binds beside the held socket");
        drop(held);
        let client = std::net::TcpStream::connect(bound).expect("the admin listens");
        assert_eq!(client.peer_addr().unwrap(), admin.local_addr().unwrap());
    }
}
