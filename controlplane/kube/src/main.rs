//! `wasmesh-controlplane --manifests DIR`: watches a directory of Istio manifests and keeps
//! every connected sidecar's configuration in sync over gRPC.
//!
//! `wasmesh-controlplane --kubernetes`: the same from the API server (Istio's CRDs, Services,
//! EndpointSlices, Pods), plus the sidecar injector's webhook; replicas elect one of them
//! (a Lease) to create the CA's Secret, write status and set the webhook's caBundle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;
use wasmesh_controlplane::ca::{Authority, CaFiles, WatchedAuthority};
use wasmesh_controlplane::dashboard::{Dashboard, DashboardOptions};
use wasmesh_controlplane::images::RegistryOptions;
use wasmesh_controlplane::images::puller::PullerOptions;
use wasmesh_controlplane::mesh::{Mesh, MeshOptions};
use wasmesh_controlplane::server::Services;
use wasmesh_controlplane::source::{self, DirectorySource, SourceState};
use wasmesh_controlplane::{Options, PluginModules};
use wasmesh_kube::lease::{Lease, LeaseHandle};
use wasmesh_kube::source::{KubeSource, KubeSourceOptions};
use wasmesh_kube::token_review::TokenReviewer;
use wasmesh_kube::webhook::{self, Injector, InjectorConfig, ServingCertificate};
use wasmesh_kube::{ca_bundle, ca_secret, pull_secrets, status};

// jemalloc, configured for memory over speed: the control plane waits on the network, not on
// malloc, and every page it keeps counts against each connected proxy. One arena and no
// thread caches, so freed memory is not held per thread, and freed pages go back to the OS
// at once (with a one-second decay and a background thread, ~2 MiB more stayed resident at
// 100 proxies, seconds after the last push). Measured at 100 proxies: 36-40 KiB per proxy
// instead of 53-60, for ~70 µs more CPU per push per proxy (docs/benchmarks.md).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(target_os = "linux")]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &u8 = &b"narenas:1,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0\0"[0];

/// The wasmesh control plane.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The directory of Istio YAML to serve (watched; every `*.yaml` and `*.yml` in it).
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    manifests: Option<PathBuf>,
    /// Read the mesh from the Kubernetes API server (in-cluster, or `KUBECONFIG`) and serve the
    /// sidecar injector.
    #[arg(long)]
    kubernetes: bool,
    #[command(flatten)]
    kube: KubeArgs,
    /// The directory holding the four traffic plugins' modules.
    #[arg(long, default_value = "target/wasm32-wasip1/release")]
    plugins: PathBuf,
    /// Where proxies and the CLI connect (gRPC, plaintext).
    #[arg(long, default_value = "127.0.0.1:15010")]
    address: SocketAddr,
    /// Where registrations are kept across restarts (created if missing).
    #[arg(long, default_value = ".wasmesh-controlplane")]
    data_dir: PathBuf,
    /// How long a disconnected proxy's workload stays an endpoint.
    #[arg(long, default_value = "15s", value_parser = wasmesh_controlplane::duration::parse)]
    grace: Duration,
    /// The mesh's trust domain: workloads are `spiffe://<it>/ns/<namespace>/sa/<account>`.
    #[arg(long, default_value = wasmesh_controlplane::ca::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The CA as Istio's plugged-in `cacerts` (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem); without it, a self-signed root kept in `<data-dir>/ca`.
    #[arg(long)]
    cacerts: Option<PathBuf>,
    /// The lifetime of workload certificates (Istio's DEFAULT_WORKLOAD_CERT_TTL).
    #[arg(long, default_value = "24h", value_parser = wasmesh_controlplane::duration::parse)]
    workload_cert_ttl: Duration,
    /// The longest lifetime a proxy may ask for (Istio's MAX_WORKLOAD_CERT_TTL).
    #[arg(long, default_value = "2160h", value_parser = wasmesh_controlplane::duration::parse)]
    max_workload_cert_ttl: Duration,
    /// Where pulled plugin modules are kept, by digest [default: <data-dir>/images].
    #[arg(long)]
    image_cache: Option<PathBuf>,
    /// Where WasmPlugins' `imagePullSecret`s are: `<dir>/<namespace>/<name>.json`, each a
    /// Docker config.json [default: <data-dir>/pull-secrets].
    #[arg(long)]
    pull_secrets: Option<PathBuf>,
    /// A CA (PEM) trusted for registries and https:// modules, besides the system's roots.
    #[arg(long)]
    registry_ca: Option<PathBuf>,
    /// A registry (`host:port`) reached over plain HTTP (repeat).
    #[arg(long, value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// The cluster's DNS suffix.
    #[arg(long, default_value = "svc.cluster.local")]
    domain_suffix: String,
    /// The cluster the workloads run in, as sidecars report it in Istio's metrics (Istio's
    /// CLUSTER_ID).
    #[arg(long, env = "CLUSTER_ID", default_value = wasmesh_controlplane::telemetry::DEFAULT_CLUSTER_ID)]
    cluster_id: String,
    #[command(flatten)]
    dashboard: DashboardArgs,
    /// Log filter, as RUST_LOG.
    #[arg(long, env = "WASMESH_LOG", default_value = "info")]
    log: String,
}

/// The dashboard: a live service graph of the proxies' Istio metrics (`wasmesh dashboard`).
#[derive(clap::Args)]
struct DashboardArgs {
    /// Serve the dashboard's page and API (`/api/graph`) at this address, for example
    /// 127.0.0.1:15014 (port 0 picks one); the proxies' metrics are scraped only then.
    #[arg(long, value_name = "ADDRESS")]
    dashboard: Option<SocketAddr>,
    /// How often the dashboard scrapes each proxy's `/stats/prometheus`.
    #[arg(long, default_value = "5s", value_parser = wasmesh_controlplane::duration::parse)]
    dashboard_scrape_interval: Duration,
    /// The window the dashboard's rates and latencies are computed over (Kiali's default).
    #[arg(long, default_value = "1m", value_parser = wasmesh_controlplane::duration::parse)]
    dashboard_window: Duration,
}

impl DashboardArgs {
    /// Binds the dashboard's address and starts scraping `mesh`'s proxies; the bound
    /// address, once it serves.
    async fn start(&self, mesh: &Arc<Mesh>) -> anyhow::Result<Option<SocketAddr>> {
        let Some(wanted) = self.dashboard else {
            return Ok(None);
        };
        if self.dashboard_scrape_interval.is_zero() || self.dashboard_window.is_zero() {
            anyhow::bail!("--dashboard-scrape-interval and --dashboard-window must not be 0");
        }
        let listener = tokio::net::TcpListener::bind(wanted)
            .await
            .with_context(|| format!("--dashboard: cannot listen on {wanted}"))?;
        let address = listener.local_addr()?;
        let dashboard = Dashboard::start(
            mesh.clone(),
            DashboardOptions {
                scrape_interval: self.dashboard_scrape_interval,
                window: self.dashboard_window,
                ..DashboardOptions::default()
            },
        );
        tokio::spawn(dashboard.serve(listener));
        tracing::info!(%address, "dashboard listening");
        Ok(Some(address))
    }
}

/// What only `--kubernetes` uses.
#[derive(clap::Args)]
struct KubeArgs {
    /// The control plane's namespace: its Lease, its CA's Secret, its Service.
    #[arg(long, env = "POD_NAMESPACE", default_value = "wasmesh-system")]
    namespace: String,
    /// This replica's name in the Lease [default: the host name].
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Where the sidecar injector's webhook listens (HTTPS).
    #[arg(long, default_value = "0.0.0.0:15017")]
    webhook_address: SocketAddr,
    /// The Service in front of the control plane: the webhook's certificate names it, and
    /// injected sidecars connect to it.
    #[arg(long, default_value = "wasmesh-controlplane")]
    service: String,
    /// The MutatingWebhookConfiguration whose caBundle the control plane keeps.
    #[arg(long, default_value = "wasmesh-sidecar-injector")]
    webhook_config: String,
    /// The image of injected sidecars (and their init container).
    #[arg(
        long,
        env = "WASMESH_PROXY_IMAGE",
        default_value = "ghcr.io/wasmesh/wasmesh:0.1.0"
    )]
    proxy_image: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let plugins = PluginModules::in_dir(&args.plugins).map_err(|missing| {
        anyhow::anyhow!(
            "{} not found: build the plugins with `cargo build --release --target \
             wasm32-wasip1 -p plugin-router -p plugin-fault -p plugin-mirror \
             -p plugin-circuit-breaker -p plugin-authz`",
            missing.display()
        )
    })?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("{}: cannot create", args.data_dir.display()))?;
    let images = PullerOptions {
        cache_dir: Some(
            args.image_cache
                .clone()
                .unwrap_or_else(|| args.data_dir.join("images")),
        ),
        registry: RegistryOptions {
            ca_pem: match &args.registry_ca {
                Some(path) => Some(
                    std::fs::read(path)
                        .with_context(|| format!("--registry-ca {}", path.display()))?,
                ),
                None => None,
            },
            insecure: args.insecure_registry.clone(),
        },
        pull_secrets: Some(pull_secrets_dir(&args)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let on_kubernetes = match args.kubernetes {
            true => Some(KubeParts::start(&args).await?),
            false => None,
        };
        let ca_files = match (&args.cacerts, &on_kubernetes) {
            (Some(dir), _) => CaFiles::Cacerts(dir.clone()),
            (None, Some(kube)) => CaFiles::Cacerts(kube.ca_secret(&args).await?),
            (None, None) => CaFiles::SelfSigned {
                dir: args.data_dir.join("ca"),
                trust_domain: args.trust_domain.clone(),
            },
        };
        let authority = WatchedAuthority::start(
            ca_files.clone(),
            Authority {
                ca: Arc::new(ca_files.load()?),
                trust_domain: args.trust_domain.clone(),
                default_lifetime: args.workload_cert_ttl,
                max_lifetime: args.max_workload_cert_ttl.max(args.workload_cert_ttl),
            },
        )?;
        let source = match (&args.manifests, &on_kubernetes) {
            (Some(dir), _) => {
                let source = DirectorySource::start(dir).map_err(anyhow::Error::msg)?;
                tracing::info!(manifests = %source::describe(dir).display(), "watching");
                Source::Directory(source)
            }
            (None, Some(kube)) => Source::Kubernetes(kube.source(&args).await?),
            (None, None) => unreachable!("clap requires --manifests or --kubernetes"),
        };
        let mesh = Mesh::start(
            MeshOptions {
                translate: Options {
                    domain_suffix: args.domain_suffix.clone(),
                    trust_domain: args.trust_domain.clone(),
                    cluster_id: args.cluster_id.clone(),
                    ..Options::default()
                },
                plugins,
                data_dir: Some(args.data_dir.clone()),
                grace: args.grace,
                images,
            },
            source.rx(),
        )?;
        let listener = tokio::net::TcpListener::bind(args.address)
            .await
            .with_context(|| format!("cannot listen on {}", args.address))?;
        let address = listener.local_addr()?;
        if let (Some(kube), Source::Kubernetes(source)) = (&on_kubernetes, &source) {
            // Injected sidecars connect to the port bound (`--address` may say port 0).
            kube.serve(&args, address.port(), source, &mesh, &authority)
                .await?;
        }
        // Before the control plane says it listens: its log then names the dashboard too.
        let dashboard = args.dashboard.start(&mesh).await?;
        tracing::info!(%address, "control plane listening");
        // Small messages (ACKs, pushes of a few frames) must not wait on Nagle's algorithm.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping");
        };
        let mut services = Services::new(mesh).with_authority(authority.rx.clone());
        if let Some(address) = dashboard {
            services = services.with_dashboard(address);
        }
        if let (Some(kube), Source::Kubernetes(source)) = (&on_kubernetes, &source) {
            // Any pod can reach the control plane: its token must prove whom it claims to be,
            // and its Pod says what it registers as.
            let reviewer = TokenReviewer::new(kube.client.clone()).with_pods(source.pods());
            services = services.with_authenticator(Arc::new(reviewer));
        }
        services
            .router()
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        if let Some(kube) = on_kubernetes {
            // Another replica takes over at once, not after the Lease's duration.
            kube.lease.release().await;
        }
        drop(source);
        Ok(())
    })
}

/// Where WasmPlugins' imagePullSecrets are read from (on Kubernetes, copied there from their
/// Secrets).
fn pull_secrets_dir(args: &Args) -> PathBuf {
    args.pull_secrets
        .clone()
        .unwrap_or_else(|| args.data_dir.join("pull-secrets"))
}

/// Where the mesh's resources come from; kept alive while the control plane runs.
enum Source {
    Directory(DirectorySource),
    Kubernetes(KubeSource),
}

impl Source {
    fn rx(&self) -> watch::Receiver<Arc<SourceState>> {
        match self {
            Source::Directory(s) => s.rx.clone(),
            Source::Kubernetes(s) => s.rx.clone(),
        }
    }
}

/// The control plane's parts on Kubernetes.
struct KubeParts {
    client: kube::Client,
    lease: LeaseHandle,
}

impl KubeParts {
    /// Connects to the API server and joins the replicas' election.
    async fn start(args: &Args) -> anyhow::Result<KubeParts> {
        let client = kube::Client::try_default()
            .await
            .context("no Kubernetes API server (in-cluster, or KUBECONFIG)")?;
        let identity = match &args.kube.pod_name {
            Some(name) => name.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| format!("wasmesh-controlplane-{}", std::process::id())),
        };
        tracing::info!(namespace = %args.kube.namespace, %identity, "on Kubernetes");
        let lease = Lease::start(client.clone(), &args.kube.namespace, &identity);
        Ok(KubeParts { client, lease })
    }

    /// The CA, one for every replica: from its Secret, created by the Lease's holder.
    async fn ca_secret(&self, args: &Args) -> anyhow::Result<PathBuf> {
        Ok(ca_secret::ensure_ca_secret(
            self.client.clone(),
            &args.kube.namespace,
            self.lease.leader(),
            &args.trust_domain,
            &args.data_dir.join("ca"),
        )
        .await?)
    }

    /// The Kubernetes source, once every kind has been listed: a mesh computed before that
    /// would send proxies an empty config.
    async fn source(&self, args: &Args) -> anyhow::Result<KubeSource> {
        let source = KubeSource::start(
            self.client.clone(),
            KubeSourceOptions {
                domain_suffix: args.domain_suffix.clone(),
                ..KubeSourceOptions::default()
            },
        );
        tracing::info!("listing the mesh's resources from the API server");
        source.synced().await?;
        Ok(source)
    }

    /// Status writes, the injector's webhook and its caBundle.
    async fn serve(
        &self,
        args: &Args,
        port: u16,
        source: &KubeSource,
        mesh: &Mesh,
        authority: &WatchedAuthority,
    ) -> anyhow::Result<()> {
        status::start(
            self.client.clone(),
            self.lease.leader(),
            status::of_objects(mesh.watch_diagnostics(), source.objects.clone()),
        );
        status::gateway_api::start(
            self.client.clone(),
            self.lease.leader(),
            source.rx.clone(),
            source.objects.clone(),
            args.domain_suffix.clone(),
        );
        tokio::spawn(pull_secrets::sync(
            self.client.clone(),
            pull_secrets_dir(args),
            source.rx.clone(),
        ));
        let flags = &args.kube;
        let names =
            webhook::service_dns_names(&flags.service, &flags.namespace, &args.domain_suffix);
        let certificate =
            ServingCertificate::issue(authority.rx.clone(), names, webhook::DEFAULT_LIFETIME)?;
        let namespaces = source.namespaces();
        let injector = Injector::new(
            InjectorConfig {
                image: flags.proxy_image.clone(),
                image_pull_policy: None,
                control_plane: format!("{}.{}.svc:{port}", flags.service, flags.namespace),
            },
            move |namespace| namespaces.labels(namespace),
        );
        let listener = tokio::net::TcpListener::bind(flags.webhook_address)
            .await
            .with_context(|| format!("cannot listen on {}", flags.webhook_address))?;
        tracing::info!(address = %listener.local_addr()?, "sidecar injector listening");
        tokio::spawn(webhook::serve(listener, certificate, injector));
        tokio::spawn(ca_bundle::keep(
            kube::Api::all(self.client.clone()),
            flags.webhook_config.clone(),
            authority.rx.clone(),
            self.lease.leader(),
        ));
        Ok(())
    }
}
