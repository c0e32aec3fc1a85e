//! Certificate signing requests for workload identities: the workload side makes a key pair and
//! a PKCS#10 CSR naming one SPIFFE ID and turns the CA's answer into a [`WorkloadCertificate`];
//! the CA side verifies a CSR's self-signature and SANs and signs it with the leaf profile of
//! [`CertificateAuthority::issue`]. Who may ask for which identity is decided by the caller.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, SubjectPublicKeyInfo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::{CLOCK_SKEW_ALLOWANCE, CaError, CertificateAuthority, WorkloadCertificate, der_to_pem, generate_key};
use crate::spiffe::SpiffeId;
use crate::tls;

/// Why a CSR could not be made or signed, or a CA's answer could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("could not create the key or CSR for {id}")]
    Create {
        id: SpiffeId,
        #[source]
        source: rcgen::Error,
    },
    #[error("the CSR is not PEM with a CERTIFICATE REQUEST block: {reason}")]
    Pem { reason: String },
    #[error("the CSR is not a valid PKCS#10 request: {reason}")]
    Parse { reason: String },
    #[error("the CSR's self-signature does not verify ({reason}): it was not made with the key it carries")]
    Signature { reason: String },
    #[error(
        "the CSR names SANs [{}] but the request is for {requested}; a CSR must carry exactly that one URI SAN",
        .found.join(", ")
    )]
    SanMismatch { requested: SpiffeId, found: Vec<String> },
    #[error("the CSR's public key is not one this CA signs for ({reason}); use ECDSA P-256/P-384, RSA or Ed25519")]
    UnsupportedKey { reason: String },
    #[error("could not sign the certificate for {id}")]
    Sign {
        id: SpiffeId,
        #[source]
        source: rcgen::Error,
    },
    #[error("the CA answered the request for {id} with an empty certificate chain")]
    EmptyChain { id: SpiffeId },
    #[error("the CA's answer for {id} is not a PEM certificate chain: {reason}")]
    BadChain { id: SpiffeId, reason: String },
    #[error("the CA issued a certificate for {found} but {requested} was requested")]
    WrongIdentity { requested: SpiffeId, found: String },
    #[error("the certificate the CA issued for {id} is not usable")]
    Certificate {
        id: SpiffeId,
        // Boxed to keep `CsrError` small on the success path.
        #[source]
        source: Box<CaError>,
    },
}

/// A fresh key pair and the PEM CSR for one identity, waiting for the CA's signature.
pub struct CertificateRequest {
    identity: SpiffeId,
    key: KeyPair,
    csr_pem: String,
}

impl fmt::Debug for CertificateRequest {
    // Hand-written so the private key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRequest")
            .field("identity", &self.identity.to_string())
            .finish_non_exhaustive()
    }
}

impl CertificateRequest {
    /// A new ECDSA P-256 key and a CSR whose only SAN is the URI of `id` (empty subject, as
    /// Istio's ztunnel sends).
    pub fn generate(id: &SpiffeId) -> Result<Self, CsrError> {
        let create_error = |source| CsrError::Create { id: id.clone(), source };
        let key = generate_key().map_err(create_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(create_error)?)];
        let csr = params.serialize_request(&key).map_err(create_error)?;
        let csr_pem = csr.pem().map_err(create_error)?;
        Ok(Self {
            identity: id.clone(),
            key,
            csr_pem,
        })
    }

    /// The identity this request is for.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The CSR as PEM, what `IstioCertificateRequest.csr` carries.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The workload certificate from the CA's answer: PEM certificates, leaf first (one or more
    /// per string, as Istio's `cert_chain`). Trailing self-signed roots are dropped, since peers
    /// hold them already; the leaf must name this request's identity and match its key.
    pub fn into_certificate(self, chain_pem: &[String]) -> Result<WorkloadCertificate, CsrError> {
        let id = &self.identity;
        let mut chain = Vec::new();
        for pem in chain_pem {
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(der.map_err(|err| CsrError::BadChain {
                    id: id.clone(),
                    reason: err.to_string(),
                })?);
            }
        }
        let Some(leaf) = chain.first() else {
            return Err(CsrError::EmptyChain { id: id.clone() });
        };
        let found = tls::identity_of(leaf).map_err(|err| CsrError::WrongIdentity {
            requested: id.clone(),
            found: err.to_string(),
        })?;
        if &found != id {
            return Err(CsrError::WrongIdentity {
                requested: id.clone(),
                found: found.to_string(),
            });
        }
        while chain.len() > 1 && chain.last().is_some_and(is_self_signed) {
            chain.pop();
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let certificate_error = |source| CsrError::Certificate {
            id: id.clone(),
            source: Box::new(source),
        };
        let certificate = WorkloadCertificate::from_parts(chain, key).map_err(certificate_error)?;
        certificate.check_key_matches().map_err(certificate_error)?;
        Ok(certificate)
    }
}

fn is_self_signed(der: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, cert)| cert.subject().as_raw() == cert.issuer().as_raw())
}

impl CertificateAuthority {
    /// Signs `csr_pem` for `requested`, valid from a minute ago (clock skew) for `ttl`.
    ///
    /// The CSR's self-signature must verify and its SANs must be exactly the URI of
    /// `requested`; its subject and requested extensions are ignored, the leaf gets the profile
    /// of [`CertificateAuthority::issue`]. Returns PEM certificates leaf first, then this CA's
    /// intermediates, then the root last: the shape of Istio's `cert_chain`.
    pub fn sign_request(&self, csr_pem: &str, requested: &SpiffeId, ttl: Duration) -> Result<Vec<String>, CsrError> {
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|err| CsrError::Pem {
            reason: err.to_string(),
        })?;
        let (_, csr) = X509CertificationRequest::from_der(&der).map_err(|err| CsrError::Parse {
            reason: err.to_string(),
        })?;
        csr.verify_signature().map_err(|err| CsrError::Signature {
            reason: err.to_string(),
        })?;
        let found = requested_sans(&csr)?;
        if found != [requested.to_string()] {
            return Err(CsrError::SanMismatch {
                requested: requested.clone(),
                found,
            });
        }
        let public_key =
            SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw).map_err(|err| {
                CsrError::UnsupportedKey {
                    reason: err.to_string(),
                }
            })?;
        let sign_error = |source| CsrError::Sign {
            id: requested.clone(),
            source,
        };
        let now = SystemTime::now();
        let params = super::leaf_params(requested, now - CLOCK_SKEW_ALLOWANCE, now + ttl).map_err(sign_error)?;
        let leaf = params.signed_by(&public_key, &self.issuer).map_err(sign_error)?;

        let mut chain = Vec::with_capacity(2 + self.intermediates.len());
        chain.push(der_to_pem("CERTIFICATE", leaf.der()));
        // A CA loaded without its root is its own trust anchor; it must not appear twice.
        let above = self.intermediates.iter().filter(|der| **der != self.root);
        chain.extend(above.map(|der| der_to_pem("CERTIFICATE", der)));
        chain.push(der_to_pem("CERTIFICATE", &self.root));
        Ok(chain)
    }
}

/// Every SAN the CSR asks for, URIs as themselves and other kinds prefixed by their type, so a
/// refusal can show exactly what was asked.
fn requested_sans(csr: &X509CertificationRequest<'_>) -> Result<Vec<String>, CsrError> {
    let mut sans = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => {
                sans.extend(san.general_names.iter().map(|name| match name {
                    GeneralName::URI(uri) => (*uri).to_owned(),
                    other => other.to_string(),
                }));
            }
            ParsedExtension::ParseError { error } => {
                return Err(CsrError::Parse {
                    reason: format!("requested extension: {error}"),
                });
            }
            _ => {}
        }
    }
    Ok(sans)
}
