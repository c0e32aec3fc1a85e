//! Server-side printing: `meta.k8s.io/v1` `Table` responses for clients that ask for
//! `as=Table` (kubectl get). Columns are Name, a few type-specific ones, and Age; custom
//! resources get their CRD's `additionalPrinterColumns` (simple `.a.b` JSON paths only) instead
//! of Age, as the real server does.

use serde_json::{Value, json};

use crate::clock::{human_age, parse_rfc3339};
use crate::resources::{Behavior, PrinterColumn, ResourceDef};

/// Whether an `Accept` header asks for a `Table`.
pub(super) fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

fn column(name: &str, column_type: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": column_type, "format": format, "description": description, "priority": priority})
}

fn columns(def: &ResourceDef) -> Vec<PrinterColumn> {
    let builtin = |name: &str, path: &str| PrinterColumn {
        name: name.to_owned(),
        column_type: "string".to_owned(),
        json_path: path.to_owned(),
        description: String::new(),
        priority: 0,
    };
    let age = PrinterColumn {
        name: "Age".to_owned(),
        column_type: "date".to_owned(),
        json_path: ".metadata.creationTimestamp".to_owned(),
        description: "CreationTimestamp is a timestamp representing the server time when this object was created."
            .to_owned(),
        priority: 0,
    };
    let mut columns = match (def.behavior, def.plural.as_str()) {
        (Behavior::CustomResource, _) if !def.printer_columns.is_empty() => return def.printer_columns.clone(),
        (Behavior::Namespace, _) | (Behavior::Pod, _) => vec![builtin("Status", ".status.phase")],
        (Behavior::Service, _) => vec![builtin("Type", ".spec.type"), builtin("Cluster-IP", ".spec.clusterIP")],
        (_, "nodes") => vec![builtin("Version", ".status.nodeInfo.kubeletVersion")],
        _ => Vec::new(),
    };
    columns.push(age);
    columns
}

/// A `Table` of `objects` (already filtered and paginated); `list_meta` is the list's metadata.
pub(super) fn table(def: &ResourceDef, objects: &[Value], list_meta: Value, include_object: &str, now: i64) -> Value {
    let columns = columns(def);
    let mut definitions = vec![column(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    )];
    definitions.extend(
        columns
            .iter()
            .map(|c| column(&c.name, &c.column_type, "", &c.description, c.priority)),
    );
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut cells = vec![object.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            cells.extend(columns.iter().map(|c| cell(object, c, now)));
            let mut row = json!({"cells": cells});
            match include_object {
                "None" => {}
                "Object" => row["object"] = object.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    });
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

fn cell(object: &Value, column: &PrinterColumn, now: i64) -> Value {
    let pointer: String = column
        .json_path
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| format!("/{s}"))
        .collect();
    let Some(value) = object.pointer(&pointer) else {
        return Value::Null;
    };
    if column.column_type == "date"
        && let Some(then) = value.as_str().and_then(parse_rfc3339)
    {
        return json!(human_age(now - then));
    }
    match value {
        Value::Object(_) | Value::Array(_) => json!(value.to_string()),
        other => other.clone(),
    }
}
