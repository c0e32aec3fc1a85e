//! The object store: every object as JSON keyed by group resource, namespace and name; the global
//! resourceVersion counter; the bounded change history watches resume from; and the broadcast
//! that live watches follow. Semantics of writes (defaulting, preconditions, cascades) live in
//! `write`; this module only stamps and records.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::resources::{GroupResource, Registry};
use crate::tokens::IssuedToken;

/// What a change did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as watches see it.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) gr: GroupResource,
    pub(crate) kind: ChangeKind,
    /// The object after the write (for deletions: its last state, stamped with the deletion's RV).
    pub(crate) object: Value,
    /// The object before the write, for modifications (selector transitions).
    pub(crate) old: Option<Value>,
}

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub(crate) type ObjectName = (String, String);

/// The identity of one server-side-apply field manager's last applied configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ApplyKey {
    pub(crate) gr: GroupResource,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) manager: String,
    pub(crate) status: bool,
}

/// All mutable state, behind one lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) registry: Registry,
    objects: BTreeMap<GroupResource, BTreeMap<ObjectName, Value>>,
    rv: u64,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Changes with a resourceVersion at or below this are no longer in `history`.
    compacted_rv: u64,
    changes: broadcast::Sender<Arc<Change>>,
    /// Last configuration each field manager applied, for the simplified server-side apply.
    pub(crate) applied: HashMap<ApplyKey, Value>,
    pub(crate) tokens: HashMap<String, IssuedToken>,
    pub(crate) next_cluster_ip: u32,
}

impl State {
    pub(crate) fn new(history_limit: usize) -> Self {
        let (changes, _) = broadcast::channel(history_limit.max(16));
        State {
            registry: Registry::new(),
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted_rv: 0,
            changes,
            applied: HashMap::new(),
            tokens: HashMap::new(),
            next_cluster_ip: 1,
        }
    }

    pub(crate) fn current_rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn compacted_rv(&self) -> u64 {
        self.compacted_rv
    }

    pub(crate) fn get(&self, gr: &GroupResource, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(gr)?.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Objects of `gr` in `namespace` (all namespaces if `None`), ordered by namespace then name.
    pub(crate) fn list<'a>(
        &'a self,
        gr: &GroupResource,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjectName, &'a Value)> + 'a {
        self.objects
            .get(gr)
            .into_iter()
            .flat_map(|objects| objects.iter())
            .filter(move |((ns, _), _)| namespace.is_none_or(|want| want == ns))
    }

    /// The group resources that currently hold at least one object.
    pub(crate) fn populated(&self) -> Vec<GroupResource> {
        self.objects
            .iter()
            .filter(|(_, objects)| !objects.is_empty())
            .map(|(gr, _)| gr.clone())
            .collect()
    }

    /// Stamps a new resourceVersion on `object`, stores it (or removes it for `Deleted`) and
    /// records the change. Returns the stored object.
    pub(crate) fn commit(&mut self, gr: &GroupResource, kind: ChangeKind, mut object: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".to_owned(), Value::String(rv.to_string()));
        }
        let key = object_name(&object);
        if kind == ChangeKind::Deleted {
            self.applied
                .retain(|k, _| !(k.gr == *gr && k.namespace == key.0 && k.name == key.1));
        }
        let objects = self.objects.entry(gr.clone()).or_default();
        let old = match kind {
            ChangeKind::Deleted => {
                objects.remove(&key);
                None
            }
            ChangeKind::Added | ChangeKind::Modified => objects.insert(key, object.clone()),
        };
        let change = Arc::new(Change {
            rv,
            gr: gr.clone(),
            kind,
            object: object.clone(),
            old,
        });
        self.record(change);
        object
    }

    fn record(&mut self, change: Arc<Change>) {
        if self.history.len() == self.history_limit
            && let Some(dropped) = self.history.pop_front()
        {
            self.compacted_rv = dropped.rv;
        }
        self.history.push_back(change.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Forgets all history up to now, as an etcd compaction would: watches resuming from any
    /// resourceVersion issued so far get `410 Gone`. Bumps the resourceVersion so that even a
    /// watcher that saw the latest change is too old.
    pub(crate) fn compact_all(&mut self) {
        self.rv += 1;
        self.history.clear();
        self.compacted_rv = self.rv;
    }

    /// The retained changes after `rv`, or `None` if some of them were compacted away.
    pub(crate) fn changes_since(&self, rv: u64) -> Option<Vec<Arc<Change>>> {
        if rv < self.compacted_rv {
            return None;
        }
        Some(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }
}

/// `(metadata.namespace, metadata.name)` of an object, empty strings where absent.
pub(crate) fn object_name(object: &Value) -> ObjectName {
    let field = |f: &str| {
        object
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (field("namespace"), field("name"))
}
