//! `wasmesh plugin build` and `wasmesh plugin push`: a filter crate built for
//! `wasm32-wasip1` and pushed as an Istio Wasm image (the *oci* variant).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use wasmesh_controlplane::images::credentials::DockerConfig;
use wasmesh_controlplane::images::{self, RegistryAuth, RegistryOptions};

/// A filter module built.
pub struct Built {
    pub path: PathBuf,
    pub module: Vec<u8>,
    pub sha256: String,
}

/// Builds the filter crate in `dir` (release, `wasm32-wasip1`) and finds its module from
/// cargo's own report, wherever the target directory is.
pub fn build(dir: &Path) -> anyhow::Result<Built> {
    let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--message-format",
            "json-render-diagnostics",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("run cargo")?;
    let stdout = child.stdout.take().expect("piped");
    let mut wasm = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("read cargo's output")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = message["target"]["crate_types"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "cdylib"));
        let manifest = message["manifest_path"].as_str().map(Path::new);
        let ours = manifest
            .and_then(Path::parent)
            .is_some_and(|p| p.canonicalize().ok() == dir.canonicalize().ok());
        if !(is_cdylib && ours) {
            continue;
        }
        if let Some(file) = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"))
        {
            wasm = Some(PathBuf::from(file));
        }
    }
    let status = child.wait().context("wait for cargo")?;
    if !status.success() {
        bail!("cargo build failed in {}", dir.display());
    }
    let Some(path) = wasm else {
        bail!(
            "{} built no Wasm module: is it a filter crate (crate-type = [\"cdylib\"])?",
            dir.display()
        );
    };
    let module = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let sha256 = images::sha256_hex(&module);
    Ok(Built {
        path,
        module,
        sha256,
    })
}

/// Where the registry's credentials come from.
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    /// A Docker `config.json`; by default `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json` when there is one.
    pub docker_config: Option<PathBuf>,
}

impl Credentials {
    fn auth_for(&self, registry: &str) -> anyhow::Result<RegistryAuth> {
        if let Some(username) = &self.username {
            let Some(password) = &self.password else {
                bail!(
                    "--username needs a password (--password-stdin or WASMESH_REGISTRY_PASSWORD)"
                );
            };
            return Ok(RegistryAuth::Basic(username.clone(), password.clone()));
        }
        let path = self.docker_config.clone().or_else(|| {
            let dir = std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
            Some(dir.join("config.json")).filter(|p| p.exists())
        });
        let Some(path) = path else {
            return Ok(RegistryAuth::Anonymous);
        };
        let json = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let config = DockerConfig::parse(&json).with_context(|| format!("{}", path.display()))?;
        Ok(config.auth_for(registry))
    }
}

/// Pushes `module` to `reference` (`oci://` optional) and prints what a WasmPlugin needs.
pub async fn push(
    reference: &str,
    module: &[u8],
    credentials: &Credentials,
    registry: &RegistryOptions,
) -> anyhow::Result<images::Pushed> {
    let parsed = images::reference(reference)?;
    let auth = credentials.auth_for(parsed.resolve_registry())?;
    let pushed = images::push(&parsed, module, &auth, registry)
        .await
        .with_context(|| format!("push to {parsed}"))?;
    Ok(pushed)
}
