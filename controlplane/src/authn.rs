//! Who a sidecar is. On one machine the operator starts the sidecars, and a Hello's namespace
//! and service account are taken as they are. On Kubernetes any pod can reach the control
//! plane and claim any identity, so its Hello carries a credential proving it (Istio's: the
//! pod's projected service-account token, reviewed by the API server). This library knows no
//! API server: [`Authenticate`] is the hook (`wasmesh-kube`'s `token_review` implements it),
//! and [`Authenticator`] keeps its recent answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::sidecar::Node;

/// A workload's identity, as a credential proves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

/// Why a credential proves nothing.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Refused: expired, forged, for another audience, not a service account's.
    #[error("{0}")]
    Invalid(String),
    /// Not checked (the API server did not answer): the sidecar tries again later.
    #[error("the token could not be reviewed: {0}")]
    Unavailable(String),
}

/// Checks a sidecar's credential: the workload it proves.
pub trait Authenticate: Send + Sync {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Workload, AuthError>>;

    /// Corrects what an authenticated node says of its workload from the workload's own
    /// record (on Kubernetes, its Pod: labels and IP), so that a sidecar cannot register under
    /// labels or an address of its choosing. `Err` when there is no such record for the proven
    /// identity. By default the node is taken as it is.
    fn attest(&self, _node: &mut Node) -> Result<(), AuthError> {
        Ok(())
    }
}

/// How long a credential's review is trusted: a reconnect storm (a control-plane restart,
/// hundreds of sidecars at once) costs one review per sidecar, not one per attempt.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// The most reviews kept: bounded, whatever tokens callers make up (only successful ones are
/// kept, and they each need a real token).
const CACHE_MAX: usize = 10_000;

/// An [`Authenticate`] with its successful answers kept for a minute, by the token's sha256
/// (the tokens themselves are not kept).
pub struct Authenticator {
    inner: Arc<dyn Authenticate>,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Workload, Instant)>>,
}

impl Authenticator {
    pub fn new(inner: Arc<dyn Authenticate>) -> Authenticator {
        Authenticator {
            inner,
            ttl: CACHE_TTL,
            cache: Mutex::default(),
        }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Workload, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((workload, at)) = self.lock().get(&key)
            && now.duration_since(*at) < self.ttl
        {
            return Ok(workload.clone());
        }
        let workload = self.inner.authenticate(token).await?;
        let mut cache = self.lock();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (workload.clone(), now));
        Ok(workload)
    }

    /// See [`Authenticate::attest`]; never cached, the record may have changed.
    pub fn attest(&self, node: &mut Node) -> Result<(), AuthError> {
        self.inner.attest(node)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Workload, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Proves `default/<token>` for tokens starting `good-`; counts its calls.
    struct Counting(AtomicUsize);

    impl Authenticate for Counting {
        fn authenticate<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Workload, AuthError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match token.strip_prefix("good-") {
                    Some(sa) => Ok(Workload {
                        namespace: "default".into(),
                        service_account: sa.into(),
                    }),
                    None => Err(AuthError::Invalid("unknown token".into())),
                }
            })
        }
    }

    #[tokio::test]
    async fn successful_reviews_are_kept_for_a_while_failures_are_not() {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let mut authenticator = Authenticator::new(inner.clone());
        let calls = || inner.0.load(Ordering::SeqCst);

        for _ in 0..3 {
            let workload = authenticator.authenticate("good-reviews").await.unwrap();
            assert_eq!(workload.to_string(), "default/reviews");
        }
        assert_eq!(calls(), 1);
        for _ in 0..2 {
            let err = authenticator.authenticate("bad").await.unwrap_err();
            assert_eq!(err.to_string(), "unknown token");
        }
        assert_eq!(calls(), 3);

        // Expired: reviewed again.
        authenticator.ttl = Duration::ZERO;
        authenticator.authenticate("good-reviews").await.unwrap();
        assert_eq!(calls(), 4);
    }
}
