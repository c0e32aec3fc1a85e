//! Certificate verifiers that authenticate peers by SPIFFE ID instead of DNS name.
//!
//! Both first verify the chain with webpki (signatures, validity at `now`, EKU), and only then
//! read the identity: a SAN is worth nothing until its certificate is known to be genuine.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{TlsError, identities_of, provider};
use crate::spiffe::SpiffeId;
use crate::trust::TrustBundle;

/// Turns our refusal into the rustls error that aborts the handshake. `Other` keeps our error
/// for the local side (see [`TlsError::find_in`]); the peer only gets a `certificate_unknown`
/// alert, which is all it should learn.
fn refuse(err: TlsError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refusal(err)))))
}

/// Our error as carried inside a rustls error.
///
/// rustls prints `CertificateError::Other` with `{:?}` and never walks sources, so both `Debug`
/// and `Display` here spell out the whole chain: logs then read "...Other(OtherError(peer
/// identity spiffe://... is not expected here; ...))" instead of a nest of struct fields.
pub(super) struct Refusal(pub(super) TlsError);

impl fmt::Debug for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(&self.0);
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

// No `source()`: the message above already holds the chain, and a source would repeat it.
impl std::error::Error for Refusal {}

/// Server side: webpki client verification, then "a SPIFFE ID in the same trust domain as me".
#[derive(Debug)]
pub(super) struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl SpiffeClientVerifier {
    pub(super) fn new(trust: &TrustBundle, trust_domain: &str) -> Result<Self, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::clone(trust.root_store()), provider()).build()?;
        Ok(Self {
            inner,
            trust_domain: trust_domain.to_owned(),
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let peer = identities_of(end_entity).map_err(refuse)?;
        if !peer.iter().any(|id| id.trust_domain() == self.trust_domain) {
            return Err(refuse(TlsError::ForeignTrustDomain {
                peer,
                local: self.trust_domain.clone(),
            }));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: webpki chain verification without any name check, then "a SPIFFE ID among the
/// identities I was told to expect".
#[derive(Debug)]
pub(super) struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: Vec<SpiffeId>,
}

impl SpiffeServerVerifier {
    pub(super) fn new(trust: &TrustBundle, expected: Vec<SpiffeId>) -> Self {
        Self {
            roots: Arc::clone(trust.root_store()),
            provider: provider(),
            expected,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // Deliberately unused: the SPIFFE ID below is the name we check.
        _server_name: &ServerName<'_>,
        // No OCSP in the mesh: short-lived certificates stand in for revocation.
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let found = identities_of(end_entity).map_err(refuse)?;
        if !found.iter().any(|id| self.expected.contains(id)) {
            return Err(refuse(TlsError::UnexpectedPeer {
                found,
                expected: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
