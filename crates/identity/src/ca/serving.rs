//! A TLS server certificate with DNS names, signed by the mesh CA, for the control plane's own
//! endpoints (the CA and xDS gRPC servers), which clients reach by DNS name rather than by
//! SPIFFE ID. Workload certificates live in `workload`.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
use time::OffsetDateTime;

use super::{CLOCK_SKEW_ALLOWANCE, CaError, CertificateAuthority, der_to_pem, generate_key};

/// Chain (leaf, then intermediates) and key of a DNS-named server certificate, as PEM.
#[derive(Clone)]
pub struct ServingCertificate {
    pub chain_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for ServingCertificate {
    // Hand-written so the private key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCertificate").finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Issues a server certificate for `dns_names` (the first is also the common name), valid
    /// for `ttl`; clients verify it against this CA's root and the name they dialled.
    pub fn issue_serving(&self, dns_names: &[String], ttl: Duration) -> Result<ServingCertificate, CaError> {
        let generate_error = |source| CaError::Generate {
            what: format!("serving certificate for {dns_names:?}"),
            source,
        };
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(generate_error)?;
        let mut name = DistinguishedName::new();
        if let Some(first) = dns_names.first() {
            name.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = OffsetDateTime::from(now + ttl);
        let key = generate_key().map_err(generate_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_error)?;
        let mut chain_pem = der_to_pem("CERTIFICATE", cert.der());
        for der in &self.intermediates {
            chain_pem.push_str(&der_to_pem("CERTIFICATE", der));
        }
        Ok(ServingCertificate {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }
}
