//! Comparing a desired object with its live version: normalisation (fields the server or
//! pbsync's own bookkeeping own) and field-level differences. Pure: no I/O.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::ownership::REVISION_ANNOTATION;

/// Metadata fields the API server owns; never part of a comparison.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "finalizers",
    "ownerReferences",
];

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// Dotted path, e.g. `spec.workload.components[0].properties.model`.
    pub path: String,
    /// Live value (absent when the field is new).
    pub before: Option<Value>,
    /// Desired value (absent when the field goes).
    pub after: Option<Value>,
}

/// The object without server-owned fields, `status`, or pbsync's revision annotation.
pub fn normalize(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(root) = v.as_object_mut() {
        root.remove("status");
        if let Some(meta) = root.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in SERVER_METADATA {
                meta.remove(*f);
            }
            prune_empty(meta, "labels");
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove(REVISION_ANNOTATION);
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
            prune_empty(meta, "annotations");
        }
    }
    v
}

fn prune_empty(meta: &mut Map<String, Value>, key: &str) {
    if meta
        .get(key)
        .is_some_and(|v| v.as_object().is_some_and(Map::is_empty) || v.is_null())
    {
        meta.remove(key);
    }
}

/// True when `live` and `desired` are equal once normalised (see [`normalize`]), decided
/// without copying either: the common case of a plan over a large, unchanged repository.
pub fn same_normalized(live: &Value, desired: &Value) -> bool {
    let (Some(a), Some(b)) = (live.as_object(), desired.as_object()) else {
        return live == desired;
    };
    maps_equal(
        a,
        b,
        |k| k == "status",
        |k, x, y| {
            if k != "metadata" {
                return x == y;
            }
            let (Some(x), Some(y)) = (x.as_object(), y.as_object()) else {
                return x == y;
            };
            maps_equal(
                x,
                y,
                |k| SERVER_METADATA.contains(&k),
                |k, x, y| match k {
                    "labels" | "annotations" => {
                        let skip = |k: &str| {
                            k == REVISION_ANNOTATION
                                || k == "kubectl.kubernetes.io/last-applied-configuration"
                        };
                        match (x.as_object(), y.as_object()) {
                            (Some(x), Some(y)) => maps_equal(x, y, skip, |_, x, y| x == y),
                            _ => x == y,
                        }
                    }
                    _ => x == y,
                },
            )
        },
    )
}

/// Compares two maps key by key, ignoring keys `skip` accepts and treating an absent key like
/// an empty map or null (normalisation removes those).
fn maps_equal(
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    skip: impl Fn(&str) -> bool,
    eq: impl Fn(&str, &Value, &Value) -> bool,
) -> bool {
    let empty = |v: &Value| v.is_null() || v.as_object().is_some_and(Map::is_empty);
    for (k, x) in a {
        if skip(k) {
            continue;
        }
        match b.get(k) {
            Some(y) => {
                if !eq(k, x, y) {
                    return false;
                }
            }
            None if empty(x) => {}
            None => return false,
        }
    }
    b.iter()
        .all(|(k, y)| skip(k) || a.contains_key(k) || empty(y))
}

/// Field-level differences from `live` to `desired`, in document order.
pub fn diff(live: &Value, desired: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk(String::new(), Some(live), Some(desired), &mut out);
    out
}

fn walk(path: String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<FieldChange>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            for (k, bv) in y {
                walk(join(&path, k), x.get(k), Some(bv), out);
            }
            for (k, av) in x {
                if !y.contains_key(k) {
                    walk(join(&path, k), Some(av), None, out);
                }
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
            for (i, (av, bv)) in x.iter().zip(y).enumerate() {
                walk(format!("{path}[{i}]"), Some(av), Some(bv), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldChange {
            path: if path.is_empty() { ".".into() } else { path },
            before: a.cloned(),
            after: b.cloned(),
        }),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_fields_and_the_revision_annotation_are_ignored() {
        let live = json!({"metadata": {"name": "a", "uid": "1", "resourceVersion": "9",
            "annotations": {REVISION_ANNOTATION: "old"}}, "status": {"x": 1}, "spec": {"a": 1}});
        let desired = json!({"metadata": {"name": "a", "annotations": {REVISION_ANNOTATION: "new"}}, "spec": {"a": 1}});
        assert!(diff(&normalize(&live), &normalize(&desired)).is_empty());
    }

    #[test]
    fn fast_equality_agrees_with_normalised_diff() {
        let live = json!({"metadata": {"name": "a", "uid": "1", "labels": {},
            "annotations": {REVISION_ANNOTATION: "old", "x": "1"}}, "status": {"x": 1}, "spec": {"a": 1}});
        let same = json!({"metadata": {"name": "a", "annotations": {REVISION_ANNOTATION: "new", "x": "1"}}, "spec": {"a": 1}});
        let other = json!({"metadata": {"name": "a", "annotations": {"x": "2"}}, "spec": {"a": 1}});
        let extra =
            json!({"metadata": {"name": "a", "annotations": {"x": "1"}}, "spec": {"a": 1, "b": 2}});
        for (d, expect) in [(&same, true), (&other, false), (&extra, false)] {
            assert_eq!(same_normalized(&live, d), expect, "{d}");
            assert_eq!(
                diff(&normalize(&live), &normalize(d)).is_empty(),
                expect,
                "{d}"
            );
            assert_eq!(same_normalized(d, &live), expect, "symmetric: {d}");
        }
    }

    #[test]
    fn differences_name_the_field() {
        let d = diff(
            &json!({"spec": {"a": [1, 2], "b": 1}}),
            &json!({"spec": {"a": [1, 3], "c": 2}}),
        );
        let paths: Vec<&str> = d.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["spec.a[1]", "spec.c", "spec.b"]);
    }
}
