//! A gateway's downstream TLS (Istio's Gateway `tls.mode` SIMPLE, MUTUAL and PASSTHROUGH):
//! the server certificates of a `simple` or `mutual` listener, picked by the ClientHello's SNI,
//! the client certificate check of `mutual` (the CAs, `subject_alt_names`), and a listener's
//! `sni_routes`. Compiled once per snapshot; files are read again when they change on disk
//! (checked at most every 2 s, at handshake time), and a changed set that does not load is
//! logged while the last good one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::config::{DataSource, DownstreamTls, DownstreamTlsMode, Listener};

/// How often files are checked for changes, at most.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Why a listener's TLS settings cannot be used. `field` is under the listener's `tls`
/// (`certificates[1].private_key`); `reason` names the file where there is one.
#[derive(Debug, thiserror::Error)]
#[error("tls.{field}: {reason}")]
pub struct GatewayTlsError {
    pub field: String,
    pub reason: String,
}

fn error(field: impl Into<String>, reason: impl Into<String>) -> GatewayTlsError {
    GatewayTlsError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What a listener with gateway TLS or `sni_routes` does with a ClientHello.
pub struct Gateway {
    /// `simple` or `mutual` termination, for what no SNI route takes.
    pub tls: Option<GatewayTls>,
    /// Passed-through TLS: server name patterns and the cluster for them, first match wins.
    routes: Vec<(Vec<String>, String)>,
}

impl Gateway {
    /// For a listener with `simple`/`mutual` TLS or `sni_routes` (otherwise `None`); files
    /// are relative to `base_dir`.
    pub fn new(
        listener: &Listener,
        base_dir: Option<&Path>,
    ) -> Result<Option<Gateway>, GatewayTlsError> {
        let tls = match &listener.tls {
            Some(t)
                if matches!(
                    t.mode,
                    DownstreamTlsMode::Simple | DownstreamTlsMode::Mutual
                ) =>
            {
                Some(GatewayTls::new(&listener.name, t, base_dir)?)
            }
            _ => None,
        };
        if tls.is_none() && listener.sni_routes.is_empty() {
            return Ok(None);
        }
        let routes = listener
            .sni_routes
            .iter()
            .map(|r| (lowercase(&r.server_names), r.cluster.clone()))
            .collect();
        Ok(Some(Gateway { tls, routes }))
    }

    /// The cluster a connection with this SNI is passed through to, if a route takes it.
    pub fn route(&self, sni: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|(names, _)| names.iter().any(|p| name_matches(p, sni)))
            .map(|(_, cluster)| cluster.as_str())
    }
}

/// A `simple` or `mutual` listener's server config, kept current with its files.
pub struct GatewayTls {
    listener: String,
    spec: DownstreamTls,
    base_dir: Option<PathBuf>,
    /// Each certificate's server names (lowercase), in config order: which SNI has one.
    names: Vec<Vec<String>>,
    current: ArcSwap<Loaded>,
    has_files: bool,
    created: Instant,
    /// Milliseconds after `created` when files are next looked at.
    next_check: AtomicU64,
}

struct Loaded {
    config: Arc<ServerConfig>,
    /// Modification time and length of each file source, as when last read.
    stamps: Vec<Stamp>,
}

type Stamp = Option<(SystemTime, u64)>;

impl GatewayTls {
    /// Reads and checks every certificate, key and CA now: an error refuses the config.
    pub fn new(
        listener: &str,
        spec: &DownstreamTls,
        base_dir: Option<&Path>,
    ) -> Result<GatewayTls, GatewayTlsError> {
        let loaded = load(spec, base_dir)?;
        Ok(GatewayTls {
            listener: listener.to_owned(),
            names: spec
                .certificates
                .iter()
                .map(|c| lowercase(&c.server_names))
                .collect(),
            has_files: sources(spec).any(|(_, s)| matches!(s, DataSource::Filename(_))),
            spec: spec.clone(),
            base_dir: base_dir.map(Path::to_owned),
            current: ArcSwap::from_pointee(loaded),
            created: Instant::now(),
            next_check: AtomicU64::new(CHECK_EVERY.as_millis() as u64),
        })
    }

    pub fn mode(&self) -> DownstreamTlsMode {
        self.spec.mode
    }

    /// The config for a new handshake; files that changed on disk are read again first (at
    /// most every 2 s, by one caller: the others go on with the current config).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        if self.has_files {
            let now = self.created.elapsed().as_millis() as u64;
            let due = self.next_check.load(Relaxed);
            let next = now + CHECK_EVERY.as_millis() as u64;
            if now >= due
                && self
                    .next_check
                    .compare_exchange(due, next, Relaxed, Relaxed)
                    .is_ok()
            {
                self.refresh();
            }
        }
        self.current.load().config.clone()
    }

    /// Whether a certificate serves this SNI (or its absence): if not, the handshake fails.
    pub fn has_certificate_for(&self, sni: Option<&str>) -> bool {
        self.names.iter().any(|names| {
            names.is_empty() || sni.is_some_and(|n| names.iter().any(|p| name_matches(p, n)))
        })
    }

    fn refresh(&self) {
        let current = self.current.load();
        let stamps: Vec<Stamp> = sources(&self.spec)
            .filter_map(|(_, s)| stamp(s, self.base_dir.as_deref()))
            .collect();
        if stamps == current.stamps {
            return;
        }
        match load(&self.spec, self.base_dir.as_deref()) {
            Ok(loaded) => {
                tracing::info!(listener = %self.listener, "TLS credentials changed on disk: reloaded");
                self.current.store(Arc::new(loaded));
            }
            Err(e) => {
                tracing::warn!(
                    listener = %self.listener,
                    field = %format!("tls.{}", e.field),
                    reason = %e.reason,
                    "TLS credentials changed on disk are unusable; the last good ones keep serving"
                );
                // Not tried again until they change again.
                self.current.store(Arc::new(Loaded {
                    config: current.config.clone(),
                    stamps,
                }));
            }
        }
    }
}

/// Every source of a spec with its field, certificates first, in a fixed order.
fn sources(spec: &DownstreamTls) -> impl Iterator<Item = (String, &DataSource)> {
    spec.certificates
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            [
                (
                    format!("certificates[{i}].certificate_chain"),
                    &c.certificate_chain,
                ),
                (format!("certificates[{i}].private_key"), &c.private_key),
            ]
        })
        .chain(
            spec.ca_certificates
                .iter()
                .map(|ca| ("ca_certificates".to_owned(), ca)),
        )
}

fn path_of(file: &str, base_dir: Option<&Path>) -> PathBuf {
    match base_dir {
        Some(dir) => dir.join(file),
        None => PathBuf::from(file),
    }
}

/// A file source's modification time and length (`None` inside: unreadable now); `None` for
/// an inline source.
fn stamp(source: &DataSource, base_dir: Option<&Path>) -> Option<Stamp> {
    let DataSource::Filename(file) = source else {
        return None;
    };
    let meta = std::fs::metadata(path_of(file, base_dir)).ok();
    Some(meta.and_then(|m| Some((m.modified().ok()?, m.len()))))
}

/// A source's bytes, and what to call it in errors.
fn read(source: &DataSource, base_dir: Option<&Path>) -> Result<(Vec<u8>, String), String> {
    match source {
        DataSource::InlineString(text) => Ok((text.as_bytes().to_vec(), "inline_string".into())),
        DataSource::Filename(file) => {
            let path = path_of(file, base_dir);
            let shown = path.display().to_string();
            std::fs::read(&path)
                .map(|bytes| (bytes, shown.clone()))
                .map_err(|e| format!("{shown}: cannot read: {e}"))
        }
    }
}

/// Reads every source (stamped first, so a change while reading is seen next time) and builds
/// the server config.
fn load(spec: &DownstreamTls, base_dir: Option<&Path>) -> Result<Loaded, GatewayTlsError> {
    let stamps = sources(spec)
        .filter_map(|(_, s)| stamp(s, base_dir))
        .collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut certs = Vec::with_capacity(spec.certificates.len());
    for (i, c) in spec.certificates.iter().enumerate() {
        let chain_field = format!("certificates[{i}].certificate_chain");
        let key_field = format!("certificates[{i}].private_key");
        let (pem, shown) =
            read(&c.certificate_chain, base_dir).map_err(|r| error(&chain_field, r))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| error(&chain_field, format!("{shown}: {e}")))?;
        if chain.is_empty() {
            return Err(error(&chain_field, format!("{shown}: no PEM certificate")));
        }
        let (pem, key_shown) = read(&c.private_key, base_dir).map_err(|r| error(&key_field, r))?;
        let key = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| error(&key_field, format!("{key_shown}: {e}")))?;
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| error(&key_field, format!("{key_shown}: {e}")))?;
        let certified = CertifiedKey::new(chain, signer);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(error(
                    &key_field,
                    format!("{key_shown}: not the key of the certificate in {shown}: {e}"),
                ));
            }
        }
        certs.push((lowercase(&c.server_names), Arc::new(certified)));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error("mode", e.to_string()))?;
    let builder = match (&spec.mode, &spec.ca_certificates) {
        (DownstreamTlsMode::Mutual, Some(ca)) => {
            let (pem, shown) = read(ca, base_dir).map_err(|r| error("ca_certificates", r))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| error("ca_certificates", format!("{shown}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| error("ca_certificates", format!("{shown}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(error(
                    "ca_certificates",
                    format!("{shown}: no PEM certificate"),
                ));
            }
            let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| error("ca_certificates", format!("{shown}: {e}")))?;
            let verifier: Arc<dyn ClientCertVerifier> = if spec.subject_alt_names.is_empty() {
                webpki
            } else {
                Arc::new(SanRestricted {
                    inner: webpki,
                    allowed: spec.subject_alt_names.clone(),
                })
            };
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni { certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        stamps,
    })
}

fn lowercase(names: &[String]) -> Vec<String> {
    names.iter().map(|n| n.to_ascii_lowercase()).collect()
}

/// An exact name or `*.suffix` (any labels before the suffix), case-insensitively; `pattern`
/// is lowercase.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            let (name, suffix) = (name.as_bytes(), suffix.as_bytes());
            name.len() > suffix.len()
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// The first certificate whose names match the SNI, else the default (no names).
#[derive(Debug)]
struct BySni {
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        let named = sni.and_then(|sni| {
            self.certs
                .iter()
                .find(|(names, _)| names.iter().any(|p| name_matches(p, sni)))
        });
        named
            .or_else(|| self.certs.iter().find(|(names, _)| names.is_empty()))
            .map(|(_, key)| key.clone())
    }
}

/// `mutual` with `subject_alt_names`: the CAs' verdict, then one of the client certificate's
/// DNS or URI SANs must be listed.
#[derive(Debug)]
struct SanRestricted {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

/// A client certificate that chains to the CAs but names none of the allowed SANs.
#[derive(Debug, thiserror::Error)]
#[error("the client certificate's SANs {got:?} are none of {allowed:?}")]
struct UnexpectedSan {
    got: Vec<String>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for SanRestricted {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let got = client_sans(end_entity);
        let listed = got.iter().any(|(dns, san)| {
            self.allowed.iter().any(|a| match dns {
                true => a.eq_ignore_ascii_case(san),
                false => a == san,
            })
        });
        if listed {
            return Ok(verified);
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(UnexpectedSan {
                got: got.into_iter().map(|(_, s)| s).collect(),
                allowed: self.allowed.clone(),
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A certificate's DNS (`true`) and URI (`false`) SANs.
fn client_sans(der: &CertificateDer<'_>) -> Vec<(bool, String)> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(sans)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    sans.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((true, d.to_string())),
            GeneralName::URI(u) => Some((false, u.to_string())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn names_match_exactly_or_by_suffix_ignoring_case() {
        assert!(name_matches("a.example.com", "A.Example.com"));
        assert!(name_matches("*.example.com", "x.EXAMPLE.com"));
        assert!(name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("a.example.com", "b.example.com"));
        assert!(!name_matches("*.example.com", "xexample.com"));
    }
}
