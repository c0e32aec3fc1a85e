use super::*;

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa).expect("id")
}

fn local(ttl: Duration) -> (CertificateAuthority, CertManager) {
    let ca = CertificateAuthority::generate("cluster.local").expect("ca");
    let trust = ca.trust_bundle().expect("trust");
    let again = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).expect("ca copy");
    (ca, CertManager::new(again, trust, ttl))
}

#[tokio::test]
async fn first_use_issues_and_later_uses_hit_the_cache() {
    let (_ca, certs) = local(Duration::from_secs(3600));
    let a = certs.server_config(&id("cart")).await.expect("server");
    let b = certs.server_config(&id("cart")).await.expect("server");
    assert!(Arc::ptr_eq(&a, &b));
    let c1 = certs.client_config(&id("cart"), &[id("db")]).await.expect("client");
    let c2 = certs.client_config(&id("cart"), &[id("db")]).await.expect("client");
    assert!(Arc::ptr_eq(&c1, &c2));
    let summaries = certs.summaries();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].identity, "spiffe://cluster.local/ns/shop/sa/cart");
}

#[tokio::test]
async fn certificates_are_renewed_in_the_background_at_half_life() {
    let (_ca, certs) = local(Duration::from_secs(4));
    certs.server_config(&id("cart")).await.expect("first");
    let first = certs.summaries().remove(0).not_after;
    // Half-life is 2 s after issuance; renewal is jittered at most 10% early.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let second = certs.summaries().remove(0).not_after;
    assert_ne!(first, second, "renewed without being used");
}

#[tokio::test]
async fn retain_forgets_identities_and_trust_reload_rebuilds_configs() {
    let (_ca, certs) = local(Duration::from_secs(3600));
    let before = certs.server_config(&id("cart")).await.expect("server");
    certs.server_config(&id("db")).await.expect("server");
    certs.retain(|i| *i == id("cart"));
    assert_eq!(certs.summaries().len(), 1);

    let other = CertificateAuthority::generate("cluster.local").expect("other");
    let dir = std::env::temp_dir().join(format!("ambit-certs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("roots.pem");
    let mut pem = certs.trust_bundle().to_pem();
    pem.push_str(&other.root_pem());
    std::fs::write(&path, pem).expect("write");
    assert!(certs.reload_trust_bundle(&path).expect("reload"));
    assert!(!certs.reload_trust_bundle(&path).expect("unchanged"));
    assert_eq!(certs.trust_bundle().roots().len(), 2);
    let after = certs.server_config(&id("cart")).await.expect("server");
    assert!(!Arc::ptr_eq(&before, &after), "config rebuilt with the new roots");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
