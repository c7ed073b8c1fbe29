//! `wasmesh-proxy --config FILE`: runs the data plane from a static bootstrap.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wasmesh_proxy::Proxy;
use wasmesh_proxy::config::Bootstrap;

// jemalloc: fewer cycles per request than glibc malloc under many small allocations.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The wasmesh data plane.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The bootstrap YAML file (see docs/configuration.md).
    #[arg(long, short)]
    config: PathBuf,
    /// Check the config and exit.
    #[arg(long)]
    validate: bool,
    /// Log filter, as RUST_LOG (for example `info` or `wasmesh_proxy=debug`).
    #[arg(long, env = "WASMESH_LOG", default_value = "info")]
    log: String,
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
    let bootstrap = match Bootstrap::load(&args.config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.validate {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let workers = bootstrap.worker_count();
    let proxy = match Proxy::start(bootstrap) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, addr) in proxy.listener_addrs() {
        tracing::info!(listener = %name, address = %addr, "listening");
    }
    if let Some(addr) = proxy.admin_addr() {
        tracing::info!(address = %addr, "admin listening");
    }
    tracing::info!(workers, "wasmesh-proxy started");
    wait_for_signal();
    tracing::info!("draining");
    proxy.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_signal() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for signals");
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
}
