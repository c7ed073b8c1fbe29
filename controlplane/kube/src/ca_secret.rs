//! One CA for all replicas. On Kubernetes without an operator's `cacerts`, the mesh's root
//! lives in the Secret `wasmesh-ca` in the control plane's namespace, in Istio's `cacerts`
//! layout: the Lease's holder generates it once; every replica writes it to a directory and
//! loads that as `CaFiles::Cacerts`. An existing Secret is never overwritten: replacing the
//! root would break every workload's trust.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use wasmesh_controlplane::ca::{CaError, generate_root};

use crate::lease::{has_code, jitter};

/// The Secret's name.
pub const SECRET_NAME: &str = "wasmesh-ca";

/// The Secret's keys, the files of a `cacerts` directory.
pub const KEYS: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "root-cert.pem",
    "cert-chain.pem",
];

/// The longest wait between looks at the Secret.
const MAX_BACKOFF: Duration = Duration::from_secs(16);

#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error("the Secret {namespace}/{SECRET_NAME} has no {key}")]
    Incomplete {
        namespace: String,
        key: &'static str,
    },
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Generate(#[from] CaError),
}

/// Writes the CA's Secret into `dir` (created if missing) and returns `dir`, to be loaded as
/// `CaFiles::Cacerts(dir)`. A missing Secret is created by the Lease's holder with a new
/// self-signed root for `trust_domain`; other replicas wait for it. API errors are retried
/// with backoff; only a Secret that lacks a key, or files that cannot be written, fail.
pub async fn ensure_ca_secret(
    client: Client,
    namespace: &str,
    mut leader: watch::Receiver<bool>,
    trust_domain: &str,
    dir: &Path,
) -> Result<PathBuf, CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let mut wait = Duration::from_millis(500);
    loop {
        match api.get_opt(SECRET_NAME).await {
            Ok(Some(secret)) => {
                write_files(&secret, namespace, dir)?;
                tracing::info!(secret = SECRET_NAME, dir = %dir.display(), "the mesh's CA, from its Secret");
                return Ok(dir.to_owned());
            }
            Ok(None) if *leader.borrow_and_update() => {
                match api
                    .create(&PostParams::default(), &new_secret(trust_domain)?)
                    .await
                {
                    Ok(created) => {
                        tracing::info!(secret = SECRET_NAME, "generated the mesh's root CA");
                        write_files(&created, namespace, dir)?;
                        return Ok(dir.to_owned());
                    }
                    // Another replica created it meanwhile: use theirs.
                    Err(e) if has_code(&e, 409) => continue,
                    Err(e) => {
                        tracing::warn!(secret = SECRET_NAME, error = %e, "cannot create the CA's Secret")
                    }
                }
            }
            Ok(None) => {
                tracing::info!(
                    secret = SECRET_NAME,
                    "waiting for the leader to create the CA's Secret"
                );
            }
            Err(e) => {
                tracing::warn!(secret = SECRET_NAME, error = %e, "cannot read the CA's Secret")
            }
        }
        // Becoming the leader ends the wait: then it is ours to create.
        tokio::select! {
            () = tokio::time::sleep(jitter(wait)) => {}
            Ok(()) = leader.changed() => {}
        }
        wait = (wait * 2).min(MAX_BACKOFF);
    }
}

/// A Secret holding a new self-signed root, as the signing CA and the root.
fn new_secret(trust_domain: &str) -> Result<Secret, CaError> {
    let (cert, key) = generate_root(trust_domain)?;
    let data = KEYS
        .iter()
        .map(|&k| {
            let pem = if k == "ca-key.pem" { &key } else { &cert };
            (k.to_owned(), ByteString(pem.clone().into_bytes()))
        })
        .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "wasmesh-controlplane".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    })
}

/// Writes the Secret's four files into `dir`, each replaced whole (the CA's watcher must
/// never read half a file), the key readable by its owner only.
fn write_files(secret: &Secret, namespace: &str, dir: &Path) -> Result<(), CaSecretError> {
    let data = secret.data.as_ref();
    let files = KEYS
        .iter()
        .map(|&key| {
            data.and_then(|d| d.get(key))
                .map(|v| (key, &v.0))
                .ok_or_else(|| CaSecretError::Incomplete {
                    namespace: namespace.to_owned(),
                    key,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CaSecretError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (key, bytes) in files {
        let path = dir.join(key);
        let tmp = dir.join(format!(".{key}.tmp"));
        // A stale one would keep its mode.
        let _ = std::fs::remove_file(&tmp);
        write_owner_only(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    Ok(())
}

fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}
