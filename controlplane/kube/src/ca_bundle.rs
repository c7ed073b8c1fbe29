//! The injector's MutatingWebhookConfiguration must trust the control plane's CA, which signs
//! the webhook's certificate. As istiod's webhook controller does, the Lease's holder sets
//! every webhook's `clientConfig.caBundle` to the CA's roots, and sets it again whenever the
//! configuration is applied anew (the manifests in `deploy/kubernetes` carry none) or the
//! roots change.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use wasmesh_controlplane::ca::Authority;

/// The field manager of our writes.
const MANAGER: &str = "wasmesh-controlplane";

/// The strategic merge patch that sets every webhook's `caBundle` to `bundle`, or `None` when
/// each already has it. Webhooks merge by `name`, so the rest of the object is untouched.
pub fn patch_for(
    config: &MutatingWebhookConfiguration,
    bundle: &[u8],
) -> Option<serde_json::Value> {
    let webhooks = config.webhooks.as_deref().unwrap_or_default();
    let stale: Vec<_> = webhooks
        .iter()
        .filter(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle))
        .map(|w| {
            serde_json::json!({
                "name": w.name,
                "clientConfig": { "caBundle": ByteString(bundle.to_vec()) },
            })
        })
        .collect();
    (!stale.is_empty()).then(|| serde_json::json!({ "webhooks": stale }))
}

/// Keeps the caBundle of the MutatingWebhookConfiguration `name` equal to the CA's roots while
/// this replica holds the Lease. Runs until the process ends; API errors are logged and
/// retried (the watcher backs off).
pub async fn keep(
    api: Api<MutatingWebhookConfiguration>,
    name: String,
    mut authority: watch::Receiver<Arc<Authority>>,
    mut leader: watch::Receiver<bool>,
) {
    // Backing off: the stream retries at once after an error, which would hammer an API
    // server in trouble.
    let mut configs = watcher::watch_object(api.clone(), &name)
        .default_backoff()
        .boxed();
    let mut current: Option<MutatingWebhookConfiguration> = None;
    loop {
        if *leader.borrow_and_update()
            && let Some(config) = &current
        {
            let bundle = authority.borrow_and_update().roots_pem().concat();
            if let Some(patch) = patch_for(config, bundle.as_bytes()) {
                let params = PatchParams {
                    field_manager: Some(MANAGER.into()),
                    ..PatchParams::default()
                };
                match api.patch(&name, &params, &Patch::Strategic(patch)).await {
                    Ok(updated) => {
                        tracing::info!(webhook = %name, "caBundle set to the mesh's roots");
                        current = Some(updated);
                    }
                    Err(e) => {
                        tracing::warn!(webhook = %name, error = %e, "caBundle not set; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            event = configs.next() => match event {
                Some(Ok(config)) => {
                    if config.is_none() {
                        tracing::warn!(webhook = %name, "no such MutatingWebhookConfiguration: sidecars are not injected");
                    }
                    current = config;
                }
                Some(Err(e)) => tracing::warn!(webhook = %name, error = %e, "watching the webhook configuration"),
                None => return,
            },
            changed = leader.changed() => if changed.is_err() { return },
            changed = authority.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bundles: &[Option<&str>]) -> MutatingWebhookConfiguration {
        let webhooks: Vec<_> = bundles
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut w = serde_json::json!({
                    "name": format!("{i}.sidecar-injector.wasmesh.io"),
                    "clientConfig": {"service": {"name": "wasmesh-controlplane", "namespace": "wasmesh-system", "path": "/inject"}},
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                });
                if let Some(b) = b {
                    w["clientConfig"]["caBundle"] =
                        serde_json::to_value(ByteString(b.as_bytes().to_vec())).unwrap();
                }
                w
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "wasmesh-sidecar-injector"},
            "webhooks": webhooks,
        }))
        .unwrap()
    }

    #[test]
    fn only_webhooks_without_the_roots_are_patched() {
        let roots = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";
        let patch = patch_for(&config(&[None, Some(roots), Some("old")]), roots.as_bytes())
            .expect("two webhooks lack the roots");
        let names: Vec<_> = patch["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "0.sidecar-injector.wasmesh.io",
                "2.sidecar-injector.wasmesh.io"
            ]
        );
        // The API server's encoding: base64 of the PEM.
        let sent: ByteString =
            serde_json::from_value(patch["webhooks"][0]["clientConfig"]["caBundle"].clone())
                .unwrap();
        assert_eq!(sent.0, roots.as_bytes());

        assert!(patch_for(&config(&[Some(roots)]), roots.as_bytes()).is_none());
    }
}
