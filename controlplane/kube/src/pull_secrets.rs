//! WasmPlugins' `imagePullSecret`s on Kubernetes. The image puller reads credentials from
//! `<dir>/<namespace>/<name>.json` (a Docker `config.json`); here each Secret a WasmPlugin
//! names (`kubernetes.io/dockerconfigjson`, in the plugin's namespace) is copied there, and
//! copied again when it changes. Only named Secrets are read, one `get` each, never listed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::sync::watch;
use wasmesh_controlplane::Spec;
use wasmesh_controlplane::source::SourceState;

/// How often named Secrets are read again, so a rotated one is picked up.
const REFRESH: Duration = Duration::from_secs(30);

/// The key of a `kubernetes.io/dockerconfigjson` Secret.
const DOCKER_CONFIG: &str = ".dockerconfigjson";

type Name = (String, String);

/// The pull secrets the WasmPlugins of `state` name: (namespace, name).
fn wanted(state: &SourceState) -> BTreeSet<Name> {
    state
        .loaded
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::WasmPlugin(wp) => wp
                .image_pull_secret
                .as_ref()
                .map(|s| (r.namespace().to_owned(), s.clone())),
            _ => None,
        })
        .collect()
}

/// Keeps `dir` holding the pull secrets the source's WasmPlugins name, until the source ends.
pub async fn sync(client: Client, dir: PathBuf, mut source: watch::Receiver<Arc<SourceState>>) {
    let mut written: BTreeMap<Name, Vec<u8>> = BTreeMap::new();
    loop {
        let wanted = wanted(&source.borrow_and_update());
        for name in &wanted {
            let config = fetch(&client, name).await;
            if written.get(name) == config.as_ref() {
                continue;
            }
            let path = file(&dir, name);
            let result = match &config {
                Some(bytes) => write(&path, bytes),
                None => remove(&path),
            };
            match result {
                Ok(()) => match config {
                    Some(bytes) => {
                        written.insert(name.clone(), bytes);
                    }
                    None => {
                        written.remove(name);
                    }
                },
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "pull secret not written")
                }
            }
        }
        // Secrets no WasmPlugin names any more.
        let stale: Vec<Name> = written
            .keys()
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect();
        for name in stale {
            let _ = remove(&file(&dir, &name));
            written.remove(&name);
        }
        tokio::select! {
            changed = source.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}

/// The Secret's Docker config, or `None` (missing, of another type, or unreadable: the pull
/// then fails for want of credentials and says so on the WasmPlugin).
async fn fetch(client: &Client, (namespace, name): &Name) -> Option<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(secret)) => {
            let config = secret
                .data
                .and_then(|mut d| d.remove(DOCKER_CONFIG))
                .map(|b| b.0);
            if config.is_none() {
                tracing::warn!(%namespace, %name, "imagePullSecret has no {DOCKER_CONFIG}");
            }
            config
        }
        Ok(None) => {
            tracing::warn!(%namespace, %name, "imagePullSecret not found");
            None
        }
        Err(e) => {
            tracing::warn!(%namespace, %name, error = %e, "imagePullSecret not read");
            None
        }
    }
}

fn file(dir: &Path, (namespace, name): &Name) -> PathBuf {
    dir.join(namespace).join(format!("{name}.json"))
}

/// Written whole (a temporary file renamed), readable by its owner only: it holds passwords.
fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let parent = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(parent)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use wasmesh_controlplane::manifests;

    const PLUGIN: &str = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p, namespace: shop}\nspec:\n  url: oci://registry.example/p:1\n  imagePullSecret: regcred\n";

    fn state(yaml: &str) -> Arc<SourceState> {
        Arc::new(SourceState {
            generation: 1,
            loaded: manifests::parse_str(yaml, None),
        })
    }

    /// Answers the API's GETs of Secrets from `secrets` (path -> JSON), 404 otherwise.
    fn api(secrets: Arc<std::sync::Mutex<BTreeMap<String, String>>>) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let found = secrets.lock().unwrap().get(request.uri().path()).cloned();
                let response = match found {
                    Some(json) => Response::new(Body::from(json.into_bytes())),
                    None => Response::builder()
                        .status(404)
                        .body(Body::from(
                            br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#
                                .to_vec(),
                        ))
                        .unwrap(),
                };
                respond.send_response(response);
            }
        });
        Client::new(service, "default")
    }

    fn secret(config: &str) -> String {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(config);
        format!(
            r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"regcred","namespace":"shop"}},"type":"kubernetes.io/dockerconfigjson","data":{{".dockerconfigjson":"{encoded}"}}}}"#
        )
    }

    async fn wait_for(path: &Path, want: Option<&str>) {
        for _ in 0..1000 {
            if std::fs::read_to_string(path).ok().as_deref() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{} never held {want:?}", path.display());
    }

    #[tokio::test]
    async fn named_secrets_are_copied_refreshed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop/regcred.json");
        let secrets = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let key = "/api/v1/namespaces/shop/secrets/regcred".to_owned();
        secrets
            .lock()
            .unwrap()
            .insert(key.clone(), secret(r#"{"auths":{"a":{}}}"#));
        let (tx, rx) = watch::channel(state(PLUGIN));
        tokio::spawn(sync(api(secrets.clone()), dir.path().to_owned(), rx));
        wait_for(&path, Some(r#"{"auths":{"a":{}}}"#)).await;
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        // Rotated: read again when the source changes (or within REFRESH).
        secrets
            .lock()
            .unwrap()
            .insert(key, secret(r#"{"auths":{"b":{}}}"#));
        tx.send(state(&format!("{PLUGIN}\n"))).unwrap();
        wait_for(&path, Some(r#"{"auths":{"b":{}}}"#)).await;

        // No WasmPlugin names it any more: the copy goes.
        tx.send(state("")).unwrap();
        wait_for(&path, None).await;
    }
}
