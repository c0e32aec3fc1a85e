//! The certificate and key a workload presents in HBONE mTLS, with its identity and validity
//! read back from the leaf so they always agree with what peers will see.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{CaError, certificates_pem, der_to_pem, key, parse_certificates};
use crate::spiffe::SpiffeId;
use crate::tls::{self, TlsError};

/// A leaf certificate for one SPIFFE ID, its chain up to (not including) the root, and its key.
#[derive(Clone)]
pub struct WorkloadCertificate {
    identity: SpiffeId,
    /// Leaf first, then intermediates; never empty.
    chain: Vec<CertificateDer<'static>>,
    /// Shared because `PrivateKeyDer` is deliberately not `Clone`; clones of a certificate
    /// refer to the same key bytes.
    key: Arc<PrivateKeyDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for WorkloadCertificate {
    // Hand-written so the private key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCertificate {
    /// Loads a certificate issued elsewhere: `chain_pem` holds the leaf then its intermediates
    /// (a trailing self-signed root is tolerated by peers but wastes bytes), `key_pem` the
    /// leaf's private key (PKCS#8, SEC1 or PKCS#1). The identity is the leaf's first URI SAN that
    /// is a workload SPIFFE ID (see [`tls::identity_of`]).
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let chain = parse_certificates("workload certificate", chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| CaError::Pem {
            what: "workload private key",
            source,
        })?;
        let certificate = Self::from_parts(chain, key)?;
        certificate.check_key_matches()?;
        Ok(certificate)
    }

    pub(super) fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CaError> {
        let leaf = chain.first().ok_or(CaError::NoCertificate {
            what: "workload certificate",
        })?;
        let identity = tls::identity_of(leaf).map_err(CaError::Leaf)?;
        let (not_before, not_after) = validity(leaf).map_err(CaError::Leaf)?;
        Ok(Self {
            identity,
            chain,
            key: Arc::new(key),
            not_before,
            not_after,
        })
    }

    /// A key that does not match the leaf would only show up as a failed handshake on the
    /// peer's side; say so at load time instead.
    pub(super) fn check_key_matches(&self) -> Result<(), CaError> {
        let provider = tls::provider();
        let signing_key = provider
            .key_provider
            .load_private_key(self.key())
            .map_err(CaError::BadWorkloadKey)?;
        let certified = rustls::sign::CertifiedKey::new(self.chain.clone(), signing_key);
        certified.keys_match().map_err(|_| CaError::KeyMismatch {
            subject: self.identity.to_string(),
        })
    }

    /// The leaf's SPIFFE ID: its first URI SAN that is one (see [`tls::identity_of`]).
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The leaf's notBefore, at the one-second precision certificates carry.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The leaf's notAfter, at the one-second precision certificates carry.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Leaf first, then intermediates, without the root: what TLS sends to peers.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A copy of the private key, in the form rustls configs take.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// When to replace this certificate: half-way through its validity, as Istio does, so a
    /// failed renewal has the second half to be retried in.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or(Duration::ZERO);
        self.not_before + lifetime / 2
    }

    /// The leaf certificate alone as PEM.
    pub fn leaf_pem(&self) -> String {
        certificates_pem(&self.chain[..1])
    }

    /// Leaf and intermediates as PEM, in the order [`WorkloadCertificate::from_pem`] takes.
    pub fn chain_pem(&self) -> String {
        certificates_pem(&self.chain)
    }

    /// The private key as PEM. Secret: store it like one.
    pub fn key_pem(&self) -> String {
        der_to_pem(key::pem_label(&self.key), self.key.secret_der())
    }
}

fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|err| TlsError::BadCertificate {
        reason: err.to_string(),
    })?;
    let validity = cert.validity();
    Ok((
        from_unix(validity.not_before.timestamp()),
        from_unix(validity.not_after.timestamp()),
    ))
}

fn from_unix(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}
