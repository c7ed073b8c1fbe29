//! Translates Istio manifests into a wasmesh-proxy config, as the control plane would hand it
//! to a proxy: `cargo run -p wasmesh-controlplane --example translate -- MANIFESTS [PLUGINS_DIR]
//! [LISTEN_ADDR] > proxy.yaml`. Diagnostics go to stderr; any error exits 1 and prints nothing.
//!
//! `PLUGINS_DIR` holds `plugin_router.wasm`, `plugin_fault.wasm`, `plugin_mirror.wasm` and
//! `plugin_circuit_breaker.wasm` (a missing one is an error); without it the config has no
//! plugins (the core's routes).

use std::path::Path;
use std::process::ExitCode;

use wasmesh_controlplane::{Options, PluginModules, manifests, translate_loaded};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: translate MANIFESTS [PLUGINS_DIR] [LISTEN_ADDR]");
        return ExitCode::from(2);
    };
    let loaded = match manifests::load_path(Path::new(path)) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plugins = match args.get(1).map(|dir| PluginModules::in_dir(Path::new(dir))) {
        None => None,
        Some(Ok(modules)) => Some(modules),
        Some(Err(missing)) => {
            eprintln!("error: {} not found", missing.display());
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        listener_address: args.get(2).cloned().unwrap_or("127.0.0.1:15001".into()),
        plugins,
        ..Options::default()
    };
    let t = translate_loaded(&loaded, &options);
    for d in &t.diagnostics {
        eprintln!("{d}");
    }
    if t.errors().next().is_some() {
        return ExitCode::FAILURE;
    }
    match serde_saphyr::to_string(&t.bootstrap) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
