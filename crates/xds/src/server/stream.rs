//! One client's delta ADS stream: its subscriptions per type URL (wildcard and explicit names,
//! as in Envoy's delta xDS), cursors into the store's change log, nonces and ACK/NACK handling.
//!
//! Responses are gathered from the store under its lock (the resources' encoded bytes, shared)
//! and encoded after; the stream never holds the lock across an await.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ambit_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::requests::Requests;
use super::response;
use super::store::{ResourceStore, Stored, TypeState};
use super::{ClientIdentity, Shared};

const WILDCARD: &str = "*";

/// A client's interest in one type URL.
#[derive(Debug)]
struct Subscription {
    wildcard: bool,
    names: HashSet<String>,
    /// The store generation this client has been sent up to.
    cursor: u64,
    /// Nonce of the latest response; ACKs and NACKs of older ones are stale.
    last_nonce: String,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// Why a stream ended, for the log.
type Outcome = Result<(), Status>;

/// Encoded resources (see [`response::encode_resource`]) and removed names, for one response.
type Delta = (Vec<Bytes>, Vec<String>);

/// Serves one stream until the client goes away, the response channel closes or the stream
/// falls behind the change log.
pub(super) async fn serve(
    shared: Arc<Shared>,
    identity: ClientIdentity,
    mut requests: Requests,
    tx: mpsc::Sender<Result<Bytes, Status>>,
) {
    let mut push = shared.push.clone();
    push.mark_unchanged();
    let mut conn = Connection {
        store: Arc::clone(&shared.store),
        shared: Arc::clone(&shared),
        identity,
        node: String::new(),
        subscriptions: HashMap::new(),
        nonce: 0,
        tx,
    };
    shared.metrics.connected.inc();
    let outcome = conn.run(&mut requests, &mut push).await;
    shared.metrics.connected.dec();
    match outcome {
        Ok(()) => tracing::debug!(client = %conn.identity.name, node = %conn.node, "xds stream closed"),
        Err(status) => {
            tracing::info!(client = %conn.identity.name, node = %conn.node, error = %status.message(), "xds stream ended");
            // The client may already be gone; nothing to do if it is.
            let _ = conn.tx.send(Err(status)).await;
        }
    }
}

struct Connection {
    store: Arc<ResourceStore>,
    shared: Arc<Shared>,
    identity: ClientIdentity,
    node: String,
    subscriptions: HashMap<String, Subscription>,
    nonce: u64,
    /// Encoded gRPC messages, for the response body.
    tx: mpsc::Sender<Result<Bytes, Status>>,
}

impl Connection {
    async fn run(&mut self, requests: &mut Requests, push: &mut watch::Receiver<u64>) -> Outcome {
        loop {
            tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => self.handle(request).await?,
                    Ok(None) => return Ok(()),
                    Err(status) => {
                        tracing::debug!(client = %self.identity.name, error = %status, "xds request stream error");
                        return Ok(());
                    }
                },
                changed = push.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("xds server shutting down"));
                    }
                    self.push_changes().await?;
                }
                () = self.tx.closed() => return Ok(()),
                () = self.shared.shutdown.cancelled() => return Err(Status::unavailable("xds server shutting down")),
            }
        }
    }

    async fn handle(&mut self, request: DeltaDiscoveryRequest) -> Outcome {
        if let Some(node) = &request.node
            && self.node.is_empty()
        {
            self.node = node.id.clone();
            tracing::info!(client = %self.identity.name, node = %self.node, "xds client connected");
        }
        let type_url = request.type_url;
        if type_url.is_empty() {
            return Err(Status::invalid_argument("DeltaDiscoveryRequest without type_url"));
        }
        if !request.response_nonce.is_empty() {
            self.acknowledge(&type_url, &request.response_nonce, request.error_detail.as_ref());
        }
        let response = {
            let types = self.store.lock();
            let empty = TypeState::default();
            let state = types.get(&type_url).unwrap_or(&empty);
            match self.subscriptions.get_mut(&type_url) {
                None => {
                    let (subscription, response) = initial(
                        state,
                        &request.resource_names_subscribe,
                        &request.initial_resource_versions,
                    );
                    self.subscriptions.insert(type_url.clone(), subscription);
                    Some(response)
                }
                Some(subscription) => update(
                    subscription,
                    state,
                    &request.resource_names_subscribe,
                    &request.resource_names_unsubscribe,
                ),
            }
        };
        match response {
            Some((resources, removed)) => self.send(&type_url, resources, removed, true).await,
            None => Ok(()),
        }
    }

    fn acknowledge(&self, type_url: &str, nonce: &str, error: Option<&ambit_proto::google::rpc::Status>) {
        let current = self.subscriptions.get(type_url).is_some_and(|s| s.last_nonce == nonce);
        match error {
            Some(error) => {
                self.shared.metrics.nack(type_url);
                tracing::warn!(
                    client = %self.identity.name, node = %self.node, type_url, nonce, current,
                    error = %error.message, "xds client rejected a response (NACK); it keeps its last good state"
                );
            }
            None => tracing::trace!(client = %self.identity.name, type_url, nonce, "xds ACK"),
        }
    }

    /// Sends every subscribed type's changes since its cursor.
    async fn push_changes(&mut self) -> Outcome {
        let mut responses = Vec::new();
        {
            let types = self.store.lock();
            for (type_url, subscription) in &mut self.subscriptions {
                let Some(state) = types.get(type_url) else { continue };
                if state.generation == subscription.cursor {
                    continue;
                }
                let Some(changes) = state.changes_since(subscription.cursor, |name| subscription.wants(name)) else {
                    self.shared.metrics.resets.inc();
                    return Err(Status::aborted(format!(
                        "xds stream fell behind the change log of {type_url}; reconnect to resync"
                    )));
                };
                subscription.cursor = state.generation;
                if changes.upserted.is_empty() && changes.removed.is_empty() {
                    continue;
                }
                let resources = changes.upserted.iter().map(|s| s.encoded.clone()).collect();
                let removed = changes.removed.iter().map(|n| n.to_string()).collect();
                responses.push((type_url.clone(), resources, removed));
            }
        }
        for (type_url, resources, removed) in responses {
            self.send(&type_url, resources, removed, false).await?;
        }
        Ok(())
    }

    async fn send(&mut self, type_url: &str, resources: Vec<Bytes>, removed: Vec<String>, always: bool) -> Outcome {
        if !always && resources.is_empty() && removed.is_empty() {
            return Ok(());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let message = response::encode_response(type_url, &nonce, &resources, &removed)?;
        self.shared.metrics.push(type_url, resources.len() + removed.len());
        // The message is a copy; the shared resource bytes are not held while it waits to be sent.
        drop(resources);
        if let Some(subscription) = self.subscriptions.get_mut(type_url) {
            subscription.last_nonce = nonce;
        }
        self.tx
            .send(Ok(message))
            .await
            .map_err(|_| Status::cancelled("xds client went away"))
    }
}

/// The first request of a type: wildcard when it names no resource or names `*`. The client's
/// `initial_resource_versions` say what it already holds: it gets what differs, and removals
/// for what it holds that no longer exists.
fn initial(state: &TypeState, subscribe: &[String], known: &HashMap<String, String>) -> (Subscription, Delta) {
    let wildcard = subscribe.is_empty() || subscribe.iter().any(|n| n == WILDCARD);
    let subscription = Subscription {
        wildcard,
        names: subscribe.iter().filter(|n| *n != WILDCARD).cloned().collect(),
        cursor: state.generation,
        last_nonce: String::new(),
    };
    let differs = |name: &str, stored: &Stored| known.get(name) != Some(&stored.version);
    let resources: Vec<Bytes> = if wildcard {
        state
            .resources
            .iter()
            .filter(|(name, stored)| differs(name, stored))
            .map(|(_, stored)| stored.encoded.clone())
            .collect()
    } else {
        subscription
            .names
            .iter()
            .filter_map(|name| state.resources.get(name.as_str()).map(|stored| (name, stored)))
            .filter(|(name, stored)| differs(name, stored))
            .map(|(_, stored)| stored.encoded.clone())
            .collect()
    };
    let removed = known
        .keys()
        .filter(|name| subscription.wants(name) && !state.resources.contains_key(name.as_str()))
        .cloned()
        .collect();
    (subscription, (resources, removed))
}

/// A later request: unsubscribe, then subscribe. Newly wanted names are sent at once (absent
/// ones as removals, so the client learns they do not exist); unsubscribed ones are forgotten
/// without a removal, as the client drops them itself.
fn update(
    subscription: &mut Subscription,
    state: &TypeState,
    subscribe: &[String],
    unsubscribe: &[String],
) -> Option<Delta> {
    for name in unsubscribe {
        if name == WILDCARD {
            subscription.wildcard = false;
        } else {
            subscription.names.remove(name);
        }
    }
    if subscribe.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    let mut removed = Vec::new();
    for name in subscribe {
        if name == WILDCARD {
            if !subscription.wildcard {
                subscription.wildcard = true;
                resources.extend(state.resources.values().map(|s| s.encoded.clone()));
            }
        } else if subscription.names.insert(name.clone()) && !subscription.wildcard {
            match state.resources.get(name.as_str()) {
                Some(stored) => resources.push(stored.encoded.clone()),
                None => removed.push(name.clone()),
            }
        }
    }
    // Whatever changed before now is covered by this response or by the cursor's next push.
    (!resources.is_empty() || !removed.is_empty()).then_some((resources, removed))
}
