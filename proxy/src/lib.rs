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
mod filtered;
mod h1_guard;
mod h2_guard;
mod handler;
mod headers;
mod route;
mod rt;
mod server;
mod snapshot;
mod stats;
mod upstream;
mod wasm;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::access_log::AccessLogSink;
use crate::config::Bootstrap;
use crate::snapshot::Snapshot;
use crate::worker::Shared;
use wasmesh_host::Host;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {listener:?}: cannot listen on {address}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("access log {path:?}: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    admin_stop: watch::Sender<bool>,
    listeners: Vec<(String, SocketAddr)>,
}

impl Proxy {
    /// Starts from a bootstrap file, which `reload_from_file`, SIGHUP and
    /// `POST /config_reload` read again.
    pub fn start_from_file(path: &std::path::Path) -> Result<Proxy, StartError> {
        let config = |e: config::ConfigError| StartError::Config(e.to_string());
        let text = Bootstrap::read(path).map_err(config)?;
        let bootstrap = Bootstrap::from_file_text(path, &text).map_err(config)?;
        let proxy = Proxy::start_with(bootstrap, Some(path.to_owned()))?;
        *proxy
            .shared
            .loaded_text
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(text);
        Ok(proxy)
    }

    /// Binds every listener (and the admin address) and starts serving.
    pub fn start(bootstrap: Bootstrap) -> Result<Proxy, StartError> {
        Proxy::start_with(bootstrap, None)
    }

    fn start_with(
        bootstrap: Bootstrap,
        config_path: Option<std::path::PathBuf>,
    ) -> Result<Proxy, StartError> {
        let workers = bootstrap.worker_count();
        let drain_timeout = bootstrap.drain_timeout.0;
        let access_log = match &bootstrap.access_log {
            Some(a) => {
                Some(
                    AccessLogSink::open(&a.path).map_err(|source| StartError::AccessLog {
                        path: a.path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };

        // One SO_REUSEPORT socket per worker and listener: the kernel spreads connections.
        let mut per_worker: Vec<Vec<std::net::TcpListener>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut listeners = Vec::new();
        for l in &bootstrap.listeners {
            let wanted = config::parse_listen_address(&l.address).map_err(StartError::Config)?;
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
                let address =
                    config::parse_listen_address(&a.address).map_err(StartError::Config)?;
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
        let snapshot = Snapshot::build(bootstrap, 1, workers, &host).map_err(StartError::Config)?;
        let mut shared = Shared::new(snapshot, workers, access_log, host);
        shared.config_path = config_path;
        let shared = Arc::new(shared);
        let (admin_stop, stop_rx) = watch::channel(false);
        let admin = match admin_socket {
            Some(socket) => {
                let addr = socket.local_addr().map_err(StartError::Thread)?;
                let shared = shared.clone();
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
                            admin::serve(listener, shared, stop_rx).await;
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
            .map(|(i, sockets)| worker::spawn(i, shared.clone(), sockets, drain_timeout))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Thread)?;
        Ok(Proxy {
            shared,
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
    /// config version. On error the running config is untouched.
    pub fn reload(&self, bootstrap: Bootstrap) -> Result<u64, String> {
        self.shared.reload(bootstrap)
    }

    /// Reloads the file the proxy started from.
    pub fn reload_from_file(&self) -> Result<u64, String> {
        self.shared.reload_from_file()
    }

    /// Reloads the file unless its text is the one last loaded (then `None`), as the proxy's
    /// watch of its config file does.
    pub fn reload_from_file_if_changed(&self) -> Result<Option<u64>, String> {
        self.shared.reload_from_file_if_changed()
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

/// Loads and starts a listener's filters without serving: the errors `--validate` reports.
pub fn check_filters(
    host: &Arc<Host>,
    filters: &[config::filters::HttpFilter],
    base_dir: Option<&std::path::Path>,
) -> Result<(), String> {
    let specs = wasm::load_chain(host, filters, base_dir)?;
    wasm::validate(host, &specs)
}

/// Loads and orders a listener's filters into the plugin specs a worker's chain is made of,
/// without starting them (`wasmesh bench` drives them in-process). Errors name the filter.
pub fn load_filters(
    host: &Arc<Host>,
    filters: &[config::filters::HttpFilter],
    base_dir: Option<&std::path::Path>,
) -> Result<Vec<Arc<wasmesh_host::PluginSpec>>, String> {
    wasm::load_chain(host, filters, base_dir)
}

/// How long a SIGTERM drain may take before connections are closed.
pub fn drain_timeout(bootstrap: &Bootstrap) -> Duration {
    bootstrap.drain_timeout.0
}
