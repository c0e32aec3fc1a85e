//! The real operator, in-process, against the in-memory Kubernetes API server
//! (`ambit-kube-emulator`), with the real `kubectl` for what a user would type: CRDs applied, the
//! pod index published over xDS as namespaces enroll and leave, status conditions written on
//! policies, the root ConfigMap published, leader election between two replicas, and the CA
//! authenticating ztunnels by TokenReview. Each test has its own emulator, operator(s) and
//! scratch directory. Fails loudly if kubectl is missing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambit_identity::SpiffeId;
use ambit_kube_emulator::{Emulator, EmulatorConfig};
use ambit_model::{Protocol, State};
use ambit_operator::app::{LEASE_NAME, Operator};
use ambit_operator::config::{Config, Source};
use ambit_xds::client::TokenSource;
use ambit_ztunnel::certs::{CaClient, CertError};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::Xds;

/// Upper bound for anything a test waits on: a failure guard, never a synchronisation point.
const GUARD: Duration = Duration::from_secs(20);
const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");

/// An emulator, a client of it, and a scratch directory holding a kubeconfig.
struct Cluster {
    emulator: Emulator,
    client: Client,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_max_level(tracing::Level::INFO)
            .try_init();
        let emulator = Emulator::start(EmulatorConfig::default()).expect("emulator starts");
        let dir = support::temp_dir();
        emulator
            .write_kubeconfig(dir.path().join("kubeconfig"))
            .expect("kubeconfig written");
        let client = Client::try_from(kube::Config::new(emulator.uri())).expect("client builds");
        Cluster { emulator, client, dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    async fn kubectl(&self, args: &[&str]) -> Output {
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output()
            .await
            .expect("kubectl must be installed and on PATH for these tests")
    }

    /// Runs kubectl, asserts success and returns stdout.
    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Runs kubectl, asserts failure and returns stderr.
    async fn kubectl_fails(&self, args: &[&str]) -> String {
        let output = self.kubectl(args).await;
        assert!(
            !output.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    async fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&args).await).expect("kubectl printed JSON")
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write manifest");
        path
    }

    /// The CRDs, and the namespaces `ambit-system` and `demo`, as a user would create them.
    async fn install(&self) {
        let applied = self.kubectl_ok(&["apply", "-f", CRDS]).await;
        assert!(
            applied.contains("customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.ambit.dev created"),
            "{applied}"
        );
        self.kubectl_ok(&["create", "namespace", "ambit-system"]).await;
        self.kubectl_ok(&["create", "namespace", "demo"]).await;
    }

    /// A pod on `node`; with `ip`, running with that pod IP.
    async fn pod(&self, namespace: &str, name: &str, service_account: &str, node: &str, ip: Option<&str>) -> Pod {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "nodeName": node,
                "serviceAccountName": service_account,
                "containers": [{"name": "app", "image": "example/app"}],
            },
        }))
        .expect("valid pod");
        let created = pods.create(&PostParams::default(), &pod).await.expect("pod created");
        let Some(ip) = ip else { return created };
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("pod status set")
    }

    async fn service_account(&self, namespace: &str, name: &str) {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).expect("valid");
        accounts
            .create(&PostParams::default(), &account)
            .await
            .expect("service account created");
    }

    /// A TokenRequest for the CA audience (`istio-ca`), bound to `pod` when given, valid 600 s.
    async fn token(&self, namespace: &str, service_account: &str, pod: Option<&Pod>) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let bound = pod.map(|pod| json!({"kind": "Pod", "apiVersion": "v1", "name": pod.name_any(), "uid": pod.uid()}));
        let request: TokenRequest = serde_json::from_value(json!({"spec": {
            "audiences": [ambit_operator::ca::DEFAULT_AUDIENCE],
            "expirationSeconds": 600,
            "boundObjectRef": bound,
        }}))
        .expect("valid token request");
        accounts
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .expect("token issued")
            .status
            .expect("token status")
            .token
    }

    /// The service account `ambit-system/ztunnel` and a ztunnel pod on `node`, and its token.
    async fn ztunnel_token(&self, node: &str) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), "ambit-system");
        if accounts.get_opt("ztunnel").await.expect("get sa").is_none() {
            self.service_account("ambit-system", "ztunnel").await;
        }
        let pod = self
            .pod("ambit-system", &format!("ztunnel-{node}"), "ztunnel", node, None)
            .await;
        self.token("ambit-system", "ztunnel", Some(&pod)).await
    }

    /// An operator configuration for this cluster: ephemeral ports, a fast lease.
    fn config(&self, pod_name: &str) -> Config {
        let source = Source::Kubernetes {
            kubeconfig: Some(self.kubeconfig()),
        };
        let state_dir = self.dir.path().join(format!("state-{pod_name}"));
        Config {
            lease_duration: Duration::from_secs(2),
            lease_retry: Duration::from_millis(100),
            debounce: Duration::from_millis(5),
            max_debounce: Duration::from_millis(50),
            ..support::config(source, state_dir, pod_name)
        }
    }

    async fn operator(&self, pod_name: &str) -> Operator {
        Operator::start(self.config(pod_name)).await.expect("operator starts")
    }

    /// Polls `check` until it returns `Some`, failing with `what` after [`GUARD`].
    async fn eventually<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {GUARD:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn lease_holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "ambit-system");
        leases
            .get_opt(LEASE_NAME)
            .await
            .expect("get lease")
            .and_then(|lease| lease.spec)
            .and_then(|spec| spec.holder_identity)
    }
}

/// A ztunnel's xDS client connected to an operator over TLS, publishing what it receives.
fn connect_xds(operator: &Operator, token: String) -> Xds {
    let mut config = support::xds_config(
        operator.grpc_addr(),
        "ztunnel~10.0.0.1~ztunnel-node-a.ambit-system~ambit-system.svc.cluster.local",
        operator.root_pem(),
        TokenSource::Callback(Arc::new(move || Ok(token.clone()))),
    );
    config.backoff_max = Duration::from_millis(500);
    Xds::spawn(config, GUARD)
}

fn protocol_of(state: &State, namespace: &str, name: &str) -> Option<Protocol> {
    state
        .workloads()
        .find(|w| w.namespace == namespace && w.name == name)
        .map(|w| w.protocol)
}

fn id(namespace: &str, service_account: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", namespace, service_account).expect("identity")
}

/// ztunnel's CA client for `operator`, presenting `token` (from a file, as ztunnel reads it).
fn ca_client(operator: &Operator, dir: &Path, token: &str) -> CaClient {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let token_path = dir.join(format!("token-{}", FILES.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&token_path, token).expect("token file");
    support::ca_client(operator, token_path, Duration::from_secs(600))
}

fn refused(result: Result<ambit_identity::WorkloadCertificate, CertError>) -> (tonic::Code, String) {
    match result {
        Err(CertError::Refused { code, message, .. }) => (code, message),
        Err(other) => panic!("expected a refusal from the CA, got {other}"),
        Ok(cert) => panic!(
            "expected a refusal from the CA, got a certificate for {}",
            cert.identity()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_served_over_xds_and_follow_namespace_enrollment() {
    let cluster = Cluster::start();
    cluster.install().await;
    cluster.service_account("demo", "web").await;
    cluster.pod("demo", "web", "web", "node-a", Some("10.1.0.5")).await;
    let token = cluster.ztunnel_token("node-a").await;
    let operator = cluster.operator("operator-0").await;
    let mut xds = connect_xds(&operator, token);

    xds.wait_for("demo/web as a TCP workload", |s| {
        protocol_of(s, "demo", "web") == Some(Protocol::Tcp)
    })
    .await;
    {
        let state = xds.state.borrow();
        let web = state
            .workloads()
            .find(|w| w.namespace == "demo" && w.name == "web")
            .expect("web");
        assert_eq!(web.node, "node-a");
        assert_eq!(web.service_account, "web");
        assert_eq!(web.addresses, vec!["10.1.0.5".parse::<std::net::IpAddr>().expect("ip")]);
    }

    cluster
        .kubectl_ok(&["label", "namespace", "demo", "ambit.dev/dataplane-mode=ambient"])
        .await;
    xds.wait_for("demo/web meshed (HBONE) after enrolling the namespace", |s| {
        protocol_of(s, "demo", "web") == Some(Protocol::Hbone)
    })
    .await;

    cluster
        .kubectl_ok(&["label", "namespace", "demo", "ambit.dev/dataplane-mode-"])
        .await;
    xds.wait_for("demo/web back to TCP after the label is removed", |s| {
        protocol_of(s, "demo", "web") == Some(Protocol::Tcp)
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "demo");
    pods.delete("web", &DeleteParams::default()).await.expect("pod deleted");
    xds.wait_for("demo/web gone after the pod is deleted", |s| {
        protocol_of(s, "demo", "web").is_none()
    })
    .await;

    let output = cluster.kubectl(&["get", "authorizationpolicies.ambit.dev", "-A"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("No resources found"), "{stderr}");

    xds.stop().await;
    operator.stop().await;
}

const VALID_POLICY: &str = "apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: allow-frontend
  namespace: demo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/demo/sa/frontend]
    to:
    - operation:
        ports: [\"8080\"]
";

const BAD_PORT_POLICY: &str = "apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: bad-port
  namespace: demo
spec:
  rules:
  - to:
    - operation:
        ports: [\"70000\"]
";

/// Passes the schema the emulator checks; breaks the CEL rule a real API server would enforce.
const DENY_WITHOUT_RULES: &str = "apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-nothing
  namespace: demo
spec:
  action: DENY
";

fn condition<'a>(policy: &'a Value, type_: &str) -> Option<&'a Value> {
    policy
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_refused_by_the_schema_or_marked_invalid_by_the_leader() {
    let cluster = Cluster::start();
    cluster.install().await;
    let operator = cluster.operator("operator-0").await;

    let bad_port = cluster.write("bad-port.yaml", BAD_PORT_POLICY);
    let stderr = cluster
        .kubectl_fails(&["apply", "-f", bad_port.to_str().expect("utf-8")])
        .await;
    assert!(
        stderr.contains("spec.rules[0].to[0].operation.ports[0]") && stderr.contains("70000"),
        "{stderr}"
    );

    let invalid = cluster.write("deny.yaml", DENY_WITHOUT_RULES);
    let valid = cluster.write("valid.yaml", VALID_POLICY);
    for path in [&invalid, &valid] {
        cluster
            .kubectl_ok(&["apply", "-f", path.to_str().expect("utf-8")])
            .await;
    }

    let denied = cluster
        .eventually("Accepted condition on demo/deny-nothing", || async {
            let policy = cluster
                .kubectl_json(&["get", "authorizationpolicies.ambit.dev", "-n", "demo", "deny-nothing"])
                .await;
            condition(&policy, "Accepted").is_some().then_some(policy)
        })
        .await;
    let accepted = condition(&denied, "Accepted").expect("condition");
    assert_eq!(accepted["status"], "False", "{accepted}");
    assert_eq!(accepted["reason"], "Invalid", "{accepted}");
    let message = accepted["message"].as_str().expect("message");
    assert!(message.contains("spec.rules"), "{message}");

    let allowed = cluster
        .eventually("Accepted condition on demo/allow-frontend", || async {
            let policy = cluster
                .kubectl_json(&["get", "authorizationpolicies.ambit.dev", "-n", "demo", "allow-frontend"])
                .await;
            condition(&policy, "Accepted").is_some().then_some(policy)
        })
        .await;
    let accepted = condition(&allowed, "Accepted").expect("condition");
    assert_eq!(accepted["status"], "True", "{accepted}");
    assert_eq!(
        accepted["observedGeneration"], allowed["metadata"]["generation"],
        "{allowed}"
    );
    assert!(allowed["metadata"]["generation"].is_i64(), "{allowed}");

    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_publishes_the_root_and_a_second_replica_takes_over_when_it_stops() {
    let cluster = Cluster::start();
    cluster.install().await;
    cluster.pod("demo", "web", "default", "node-a", Some("10.1.0.5")).await;
    let first = cluster.operator("operator-a").await;
    let root = first.root_pem().to_owned();

    cluster
        .eventually("operator-a holding the lease", || async {
            (cluster.lease_holder().await.as_deref() == Some("operator-a")).then_some(())
        })
        .await;

    let config_maps = |namespace: &str| -> Api<ConfigMap> { Api::namespaced(cluster.client.clone(), namespace) };
    let root_in = |namespace: String| {
        let api = config_maps(&namespace);
        async move {
            api.get_opt("ambit-root-cert")
                .await
                .expect("get configmap")
                .and_then(|cm| cm.data)
                .and_then(|data| data.get("root-cert.pem").cloned())
        }
    };
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let names: Vec<String> = namespaces
        .list(&Default::default())
        .await
        .expect("namespaces")
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(names.len() >= 6, "{names:?}");
    for namespace in names {
        let published = cluster
            .eventually(&format!("the root ConfigMap in {namespace}"), || {
                root_in(namespace.clone())
            })
            .await;
        assert_eq!(published, root, "root in {namespace}");
    }
    cluster.kubectl_ok(&["create", "namespace", "late"]).await;
    let published = cluster
        .eventually("the root ConfigMap in a namespace created after start", || {
            root_in("late".to_owned())
        })
        .await;
    assert_eq!(published, root);

    // A second replica: serves xDS with the same CA, but follows while the first renews.
    let token = cluster.ztunnel_token("node-a").await;
    let second = cluster.operator("operator-b").await;
    assert_eq!(second.root_pem(), root, "both replicas share the CA Secret");
    let mut xds = connect_xds(&second, token);
    xds.wait_for("the follower serving demo/web", |s| {
        protocol_of(s, "demo", "web").is_some()
    })
    .await;
    // Watch the lease across more than one lease duration of the follower retrying.
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "ambit-system");
    let observe_until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut renewals = std::collections::BTreeSet::new();
    while tokio::time::Instant::now() < observe_until {
        let lease = leases.get(LEASE_NAME).await.expect("lease");
        let spec = lease.spec.clone().expect("spec");
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some("operator-a"),
            "the follower took a live lease"
        );
        renewals.insert(lease.resource_version());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewals.len() > 3, "the leader kept renewing: {renewals:?}");

    first.stop().await;
    let holder = cluster.lease_holder().await;
    assert!(
        holder.is_none() || holder.as_deref() == Some("operator-b"),
        "stop released the lease rather than letting it expire: {holder:?}"
    );
    cluster
        .eventually("operator-b taking over the released lease", || async {
            (cluster.lease_holder().await.as_deref() == Some("operator-b")).then_some(())
        })
        .await;

    xds.stop().await;
    second.stop().await;
    assert_eq!(cluster.lease_holder().await, None, "stop releases the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_authorizes_ztunnels_by_token_review_and_pod_placement() {
    let cluster = Cluster::start();
    cluster.install().await;
    cluster.service_account("demo", "web").await;
    cluster.service_account("demo", "db").await;
    let web = cluster.pod("demo", "web", "web", "node-a", Some("10.1.0.5")).await;
    cluster.pod("demo", "db", "db", "node-b", Some("10.1.0.6")).await;
    let ztunnel_a = cluster.ztunnel_token("node-a").await;
    let web_token = cluster.token("demo", "web", Some(&web)).await;
    let operator = cluster.operator("operator-0").await;

    // The index knows both pods once the xDS state shows them.
    let mut xds = connect_xds(&operator, ztunnel_a.clone());
    xds.wait_for("demo/web and demo/db indexed", |s| {
        protocol_of(s, "demo", "web").is_some() && protocol_of(s, "demo", "db").is_some()
    })
    .await;
    xds.stop().await;

    let dir = cluster.dir.path();
    let ztunnel = ca_client(&operator, dir, &ztunnel_a);
    let cert = ztunnel
        .fetch(&id("demo", "web"))
        .await
        .expect("certificate for a pod on node-a");
    assert_eq!(cert.identity(), &id("demo", "web"));
    let chain_root = ambit_identity::TrustBundle::from_pem(operator.root_pem()).expect("root");
    assert_eq!(chain_root.roots().len(), 1);

    let (code, message) = refused(ztunnel.fetch(&id("demo", "db")).await);
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    assert!(
        message.contains("spiffe://cluster.local/ns/demo/sa/db") && message.contains("node-a"),
        "{message}"
    );

    // A workload's own token gets its own identity, never a neighbour's.
    let own = ca_client(&operator, dir, &web_token);
    own.fetch(&id("demo", "web")).await.expect("own identity");
    let (code, message) = refused(own.fetch(&id("demo", "db")).await);
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    assert!(message.contains("spiffe://cluster.local/ns/demo/sa/db"), "{message}");

    // A token nobody issued, then an expired one.
    let (code, message) = refused(ca_client(&operator, dir, "forged").fetch(&id("demo", "web")).await);
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    cluster.emulator.advance_clock(Duration::from_secs(601));
    let (code, message) = refused(ztunnel.fetch(&id("demo", "web")).await);
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("expired"), "{message}");

    operator.stop().await;
}
