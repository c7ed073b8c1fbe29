//! Registry credentials in Docker's `config.json` format: what `docker login` writes and what
//! a Kubernetes `kubernetes.io/dockerconfigjson` Secret (an `imagePullSecret`) holds.

use std::collections::BTreeMap;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CredentialsError {
    #[error("not a Docker config.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("auths[{0:?}].auth: not base64 of `user:password`")]
    BadAuth(String),
}

/// The credentials of a `config.json`, by registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerConfig {
    auths: BTreeMap<String, RegistryAuth>,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

impl DockerConfig {
    pub fn parse(json: &[u8]) -> Result<DockerConfig, CredentialsError> {
        let file: File = serde_json::from_slice(json)?;
        let mut auths = BTreeMap::new();
        for (key, e) in file.auths {
            let auth = if let Some(token) = e.registrytoken {
                RegistryAuth::Bearer(token)
            } else if let Some(encoded) = e.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok());
                let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':'))
                else {
                    return Err(CredentialsError::BadAuth(key));
                };
                RegistryAuth::Basic(user.to_owned(), password.to_owned())
            } else if let (Some(user), Some(password)) = (e.username, e.password) {
                RegistryAuth::Basic(user, password)
            } else if let Some(token) = e.identitytoken {
                // An identity token is a refresh token: registries take it as the password of
                // the `<token>` user in their token exchange.
                RegistryAuth::Basic("<token>".into(), token)
            } else {
                RegistryAuth::Anonymous
            };
            auths.insert(registry_key(&key), auth);
        }
        Ok(DockerConfig { auths })
    }

    /// The credentials for `registry` (`host[:port]`), anonymous when there are none.
    pub fn auth_for(&self, registry: &str) -> RegistryAuth {
        let key = registry_key(registry);
        self.auths
            .get(&key)
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }
}

/// A `config.json` key as a bare `host[:port]`: keys may be URLs (`https://host/v1/`), and
/// Docker Hub is `index.docker.io` whichever way it is written.
fn registry_key(key: &str) -> String {
    let key = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "registry-1.docker.io" => "index.docker.io".into(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_logins_and_pull_secrets() {
        let config = DockerConfig::parse(
            br#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
                "127.0.0.1:5000": {"username": "u", "password": "p:w"},
                "ghcr.io": {"registrytoken": "t"}
            }}"#,
        )
        .unwrap();
        assert_eq!(
            config.auth_for("docker.io"),
            RegistryAuth::Basic("user".into(), "pass".into())
        );
        assert_eq!(
            config.auth_for("127.0.0.1:5000"),
            RegistryAuth::Basic("u".into(), "p:w".into())
        );
        assert_eq!(config.auth_for("ghcr.io"), RegistryAuth::Bearer("t".into()));
        assert_eq!(config.auth_for("quay.io"), RegistryAuth::Anonymous);
    }

    #[test]
    fn a_malformed_file_names_the_entry() {
        let e = DockerConfig::parse(br#"{"auths": {"r.io": {"auth": "!!"}}}"#).unwrap_err();
        assert!(e.to_string().contains("r.io"), "{e}");
        assert!(DockerConfig::parse(b"[1]").is_err());
    }
}
