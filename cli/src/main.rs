//! `wasmesh`: tools for filter authors and mesh operators.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use wasmesh_cli::bench::{self, ChainSource, FilterArg, RequestProfile, ResponseSpec};

mod install;
mod plugin_image;

#[derive(Parser)]
#[command(
    version,
    about = "wasmesh: tools for filter authors and mesh operators"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with filter plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Measures what a filter chain costs, per filter and per callback, against a baseline.
    #[command(after_long_help = BENCH_HELP)]
    Bench(Box<BenchArgs>),
    /// Every proxy connected to the control plane: its config version, SYNCED, STALE
    /// (a push not yet answered) or NACKED with the proxy's error.
    ProxyStatus {
        #[command(flatten)]
        control_plane: ControlPlaneArg,
        /// `json` for the raw reply.
        #[arg(long, short)]
        output: Option<OutputFormat>,
    },
    /// A proxy's listeners, routes, clusters and plugins, as the control plane computed them.
    ProxyConfig {
        /// `name.namespace`, or `name` in namespace `default`.
        name: String,
        #[command(flatten)]
        control_plane: ControlPlaneArg,
        /// `json` for the whole bootstrap.
        #[arg(long, short)]
        output: Option<OutputFormat>,
    },
    /// Opens the control plane's dashboard, a live service graph of the mesh's traffic
    /// (Kiali's, in spirit): prints its URL and opens it in a browser where there is one.
    Dashboard {
        #[command(flatten)]
        control_plane: ControlPlaneArg,
        /// The dashboard's address (`host:port` or a URL) instead of asking the control plane.
        #[arg(long)]
        address: Option<String>,
        /// Print the URL without opening it.
        #[arg(long)]
        no_open: bool,
    },
    /// Checks Istio manifests as the control plane translates them (istioctl analyze):
    /// exits non-zero when there are errors.
    Analyze {
        /// A file or a directory of `*.yaml`.
        path: PathBuf,
        #[arg(long, short)]
        output: Option<OutputFormat>,
        /// The namespace clients are in (short hosts resolve against it).
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// Installs wasmesh on the current kubectl context: Istio's CRDs, RBAC, the control plane
    /// and the sidecar injector (deploy/kubernetes), with `kubectl apply --server-side`.
    Install {
        /// Print the manifests instead of applying them.
        #[arg(long)]
        dry_run: bool,
        /// The image of the control plane and of the sidecars it injects.
        #[arg(long, default_value = install::DEFAULT_IMAGE)]
        image: String,
    },
}

#[derive(clap::Args)]
struct ControlPlaneArg {
    /// The control plane's address.
    #[arg(long, env = "WASMESH_CONTROL_PLANE", default_value = "127.0.0.1:15010")]
    control_plane: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Json,
}

const BENCH_HELP: &str = "\
The chain runs in-process on the real Wasm host (and with --through-proxy also in a real
wasmesh-proxy in front of a local upstream). Chain and baseline alternate over --rounds
rounds; the verdict against the baseline is `slower` or `faster` only when Welch's t-test on
the per-round mean latencies finds the difference significant at 99% (two-sided), otherwise
`no significant difference`.

Per filter figures come from rounds of their own, with every callback timed; the whole-chain
figures come from rounds without that instrumentation.

With --manifests, the Istio manifests (VirtualService, DestinationRule, ServiceEntry,
WorkloadEntry) are translated as the control plane does, and the chain is the router, fault,
mirror and circuit-breaker plugins of the `outbound` listener, with their modules from
--plugins. Error diagnostics refuse the run; warnings are printed to stderr. Send requests to
a host the manifests define (-H host:NAME).

Examples:
  wasmesh bench --filter target/wasm32-wasip1/release/my_filter.wasm:'{\"header\": \"x-a\"}'
  wasmesh bench --config proxy.yaml --listener ingress --through-proxy --plot latency.svg
  wasmesh bench --manifests manifests/ -H host:reviews -H end-user:jason
  wasmesh bench --filter new.wasm --baseline old.wasm --requests requests.jsonl --json
";

#[derive(clap::Args)]
struct BenchArgs {
    /// A filter of the chain, in chain order (repeat): FILE.wasm[:CONFIG], the plugin
    /// configuration given inline (`200`, `{"k": 1}`) or read from a file (`@config.json`).
    #[arg(long = "filter", value_name = "FILE.wasm[:CONFIG]")]
    filters: Vec<FilterArg>,
    /// The chain of a listener of a wasmesh-proxy config instead.
    #[arg(long, value_name = "proxy.yaml", conflicts_with = "filters")]
    config: Option<PathBuf>,
    /// The listener of --config (default: the only listener with http_filters).
    #[arg(long, requires = "config")]
    listener: Option<String>,
    /// The four traffic plugins configured from Istio manifests instead (a directory of
    /// *.yaml files, or one file), translated as the control plane does.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["filters", "config"])]
    manifests: Option<PathBuf>,
    /// Where the plugin modules of --manifests are: plugin_router.wasm, plugin_fault.wasm,
    /// plugin_mirror.wasm, plugin_circuit_breaker.wasm and plugin_authz.wasm [default:
    /// target/wasm32-wasip1/release]
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// What the chain is compared with: `none` (no filters, the default), a proxy config
    /// (`proxy.yaml` or `proxy.yaml#LISTENER`), Istio manifests (`manifests:DIR`, with the
    /// modules of --plugins), or filters as for --filter (repeat).
    #[arg(
        long,
        value_name = "none|proxy.yaml[#LISTENER]|manifests:DIR|FILE.wasm[:CONFIG]"
    )]
    baseline: Vec<String>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path and query.
    #[arg(long, default_value = "/")]
    path: String,
    /// A request header (repeat); `host` defaults to `localhost`.
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// Request body size in bytes.
    #[arg(long, default_value_t = 0)]
    body_size: usize,
    /// A file of requests sent in turn: a JSON array, or one JSON object per line, each
    /// {"method", "path", "headers": {..}, "body_size" or "body"} (all optional).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["method", "path", "headers", "body_size"])]
    requests: Option<PathBuf>,
    /// Body size of the upstream's 200 response, in bytes.
    #[arg(long, default_value_t = 0)]
    response_body_size: usize,
    /// Requests per chain (split over the rounds), instead of --duration.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    requests_count: Option<u64>,
    /// How long to run each of in-process and through-proxy (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Rounds in which chain and baseline alternate (at least 2 for a verdict).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Also measure through a real wasmesh-proxy (one worker) to a local upstream.
    #[arg(long)]
    through_proxy: bool,
    /// Concurrent keep-alive connections of the load with --through-proxy.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Print the report as JSON on stdout (no table, no progress bar).
    #[arg(long)]
    json: bool,
    /// Draw the latency distribution of each chain to FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    plot: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Makes a filter crate that builds, tests (on the real host) and runs in the proxy.
    New {
        /// The filter's name (a crate name: letters, digits, `-`, `_`).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The wasmesh `sdk/` directory the crate depends on (default: the one this binary was
        /// built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Builds the filter crate (release, wasm32-wasip1) and prints its module's path, size
    /// and sha256.
    Build {
        /// The crate's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Pushes a filter as an Istio Wasm image (OCI: one layer of media type
    /// application/vnd.module.wasm.content.layer.v1+wasm), for a WasmPlugin's `url: oci://...`.
    Push {
        /// REGISTRY/NAME:TAG (`oci://` optional).
        reference: String,
        /// The module to push [default: the crate in --dir, built first].
        #[arg(long, value_name = "FILE.wasm")]
        module: Option<PathBuf>,
        /// The crate's directory, when no --module is given.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The registry's user (basic auth); else credentials from --docker-config.
        #[arg(long, short)]
        username: Option<String>,
        /// Read the password from stdin (else WASMESH_REGISTRY_PASSWORD).
        #[arg(long)]
        password_stdin: bool,
        /// A Docker config.json with credentials [default: $DOCKER_CONFIG/config.json or
        /// ~/.docker/config.json].
        #[arg(long, value_name = "FILE")]
        docker_config: Option<PathBuf>,
        /// A CA (PEM) to trust for the registry, besides the system's roots.
        #[arg(long, value_name = "FILE")]
        registry_ca: Option<PathBuf>,
        /// Reach the registry over plain HTTP.
        #[arg(long)]
        plain_http: bool,
    },
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

fn main() {
    // Errors are one line, with their causes, whatever RUST_BACKTRACE says.
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Bench(args) => bench_command(*args),
        Command::ProxyStatus {
            control_plane,
            output,
        } => {
            let (text, reply) = block_on(wasmesh_cli::mesh::proxy_status(
                &control_plane.control_plane,
            ))?;
            match output {
                Some(OutputFormat::Json) => {
                    let proxies: Vec<serde_json::Value> = reply
                        .proxies
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "name": p.id, "state": p.state, "sent": p.sent_version,
                                "acked": p.acked_version, "error": p.error,
                                "outbound": p.outbound_address,
                                "connected_seconds": p.connected_seconds,
                            })
                        })
                        .collect();
                    let doc = serde_json::json!({
                        "proxies": proxies, "diagnostics": reply.diagnostics,
                    });
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::ProxyConfig {
            name,
            control_plane,
            output,
        } => {
            let text = block_on(wasmesh_cli::mesh::proxy_config(
                &control_plane.control_plane,
                &name,
                output.is_some(),
            ))?;
            print!("{text}");
            Ok(())
        }
        Command::Dashboard {
            control_plane,
            address,
            no_open,
        } => {
            let url = block_on(wasmesh_cli::dashboard::url(
                &control_plane.control_plane,
                address.as_deref(),
            ))?;
            println!("{url}");
            match wasmesh_cli::dashboard::opener() {
                _ if no_open => {}
                Some(opener) => wasmesh_cli::dashboard::open(&opener, &url)?,
                None => eprintln!("no display or xdg-open here: open the URL in a browser"),
            }
            Ok(())
        }
        Command::Analyze {
            path,
            output,
            namespace,
        } => {
            let options = wasmesh_controlplane::Options {
                client_namespace: namespace,
                ..Default::default()
            };
            let analysis = wasmesh_cli::mesh::analyze(&path, &options)?;
            match output {
                Some(OutputFormat::Json) => {
                    println!("{}", serde_json::to_string_pretty(&analysis.json())?)
                }
                None => print!("{}", analysis.text()),
            }
            if analysis.has_errors() {
                std::process::exit(79); // istioctl analyze's exit code for errors found
            }
            Ok(())
        }
        Command::Install { dry_run, image } => install::install(&image, dry_run),
        Command::Plugin {
            command: PluginCommand::New { name, dir, sdk },
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk =
                sdk.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdk"));
            plugin_new(&name, &dir, &sdk)?;
            println!("created {} ({})", dir.display(), name);
            println!(
                "  cd {} && cargo build --target wasm32-wasip1 --release && cargo test",
                dir.display()
            );
            Ok(())
        }
        Command::Plugin {
            command: PluginCommand::Build { dir },
        } => plugin_build(&dir).map(drop),
        Command::Plugin {
            command:
                PluginCommand::Push {
                    reference,
                    module,
                    dir,
                    username,
                    password_stdin,
                    docker_config,
                    registry_ca,
                    plain_http,
                },
        } => plugin_push(
            &reference,
            module,
            &dir,
            username,
            password_stdin,
            docker_config,
            registry_ca,
            plain_http,
        ),
    }
}

fn plugin_build(dir: &Path) -> anyhow::Result<plugin_image::Built> {
    let built = plugin_image::build(dir)?;
    println!("built {}", built.path.display());
    println!("  size    {} bytes", built.module.len());
    println!("  sha256  {}", built.sha256);
    Ok(built)
}

#[allow(clippy::too_many_arguments)]
fn plugin_push(
    reference: &str,
    module: Option<PathBuf>,
    dir: &Path,
    username: Option<String>,
    password_stdin: bool,
    docker_config: Option<PathBuf>,
    registry_ca: Option<PathBuf>,
    plain_http: bool,
) -> anyhow::Result<()> {
    let module = match module {
        Some(path) => std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
        None => plugin_build(dir)?.module,
    };
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("read the password from stdin")?;
        Some(line.trim_end_matches(['\r', '\n']).to_owned())
    } else {
        std::env::var("WASMESH_REGISTRY_PASSWORD").ok()
    };
    let parsed = wasmesh_controlplane::images::reference(reference)?;
    let registry = wasmesh_controlplane::images::RegistryOptions {
        ca_pem: match &registry_ca {
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("read {}", path.display()))?)
            }
            None => None,
        },
        insecure: if plain_http {
            vec![parsed.resolve_registry().to_owned()]
        } else {
            Vec::new()
        },
    };
    let credentials = plugin_image::Credentials {
        username,
        password,
        docker_config,
    };
    let pushed = block_on(plugin_image::push(
        reference,
        &module,
        &credentials,
        &registry,
    ))?;
    println!("pushed oci://{parsed}");
    println!("  digest  {}", pushed.manifest_digest);
    println!(
        "  module  sha256:{} ({} bytes)",
        pushed.module_sha256,
        module.len()
    );
    println!("in a WasmPlugin:");
    println!("  url: oci://{parsed}");
    println!(
        "  sha256: {}",
        pushed.manifest_digest.trim_start_matches("sha256:")
    );
    Ok(())
}

fn chain_source(args: &BenchArgs, plugins: &Path) -> anyhow::Result<ChainSource> {
    if let Some(config) = &args.config {
        return Ok(ChainSource::Config {
            path: config.clone(),
            listener: args.listener.clone(),
        });
    }
    if let Some(manifests) = &args.manifests {
        return Ok(ChainSource::Manifests {
            path: manifests.clone(),
            plugins: plugins.to_owned(),
        });
    }
    if args.filters.is_empty() {
        bail!(
            "nothing to benchmark: give --filter FILE.wasm[:CONFIG] (repeat), --config proxy.yaml \
             or --manifests DIR"
        );
    }
    Ok(ChainSource::Filters(args.filters.clone()))
}

fn baseline_source(values: &[String], plugins: &Path) -> anyhow::Result<ChainSource> {
    match values {
        [] => return Ok(ChainSource::None),
        [one] if one == "none" => return Ok(ChainSource::None),
        [one] if one.starts_with("manifests:") => {
            return Ok(ChainSource::Manifests {
                path: one["manifests:".len()..].into(),
                plugins: plugins.to_owned(),
            });
        }
        [one] => {
            let (path, listener) = match one.split_once('#') {
                Some((p, l)) => (p, Some(l.to_owned())),
                None => (one.as_str(), None),
            };
            if path.ends_with(".yaml") || path.ends_with(".yml") {
                return Ok(ChainSource::Config {
                    path: path.into(),
                    listener,
                });
            }
        }
        _ => {}
    }
    let filters = values
        .iter()
        .map(|v| v.parse::<FilterArg>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ChainSource::Filters(filters))
}

fn bench_command(args: BenchArgs) -> anyhow::Result<()> {
    if args.plugins.is_some()
        && args.manifests.is_none()
        && !args.baseline.iter().any(|b| b.starts_with("manifests:"))
    {
        bail!("--plugins is for --manifests (or --baseline manifests:DIR)");
    }
    let plugins = args
        .plugins
        .clone()
        .unwrap_or_else(bench::default_plugins_dir);
    let chain = chain_source(&args, &plugins)?;
    let baseline = baseline_source(&args.baseline, &plugins)?;
    let requests = match &args.requests {
        Some(file) => bench::profile::read_requests(file)?,
        None => {
            let headers = args
                .headers
                .iter()
                .map(|h| bench::profile::parse_header(h))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("--header {e}"))?;
            let line = bench::profile::RequestLine {
                method: Some(args.method.clone()),
                path: Some(args.path.clone()),
                headers: Some(bench::profile::Headers::List(headers)),
                body_size: (args.body_size > 0).then_some(args.body_size),
                body: None,
            };
            vec![line.build().map_err(anyhow::Error::msg)?]
        }
    };
    if let Some(plot) = &args.plot {
        let ext = plot
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if !matches!(ext.as_deref(), Some("svg" | "png")) {
            bail!(
                "{}: the plot file name must end in .svg or .png",
                plot.display()
            );
        }
    }
    let options = bench::Options {
        chain,
        baseline,
        profile: RequestProfile {
            requests,
            response: ResponseSpec::ok(args.response_body_size),
        },
        amount: match (args.requests_count, args.duration) {
            (Some(n), _) => bench::Amount::Requests(n),
            (None, Some(d)) => bench::Amount::Duration(d),
            (None, None) => bench::Amount::Duration(Duration::from_secs(5)),
        },
        rounds: args.rounds,
        through_proxy: args.through_proxy.then_some(args.connections),
    };

    let chain = options.chain.resolve()?;
    let baseline = options.baseline.resolve()?;
    for (what, resolved) in [("chain", &chain), ("baseline", &baseline)] {
        for w in &resolved.warnings {
            eprintln!("{w}");
        }
        if !resolved.warnings.is_empty() {
            eprintln!(
                "({} warning(s) about the {what} {}; running anyway)",
                resolved.warnings.len(),
                resolved.label
            );
        }
    }

    let show = !args.json && std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        if show {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>18} [{bar:40}] {percent:>3}% ({eta} left)")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let report = bench::run_resolved(&options, &chain, &baseline, &mut |p| {
        bar.set_message(p.phase);
        bar.set_length(p.total);
        bar.set_position(p.done);
    });
    bar.finish_and_clear();
    let report = report?;

    if let Some(plot) = &args.plot {
        bench::plot::draw(&report, plot)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        if let Some(plot) = &args.plot {
            println!("\nplot: {}", plot.display());
        }
    }
    Ok(())
}

const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../template/Cargo.toml.in")),
    ("src/lib.rs", include_str!("../template/lib.rs.in")),
    ("tests/filter.rs", include_str!("../template/test.rs.in")),
    ("README.md", include_str!("../template/README.md.in")),
    ("proxy.yaml", include_str!("../template/proxy.yaml.in")),
    (".gitignore", "/target\n"),
];

fn plugin_new(name: &str, dir: &Path, sdk: &Path) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        bail!(
            "{name:?} is not a crate name: use letters, digits, '-' and '_', not starting with a digit"
        );
    }
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("{} exists and is not empty", dir.display());
    }
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("the SDK directory {}", sdk.display()))?;
    if !sdk.join("Cargo.toml").exists() {
        bail!(
            "{} has no Cargo.toml: pass --sdk with the path of wasmesh's sdk/ directory",
            sdk.display()
        );
    }
    for (file, template) in FILES {
        let text = template
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk.display().to_string());
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("a parent"))
            .with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    // The versions wasmesh was tested with (cargo drops what the filter does not use).
    if let Some(lock) = sdk
        .parent()
        .map(|root| root.join("Cargo.lock"))
        .filter(|l| l.exists())
    {
        std::fs::copy(&lock, dir.join("Cargo.lock")).context("copy Cargo.lock")?;
    }
    Ok(())
}
