//! Workload certificates for the pods on this node, cached per identity with their rustls
//! configs. A certificate comes from an issuer — the local CA (dev mode and tests) or the
//! operator's CA over gRPC — on first use, and is renewed in the background at about half its
//! life, retrying with backoff while the old one is still valid. New handshakes take the newest
//! configs; open connections keep the certificate they were made with.

mod client;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use ambit_identity::{CertificateAuthority, SpiffeId, TrustBundle, WorkloadCertificate, tls};
use rand::Rng as _;
use serde::Serialize;
use tokio::task::AbortHandle;

pub use self::client::{CaClient, CaClientConfig};

/// First retry delay after a failed renewal; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Renewal starts up to this fraction of the time-to-half-life early, so the certificates of
/// many pods fetched together do not all hit the CA in the same instant later.
const JITTER: f64 = 0.1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("cannot issue a certificate for {identity}: {reason}")]
    Issue { identity: SpiffeId, reason: String },
    #[error("the CA at {address} refused the certificate for {identity}: {code:?}: {message}")]
    Refused {
        identity: SpiffeId,
        address: String,
        code: tonic::Code,
        message: String,
    },
    #[error("cannot build the TLS config for {identity}: {reason}")]
    Tls { identity: SpiffeId, reason: String },
    #[error("CA address {address:?}: {reason}")]
    CaAddress { address: String, reason: String },
    #[error("trust bundle {path}: {reason}")]
    Trust { path: String, reason: String },
}

/// Where certificates come from.
enum Issuer {
    /// Signs locally; each certificate lives for the given TTL. (Both variants are boxed, being
    /// large and held once.)
    Local {
        ca: Box<CertificateAuthority>,
        ttl: Duration,
    },
    /// Asks the operator's CA.
    Remote(Box<CaClient>),
}

impl Issuer {
    async fn issue(&self, id: &SpiffeId) -> Result<WorkloadCertificate, CertError> {
        match self {
            Issuer::Local { ca, ttl } => ca.issue(id, *ttl).map_err(|e| CertError::Issue {
                identity: id.clone(),
                reason: e.to_string(),
            }),
            Issuer::Remote(client) => client.fetch(id).await,
        }
    }
}

/// One certificate with the configs built from it.
struct Issued {
    cert: WorkloadCertificate,
    /// Half-way between the request and expiry (the certificate's own `not_before` is backdated
    /// for clock skew, so it cannot say when half its life has passed).
    renew_at: SystemTime,
    server: Arc<rustls::ServerConfig>,
    clients: Mutex<HashMap<Vec<SpiffeId>, Arc<rustls::ClientConfig>>>,
}

impl Issued {
    fn build(cert: WorkloadCertificate, renew_at: SystemTime, trust: &TrustBundle) -> Result<Self, CertError> {
        let server = tls::server_config(&cert, trust).map_err(|e| CertError::Tls {
            identity: cert.identity().clone(),
            reason: e.to_string(),
        })?;
        Ok(Issued {
            cert,
            renew_at,
            server,
            clients: Mutex::new(HashMap::new()),
        })
    }
}

/// The cache entry of one identity.
#[derive(Default)]
struct Slot {
    current: Mutex<Option<Arc<Issued>>>,
    /// Held while fetching, so concurrent first uses make one request.
    fetching: tokio::sync::Mutex<()>,
    renewal: Mutex<Option<AbortHandle>>,
}

impl Slot {
    /// The current certificate while it is still valid.
    fn valid(&self) -> Option<Arc<Issued>> {
        let current = lock(&self.current).clone()?;
        (SystemTime::now() < current.cert.not_after()).then_some(current)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(renewal) = lock(&self.renewal).take() {
            renewal.abort();
        }
    }
}

/// What `/config_dump` shows of a cached certificate.
#[derive(Debug, Serialize)]
pub struct CertSummary {
    pub identity: String,
    pub not_before: String,
    pub not_after: String,
}

struct Inner {
    issuer: Issuer,
    trust: Mutex<TrustBundle>,
    cache: Mutex<HashMap<SpiffeId, Arc<Slot>>>,
}

/// The certificates of this node's pods.
pub struct CertManager {
    inner: Arc<Inner>,
}

impl CertManager {
    /// Certificates from a local CA, each valid for `ttl`.
    pub fn new(ca: CertificateAuthority, trust: TrustBundle, ttl: Duration) -> Self {
        Self::with_issuer(Issuer::Local { ca: Box::new(ca), ttl }, trust)
    }

    /// Certificates from the operator's CA; peers are verified against `trust`.
    pub fn remote(client: CaClient, trust: TrustBundle) -> Self {
        Self::with_issuer(Issuer::Remote(Box::new(client)), trust)
    }

    fn with_issuer(issuer: Issuer, trust: TrustBundle) -> Self {
        CertManager {
            inner: Arc::new(Inner {
                issuer,
                trust: Mutex::new(trust),
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The server config presenting `id`'s certificate (inbound HBONE).
    pub async fn server_config(&self, id: &SpiffeId) -> Result<Arc<rustls::ServerConfig>, CertError> {
        Ok(self.issued(id).await?.server.clone())
    }

    /// The client config presenting `id` and accepting only a server among `expected`.
    pub async fn client_config(
        &self,
        id: &SpiffeId,
        expected: &[SpiffeId],
    ) -> Result<Arc<rustls::ClientConfig>, CertError> {
        let issued = self.issued(id).await?;
        let mut clients = lock(&issued.clients);
        if let Some(c) = clients.get(expected) {
            return Ok(c.clone());
        }
        let trust = lock(&self.inner.trust).clone();
        let config = tls::client_config(&issued.cert, &trust, expected).map_err(|e| CertError::Tls {
            identity: id.clone(),
            reason: e.to_string(),
        })?;
        clients.insert(expected.to_vec(), config.clone());
        Ok(config)
    }

    /// Fetches `id`'s certificate in the background unless it is cached, so a pod's first
    /// connection does not wait for the CA.
    pub fn prefetch(&self, id: &SpiffeId) {
        if self.slot(id).valid().is_some() {
            return;
        }
        let inner = self.inner.clone();
        let id = id.clone();
        tokio::spawn(async move {
            if let Err(e) = (CertManager { inner }).issued(&id).await {
                tracing::warn!(identity = %id, error = %e, "cannot prefetch the workload certificate; will fetch on use");
            }
        });
    }

    /// Forgets the identities `keep` rejects (their pods left the node) and stops renewing them.
    pub fn retain(&self, keep: impl Fn(&SpiffeId) -> bool) {
        lock(&self.inner.cache).retain(|id, _| keep(id));
    }

    /// Replaces the roots peers are verified against. Cached certificates stay; their configs
    /// are rebuilt, so new handshakes use the new roots and open connections are untouched.
    pub fn set_trust_bundle(&self, trust: TrustBundle) -> Result<(), CertError> {
        let slots: Vec<Arc<Slot>> = lock(&self.inner.cache).values().cloned().collect();
        *lock(&self.inner.trust) = trust.clone();
        for slot in slots {
            let mut current = lock(&slot.current);
            if let Some(issued) = current.as_ref() {
                let rebuilt = Issued::build(issued.cert.clone(), issued.renew_at, &trust)?;
                *current = Some(Arc::new(rebuilt));
            }
        }
        Ok(())
    }

    /// Re-reads the trust bundle from `path` (PEM roots) and applies it when it changed;
    /// returns whether it did.
    pub fn reload_trust_bundle(&self, path: &Path) -> Result<bool, CertError> {
        let trust_error = |reason: String| CertError::Trust {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| trust_error(e.to_string()))?;
        let trust = TrustBundle::from_pem(&pem).map_err(|e| trust_error(e.to_string()))?;
        if trust.roots() == lock(&self.inner.trust).roots() {
            return Ok(false);
        }
        self.set_trust_bundle(trust)?;
        tracing::info!(path = %path.display(), "trust bundle reloaded");
        Ok(true)
    }

    /// The roots peers are verified against now.
    pub fn trust_bundle(&self) -> TrustBundle {
        lock(&self.inner.trust).clone()
    }

    pub fn summaries(&self) -> Vec<CertSummary> {
        let slots: Vec<(SpiffeId, Arc<Slot>)> = lock(&self.inner.cache)
            .iter()
            .map(|(id, slot)| (id.clone(), slot.clone()))
            .collect();
        let mut out: Vec<CertSummary> = slots
            .into_iter()
            .filter_map(|(id, slot)| {
                let current = lock(&slot.current).clone()?;
                Some(CertSummary {
                    identity: id.to_string(),
                    not_before: humantime::format_rfc3339_seconds(current.cert.not_before()).to_string(),
                    not_after: humantime::format_rfc3339_seconds(current.cert.not_after()).to_string(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    fn slot(&self, id: &SpiffeId) -> Arc<Slot> {
        lock(&self.inner.cache).entry(id.clone()).or_default().clone()
    }

    /// The valid certificate of `id`, fetched now if there is none.
    async fn issued(&self, id: &SpiffeId) -> Result<Arc<Issued>, CertError> {
        let slot = self.slot(id);
        if let Some(current) = slot.valid() {
            return Ok(current);
        }
        let _fetching = slot.fetching.lock().await;
        if let Some(current) = slot.valid() {
            return Ok(current);
        }
        let issued = self.inner.fetch(id).await?;
        *lock(&slot.current) = Some(issued.clone());
        let mut renewal = lock(&slot.renewal);
        if renewal.as_ref().is_none_or(AbortHandle::is_finished) {
            let task = renew_loop(Arc::downgrade(&self.inner), id.clone(), Arc::downgrade(&slot));
            *renewal = Some(tokio::spawn(task).abort_handle());
        }
        Ok(issued)
    }
}

impl Inner {
    async fn fetch(&self, id: &SpiffeId) -> Result<Arc<Issued>, CertError> {
        let requested_at = SystemTime::now();
        let cert = self.issuer.issue(id).await?;
        let lifetime = cert.not_after().duration_since(requested_at).unwrap_or(Duration::ZERO);
        let trust = lock(&self.trust).clone();
        let issued = Issued::build(cert, requested_at + lifetime / 2, &trust)?;
        tracing::info!(identity = %id, not_after = %humantime::format_rfc3339_seconds(issued.cert.not_after()), "workload certificate issued");
        Ok(Arc::new(issued))
    }
}

/// Renews `id` at about half-life, forever, until its slot or the manager is dropped. A failed
/// renewal is retried with backoff; the old certificate keeps serving while it is valid.
async fn renew_loop(inner: Weak<Inner>, id: SpiffeId, slot: Weak<Slot>) {
    loop {
        let Some(renew_at) = slot
            .upgrade()
            .and_then(|s| lock(&s.current).as_ref().map(|c| c.renew_at))
        else {
            return;
        };
        let wait = renew_at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        let early = wait.mul_f64(rand::rng().random_range(0.0..JITTER));
        tokio::time::sleep(wait.saturating_sub(early)).await;
        let mut retry = FIRST_RETRY;
        loop {
            let (Some(inner), Some(slot)) = (inner.upgrade(), slot.upgrade()) else {
                return;
            };
            let result = {
                let _fetching = slot.fetching.lock().await;
                inner.fetch(&id).await.map(|issued| *lock(&slot.current) = Some(issued))
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    let valid = slot.valid().is_some();
                    tracing::warn!(identity = %id, error = %e, retry_in = ?retry, still_valid = valid, "certificate renewal failed");
                }
            }
            drop((inner, slot));
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(MAX_RETRY);
        }
    }
}

/// Locks a std mutex, taking it over from a panicked holder: the data are replaced whole, never
/// left half-written.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
