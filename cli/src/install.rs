//! `wasmesh install`: the manifests of `deploy/kubernetes`, built into the binary, printed or
//! handed to `kubectl apply`.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The manifests, in `deploy/kubernetes/kustomization.yaml`'s order.
const MANIFESTS: [&str; 6] = [
    include_str!("../../deploy/kubernetes/namespace.yaml"),
    include_str!("../../deploy/kubernetes/crds.yaml"),
    include_str!("../../deploy/kubernetes/rbac.yaml"),
    include_str!("../../deploy/kubernetes/controlplane.yaml"),
    include_str!("../../deploy/kubernetes/webhook.yaml"),
    include_str!("../../deploy/kubernetes/ingressgateway.yaml"),
];

/// The image the manifests name, for the control plane and for the sidecars it injects.
pub const DEFAULT_IMAGE: &str = "ghcr.io/wasmesh/wasmesh:0.1.0";

/// Every manifest as one multi-document YAML, with `image` in place of [`DEFAULT_IMAGE`].
pub fn render(image: &str) -> anyhow::Result<String> {
    // An image reference's characters only: the text goes into the YAML unquoted.
    let valid = |c: char| c.is_ascii_alphanumeric() || "./:@_-".contains(c);
    if image.is_empty() || !image.chars().all(valid) {
        bail!("--image {image:?} is not an image reference");
    }
    let documents: Vec<_> = MANIFESTS
        .iter()
        .map(|m| m.replace(DEFAULT_IMAGE, image))
        .collect();
    Ok(documents.join("---\n"))
}

/// Prints the manifests, or applies them with `kubectl apply --server-side`.
pub fn install(image: &str, dry_run: bool) -> anyhow::Result<()> {
    let manifests = render(image)?;
    if dry_run {
        print!("{manifests}");
        return Ok(());
    }
    let mut kubectl = match Command::new("kubectl")
        .args(["apply", "--server-side", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "kubectl is not on PATH: install it, or print the manifests with \
             `wasmesh install --dry-run` and apply them yourself"
        ),
        Err(e) => return Err(e).context("cannot run kubectl"),
    };
    let written = kubectl
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(manifests.as_bytes());
    let status = kubectl.wait().context("kubectl")?;
    if !status.success() {
        bail!("kubectl apply failed ({status})");
    }
    written.context("writing the manifests to kubectl")
}
