//! A simplified server-side apply. The applied configuration is merged into the live object
//! (maps recursively, lists known to be keyed by [`list_merge_key`] element-wise, other lists
//! replaced), and fields this field manager applied last time but no longer applies are removed.
//! Not modelled: `managedFields`, field ownership across managers and therefore apply conflicts
//! (`force` is accepted and never needed), CRD `x-kubernetes-list-type` markers.

use serde_json::{Map, Value};

use crate::patch::list_merge_key;

/// Merges `applied` into `live` and removes what `previous` (this manager's last applied
/// configuration) set but `applied` no longer does.
pub(crate) fn apply_configuration(live: &mut Value, applied: &Value, previous: Option<&Value>) {
    if let Some(previous) = previous {
        remove_dropped(live, previous, applied);
    }
    merge(live, applied, "");
}

fn merge(live: &mut Value, applied: &Value, field: &str) {
    match (live, applied) {
        (Value::Object(live), Value::Object(applied)) => {
            for (key, value) in applied {
                if value.is_null() {
                    continue;
                }
                match live.get_mut(key) {
                    Some(existing) => merge(existing, value, key),
                    None => {
                        live.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(live), Value::Array(applied)) => match list_merge_key(field, applied) {
            Some(key) => {
                for item in applied {
                    let id = item.get(key);
                    match live.iter_mut().find(|e| id.is_some() && e.get(key) == id) {
                        Some(existing) => merge(existing, item, ""),
                        None => live.push(item.clone()),
                    }
                }
            }
            None => *live = applied.clone(),
        },
        (live, applied) => *live = applied.clone(),
    }
}

fn remove_dropped(live: &mut Value, previous: &Value, applied: &Value) {
    let (Some(live), Some(previous)) = (live.as_object_mut(), previous.as_object()) else {
        return;
    };
    let empty = Map::new();
    let applied = applied.as_object().unwrap_or(&empty);
    for (key, before) in previous {
        match applied.get(key) {
            None | Some(Value::Null) => {
                live.remove(key);
            }
            Some(now) => match (live.get_mut(key), before, now) {
                (Some(child @ Value::Object(_)), Value::Object(_), Value::Object(_)) => {
                    remove_dropped(child, before, now);
                }
                (Some(Value::Array(items)), Value::Array(before), Value::Array(now)) => {
                    if let Some(merge_key) = list_merge_key(key, before) {
                        let kept: Vec<&Value> = now.iter().filter_map(|e| e.get(merge_key)).collect();
                        let dropped: Vec<&Value> = before
                            .iter()
                            .filter_map(|e| e.get(merge_key))
                            .filter(|id| !kept.contains(id))
                            .collect();
                        items.retain(|e| e.get(merge_key).is_none_or(|id| !dropped.contains(&id)));
                    }
                }
                _ => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merges_and_removes_dropped_fields() {
        let mut live = json!({"metadata": {"labels": {"a": "1", "other": "x"}}, "spec": {"x": 1, "y": 2, "z": 3}});
        let first = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1, "y": 2}});
        apply_configuration(&mut live, &first, None);
        let second = json!({"metadata": {"labels": {"a": "2"}}, "spec": {"x": 5}});
        apply_configuration(&mut live, &second, Some(&first));
        assert_eq!(
            live,
            json!({"metadata": {"labels": {"a": "2", "other": "x"}}, "spec": {"x": 5, "z": 3}})
        );
    }

    #[test]
    fn keyed_lists_merge_by_key() {
        let mut live =
            json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "False"}]}});
        let applied = json!({"status": {"conditions": [{"type": "B", "status": "True"}]}});
        apply_configuration(&mut live, &applied, None);
        assert_eq!(
            live,
            json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}})
        );
        let dropped = json!({"status": {"conditions": []}});
        apply_configuration(&mut live, &dropped, Some(&applied));
        assert_eq!(
            live,
            json!({"status": {"conditions": [{"type": "A", "status": "True"}]}})
        );
    }
}
