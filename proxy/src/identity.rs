//! The proxy's workload identity: its SVID (a certificate chain for its SPIFFE id and the
//! private key, made here and never sent anywhere) and the mesh's trust bundle, both kept up
//! to date by the control-plane client. TLS handshakes read them without a lock; a rotation
//! replaces them whole, so a handshake sees the old SVID or the new one, never half of each.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why a certificate could not be requested or installed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot make a key pair or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("the control plane refused the certificate request: {0}")]
    Refused(String),
    #[error("the certificate from the control plane is unusable: {0}")]
    BadCertificate(String),
}

/// What the proxy is and whom it trusts. Empty until the control plane has sent them (a proxy
/// without a control plane has no identity).
#[derive(Default)]
pub struct Identity {
    svid: ArcSwapOption<Svid>,
    trust: ArcSwapOption<TrustBundle>,
}

impl Identity {
    pub fn svid(&self) -> Option<Arc<Svid>> {
        self.svid.load_full()
    }

    pub fn trust(&self) -> Option<Arc<TrustBundle>> {
        self.trust.load_full()
    }

    pub fn set_svid(&self, svid: Svid) {
        self.svid.store(Some(Arc::new(svid)));
    }

    pub fn set_trust(&self, trust: TrustBundle) {
        self.trust.store(Some(Arc::new(trust)));
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.svid().map(|s| s.spiffe_id.clone()))
            .finish()
    }
}

/// The mesh's roots.
pub struct TrustBundle {
    pub trust_domain: String,
    pub roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// From the control plane's message; every root must parse.
    pub fn from_pem(trust_domain: &str, roots_pem: &[String]) -> Result<TrustBundle, String> {
        let mut roots = Vec::with_capacity(roots_pem.len());
        for (i, pem) in roots_pem.iter().enumerate() {
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| format!("root {i}: {e}"))?;
            Certificate::read(&der).map_err(|e| format!("root {i}: {e}"))?;
            roots.push(der);
        }
        Ok(TrustBundle {
            trust_domain: trust_domain.to_owned(),
            roots,
        })
    }
}

/// An X.509 SVID with its key.
pub struct Svid {
    pub spiffe_id: String,
    /// The chain TLS presents (the workload certificate and any intermediates; not the root)
    /// and the signing key.
    pub certified: Arc<CertifiedKey>,
    /// The workload certificate's details, for `/certs` and rotation.
    pub leaf: Certificate,
    /// The root it was issued under, as the control plane sent it.
    pub root: Option<CertificateDer<'static>>,
    /// When to ask for the next one: about half-way through its life, jittered so that
    /// proxies started together do not all ask at once (Istio's agent: 50%).
    pub renew_at: SystemTime,
}

impl Svid {
    /// True from `renew_at` on (and for a certificate that is no longer valid).
    pub fn due(&self, now: SystemTime) -> bool {
        now >= self.renew_at || now >= self.leaf.not_after
    }
}

/// What the proxy shows of a certificate.
#[derive(Clone, Debug)]
pub struct Certificate {
    pub serial: String,
    pub subject: String,
    pub uri_sans: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Certificate {
    pub fn read(der: &CertificateDer<'_>) -> Result<Certificate, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        let uri_sans = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(format!("bad subjectAltName: {e}")),
        };
        Ok(Certificate {
            // As Envoy's `/certs` shows it (OpenSSL's BN_bn2hex, lowercase): two digits a
            // byte, no leading zero bytes.
            serial: cert
                .raw_serial()
                .iter()
                .skip_while(|b| **b == 0)
                .map(|b| format!("{b:02x}"))
                .collect(),
            subject: cert.subject().to_string(),
            uri_sans,
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }
}

/// A key pair waiting for its certificate.
pub struct PendingKey {
    spiffe_id: String,
    key: KeyPair,
}

impl PendingKey {
    /// A new ECDSA P-256 key pair (as Istio's agent makes) and a CSR (PEM) for `spiffe_id`.
    pub fn new(spiffe_id: &str) -> Result<(PendingKey, String), IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;
        let pending = PendingKey {
            spiffe_id: spiffe_id.to_owned(),
            key,
        };
        Ok((pending, csr))
    }

    /// The SVID from the control plane's chain (PEM, the workload certificate first, the root
    /// last): checked to be for this key and this identity, and valid now.
    pub fn complete(self, chain_pem: &[String]) -> Result<Svid, IdentityError> {
        let bad = IdentityError::BadCertificate;
        let mut chain = Vec::with_capacity(chain_pem.len());
        for pem in chain_pem {
            chain.push(
                CertificateDer::from_pem_slice(pem.as_bytes())
                    .map_err(|e| bad(format!("not a PEM certificate: {e}")))?,
            );
        }
        let Some(first) = chain.first() else {
            return Err(bad("the chain is empty".into()));
        };
        let leaf = Certificate::read(first).map_err(bad)?;
        if leaf.uri_sans != [self.spiffe_id.as_str()] {
            return Err(bad(format!(
                "it is for {:?}, not {}",
                leaf.uri_sans, self.spiffe_id
            )));
        }
        let now = SystemTime::now();
        if now >= leaf.not_after {
            return Err(bad("it has expired".into()));
        }
        // The root stays out of what TLS presents: peers have it already.
        let root = match chain.len() {
            1 => None,
            _ => chain.pop(),
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| bad(format!("its key: {e}")))?;
        let certified = CertifiedKey::new(chain, signer);
        certified
            .keys_match()
            .map_err(|e| bad(format!("it is not for the key this proxy sent: {e}")))?;
        // Half of what is left from now (not from `not_before`, which CAs set back a little
        // for clock skew), jittered by a tenth either way.
        let left = leaf.not_after.duration_since(now).unwrap_or_default();
        let renew_at = now + left.mul_f64(rand::random_range(0.45..0.55));
        Ok(Svid {
            spiffe_id: self.spiffe_id,
            certified: Arc::new(certified),
            leaf,
            root,
            renew_at,
        })
    }
}

/// The `certificates` entry of Envoy's `/certs` admin page for this identity.
pub fn certs_json(identity: &Identity) -> serde_json::Value {
    let now = SystemTime::now();
    let detail = |c: &Certificate| {
        let left = c.not_after.duration_since(now).unwrap_or_default();
        serde_json::json!({
            "serial_number": c.serial,
            "subject_alt_names": c.uri_sans.iter().map(|u| serde_json::json!({ "uri": u })).collect::<Vec<_>>(),
            "days_until_expiration": (left.as_secs() / 86_400).to_string(),
            "seconds_until_expiration": left.as_secs().to_string(),
            "valid_from": humantime::format_rfc3339_seconds(c.not_before).to_string(),
            "expiration_time": humantime::format_rfc3339_seconds(c.not_after).to_string(),
        })
    };
    let ca_cert: Vec<_> = identity
        .trust()
        .map(|t| {
            t.roots
                .iter()
                .filter_map(|r| Certificate::read(r).ok())
                .map(|c| detail(&c))
                .collect()
        })
        .unwrap_or_default();
    let cert_chain: Vec<_> = identity
        .svid()
        .map(|s| vec![detail(&s.leaf)])
        .unwrap_or_default();
    if ca_cert.is_empty() && cert_chain.is_empty() {
        return serde_json::json!({ "certificates": [] });
    }
    serde_json::json!({
        "certificates": [{ "ca_cert": ca_cert, "cert_chain": cert_chain }]
    })
}
