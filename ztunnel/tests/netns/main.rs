//! ztunnel in network namespaces, as root: two "nodes", pods with the in-pod nftables capture
//! rules, one real ztunnel process per node. These tests fail (never skip) without root.

mod harness;
mod operator;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ambit_identity::{CertificateAuthority, SpiffeId, TrustBundle, WorkloadCertificate, tls};
use bytes::Bytes;
use harness::{
    Mesh, VIP, assert_echoed, assert_only_tls_on_the_wire, echo_fails, echo_roundtrip, metric, payload, wait_until,
};

fn ca(mesh: &Mesh) -> CertificateAuthority {
    let cert = std::fs::read_to_string(&mesh.files.ca.cert).expect("CA cert");
    let key = std::fs::read_to_string(&mesh.files.ca.key).expect("CA key");
    CertificateAuthority::from_pem(&cert, &key).expect("load CA")
}

fn sleep_principal() -> &'static str {
    "cluster.local/ns/default/sa/sleep"
}

#[test]
fn data_flows_both_ways_over_mtls_and_the_wire_shows_only_tls() -> anyhow::Result<()> {
    let mesh = Mesh::start("flows")?;
    let marker = b"AMBIT-PLAINTEXT-MARKER-7f3a";
    let data = payload(8 << 20, marker);
    let capture = mesh.node1.capture("eth0")?;

    assert_echoed(mesh.client.tcp_connect(mesh.server_addr())?, &data, "pod IP")?;
    let small = payload(64 << 10, marker);
    assert_echoed(
        mesh.client.tcp_connect(SocketAddr::from((VIP, 80)))?,
        &small,
        "service VIP",
    )?;
    assert_only_tls_on_the_wire(&capture.stop()?, marker);

    let m2 = mesh.z2.metrics()?;
    let dest = [
        ("reporter", "destination"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/sleep"),
    ];
    wait_until(Duration::from_secs(5), || {
        Ok(metric(&mesh.z2.metrics()?, "istio_tcp_connections_closed_total", &dest) >= 2.0)
    })?;
    let m2_after = mesh.z2.metrics()?;
    assert!(metric(&m2, "istio_tcp_connections_opened_total", &dest) >= 2.0, "{m2}");
    let sent = metric(&m2_after, "istio_tcp_sent_bytes_total", &dest);
    assert!(
        sent >= (data.len() + small.len()) as f64,
        "destination counted {sent} bytes sent"
    );
    let m1 = mesh.z1.metrics()?;
    let source = [
        ("reporter", "source"),
        ("destination_principal", "spiffe://cluster.local/ns/default/sa/echo"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert!(
        metric(&m1, "istio_tcp_connections_opened_total", &source) >= 2.0,
        "{m1}"
    );
    assert!(
        metric(&m1, "istio_tcp_received_bytes_total", &source) >= (data.len() + small.len()) as f64,
        "{m1}"
    );
    assert!(
        metric(
            &m1,
            "istio_tcp_connections_opened_total",
            &[("destination_service", "echo.default.svc.cluster.local")]
        ) >= 1.0,
        "{m1}"
    );
    let log = mesh.z2.process.log_tail(200);
    assert!(log.contains("connection complete"), "no access-log line:\n{log}");
    let dump = mesh.z1.config_dump()?;
    assert!(dump.contains("spiffe://cluster.local/ns/default/sa/sleep"), "{dump}");
    Ok(())
}

#[test]
fn strict_peer_authentication_refuses_plaintext() -> anyhow::Result<()> {
    let mut mesh = Mesh::start("strict")?;
    let addr = mesh.server_addr();
    // The outsider pod is not in the mesh: its connection arrives as plaintext on 15006.
    let got = echo_roundtrip(mesh.outsider.tcp_connect(addr)?, b"hello")?;
    assert_eq!(got, b"hello", "PERMISSIVE (the default) must let plaintext through");

    mesh.apply(|c| {
        c.peer_authentications
            .push(serde_norway::from_str("{name: strict, namespace: default, mode: STRICT}").expect("yaml"));
    })?;
    assert!(echo_fails(&mesh.outsider, addr), "STRICT must refuse plaintext");
    let m = mesh.z2.metrics()?;
    assert!(
        metric(
            &m,
            "ambit_connections_refused_total",
            &[("listener", "inbound_plaintext"), ("reason", "strict_mtls")]
        ) >= 1.0,
        "{m}"
    );
    // Meshed traffic is still fine under STRICT.
    assert_eq!(echo_roundtrip(mesh.client.tcp_connect(addr)?, b"meshed")?, b"meshed");
    Ok(())
}

#[test]
fn deny_policy_blocks_and_lifting_it_applies_live() -> anyhow::Result<()> {
    let mut mesh = Mesh::start("deny")?;
    let addr = mesh.server_addr();
    assert_eq!(echo_roundtrip(mesh.client.tcp_connect(addr)?, b"before")?, b"before");

    let policy = ambit_testkit::mesh::deny_principals_policy("deny-sleep", "default", &[sleep_principal()])?;
    mesh.apply(|c| c.authorization_policies.push(policy))?;
    assert!(echo_fails(&mesh.client, addr), "DENY policy must block the client");
    let m2 = mesh.z2.metrics()?;
    assert!(
        metric(
            &m2,
            "ambit_connections_refused_total",
            &[("listener", "inbound_hbone"), ("reason", "policy_denied")]
        ) >= 1.0,
        "{m2}"
    );
    let m1 = mesh.z1.metrics()?;
    assert!(
        metric(&m1, "ambit_connections_refused_total", &[("reason", "hbone_denied")]) >= 1.0,
        "{m1}"
    );

    mesh.apply(|c| c.authorization_policies.clear())?;
    assert_eq!(echo_roundtrip(mesh.client.tcp_connect(addr)?, b"after")?, b"after");
    Ok(())
}

#[test]
fn a_bad_config_edit_is_reported_and_the_last_good_config_kept() -> anyhow::Result<()> {
    let mesh = Mesh::start("badcfg")?;
    std::fs::write(
        &mesh.files.config,
        "workloads:\n  - name: x\n    addresses: [not-an-ip]\n",
    )?;
    wait_until(Duration::from_secs(5), || {
        Ok(metric(
            &mesh.z1.metrics()?,
            "ambit_config_reloads_total",
            &[("result", "error")],
        ) >= 1.0)
    })?;
    let log = mesh.z1.process.log_tail(50);
    assert!(log.contains("not-an-ip"), "the error should name the bad value:\n{log}");
    assert_eq!(
        echo_roundtrip(mesh.client.tcp_connect(mesh.server_addr())?, b"still")?,
        b"still"
    );
    Ok(())
}

#[test]
fn a_hundred_concurrent_connections_share_one_hbone_connection() -> anyhow::Result<()> {
    let mesh = Mesh::start("pool")?;
    let streams: Vec<_> = (0..100)
        .map(|_| mesh.client.tcp_connect(mesh.server_addr()))
        .collect::<anyhow::Result<_>>()?;
    let handles: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            std::thread::spawn(move || -> anyhow::Result<std::net::TcpStream> {
                use std::io::{Read, Write};
                let msg = format!("conn-{i}");
                s.write_all(msg.as_bytes())?;
                let mut buf = vec![0; msg.len()];
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.read_exact(&mut buf)?;
                anyhow::ensure!(buf == msg.as_bytes(), "connection {i} got {buf:?}");
                Ok(s)
            })
        })
        .collect();
    let open: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(open.len(), 100);
    // All 100 are open at once; the server pod sees exactly one TCP connection on 15008.
    let ss = mesh
        .server
        .netns
        .exec(&["ss", "-Htn", "state", "established", "( sport = :15008 )"])?;
    assert_eq!(ss.lines().count(), 1, "HBONE connections into the server pod:\n{ss}");
    let m = mesh.z1.metrics()?;
    assert_eq!(metric(&m, "ambit_hbone_client_connections", &[]), 1.0, "{m}");
    assert!(metric(&m, "ambit_active_connections", &[]) >= 100.0, "{m}");
    Ok(())
}

#[test]
fn ztunnel_restart_fails_closed_then_recovers() -> anyhow::Result<()> {
    let mut mesh = Mesh::start("restart")?;
    let addr = mesh.server_addr();
    use std::io::{Read, Write};
    let mut open = mesh.client.tcp_connect(addr)?;
    open.write_all(b"a")?;
    let mut one = [0u8; 1];
    open.read_exact(&mut one)?;

    // SIGTERM drains: the open connection gets --drain-timeout (1 s), then is closed.
    let status = mesh.z1.process.stop(Duration::from_secs(10))?;
    assert!(status.success(), "ztunnel should exit cleanly after draining: {status}");
    open.set_read_timeout(Some(Duration::from_secs(5)))?;
    let closed = matches!(open.read(&mut one), Ok(0) | Err(_));
    assert!(closed, "an open connection must be closed once its ztunnel is gone");

    // While ztunnel is down the capture rules still apply: no plaintext bypass.
    assert!(
        echo_fails(&mesh.client, addr),
        "traffic must stop, not bypass, while ztunnel is down"
    );

    let files = mesh.files.clone();
    let node1 = mesh.node1.clone();
    mesh.z1 = mesh.net.spawn_ztunnel(&node1, &files, &["--config-poll", "100ms"])?;
    mesh.z1.wait_ready(Duration::from_secs(10))?;
    assert_eq!(echo_roundtrip(mesh.client.tcp_connect(addr)?, b"again")?, b"again");
    Ok(())
}

#[test]
fn certificates_rotate_at_half_life_without_dropping_open_connections() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut mesh = Mesh::start("rotate")?;
    // Restart node1's ztunnel with 4-second certificates.
    mesh.z1.process.stop(Duration::from_secs(10))?;
    let (files, node1) = (mesh.files.clone(), mesh.node1.clone());
    mesh.z1 = mesh
        .net
        .spawn_ztunnel(&node1, &files, &["--cert-ttl", "4s", "--config-poll", "100ms"])?;
    mesh.z1.wait_ready(Duration::from_secs(10))?;
    let addr = mesh.server_addr();
    let mut open = mesh.client.tcp_connect(addr)?;
    open.set_read_timeout(Some(Duration::from_secs(5)))?;
    let echo = |s: &mut std::net::TcpStream, msg: &[u8]| -> anyhow::Result<()> {
        s.write_all(msg)?;
        let mut buf = vec![0; msg.len()];
        s.read_exact(&mut buf)?;
        anyhow::ensure!(buf == msg, "echo mismatch");
        Ok(())
    };
    echo(&mut open, b"first")?;
    let not_after = |dump: &str| -> anyhow::Result<String> {
        let v: serde_json::Value = serde_json::from_str(dump)?;
        Ok(v["certificates"].to_string())
    };
    let before = not_after(&mesh.z1.config_dump()?)?;
    // Past half-life (2 s) a new connection gets a fresh certificate ...
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(echo_roundtrip(mesh.client.tcp_connect(addr)?, b"new")?, b"new");
    let after = not_after(&mesh.z1.config_dump()?)?;
    assert_ne!(before, after, "the certificate should have been re-issued");
    // ... and the connection opened under the first one outlives that certificate.
    std::thread::sleep(Duration::from_millis(2500));
    echo(&mut open, b"still open after expiry")?;
    Ok(())
}

/// A TLS client run from the outsider pod straight at the server pod's 15008.
async fn tls_to_hbone(
    mesh: &Mesh,
    cert: &WorkloadCertificate,
    trust: &TrustBundle,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = mesh.outsider.tcp_connect(SocketAddr::from((mesh.server.ip, 15008)))?;
    tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(tcp)?;
    let expected = [SpiffeId::new("cluster.local", "default", "echo")?];
    let config = tls::client_config(cert, trust, &expected)?;
    let mut stream = tokio_rustls::TlsConnector::from(config)
        .connect(tls::server_name(), tcp)
        .await?;
    // TLS 1.3: the server's verdict on our certificate arrives with its first flight of data.
    use tokio::io::AsyncWriteExt;
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    stream.flush().await?;
    let mut buf = [0u8; 9];
    use tokio::io::AsyncReadExt;
    stream.read_exact(&mut buf).await?;
    Ok(stream)
}

fn refused(mesh: &Mesh, reason: &str) -> f64 {
    metric(
        &mesh.z2.metrics().unwrap_or_default(),
        "ambit_connections_refused_total",
        &[("listener", "inbound_hbone"), ("reason", reason)],
    )
}

#[tokio::test(flavor = "current_thread")]
async fn peers_from_another_trust_domain_or_root_or_with_expired_certs_are_refused() -> anyhow::Result<()> {
    let mesh = Mesh::start("peers")?;
    let ca = ca(&mesh);
    let trust = ca.trust_bundle()?;

    let good = ca.issue(
        &SpiffeId::new("cluster.local", "default", "rogue")?,
        Duration::from_secs(600),
    )?;
    tls_to_hbone(&mesh, &good, &trust)
        .await
        .expect("a same-domain peer completes the handshake");

    let foreign = ca.issue(
        &SpiffeId::new("evil.local", "default", "sleep")?,
        Duration::from_secs(600),
    )?;
    assert!(
        tls_to_hbone(&mesh, &foreign, &trust).await.is_err(),
        "another trust domain must be refused"
    );

    let other_root = CertificateAuthority::generate("cluster.local")?;
    let stranger = other_root.issue(
        &SpiffeId::new("cluster.local", "default", "sleep")?,
        Duration::from_secs(600),
    )?;
    assert!(
        tls_to_hbone(&mesh, &stranger, &trust).await.is_err(),
        "another root must be refused"
    );

    let now = std::time::SystemTime::now();
    let expired = ca.issue_with_validity(
        &SpiffeId::new("cluster.local", "default", "sleep")?,
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    )?;
    assert!(
        tls_to_hbone(&mesh, &expired, &trust).await.is_err(),
        "an expired certificate must be refused"
    );

    // No client certificate at all.
    let tcp = mesh.outsider.tcp_connect(SocketAddr::from((mesh.server.ip, 15008)))?;
    tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(tcp)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der())?;
    let mut anon = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    anon.alpn_protocols = vec![b"h2".to_vec()];
    anon.dangerous().set_certificate_verifier(Arc::new(AcceptAnyServer));
    let anonymous = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(anon))
            .connect(tls::server_name(), tcp)
            .await?;
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 9];
        s.read_exact(&mut buf).await?;
        anyhow::Ok(())
    };
    assert!(
        anonymous.await.is_err(),
        "a client without a certificate must be refused"
    );

    wait_until(Duration::from_secs(5), || Ok(refused(&mesh, "tls_handshake") >= 4.0))?;
    Ok(())
}

/// The anonymous client above only tests the server's side; it trusts any server.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An h2 client over an authenticated HBONE connection, for hand-made requests.
async fn tls_stream(mesh: &Mesh) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let ca = ca(mesh);
    let cert = ca.issue(
        &SpiffeId::new("cluster.local", "default", "rogue")?,
        Duration::from_secs(600),
    )?;
    let tcp = mesh.outsider.tcp_connect(SocketAddr::from((mesh.server.ip, 15008)))?;
    tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(tcp)?;
    let config = tls::client_config(
        &cert,
        &ca.trust_bundle()?,
        &[SpiffeId::new("cluster.local", "default", "echo")?],
    )?;
    Ok(tokio_rustls::TlsConnector::from(config)
        .connect(tls::server_name(), tcp)
        .await?)
}

async fn raw_h2(mesh: &Mesh) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let (send, conn) = h2::client::handshake(tls_stream(mesh).await?).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn status_of(send: &mut h2::client::SendRequest<Bytes>, req: http::Request<()>) -> anyhow::Result<u16> {
    let mut ready = send.clone().ready().await?;
    let (response, _body) = ready.send_request(req, false)?;
    Ok(response.await?.status().as_u16())
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_connects_and_rapid_reset_floods_are_refused_and_counted() -> anyhow::Result<()> {
    let mesh = Mesh::start("badh2")?;
    let mut send = raw_h2(&mesh).await?;
    let target = mesh.server_addr();

    let get = http::Request::get(format!("http://{target}/")).body(())?;
    assert_eq!(status_of(&mut send, get).await?, 400, "GET must get 400");
    let elsewhere = http::Request::connect("10.244.2.200:8080").body(())?;
    assert_eq!(
        status_of(&mut send, elsewhere).await?,
        400,
        "a CONNECT to another pod must get 400"
    );
    let loopback = http::Request::connect(format!("{}:15006", mesh.server.ip)).body(())?;
    assert_eq!(
        status_of(&mut send, loopback).await?,
        503,
        "a CONNECT into ztunnel's own ports must get 503"
    );
    let no_listener = http::Request::connect(format!("{}:9", mesh.server.ip)).body(())?;
    assert_eq!(
        status_of(&mut send, no_listener).await?,
        503,
        "an unreachable app must get 503"
    );
    let good = http::Request::connect(target.to_string()).body(())?;
    assert_eq!(
        status_of(&mut send, good).await?,
        200,
        "a well-formed CONNECT to the pod must get 200"
    );
    assert!(refused(&mesh, "not_connect") >= 1.0);
    assert!(refused(&mesh, "target_not_local") >= 1.0);
    assert!(refused(&mesh, "upstream_unavailable") >= 1.0);
    assert!(refused(&mesh, "reserved_port") >= 1.0);

    // Rapid reset (CVE-2023-44487): HEADERS + RST_STREAM pairs written in one burst, as an
    // attacker would, below anything a client library would let us do.
    let mut tls = tls_stream(&mesh).await?;
    let flood = rapid_reset_frames(target, 10_000);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tls.write_all(&flood).await;
    let _ = tls.flush().await;
    let mut sink = vec![0u8; 64 * 1024];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = tls.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "ztunnel must hang up on a rapid-reset flood");
    let sent = 10_000;
    wait_until(Duration::from_secs(10), || Ok(refused(&mesh, "protocol_error") >= 1.0))
        .map_err(|e| e.context(format!("after {sent} reset streams")))?;
    // ztunnel is unharmed: a normal connection still works.
    assert_eq!(echo_roundtrip(mesh.client.tcp_connect(target)?, b"alive")?, b"alive");
    Ok(())
}

/// The client preface, an empty SETTINGS, then `count` streams each opened with a CONNECT
/// HEADERS frame and cancelled at once with RST_STREAM (RFC 9113 §4.1 frame layout).
fn rapid_reset_frames(target: SocketAddr, count: u32) -> Vec<u8> {
    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }
    // HPACK (RFC 7541): literal header field without indexing, name from the static table
    // (2 = :method, 1 = :authority); values are short enough for a one-byte length.
    let authority = target.to_string();
    let mut block = vec![0x02, 7];
    block.extend_from_slice(b"CONNECT");
    block.extend_from_slice(&[0x01, authority.len() as u8]);
    block.extend_from_slice(authority.as_bytes());
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    for i in 0..count {
        let stream = 2 * i + 1;
        frame(&mut out, 0x1, 0x4, stream, &block); // HEADERS, END_HEADERS
        frame(&mut out, 0x3, 0, stream, &0x8u32.to_be_bytes()); // RST_STREAM, CANCEL
    }
    out
}
