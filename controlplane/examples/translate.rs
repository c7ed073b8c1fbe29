//! Translates Istio manifests into a wasmesh-proxy config, as the control plane would hand it
//! to a proxy: `cargo run -p wasmesh-controlplane --example translate -- MANIFESTS [PLUGINS_DIR]
//! [LISTEN_ADDR] > proxy.yaml`. Diagnostics go to stderr; any error exits 1 and prints nothing.
//!
//! `PLUGINS_DIR` holds `plugin_router.wasm`, `plugin_fault.wasm`, `plugin_mirror.wasm` and
//! `plugin_circuit_breaker.wasm`; without it the config has no plugins (the core's routes).

use std::path::Path;
use std::process::ExitCode;

use wasmesh_controlplane::{Level, Options, PluginModule, PluginModules, manifests, translate};

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
    let module = |dir: &str, name: &str| {
        let file = Path::new(dir).join(format!("plugin_{name}.wasm"));
        let file = file.canonicalize().unwrap_or(file);
        PluginModule::new(file.display().to_string())
    };
    let options = Options {
        listener_address: args.get(2).cloned().unwrap_or("127.0.0.1:15001".into()),
        plugins: args.get(1).map(|dir| PluginModules {
            router: module(dir, "router"),
            fault: module(dir, "fault"),
            mirror: module(dir, "mirror"),
            circuit_breaker: module(dir, "circuit_breaker"),
        }),
        ..Options::default()
    };
    let t = translate(&loaded.resources, &options);
    let mut failed = false;
    for d in loaded.diagnostics.iter().chain(&t.diagnostics) {
        eprintln!("{d}");
        failed |= d.level == Level::Error;
    }
    if failed {
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
