//! TLS with the workload identity: the server side of mTLS on inbound listeners (the
//! proxy's SVID presented, a client certificate chaining to the mesh's trust bundle
//! required), and telling a TLS ClientHello from plaintext on a PERMISSIVE port.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::identity::{Identity, TrustBundle};

/// Why a listener cannot do mTLS now.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no trust bundle from the control plane yet")]
    NoTrustBundle,
    #[error("the trust bundle is unusable: {0}")]
    Roots(String),
}

/// The proxy's TLS configurations, remade when the trust bundle changes (the certificate is
/// read per handshake, so a rotation needs nothing remade).
pub struct Tls {
    identity: Arc<Identity>,
    server: ArcSwapOption<(Arc<TrustBundle>, Arc<ServerConfig>)>,
}

impl Tls {
    pub fn new(identity: Arc<Identity>) -> Tls {
        Tls {
            identity,
            server: ArcSwapOption::empty(),
        }
    }

    /// The server side of mTLS with the current trust bundle.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let trust = self.identity.trust().ok_or(TlsError::NoTrustBundle)?;
        if let Some(cached) = &*self.server.load()
            && Arc::ptr_eq(&cached.0, &trust)
        {
            return Ok(cached.1.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(root_store(&trust)?, provider.clone())
                .build()
                .map_err(|e| TlsError::Roots(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Roots(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SvidResolver(self.identity.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        self.server.store(Some(Arc::new((trust, config.clone()))));
        Ok(config)
    }
}

fn root_store(trust: &TrustBundle) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for root in &trust.roots {
        roots
            .add(root.clone())
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

/// Presents the current SVID: a rotation takes effect at the next handshake.
#[derive(Debug)]
struct SvidResolver(Arc<Identity>);

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.svid().map(|s| s.certified.clone())
    }
}

/// Whether the first bytes of a connection are a TLS handshake record (a ClientHello):
/// content type 22, protocol major version 3. Plaintext HTTP never starts that way.
pub fn is_client_hello(first: &[u8]) -> bool {
    matches!(first, [0x16, 0x03, ..] | [0x16])
}

/// The URI SAN of a peer's certificate (its SPIFFE id), if it has exactly one.
pub fn peer_uri_san(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> Option<Arc<str>> {
    let leaf = certs?.first()?;
    let cert = crate::identity::Certificate::read(leaf).ok()?;
    match &cert.uri_sans[..] {
        [one] => Some(Arc::from(one.as_str())),
        _ => None,
    }
}

/// Envoy's `x-forwarded-client-cert` for an mTLS connection (Istio's fields: By, Hash,
/// Subject, URI).
pub fn xfcc(
    identity: &Identity,
    certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    uri_san: Option<&str>,
) -> Option<http::HeaderValue> {
    let leaf = certs?.first()?;
    let by = identity
        .svid()
        .map(|s| s.spiffe_id.clone())
        .unwrap_or_default();
    let hash = wasmesh_host::module::sha256_hex(leaf);
    let uri = uri_san.unwrap_or_default();
    http::HeaderValue::from_str(&format!("By={by};Hash={hash};Subject=\"\";URI={uri}")).ok()
}
