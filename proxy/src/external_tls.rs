//! TLS to servers outside the mesh: DestinationRule `tls.mode` SIMPLE (the server verified
//! against given CAs or the system's roots, by its DNS name) and MUTUAL (SIMPLE, presenting a
//! client certificate from files). The files are read when the config is loaded; a file that
//! cannot be read or parsed refuses the config, naming the field and the file.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{UpstreamTls, UpstreamTlsMode};

/// The client config for a SIMPLE or MUTUAL cluster offering `alpn`. `Err` names the field.
pub fn client_config(tls: &UpstreamTls, alpn: Vec<Vec<u8>>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(AnyServer {
            provider: provider.clone(),
        })
    } else {
        let roots = Arc::new(roots(tls.ca_certificates.as_deref())?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("tls.ca_certificates: {e}"))?;
        if tls.subject_alt_names.is_empty() {
            webpki
        } else {
            let names = tls
                .subject_alt_names
                .iter()
                .map(|n| {
                    ServerName::try_from(n.clone())
                        .map_err(|e| format!("tls.subject_alt_names: {n:?}: {e}"))
                })
                .collect::<Result<_, _>>()?;
            Arc::new(AnyOfNames { webpki, names })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match tls.mode {
        UpstreamTlsMode::Mutual => {
            let (cert, key) = (
                tls.client_certificate.as_deref().unwrap_or_default(),
                tls.private_key.as_deref().unwrap_or_default(),
            );
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("tls.client_certificate: {cert}: {e}"))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("tls.private_key: {key}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls.private_key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// The CAs in `file`, or the system's roots.
fn roots(file: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match file {
        Some(file) => {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("tls.ca_certificates: {file}: {e}"))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("tls.ca_certificates: {file}: {e}"))?;
            }
        }
        None => {
            // SSL_CERT_FILE / SSL_CERT_DIR, else the system's store.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "tls.ca_certificates: no CA certificate in {}",
            file.unwrap_or("the system's roots")
        ));
    }
    Ok(roots)
}

/// Verifies the server for any one of the names (Istio's `subjectAltNames`) rather than the
/// SNI.
#[derive(Debug)]
struct AnyOfNames {
    webpki: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AnyOfNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = None;
        for name in &self.names {
            match self
                .webpki
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subject alt name".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `insecureSkipVerify`: any certificate is accepted, though the handshake's signatures are
/// still checked against it.
#[derive(Debug)]
struct AnyServer {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    crate::handshake_signatures::by_provider!();
}
