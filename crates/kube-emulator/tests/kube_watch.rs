//! kube-rs watches against the emulator: raw watch events and bookmarks, `410` on a too-old
//! resourceVersion, kube-runtime watchers and reflectors (including streaming lists and relisting
//! after a compaction), Lease-based leader election, and TokenRequest/TokenReview.

use std::time::Duration;

use ambit_kube_emulator::{Emulator, EmulatorConfig};
use futures_util::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Upper bound for anything a test waits on: a failure guard, never a synchronisation point.
const GUARD: Duration = Duration::from_secs(20);

fn start() -> (Emulator, Client) {
    let emulator = Emulator::start(EmulatorConfig::default()).expect("emulator starts");
    let client = Client::try_from(kube::Config::new(emulator.uri())).expect("client builds");
    (emulator, client)
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "x"}}, "data": {"k": value}}))
        .expect("valid")
}

async fn next<S: futures_util::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(GUARD, stream.next())
        .await
        .expect("stream item in time")
        .expect("stream open")
}

#[tokio::test]
async fn raw_watch_sees_changes_selector_transitions_and_bookmarks() {
    let (_emulator, client) = start();
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let existing = maps
        .create(&PostParams::default(), &config_map("before", "0"))
        .await
        .expect("created");
    let from = existing.resource_version().expect("rv");
    let params = WatchParams::default().labels("app=x").timeout(30);
    let mut events = maps.watch(&params, &from).await.expect("watch").boxed();

    maps.create(&PostParams::default(), &config_map("a", "1"))
        .await
        .expect("created");
    maps.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "2"}})))
        .await
        .expect("patched");
    maps.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})),
    )
    .await
    .expect("relabelled");
    maps.delete("before", &DeleteParams::default()).await.expect("deleted");

    let mut seen = Vec::new();
    while seen.len() < 4 {
        match next(&mut events).await.expect("event") {
            WatchEvent::Added(cm) => seen.push(format!("ADDED {}", cm.name_any())),
            WatchEvent::Modified(cm) => seen.push(format!("MODIFIED {}", cm.name_any())),
            WatchEvent::Deleted(cm) => seen.push(format!("DELETED {}", cm.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(status) => panic!("unexpected error event {status:?}"),
        }
    }
    assert_eq!(seen, ["ADDED a", "MODIFIED a", "DELETED a", "DELETED before"]);
    loop {
        if let WatchEvent::Bookmark(bookmark) = next(&mut events).await.expect("event") {
            assert!(!bookmark.metadata.resource_version.is_empty());
            break;
        }
    }
}

#[tokio::test]
async fn too_old_resource_version_gets_410_expired() {
    let emulator = Emulator::start(EmulatorConfig {
        event_history: 3,
        ..EmulatorConfig::default()
    })
    .expect("starts");
    let client = Client::try_from(kube::Config::new(emulator.uri())).expect("client");
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let first = maps
        .create(&PostParams::default(), &config_map("first", "0"))
        .await
        .expect("created");
    for i in 0..5 {
        maps.create(&PostParams::default(), &config_map(&format!("m{i}"), "0"))
            .await
            .expect("created");
    }
    let mut events = maps
        .watch(&WatchParams::default(), &first.resource_version().expect("rv"))
        .await
        .expect("watch")
        .boxed();
    match next(&mut events).await.expect("event") {
        WatchEvent::Error(status) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 error event, got {other:?}"),
    }
}

#[tokio::test]
async fn reflector_follows_changes_and_relists_after_410() {
    let (emulator, client) = start();
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("one", "1"))
        .await
        .expect("created");
    let (reader, writer) = reflector::store();
    let mut events = reflector(writer, watcher(maps.clone(), watcher::Config::default())).boxed();

    let mut initialised = false;
    while !initialised {
        initialised = matches!(next(&mut events).await.expect("event"), watcher::Event::InitDone);
    }
    assert_eq!(reader.state().len(), 1);

    maps.create(&PostParams::default(), &config_map("two", "2"))
        .await
        .expect("created");
    while !matches!(next(&mut events).await, Ok(watcher::Event::Apply(ref cm)) if cm.name_any() == "two") {}
    maps.patch(
        "one",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "changed"}})),
    )
    .await
    .expect("patch");
    while !matches!(next(&mut events).await, Ok(watcher::Event::Apply(ref cm)) if cm.name_any() == "one") {}
    maps.delete("two", &DeleteParams::default()).await.expect("deleted");
    while !matches!(next(&mut events).await, Ok(watcher::Event::Delete(_))) {}
    let names = |reader: &reflector::Store<ConfigMap>| {
        let mut names: Vec<String> = reader.state().iter().map(|c| c.name_any()).collect();
        names.sort();
        names
    };
    assert_eq!(names(&reader), ["one"]);
    let one = reader
        .state()
        .into_iter()
        .find(|c| c.name_any() == "one")
        .expect("one cached");
    assert_eq!(
        one.data.as_ref().and_then(|d| d.get("k")).map(String::as_str),
        Some("changed")
    );

    // Compaction ends the watch; resuming from the last seen resourceVersion gets 410, and the
    // watcher relists, picking up a change made while it was not watching.
    emulator.expire_watch_history();
    maps.create(&PostParams::default(), &config_map("three", "3"))
        .await
        .expect("created");
    let mut saw_gone = false;
    loop {
        match next(&mut events).await {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => saw_gone = true,
            Ok(watcher::Event::Init) => break,
            Err(other) => panic!("unexpected watcher error {other}"),
            Ok(_) => {}
        }
    }
    assert!(saw_gone, "the relist was caused by a 410");
    while !matches!(next(&mut events).await, Ok(watcher::Event::InitDone)) {}
    assert_eq!(names(&reader), ["one", "three"]);
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_then_changes() {
    let (_emulator, client) = start();
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("one", "1"))
        .await
        .expect("created");
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher(maps.clone(), config).boxed();
    assert!(matches!(next(&mut events).await, Ok(watcher::Event::Init)));
    assert!(matches!(next(&mut events).await, Ok(watcher::Event::InitApply(ref cm)) if cm.name_any() == "one"));
    assert!(matches!(next(&mut events).await, Ok(watcher::Event::InitDone)));
    maps.create(&PostParams::default(), &config_map("two", "2"))
        .await
        .expect("created");
    assert!(matches!(next(&mut events).await, Ok(watcher::Event::Apply(ref cm)) if cm.name_any() == "two"));
}

/// One candidate's attempt to take or keep the lease, as a leader elector does it.
async fn try_lead(leases: &Api<Lease>, me: &str, now: i64) -> Result<bool, kube::Error> {
    let desired = |rv: Option<String>, transitions: i32| -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "ambit-operator", "resourceVersion": rv},
            "spec": {"holderIdentity": me, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
                "renewTime": format!("2030-01-01T00:00:{:02}.000000Z", now % 60)}
        }))
        .expect("valid lease")
    };
    let Some(current) = leases.get_opt("ambit-operator").await? else {
        return match leases.create(&PostParams::default(), &desired(None, 0)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(other) => Err(other),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    let renewed = spec.renew_time.map(|t| t.0.as_second() % 60).unwrap_or(0);
    let expired = now - renewed > i64::from(spec.lease_duration_seconds.unwrap_or(15));
    if holder != me && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != me);
    match leases
        .replace(
            "ambit-operator",
            &PostParams::default(),
            &desired(current.resource_version(), transitions),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(other) => Err(other),
    }
}

#[tokio::test]
async fn lease_leader_election_with_conflicts() {
    let (_emulator, client) = start();
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    assert!(try_lead(&leases, "a", 0).await.expect("a acquires"));
    assert!(!try_lead(&leases, "b", 1).await.expect("b waits"));
    assert!(try_lead(&leases, "a", 5).await.expect("a renews"));

    // Two replaces racing from the same read: the first changes the lease, the second gets 409.
    let read = leases.get("ambit-operator").await.expect("lease");
    let mut first = read.clone();
    first.spec.get_or_insert_default().lease_duration_seconds = Some(20);
    let mut second = read.clone();
    second.spec.get_or_insert_default().holder_identity = Some("b".to_owned());
    leases
        .replace("ambit-operator", &PostParams::default(), &first)
        .await
        .expect("first write wins");
    match leases.replace("ambit-operator", &PostParams::default(), &second).await {
        Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (409, "Conflict")),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // After the lease duration without renewal, b takes over.
    assert!(try_lead(&leases, "b", 30).await.expect("b takes over"));
    let lease = leases.get("ambit-operator").await.expect("lease").spec.expect("spec");
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));
}

#[tokio::test]
async fn token_request_and_review_with_pod_binding_audiences_and_expiry() {
    let (emulator, client) = start();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "ztunnel"}})).expect("valid");
    let account = accounts.create(&PostParams::default(), &account).await.expect("sa");
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-1"}})).expect("valid");
    let node = Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "zt-1"},
        "spec": {"nodeName": "node-1", "serviceAccountName": "ztunnel", "containers": [{"name": "c", "image": "i"}]}}))
    .expect("valid");
    let pod = pods.create(&PostParams::default(), &pod).await.expect("pod");

    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": ["ambit"], "expirationSeconds": 600,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "zt-1", "uid": pod.uid()}}}))
        .expect("valid");
    let issued = accounts
        .create_token_request("ztunnel", &PostParams::default(), &request)
        .await
        .expect("token");
    let token = issued.status.expect("status").token;

    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |token: &str, audiences: &[&str]| -> TokenReview {
        serde_json::from_value(json!({"spec": {"token": token, "audiences": audiences}})).expect("valid")
    };
    let reviewed = reviews
        .create(&PostParams::default(), &review(&token, &["ambit"]))
        .await
        .expect("review");
    let status = reviewed.status.expect("status");
    assert_eq!(status.authenticated, Some(true), "{:?}", status.error);
    let user = status.user.expect("user");
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:default:ztunnel"));
    assert_eq!(user.uid, account.uid());
    assert!(
        user.groups
            .unwrap_or_default()
            .contains(&"system:serviceaccounts:default".to_owned())
    );
    let extra = user.extra.expect("extra");
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], vec!["zt-1".to_owned()]);
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"],
        vec![pod.uid().expect("uid")]
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"],
        vec!["node-1".to_owned()]
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-uid"],
        vec![node.uid().expect("uid")]
    );
    assert_eq!(status.audiences, Some(vec!["ambit".to_owned()]));

    let authenticated = |review: TokenReview| review.status.and_then(|s| s.authenticated);
    let wrong_audience = reviews
        .create(&PostParams::default(), &review(&token, &["other"]))
        .await
        .expect("review");
    assert_eq!(authenticated(wrong_audience), Some(false));
    let garbage = reviews
        .create(&PostParams::default(), &review("not-a-token", &[]))
        .await
        .expect("review");
    assert_eq!(authenticated(garbage), Some(false));

    emulator.advance_clock(Duration::from_secs(601));
    let expired = reviews
        .create(&PostParams::default(), &review(&token, &["ambit"]))
        .await
        .expect("review");
    let expired = expired.status.expect("status");
    assert_eq!(expired.authenticated, Some(false));
    assert!(expired.error.unwrap_or_default().contains("expired"));

    let fresh = accounts
        .create_token_request("ztunnel", &PostParams::default(), &request)
        .await
        .expect("token");
    let fresh = fresh.status.expect("status").token;
    pods.delete("zt-1", &DeleteParams::default())
        .await
        .expect("pod deleted");
    let orphaned = reviews
        .create(&PostParams::default(), &review(&fresh, &["ambit"]))
        .await
        .expect("review");
    assert_eq!(authenticated(orphaned), Some(false), "tokens die with their pod");

    let short: TokenRequest = serde_json::from_value(json!({"spec": {"expirationSeconds": 60}})).expect("valid");
    match accounts
        .create_token_request("ztunnel", &PostParams::default(), &short)
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 422),
        other => panic!("expected 422, got {other:?}"),
    }
    let unbound = accounts
        .create_token_request("ztunnel", &PostParams::default(), &TokenRequest::default())
        .await
        .expect("token with default audiences");
    let unbound = unbound.status.expect("status").token;
    let default_audience = reviews
        .create(&PostParams::default(), &review(&unbound, &[]))
        .await
        .expect("review");
    assert_eq!(authenticated(default_audience), Some(true));
}
