use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use super::*;
use crate::tls::identity_of;

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).expect("valid id")
}

fn parsed<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
    x509_parser::parse_x509_certificate(der).expect("valid X.509").1
}

/// The error and its sources, as `anyhow`'s `{:#}` would print them.
fn full_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        message.push_str(": ");
        message.push_str(&err.to_string());
        source = err.source();
    }
    message
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).expect("after epoch").as_secs()
}

#[test]
fn root_is_a_ten_year_self_signed_ca_of_the_trust_domain() {
    let ca = CertificateAuthority::generate("cluster.local").expect("ca");
    let root = ca.root_der();
    let cert = parsed(&root);
    assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
    assert!(cert.basic_constraints().expect("bc").expect("bc").value.ca);
    let org = cert.subject().iter_organization().next().expect("O");
    assert_eq!(org.as_str().expect("utf8"), "cluster.local");
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(lifetime >= 10 * 365 * 24 * 3600, "{lifetime}");
    assert_eq!(ca.cert_pem().matches("BEGIN CERTIFICATE").count(), 1);
}

#[test]
fn bad_trust_domain_is_refused() {
    let err = CertificateAuthority::generate("Not Valid").expect_err("bad td");
    assert!(matches!(err, CaError::TrustDomain { .. }), "{err}");
    assert!(err.to_string().contains("Not Valid"), "{err}");
}

#[test]
fn leaf_follows_the_workload_profile() {
    let ca = CertificateAuthority::generate("cluster.local").expect("ca");
    let who = id("default", "productpage");
    let before = SystemTime::now();
    let cert = ca.issue(&who, Duration::from_secs(3600)).expect("issue");

    assert_eq!(cert.identity(), &who);
    assert_eq!(cert.chain().len(), 1, "the root is not sent");
    assert_ne!(cert.chain()[0], ca.root_der());
    assert_eq!(identity_of(&cert.chain()[0]).expect("identity"), who);

    let leaf = parsed(&cert.chain()[0]);
    assert!(leaf.subject().as_raw().len() <= 2, "empty subject");
    let root = ca.root_der();
    assert_eq!(leaf.issuer().as_raw(), parsed(&root).subject().as_raw());

    let san = leaf.subject_alternative_name().expect("san").expect("san");
    assert!(san.critical, "SAN must be critical with an empty subject");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://cluster.local/ns/default/sa/productpage")]
    );
    let ku = leaf.key_usage().expect("ku").expect("ku").value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign());
    let eku = leaf.extended_key_usage().expect("eku").expect("eku").value;
    assert!(eku.server_auth && eku.client_auth);
    let bc = leaf.basic_constraints().expect("bc");
    assert!(bc.is_none_or(|bc| !bc.value.ca));

    // Validity: one minute of skew allowance before now, ttl after; second precision.
    let nb = secs(cert.not_before());
    let na = secs(cert.not_after());
    assert!(nb + 60 <= secs(before) + 1 && nb + 60 + 1 >= secs(before), "{nb}");
    assert!(na >= secs(before) + 3600 - 1 && na <= secs(SystemTime::now()) + 3600);
    assert_eq!(nb, leaf.validity().not_before.timestamp() as u64);
    assert_eq!(secs(cert.renew_at()), nb + (na - nb) / 2);
}

#[test]
fn explicit_validity_is_kept_and_must_not_be_empty() {
    let ca = CertificateAuthority::generate("td").expect("ca");
    let who = SpiffeId::new("td", "ns", "sa").expect("id");
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let end = start + Duration::from_secs(600);
    let cert = ca.issue_with_validity(&who, start, end).expect("issue");
    assert_eq!(cert.not_before(), start);
    assert_eq!(cert.not_after(), end);
    assert_eq!(cert.renew_at(), start + Duration::from_secs(300));

    let err = ca.issue_with_validity(&who, end, start).expect_err("reversed window");
    assert!(matches!(err, CaError::EmptyValidity { .. }), "{err}");
    assert!(err.to_string().contains("spiffe://td/ns/ns/sa/sa"), "{err}");
}

#[test]
fn ca_survives_a_pem_round_trip() {
    let ca = CertificateAuthority::generate("td").expect("ca");
    let loaded = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).expect("load");
    assert_eq!(loaded.root_der(), ca.root_der());
    let who = SpiffeId::new("td", "ns", "sa").expect("id");
    let cert = loaded.issue(&who, Duration::from_secs(60)).expect("issue");
    let root = ca.root_der();
    assert_eq!(
        parsed(&cert.chain()[0]).issuer().as_raw(),
        parsed(&root).subject().as_raw()
    );
}

#[test]
fn ca_pem_with_the_wrong_key_is_refused() {
    let a = CertificateAuthority::generate("td").expect("ca");
    let b = CertificateAuthority::generate("td").expect("ca");
    let err = CertificateAuthority::from_pem(&a.cert_pem(), &b.key_pem()).expect_err("mismatch");
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
}

#[test]
fn leaf_pem_is_not_a_ca() {
    let ca = CertificateAuthority::generate("td").expect("ca");
    let who = SpiffeId::new("td", "ns", "sa").expect("id");
    let cert = ca.issue(&who, Duration::from_secs(60)).expect("issue");
    let err = CertificateAuthority::from_pem(&cert.leaf_pem(), &cert.key_pem()).expect_err("leaf as CA");
    assert!(matches!(err, CaError::NotCa { .. }), "{err}");

    for (cert_pem, key_pem) in [(String::new(), ca.key_pem()), (ca.cert_pem(), String::new())] {
        assert!(CertificateAuthority::from_pem(&cert_pem, &key_pem).is_err());
    }
}

#[test]
fn intermediate_leaves_carry_the_intermediate() {
    let root = CertificateAuthority::generate("td").expect("ca");
    let intermediate = root
        .issue_intermediate("ambit intermediate", Duration::from_secs(3600))
        .expect("intermediate");
    assert_eq!(intermediate.root_der(), root.root_der());
    assert_eq!(intermediate.cert_pem().matches("BEGIN CERTIFICATE").count(), 2);

    let who = SpiffeId::new("td", "ns", "sa").expect("id");
    let cert = intermediate.issue(&who, Duration::from_secs(60)).expect("issue");
    assert_eq!(cert.chain().len(), 2);
    assert!(!cert.chain().contains(&root.root_der()));

    // Loaded back from PEM (intermediate then root), it keeps that shape.
    let loaded = CertificateAuthority::from_pem(&intermediate.cert_pem(), &intermediate.key_pem()).expect("load");
    assert_eq!(loaded.root_der(), root.root_der());
    let again = loaded.issue(&who, Duration::from_secs(60)).expect("issue");
    assert_eq!(again.chain()[1], cert.chain()[1]);
}

#[test]
fn workload_certificate_pem_round_trip() {
    let ca = CertificateAuthority::generate("td").expect("ca");
    let who = SpiffeId::new("td", "ns", "sa").expect("id");
    let cert = ca.issue(&who, Duration::from_secs(60)).expect("issue");
    let loaded = WorkloadCertificate::from_pem(&cert.chain_pem(), &cert.key_pem()).expect("load");
    assert_eq!(loaded.identity(), &who);
    assert_eq!(loaded.chain(), cert.chain());
    assert_eq!(loaded.not_after(), cert.not_after());
    assert_eq!(loaded.key(), cert.key());

    let other = ca.issue(&who, Duration::from_secs(60)).expect("issue");
    let err = WorkloadCertificate::from_pem(&cert.chain_pem(), &other.key_pem()).expect_err("wrong key");
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
}

fn self_signed_with_sans(sans: Vec<rcgen::SanType>) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

fn uri(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(s.try_into().expect("ia5"))
}

#[test]
fn workload_certificate_needs_a_spiffe_uri() {
    let cases = [
        (vec![], "no URI SAN"),
        (vec![uri("https://example.com/x")], "https://example.com/x"),
        (vec![uri("spiffe://td/workload")], "spiffe://td/workload"),
        (
            vec![uri("https://example.com/x"), uri("spiffe://td/workload")],
            "(URI SANs: https://example.com/x, spiffe://td/workload): \"https://example.com/x\"",
        ),
    ];
    for (sans, needle) in cases {
        let (cert_pem, key_pem) = self_signed_with_sans(sans);
        let err = WorkloadCertificate::from_pem(&cert_pem, &key_pem).expect_err(needle);
        assert!(matches!(err, CaError::Leaf(_)), "{err}");
        let message = full_chain(&err);
        assert!(message.contains(needle), "{needle}: {message}");
    }
}

#[test]
fn identity_is_the_first_uri_san_that_is_a_spiffe_id() {
    let cases = [
        (vec![uri("spiffe://td/ns/a/sa/b")], "spiffe://td/ns/a/sa/b"),
        (
            vec![uri("spiffe://td/ns/a/sa/b"), uri("spiffe://td/ns/c/sa/d")],
            "spiffe://td/ns/a/sa/b",
        ),
        (
            vec![
                rcgen::SanType::DnsName("a.example".try_into().expect("ia5")),
                uri("https://example.com/x"),
                uri("spiffe://td/workload"),
                uri("spiffe://other/ns/c/sa/d"),
                uri("spiffe://td/ns/a/sa/b"),
            ],
            "spiffe://other/ns/c/sa/d",
        ),
    ];
    for (sans, want) in cases {
        let (cert_pem, key_pem) = self_signed_with_sans(sans);
        let cert = WorkloadCertificate::from_pem(&cert_pem, &key_pem).expect(want);
        assert_eq!(cert.identity().to_string(), want);
        assert_eq!(identity_of(&cert.chain()[0]).expect("identity").to_string(), want);
    }
}

mod signing_requests {
    use rustls_pki_types::CertificateSigningRequestDer;

    use super::*;

    #[test]
    fn csr_round_trip_gives_chain_root_last_and_a_usable_certificate() {
        let root = CertificateAuthority::generate("cluster.local").expect("root");
        let intermediate = root
            .issue_intermediate("ambit intermediate", Duration::from_secs(3600))
            .expect("intermediate");
        let id = id("shop", "cart");
        let request = CertificateRequest::generate(&id).expect("csr");
        assert!(request.csr_pem().starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let chain = intermediate
            .sign_request(request.csr_pem(), &id, Duration::from_secs(600))
            .expect("signed");
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        let last = CertificateDer::from_pem_slice(chain[2].as_bytes()).expect("root pem");
        assert_eq!(last, root.root_der());
        let cert = request.into_certificate(&chain).expect("certificate");
        assert_eq!(cert.identity(), &id);
        assert_eq!(cert.chain().len(), 2, "the root is dropped");
        let lifetime = cert.not_after().duration_since(cert.not_before()).expect("ordered");
        assert_eq!(lifetime.as_secs(), 600 + CLOCK_SKEW_ALLOWANCE.as_secs());
        let leaf = parsed(&cert.chain()[0]);
        let eku = leaf.extended_key_usage().expect("eku").expect("eku").value;
        assert!(eku.server_auth && eku.client_auth);
    }

    #[test]
    fn root_signed_chain_is_leaf_then_root() {
        let root = CertificateAuthority::generate("cluster.local").expect("root");
        let id = id("shop", "cart");
        let request = CertificateRequest::generate(&id).expect("csr");
        let chain = root
            .sign_request(request.csr_pem(), &id, Duration::from_secs(60))
            .expect("signed");
        assert_eq!(chain.len(), 2);
        assert_eq!(request.into_certificate(&chain).expect("cert").chain().len(), 1);
    }

    #[test]
    fn csr_for_another_identity_is_refused_naming_both() {
        let ca = CertificateAuthority::generate("cluster.local").expect("ca");
        let request = CertificateRequest::generate(&id("shop", "cart")).expect("csr");
        let err = ca
            .sign_request(request.csr_pem(), &id("shop", "admin"), Duration::from_secs(60))
            .expect_err("mismatch");
        let msg = err.to_string();
        assert!(matches!(err, CsrError::SanMismatch { .. }), "{msg}");
        assert!(msg.contains("spiffe://cluster.local/ns/shop/sa/cart"), "{msg}");
        assert!(msg.contains("spiffe://cluster.local/ns/shop/sa/admin"), "{msg}");
    }

    #[test]
    fn csr_with_extra_sans_or_a_bad_signature_is_refused() {
        let ca = CertificateAuthority::generate("cluster.local").expect("ca");
        let wanted = id("shop", "cart");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(wanted.to_string().try_into().expect("uri")));
        let pem = params.serialize_request(&key).expect("csr").pem().expect("pem");
        let err = ca
            .sign_request(&pem, &wanted, Duration::from_secs(60))
            .expect_err("extra SAN");
        assert!(err.to_string().contains("evil.example"), "{err}");

        let good = CertificateRequest::generate(&wanted).expect("csr");
        let mut der = CertificateSigningRequestDer::from_pem_slice(good.csr_pem().as_bytes())
            .expect("der")
            .as_ref()
            .to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = der_to_pem("CERTIFICATE REQUEST", &der);
        let err = ca
            .sign_request(&tampered, &wanted, Duration::from_secs(60))
            .expect_err("tampered");
        assert!(
            matches!(err, CsrError::Signature { .. } | CsrError::Parse { .. }),
            "{err}"
        );
        let err = ca
            .sign_request("not pem", &wanted, Duration::from_secs(60))
            .expect_err("garbage");
        assert!(matches!(err, CsrError::Pem { .. }), "{err}");
    }

    #[test]
    fn answer_for_another_identity_is_refused() {
        let ca = CertificateAuthority::generate("cluster.local").expect("ca");
        let other = CertificateRequest::generate(&id("shop", "admin")).expect("csr");
        let chain = ca
            .sign_request(other.csr_pem(), &id("shop", "admin"), Duration::from_secs(60))
            .expect("signed");
        let mine = CertificateRequest::generate(&id("shop", "cart")).expect("csr");
        let err = mine.into_certificate(&chain).expect_err("wrong identity");
        assert!(matches!(err, CsrError::WrongIdentity { .. }), "{err}");
        let empty = CertificateRequest::generate(&id("shop", "cart")).expect("csr");
        assert!(matches!(empty.into_certificate(&[]), Err(CsrError::EmptyChain { .. })));
    }

    #[test]
    fn serving_certificate_names_its_dns_names() {
        let ca = CertificateAuthority::generate("cluster.local").expect("ca");
        let serving = ca
            .issue_serving(&["ambit-operator.ambit-system.svc".to_owned()], Duration::from_secs(60))
            .expect("serving");
        let der = CertificateDer::from_pem_slice(serving.chain_pem.as_bytes()).expect("pem");
        let cert = parsed(&der);
        let san = cert.subject_alternative_name().expect("san").expect("san").value;
        assert!(matches!(
            san.general_names[0],
            GeneralName::DNSName("ambit-operator.ambit-system.svc")
        ));
    }
}
