//! The mesh's certificate authority. Its signing CA is either a root it generates on first
//! start and keeps in the data directory, or an operator's CA in Istio's `cacerts` layout
//! (an intermediate under the operator's root). It signs workload CSRs as X.509 SVIDs whose
//! one URI SAN is the workload's SPIFFE identity. The private keys of workloads never come
//! here: a CSR carries only the public key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;

pub use wasmesh_api::DEFAULT_TRUST_DOMAIN;

/// How long a generated root is valid.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far back a certificate's validity starts: clocks across a mesh differ a little.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why the CA could not start or refused to sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A CA file could not be read, written or parsed.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// The CSR does not parse, or its signature does not verify.
    #[error("bad CSR: {0}")]
    BadCsr(String),
    /// The CSR asks for an identity the caller does not have.
    #[error("the CSR asks for {asked}, but the caller is {entitled}")]
    NotEntitled { asked: String, entitled: String },
    /// The lifetime asked for is over the maximum (Istio's `MAX_WORKLOAD_CERT_TTL`).
    #[error("the lifetime asked for, {asked:?}, is over the maximum of {max:?}")]
    TooLong { asked: Duration, max: Duration },
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

pub use wasmesh_api::spiffe_id;

/// The CA with the mesh's signing policy: what proxies' CSRs are checked and signed by.
#[derive(Clone)]
pub struct Authority {
    pub ca: Arc<Ca>,
    pub trust_domain: String,
    /// The lifetime of a certificate whose request names none (Istio's default: 24 h).
    pub default_lifetime: Duration,
    /// The longest lifetime a request may ask for (Istio's default: 90 days).
    pub max_lifetime: Duration,
}

impl Authority {
    /// Signs a CSR (PEM) from the proxy of a workload in `namespace` running as
    /// `service_account`: its certificate chain, PEM, the workload's certificate first.
    pub fn sign_pem(
        &self,
        csr_pem: &str,
        namespace: &str,
        service_account: &str,
        lifetime: Option<Duration>,
    ) -> Result<Vec<String>, CaError> {
        let lifetime = lifetime.unwrap_or(self.default_lifetime);
        if lifetime > self.max_lifetime {
            return Err(CaError::TooLong {
                asked: lifetime,
                max: self.max_lifetime,
            });
        }
        let csr = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| CaError::BadCsr(format!("not a PEM CSR: {e}")))?;
        let identity = spiffe_id(&self.trust_domain, namespace, service_account);
        let chain = self.ca.sign(&csr, &identity, lifetime)?;
        Ok(chain.iter().map(|c| to_pem(c)).collect())
    }

    /// The roots proxies trust, PEM.
    pub fn roots_pem(&self) -> Vec<String> {
        self.ca.roots().iter().map(|c| to_pem(c)).collect()
    }
}

/// Where the CA's files are: reloaded from there when they change.
#[derive(Clone, Debug)]
pub enum CaFiles {
    /// A root generated (once) and kept in this directory.
    SelfSigned { dir: PathBuf, trust_domain: String },
    /// Istio's plugged-in `cacerts` directory.
    Cacerts(PathBuf),
}

impl CaFiles {
    pub fn load(&self) -> Result<Ca, CaError> {
        match self {
            CaFiles::SelfSigned { dir, trust_domain } => Ca::self_signed_in(dir, trust_domain),
            CaFiles::Cacerts(dir) => Ca::from_cacerts(dir),
        }
    }

    fn dir(&self) -> &Path {
        match self {
            CaFiles::SelfSigned { dir, .. } | CaFiles::Cacerts(dir) => dir,
        }
    }
}

/// The authority in effect, replaced when the CA's files change (a root rotation: first
/// both roots in `root-cert.pem`, then a new signing CA, then the old root taken out).
/// Files that do not load leave the last good CA signing, reported.
pub struct WatchedAuthority {
    pub rx: tokio::sync::watch::Receiver<Arc<Authority>>,
    _watcher: notify::RecommendedWatcher,
}

/// How long the CA's files must be quiet before they are read: an operator writes several.
const CA_SETTLE: Duration = Duration::from_millis(200);

impl WatchedAuthority {
    pub fn start(files: CaFiles, policy: Authority) -> Result<WatchedAuthority, CaError> {
        use notify::Watcher;
        let dir = files.dir().to_owned();
        let watch_error = |e: notify::Error| CaError::File {
            path: dir.clone(),
            reason: format!("cannot watch: {e}"),
        };
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(policy));
        let (events_tx, events_rx) = std::sync::mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = events_tx.send(());
                }
            })
            .map_err(watch_error)?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        std::thread::Builder::new()
            .name("wasmesh-ca".into())
            .spawn(move || {
                while events_rx.recv().is_ok() {
                    while events_rx.recv_timeout(CA_SETTLE).is_ok() {}
                    let current = tx.borrow().clone();
                    match files.load() {
                        Ok(ca) if ca.roots == current.ca.roots && ca.chain == current.ca.chain => {}
                        Ok(ca) => {
                            tracing::info!(roots = ca.roots.len(), "CA reloaded");
                            let next = Authority {
                                ca: Arc::new(ca),
                                ..(*current).clone()
                            };
                            if tx.send(Arc::new(next)).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            "the CA's files do not load; the last good CA keeps signing"
                        ),
                    }
                }
            })
            .map_err(|e| CaError::File {
                path: dir.clone(),
                reason: format!("cannot start the CA thread: {e}"),
            })?;
        Ok(WatchedAuthority {
            rx,
            _watcher: watcher,
        })
    }
}

/// The signing CA, and what goes with every certificate it issues.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The signing CA's certificate and those above it, up to and including the root:
    /// appended to every issued certificate.
    chain: Vec<CertificateDer<'static>>,
    /// The roots proxies trust: the signing CA's root, and during a root rotation the other
    /// one (both in `root-cert.pem`, as Istio's multi-root bundle).
    roots: Vec<CertificateDer<'static>>,
}

impl Ca {
    /// The self-signed root kept in `dir` (`root-cert.pem`, `root-key.pem`), generated and
    /// written there (the key readable by its owner only) if `dir` has none.
    pub fn self_signed_in(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        let cert_path = dir.join("root-cert.pem");
        let key_path = dir.join("root-key.pem");
        if !cert_path.exists() && !key_path.exists() {
            let (cert, key) = generate_root(trust_domain)?;
            std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
            write_private(&key_path, &key)?;
            std::fs::write(&cert_path, &cert).map_err(|e| file_error(&cert_path, e))?;
            tracing::info!(dir = %dir.display(), "generated the mesh's root CA");
        }
        let roots = read_certs(&cert_path)?;
        // The signing root is the one whose public key is the key's; any other root in the
        // file is trusted alongside it (a root rotation's overlap).
        let spki = rcgen::PublicKeyData::subject_public_key_info(&read_key(&key_path)?);
        let root = roots
            .iter()
            .find(|root| public_key_info(root).is_some_and(|k| k == spki))
            .cloned()
            .ok_or_else(|| CaError::File {
                path: cert_path.clone(),
                reason: format!("no certificate in it matches {}", key_path.display()),
            })?;
        let issuer = issuer(&cert_path, &root, &key_path)?;
        Ok(Ca {
            issuer,
            chain: vec![root],
            roots,
        })
    }

    /// An operator's CA in Istio's `cacerts` layout: `ca-cert.pem` and `ca-key.pem` (the
    /// signing CA), `root-cert.pem` (the root proxies trust) and `cert-chain.pem` (from the
    /// signing CA up to the root).
    pub fn from_cacerts(dir: &Path) -> Result<Ca, CaError> {
        let cert_path = dir.join("ca-cert.pem");
        let ca_cert = read_cert(&cert_path)?;
        let issuer = issuer(&cert_path, &ca_cert, &dir.join("ca-key.pem"))?;
        let roots = read_certs(&dir.join("root-cert.pem"))?;
        let chain = read_certs(&dir.join("cert-chain.pem"))?;
        Ok(Ca {
            issuer,
            chain,
            roots,
        })
    }

    /// The roots proxies trust.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Signs `csr` (DER) for `identity` (a SPIFFE id): the CSR must verify and ask for
    /// exactly that identity. The certificate holds only the identity, whatever else the CSR
    /// asks for. Returns the chain: the new certificate first, then the CA's chain.
    pub fn sign(
        &self,
        csr: &[u8],
        identity: &str,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
                .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [identity] {
            return Err(CaError::NotEntitled {
                asked: asked.join(", "),
                entitled: identity.to_owned(),
            });
        }
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        // As Istio's SVIDs: an empty subject, the identity only in the (then critical) SAN.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + lifetime;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from(rand::random::<[u8; 16]>().to_vec()));
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        let mut chain = Vec::with_capacity(1 + self.chain.len());
        chain.push(cert.der().clone());
        chain.extend(self.chain.iter().cloned());
        Ok(chain)
    }

    /// A TLS server certificate for `dns_names` (the first is also its common name), with a
    /// new key: the control plane's own endpoints (the sidecar injector's webhook) serve it
    /// to clients that trust the mesh's roots. Returns the chain (the new certificate first,
    /// then the CA's chain) and the key, PEM.
    pub fn issue_server_certificate(
        &self,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(dns_names)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = dns_names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + lifetime;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from(rand::random::<[u8; 16]>().to_vec()));
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = std::iter::once(cert.pem())
            .chain(self.chain.iter().map(|c| to_pem(c)))
            .collect();
        Ok((chain, key.serialize_pem()))
    }
}

/// A new self-signed root for `trust_domain`: its certificate and key, PEM. (As a `cacerts`
/// directory it is both the signing CA and the root: `ca-cert.pem`, `root-cert.pem` and
/// `cert-chain.pem` are the certificate, `ca-key.pem` the key.)
pub fn generate_root(trust_domain: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, "wasmesh root CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + ROOT_LIFETIME;
    params.serial_number = Some(SerialNumber::from(rand::random::<[u8; 16]>().to_vec()));
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The signing CA from its certificate (read from `cert_path`) and its key file.
fn issuer(
    cert_path: &Path,
    cert: &CertificateDer<'_>,
    key_path: &Path,
) -> Result<Issuer<'static, KeyPair>, CaError> {
    let key = read_key(key_path)?;
    // A key written before its certificate (or after) must not sign under the other's name.
    if public_key_info(cert)
        .is_none_or(|k| k != rcgen::PublicKeyData::subject_public_key_info(&key))
    {
        return Err(CaError::File {
            path: key_path.to_owned(),
            reason: format!("not the key of {}", cert_path.display()),
        });
    }
    Issuer::from_ca_cert_der(cert, key).map_err(|e| CaError::File {
        path: cert_path.to_owned(),
        reason: format!("not a CA certificate: {e}"),
    })
}

fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    KeyPair::from_pem(&text).map_err(|e| CaError::File {
        path: path.to_owned(),
        reason: format!("not a private key: {e}"),
    })
}

/// Every certificate in a PEM file (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CaError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::File {
            path: path.to_owned(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

/// A certificate's SubjectPublicKeyInfo, DER.
fn public_key_info(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(parsed.public_key().raw.to_vec())
}

/// A certificate as PEM.
pub fn to_pem(cert: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert);
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The first certificate in a PEM file.
fn read_cert(path: &Path) -> Result<CertificateDer<'static>, CaError> {
    CertificateDer::from_pem_file(path).map_err(|e| CaError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn file_error(path: &Path, e: std::io::Error) -> CaError {
    CaError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Writes a private key readable by its owner only, from the moment it exists.
fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| file_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const ID: &str = "spiffe://cluster.local/ns/default/sa/reviews";

    fn csr(sans: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::URI((*s).try_into().unwrap()))
            .collect();
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    fn pem(cert: &CertificateDer) -> String {
        to_pem(cert)
    }

    /// `openssl verify` of `chain[0]` against `root`, with the rest of the chain untrusted.
    fn openssl_verify(dir: &Path, root: &CertificateDer, chain: &[CertificateDer]) -> String {
        std::fs::write(dir.join("v-root.pem"), pem(root)).unwrap();
        std::fs::write(dir.join("v-leaf.pem"), pem(&chain[0])).unwrap();
        let rest: String = chain[1..].iter().map(pem).collect();
        std::fs::write(dir.join("v-rest.pem"), rest).unwrap();
        let out = Command::new("openssl")
            .args(["verify", "-purpose", "sslclient", "-CAfile", "v-root.pem"])
            .args(["-untrusted", "v-rest.pem", "v-leaf.pem"])
            .current_dir(dir)
            .output()
            .expect("openssl (deploy/setup.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn openssl_text(dir: &Path, cert: &CertificateDer) -> String {
        std::fs::write(dir.join("t.pem"), pem(cert)).unwrap();
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in", "t.pem"])
            .current_dir(dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_generated_root_is_kept_and_signs_svids_openssl_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = Ca::self_signed_in(&ca_dir, DEFAULT_TRUST_DOMAIN).unwrap();
        // A restart loads the same root instead of making a new one.
        let again = Ca::self_signed_in(&ca_dir, DEFAULT_TRUST_DOMAIN).unwrap();
        assert_eq!(ca.roots(), again.roots());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ca_dir.join("root-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let chain = again
            .sign(&csr(&[ID]), ID, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(chain.len(), 2);
        let verdict = openssl_verify(dir.path(), &ca.roots()[0], &chain);
        assert!(verdict.contains("v-leaf.pem: OK"), "{verdict}");
        let text = openssl_text(dir.path(), &chain[0]);
        assert!(text.contains(&format!("URI:{ID}")), "{text}");
        assert!(
            text.contains("Subject: \n") || text.contains("Subject:\n"),
            "{text}"
        );
        assert!(
            text.contains("Subject Alternative Name: critical"),
            "{text}"
        );
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(
            text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{text}"
        );
    }

    #[test]
    fn a_server_certificate_names_its_hosts_and_verifies_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::self_signed_in(&dir.path().join("ca"), DEFAULT_TRUST_DOMAIN).unwrap();
        let names = ["injector".to_owned(), "injector.mesh.svc".to_owned()];
        let (chain, key) = ca
            .issue_server_certificate(&names, Duration::from_secs(3600))
            .unwrap();
        let chain: Vec<_> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], ca.roots()[0]);
        // The key is the certificate's.
        let key = KeyPair::from_pem(&key).unwrap();
        assert_eq!(
            public_key_info(&chain[0]),
            Some(rcgen::PublicKeyData::subject_public_key_info(&key))
        );
        std::fs::write(dir.path().join("v-root.pem"), pem(&ca.roots()[0])).unwrap();
        std::fs::write(dir.path().join("v-leaf.pem"), pem(&chain[0])).unwrap();
        let out = Command::new("openssl")
            .args(["verify", "-purpose", "sslserver", "-CAfile", "v-root.pem"])
            .args(["-verify_hostname", "injector.mesh.svc", "v-leaf.pem"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let verdict = String::from_utf8_lossy(&out.stdout);
        assert!(verdict.contains("v-leaf.pem: OK"), "{verdict}{out:?}");
        let text = openssl_text(dir.path(), &chain[0]);
        assert!(
            text.contains("DNS:injector, DNS:injector.mesh.svc"),
            "{text}"
        );
        assert!(text.contains("CA:FALSE"), "{text}");
    }

    #[test]
    fn a_csr_for_another_identity_or_with_a_bad_signature_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::self_signed_in(dir.path(), DEFAULT_TRUST_DOMAIN).unwrap();
        let lifetime = Duration::from_secs(3600);
        let other = "spiffe://cluster.local/ns/default/sa/ratings";
        for sans in [&[other][..], &[ID, other][..], &[][..]] {
            let err = ca.sign(&csr(sans), ID, lifetime).unwrap_err();
            assert!(matches!(err, CaError::NotEntitled { .. }), "{err}");
        }
        // A CSR whose signature does not match its content.
        let mut tampered = csr(&[ID]);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let err = ca.sign(&tampered, ID, lifetime).unwrap_err();
        assert!(matches!(err, CaError::BadCsr(_)), "{err}");
        assert!(matches!(
            ca.sign(b"not a CSR", ID, lifetime).unwrap_err(),
            CaError::BadCsr(_)
        ));
    }

    #[test]
    fn an_operators_intermediate_signs_under_the_operators_root() {
        let dir = tempfile::tempdir().unwrap();
        // The operator's root and an intermediate for the mesh, as Istio's plugged-in CA.
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::default();
        root_params
            .distinguished_name
            .push(DnType::CommonName, "operator root");
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let root = rcgen::CertifiedIssuer::self_signed(root_params, root_key).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mesh intermediate");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca_params.signed_by(&ca_key, &root).unwrap();
        let cacerts = dir.path().join("cacerts");
        std::fs::create_dir(&cacerts).unwrap();
        std::fs::write(cacerts.join("ca-cert.pem"), ca_cert.pem()).unwrap();
        std::fs::write(cacerts.join("ca-key.pem"), ca_key.serialize_pem()).unwrap();
        std::fs::write(cacerts.join("root-cert.pem"), root.pem()).unwrap();
        std::fs::write(cacerts.join("cert-chain.pem"), ca_cert.pem() + &root.pem()).unwrap();

        let ca = Ca::from_cacerts(&cacerts).unwrap();
        assert_eq!(ca.roots(), [root.der().clone()]);
        let chain = ca.sign(&csr(&[ID]), ID, Duration::from_secs(3600)).unwrap();
        assert_eq!(chain.len(), 3);
        let verdict = openssl_verify(dir.path(), root.der(), &chain);
        assert!(verdict.contains("v-leaf.pem: OK"), "{verdict}");

        // A missing file is named.
        std::fs::remove_file(cacerts.join("ca-key.pem")).unwrap();
        let err = Ca::from_cacerts(&cacerts).err().unwrap().to_string();
        assert!(err.contains("ca-key.pem"), "{err}");
    }
}
