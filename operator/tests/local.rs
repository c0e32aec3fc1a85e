//! The real operator in local mode (a directory of manifests instead of an API server), in
//! process on loopback, observed through ztunnel's own xDS client and CA client: what a file
//! says reaches ztunnel's `State`, bad documents are skipped without losing anything, the CA
//! signs only for pods of the caller's node, certificates renew, and a restart keeps the root.
//!
//! Every wait is on a watch channel or an endpoint, with a deadline that fails with what was seen.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ambit_identity::{SpiffeId, TrustBundle};
use ambit_model::{Protocol, State};
use ambit_operator::app::Operator;
use ambit_operator::config::{Config, Source};
use ambit_xds::client::TokenSource;
use ambit_ztunnel::certs::{CaClient, CertError, CertManager};
use support::{Xds, dump, http_get};

/// How long any expected change may take; far above the 50 ms poll and 100 ms debounce.
const DEADLINE: Duration = Duration::from_secs(10);
const ZTUNNEL_TOKEN: &str = "ztunnel-node-a-token";

/// A temp dir holding `manifests/`, `state/`, the bootstrap token file and the client token files.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    fn new() -> Layout {
        let dir = support::temp_dir();
        std::fs::create_dir(dir.path().join("manifests")).expect("manifests dir");
        std::fs::create_dir(dir.path().join("state")).expect("state dir");
        std::fs::write(
            dir.path().join("tokens.yaml"),
            format!(
                "tokens:\n  - token: {ZTUNNEL_TOKEN}\n    namespace: ambit-system\n    serviceAccount: ztunnel\n    node: node-a\n"
            ),
        )
        .expect("token file");
        std::fs::write(dir.path().join("ztunnel.token"), ZTUNNEL_TOKEN).expect("ztunnel token");
        std::fs::write(dir.path().join("unknown.token"), "nobody-issued-this").expect("unknown token");
        Layout { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, grpc_addr: SocketAddr) -> Config {
        let source = Source::Directory {
            path: self.path("manifests"),
            poll: Duration::from_millis(50),
            bootstrap_tokens: self.path("tokens.yaml"),
        };
        Config {
            grpc_addr,
            ..support::config(source, self.path("state"), "operator-test")
        }
    }

    /// Writes a manifest atomically: a hidden temp file (which the scanner ignores), renamed.
    fn write_manifest(&self, name: &str, text: &str) {
        let temp = self.path(&format!("manifests/.{name}.tmp"));
        std::fs::write(&temp, text).expect("write manifest");
        std::fs::rename(&temp, self.path(&format!("manifests/{name}"))).expect("rename manifest");
    }
}

async fn start(config: Config) -> Operator {
    Operator::start(config).await.expect("operator starts")
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn namespace(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        "\n  labels:\n    ambit.dev/dataplane-mode: ambient"
    } else {
        ""
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n")
}

/// A running pod; there is no kubelet, so the node and IP are in the manifest.
fn pod(name: &str, ip: &str, app: &str, node: &str, service_account: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  uid: uid-{name}
  labels:
    app: {app}
spec:
  nodeName: {node}
  serviceAccountName: {service_account}
  containers:
    - name: app
      image: example/app
      ports:
        - name: http
          containerPort: 8080
status:
  phase: Running
  podIP: {ip}
  podIPs:
    - ip: {ip}
"
    )
}

const CART_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: cart
  namespace: shop
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector:
    app: cart
  ports:
    - name: http
      port: 80
      targetPort: 8080
      protocol: TCP
";

fn documents(documents: &[&str]) -> String {
    documents.join("---\n")
}

/// The shop namespace (enrolled or not), the cart Service and two cart pods on node-a.
fn shop(ambient: bool) -> String {
    shop_with(
        ambient,
        &[
            &pod("cart-1", "10.0.0.11", "cart", "node-a", "cart"),
            &pod("cart-2", "10.0.0.12", "cart", "node-a", "cart"),
        ],
    )
}

/// The shop namespace (enrolled or not) and the cart Service, then `rest`.
fn shop_with(ambient: bool, rest: &[&str]) -> String {
    let namespace = namespace("shop", ambient);
    let mut all = vec![namespace.as_str(), CART_SERVICE];
    all.extend_from_slice(rest);
    documents(&all)
}

/// ztunnel's xDS client, connected to `operator` over TLS with the node-a ztunnel token.
fn connect_ztunnel(layout: &Layout, grpc_addr: SocketAddr, root_pem: &str) -> Xds {
    let mut config = support::xds_config(
        grpc_addr,
        "ztunnel~10.0.0.1~ztunnel-a.ambit-system~ambit-system.svc.cluster.local",
        root_pem,
        TokenSource::File(layout.path("ztunnel.token")),
    );
    // Reconnects quickly after an operator restart.
    config.backoff_max = Duration::from_millis(200);
    Xds::spawn(config, DEADLINE)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// The workload of pod `shop/name` has exactly `address` and `protocol`.
fn has_workload(state: &State, name: &str, address: &str, protocol: Protocol) -> bool {
    state
        .workload_by_name("shop", name)
        .is_some_and(|w| w.addresses == [ip(address)] && w.protocol == protocol && w.node == "node-a")
}

/// The names of the endpoints of the service at `vip`:80, sorted; `None` without that service.
fn endpoints_of(state: &State, vip: &str) -> Option<Vec<String>> {
    let (service, _) = state.service_by_vip(SocketAddr::new(ip(vip), 80))?;
    let mut names: Vec<String> = state.endpoints(service).iter().map(|w| w.name.clone()).collect();
    names.sort();
    Some(names)
}

/// Polls `path` until `check` accepts the response; fails with the last response.
async fn wait_http(addr: SocketAddr, path: &str, what: &str, check: impl Fn(u16, &str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (code, body) = http_get(addr, path).await;
        if check(code, &body) {
            return body;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{path} never showed {what} within {DEADLINE:?}; last response {code}:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of an unlabelled counter or gauge in an OpenMetrics text body.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

const MANIFEST_ERRORS: &str = "ambit_operator_manifest_errors_total";

#[tokio::test]
async fn manifest_changes_reach_ztunnel() {
    let layout = Layout::new();
    layout.write_manifest("10-shop.yaml", &shop(true));
    let operator = start(layout.config(any_port())).await;
    let mut ztunnel = connect_ztunnel(&layout, operator.grpc_addr(), operator.root_pem());

    let state = ztunnel
        .wait_for("both cart pods meshed and behind the cart VIP", |s| {
            has_workload(s, "cart-1", "10.0.0.11", Protocol::Hbone)
                && has_workload(s, "cart-2", "10.0.0.12", Protocol::Hbone)
                && endpoints_of(s, "10.96.0.10").is_some_and(|e| e == ["cart-1", "cart-2"])
        })
        .await;
    let cart = state
        .service_by_hostname("cart.shop.svc.cluster.local")
        .expect("cart by hostname");
    assert_eq!(cart.vips, [ip("10.96.0.10")], "{}", dump(&state));
    let cart_1 = state.workload_by_name("shop", "cart-1").expect("cart-1");
    assert_eq!(cart_1.service_account, "cart");
    assert_eq!(cart_1.spiffe_id(), "spiffe://cluster.local/ns/shop/sa/cart");

    // cart-2 moves to another IP and out of the service's selector.
    layout.write_manifest(
        "10-shop.yaml",
        &shop_with(
            true,
            &[
                &pod("cart-1", "10.0.0.11", "cart", "node-a", "cart"),
                &pod("cart-2", "10.0.0.22", "other", "node-a", "cart"),
            ],
        ),
    );
    let state = ztunnel
        .wait_for("cart-2 at its new IP and out of the cart service", |s| {
            has_workload(s, "cart-2", "10.0.0.22", Protocol::Hbone)
                && endpoints_of(s, "10.96.0.10").is_some_and(|e| e == ["cart-1"])
        })
        .await;
    assert!(
        state.workload_by_ip(ip("10.0.0.12")).is_none(),
        "old IP still known:\n{}",
        dump(&state)
    );

    // cart-2 is deleted from the file.
    layout.write_manifest(
        "10-shop.yaml",
        &shop_with(true, &[&pod("cart-1", "10.0.0.11", "cart", "node-a", "cart")]),
    );
    ztunnel
        .wait_for("cart-2 gone", |s| {
            s.workload_by_name("shop", "cart-2").is_none() && has_workload(s, "cart-1", "10.0.0.11", Protocol::Hbone)
        })
        .await;

    // The namespace leaves the mesh: its pods are still addresses, but plain TCP.
    layout.write_manifest(
        "10-shop.yaml",
        &shop_with(false, &[&pod("cart-1", "10.0.0.11", "cart", "node-a", "cart")]),
    );
    ztunnel
        .wait_for("cart-1 as TCP after un-enrolling the namespace", |s| {
            has_workload(s, "cart-1", "10.0.0.11", Protocol::Tcp)
        })
        .await;

    ztunnel.stop().await;
    operator.stop().await;
}

#[tokio::test]
async fn bad_documents_are_skipped_and_counted_without_losing_anything() {
    let layout = Layout::new();
    layout.write_manifest("10-shop.yaml", &shop(true));
    let operator = start(layout.config(any_port())).await;
    let monitoring = operator.monitoring_addr();
    let mut ztunnel = connect_ztunnel(&layout, operator.grpc_addr(), operator.root_pem());
    ztunnel
        .wait_for("both cart pods", |s| {
            has_workload(s, "cart-1", "10.0.0.11", Protocol::Hbone)
                && has_workload(s, "cart-2", "10.0.0.12", Protocol::Hbone)
        })
        .await;

    let malformed = "apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n";
    let bad_port = "apiVersion: v1
kind: Service
metadata:
  name: bad-port
  namespace: shop
spec:
  clusterIP: 10.96.0.20
  selector:
    app: cart
  ports:
    - port: eighty
";
    let custom_action = "apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: custom
  namespace: shop
spec:
  action: CUSTOM
";
    // Parses, but a DENY policy without rules breaks a validation rule (spec.rules).
    let deny_nothing = "apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-nothing
  namespace: shop
spec:
  action: DENY
";
    layout.write_manifest(
        "20-more.yaml",
        &documents(&[
            malformed,
            bad_port,
            custom_action,
            deny_nothing,
            &pod("cart-3", "10.0.0.13", "cart", "node-a", "cart"),
        ]),
    );
    let state = ztunnel
        .wait_for("the good pod of the bad file", |s| {
            has_workload(s, "cart-3", "10.0.0.13", Protocol::Hbone)
        })
        .await;
    assert!(
        has_workload(&state, "cart-1", "10.0.0.11", Protocol::Hbone),
        "{}",
        dump(&state)
    );
    assert!(
        has_workload(&state, "cart-2", "10.0.0.12", Protocol::Hbone),
        "{}",
        dump(&state)
    );
    assert!(
        state.service_by_hostname("bad-port.shop.svc.cluster.local").is_none(),
        "{}",
        dump(&state)
    );

    wait_http(monitoring, "/metrics", "at least 3 manifest errors", |code, body| {
        code == 200 && metric(body, MANIFEST_ERRORS).is_some_and(|n| n >= 3.0)
    })
    .await;
    let statuses = wait_http(
        monitoring,
        "/debug/status",
        "deny-nothing not accepted",
        |code, body| code == 200 && body.contains("shop/deny-nothing"),
    )
    .await;
    let statuses: serde_json::Value = serde_json::from_str(&statuses).expect("/debug/status is JSON");
    let entry = statuses
        .as_array()
        .expect("a list of statuses")
        .iter()
        .find(|s| s["object"].as_str().is_some_and(|o| o.ends_with("shop/deny-nothing")))
        .unwrap_or_else(|| panic!("no status of deny-nothing: {statuses:#}"));
    let accepted = entry["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap_or_else(|| panic!("no Accepted condition: {entry:#}"));
    assert_eq!(accepted["status"], false, "{entry:#}");
    assert!(
        accepted["message"].as_str().is_some_and(|m| m.contains("spec.rules")),
        "the message should name the field: {entry:#}"
    );
    assert!(
        !statuses.to_string().contains("shop/custom"),
        "an undecodable document reached the index: {statuses:#}"
    );

    // A valid policy in a later scan: once it is at ztunnel, the invalid one would have been too.
    layout.write_manifest(
        "30-policy.yaml",
        "apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: allow-shop
  namespace: shop
spec:
  action: ALLOW
  rules:
    - from:
        - source:
            namespaces: [shop]
",
    );
    let state = ztunnel
        .wait_for("the valid allow-shop policy", |s| {
            s.policies().any(|p| p.name == "allow-shop")
        })
        .await;
    let policies: Vec<&str> = state.policies().map(|p| p.name.as_str()).collect();
    assert_eq!(policies, ["allow-shop"], "only valid policies reach ztunnel");

    // Breaking a document of the first file keeps its last good version; the rest of the file
    // still applies (cart-1 changes IP in the same edit).
    layout.write_manifest(
        "10-shop.yaml",
        &shop_with(
            true,
            &[
                &pod("cart-1", "10.0.0.31", "cart", "node-a", "cart"),
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cart-2\n  namespace: shop\nspec: [not, a, pod\n",
            ],
        ),
    );
    let state = ztunnel
        .wait_for("cart-1 at its new IP", |s| {
            has_workload(s, "cart-1", "10.0.0.31", Protocol::Hbone)
        })
        .await;
    assert!(
        has_workload(&state, "cart-2", "10.0.0.12", Protocol::Hbone),
        "cart-2 lost: {}",
        dump(&state)
    );
    assert!(
        has_workload(&state, "cart-3", "10.0.0.13", Protocol::Hbone),
        "cart-3 lost: {}",
        dump(&state)
    );
    wait_http(monitoring, "/metrics", "a 4th manifest error", |code, body| {
        code == 200 && metric(body, MANIFEST_ERRORS).is_some_and(|n| n >= 4.0)
    })
    .await;

    ztunnel.stop().await;
    operator.stop().await;
}

fn ca_client(layout: &Layout, operator: &Operator, token: &str, ttl: Duration) -> CaClient {
    support::ca_client(operator, layout.path(token), ttl)
}

fn identity(service_account: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", service_account).expect("identity")
}

/// The shop namespace with cart on node-a and pay on node-b.
fn two_nodes() -> String {
    documents(&[
        &namespace("shop", true),
        &pod("cart-1", "10.0.0.11", "cart", "node-a", "cart"),
        &pod("pay-1", "10.0.1.11", "pay", "node-b", "pay"),
    ])
}

#[tokio::test]
async fn ca_signs_only_for_pods_of_the_callers_node() {
    let layout = Layout::new();
    layout.write_manifest("10-shop.yaml", &two_nodes());
    let operator = start(layout.config(any_port())).await;
    // Ready means the first scan is in the index, which the CA asks about pod placement.
    wait_http(operator.monitoring_addr(), "/readyz", "200", |code, _| code == 200).await;
    let client = ca_client(&layout, &operator, "ztunnel.token", Duration::from_secs(3600));

    let cart = identity("cart");
    let cert = client.fetch(&cart).await.expect("a certificate for cart, on node-a");
    assert_eq!(cert.identity(), &cart);
    let (_, leaf) = x509_parser::parse_x509_certificate(&cert.chain()[0]).expect("leaf parses");
    let root_der = pem::parse(operator.root_pem()).expect("root PEM");
    let (_, root) = x509_parser::parse_x509_certificate(root_der.contents()).expect("root parses");
    assert_eq!(leaf.issuer(), root.subject(), "signed by the operator's root");
    let lifetime = cert.not_after().duration_since(SystemTime::now()).expect("not expired");
    assert!(
        lifetime > Duration::from_secs(3000) && lifetime <= Duration::from_secs(3600),
        "{lifetime:?}"
    );

    let pay = identity("pay");
    match client.fetch(&pay).await {
        Err(CertError::Refused { code, message, .. }) => {
            assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
            assert!(
                message.contains(&pay.to_string()) && message.contains("node-a"),
                "the refusal should name the identity and the node: {message}"
            );
        }
        other => panic!(
            "pay runs on node-b, yet node-a's ztunnel got {:?}",
            other.map(|c| c.identity().clone())
        ),
    }

    let stranger = ca_client(&layout, &operator, "unknown.token", Duration::from_secs(3600));
    match stranger.fetch(&cart).await {
        Err(CertError::Refused { code, message, .. }) => {
            assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
            assert!(message.contains("unknown bootstrap token"), "{message}");
        }
        other => panic!("an unknown token got {:?}", other.map(|c| c.identity().clone())),
    }

    operator.stop().await;
}

#[tokio::test]
async fn ztunnel_renews_a_short_lived_certificate_at_half_life() {
    let layout = Layout::new();
    layout.write_manifest("10-shop.yaml", &two_nodes());
    let mut config = layout.config(any_port());
    config.cert_ttl = Duration::from_secs(4);
    config.max_cert_ttl = Duration::from_secs(4);
    let operator = start(config).await;
    wait_http(operator.monitoring_addr(), "/readyz", "200", |code, _| code == 200).await;
    // Asks for an hour; the operator caps it at 4 s.
    let client = ca_client(&layout, &operator, "ztunnel.token", Duration::from_secs(3600));
    let trust = TrustBundle::from_pem(operator.root_pem()).expect("trust bundle");
    let certs = CertManager::remote(client, trust);

    let cart = identity("cart");
    let issued = tokio::time::Instant::now();
    certs.server_config(&cart).await.expect("first certificate");
    let first = certs.summaries();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].identity, cart.to_string());
    let first_not_after = first[0].not_after.clone();

    // Renewal is due ~2 s after issue; allow the full deadline before calling it missing.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let renewed = loop {
        let now = certs.summaries();
        if let Some(summary) = now.iter().find(|s| s.identity == cart.to_string())
            && summary.not_after != first_not_after
        {
            break summary.not_after.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal within {DEADLINE:?} of a 4 s certificate; still {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = issued.elapsed();
    // Half of the lifetime, at most 10% early for jitter, well before expiry. X.509 times are
    // whole seconds, so a "4 s" certificate lives between 3 and 4 s: half-life is 1.35 s at least.
    assert!(
        after >= Duration::from_millis(1300) && after < Duration::from_millis(3000),
        "renewed after {after:?}, not at half-life"
    );
    assert!(
        renewed > first_not_after,
        "renewed {renewed} should outlive {first_not_after}"
    );
    // The renewed certificate serves handshakes.
    certs.server_config(&cart).await.expect("renewed certificate");

    drop(certs);
    operator.stop().await;
}

#[tokio::test]
async fn a_restarted_operator_keeps_its_root_and_ztunnel_reconnects() {
    let layout = Layout::new();
    layout.write_manifest("10-shop.yaml", &shop(true));
    // The client's endpoint is fixed, so both operators listen on the same port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let first = start(layout.config(port)).await;
    let root = first.root_pem().to_owned();
    let root_file = std::fs::read_to_string(layout.path("state/root-cert.pem")).expect("root-cert.pem written");
    assert_eq!(root_file.trim(), root.trim(), "root-cert.pem is the serving root");
    let mut ztunnel = connect_ztunnel(&layout, port, &root);
    ztunnel
        .wait_for("both cart pods", |s| {
            has_workload(s, "cart-1", "10.0.0.11", Protocol::Hbone)
                && has_workload(s, "cart-2", "10.0.0.12", Protocol::Hbone)
        })
        .await;
    assert_eq!(ztunnel.status.borrow().connects, 1);
    first.stop().await;

    // While no operator runs, cart-2 goes and cart-3 comes.
    layout.write_manifest(
        "10-shop.yaml",
        &shop_with(
            true,
            &[
                &pod("cart-1", "10.0.0.11", "cart", "node-a", "cart"),
                &pod("cart-3", "10.0.0.13", "cart", "node-a", "cart"),
            ],
        ),
    );
    let second = start(layout.config(port)).await;
    assert_eq!(second.root_pem(), root, "the CA must survive a restart");
    let state = ztunnel
        .wait_for("the second operator's view", |s| {
            has_workload(s, "cart-3", "10.0.0.13", Protocol::Hbone)
                && s.workload_by_name("shop", "cart-2").is_none()
                && endpoints_of(s, "10.96.0.10").is_some_and(|e| e == ["cart-1", "cart-3"])
        })
        .await;
    assert!(
        has_workload(&state, "cart-1", "10.0.0.11", Protocol::Hbone),
        "{}",
        dump(&state)
    );
    assert!(ztunnel.status.borrow().connects >= 2, "{:?}", *ztunnel.status.borrow());

    ztunnel.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let layout = Layout::new();
    layout.write_manifest("10-shop.yaml", &shop(true));
    let operator = start(layout.config(any_port())).await;
    let monitoring = operator.monitoring_addr();
    let (code, body) = http_get(monitoring, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    wait_http(monitoring, "/readyz", "200 after the first scan", |code, _| code == 200).await;
    let metrics = wait_http(monitoring, "/metrics", "the shop workloads", |code, body| {
        code == 200 && metric(body, "ambit_operator_workloads").is_some_and(|n| n == 2.0)
    })
    .await;
    assert_eq!(metric(&metrics, MANIFEST_ERRORS), Some(0.0), "{metrics}");
    let (code, _) = http_get(monitoring, "/no-such-page").await;
    assert_eq!(code, 404);
    operator.stop().await;
}

#[tokio::test]
async fn a_missing_manifest_directory_stops_the_start() {
    let layout = Layout::new();
    let mut config = layout.config(any_port());
    let missing: &Path = &layout.path("no-such-dir");
    config.source = Source::Directory {
        path: missing.to_path_buf(),
        poll: Duration::from_millis(50),
        bootstrap_tokens: layout.path("tokens.yaml"),
    };
    let error = match Operator::start(config).await {
        Ok(operator) => {
            operator.stop().await;
            panic!("started on a missing manifest directory");
        }
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("no-such-dir"),
        "the error should name the directory: {error}"
    );
}
