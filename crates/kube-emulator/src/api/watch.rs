//! Watches: a streamed sequence of `{"type": ..., "object": ...}` lines. Starts from the
//! current state (`resourceVersion` unset or `0`, or `sendInitialEvents=true`, which ends the
//! initial ADDED events with the `k8s.io/initial-events-end` bookmark) or resumes from a
//! resourceVersion out of the bounded history; one that is too old gets an `ERROR` event with a
//! `410 Expired` Status, on which clients relist. Label/field selector transitions turn
//! modifications into ADDED/DELETED as on the real server. Ends on `timeoutSeconds`, when the
//! client goes away, when it falls too far behind, or when the emulator expires all watches.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::objects::{present, selectors};
use crate::error::ApiError;
use crate::resources::{GroupResource, ResourceDef};
use crate::route::Query;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::{Body, Shared};
use crate::store::{Change, ChangeKind};

/// Which objects a watch follows and how it presents them.
struct Filter {
    def: Arc<ResourceDef>,
    gr: GroupResource,
    version: String,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        self.namespace.as_deref().is_none_or(|want| want == namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event this watch sees for `change`, if any.
    fn event(&self, change: &Change) -> Option<Bytes> {
        if change.gr != self.gr {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.old.as_ref().is_some_and(|old| self.matches(old));
        let kind = match (change.kind, before, now) {
            (ChangeKind::Added, _, true) => "ADDED",
            (ChangeKind::Modified, true, true) => "MODIFIED",
            (ChangeKind::Modified, false, true) => "ADDED",
            (ChangeKind::Modified, true, false) => "DELETED",
            (ChangeKind::Deleted, _, true) => "DELETED",
            _ => return None,
        };
        Some(self.line(kind, change.object.clone()))
    }

    fn line(&self, kind: &str, object: Value) -> Bytes {
        let object = present(&self.def, &self.version, object);
        Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object =
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(&self.version), "metadata": metadata});
        Bytes::from(format!("{}\n", json!({"type": "BOOKMARK", "object": object})))
    }
}

/// Starts a watch and returns its streaming response.
pub(super) fn serve(
    shared: &Arc<Shared>,
    def: Arc<ResourceDef>,
    version: &str,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(&def, query)?;
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    let name = def.plural.clone();
    if send_initial && (query.get("resourceVersionMatch") != Some("NotOlderThan") || !bookmarks) {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            &name,
            &[(
                "sendInitialEvents".to_owned(),
                "Forbidden: sendInitialEvents requires allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan"
                    .to_owned(),
            )],
        ));
    }
    let timeout = match query.get("timeoutSeconds") {
        None | Some("") => None,
        Some(text) => {
            Some(Duration::from_secs(text.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds \"{text}\""))
            })?))
        }
    };
    let filter = Filter {
        gr: def.group_resource(),
        def,
        version: version.to_owned(),
        namespace: namespace.map(str::to_owned),
        labels,
        fields,
    };
    let requested = query.get("resourceVersion").unwrap_or("");
    let mut opening = Vec::new();
    let (changes, start_rv) = {
        let state = shared.state();
        let current = state.current_rv();
        if send_initial || requested.is_empty() || requested == "0" {
            for (_, object) in state.list(&filter.gr, filter.namespace.as_deref()) {
                if filter.matches(object) {
                    opening.push(filter.line("ADDED", object.clone()));
                }
            }
            if send_initial {
                opening.push(filter.bookmark(current, true));
            }
        } else {
            let from: u64 = requested
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion \"{requested}\"")))?;
            match state.changes_since(from) {
                Some(changes) => opening.extend(changes.iter().filter_map(|c| filter.event(c))),
                None => {
                    let status =
                        ApiError::expired(format!("too old resource version: {from} ({})", state.compacted_rv()))
                            .to_status();
                    opening.push(Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": status}))));
                    return Ok(stream_response(spawn_fixed(opening)));
                }
            }
        }
        (state.subscribe(), current)
    };
    let (tx, rx) = mpsc::channel(64);
    let settings = Settings {
        bookmarks,
        interval: shared.bookmark_interval,
        deadline: timeout.map(|t| Instant::now() + t),
        epoch: shared.watch_epoch.subscribe(),
    };
    tokio::spawn(follow(tx, opening, changes, filter, start_rv, settings));
    Ok(stream_response(rx))
}

struct Settings {
    bookmarks: bool,
    interval: Duration,
    deadline: Option<Instant>,
    epoch: watch::Receiver<u64>,
}

fn spawn_fixed(lines: Vec<Bytes>) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(lines.len().max(1));
    for line in lines {
        // Capacity covers every line, so this cannot fail.
        let _ = tx.try_send(line);
    }
    rx
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let frames = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn follow(
    tx: mpsc::Sender<Bytes>,
    opening: Vec<Bytes>,
    mut changes: broadcast::Receiver<Arc<Change>>,
    filter: Filter,
    mut last_rv: u64,
    mut settings: Settings,
) {
    for line in opening {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let mut ticker = tokio::time::interval_at(Instant::now() + settings.interval, settings.interval);
    let deadline = settings.deadline;
    loop {
        // Biased: once all watches are expired, no further change may slip out before the end.
        let line = tokio::select! {
            biased;
            _ = settings.epoch.changed() => return,
            _ = tx.closed() => return,
            _ = sleep_until(deadline), if deadline.is_some() => return,
            change = changes.recv() => match change {
                Ok(change) => {
                    last_rv = change.rv;
                    match filter.event(&change) {
                        Some(line) => line,
                        None => continue,
                    }
                }
                // Lagged or closed: end the stream; the client resumes from its last
                // resourceVersion (or relists after a 410).
                Err(_) => return,
            },
            _ = ticker.tick(), if settings.bookmarks => filter.bookmark(last_rv, false),
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
