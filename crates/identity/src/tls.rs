//! rustls configurations for HBONE mutual TLS between workloads, and reading the verified peer
//! identity back out of a connection.
//!
//! Peers are authenticated by SPIFFE ID, never by DNS name: the server accepts any client of its
//! own trust domain, the client accepts only the server identities it was told to expect. The
//! crypto provider is `ring`, and only TLS 1.3 is offered.

mod verify;

use std::error::Error as StdError;
use std::sync::{Arc, LazyLock};
use std::{fmt, io};

use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite;
use rustls::{ClientConfig, CommonState, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use x509_parser::extensions::GeneralName;

use self::verify::{Refusal, SpiffeClientVerifier, SpiffeServerVerifier};
use crate::ca::WorkloadCertificate;
use crate::spiffe::{SpiffeId, SpiffeIdError};
use crate::trust::TrustBundle;

/// ALPN protocol of HBONE: HTTP/2 CONNECT over mTLS.
pub const ALPN_H2: &[u8] = b"h2";

/// The name handed to `TlsConnector::connect`. Certificates are checked by SPIFFE ID, so the
/// name is never verified, and SNI is switched off so it never leaves this host either.
const PLACEHOLDER_SERVER_NAME: &str = "hbone.ambit.invalid";

/// Why a TLS configuration could not be built, or a peer or certificate was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("certificate is not valid X.509: {reason}")]
    BadCertificate { reason: String },
    #[error("certificate has no URI SAN, so it carries no SPIFFE ID")]
    NoUriSan,
    /// No URI SAN parses as a workload SPIFFE ID; `source` says why the first one does not.
    #[error("no URI SAN of the certificate is a workload SPIFFE ID (URI SANs: {})", .uris.join(", "))]
    NotSpiffe {
        uris: Vec<String>,
        #[source]
        source: SpiffeIdError,
    },
    #[error("peer presented no certificate: is the handshake complete and mutual?")]
    NoPeerCertificate,
    /// `found` holds every SPIFFE ID of the peer certificate, in certificate order.
    #[error("peer identity {} is not expected here; expected {}", IdList(.found), IdList(.expected))]
    UnexpectedPeer {
        found: Vec<SpiffeId>,
        expected: Vec<SpiffeId>,
    },
    /// `peer` holds every SPIFFE ID of the peer certificate, in certificate order.
    #[error("peer identity {} is outside trust domain {local:?}, the only one accepted", IdList(.peer))]
    ForeignTrustDomain { peer: Vec<SpiffeId>, local: String },
    #[error("a client config needs at least one expected server identity")]
    NoExpectedIdentity,
    #[error("the trust bundle is empty: at least one root CA certificate is needed")]
    EmptyTrustBundle,
    #[error("could not read the trust bundle PEM")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("root certificate {index} of the trust bundle is not a usable trust anchor")]
    BadRoot {
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("could not build the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("could not build the TLS config for {id}")]
    Config {
        id: SpiffeId,
        // Boxed to keep `TlsError` small on the success path; building a config is rare.
        #[source]
        source: Box<rustls::Error>,
    },
}

impl TlsError {
    /// The refusal of ours behind a failed handshake, if that is why it failed: searches
    /// `err` and its sources, looking inside the `io::Error`s tokio-rustls returns and the
    /// rustls errors they wrap. Use it to log or count why a peer was refused.
    pub fn find_in<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a TlsError> {
        let mut current = Some(err);
        while let Some(err) = current {
            if let Some(found) = Self::find_here(err) {
                return Some(found);
            }
            // `io::Error::source` skips the error it wraps, so step into it explicitly.
            current = match err.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
                Some(inner) => Some(inner),
                None => err.source(),
            };
        }
        None
    }

    fn find_here<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a TlsError> {
        if let Some(found) = err.downcast_ref::<TlsError>() {
            return Some(found);
        }
        if let Some(refusal) = err.downcast_ref::<Refusal>() {
            return Some(&refusal.0);
        }
        match err.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<Refusal>().map(|refusal| &refusal.0)
            }
            _ => None,
        }
    }
}

/// Formats identities as `[a, b]` for error messages.
struct IdList<'a>(&'a [SpiffeId]);

impl fmt::Display for IdList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{id}")?;
        }
        f.write_str("]")
    }
}

/// The ring provider restricted to the TLS 1.3 suites we offer, strongest first.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        Arc::new(provider)
    });
    Arc::clone(&PROVIDER)
}

/// Server side of HBONE: presents `cert`, and requires a client certificate that chains to
/// `trust` and names a SPIFFE ID in the trust domain of `cert`'s identity.
pub fn server_config(cert: &WorkloadCertificate, trust: &TrustBundle) -> Result<Arc<ServerConfig>, TlsError> {
    let config_error = |source| TlsError::Config {
        id: cert.identity().clone(),
        source: Box::new(source),
    };
    let verifier = SpiffeClientVerifier::new(trust, cert.identity().trust_domain())?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert.chain().to_vec(), cert.key())
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: a resumed session skips certificate verification, and every HBONE
    // connection must prove its identity afresh. Connections are pooled, so this costs little.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client side of HBONE: presents `cert`, and accepts a server whose chain leads to `trust` and
/// whose SPIFFE ID is one of `expected`.
pub fn client_config(
    cert: &WorkloadCertificate,
    trust: &TrustBundle,
    expected: &[SpiffeId],
) -> Result<Arc<ClientConfig>, TlsError> {
    if expected.is_empty() {
        return Err(TlsError::NoExpectedIdentity);
    }
    let config_error = |source| TlsError::Config {
        id: cert.identity().clone(),
        source: Box::new(source),
    };
    let verifier = SpiffeServerVerifier::new(trust, expected.to_vec());
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain().to_vec(), cert.key())
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The peer's SPIFFE ID in `trust_domain`: the identity the server config of this module
/// accepted the client on. Certificates may carry aliases in other trust domains; authorization
/// must act on the one that was verified, never on a foreign alias that happens to come first.
/// Only meaningful after the handshake, when the configs of this module have verified the
/// certificate.
pub fn peer_identity(conn: &CommonState, trust_domain: &str) -> Result<SpiffeId, TlsError> {
    let leaf = conn
        .peer_certificates()
        .and_then(<[CertificateDer<'_>]>::first)
        .ok_or(TlsError::NoPeerCertificate)?;
    let ids = identities_of(leaf)?;
    ids.iter()
        .find(|id| id.trust_domain() == trust_domain)
        .cloned()
        .ok_or_else(|| TlsError::ForeignTrustDomain {
            peer: ids,
            local: trust_domain.to_owned(),
        })
}

/// The SPIFFE ID of a certificate: its first URI SAN that is a workload SPIFFE ID. The
/// certificate is not verified.
///
/// Other URI SANs, SPIFFE or not, are skipped, so certificates that also carry e.g. a legacy
/// or multi-trust-domain alias load. A peer may have been accepted by the configs of this
/// module on a later SPIFFE ID than this first one (it was the expected identity, or the one in
/// the local trust domain); this still returns the first.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, TlsError> {
    identities_of(cert)?.into_iter().next().ok_or(TlsError::NoUriSan)
}

/// Every URI SAN of `cert` that is a workload SPIFFE ID, in certificate order; never empty.
pub(crate) fn identities_of(cert: &CertificateDer<'_>) -> Result<Vec<SpiffeId>, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|err| TlsError::BadCertificate {
        reason: err.to_string(),
    })?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|err| TlsError::BadCertificate {
            reason: format!("subjectAltName: {err}"),
        })?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let mut ids = Vec::with_capacity(uris.len());
    let mut first_error = None;
    for uri in &uris {
        match uri.parse::<SpiffeId>() {
            Ok(id) => ids.push(id),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        _ if !ids.is_empty() => Ok(ids),
        None => Err(TlsError::NoUriSan),
        Some(source) => Err(TlsError::NotSpiffe {
            uris: uris.into_iter().map(str::to_owned).collect(),
            source,
        }),
    }
}

/// A fixed name to pass to `TlsConnector::connect`; verification does not look at it.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(PLACEHOLDER_SERVER_NAME)
        .unwrap_or_else(|_| unreachable!("{PLACEHOLDER_SERVER_NAME} is a valid DNS name"))
}
