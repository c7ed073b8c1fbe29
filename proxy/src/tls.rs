//! TLS with the workload identity: the server side of mTLS on inbound listeners (the
//! proxy's SVID presented, a client certificate chaining to the mesh's trust bundle
//! required), telling a TLS ClientHello from plaintext on a PERMISSIVE port, and the client
//! side to clusters whose endpoints are sidecars (Istio's ISTIO_MUTUAL).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};

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
pub fn peer_uri_san(certs: Option<&[CertificateDer<'_>]>) -> Option<Arc<str>> {
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
    certs: Option<&[CertificateDer<'_>]>,
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

/// The client side of TLS to one cluster. ISTIO_MUTUAL: the proxy's SVID presented, the
/// endpoint's certificate verified against the trust bundle and its SPIFFE id against the
/// cluster's. SIMPLE and MUTUAL: a config made once from files ([`crate::external_tls`]).
pub struct ClientTls {
    identity: Arc<Identity>,
    server_name: ServerName<'static>,
    expected: Arc<[String]>,
    alpn: Vec<Vec<u8>>,
    config: ArcSwapOption<(Arc<TrustBundle>, Arc<ClientConfig>)>,
    external: Option<Arc<ClientConfig>>,
}

impl ClientTls {
    /// For a cluster (`name`, speaking `protocol`) with `tls` settings. ALPN offers the
    /// protocol's name (none for opaque TCP).
    pub fn new(
        identity: Arc<Identity>,
        tls: &crate::config::UpstreamTls,
        name: &str,
        protocol: crate::config::UpstreamProtocol,
    ) -> Result<ClientTls, String> {
        use crate::config::UpstreamProtocol;
        let sni = tls.sni.as_deref().unwrap_or(name);
        let server_name =
            ServerName::try_from(sni.to_owned()).map_err(|e| format!("tls.sni: {sni:?}: {e}"))?;
        let alpn = match protocol {
            UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
            UpstreamProtocol::Tcp => Vec::new(),
            UpstreamProtocol::Http1 | UpstreamProtocol::Downstream => vec![b"http/1.1".to_vec()],
        };
        let external = match tls.mode {
            crate::config::UpstreamTlsMode::IstioMutual => None,
            _ => Some(crate::external_tls::client_config(tls, alpn.clone())?),
        };
        Ok(ClientTls {
            identity,
            server_name,
            expected: tls.subject_alt_names.clone().into(),
            alpn,
            config: ArcSwapOption::empty(),
            external,
        })
    }

    fn config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        if let Some(external) = &self.external {
            return Ok(external.clone());
        }
        let trust = self.identity.trust().ok_or(TlsError::NoTrustBundle)?;
        if let Some(cached) = &*self.config.load()
            && Arc::ptr_eq(&cached.0, &trust)
        {
            return Ok(cached.1.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = trust
            .roots
            .iter()
            .map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .map(|a| a.to_owned())
                    .map_err(|e| TlsError::Roots(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let verifier = SpiffeVerifier {
            roots,
            expected: self.expected.clone(),
            provider: provider.clone(),
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Roots(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(SvidResolver(self.identity.clone())));
        config.alpn_protocols = self.alpn.clone();
        let config = Arc::new(config);
        self.config.store(Some(Arc::new((trust, config.clone()))));
        Ok(config)
    }

    /// The TLS handshake over a connected stream.
    pub async fn connect(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let config = self.config().map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(config)
            .connect(self.server_name.clone(), tcp)
            .await
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.svid().map(|s| s.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.svid().is_some()
    }
}

/// Verifies a server's SVID: its chain against the trust bundle (for server use), and its
/// one URI SAN against the identities expected of the cluster's endpoints. The DNS name is
/// not checked: an SVID names none.
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Vec<rustls_pki_types::TrustAnchor<'static>>,
    expected: Arc<[String]>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(certificate_error)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(certificate_error)?;
        let san = peer_uri_san(Some(std::slice::from_ref(end_entity)));
        let allowed = match &san {
            Some(id) => self.expected.is_empty() || self.expected.iter().any(|e| **e == **id),
            None => false,
        };
        if !allowed {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(UnexpectedIdentity {
                    got: san.as_deref().unwrap_or("no single URI SAN").to_owned(),
                    expected: self.expected.to_vec(),
                }))),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    crate::handshake_signatures::by_provider!();
}

/// A server whose SPIFFE id is not one the cluster expects.
#[derive(Debug, thiserror::Error)]
#[error("the peer is {got}, expected one of {expected:?}")]
struct UnexpectedIdentity {
    got: String,
    expected: Vec<String>,
}

fn certificate_error(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    rustls::Error::InvalidCertificate(match e {
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        e => C::Other(rustls::OtherError(Arc::new(e))),
    })
}
