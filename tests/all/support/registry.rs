//! A real OCI registry on loopback for plugin-image tests: the reference distribution registry
//! (`/usr/bin/docker-registry`, Debian's 2.8) on 127.0.0.1 port 0, with TLS and htpasswd
//! (basic) auth when asked, or token (bearer) auth with a token server in this process (see
//! [`TokenServer`]); and the ORAS Python client (`oras` from PyPI, in the virtualenv
//! `/opt/wasmesh-py`) pushing and pulling artifacts, as `oras push` does for Istio's Wasm
//! plugin images. deploy/setup.sh installs both.
//!
//! Everything here blocks (processes, a blocking TCP probe): from an async test whose runtime
//! must serve meanwhile (an in-process proxy pulling from the registry), run the ORAS helpers
//! in `tokio::task::spawn_blocking`.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use tokio_rustls::rustls;

/// The registry binary (Debian's `docker-registry` package).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// The layer media type of a Wasm plugin image in the ORAS ("compat") form, as Istio's docs
/// push it: `oras push REF plugin.wasm:application/vnd.module.wasm.content.layer.v1+wasm`.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

/// How long the registry may take to start, and an ORAS script to run.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const ORAS_TIMEOUT: Duration = Duration::from_secs(60);

/// Credentials for the ORAS helpers: `Some((user, password))`, or `None` for none.
pub type Auth<'a> = Option<(&'a str, &'a str)>;

/// A running `docker-registry serve` with its config, storage, certificates and htpasswd file
/// in a temporary directory. Killed on drop; its log is printed if the test is panicking.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    tls: Option<RegistryTls>,
    auth: Option<(String, String)>,
    /// With token auth: the server issuing the tokens (`auth` holds what it accepts).
    token: Option<TokenServer>,
    lines: Arc<Mutex<Vec<String>>>,
    exited: Arc<AtomicBool>,
    stopped: bool,
    dir: tempfile::TempDir,
}

/// The registry's own CA (made fresh for each TLS registry) and a client trusting it.
struct RegistryTls {
    ca_pem: String,
    ca_pem_path: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl Registry {
    /// Plain HTTP, no auth.
    pub fn plain() -> Registry {
        Registry::start(false, None)
    }

    /// Plain HTTP with htpasswd basic auth (the registry allows it without TLS).
    pub fn plain_with_auth(user: &str, password: &str) -> Registry {
        Registry::start(false, Some((user, password)))
    }

    /// HTTPS with a certificate for 127.0.0.1 and localhost from a CA of its own (see
    /// [`Registry::ca_pem_path`]), no auth.
    pub fn tls() -> Registry {
        Registry::start(true, None)
    }

    /// HTTPS (as [`Registry::tls`]) with htpasswd basic auth.
    pub fn tls_with_auth(user: &str, password: &str) -> Registry {
        Registry::start(true, Some((user, password)))
    }

    /// Plain HTTP with token auth, as Docker Hub, GHCR and Harbor have it: the registry
    /// answers 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`, and a
    /// [`TokenServer`] in this process, checking `user` and `password` (HTTP Basic), issues
    /// the JWTs it accepts. Distribution 2.8 does not require TLS for token auth.
    pub fn with_token_auth(user: &str, password: &str) -> Registry {
        Registry::launch(false, Some((user, password)), true)
    }

    /// Starts a registry and waits until `GET /v2/` answers (200, or 401 with auth).
    pub fn start(tls: bool, auth: Auth<'_>) -> Registry {
        Registry::launch(tls, auth, false)
    }

    /// [`Registry::start`]; with `token`, `auth` is what a [`TokenServer`] accepts instead
    /// of an htpasswd file.
    fn launch(tls: bool, auth: Auth<'_>, token: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| {
            // A JSON string is a YAML string: the path needs no further quoting.
            serde_json::to_string(dir.path().join(name).to_str().unwrap()).unwrap()
        };
        let mut config = format!(
            "version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:0
  secret: wasmesh-test-secret
",
            storage = path("storage"),
        );
        let tls = tls.then(|| {
            let (tls, cert, key) = make_certificates(dir.path());
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                path(cert),
                path(key)
            );
            tls
        });
        let token = token.then(|| {
            let (user, password) = auth.expect("token auth needs credentials");
            let server = TokenServer::start(user, password, &dir.path().join("token-signer.pem"));
            config += &format!(
                "auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
",
                realm = serde_json::to_string(&server.realm()).unwrap(),
                service = TOKEN_SERVICE,
                issuer = TOKEN_ISSUER,
                bundle = path("token-signer.pem"),
            );
            server
        });
        if let (Some((user, password)), None) = (auth, &token) {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils, installed by deploy/setup.sh) runs");
            assert!(
                out.status.success(),
                "htpasswd -Bbn failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            config += &format!(
                "auth:\n  htpasswd:\n    realm: wasmesh-test\n    path: {}\n",
                path("htpasswd")
            );
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, &config).unwrap();

        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // REGISTRY_* variables override the config file.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run {REGISTRY_BIN} (docker-registry, installed by deploy/setup.sh): {e}")
        });
        // It logs to stderr; read stdout as well, so that nothing it writes there blocks it.
        let lines = Arc::new(Mutex::new(Vec::new()));
        let exited = Arc::new(AtomicBool::new(false));
        let stdout = child.stdout.take().expect("piped");
        let keep = lines.clone();
        std::thread::spawn(move || keep_lines(stdout, &keep));
        let stderr = child.stderr.take().expect("piped");
        let (keep, eof) = (lines.clone(), exited.clone());
        std::thread::spawn(move || {
            keep_lines(stderr, &keep);
            eof.store(true, SeqCst);
        });

        let mut registry = Registry {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls,
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
            token,
            lines,
            exited,
            stopped: false,
            dir,
        };
        registry.addr = registry.wait_listening(&config);
        registry.wait_ready();
        registry
    }

    /// The address from the line 2.8 logs once bound: `msg="listening on 127.0.0.1:PORT"`
    /// (`..., tls"` with TLS; it prints the listener's `Addr()`).
    fn wait_listening(&self, config: &str) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let found = self.lines.lock().unwrap().iter().find_map(|line| {
                let rest = &line[line.find("listening on ")? + "listening on ".len()..];
                let end = rest.find(['"', ',', ' ']).unwrap_or(rest.len());
                rest[..end].parse::<SocketAddr>().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                !self.exited.load(SeqCst) && Instant::now() < deadline,
                "docker-registry did not start listening; config:\n{config}\nits log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls `GET /v2/` until the registry answers it.
    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = self.v2_status();
            if let Ok(200 | 401) = status {
                return;
            }
            assert!(
                !self.exited.load(SeqCst) && Instant::now() < deadline,
                "docker-registry on {} does not answer GET /v2/ (last: {status:?}); its log:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The status of an unauthenticated `GET /v2/` (200 open, 401 with auth), over TLS when
    /// the registry has it; an error when nothing answers (after [`Registry::stop`], say).
    pub fn v2_status(&self) -> std::io::Result<u16> {
        let request = format!(
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host()
        );
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(2)))?;
        let status_line = match &self.tls {
            None => status_line(tcp, &request)?,
            Some(tls) => {
                let server = rustls::pki_types::ServerName::from(self.addr.ip());
                let conn = rustls::ClientConnection::new(tls.client.clone(), server)
                    .map_err(std::io::Error::other)?;
                status_line(rustls::StreamOwned::new(conn, tcp), &request)?
            }
        };
        status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not HTTP: {status_line:?}")))
    }

    /// `127.0.0.1:PORT`: the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `HOST/name`, the full reference of `name` (`plugins/router:v1`, `plugins/router@sha256:…`).
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// `https://127.0.0.1:PORT` or `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The PEM file of the CA that signed the registry's certificate (what a client trusts).
    /// Panics for a plain-HTTP registry.
    pub fn ca_pem_path(&self) -> &Path {
        &self.tls.as_ref().expect("a TLS registry").ca_pem_path
    }

    /// The CA's certificate, PEM. Panics for a plain-HTTP registry.
    pub fn ca_pem(&self) -> &str {
        &self.tls.as_ref().expect("a TLS registry").ca_pem
    }

    /// The user and password htpasswd (or, with token auth, the token server) accepts, if the
    /// registry requires auth.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Whether the registry wants bearer tokens ([`Registry::with_token_auth`]).
    pub fn is_token_auth(&self) -> bool {
        self.token.is_some()
    }

    /// The token server of a [`Registry::with_token_auth`] registry. Panics for any other.
    pub fn token_server(&self) -> &TokenServer {
        self.token.as_ref().expect("a registry with token auth")
    }

    /// How many tokens the token server has issued (see [`TokenServer::issued`]). Panics
    /// for a registry without token auth.
    pub fn tokens_issued(&self) -> usize {
        self.token_server().issued()
    }

    /// The filesystem storage's root (`docker/registry/v2/...`), for tests that tamper with it.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Kills the registry (SIGKILL) and waits for it: connections to [`Registry::host`] are
    /// refused from then on (until, rarely, something else binds the freed port).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stopped = true;
    }

    /// Whether [`Registry::stop`] has been called.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// What the registry has logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("docker-registry on {} logged:\n{}", self.addr, self.log());
            if let Some(token) = &self.token {
                eprintln!("its token server: {token:?}");
            }
        }
    }
}

/// The `service` of token auth: the registry's challenges name it, and a token's `aud` must.
pub const TOKEN_SERVICE: &str = "wasmesh-test";
/// The `iss` of the tokens, which the registry trusts.
pub const TOKEN_ISSUER: &str = "wasmesh-test-issuer";
/// How long a token lasts (`expires_in`, and `exp` - `iat`).
const TOKEN_LIFETIME_SECS: u64 = 300;

/// The token server of token auth ("Docker Registry v2 authentication via central service",
/// as Docker Hub's `auth.docker.io` does it), on `http://127.0.0.1:PORT/token`, a thread of the
/// test process: `GET /token?service=S&scope=repository:NAME:pull,push` (scopes possibly
/// repeated, or space-separated) with HTTP Basic credentials answers
/// `{"token": JWT, "access_token": JWT, "expires_in": 300}`, granting every scope asked for;
/// wrong or missing credentials get 401, another service 400.
///
/// The JWT is ES256, signed by a fresh P-256 key whose self-signed certificate is the
/// registry's `rootcertbundle` and goes in the header's `x5c` (distribution 2.8 verifies that
/// chain against the bundle, then the signature with the leaf's key; `aud` must be a string).
pub struct TokenServer {
    addr: SocketAddr,
    state: Arc<TokenState>,
    thread: Option<JoinHandle<()>>,
}

struct TokenState {
    user: String,
    password: String,
    signer: EcdsaKeyPair,
    /// The signing certificate's DER, base64 (standard, padded: a JWS `x5c` entry).
    x5c: String,
    rng: ring::rand::SystemRandom,
    issued: AtomicUsize,
    refused: AtomicUsize,
    /// The scopes of the tokens issued, one string per token (`""` for none), in order.
    scopes: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl TokenServer {
    /// Makes the signing key and certificate (the certificate's PEM written to `bundle`) and
    /// starts serving on 127.0.0.1 port 0.
    pub fn start(user: &str, password: &str, bundle: &Path) -> TokenServer {
        let key = KeyPair::generate().unwrap(); // ECDSA P-256 with SHA-256
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "wasmesh test token signer");
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(bundle, cert.pem()).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let signer =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
                .expect("rcgen's P-256 key in PKCS#8, as ring reads it");

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(TokenState {
            user: user.to_owned(),
            password: password.to_owned(),
            signer,
            x5c: STANDARD.encode(cert.der()),
            rng,
            issued: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let serving = state.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if serving.stop.load(SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let state = serving.clone();
                std::thread::spawn(move || {
                    // A client that goes away mid-request is no concern of the server's.
                    let _ = state.answer(stream);
                });
            }
        });
        TokenServer {
            addr,
            state,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/token`: the `realm` of the registry's challenges.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.state.issued.load(SeqCst)
    }

    /// Token requests refused so far (401: wrong or missing credentials).
    pub fn refused(&self) -> usize {
        self.state.refused.load(SeqCst)
    }

    /// The scopes each token issued so far grants, in order: the `scope` parameters of its
    /// request joined by spaces (`repository:filters/headers:pull,push`), `""` for none.
    pub fn scopes(&self) -> Vec<String> {
        self.state.scopes.lock().unwrap().clone()
    }
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("realm", &self.realm())
            .field("issued", &self.issued())
            .field("refused", &self.refused())
            .field("scopes", &self.scopes())
            .finish()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.state.stop.store(true, SeqCst);
        // Wakes the accept loop, which then sees `stop` and ends; should the connection fail,
        // the thread is left blocked in accept rather than this drop waiting for it.
        let woken = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(thread) = self.thread.take().filter(|_| woken) {
            let _ = thread.join();
        }
    }
}

impl TokenState {
    /// Reads one request from `stream` and answers it; the connection is closed after.
    fn answer(&self, stream: TcpStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = std::io::BufReader::new(&stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut authorization = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("authorization")
            {
                authorization = Some(value.trim().to_owned());
            }
        }
        let (status, extra, body) = self.respond(&request_line, authorization.as_deref());
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Method Not Allowed",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        );
        let mut stream = &stream;
        stream.write_all(response.as_bytes())?;
        stream.flush()
    }

    /// The status, extra header lines (each ending in CRLF) and JSON body for a request.
    fn respond(&self, request_line: &str, authorization: Option<&str>) -> (u16, String, String) {
        let error = |status, message: &str| {
            let body = serde_json::json!({"errors": [{"message": message}]}).to_string();
            (status, String::new(), body)
        };
        let mut words = request_line.split_whitespace();
        let (Some(method), Some(target)) = (words.next(), words.next()) else {
            return error(400, "not an HTTP request");
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path != "/token" {
            return error(404, "no such endpoint: the token endpoint is /token");
        }
        if method != "GET" {
            return error(405, "only GET (no OAuth2 POST) is served");
        }
        let credentials = authorization
            .and_then(|a| {
                a.strip_prefix("Basic ")
                    .or_else(|| a.strip_prefix("basic "))
            })
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let user = match credentials.as_deref().and_then(|c| c.split_once(':')) {
            Some((user, password)) if user == self.user && password == self.password => user,
            _ => {
                self.refused.fetch_add(1, SeqCst);
                let (status, _, body) = error(401, "wrong or missing credentials");
                let challenge = "WWW-Authenticate: Basic realm=\"wasmesh-test-token\"\r\n";
                return (status, challenge.to_owned(), body);
            }
        };
        let mut scopes = Vec::new();
        for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
            let value = percent_decode(value);
            match name {
                "service" if value != TOKEN_SERVICE => {
                    return error(400, &format!("unknown service {value:?}"));
                }
                "scope" => {
                    scopes.extend(value.split(' ').filter(|s| !s.is_empty()).map(String::from))
                }
                _ => {}
            }
        }
        let mut access = Vec::new();
        for scope in &scopes {
            // `type:name:actions`; a name may hold a colon (`registry:catalog:*` has none,
            // but an image name with a port would).
            let Some((kind, rest)) = scope.split_once(':') else {
                return error(400, &format!("bad scope {scope:?}"));
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                return error(400, &format!("bad scope {scope:?}"));
            };
            let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            access.push(serde_json::json!({"type": kind, "name": name, "actions": actions}));
        }

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": user,
            // A string: distribution 2.8 reads `aud` into a Go string (an array is malformed).
            "aud": TOKEN_SERVICE,
            "exp": now + TOKEN_LIFETIME_SECS,
            "nbf": now,
            "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // The FIXED algorithm signs as JWS wants it: r || s, 32 bytes each (not DER).
        let signature = self
            .signer
            .sign(&self.rng, signing_input.as_bytes())
            .expect("ES256 signing");
        let jwt = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        );
        self.issued.fetch_add(1, SeqCst);
        self.scopes.lock().unwrap().push(scopes.join(" "));
        let body = serde_json::json!({
            "token": jwt,
            "access_token": jwt,
            "expires_in": TOKEN_LIFETIME_SECS,
            "issued_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        });
        (200, String::new(), body.to_string())
    }
}

/// Decodes a query parameter's value (`%XX` escapes, `+` for a space).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (byte, None) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn keep_lines(from: impl Read, into: &Mutex<Vec<String>>) {
    for line in std::io::BufReader::new(from).lines() {
        let Ok(line) = line else { return };
        into.lock().unwrap().push(line);
    }
}

/// Sends `request` and reads up to the end of the status line.
fn status_line(mut stream: impl Read + Write, request: &str) -> std::io::Result<String> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// A CA, and a server certificate and key for 127.0.0.1 and localhost signed by it, written
/// in `dir` as `ca.pem`, `registry.pem` and `registry.key`.
fn make_certificates(dir: &Path) -> (RegistryTls, &'static str, &'static str) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "wasmesh test registry CA");
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();

    let key = KeyPair::generate().unwrap();
    // rcgen makes "127.0.0.1" an IP address SAN and "localhost" a DNS one.
    let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "wasmesh test registry");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();

    let ca_pem_path = dir.join("ca.pem");
    std::fs::write(&ca_pem_path, issuer.pem()).unwrap();
    std::fs::write(dir.join("registry.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("registry.key"), key.serialize_pem()).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(issuer.der().clone()).unwrap();
    // ring named here, not the process default: a crate in the graph may bring another.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = RegistryTls {
        ca_pem: issuer.pem(),
        ca_pem_path,
        client: Arc::new(client),
    };
    (tls, "registry.pem", "registry.key")
}

/// The Python of the virtualenv with the `oras` package (made by deploy/setup.sh).
pub fn oras_python() -> PathBuf {
    PathBuf::from("/opt/wasmesh-py/bin/python")
}

/// A pushed artifact.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The full reference pushed to (`127.0.0.1:PORT/plugins/router:v1`).
    pub reference: String,
    /// The manifest's digest (`sha256:…`), for `HOST/NAME@DIGEST` references.
    pub manifest_digest: String,
    /// The manifest as the registry serves it. A layer's digest is the sha256 of its file,
    /// unchanged (`manifest["layers"][0]["digest"]`).
    pub manifest: serde_json::Value,
}

/// Pushes `wasm` as `plugin.wasm` in a one-layer artifact of media type
/// [`WASM_LAYER_MEDIA_TYPE`], as `oras push REF plugin.wasm:<that type>` does. `reference` is
/// relative to the registry (`plugins/router:v1`) or full. Panics with the client's error.
pub fn oras_push_wasm(registry: &Registry, reference: &str, wasm: &Path, auth: Auth<'_>) -> Pushed {
    try_oras_push_wasm(registry, reference, wasm, auth)
        .unwrap_or_else(|e| panic!("oras push of {} to {reference}: {e}", wasm.display()))
}

/// [`oras_push_wasm`], returning the client's error (its stderr) instead of panicking.
pub fn try_oras_push_wasm(
    registry: &Registry,
    reference: &str,
    wasm: &Path,
    auth: Auth<'_>,
) -> Result<Pushed, String> {
    let bytes = std::fs::read(wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
    try_oras_push_files(
        registry,
        reference,
        &[("plugin.wasm", &bytes, WASM_LAYER_MEDIA_TYPE)],
        auth,
    )
}

/// Pushes an artifact with one layer per `(file name, contents, media type)`, in order (a
/// layer's title annotation is its file name), and oras-py's default empty config
/// (`application/vnd.unknown.config.v1+json`, `{}`). For images of other shapes: no Wasm
/// layer, two of them, another media type.
pub fn try_oras_push_files(
    registry: &Registry,
    reference: &str,
    files: &[(&str, &[u8], &str)],
    auth: Auth<'_>,
) -> Result<Pushed, String> {
    let work = tempfile::tempdir().unwrap();
    let upload = work.path().join("upload");
    std::fs::create_dir(&upload).unwrap();
    let mut specs = Vec::new();
    for (name, contents, media_type) in files {
        std::fs::write(upload.join(name), contents).unwrap();
        specs.push(format!("{name}:{media_type}"));
    }
    let reference = full_reference(registry, reference);
    let result = run_oras(
        registry,
        auth,
        &work,
        serde_json::json!({"op": "push", "reference": reference, "dir": upload, "files": specs}),
    )?;
    Ok(Pushed {
        reference,
        manifest_digest: result["digest"].as_str().unwrap_or_default().to_owned(),
        manifest: result["manifest"].clone(),
    })
}

/// Pulls the files of artifact `reference` (relative to the registry or full) into `out_dir`,
/// each under its title annotation; returns their paths. Panics with the client's error.
pub fn oras_pull(
    registry: &Registry,
    reference: &str,
    out_dir: &Path,
    auth: Auth<'_>,
) -> Vec<PathBuf> {
    try_oras_pull(registry, reference, out_dir, auth)
        .unwrap_or_else(|e| panic!("oras pull of {reference}: {e}"))
}

/// [`oras_pull`], returning the client's error (its stderr) instead of panicking.
pub fn try_oras_pull(
    registry: &Registry,
    reference: &str,
    out_dir: &Path,
    auth: Auth<'_>,
) -> Result<Vec<PathBuf>, String> {
    let work = tempfile::tempdir().unwrap();
    let result = run_oras(
        registry,
        auth,
        &work,
        serde_json::json!({
            "op": "pull",
            "reference": full_reference(registry, reference),
            "dir": out_dir,
        }),
    )?;
    Ok(result["files"]
        .as_array()
        .expect("a list of files")
        .iter()
        .map(|f| PathBuf::from(f.as_str().expect("a path")))
        .collect())
}

fn full_reference(registry: &Registry, reference: &str) -> String {
    let host = registry.host();
    if reference.starts_with(&format!("{host}/")) {
        reference.to_owned()
    } else {
        registry.reference(reference)
    }
}

/// The script the ORAS helpers run: argv[1] is the JSON of what to do, argv[2] the file to
/// write the JSON result to. Failures print a traceback and a last line `Type: message` to
/// stderr, and exit 1.
const ORAS_SCRIPT: &str = r#"
import json, os, sys, traceback
import oras.provider

Registry = oras.provider.Registry
# oras-py retries a failed request up to 5 times, sleeping 3 s to 83 s in between: a test
# wants the first error at once.
Registry.do_request = Registry.do_request.__wrapped__

def main():
    args = json.loads(sys.argv[1])
    client = Registry(
        hostname=args["host"],
        insecure=not args["tls"],
        tls_verify=args["ca"] or True,
        auth_backend="token" if args["token"] else "basic",
    )
    if args["user"] is not None:
        client.auth.set_basic_auth(args["user"], args["password"])
    else:
        # The basic backend without credentials fails with an AttributeError on a 401.
        def refuse(original, headers, refresh=False):
            raise PermissionError(
                f"{original.status_code} {original.reason} and no credentials: "
                f"{original.text.strip()}"
            )
        client.auth.authenticate_request = refuse
    if args["op"] == "push":
        os.chdir(args["dir"])
        response = client.push(target=args["reference"], files=args["files"], quiet=True)
        digest = response.headers.get("Docker-Content-Digest")
        manifest = client.get_manifest(args["reference"])
        result = {"digest": digest, "manifest": manifest}
    elif args["op"] == "pull":
        files = client.pull(target=args["reference"], outdir=args["dir"])
        result = {"files": files}
    else:
        raise ValueError(f"unknown op {args['op']}")
    with open(sys.argv[2], "w") as out:
        json.dump(result, out)

try:
    main()
except Exception as e:
    traceback.print_exc()
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
"#;

/// Runs [`ORAS_SCRIPT`] in `work` (also its HOME, so no `~/.docker/config.json` credentials
/// are read) with `args` plus the registry's address, TLS and `auth`.
fn run_oras(
    registry: &Registry,
    auth: Auth<'_>,
    work: &tempfile::TempDir,
    mut args: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let python = oras_python();
    assert!(
        python.exists(),
        "{} is missing: run deploy/setup.sh",
        python.display()
    );
    args["host"] = registry.host().into();
    args["tls"] = registry.is_tls().into();
    // With token auth, oras-py's token backend asks the token server with the credentials.
    args["token"] = registry.is_token_auth().into();
    args["ca"] = match &registry.tls {
        Some(tls) => tls.ca_pem_path.to_str().unwrap().into(),
        None => serde_json::Value::Null,
    };
    args["user"] = auth.map(|(u, _)| u).into();
    args["password"] = auth.map(|(_, p)| p).into();

    let result_path = work.path().join("result.json");
    let (stdout_path, stderr_path) = (work.path().join("stdout"), work.path().join("stderr"));
    let mut cmd = Command::new(&python);
    cmd.arg("-c")
        .arg(ORAS_SCRIPT)
        .arg(args.to_string())
        .arg(&result_path)
        .current_dir(work.path())
        .env("HOME", work.path())
        .env("PYTHONNOUSERSITE", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    for name in [
        "ORAS_USER",
        "ORAS_PASS",
        "DOCKER_CONFIG",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(name);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let deadline = Instant::now() + ORAS_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => {
            let result = std::fs::read_to_string(&result_path).unwrap_or_else(|e| {
                panic!("the oras script wrote no result ({e}); stderr:\n{stderr}")
            });
            Ok(serde_json::from_str(&result).unwrap())
        }
        Some(s) => Err(format!(
            "{}\n({s}; full stderr:\n{stderr})",
            stderr.lines().last().unwrap_or_default()
        )),
        None => Err(format!(
            "timed out after {ORAS_TIMEOUT:?}; stderr:\n{stderr}"
        )),
    }
}
