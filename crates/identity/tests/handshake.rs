//! Full HBONE mTLS handshakes between the configs of this crate, over in-memory pipes.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_identity::tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use ambit_identity::{
    CertificateAuthority, SpiffeId, TlsError, TrustBundle, WorkloadCertificate, client_config, peer_identity,
    server_config, server_name,
};
use rcgen::{CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

const HOUR: Duration = Duration::from_secs(3600);

fn id(td: &str, ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(td, ns, sa).expect("valid id")
}

struct Mesh {
    ca: CertificateAuthority,
    trust: TrustBundle,
}

impl Mesh {
    fn new(trust_domain: &str) -> Self {
        let ca = CertificateAuthority::generate(trust_domain).expect("ca");
        let trust = ca.trust_bundle().expect("bundle");
        Self { ca, trust }
    }

    fn issue(&self, id: &SpiffeId) -> WorkloadCertificate {
        self.ca.issue(id, HOUR).expect("issue")
    }

    fn expired(&self, id: &SpiffeId) -> WorkloadCertificate {
        let now = SystemTime::now();
        self.ca
            .issue_with_validity(id, now - 2 * HOUR, now - HOUR)
            .expect("issue")
    }
}

/// A leaf of `ca` carrying `uris` as its URI SANs, in that order, as PEM (chain, key): our own
/// CA only ever issues one.
fn leaf_with_uris(ca: &CertificateAuthority, uris: &[&str]) -> (String, String) {
    let ca_key = KeyPair::from_pem(&ca.key_pem()).expect("ca key");
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem(), ca_key).expect("issuer");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|uri| SanType::URI((*uri).try_into().expect("ia5")))
        .collect();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn workload_with_uris(ca: &CertificateAuthority, uris: &[&str]) -> WorkloadCertificate {
    let (chain, key) = leaf_with_uris(ca, uris);
    WorkloadCertificate::from_pem(&chain, &key).expect("workload certificate")
}

struct Outcome {
    client: io::Result<client::TlsStream<tokio::io::DuplexStream>>,
    server: io::Result<server::TlsStream<tokio::io::DuplexStream>>,
}

async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Outcome {
    let (client_io, server_io) = duplex(64 * 1024);
    let connector = TlsConnector::from(client);
    let acceptor = TlsAcceptor::from(server);
    let (client, server) = tokio::join!(connector.connect(server_name(), client_io), acceptor.accept(server_io));
    Outcome { client, server }
}

/// The server refused the client: its accept failed with `needle` in the error, and the client,
/// which in TLS 1.3 may finish its side of the handshake first, cannot read anything.
async fn assert_server_refused(outcome: Outcome, needle: &str) {
    let err = outcome.server.expect_err("server must refuse the client");
    assert!(err.to_string().contains(needle), "{needle:?} not in: {err}");
    if let Ok(mut client) = outcome.client {
        let mut buf = [0u8; 16];
        let read = client.read(&mut buf).await;
        assert!(matches!(read, Err(_) | Ok(0)), "client read after refusal: {read:?}");
    }
}

fn assert_client_refused(outcome: &Outcome, needles: &[&str]) {
    let err = outcome.client.as_ref().expect_err("client must refuse the server");
    for needle in needles {
        assert!(err.to_string().contains(needle), "{needle:?} not in: {err}");
    }
    assert!(outcome.server.is_err(), "server must see the abort");
}

#[tokio::test]
async fn matching_identities_connect_and_see_each_other() {
    let mesh = Mesh::new("cluster.local");
    let alice = id("cluster.local", "default", "alice");
    let bob = id("cluster.local", "other", "bob");
    let client_cfg = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");

    let outcome = handshake(client_cfg, server_cfg).await;
    let mut client = outcome.client.expect("client handshake");
    let mut server = outcome.server.expect("server handshake");

    assert_eq!(
        peer_identity(client.get_ref().1, "cluster.local").expect("server id"),
        bob
    );
    assert_eq!(
        peer_identity(server.get_ref().1, "cluster.local").expect("client id"),
        alice
    );

    let sides: [&rustls::CommonState; 2] = [client.get_ref().1, server.get_ref().1];
    for common in sides {
        assert_eq!(common.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(common.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let suite = common.negotiated_cipher_suite().expect("suite").suite();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    }

    client.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn any_expected_identity_is_accepted_and_intermediates_are_sent() {
    let mesh = Mesh::new("td");
    let intermediate = mesh
        .ca
        .issue_intermediate("ambit intermediate", HOUR)
        .expect("intermediate");
    let alice = id("td", "ns", "alice");
    let bob = id("td", "ns", "bob");
    let client_cert = intermediate.issue(&alice, HOUR).expect("issue");
    let server_cert = intermediate.issue(&bob, HOUR).expect("issue");
    let expected = [id("td", "ns", "carol"), bob.clone()];
    let client_cfg = client_config(&client_cert, &mesh.trust, &expected).expect("cfg");
    let server_cfg = server_config(&server_cert, &mesh.trust).expect("cfg");

    let outcome = handshake(client_cfg, server_cfg).await;
    let client = outcome.client.expect("client handshake");
    let server = outcome.server.expect("server handshake");
    assert_eq!(peer_identity(client.get_ref().1, "td").expect("server id"), bob);
    assert_eq!(peer_identity(server.get_ref().1, "td").expect("client id"), alice);
}

#[tokio::test]
async fn client_refuses_an_unexpected_server_identity() {
    let mesh = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let mallory = id("td", "ns", "mallory");
    let bob = id("td", "ns", "bob");
    let client_cfg = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&mallory), &mesh.trust).expect("cfg");

    let outcome = handshake(client_cfg, server_cfg).await;
    assert_client_refused(&outcome, &["spiffe://td/ns/ns/sa/mallory", "spiffe://td/ns/ns/sa/bob"]);
    let err = outcome.client.expect_err("refused");
    match TlsError::find_in(&err) {
        Some(TlsError::UnexpectedPeer { found, expected }) => {
            assert_eq!(found, &[mallory]);
            assert_eq!(expected, &[bob]);
        }
        other => panic!("expected UnexpectedPeer in {err}, found {other:?}"),
    }
}

#[tokio::test]
async fn server_refuses_a_client_from_another_trust_domain_under_the_same_root() {
    let mesh = Mesh::new("td-a");
    let bob = id("td-a", "ns", "bob");
    let intruder = id("td-b", "ns", "alice");
    let client_cfg = client_config(&mesh.issue(&intruder), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");

    let outcome = handshake(client_cfg, server_cfg).await;
    let err = outcome.server.as_ref().expect_err("refused");
    assert!(
        matches!(
            TlsError::find_in(err),
            Some(TlsError::ForeignTrustDomain { peer, local }) if *peer == [intruder.clone()] && local == "td-a"
        ),
        "{err}"
    );
    assert_server_refused(outcome, "spiffe://td-b/ns/ns/sa/alice").await;
}

#[tokio::test]
async fn certificates_from_another_root_are_refused_both_ways() {
    let mesh = Mesh::new("td");
    // Same trust domain and subject name as the real root, different key.
    let rogue = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let bob = id("td", "ns", "bob");

    // A client signed by a root the server does not trust.
    let client_cfg = client_config(&rogue.issue(&alice), &rogue.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");
    // The rogue client also distrusts the server, so it aborts first; check that direction...
    let outcome = handshake(client_cfg, server_cfg.clone()).await;
    assert_client_refused(&outcome, &["invalid peer certificate: BadSignature"]);

    // ...and a rogue client that does trust our root is refused by the server.
    let client_cfg = client_config(&rogue.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let outcome = handshake(client_cfg, server_cfg).await;
    assert_server_refused(outcome, "invalid peer certificate: BadSignature").await;

    // A root with another name altogether is not even a candidate issuer.
    let stranger = Mesh::new("elsewhere");
    let client_cfg = client_config(&stranger.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");
    let outcome = handshake(client_cfg, server_cfg).await;
    assert_server_refused(outcome, "UnknownIssuer").await;
}

#[tokio::test]
async fn expired_certificates_are_refused_both_ways() {
    let mesh = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let bob = id("td", "ns", "bob");

    let client_cfg = client_config(&mesh.expired(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");
    assert_server_refused(handshake(client_cfg, server_cfg).await, "expired").await;

    let client_cfg = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.expired(&bob), &mesh.trust).expect("cfg");
    assert_client_refused(&handshake(client_cfg, server_cfg).await, &["expired"]);
}

#[tokio::test]
async fn several_uri_sans_are_accepted_on_any_spiffe_id_that_passes() {
    let mesh = Mesh::new("td");
    let bob = id("td", "ns", "bob");
    let alias = id("td", "ns", "bob-alias");
    // The server is expected as `bob`, its second SPIFFE ID, after a non-SPIFFE URI.
    let server_cert = workload_with_uris(
        &mesh.ca,
        &["https://legacy.example/bob", &alias.to_string(), &bob.to_string()],
    );
    assert_eq!(
        server_cert.identity(),
        &alias,
        "the first SPIFFE URI SAN is the identity"
    );
    // The client is in our trust domain only through its second URI SAN.
    let foreign = id("elsewhere", "ns", "alice");
    let alice = id("td", "ns", "alice");
    let client_cert = workload_with_uris(&mesh.ca, &[&foreign.to_string(), &alice.to_string()]);

    let client_cfg = client_config(&client_cert, &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&server_cert, &mesh.trust).expect("cfg");
    let outcome = handshake(client_cfg, server_cfg).await;
    let client = outcome.client.expect("client handshake");
    let server = outcome.server.expect("server handshake");
    // The reported identity is the first one in the trust domain asked for: the server acts on
    // the client's `td` identity that passed, never on the foreign alias listed first.
    assert_eq!(peer_identity(client.get_ref().1, "td").expect("server id"), alias);
    assert_eq!(peer_identity(server.get_ref().1, "td").expect("client id"), alice);
    assert!(matches!(
        peer_identity(server.get_ref().1, "nowhere"),
        Err(TlsError::ForeignTrustDomain { .. })
    ));
}

#[tokio::test]
async fn several_uri_sans_none_of_which_passes_are_refused_naming_them_all() {
    let mesh = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let bob = id("td", "ns", "bob");
    let mallory = id("td", "ns", "mallory");
    let eve = id("td", "ns", "eve");
    let client_cfg = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cert = workload_with_uris(&mesh.ca, &[&mallory.to_string(), &eve.to_string()]);
    let server_cfg = server_config(&server_cert, &mesh.trust).expect("cfg");
    let outcome = handshake(client_cfg, server_cfg).await;
    assert_client_refused(&outcome, &["spiffe://td/ns/ns/sa/mallory", "spiffe://td/ns/ns/sa/eve"]);
    let err = outcome.client.expect_err("refused");
    assert!(
        matches!(TlsError::find_in(&err), Some(TlsError::UnexpectedPeer { found, .. }) if *found == [mallory, eve]),
        "{err}"
    );

    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");
    let others = [id("td-b", "ns", "alice"), id("td-c", "ns", "alice")];
    let client_cert = workload_with_uris(&mesh.ca, &[&others[0].to_string(), &others[1].to_string()]);
    let client_cfg = client_config(&client_cert, &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let outcome = handshake(client_cfg, server_cfg).await;
    let err = outcome.server.as_ref().expect_err("refused");
    assert!(
        matches!(TlsError::find_in(err), Some(TlsError::ForeignTrustDomain { peer, .. }) if *peer == others),
        "{err}"
    );
    assert_server_refused(outcome, "spiffe://td-c/ns/ns/sa/alice").await;
}

/// Presents a fixed client certificate, whatever the server asks for.
#[derive(Debug)]
struct FixedClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn server_refuses_a_client_certificate_without_spiffe_id() {
    let mesh = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let bob = id("td", "ns", "bob");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");
    let ours = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");

    // Chains to our root, but none of its URI SANs is a workload SPIFFE ID, so it cannot be
    // loaded as a `WorkloadCertificate`: hand it to rustls directly.
    let (chain_pem, key_pem) = leaf_with_uris(&mesh.ca, &["https://example.com/alice", "spiffe://td/alice"]);
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).expect("signing key");
    let mut impostor = (*ours).clone();
    impostor.client_auth_cert_resolver =
        Arc::new(FixedClientCertificate(Arc::new(CertifiedKey::new(chain, signing_key))));

    let outcome = handshake(Arc::new(impostor), server_cfg).await;
    let err = outcome.server.as_ref().expect_err("refused");
    assert!(
        matches!(TlsError::find_in(err), Some(TlsError::NotSpiffe { uris, .. }) if uris.len() == 2),
        "{err}"
    );
    assert_server_refused(outcome, "https://example.com/alice, spiffe://td/alice").await;
}

/// Offers no client certificate, whatever the server asks for.
#[derive(Debug)]
struct NoClientCertificate;

impl ResolvesClientCert for NoClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn server_refuses_a_client_without_certificate() {
    let mesh = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let bob = id("td", "ns", "bob");
    let ours = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let mut anonymous = (*ours).clone();
    anonymous.client_auth_cert_resolver = Arc::new(NoClientCertificate);
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");

    let outcome = handshake(Arc::new(anonymous), server_cfg).await;
    assert_server_refused(outcome, "no certificates").await;
}

#[test]
fn client_config_needs_an_expected_identity() {
    let mesh = Mesh::new("td");
    let cert = mesh.issue(&id("td", "ns", "alice"));
    assert!(matches!(
        client_config(&cert, &mesh.trust, &[]),
        Err(TlsError::NoExpectedIdentity)
    ));
}

#[test]
fn peer_identity_before_the_handshake_is_an_error() {
    let mesh = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let cfg = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&alice)).expect("cfg");
    let conn = rustls::ClientConnection::new(cfg, server_name()).expect("connection");
    assert!(matches!(peer_identity(&conn, "td"), Err(TlsError::NoPeerCertificate)));
}
