//! The webhook's serving certificate: issued by the mesh's CA for the injector Service's DNS
//! names, and renewed at half its lifetime, or at once when the CA changes, under a listener
//! that keeps running (each handshake takes the current one).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio::time::Instant;
use wasmesh_controlplane::ca::{Authority, CaError};

/// A lifetime for the serving certificate: renewed every 12 hours.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why the serving certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("the CA cannot issue the webhook's certificate: {0}")]
    Ca(#[from] CaError),
    #[error("the webhook's certificate does not load: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("the webhook's certificate does not load: {0}")]
    Tls(#[from] rustls::Error),
}

/// The DNS names the API server may call the webhook by, for `service` in `namespace`:
/// `<service>`, `<service>.<namespace>`, `<service>.<namespace>.svc` and
/// `<service>.<namespace>.<domain_suffix>` (`svc.cluster.local` by default).
pub fn service_dns_names(service: &str, namespace: &str, domain_suffix: &str) -> Vec<String> {
    let mut names = vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.{domain_suffix}"),
    ];
    names.dedup();
    names
}

/// The webhook's certificate, kept current by [`serve`](super::serve).
pub struct ServingCertificate {
    authority: watch::Receiver<Arc<Authority>>,
    dns_names: Vec<String>,
    lifetime: Duration,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
}

impl ServingCertificate {
    /// Issues the first certificate, by the authority in effect.
    pub fn issue(
        authority: watch::Receiver<Arc<Authority>>,
        dns_names: Vec<String>,
        lifetime: Duration,
    ) -> Result<ServingCertificate, CertificateError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = issue(&authority.borrow(), &dns_names, lifetime, &provider)?;
        Ok(ServingCertificate {
            authority,
            dns_names,
            lifetime,
            provider,
            resolver: Arc::new(Resolver(RwLock::new(Arc::new(key)))),
        })
    }

    pub(super) fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    pub(super) fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        self.resolver.clone()
    }

    /// Renews the certificate at half its lifetime and whenever the CA changes, forever. A
    /// failure is retried sooner, while the current certificate is still good.
    pub(super) async fn keep_renewed(mut self) {
        let retry = (self.lifetime / 10).min(Duration::from_secs(30));
        let mut renew_at = Instant::now() + self.lifetime / 2;
        let mut watching = true;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(renew_at) => {}
                changed = self.authority.changed(), if watching => {
                    // With the CA's watcher gone, the last authority goes on issuing.
                    watching = changed.is_ok();
                    if !watching {
                        continue;
                    }
                }
            }
            let authority = self.authority.borrow_and_update().clone();
            renew_at = match issue(&authority, &self.dns_names, self.lifetime, &self.provider) {
                Ok(key) => {
                    *self
                        .resolver
                        .0
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                    tracing::info!(names = ?self.dns_names, "renewed the webhook's certificate");
                    Instant::now() + self.lifetime / 2
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?retry, "cannot renew the webhook's certificate");
                    Instant::now() + retry
                }
            };
        }
    }
}

fn issue(
    authority: &Authority,
    dns_names: &[String],
    lifetime: Duration,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertificateError> {
    let (chain, key) = authority.ca.issue_server_certificate(dns_names, lifetime)?;
    let chain = CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}
