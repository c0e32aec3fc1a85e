//! A small certificate authority that signs workload certificates for SPIFFE IDs.
//!
//! Owns key generation, the leaf and CA certificate profiles, and PEM import/export of the CA.
//! It does not authenticate who asks for a certificate (that is the caller's job) and does not
//! rotate anything: callers re-issue at [`WorkloadCertificate::renew_at`].

mod csr;
mod key;
mod serving;
mod workload;

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::prelude::X509Certificate;

pub use self::csr::{CertificateRequest, CsrError};
pub use self::serving::ServingCertificate;
pub use self::workload::WorkloadCertificate;
use crate::spiffe::{SpiffeId, SpiffeIdError, validate_trust_domain};
use crate::tls::TlsError;
use crate::trust::TrustBundle;

/// How long a generated root is valid: long enough that it is replaced by a deliberate rotation,
/// never by surprise.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Issued certificates start this far in the past so a peer whose clock runs slightly behind
/// ours does not see a certificate that is "not yet valid".
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Why the CA could not be created, loaded, or could not issue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("cannot create a CA for trust domain {trust_domain:?}")]
    TrustDomain {
        trust_domain: String,
        #[source]
        source: SpiffeIdError,
    },
    #[error("could not generate the key or certificate for {what}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("could not read the {what} PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the {what} PEM holds no CERTIFICATE block")]
    NoCertificate { what: &'static str },
    #[error("certificate {index} of the {what} PEM is not valid X.509: {reason}")]
    BadCertificate {
        what: &'static str,
        index: usize,
        reason: String,
    },
    #[error(
        "the CA private key PEM holds no unencrypted PRIVATE KEY (PKCS#8), RSA PRIVATE KEY \
         (PKCS#1) or EC PRIVATE KEY (SEC1) block"
    )]
    NoCaKey,
    #[error(
        "the {label} block of the CA private key PEM is not a usable key ({reason}); \
         RSA (2048 to 4096 bits), ECDSA P-256 or P-384, and Ed25519 keys are supported"
    )]
    BadCaKey { label: &'static str, reason: String },
    #[error("the CA private key is on curve {curve}, which cannot sign here; use P-256, P-384 or RSA")]
    UnsupportedCurve { curve: String },
    #[error("CA certificate {subject:?} is not a CA certificate (basicConstraints cA is not set)")]
    NotCa { subject: String },
    #[error("the private key does not match the public key of certificate {subject:?}")]
    KeyMismatch { subject: String },
    #[error("cannot issue a certificate for {id}: not_after is not later than not_before")]
    EmptyValidity { id: SpiffeId },
    #[error("the workload certificate PEM does not carry a usable identity")]
    Leaf(#[source] TlsError),
    #[error("the workload private key PEM is not a usable key")]
    BadWorkloadKey(#[source] rustls::Error),
}

/// A CA key pair and its certificate, able to sign workload and intermediate certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// This CA's certificate first, then the certificates above it as they were loaded. The last
    /// one is the trust anchor handed out by [`CertificateAuthority::root_der`].
    chain: Vec<CertificateDer<'static>>,
    /// The last certificate of `chain`, kept apart so handing it out cannot fail.
    root: CertificateDer<'static>,
    /// The part of `chain` that issued leaves carry: everything but self-signed roots, which
    /// peers already hold and which TLS would send for nothing.
    intermediates: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for CertificateAuthority {
    // Hand-written so the signing key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a self-signed ECDSA P-256 root for `trust_domain`, valid for ten years.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        validate_trust_domain(trust_domain).map_err(|source| CaError::TrustDomain {
            trust_domain: trust_domain.to_owned(),
            source,
        })?;
        let what = || format!("the root CA of trust domain {trust_domain:?}");
        let key = generate_key().map_err(|source| CaError::Generate { what: what(), source })?;
        let now = SystemTime::now();
        let mut params = ca_params(trust_domain, "ambit root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = OffsetDateTime::from(now + ROOT_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate { what: what(), source })?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            chain: vec![cert.der().clone()],
            root: cert.der().clone(),
            intermediates: Vec::new(),
        })
    }

    /// Loads an existing CA: `cert_pem` holds its certificate first, optionally followed by the
    /// certificates above it (ending at the root); `key_pem` its private key as PKCS#8
    /// ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY", as Istio's self-signed CA writes it) or SEC1
    /// ("EC PRIVATE KEY"). RSA keys of 2048 to 4096 bits, ECDSA P-256 / P-384 and Ed25519 keys
    /// work; an RSA CA signs with RSA PKCS#1 v1.5 SHA-256, while issued leaves stay P-256.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        const WHAT: &str = "CA certificate";
        let chain = parse_certificates(WHAT, cert_pem)?;
        let (Some(own), Some(root)) = (chain.first(), chain.last()) else {
            return Err(CaError::NoCertificate { what: WHAT });
        };
        let own_cert = parse_x509(WHAT, 0, own)?;
        check_is_ca(&own_cert)?;
        let key = key::load(key_pem, &own_cert)?;
        let mut intermediates = Vec::new();
        for (index, der) in chain.iter().enumerate() {
            let cert = parse_x509(WHAT, index, der)?;
            if cert.subject().as_raw() != cert.issuer().as_raw() {
                intermediates.push(der.clone());
            }
        }
        let issuer = Issuer::from_ca_cert_der(own, key).map_err(|source| CaError::BadCertificate {
            what: WHAT,
            index: 0,
            reason: source.to_string(),
        })?;
        let root = root.clone();
        Ok(Self {
            issuer,
            chain,
            root,
            intermediates,
        })
    }

    /// This CA's certificate and the ones above it, as PEM, in the order `from_pem` takes.
    pub fn cert_pem(&self) -> String {
        certificates_pem(&self.chain)
    }

    /// The CA private key as PKCS#8 PEM, whatever form it was loaded from. Secret: store it
    /// like one.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The trust anchor peers must hold: the last certificate of the loaded chain (the root,
    /// or this CA's own certificate when it was loaded alone).
    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    /// [`CertificateAuthority::root_der`] as PEM: what is published for workloads to trust.
    pub fn root_pem(&self) -> String {
        certificates_pem(std::slice::from_ref(&self.root))
    }

    /// A trust bundle holding just [`CertificateAuthority::root_der`].
    pub fn trust_bundle(&self) -> Result<TrustBundle, TlsError> {
        TrustBundle::new(vec![self.root_der()])
    }

    /// Issues a workload certificate valid from a minute ago (clock skew) for `ttl` from now.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<WorkloadCertificate, CaError> {
        let now = SystemTime::now();
        self.issue_with_validity(id, now - CLOCK_SKEW_ALLOWANCE, now + ttl)
    }

    /// Issues a workload certificate with an explicit validity window; tests use it to make
    /// certificates that are expired or not yet valid.
    pub fn issue_with_validity(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCertificate, CaError> {
        if not_after <= not_before {
            return Err(CaError::EmptyValidity { id: id.clone() });
        }
        let generate_error = |source| CaError::Generate {
            what: format!("workload {id}"),
            source,
        };
        let params = leaf_params(id, not_before, not_after).map_err(generate_error)?;
        let key = generate_key().map_err(generate_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_error)?;

        let mut chain = Vec::with_capacity(1 + self.intermediates.len());
        chain.push(cert.der().clone());
        chain.extend(self.intermediates.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        WorkloadCertificate::from_parts(chain, key)
    }

    /// Issues an intermediate CA below this one, valid for `ttl`. It may sign only leaves
    /// (path length 0), and leaves it issues carry it and this CA's intermediates.
    pub fn issue_intermediate(&self, common_name: &str, ttl: Duration) -> Result<CertificateAuthority, CaError> {
        let generate_error = |source| CaError::Generate {
            what: format!("intermediate CA {common_name:?}"),
            source,
        };
        let key = generate_key().map_err(generate_error)?;
        let now = SystemTime::now();
        let organization = self.organization();
        let mut params = ca_params(&organization, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.use_authority_key_identifier_extension = true;
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = OffsetDateTime::from(now + ttl);
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_error)?;
        let der = cert.der().clone();
        let mut chain = vec![der.clone()];
        chain.extend(self.chain.iter().cloned());
        let mut intermediates = vec![der];
        intermediates.extend(self.intermediates.iter().cloned());
        Ok(Self {
            issuer: Issuer::new(params, key),
            chain,
            root: self.root.clone(),
            intermediates,
        })
    }

    /// The organization of this CA's subject, reused for intermediates so the hierarchy reads
    /// as one trust domain.
    fn organization(&self) -> String {
        self.chain
            .first()
            .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
            .and_then(|(_, cert)| {
                cert.subject()
                    .iter_organization()
                    .next()
                    .and_then(|o| o.as_str().ok().map(str::to_owned))
            })
            .unwrap_or_else(|| "ambit".to_owned())
    }
}

/// The workload leaf profile, shared by [`CertificateAuthority::issue`] and CSR signing so both
/// paths hand out the same shape of certificate.
pub(crate) fn leaf_params(
    id: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, rcgen::Error> {
    let uri = id.to_string().try_into()?;
    let mut params = CertificateParams::default();
    // An empty subject, as Istio issues: the identity lives only in the URI SAN, which
    // rcgen then marks critical as RFC 5280 §4.2.1.6 requires.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = OffsetDateTime::from(not_before);
    params.not_after = OffsetDateTime::from(not_after);
    Ok(params)
}

fn generate_key() -> Result<KeyPair, rcgen::Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
}

fn ca_params(organization: &str, common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, organization);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn check_is_ca(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
    if is_ca {
        Ok(())
    } else {
        Err(CaError::NotCa {
            subject: cert.subject().to_string(),
        })
    }
}

pub(crate) fn parse_certificates(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CaError::Pem { what, source })?;
    if chain.is_empty() {
        return Err(CaError::NoCertificate { what });
    }
    Ok(chain)
}

fn parse_x509<'a>(
    what: &'static str,
    index: usize,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, CaError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|err| CaError::BadCertificate {
            what,
            index,
            reason: err.to_string(),
        })
}

/// PEM text of `certs`, one CERTIFICATE block each, LF line endings.
pub(crate) fn certificates_pem(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|der| der_to_pem("CERTIFICATE", der)).collect()
}

pub(crate) fn der_to_pem(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der), config)
}

#[cfg(test)]
mod tests;
