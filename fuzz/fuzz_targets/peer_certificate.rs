//! A peer's leaf certificate is untrusted DER; reading its SPIFFE ID must never panic.
#![no_main]

use ambit_identity::rustls::pki_types::CertificateDer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|der: &[u8]| {
    if let Ok(id) = ambit_identity::identity_of(&CertificateDer::from(der)) {
        // Whatever a certificate names must be an ID we can print and parse back.
        assert_eq!(id.to_string().parse().ok(), Some(id));
    }
});
