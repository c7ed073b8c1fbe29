//! Wasm plugins as OCI images in registries, in Istio's formats ([`format`]): pulled by the
//! control plane for WasmPlugins (`oci://`), pushed by `wasmesh plugin push`. Registries are
//! reached with `oci-client` over rustls (the system's roots, or a given CA), with basic or
//! token auth from Docker's `config.json` format ([`credentials`]). [`puller`] pulls in the
//! background, caches by digest on disk and applies `imagePullPolicy`.

pub mod credentials;
pub mod format;
pub mod puller;

use std::collections::BTreeMap;
use std::time::Duration;

use oci_client::RegistryOperation::{Pull, Push};
use oci_client::client::{ClientConfig, ClientProtocol, ImageLayer};
pub use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::modules::hex;
use format::FormatError;

/// How registries are reached.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Trusted besides the system's roots (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// Registries (`host:port`) reached over plain HTTP, as Docker's `insecure-registries`.
    pub insecure: Vec<String>,
}

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{0:?} is not an image reference: {1}")]
    Reference(String, String),
    #[error("the registry client: {0}")]
    Client(String),
    #[error("{0}")]
    Registry(String),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("the image's module layer is {0} bytes, more than a plugin may be")]
    TooLarge(i64),
}

/// What a pull got.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The image manifest's digest (`sha256:<hex>`): what a tag resolved to.
    pub manifest_digest: String,
    pub module: Vec<u8>,
    /// The module's sha256 (hex).
    pub module_sha256: String,
}

/// What a push wrote.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub manifest_digest: String,
    pub module_sha256: String,
}

/// Parses `oci://host/repo:tag`, `host/repo@sha256:...` or Docker Hub's short names.
pub fn reference(url: &str) -> Result<Reference, ImageError> {
    let bare = url.trim().strip_prefix("oci://").unwrap_or(url.trim());
    bare.parse::<Reference>()
        .map_err(|e| ImageError::Reference(url.to_owned(), e.to_string()))
}

/// A client for one operation, authenticated for it: `oci-client` keeps the first credentials
/// it sees per registry, and pulls may use different ones for the same registry. Asking for
/// the token first is what reports refused credentials as such (later requests would go
/// without a token and get the registry's plain 401).
async fn client(
    reference: &Reference,
    auth: &RegistryAuth,
    operation: oci_client::RegistryOperation,
    options: &RegistryOptions,
) -> Result<Client, ImageError> {
    let client = unauthenticated(options)?;
    client
        .auth(reference, auth, operation)
        .await
        .map_err(|e| registry_error(&e))?;
    Ok(client)
}

fn unauthenticated(options: &RegistryOptions) -> Result<Client, ImageError> {
    crate::tls_provider();
    let mut config = ClientConfig {
        protocol: if options.insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(options.insecure.clone())
        },
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(30)),
        ..ClientConfig::default()
    };
    if let Some(pem) = &options.ca_pem {
        config
            .extra_root_certificates
            .push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem.clone(),
            });
    }
    Client::try_from(config).map_err(|e| ImageError::Client(causes(&e)))
}

/// Resolves a reference to its manifest's digest without downloading the image.
pub async fn resolve(
    reference: &Reference,
    auth: &RegistryAuth,
    options: &RegistryOptions,
) -> Result<String, ImageError> {
    let client = client(reference, auth, Pull, options).await?;
    client
        .fetch_manifest_digest(reference, auth)
        .await
        .map_err(|e| registry_error(&e))
}

/// Pulls the module of the image at `reference`.
pub async fn pull(
    reference: &Reference,
    auth: &RegistryAuth,
    options: &RegistryOptions,
) -> Result<Pulled, ImageError> {
    let client = client(reference, auth, Pull, options).await?;
    let (manifest, manifest_digest) = client
        .pull_image_manifest(reference, auth)
        .await
        .map_err(|e| registry_error(&e))?;
    let media_types: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    let (index, packing) = format::module_layer(&media_types)?;
    let layer = &manifest.layers[index];
    if layer.size < 0 || layer.size as usize > format::MAX_MODULE_BYTES {
        return Err(ImageError::TooLarge(layer.size));
    }
    let mut bytes = Vec::with_capacity(layer.size as usize);
    client
        .pull_blob(reference, layer, &mut bytes)
        .await
        .map_err(|e| registry_error(&e))?;
    let module = format::unpack(&bytes, packing)?;
    Ok(Pulled {
        manifest_digest,
        module_sha256: sha256_hex(&module),
        module,
    })
}

/// Pushes `module` as an *oci* variant Wasm image to `reference`.
pub async fn push(
    reference: &Reference,
    module: &[u8],
    auth: &RegistryAuth,
    options: &RegistryOptions,
) -> Result<Pushed, ImageError> {
    if !module.starts_with(b"\0asm") {
        return Err(FormatError::NotWasm.into());
    }
    let client = client(reference, auth, Push, options).await?;
    let title = BTreeMap::from([(
        format::TITLE_ANNOTATION.to_owned(),
        format::PLUGIN_FILE.to_owned(),
    )]);
    let layers = [ImageLayer::new(
        module.to_vec(),
        format::WASM_LAYER.to_owned(),
        Some(title),
    )];
    let config = oci_client::client::Config::new(
        format::config_json(),
        format::WASM_CONFIG.to_owned(),
        None,
    );
    let mut manifest = oci_client::manifest::OciImageManifest::build(&layers, &config, None);
    manifest.media_type = Some(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_owned());
    // The manifest's bytes as pushed, so that its digest is known without asking.
    let manifest_json = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let fail = |e: oci_client::errors::OciDistributionError| registry_error(&e);
    client
        .store_auth_if_needed(reference.resolve_registry(), auth)
        .await;
    client
        .push_blob(
            reference,
            layers[0].data.clone(),
            &manifest.layers[0].digest,
        )
        .await
        .map_err(fail)?;
    client
        .push_blob(reference, config.data.clone(), &manifest.config.digest)
        .await
        .map_err(fail)?;
    let content_type = http::HeaderValue::from_static(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE);
    client
        .push_manifest_raw(reference, manifest_json.clone(), content_type)
        .await
        .map_err(fail)?;
    Ok(Pushed {
        manifest_digest: format!("sha256:{}", sha256_hex(&manifest_json)),
        module_sha256: sha256_hex(module),
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// (The error names the registry's url; callers name the plugin's.)
fn registry_error(e: &oci_client::errors::OciDistributionError) -> ImageError {
    ImageError::Registry(causes(e))
}

/// An error and its sources, joined: the innermost is often the one that says why.
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
