//! Workload certificates for the pods on this node, issued from the local CA and cached per
//! identity with their rustls configs. A certificate past half its life is re-issued on next use,
//! so new connections get the fresh one while open connections keep theirs. (The operator's CA
//! client of a later issue replaces the local CA behind this same interface.)

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use ambit_identity::{CertificateAuthority, SpiffeId, TrustBundle, WorkloadCertificate, tls};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot issue a certificate for {identity}: {reason}")]
    Issue { identity: SpiffeId, reason: String },
    #[error("cannot build the TLS config for {identity}: {reason}")]
    Tls { identity: SpiffeId, reason: String },
}

struct Issued {
    cert: WorkloadCertificate,
    /// Half-way between issuance and expiry (the certificate's own `not_before` is backdated for
    /// clock skew, so it cannot say when half its life has passed).
    renew_at: SystemTime,
    server: Arc<rustls::ServerConfig>,
    clients: Mutex<HashMap<Vec<SpiffeId>, Arc<rustls::ClientConfig>>>,
}

/// What `/config_dump` shows of a cached certificate.
#[derive(Debug, Serialize)]
pub struct CertSummary {
    pub identity: String,
    pub not_before: String,
    pub not_after: String,
}

pub struct CertManager {
    ca: CertificateAuthority,
    trust: TrustBundle,
    ttl: Duration,
    cache: Mutex<HashMap<SpiffeId, Arc<Issued>>>,
}

impl CertManager {
    pub fn new(ca: CertificateAuthority, trust: TrustBundle, ttl: Duration) -> Self {
        CertManager {
            ca,
            trust,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn issued(&self, id: &SpiffeId) -> Result<Arc<Issued>, CertError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = cache.get(id)
            && SystemTime::now() < entry.renew_at
        {
            return Ok(entry.clone());
        }
        let issued_at = SystemTime::now();
        let cert = self.ca.issue(id, self.ttl).map_err(|e| CertError::Issue {
            identity: id.clone(),
            reason: e.to_string(),
        })?;
        let server = tls::server_config(&cert, &self.trust).map_err(|e| CertError::Tls {
            identity: id.clone(),
            reason: e.to_string(),
        })?;
        tracing::info!(identity = %id, not_after = %humantime::format_rfc3339_seconds(cert.not_after()), "issued workload certificate");
        let entry = Arc::new(Issued {
            cert,
            renew_at: issued_at + self.ttl / 2,
            server,
            clients: Mutex::new(HashMap::new()),
        });
        cache.insert(id.clone(), entry.clone());
        Ok(entry)
    }

    /// The server config presenting `id`'s certificate (inbound HBONE).
    pub fn server_config(&self, id: &SpiffeId) -> Result<Arc<rustls::ServerConfig>, CertError> {
        Ok(self.issued(id)?.server.clone())
    }

    /// The client config presenting `id` and accepting only a server among `expected`.
    pub fn client_config(&self, id: &SpiffeId, expected: &[SpiffeId]) -> Result<Arc<rustls::ClientConfig>, CertError> {
        let issued = self.issued(id)?;
        let mut clients = issued.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(expected) {
            return Ok(c.clone());
        }
        let config = tls::client_config(&issued.cert, &self.trust, expected).map_err(|e| CertError::Tls {
            identity: id.clone(),
            reason: e.to_string(),
        })?;
        clients.insert(expected.to_vec(), config.clone());
        Ok(config)
    }

    pub fn summaries(&self) -> Vec<CertSummary> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<CertSummary> = cache
            .iter()
            .map(|(id, e)| CertSummary {
                identity: id.to_string(),
                not_before: humantime::format_rfc3339_seconds(e.cert.not_before()).to_string(),
                not_after: humantime::format_rfc3339_seconds(e.cert.not_after()).to_string(),
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}
