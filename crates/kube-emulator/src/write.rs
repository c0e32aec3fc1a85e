//! The write path shared by POST, PUT, PATCH and DELETE: identity checks, server-set metadata
//! (uid, creationTimestamp, generation, resourceVersion), optimistic concurrency, the status
//! subresource split, type-specific defaulting (namespaces, pods, services, CRDs, custom resources),
//! and finalizers. Deletion and its cascades live in `delete`.

use serde_json::{Map, Value, json};

use crate::clock::Clock;
use crate::crd;
use crate::delete;
use crate::error::{ApiError, qualified};
use crate::names;
use crate::resources::{Behavior, GroupResource, ResourceDef};
use crate::schema;
use crate::store::{ChangeKind, State, object_name};

/// How strictly unknown fields of custom resources are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// The group resource of namespaces.
pub(crate) fn namespaces() -> GroupResource {
    GroupResource {
        group: String::new(),
        resource: "namespaces".to_owned(),
    }
}

/// Checks `apiVersion`/`kind`, the namespace and (for updates) the name of a request body
/// against the URL, filling in what is missing.
pub(crate) fn check_identity(
    def: &ResourceDef,
    version: &str,
    namespace: &str,
    name: Option<&str>,
    body: &mut Value,
) -> Result<(), ApiError> {
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the body of the request is not a {} JSON object",
            def.kind
        )));
    };
    let api_version = def.api_version(version);
    for (field, expected) in [("apiVersion", api_version.as_str()), ("kind", def.kind.as_str())] {
        match object.get(field) {
            None => {
                object.insert(field.to_owned(), json!(expected));
            }
            Some(Value::String(given)) if given == expected => {}
            Some(given) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} in the body ({given}) does not match the expected {field} ({expected}) of {}",
                    qualified(&def.group, &def.plural)
                )));
            }
        }
    }
    let meta = object.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request("metadata must be a JSON object"));
    };
    if def.namespaced {
        match meta.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                meta.insert("namespace".to_owned(), json!(namespace));
            }
        }
    } else {
        meta.remove("namespace");
    }
    if let Some(url_name) = name {
        match meta.get("name").and_then(Value::as_str) {
            Some(given) if given != url_name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({given}) does not match the name on the URL ({url_name})"
                )));
            }
            _ => {
                meta.insert("name".to_owned(), json!(url_name));
            }
        }
    }
    Ok(())
}

/// Creates an object (POST, or a server-side apply of a missing object).
pub(crate) fn create(
    state: &mut State,
    clock: &Clock,
    def: &ResourceDef,
    version: &str,
    namespace: &str,
    mut body: Value,
    validation: FieldValidation,
) -> Result<Value, ApiError> {
    check_identity(def, version, namespace, None, &mut body)?;
    if def.namespaced && state.get(&namespaces(), "", namespace).is_none() {
        return Err(ApiError::not_found("", "namespaces", namespace));
    }
    let meta = metadata_mut(&mut body);
    if meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|rv| !rv.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let mut name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
    if name.is_empty() {
        let prefix = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if prefix.is_empty() {
            return Err(ApiError::invalid(
                &def.group,
                &def.kind,
                "",
                &[(
                    "metadata.name".to_owned(),
                    "Required value: name or generateName is required".to_owned(),
                )],
            ));
        }
        name = loop {
            let candidate = names::generate(&prefix);
            if state
                .get(&def.group_resource(), namespace_of(def, namespace), &candidate)
                .is_none()
            {
                break candidate;
            }
        };
        meta.insert("name".to_owned(), json!(name));
    }
    if state
        .get(&def.group_resource(), namespace_of(def, namespace), &name)
        .is_some()
    {
        return Err(ApiError::already_exists(&def.group, &def.plural, &name));
    }
    meta.insert("uid".to_owned(), json!(names::uid()));
    meta.insert("creationTimestamp".to_owned(), json!(clock.now_rfc3339()));
    for server_owned in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        meta.remove(server_owned);
    }
    if def.has_generation {
        meta.insert("generation".to_owned(), json!(1));
    } else {
        meta.remove("generation");
    }
    if def.status_subresource {
        let object = object_mut(&mut body);
        match def.behavior {
            Behavior::Pod => object.insert("status".to_owned(), json!({"phase": "Pending"})),
            Behavior::Namespace => object.insert("status".to_owned(), json!({"phase": "Active"})),
            _ => object.remove("status"),
        };
    }
    let mut object = default_and_validate(def, version, body, validation)?;
    if def.behavior == Behavior::Service {
        allocate_cluster_ip(state, &mut object);
    }
    if def.behavior == Behavior::CustomResourceDefinition {
        install_crd(state, clock, &mut object)?;
    }
    Ok(state.commit(&def.group_resource(), ChangeKind::Added, object))
}

/// Replaces an object (PUT), or only its status for the `status` subresource.
#[allow(clippy::too_many_arguments)]
pub(crate) fn update(
    state: &mut State,
    clock: &Clock,
    def: &ResourceDef,
    version: &str,
    namespace: &str,
    name: &str,
    mut body: Value,
    status_only: bool,
    validation: FieldValidation,
) -> Result<Value, ApiError> {
    check_identity(def, version, namespace, Some(name), &mut body)?;
    let current = state
        .get(&def.group_resource(), namespace_of(def, namespace), name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    replace(state, clock, def, version, &current, body, status_only, validation)
}

/// Writes `candidate` (a full object derived from `current` by PUT, PATCH or apply) over
/// `current`, keeping what the client may not change.
#[allow(clippy::too_many_arguments)]
pub(crate) fn replace(
    state: &mut State,
    clock: &Clock,
    def: &ResourceDef,
    version: &str,
    current: &Value,
    candidate: Value,
    status_only: bool,
    validation: FieldValidation,
) -> Result<Value, ApiError> {
    check_preconditions(
        def,
        current,
        candidate.pointer("/metadata/resourceVersion"),
        candidate.pointer("/metadata/uid"),
    )?;
    let mut next = if status_only {
        let mut next = current.clone();
        match candidate.get("status") {
            Some(status) => object_mut(&mut next).insert("status".to_owned(), status.clone()),
            None => object_mut(&mut next).remove("status"),
        };
        next
    } else {
        let mut next = candidate;
        let current_meta = current
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let meta = metadata_mut(&mut next);
        for kept in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match current_meta.get(kept) {
                Some(value) => meta.insert(kept.to_owned(), value.clone()),
                None => meta.remove(kept),
            };
        }
        meta.remove("managedFields");
        if def.status_subresource {
            match current.get("status") {
                Some(status) => object_mut(&mut next).insert("status".to_owned(), status.clone()),
                None => object_mut(&mut next).remove("status"),
            };
        }
        next
    };
    metadata_mut(&mut next).insert(
        "resourceVersion".to_owned(),
        current
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null),
    );
    next = default_and_validate(def, version, next, validation)?;
    if def.behavior == Behavior::Service {
        for field in ["clusterIP", "clusterIPs"] {
            if next.pointer(&format!("/spec/{field}")).is_none()
                && let (Some(ip), Some(spec)) = (
                    current.pointer(&format!("/spec/{field}")),
                    next.get_mut("spec").and_then(Value::as_object_mut),
                )
            {
                spec.insert(field.to_owned(), ip.clone());
            }
        }
    }
    if def.has_generation && spec_changed(def, current, &next) {
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        metadata_mut(&mut next).insert("generation".to_owned(), json!(generation));
    }
    if without_version(&next) == without_version(current) {
        return Ok(current.clone());
    }
    if def.behavior == Behavior::CustomResourceDefinition && !status_only {
        install_crd(state, clock, &mut next)?;
    }
    let finalized = next.pointer("/metadata/deletionTimestamp").is_some()
        && next
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    if finalized {
        return Ok(delete::remove_object(state, clock, &def.group_resource(), next, false));
    }
    Ok(state.commit(&def.group_resource(), ChangeKind::Modified, next))
}

pub(crate) fn check_preconditions(
    def: &ResourceDef,
    current: &Value,
    resource_version: Option<&Value>,
    uid: Option<&Value>,
) -> Result<(), ApiError> {
    let name = object_name(current).1;
    let current_rv = current
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if let Some(rv) = resource_version.and_then(Value::as_str).filter(|rv| !rv.is_empty())
        && rv != current_rv
    {
        return Err(ApiError::conflict(
            &def.group,
            &def.plural,
            &name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    let current_uid = current.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
    if let Some(uid) = uid.and_then(Value::as_str).filter(|u| !u.is_empty())
        && uid != current_uid
    {
        return Err(ApiError::conflict(
            &def.group,
            &def.plural,
            &name,
            &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {current_uid}"),
        ));
    }
    Ok(())
}

/// Type-specific defaulting and validation common to create and update.
fn default_and_validate(
    def: &ResourceDef,
    version: &str,
    mut object: Value,
    validation: FieldValidation,
) -> Result<Value, ApiError> {
    let name = object_name(&object).1;
    let mut causes = names::validate_metadata(def, &object);
    match def.behavior {
        Behavior::Namespace => {
            let meta = metadata_mut(&mut object);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".to_owned(), json!(name));
            }
            if object.pointer("/spec/finalizers").is_none() {
                object_mut(&mut object).insert("spec".to_owned(), json!({"finalizers": ["kubernetes"]}));
            }
        }
        Behavior::CustomResource => {
            if let Some(schema) = def.schemas.get(version) {
                let findings = schema::check_custom_resource(schema, &mut object);
                if validation == FieldValidation::Strict && !findings.unknown.is_empty() {
                    let fields: Vec<String> = findings
                        .unknown
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect();
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        fields.join(", ")
                    )));
                }
                causes.extend(findings.invalid);
            }
        }
        Behavior::CustomResourceDefinition => {
            if let Err(crd_causes) = crd::definition(&object) {
                causes.extend(crd_causes);
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(object)
    } else {
        Err(ApiError::invalid(&def.group, &def.kind, &name, &causes))
    }
}

fn install_crd(state: &mut State, clock: &Clock, crd_object: &mut Value) -> Result<(), ApiError> {
    let name = object_name(crd_object).1;
    let def = crd::definition(crd_object)
        .map_err(|causes| ApiError::invalid("apiextensions.k8s.io", "CustomResourceDefinition", &name, &causes))?;
    let status = crd::established_status(crd_object, &clock.now_rfc3339());
    object_mut(crd_object).insert("status".to_owned(), status);
    state.registry.install_custom(&name, def);
    Ok(())
}

fn allocate_cluster_ip(state: &mut State, service: &mut Value) {
    let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let service_type = spec
        .entry("type")
        .or_insert_with(|| json!("ClusterIP"))
        .as_str()
        .unwrap_or("")
        .to_owned();
    if service_type == "ExternalName" {
        return;
    }
    let ip = match spec.get("clusterIP").and_then(Value::as_str) {
        Some(ip) if !ip.is_empty() => ip.to_owned(),
        _ => {
            let n = state.next_cluster_ip;
            state.next_cluster_ip += 1;
            format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff)
        }
    };
    spec.insert("clusterIP".to_owned(), json!(ip));
    spec.insert("clusterIPs".to_owned(), json!([ip]));
    if ip != "None" {
        spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
        spec.entry("ipFamilyPolicy").or_insert_with(|| json!("SingleStack"));
    }
    spec.entry("sessionAffinity").or_insert_with(|| json!("None"));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert_with(|| json!("TCP"));
            if let Some(number) = port.get("port").cloned() {
                port.entry("targetPort").or_insert(number);
            }
        }
    }
    if let Some(object) = service.as_object_mut() {
        object.entry("status").or_insert_with(|| json!({"loadBalancer": {}}));
    }
}

fn spec_changed(def: &ResourceDef, before: &Value, after: &Value) -> bool {
    let strip = |object: &Value| {
        let mut object = object.clone();
        if let Some(map) = object.as_object_mut() {
            map.remove("metadata");
            if def.status_subresource {
                map.remove("status");
            }
        }
        object
    };
    strip(before) != strip(after)
}

fn without_version(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    object
}

pub(crate) fn namespace_of<'a>(def: &ResourceDef, namespace: &'a str) -> &'a str {
    if def.namespaced { namespace } else { "" }
}

/// The top-level map of an object that `check_identity` has already proven to be a map.
pub(crate) fn object_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    match object {
        Value::Object(map) => map,
        _ => unreachable!("replaced by an object above"),
    }
}

/// `metadata` of an object, created if missing.
pub(crate) fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    let map = object_mut(object);
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    match meta {
        Value::Object(meta) => meta,
        _ => unreachable!("replaced by an object above"),
    }
}
