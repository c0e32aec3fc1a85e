//! DELETE and what follows from it: finalizers holding an object with a `deletionTimestamp`,
//! the response body (object or `Status`, per type), and cascades: a namespace's contents, a
//! CRD's custom resources and served type, and dependents by `ownerReferences` whose owners are
//! all gone (background propagation; `Orphan` honoured).

use serde_json::{Value, json};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::resources::{Behavior, GroupResource, ResourceDef};
use crate::store::{ChangeKind, State, object_name};
use crate::write::{check_preconditions, metadata_mut, namespace_of, object_mut};

/// Deletes an object (DELETE). Returns the response body: the object while finalizers hold it or
/// for types that return it, otherwise a success `Status`.
pub(crate) fn delete(
    state: &mut State,
    clock: &Clock,
    def: &ResourceDef,
    namespace: &str,
    name: &str,
    options: &Value,
) -> Result<Value, ApiError> {
    let gr = def.group_resource();
    let current = state
        .get(&gr, namespace_of(def, namespace), name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    check_preconditions(
        def,
        &current,
        options.pointer("/preconditions/resourceVersion"),
        options.pointer("/preconditions/uid"),
    )?;
    let has_finalizers = current
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(current);
        }
        let mut marked = current;
        let meta = metadata_mut(&mut marked);
        meta.insert("deletionTimestamp".to_owned(), json!(clock.now_rfc3339()));
        meta.insert("deletionGracePeriodSeconds".to_owned(), json!(0));
        return Ok(state.commit(&gr, ChangeKind::Modified, marked));
    }
    let orphan = options.get("propagationPolicy").and_then(Value::as_str) == Some("Orphan")
        || options.get("orphanDependents").and_then(Value::as_bool) == Some(true);
    let uid = current.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
    let mut removed = remove_object(state, clock, &gr, current, orphan);
    if !def.returns_deleted_object {
        let mut details = json!({"name": name, "group": def.group, "kind": def.plural, "uid": uid});
        if def.group.is_empty()
            && let Some(d) = details.as_object_mut()
        {
            d.remove("group");
        }
        return Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
        );
    }
    if def.behavior == Behavior::Namespace {
        metadata_mut(&mut removed).insert("deletionTimestamp".to_owned(), json!(clock.now_rfc3339()));
        object_mut(&mut removed).insert("status".to_owned(), json!({"phase": "Terminating"}));
    }
    Ok(removed)
}

/// Removes an object now, then what it takes with it: a namespace's contents, a CRD's custom
/// resources and served type, and (unless `orphan`) dependents whose owners are all gone.
pub(crate) fn remove_object(
    state: &mut State,
    clock: &Clock,
    gr: &GroupResource,
    object: Value,
    orphan: bool,
) -> Value {
    let removed = state.commit(gr, ChangeKind::Deleted, object);
    let (_, name) = object_name(&removed);
    let behavior = state.registry.find_group_resource(gr).map(|d| d.behavior);
    match behavior {
        Some(Behavior::Namespace) => {
            for contained in state.populated() {
                let names: Vec<Value> = state.list(&contained, Some(&name)).map(|(_, o)| o.clone()).collect();
                for object in names {
                    remove_object(state, clock, &contained, object, false);
                }
            }
        }
        Some(Behavior::CustomResourceDefinition) => {
            if let Some(def) = state.registry.remove_custom(&name) {
                let custom = def.group_resource();
                let objects: Vec<Value> = state.list(&custom, None).map(|(_, o)| o.clone()).collect();
                for object in objects {
                    state.commit(&custom, ChangeKind::Deleted, object);
                }
            }
        }
        _ => {}
    }
    if !orphan && let Some(uid) = removed.pointer("/metadata/uid").and_then(Value::as_str) {
        collect_dependents(state, clock, uid);
    }
    removed
}

fn collect_dependents(state: &mut State, clock: &Clock, owner_uid: &str) {
    let mut dependents = Vec::new();
    for gr in state.populated() {
        for (_, object) in state.list(&gr, None) {
            let owners = object.pointer("/metadata/ownerReferences").and_then(Value::as_array);
            let uids: Vec<&str> = owners
                .into_iter()
                .flatten()
                .filter_map(|o| o.get("uid")?.as_str())
                .collect();
            if uids.contains(&owner_uid) {
                let others: Vec<String> = uids
                    .iter()
                    .filter(|u| **u != owner_uid)
                    .map(|u| (*u).to_owned())
                    .collect();
                dependents.push((gr.clone(), object.clone(), others));
            }
        }
    }
    for (gr, object, other_owners) in dependents {
        if other_owners.iter().any(|uid| uid_exists(state, uid)) {
            continue;
        }
        let (namespace, name) = object_name(&object);
        let Some(current) = state.get(&gr, &namespace, &name).cloned() else {
            continue;
        };
        let finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if !finalizers {
            remove_object(state, clock, &gr, current, false);
        } else if current.pointer("/metadata/deletionTimestamp").is_none() {
            let mut marked = current;
            metadata_mut(&mut marked).insert("deletionTimestamp".to_owned(), json!(clock.now_rfc3339()));
            state.commit(&gr, ChangeKind::Modified, marked);
        }
    }
}

fn uid_exists(state: &State, uid: &str) -> bool {
    state.populated().iter().any(|gr| {
        state
            .list(gr, None)
            .any(|(_, o)| o.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid))
    })
}
