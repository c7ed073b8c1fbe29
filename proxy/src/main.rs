//! `wasmesh-proxy --config FILE`: runs the data plane from a static bootstrap.
//! `wasmesh-proxy --control-plane ADDR --node NAME ...`: runs a sidecar the control plane
//! configures.
//! `wasmesh-proxy init ...`: installs the iptables rules that send a pod's traffic through its
//! sidecar (Istio's `istio-iptables`), or removes them (`--cleanup`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wasmesh_proxy::Proxy;
use wasmesh_proxy::config::Bootstrap;
use wasmesh_proxy::init;

// jemalloc: fewer cycles per request than glibc malloc under many small allocations.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (`_RJEM_MALLOC_CONF` in the environment overrides
/// them). Freed pages are returned to the OS `dirty_decay_ms` after they were last used, by
/// a background thread: without it jemalloc purges only while threads allocate, so an idle
/// proxy kept the memory of a past burst of connections (issue 9: 197 MB for 40 s and more).
/// `muzzy_decay_ms:0` purges with `MADV_DONTNEED`, which lowers the resident size at once
/// (`MADV_FREE` pages count as resident until the kernel needs them).
#[cfg(target_os = "linux")]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &u8 = &b"background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:0\0"[0];

/// The wasmesh data plane.
#[derive(Parser)]
#[command(
    version,
    about,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// The bootstrap YAML file (see docs/configuration.md).
    #[arg(
        long,
        short,
        required_unless_present = "control_plane",
        conflicts_with = "control_plane"
    )]
    config: Option<PathBuf>,
    #[command(flatten)]
    sidecar: SidecarArgs,
    /// Check the config and exit.
    #[arg(long)]
    validate: bool,
    /// Log filter, as RUST_LOG (for example `info` or `wasmesh_proxy=debug`).
    #[arg(long, env = "WASMESH_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Installs the nat-table rules that send the pod's TCP traffic through its sidecar, as
    /// Istio's istio-iptables does (IPv4 only). Run it as root in the pod's network namespace
    /// before the workload starts; running it again gives the same rules.
    Init(InitArgs),
}

/// `init`'s flags. Lists are comma-separated; the short letters are istio-iptables'.
#[derive(clap::Args)]
struct InitArgs {
    /// Where outbound TCP is redirected: the sidecar's outbound listener.
    #[arg(long, short = 'p', value_name = "PORT", default_value_t = init::REDIRECT_PORT.to_string())]
    redirect_port: String,
    /// Where inbound TCP is redirected: the sidecar's inbound listener.
    #[arg(long, short = 'z', value_name = "PORT", default_value_t = init::INBOUND_CAPTURE_PORT.to_string())]
    inbound_capture_port: String,
    /// The sidecar's user ids: what they send is not redirected.
    #[arg(long, short = 'u', value_name = "UIDS", default_value_t = init::PROXY_ID.to_string())]
    proxy_uid: String,
    /// The sidecar's group ids: what they send is not redirected.
    #[arg(long, short = 'g', value_name = "GIDS", default_value_t = init::PROXY_ID.to_string())]
    proxy_gid: String,
    /// Inbound ports redirected to the sidecar: `*` for all, empty for none.
    #[arg(long, short = 'b', value_name = "PORTS", default_value = "*")]
    inbound_ports: String,
    /// Inbound ports never redirected, besides 15001, 15006, 15000, 15020, 15021, 15090 and
    /// the two ports above.
    #[arg(long, short = 'd', value_name = "PORTS")]
    exclude_inbound_ports: Option<String>,
    /// Outbound destinations redirected to the sidecar, as CIDRs: `*` for all, empty for none.
    #[arg(long, short = 'i', value_name = "CIDRS", default_value = "*")]
    outbound_ip_ranges: String,
    /// Outbound destinations never redirected, as CIDRs.
    #[arg(long, short = 'x', value_name = "CIDRS")]
    exclude_outbound_ip_ranges: Option<String>,
    /// Outbound ports never redirected.
    #[arg(long, short = 'o', value_name = "PORTS")]
    exclude_outbound_ports: Option<String>,
    /// Print the iptables-restore input instead of applying it (with `--cleanup`, what would
    /// be removed).
    #[arg(long)]
    dry_run: bool,
    /// Remove the jumps and the ISTIO_* chains init installed (other flags are ignored).
    #[arg(long)]
    cleanup: bool,
}

impl InitArgs {
    fn options(&self) -> Result<init::Options, init::InitError> {
        let text = |value: &Option<String>| value.as_deref().unwrap_or_default().to_owned();
        Ok(init::Options {
            redirect_port: init::parse_port("--redirect-port", &self.redirect_port)?,
            inbound_capture_port: init::parse_port(
                "--inbound-capture-port",
                &self.inbound_capture_port,
            )?,
            proxy_uids: init::parse_ids("--proxy-uid", &self.proxy_uid)?,
            proxy_gids: init::parse_ids("--proxy-gid", &self.proxy_gid)?,
            inbound_ports: init::parse_port_capture("--inbound-ports", &self.inbound_ports)?,
            exclude_inbound_ports: init::parse_ports(
                "--exclude-inbound-ports",
                &text(&self.exclude_inbound_ports),
            )?,
            outbound_ip_ranges: init::parse_cidr_capture(
                "--outbound-ip-ranges",
                &self.outbound_ip_ranges,
            )?,
            exclude_outbound_ip_ranges: init::parse_cidrs(
                "--exclude-outbound-ip-ranges",
                &text(&self.exclude_outbound_ip_ranges),
            )?,
            exclude_outbound_ports: init::parse_ports(
                "--exclude-outbound-ports",
                &text(&self.exclude_outbound_ports),
            )?,
        })
    }
}

/// A sidecar's identity and listeners, for `--control-plane`.
#[derive(clap::Args)]
struct SidecarArgs {
    /// The control plane's address (`host:port`): the proxy is a sidecar it configures.
    #[arg(long, requires = "node")]
    control_plane: Option<String>,
    /// The workload instance's name (a pod's name), unique in its namespace.
    #[arg(long)]
    node: Option<String>,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The workload's labels, `key=value` (repeat the flag).
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Where the workload sends its outbound requests (port 0 picks one) [default:
    /// 127.0.0.1:15001; with --pod-ip, where iptables send them instead, 127.0.0.1:0].
    #[arg(long)]
    outbound: Option<String>,
    /// A workload port behind the sidecar: `PORT=APP_ADDRESS[@LISTEN_ADDRESS]`, for example
    /// `9080=127.0.0.1:9080@127.0.0.1:15006` (the listen address defaults to 127.0.0.1:0).
    #[arg(long, value_parser = inbound_port)]
    inbound: Vec<wasmesh_api::InboundPort>,
    /// Run as a gateway (Istio's ingress or egress gateway): serve the Gateway servers of
    /// port PORT at LISTEN_ADDRESS (`PORT[=LISTEN_ADDRESS]`, default `0.0.0.0:PORT`; repeat
    /// the flag). A gateway has no outbound or inbound listeners.
    #[arg(long = "gateway-port", value_parser = gateway_port, conflicts_with_all = ["inbound", "outbound", "pod_ip"])]
    gateway_ports: Vec<wasmesh_api::GatewayPort>,
    /// The admin API's address.
    #[arg(long)]
    admin: Option<String>,
    /// Where to answer `GET /healthz/ready` with the admin's `/ready`, for a kubelet's
    /// readiness probe (Istio's status port, 15021), and `GET /stats/prometheus` with the
    /// admin's, for scrapers (Istio's 15020), so the admin API, which also takes
    /// `POST /quitquitquit`, can stay on loopback. With --pod-ip, the control plane scrapes
    /// the metrics here. Needs --admin.
    #[arg(long, value_name = "ADDRESS", requires = "admin")]
    health: Option<std::net::SocketAddr>,
    #[arg(long)]
    workers: Option<usize>,
    /// Modules from the control plane and compiled modules are kept here.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The lifetime to ask for the workload certificate (Istio's SECRET_TTL); the control
    /// plane's default when not given.
    #[arg(long, value_parser = wasmesh_proxy::config::parse_duration)]
    cert_ttl: Option<std::time::Duration>,
    /// Write an access log (JSON lines, Envoy's field names) to this file; `/dev/stdout` or
    /// `-` for standard output (Istio's `accessLogFile`).
    #[arg(long, value_name = "PATH")]
    access_log: Option<String>,
    /// The pod's IP, for a sidecar whose traffic iptables redirect (`wasmesh-proxy init`):
    /// it then serves redirected connections on 15001 (outbound) and 15006 (inbound), and
    /// other sidecars reach the workload's ports at this IP.
    #[arg(long, value_name = "IP")]
    pod_ip: Option<std::net::IpAddr>,
    /// The pod's service-account token (audience `istio-ca`, Istio's projected
    /// `istio-token`), which proves its namespace and service account to a control plane on
    /// Kubernetes. Read again at every reconnect, as the kubelet rotates it.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected key=value"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn inbound_port(text: &str) -> Result<wasmesh_api::InboundPort, String> {
    let (port, rest) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected PORT=APP_ADDRESS[@LISTEN_ADDRESS]"))?;
    let port: u32 = port
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| format!("{port:?}: not a port"))?;
    let (app, listen) = rest.split_once('@').unwrap_or((rest, "127.0.0.1:0"));
    Ok(wasmesh_api::InboundPort {
        port,
        listen_address: listen.to_owned(),
        app_address: app.to_owned(),
    })
}

fn gateway_port(text: &str) -> Result<wasmesh_api::GatewayPort, String> {
    let (port, listen) = match text.split_once('=') {
        Some((port, listen)) => (port, Some(listen)),
        None => (text, None),
    };
    let port: u32 = port
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| format!("{port:?}: not a port (PORT[=LISTEN_ADDRESS])"))?;
    Ok(wasmesh_api::GatewayPort {
        port,
        listen_address: listen.map_or_else(|| format!("0.0.0.0:{port}"), str::to_owned),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(Command::Init(init_args)) = args.command {
        return run_init(&init_args);
    }
    let Some(config) = args.config else {
        return run_sidecar(args.sidecar);
    };
    let bootstrap = match Bootstrap::load(&config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.validate {
        // What start-up would refuse short of binding addresses: plugins are loaded and
        // started, the access log's directory must exist.
        if let Err(e) = wasmesh_proxy::check(&bootstrap, Some(&config)) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        println!("{}: ok", config.display());
        return ExitCode::SUCCESS;
    }
    let workers = bootstrap.worker_count();
    drop(bootstrap);
    let proxy = match Proxy::start_from_file(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    serve(proxy, Some(&config), || {
        tracing::info!(workers, "wasmesh-proxy started")
    })
}

/// `init`: installs (or prints, or removes) the interception rules.
fn run_init(args: &InitArgs) -> ExitCode {
    let result = if args.cleanup {
        init::cleanup(args.dry_run).map(drop)
    } else {
        args.options().and_then(|options| {
            if args.dry_run {
                print!("{}", init::rules(&options, ""));
                Ok(())
            } else {
                init::install(&options)
            }
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a sidecar of the control plane until SIGTERM or SIGINT.
fn run_sidecar(args: SidecarArgs) -> ExitCode {
    let (Some(control_plane), Some(name)) = (args.control_plane, args.node) else {
        eprintln!("error: --control-plane and --node are required without --config");
        return ExitCode::FAILURE;
    };
    // Bound before the Hello: on a pod, the control plane scrapes metrics at this port (as
    // Istio's 15020), since the admin API stays on loopback.
    let health = match args.health.map(std::net::TcpListener::bind).transpose() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: --health: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics_address = match (&health, args.pod_ip) {
        (Some(h), Some(ip)) => h
            .local_addr()
            .map(|a| std::net::SocketAddr::new(ip, a.port()).to_string())
            .unwrap_or_default(),
        // The admin's bound address, filled in when the ports are bound.
        _ => String::new(),
    };
    let cache_dir = args
        .cache_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("wasmesh-sidecar-{name}")));
    let options = wasmesh_proxy::control_plane::SidecarOptions {
        control_plane,
        node: wasmesh_api::Node {
            name,
            namespace: args.namespace,
            labels: args.labels.into_iter().collect(),
            service_account: args.service_account,
            outbound_address: args.outbound.unwrap_or_else(|| {
                if !args.gateway_ports.is_empty() {
                    String::new()
                } else if args.pod_ip.is_some() {
                    "127.0.0.1:0".into()
                } else {
                    "127.0.0.1:15001".into()
                }
            }),
            inbound: args.inbound,
            pod_ip: args.pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            metrics_address,
            gateway_ports: args.gateway_ports,
        },
        admin: args.admin,
        workers: args.workers,
        cert_ttl: args.cert_ttl,
        access_log: args.access_log,
        token_file: args.token_file,
        cache_dir,
    };
    let proxy = match wasmesh_proxy::control_plane::start(options) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(listener), Some(admin)) = (health, proxy.admin_addr())
        && let Err(e) = health::spawn(listener, admin)
    {
        eprintln!("error: --health: {e}");
        return ExitCode::FAILURE;
    }
    serve(proxy, None, || {
        tracing::info!("wasmesh-proxy sidecar started")
    })
}

/// Logs where a started proxy listens, announces it, serves until SIGTERM or SIGINT (with
/// reloads of `config`, if any), then drains.
fn serve(proxy: Proxy, config: Option<&std::path::Path>, announce: impl FnOnce()) -> ExitCode {
    for (name, addr) in proxy.listener_addrs() {
        tracing::info!(listener = %name, address = %addr, "listening");
    }
    if let Some(addr) = proxy.admin_addr() {
        tracing::info!(address = %addr, "admin listening");
    }
    log_allocator();
    announce();
    wait_for_signal(&proxy, config);
    tracing::info!("draining");
    proxy.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Logs jemalloc's options in effect, read back from jemalloc itself.
fn log_allocator() {
    #[cfg(target_os = "linux")]
    {
        use tikv_jemalloc_ctl::{background_thread, opt, raw};
        let decay = |name: &[u8]| {
            // SAFETY: `opt.*_decay_ms` are `ssize_t` options, read as such.
            unsafe { raw::read::<isize>(name) }.ok()
        };
        tracing::info!(
            background_thread = background_thread::read().ok(),
            opt_background_thread = opt::background_thread::read().ok(),
            dirty_decay_ms = decay(b"opt.dirty_decay_ms\0"),
            muzzy_decay_ms = decay(b"opt.muzzy_decay_ms\0"),
            "allocator: jemalloc"
        );
    }
}

/// Blocks until SIGTERM or SIGINT. Meanwhile SIGHUP, or a change to the config file (checked
/// every second), reloads the configuration.
fn wait_for_signal(proxy: &Proxy, config: Option<&std::path::Path>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for signals");
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        let modified = || {
            config
                .and_then(|c| std::fs::metadata(c).ok())
                .and_then(|m| m.modified().ok())
        };
        let mut seen = modified();
        let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv(), if config.is_some() => reload(proxy, "SIGHUP", true).await,
                _ = poll.tick() => {
                    let now = modified();
                    if now != seen {
                        seen = now;
                        // Unless an admin reload already loaded this text.
                        reload(proxy, "config file changed", false).await;
                    }
                }
            }
        }
    });
}

/// Reloads the config file. The proxy records the outcome (counters, `last_reload_error`)
/// and logs it, as for a reload asked by `POST /config_reload`.
async fn reload(proxy: &Proxy, why: &str, force: bool) {
    tracing::info!(reason = why, "reloading configuration");
    // Compiling and starting plugins runs its own runtime: do it on a plain thread.
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            if force {
                proxy.reload_from_file().map(Some)
            } else {
                proxy.reload_from_file_if_changed()
            }
        })
        .join()
    });
    match result {
        Ok(Ok(None)) => {
            tracing::info!("the config file's text is the one in effect: nothing to do")
        }
        Ok(_) => {}
        Err(_) => tracing::error!(reason = why, "the reload panicked"),
    }
}

/// The readiness and metrics endpoint of `--health`.
mod health {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// Serves `GET /healthz/ready` and `GET /stats/prometheus` (relayed from the admin) on
    /// `listener`, on a thread of its own.
    pub fn spawn(listener: TcpListener, admin: SocketAddr) -> std::io::Result<()> {
        tracing::info!(address = %listener.local_addr()?, "health listening");
        std::thread::Builder::new()
            .name("wasmesh-health".into())
            .spawn(move || {
                // One at a time: a kubelet probes every few seconds, each answer is quick,
                // and a client that stalls is cut off after TIMEOUT.
                for stream in listener.incoming().flatten() {
                    let _ = answer(stream, admin);
                }
            })?;
        Ok(())
    }

    fn answer(mut stream: TcpStream, admin: SocketAddr) -> std::io::Result<()> {
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let head = read_head(&mut stream)?;
        let (status, body) = match head.split(' ').take(2).collect::<Vec<_>>()[..] {
            ["GET", "/healthz/ready"] if admin_ready(admin) => ("200 OK", "LIVE\n".into()),
            ["GET", "/healthz/ready"] => ("503 Service Unavailable", "not ready\n".into()),
            ["GET", "/stats/prometheus"] => match admin_get(admin, "/stats/prometheus") {
                Ok((200, body)) => ("200 OK", body),
                _ => ("503 Service Unavailable", "admin unavailable\n".into()),
            },
            _ => (
                "404 Not Found",
                "GET /healthz/ready or /stats/prometheus\n".into(),
            ),
        };
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        stream.write_all(&body)
    }

    /// A GET to the admin API: its status and body (the admin closes after answering).
    fn admin_get(admin: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect_timeout(&admin, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT * 5))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err(std::io::ErrorKind::InvalidData.into());
        };
        let head = String::from_utf8_lossy(&response[..end]);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        Ok((status, response[end + 4..].to_vec()))
    }

    /// The request's head, up to its blank line (8 KiB at most, within about TIMEOUT).
    fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut head = Vec::new();
        let mut buf = [0; 1024];
        while !head.ends_with(b"\r\n\r\n")
            && head.len() < 8192
            && std::time::Instant::now() < deadline
        {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&head).into_owned())
    }

    /// Whether the admin's `/ready` says 200: the proxy has its config and is not draining.
    fn admin_ready(admin: SocketAddr) -> bool {
        let ask = || -> std::io::Result<bool> {
            let mut stream = TcpStream::connect_timeout(&admin, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.write_all(
                b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )?;
            let mut status = [0; 12];
            stream.read_exact(&mut status)?;
            Ok(status.ends_with(b" 200"))
        };
        ask().unwrap_or(false)
    }
}
