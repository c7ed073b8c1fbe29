//! Where a benchmarked chain comes from: Wasm modules given one by one, a listener of a proxy
//! config, or a directory of Istio manifests translated by the control plane into the four
//! traffic plugins. Every form becomes the listener `http_filters` the proxy itself loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use wasmesh_proxy::config::Bootstrap;
use wasmesh_proxy::config::filters::HttpFilter;

use super::Error;

/// A chain to benchmark.
#[derive(Clone, Debug)]
pub enum ChainSource {
    /// No filters at all (the default baseline).
    None,
    /// Modules with their plugin configurations, in chain order.
    Filters(Vec<FilterArg>),
    /// The filters of a listener of a proxy bootstrap (the only listener with filters when
    /// `listener` is not given).
    Config {
        path: PathBuf,
        listener: Option<String>,
    },
    /// Istio manifests (a directory or a file) translated by wasmesh-controlplane: the
    /// router, fault, mirror and circuit-breaker plugins of the `outbound` listener, with the
    /// modules of `plugins` (see [`PLUGIN_FILES`]).
    Manifests { path: PathBuf, plugins: PathBuf },
}

/// The plugin modules a `--plugins` directory must hold.
pub use wasmesh_controlplane::PLUGIN_FILES;

/// The command that builds [`PLUGIN_FILES`] (and the authorization plugin) into `target/wasm32-wasip1/release`.
pub const BUILD_PLUGINS: &str = "cargo build --release --target wasm32-wasip1 \
-p plugin-router -p plugin-fault -p plugin-mirror -p plugin-circuit-breaker -p plugin-authz";

/// Where the plugins are when `--plugins` is not given: `target/wasm32-wasip1/release`
/// (under `$CARGO_TARGET_DIR` when it is set).
pub fn default_plugins_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("wasm32-wasip1")
        .join("release")
}

/// `FILE.wasm[:CONFIG]`: a module and the configuration `proxy_on_configure` gets, given
/// inline (`200`, `{"routes": {}}`) or read from a file (`@config.json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterArg {
    pub path: PathBuf,
    pub config: Option<String>,
}

impl FromStr for FilterArg {
    type Err = String;

    /// A path that names an existing file is taken whole; otherwise the configuration starts
    /// after the first `:`.
    fn from_str(s: &str) -> Result<FilterArg, String> {
        if s.is_empty() {
            return Err("empty filter: give FILE.wasm[:CONFIG]".into());
        }
        if Path::new(s).is_file() {
            return Ok(FilterArg {
                path: s.into(),
                config: None,
            });
        }
        Ok(match s.split_once(':') {
            Some((path, config)) => FilterArg {
                path: path.into(),
                config: Some(config.to_owned()),
            },
            None => FilterArg {
                path: s.into(),
                config: None,
            },
        })
    }
}

/// A chain ready to load: the filters as a listener of the proxy would have them.
#[derive(Clone, Debug)]
pub struct ResolvedChain {
    /// How the report names the chain (`noop + slow`, `proxy.yaml#ingress`, `no filters`).
    pub label: String,
    /// In the order they were given; the proxy orders them by phase and priority.
    pub filters: Vec<HttpFilter>,
    /// Where relative module paths are found.
    pub base_dir: Option<PathBuf>,
    /// The file each filter came from, by filter name (for error messages and the report).
    pub files: HashMap<String, String>,
    /// The bootstrap the chain came from, whose routes and clusters `--through-proxy` keeps.
    pub bootstrap: Option<(Bootstrap, String)>,
    /// Warnings about where the chain came from (manifests: istioctl-style diagnostics).
    pub warnings: Vec<String>,
}

impl ResolvedChain {
    fn empty() -> ResolvedChain {
        ResolvedChain {
            label: "no filters".into(),
            filters: Vec::new(),
            base_dir: None,
            files: HashMap::new(),
            bootstrap: None,
            warnings: Vec::new(),
        }
    }

    /// The file a filter came from (its url when unknown).
    pub fn file_of(&self, name: &str) -> String {
        if let Some(f) = self.files.get(name) {
            return f.clone();
        }
        self.filters
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.url.clone())
            .unwrap_or_default()
    }

    /// The filters with module paths made absolute, for a bootstrap of another directory.
    pub fn absolute_filters(&self) -> Vec<HttpFilter> {
        let mut filters = self.filters.clone();
        for f in &mut filters {
            let url = f.url.strip_prefix("file://").unwrap_or(&f.url);
            if f.url.starts_with("http://")
                || f.url.starts_with("https://")
                || Path::new(url).is_absolute()
            {
                continue;
            }
            if let Some(dir) = &self.base_dir {
                f.url = dir.join(url).display().to_string();
            }
        }
        filters
    }
}

impl ChainSource {
    /// Reads what the chain needs (configs, `@` files): errors name the file and the reason.
    pub fn resolve(&self) -> Result<ResolvedChain, Error> {
        match self {
            ChainSource::None => Ok(ResolvedChain::empty()),
            ChainSource::Filters(args) => resolve_filters(args),
            ChainSource::Config { path, listener } => {
                let bootstrap = Bootstrap::load(path).map_err(|e| Error::Input {
                    file: path.display().to_string(),
                    reason: format!("not a usable proxy config: {}", one_line(&e.to_string())),
                })?;
                from_bootstrap(bootstrap, &path.display().to_string(), listener.as_deref())
            }
            ChainSource::Manifests { path, plugins } => from_manifests(path, plugins),
        }
    }
}

/// The `outbound` listener's chain of the translation of the manifests at `path` (a
/// directory or a file), with the plugin modules of `plugins`. Error diagnostics refuse the
/// chain; warnings come with it.
pub fn from_manifests(path: &Path, plugins: &Path) -> Result<ResolvedChain, Error> {
    use wasmesh_controlplane::{Level, Options, PluginModules, translate_loaded};

    let file = path.display().to_string();
    let modules = PluginModules::in_dir(plugins).map_err(|missing| Error::MissingPlugin {
        file: missing.display().to_string(),
    })?;
    let loaded = wasmesh_controlplane::manifests::load_path(path).map_err(|e| Error::Input {
        file: file.clone(),
        reason: format!("cannot read the manifests: {}", e.source),
    })?;
    let options = Options {
        plugins: Some(modules),
        ..Options::default()
    };
    let translation = translate_loaded(&loaded, &options);
    let errors: Vec<String> = translation.errors().map(ToString::to_string).collect();
    if !errors.is_empty() {
        return Err(Error::Manifests {
            file,
            diagnostics: errors,
        });
    }
    if loaded.resources.is_empty() {
        return Err(Error::Input {
            file,
            reason: "no VirtualService, DestinationRule, ServiceEntry or WorkloadEntry found \
                     (manifests are *.yaml or *.yml files)"
                .into(),
        });
    }
    let warnings = translation
        .diagnostics
        .iter()
        .filter(|d| d.level == Level::Warning)
        .map(ToString::to_string)
        .collect();
    let bootstrap = translation.bootstrap;
    bootstrap.validate().map_err(|e| Error::Input {
        file: file.clone(),
        reason: format!("the translated proxy config is not valid: {e}"),
    })?;
    let mut chain = from_bootstrap(bootstrap, &file, Some(&options.listener_name))?;
    chain.warnings = warnings;
    Ok(chain)
}

/// The chain of a listener of `bootstrap` (read from `file`).
pub fn from_bootstrap(
    bootstrap: Bootstrap,
    file: &str,
    listener: Option<&str>,
) -> Result<ResolvedChain, Error> {
    let names = || {
        bootstrap
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match listener {
        Some(name) => bootstrap
            .listeners
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| Error::Input {
                file: file.to_owned(),
                reason: format!("no listener named {name:?} (listeners: {})", names()),
            })?,
        None => {
            let with_filters: Vec<_> = bootstrap
                .listeners
                .iter()
                .filter(|l| !l.http_filters.is_empty())
                .collect();
            match with_filters.as_slice() {
                [one] => *one,
                [] => {
                    return Err(Error::Input {
                        file: file.to_owned(),
                        reason: "no listener has http_filters".into(),
                    });
                }
                _ => {
                    return Err(Error::Input {
                        file: file.to_owned(),
                        reason: format!(
                            "several listeners have filters: choose one with --listener ({})",
                            names()
                        ),
                    });
                }
            }
        }
    };
    let listener_name = chosen.name.clone();
    let filters = chosen.http_filters.clone();
    let files = filters
        .iter()
        .map(|f| (f.name.clone(), format!("{file}: {}", f.url)))
        .collect();
    Ok(ResolvedChain {
        label: format!("{file}#{listener_name}"),
        filters,
        base_dir: bootstrap.base_dir.clone(),
        files,
        bootstrap: Some((bootstrap, listener_name)),
        warnings: Vec::new(),
    })
}

fn resolve_filters(args: &[FilterArg]) -> Result<ResolvedChain, Error> {
    let mut filters = Vec::with_capacity(args.len());
    let mut files = HashMap::new();
    let mut labels = Vec::new();
    for arg in args {
        let file = arg.path.display().to_string();
        let bytes = std::fs::read(&arg.path).map_err(|e| Error::Input {
            file: file.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        if !bytes.starts_with(b"\0asm") {
            return Err(Error::Input {
                file,
                reason: "not a WebAssembly module (no \\0asm header)".into(),
            });
        }
        let config = match arg.config.as_deref() {
            None => None,
            Some(c) => Some(match c.strip_prefix('@') {
                Some(config_file) => {
                    std::fs::read_to_string(config_file).map_err(|e| Error::Input {
                        file: config_file.to_owned(),
                        reason: format!("cannot read the plugin config: {e}"),
                    })?
                }
                None => c.to_owned(),
            }),
        };
        let stem = arg
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "filter".into());
        let mut name = stem.clone();
        let mut n = 1;
        while filters.iter().any(|f: &HttpFilter| f.name == name) {
            n += 1;
            name = format!("{stem}-{n}");
        }
        let url = std::path::absolute(&arg.path)
            .unwrap_or_else(|_| arg.path.clone())
            .display()
            .to_string();
        // The bytes handed to the plugin are exactly the text given. The proxy orders a
        // listener's filters by phase, priority and name: descending priorities keep the
        // order of the command line.
        let priority = (args.len() - filters.len()) as i32;
        let mut value = serde_json::json!({"name": name, "url": url, "priority": priority});
        if let Some(config) = config {
            value["plugin_config"] = serde_json::Value::String(config);
        }
        let filter: HttpFilter = serde_json::from_value(value).map_err(|e| Error::Input {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        labels.push(name.clone());
        files.insert(name, file);
        filters.push(filter);
    }
    Ok(ResolvedChain {
        label: labels.join(" + "),
        filters,
        base_dir: None,
        files,
        bootstrap: None,
        warnings: Vec::new(),
    })
}

/// The first line of a message, for one-line errors.
pub(crate) fn one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default().to_owned();
    match lines.next() {
        Some(second) if first.ends_with(':') => format!("{first} {second}"),
        _ => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_args() {
        let a: FilterArg = "x.wasm:{\"a\": 1}".parse().unwrap();
        assert_eq!(a.path, PathBuf::from("x.wasm"));
        assert_eq!(a.config.as_deref(), Some("{\"a\": 1}"));
        let a: FilterArg = "x.wasm".parse().unwrap();
        assert_eq!(a.config, None);
        let a: FilterArg = "x.wasm:@c.json".parse().unwrap();
        assert_eq!(a.config.as_deref(), Some("@c.json"));
        assert!("".parse::<FilterArg>().is_err());
    }
}
