//! A test certificate authority, and an HTTPS server with a certificate from it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    /// The CA's certificate, PEM: what a client trusts.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate for the URI SAN `uri` signed by this CA, and its key, written as
    /// `<name>.pem` and `<name>.key` in `dir`.
    pub fn leaf_files(
        &self,
        dir: &std::path::Path,
        name: &str,
        uri: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// A server certificate for `dns_names` (its common name `name`) signed by this CA, and
    /// its key, written as `<name>.pem` and `<name>.key` in `dir`.
    pub fn server_files(
        &self,
        dir: &std::path::Path,
        name: &str,
        dns_names: &[&str],
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = dns_names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// A server config with a certificate for 127.0.0.1 signed by this CA.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server_config_for("127.0.0.1", None)
    }

    /// A server config with a certificate for `name` signed by this CA; with `clients`, a
    /// client certificate from that CA is required.
    pub fn server_config_for(
        &self,
        name: &str,
        clients: Option<&TestCa>,
    ) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let builder = rustls::ServerConfig::builder();
        let builder = match clients {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.issuer.der().clone()).unwrap();
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                        .build()
                        .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(
            builder
                .with_single_cert(vec![cert.der().clone()], key)
                .unwrap(),
        )
    }
}

/// Answers every request with `body` over HTTPS (HTTP/1.1) on 127.0.0.1, with a certificate
/// from `ca`.
pub async fn https_server(ca: &TestCa, body: Bytes) -> SocketAddr {
    https_server_with(ca.server_config(), body).await
}

/// Answers every request with `body` over HTTPS (HTTP/1.1) on 127.0.0.1 with `config`.
pub async fn https_server_with(config: Arc<rustls::ServerConfig>, body: Bytes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}
