//! Field ownership of server-side apply (`metadata.managedFields`): whether the live object
//! already is what applying the desired object would make it. Pure: no I/O.
//!
//! Server-side apply records, per field manager, the set of fields its last apply set. When
//! pbsync's set is exactly the desired object's fields and each holds the desired value,
//! applying again changes nothing: no field to set, none to remove. A fresh process (a CLI
//! run, a restarted daemon) then needs no dry-run to know an object is unchanged. Any doubt
//! (another manager took a field, a list element cannot be matched, a value differs in any
//! way) answers "not known", and the caller asks the server with a dry-run.

use serde_json::{Map, Value};

use super::client::FIELD_MANAGER;
use pbsync_core::ownership::REVISION_ANNOTATION;

/// True when applying `desired` to `live` as field manager `pbsync` is known to change
/// nothing (the revision annotation aside, which the plan ignores too).
pub(super) fn already_applied(live: &Value, desired: &Value) -> bool {
    let Some(entries) = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return false;
    };
    let mut ours = entries.iter().filter(|e| {
        e.get("manager").and_then(Value::as_str) == Some(FIELD_MANAGER)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
    });
    let (Some(entry), None) = (ours.next(), ours.next()) else {
        return false;
    };
    if entry.get("apiVersion") != desired.get("apiVersion")
        || entry.get("fieldsType").and_then(Value::as_str) != Some("FieldsV1")
    {
        return false;
    }
    let Some(projected) = entry.get("fieldsV1").and_then(|f| project(live, f)) else {
        return false;
    };
    comparable(projected) == comparable(desired.clone())
}

/// The part of `value` that the field set `fields` (FieldsV1) covers; `None` when the set
/// does not fit the value (which makes the caller fall back to a dry-run).
fn project(value: &Value, fields: &Value) -> Option<Value> {
    let fields = fields.as_object()?;
    if fields.is_empty() {
        // A leaf: the manager owns the whole value (a scalar, an atomic list or map).
        return Some(value.clone());
    }
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, sub) in fields {
                if k == "." {
                    continue;
                }
                let name = k.strip_prefix("f:")?;
                out.insert(name.to_string(), project(map.get(name)?, sub)?);
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => {
            let mut picked: Vec<(usize, Value)> = Vec::new();
            for (k, sub) in fields {
                if k == "." {
                    continue;
                }
                if let Some(key) = k.strip_prefix("k:") {
                    let key: Map<String, Value> = serde_json::from_str(key).ok()?;
                    let i = items.iter().position(|item| {
                        key.iter()
                            .all(|(kf, kv)| item.get(kf).is_some_and(|v| v == kv))
                    })?;
                    picked.push((i, project(&items[i], sub)?));
                } else if let Some(v) = k.strip_prefix("v:") {
                    let v: Value = serde_json::from_str(v).ok()?;
                    let i = items.iter().position(|item| *item == v)?;
                    picked.push((i, v));
                } else {
                    return None;
                }
            }
            picked.sort_by_key(|(i, _)| *i);
            Some(Value::Array(picked.into_iter().map(|(_, v)| v).collect()))
        }
        _ => None,
    }
}

/// The object without what field sets never track (apiVersion, kind, name, namespace) and
/// without the revision annotation; empty maps left behind removed.
fn comparable(mut v: Value) -> Value {
    if let Some(root) = v.as_object_mut() {
        root.remove("apiVersion");
        root.remove("kind");
        if let Some(meta) = root.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("name");
            meta.remove("namespace");
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove(REVISION_ANNOTATION);
            }
            meta.retain(|_, v| !v.as_object().is_some_and(Map::is_empty));
        }
        root.retain(|_, v| !v.as_object().is_some_and(Map::is_empty));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired() -> Value {
        json!({
            "apiVersion": "spectrocloud.com/v1beta1",
            "kind": "WorkloadProfile",
            "metadata": {
                "name": "app", "namespace": "team",
                "labels": {"app.kubernetes.io/managed-by": "pbsync", "pbsync.dev/instance": "blue"},
                "annotations": {"pbsync.dev/source": "a.yaml", REVISION_ANNOTATION: "new"},
            },
            "spec": {"type": "Application", "workload": {"components": [{"name": "main", "type": "web"}]}},
        })
    }

    fn live() -> Value {
        json!({
            "apiVersion": "spectrocloud.com/v1beta1",
            "kind": "WorkloadProfile",
            "metadata": {
                "name": "app", "namespace": "team", "resourceVersion": "7", "uid": "u",
                "labels": {"app.kubernetes.io/managed-by": "pbsync", "pbsync.dev/instance": "blue", "team": "x"},
                "annotations": {"pbsync.dev/source": "a.yaml", REVISION_ANNOTATION: "old"},
                "managedFields": [
                    {"manager": "pbsync", "operation": "Apply", "apiVersion": "spectrocloud.com/v1beta1", "fieldsType": "FieldsV1",
                     "fieldsV1": {
                        "f:metadata": {
                            "f:annotations": {"f:pbsync.dev/revision": {}, "f:pbsync.dev/source": {}},
                            "f:labels": {"f:app.kubernetes.io/managed-by": {}, "f:pbsync.dev/instance": {}},
                        },
                        "f:spec": {"f:type": {}, "f:workload": {"f:components": {}}},
                     }},
                    {"manager": "kubectl-edit", "operation": "Update", "apiVersion": "spectrocloud.com/v1beta1", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}},
                ],
            },
            "spec": {"type": "Application", "provider": "defaulted", "workload": {"components": [{"name": "main", "type": "web"}]}},
        })
    }

    #[test]
    fn an_object_pbsync_last_applied_as_desired_is_known_unchanged() {
        // Other managers' fields, server defaults and the revision do not matter.
        assert!(already_applied(&live(), &desired()));
    }

    #[test]
    fn a_different_value_or_field_set_needs_the_server() {
        let mut d = desired();
        d["spec"]["workload"]["components"][0]["type"] = json!("api");
        assert!(!already_applied(&live(), &d), "value differs");
        let mut d = desired();
        d["spec"]["extra"] = json!(1);
        assert!(
            !already_applied(&live(), &d),
            "a field pbsync does not own yet"
        );
        let mut d = desired();
        d["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("pbsync.dev/instance");
        assert!(!already_applied(&live(), &d), "a field apply would remove");
        let mut d = desired();
        d["apiVersion"] = json!("spectrocloud.com/v1");
        assert!(!already_applied(&live(), &d), "another version");
    }

    #[test]
    fn a_field_someone_else_took_over_needs_the_server() {
        // `kubectl edit` of spec.type moves the field to its manager.
        let mut l = live();
        l["spec"]["type"] = json!("Model");
        l["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]
            .as_object_mut()
            .unwrap()
            .remove("f:type");
        assert!(!already_applied(&l, &desired()));
        let mut l = live();
        l["metadata"]["managedFields"] = json!([]);
        assert!(!already_applied(&l, &desired()), "no apply by pbsync");
    }

    #[test]
    fn keyed_and_set_list_elements_are_matched_by_key() {
        let fields = json!({"f:items": {"k:{\"name\":\"b\"}": {".": {}, "f:name": {}, "f:v": {}}, "v:\"x\"": {}}});
        let value =
            json!({"items": [{"name": "a", "v": 1}, "x", {"name": "b", "v": 2, "other": 3}]});
        assert_eq!(
            project(&value, &fields),
            Some(json!({"items": ["x", {"name": "b", "v": 2}]}))
        );
        let missing = json!({"f:items": {"k:{\"name\":\"c\"}": {}}});
        assert_eq!(project(&value, &missing), None);
    }
}
