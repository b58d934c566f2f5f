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
pub(crate) fn same_normalized(live: &Value, desired: &Value) -> bool {
    same_with_marks(live, desired, &[], &[])
}

/// [`same_normalized`] against `desired` with `labels` and `annotations` laid over its own,
/// which is how pbsync renders an object: the comparison never builds the rendered copy.
pub(crate) fn same_with_marks(
    live: &Value,
    desired: &Value,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> bool {
    let (Some(a), Some(b)) = (live.as_object(), desired.as_object()) else {
        return live == desired;
    };
    let no_meta = Map::new();
    let top_equal = maps_equal(a, b, |k| k == "status" || k == "metadata", |_, x, y| x == y);
    if !top_equal {
        return false;
    }
    let live_meta = a
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&no_meta);
    let desired_meta = b
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&no_meta);
    let skip_meta = |k: &str| SERVER_METADATA.contains(&k) || k == "labels" || k == "annotations";
    if !maps_equal(live_meta, desired_meta, skip_meta, |_, x, y| x == y) {
        return false;
    }
    let skip = |k: &str| {
        k == REVISION_ANNOTATION || k == "kubectl.kubernetes.io/last-applied-configuration"
    };
    overlay_equal(
        live_meta.get("labels"),
        desired_meta.get("labels"),
        labels,
        &skip,
    ) && overlay_equal(
        live_meta.get("annotations"),
        desired_meta.get("annotations"),
        annotations,
        &skip,
    )
}

/// Compares a live string map with a desired one plus `extra` entries (which win), ignoring
/// keys `skip` accepts; absent, null and empty maps are all "no entries".
fn overlay_equal(
    live: Option<&Value>,
    base: Option<&Value>,
    extra: &[(&str, &str)],
    skip: &dyn Fn(&str) -> bool,
) -> bool {
    fn as_map<'a>(
        v: Option<&'a Value>,
        no: &'a Map<String, Value>,
    ) -> Option<&'a Map<String, Value>> {
        match v {
            None | Some(Value::Null) => Some(no),
            Some(Value::Object(m)) => Some(m),
            Some(_) => None,
        }
    }
    let no = Map::new();
    let (Some(live), Some(base)) = (as_map(live, &no), as_map(base, &no)) else {
        return false;
    };
    for (k, v) in live {
        if skip(k) {
            continue;
        }
        let same = match extra.iter().find(|(ek, _)| *ek == k) {
            Some((_, ev)) => v.as_str() == Some(*ev),
            None => base.get(k) == Some(v),
        };
        if !same {
            return false;
        }
    }
    let present = |k: &str| skip(k) || live.contains_key(k);
    base.keys().all(|k| present(k)) && extra.iter().all(|(k, _)| present(k))
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
    fn marks_laid_over_the_desired_object_compare_like_the_rendered_copy() {
        let manifest =
            json!({"metadata": {"name": "a", "labels": {"team": "x"}}, "spec": {"a": 1}});
        let rendered = json!({"metadata": {"name": "a", "labels": {"team": "x", "owner": "me"},
            "annotations": {"src": "f.yaml", REVISION_ANNOTATION: "r1"}}, "spec": {"a": 1}});
        let labels = [("owner", "me")];
        let annotations = [("src", "f.yaml"), (REVISION_ANNOTATION, "r2")];
        assert!(same_with_marks(&rendered, &manifest, &labels, &annotations));
        assert!(!same_with_marks(
            &rendered,
            &manifest,
            &[("owner", "you")],
            &annotations
        ));
        assert!(
            !same_with_marks(&rendered, &manifest, &labels, &[]),
            "a missing annotation differs"
        );
        let mut changed = rendered.clone();
        changed["metadata"]["labels"]["team"] = json!("y");
        assert!(!same_with_marks(&changed, &manifest, &labels, &annotations));
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
