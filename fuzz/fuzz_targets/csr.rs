//! `CreateCertificate` carries the caller's CSR as PEM text. The CA parses it, checks its
//! self-signature and SANs and signs it: none of that may panic, and whatever it signs must name
//! exactly the identity that was requested.
//!
//! Input: a mode byte, then the CSR. An even mode byte sends the rest as the request's PEM text;
//! an odd one wraps the rest in a `CERTIFICATE REQUEST` block, so the fuzzer mutates the DER
//! directly rather than through base64.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use ambit_identity::rustls::pki_types::{CertificateDer, pem::PemObject};
use ambit_identity::{CertificateAuthority, SpiffeId, identity_of};
use libfuzzer_sys::fuzz_target;

const TRUST_DOMAIN: &str = "cluster.local";

static CA: LazyLock<CertificateAuthority> =
    LazyLock::new(|| CertificateAuthority::generate(TRUST_DOMAIN).expect("a fresh CA"));
static REQUESTED: LazyLock<SpiffeId> =
    LazyLock::new(|| SpiffeId::new(TRUST_DOMAIN, "default", "web").expect("a valid SPIFFE ID"));

fuzz_target!(|input: &[u8]| {
    let Some((&mode, csr)) = input.split_first() else {
        return;
    };
    let csr_pem = if mode % 2 == 0 {
        String::from_utf8_lossy(csr).into_owned()
    } else {
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr.to_vec()))
    };
    match CA.sign_request(&csr_pem, &REQUESTED, Duration::from_secs(3600)) {
        Ok(chain) => {
            assert!(chain.len() >= 2, "a chain without the root: {chain:?}");
            let leaf = CertificateDer::from_pem_slice(chain[0].as_bytes()).expect("the leaf is PEM");
            let issued = identity_of(&leaf).unwrap_or_else(|e| panic!("the signed leaf names no identity: {e}"));
            assert_eq!(issued, *REQUESTED, "signed a certificate for another identity");
        }
        Err(error) => assert!(!error.to_string().is_empty(), "empty message for {error:?}"),
    }
});
