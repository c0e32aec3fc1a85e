//! The set of root CA certificates a workload trusts for mesh peers.
//!
//! Owns only the roots; which identities are acceptable on top of chaining to them is decided
//! per connection in `tls`.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::tls::TlsError;

/// Trusted roots, cheap to clone and share between TLS configs.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots: Arc<RootCertStore>,
    ders: Arc<[CertificateDer<'static>]>,
}

impl TrustBundle {
    /// A bundle of the given DER roots; fails when empty or when a root is not a usable
    /// trust anchor.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::EmptyTrustBundle);
        }
        let mut store = RootCertStore::empty();
        for (index, der) in roots.iter().enumerate() {
            store
                .add(der.clone())
                .map_err(|source| TlsError::BadRoot { index, source })?;
        }
        Ok(Self {
            roots: Arc::new(store),
            ders: roots.into(),
        })
    }

    /// A bundle of every CERTIFICATE block in `pem`.
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(TlsError::Pem)?;
        Self::new(roots)
    }

    /// The roots as rustls holds them.
    pub fn root_store(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// The roots as given, in order.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.ders
    }

    /// The roots as PEM, in the form [`TrustBundle::from_pem`] takes.
    pub fn to_pem(&self) -> String {
        crate::ca::certificates_pem(&self.ders)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;

    #[test]
    fn empty_bundle_is_refused() {
        assert!(matches!(TrustBundle::new(Vec::new()), Err(TlsError::EmptyTrustBundle)));
        assert!(matches!(TrustBundle::from_pem(""), Err(TlsError::EmptyTrustBundle)));
    }

    #[test]
    fn garbage_root_is_refused_by_index() {
        let ca = CertificateAuthority::generate("td").expect("ca");
        let err = TrustBundle::new(vec![ca.root_der(), CertificateDer::from(vec![1, 2, 3])]).expect_err("garbage root");
        assert!(matches!(err, TlsError::BadRoot { index: 1, .. }), "{err}");
    }

    #[test]
    fn pem_round_trip() {
        let a = CertificateAuthority::generate("a").expect("ca");
        let b = CertificateAuthority::generate("b").expect("ca");
        let bundle = TrustBundle::new(vec![a.root_der(), b.root_der()]).expect("bundle");
        let again = TrustBundle::from_pem(&bundle.to_pem()).expect("from pem");
        assert_eq!(again.roots(), bundle.roots());
        assert_eq!(again.root_store().len(), 2);
    }
}
