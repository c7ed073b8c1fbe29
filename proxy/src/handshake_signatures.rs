//! What every certificate verifier here shares: checking handshake signatures with its
//! crypto provider, whatever it makes of the certificate (one macro, since the methods
//! belong to each verifier's `ServerCertVerifier` impl).

/// The handshake-signature methods of a `ServerCertVerifier` whose `provider` field (an
/// `Arc<CryptoProvider>`) checks them: what every verifier here shares, whatever it makes of
/// the certificate.
macro_rules! by_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use by_provider;
