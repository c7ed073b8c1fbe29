//! wasmesh-proxy: the data plane of wasmesh.
//!
//! [`Proxy::start`] binds the listeners of a [`config::Bootstrap`], starts one worker thread per
//! configured worker and the admin server, and returns a handle that reports the bound
//! addresses and drains the proxy. `docs/ARCHITECTURE.md` describes the threads and the path
//! of a request.

pub use wasmesh_config as config;

mod access_log;
mod admin;
mod body;
mod callouts;
mod config_source;
mod conn;
pub mod control_plane;
mod external_tls;
mod gateway_tls;
mod h1_guard;
mod h2_guard;
mod handshake_signatures;
mod headers;
pub mod identity;
pub mod init;
pub mod original_dst;
pub mod passthrough;
mod plugins;
mod request;
pub mod route;
mod rt;
mod server;
mod snapshot;
mod stats;
mod tcp_proxy;
mod telemetry;
mod threads;
mod tls;
mod upstream;
mod worker;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

pub use crate::config_source::ReloadError;
pub use crate::plugins::FilterError;

use crate::access_log::AccessLogSink;
use crate::config::{Bootstrap, ConfigError};
use crate::config_source::ConfigSource;
use crate::snapshot::Snapshot;
use crate::worker::Shared;
use wasmesh_host::Host;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is wrong, or names something that is not there (a plugin's module, the
    /// access log's directory): the error names the file (when started from one), the field
    /// and the reason.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener {listener:?}: cannot listen on {address}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    source: Arc<ConfigSource>,
    workers: Vec<JoinHandle<()>>,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    admin_stop: watch::Sender<bool>,
    listeners: Vec<(String, SocketAddr)>,
}

impl Proxy {
    /// Starts from a bootstrap file, which `reload_from_file`, SIGHUP and
    /// `POST /config_reload` read again.
    pub fn start_from_file(path: &Path) -> Result<Proxy, StartError> {
        let text = Bootstrap::read(path)?;
        let bootstrap = Bootstrap::from_file_text(path, &text)?;
        Proxy::start_with(bootstrap, Some((path.to_owned(), text)), Arc::default())
    }

    /// Binds every listener (and the admin address) and starts serving.
    pub fn start(bootstrap: Bootstrap) -> Result<Proxy, StartError> {
        Proxy::start_with(bootstrap, None, Arc::default())
    }

    fn start_with(
        bootstrap: Bootstrap,
        from_file: Option<(std::path::PathBuf, String)>,
        identity: Arc<identity::Identity>,
    ) -> Result<Proxy, StartError> {
        let file = from_file.as_ref().map(|(path, _)| path.as_path());
        let in_file = |e: ConfigError| StartError::Config(e.in_file(file));
        let workers = bootstrap.worker_count();
        let drain_timeout = bootstrap.drain_timeout.0;
        let access_log = match &bootstrap.access_log {
            Some(a) => Some(
                AccessLogSink::open(&a.path)
                    .map_err(|e| in_file(ConfigError::at("access_log.path", e.to_string())))?,
            ),
            None => None,
        };

        // One SO_REUSEPORT socket per worker and listener: the kernel spreads connections.
        let mut per_worker: Vec<Vec<std::net::TcpListener>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut listeners = Vec::new();
        for (i, l) in bootstrap.listeners.iter().enumerate() {
            let wanted = config::parse_listen_address(&l.address)
                .map_err(|r| in_file(ConfigError::at(format!("listeners[{i}].address"), r)))?;
            let bind_err = |source| StartError::Bind {
                listener: l.name.clone(),
                address: wanted,
                source,
            };
            let first = bind_reuseport(wanted).map_err(bind_err)?;
            let bound = first.local_addr().map_err(bind_err)?;
            per_worker[0].push(first);
            for sockets in per_worker.iter_mut().skip(1) {
                sockets.push(bind_reuseport(bound).map_err(bind_err)?);
            }
            listeners.push((l.name.clone(), bound));
        }

        let admin_socket = match &bootstrap.admin {
            Some(a) => {
                let address = config::parse_listen_address(&a.address)
                    .map_err(|r| in_file(ConfigError::at("admin.address", r)))?;
                let socket =
                    std::net::TcpListener::bind(address).map_err(|source| StartError::Bind {
                        listener: "admin".into(),
                        address,
                        source,
                    })?;
                socket.set_nonblocking(true).map_err(StartError::Thread)?;
                Some(socket)
            }
            None => None,
        };

        let cache_dir = bootstrap
            .wasm
            .cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("wasmesh-wasm-cache"));
        let host = Host::new(Some(cache_dir));
        let snapshot = Snapshot::build(bootstrap, 1, workers, &host, &identity, None)
            .map_err(|e| in_file(e.into()))?;
        let mut shared = Shared::new(snapshot, workers, access_log, host, identity);
        shared.listener_addrs = listeners.iter().map(|(_, addr)| *addr).collect();
        let shared = Arc::new(shared);
        let source = Arc::new(ConfigSource::new(shared.clone(), from_file));
        let (admin_stop, stop_rx) = watch::channel(false);
        let admin = match admin_socket {
            Some(socket) => {
                let addr = socket.local_addr().map_err(StartError::Thread)?;
                let (shared, source) = (shared.clone(), source.clone());
                let thread = std::thread::Builder::new()
                    .name("wasmesh-admin".into())
                    .spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("a tokio runtime for the admin server");
                        rt.block_on(async move {
                            let listener =
                                tokio::net::TcpListener::from_std(socket).expect("admin socket");
                            admin::serve(listener, shared, source, stop_rx).await;
                        });
                    })
                    .map_err(StartError::Thread)?;
                Some((addr, thread))
            }
            None => None,
        };

        let workers = per_worker
            .into_iter()
            .enumerate()
            .map(|(i, sockets)| threads::spawn_worker(i, shared.clone(), sockets, drain_timeout))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Thread)?;
        Ok(Proxy {
            shared,
            source,
            workers,
            admin,
            admin_stop,
            listeners,
        })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// All listeners with their bound addresses, in config order.
    pub fn listener_addrs(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _)| *a)
    }

    /// Stops accepting, lets requests in flight finish (up to `drain_timeout`), then stops.
    pub fn drain(&self) {
        self.shared.begin_drain();
    }

    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Applies a new bootstrap (see `docs/configuration.md`, "Reloading"); returns the new
    /// config version. On error the running config is untouched. Either way the outcome is
    /// recorded as for every reload (`wasmesh_config_reloads_total`, `last_reload_error`).
    pub fn reload(&self, bootstrap: Bootstrap) -> Result<u64, ReloadError> {
        self.source.reload(bootstrap)
    }

    /// Reloads the file the proxy started from (as SIGHUP and `POST /config_reload` do).
    pub fn reload_from_file(&self) -> Result<u64, ReloadError> {
        self.source.reload_file()
    }

    /// Reloads the file unless its text is the one last loaded (then `None`), as the proxy's
    /// watch of its config file does.
    pub fn reload_from_file_if_changed(&self) -> Result<Option<u64>, ReloadError> {
        self.source.reload_file_if_changed()
    }

    /// Why the last reload was refused, until a reload succeeds (as `/server_info` shows it).
    pub fn last_reload_error(&self) -> Option<ReloadError> {
        self.source.last_error()
    }

    /// Waits until the workers have drained (after [`Proxy::drain`], SIGTERM or
    /// `POST /quitquitquit`), then stops the admin server.
    pub fn wait(mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.admin_stop.send_replace(true);
        if let Some((_, thread)) = self.admin.take() {
            let _ = thread.join();
        }
    }

    /// Drains and waits.
    pub fn shutdown(self) {
        self.drain();
        self.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A proxy dropped without `wait` still stops its threads.
        self.shared.begin_drain();
        self.admin_stop.send_replace(true);
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Checks a bootstrap as far as starting it would, short of binding its addresses: the access
/// log's destination can be opened (nothing is created), endpoints resolve, and every
/// listener's plugins load, compile and start. `wasmesh-proxy --validate` runs it. Errors
/// name `file` (the bootstrap's file, if any), the field and the reason.
pub fn check(bootstrap: &Bootstrap, file: Option<&Path>) -> Result<(), ConfigError> {
    bootstrap.validate().map_err(|e| e.in_file(file))?;
    if let Some(a) = &bootstrap.access_log {
        access_log::check_destination(&a.path)
            .map_err(|e| ConfigError::at("access_log.path", e.to_string()).in_file(file))?;
    }
    // No disk cache: checking leaves nothing behind.
    let host = Host::new(None);
    Snapshot::build(bootstrap.clone(), 0, 1, &host, &Arc::default(), None)
        .map_err(|e| ConfigError::from(e).in_file(file))?;
    Ok(())
}

/// Loads and starts a listener's filters without serving. Errors name the filter.
pub fn check_filters(
    host: &Arc<Host>,
    filters: &[config::filters::HttpFilter],
    base_dir: Option<&std::path::Path>,
) -> Result<(), FilterError> {
    let specs = plugins::load_chain(host, filters, base_dir)?;
    plugins::validate(host, filters, &specs)
}

/// Loads and orders a listener's filters into the plugin specs a worker's chain is made of,
/// without starting them (`wasmesh bench` drives them in-process). Errors name the filter.
pub fn load_filters(
    host: &Arc<Host>,
    filters: &[config::filters::HttpFilter],
    base_dir: Option<&std::path::Path>,
) -> Result<Vec<Arc<wasmesh_host::PluginSpec>>, FilterError> {
    plugins::load_chain(host, filters, base_dir)
}

/// How long a SIGTERM drain may take before connections are closed.
pub fn drain_timeout(bootstrap: &Bootstrap) -> Duration {
    bootstrap.drain_timeout.0
}
