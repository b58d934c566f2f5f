//! Palette's shapes to pbsync's: a `v1ClusterProfile` (its published template), its variables
//! and its packs' manifests become the `v1ClusterProfileEntity` shape `ownership::render`
//! produces, so the plan compares like with like; and the desired entity becomes the update
//! and metadata bodies. Pure: no I/O.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// pbsync's own annotations (source, revision, released-by) share this prefix.
const PBSYNC_PREFIX: &str = "pbsync.dev/";

/// Annotations Palette sets itself; never part of a comparison.
const SERVER_ANNOTATIONS: &[&str] = &["scope"];

/// Pack fields of the envelope, with the name Palette's `v1PackRef` gives each.
const PACK_FIELDS: &[(&str, &str)] = &[
    ("name", "name"),
    ("tag", "tag"),
    ("type", "type"),
    ("layer", "layer"),
    ("values", "values"),
    ("uid", "packUid"),
    ("registryUid", "registryUid"),
];

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The live profile in the desired entity's shape: `{metadata:{name,labels,annotations},
/// spec:{version,template,variables}}`, the template being the **published** one (`null` when
/// nothing is published yet, so the plan sees a difference and publishes).
///
/// `manifests` holds, per pack name, the published manifests as `(name, content)`.
pub(super) fn live_entity(
    profile: &Value,
    variables: &[Value],
    manifests: &BTreeMap<String, Vec<(String, String)>>,
) -> Value {
    let mut annotations = profile
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for k in SERVER_ANNOTATIONS {
        annotations.remove(*k);
    }
    let labels = profile
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let template = profile
        .pointer("/spec/published")
        .filter(|t| t.is_object())
        .map_or(Value::Null, |t| template_entity(t, manifests));
    json!({
        "metadata": {
            "name": str_at(profile, "/metadata/name").unwrap_or_default(),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "version": str_at(profile, "/spec/version").unwrap_or_default(),
            "template": template,
            "variables": variables,
        },
    })
}

fn template_entity(t: &Value, manifests: &BTreeMap<String, Vec<(String, String)>>) -> Value {
    let packs: Vec<Value> = t
        .get("packs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let mut out = Map::new();
            for (ours, theirs) in PACK_FIELDS {
                if let Some(v) = p.get(*theirs).filter(|v| !v.is_null()) {
                    out.insert((*ours).to_string(), v.clone());
                }
            }
            let name = str_at(p, "/name").unwrap_or_default();
            if let Some(list) = manifests.get(name).filter(|l| !l.is_empty()) {
                let list: Vec<Value> = list
                    .iter()
                    .map(|(n, c)| json!({"name": n, "content": c}))
                    .collect();
                out.insert("manifests".into(), Value::Array(list));
            }
            Value::Object(out)
        })
        .collect();
    let mut out = Map::new();
    for k in ["type", "cloudType"] {
        if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    out.insert("packs".into(), Value::Array(packs));
    Value::Object(out)
}

/// Names of the packs of a live published template that carry manifests.
pub(super) fn packs_with_manifests(profile: &Value) -> Vec<String> {
    profile
        .pointer("/spec/published/packs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| {
            p.get("manifests")
                .and_then(Value::as_array)
                .is_some_and(|m| !m.is_empty())
        })
        .filter_map(|p| str_at(p, "/name").map(str::to_string))
        .collect()
}

/// The published manifests of a `v1ManifestEntities` answer, as `(name, content)`.
pub(super) fn published_manifests(entities: &Value) -> Vec<(String, String)> {
    entities
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let name = str_at(m, "/metadata/name")?;
            let content = str_at(m, "/spec/published/content")?;
            Some((name.to_string(), content.to_string()))
        })
        .collect()
}

/// Narrows a live entity to the fields the declared entity sets, where Palette fills in what
/// the declaration leaves out: in the template, each pack and manifest (matched by name) and
/// each variable (matched by name). A field the declaration omits means "whatever Palette
/// chooses" (pack type `spectro`, resolved pack uids, default values, the variable flags
/// Palette always returns), so it must not read as a difference. Annotations keep pbsync's own
/// and the declared ones; labels are compared whole.
pub(super) fn project_onto(live: &mut Value, desired: &Value) {
    if let (Some(l), Some(d)) = (
        live.pointer_mut("/spec/template"),
        desired.pointer("/spec/template"),
    ) {
        narrow(l, d);
    }
    if let (Some(Value::Array(l)), Some(Value::Array(d))) = (
        live.pointer_mut("/spec/variables"),
        desired.pointer("/spec/variables"),
    ) {
        narrow_list(l, d);
    }
    let declared: Vec<String> = desired
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(a) = live
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.retain(|k, _| declared.contains(k) || is_pbsync_key(k));
    }
}

fn is_pbsync_key(k: &str) -> bool {
    k.starts_with(PBSYNC_PREFIX)
}

/// Keeps the keys of `live` that `desired` has, recursing into objects and into lists of
/// named objects.
fn narrow(live: &mut Value, desired: &Value) {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => {
            l.retain(|k, _| d.contains_key(k));
            for (k, lv) in l.iter_mut() {
                if let Some(dv) = d.get(k) {
                    match (lv, dv) {
                        (Value::Array(la), Value::Array(da)) => narrow_list(la, da),
                        (lv @ Value::Object(_), dv @ Value::Object(_)) => narrow(lv, dv),
                        _ => {}
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(d)) => narrow_list(l, d),
        _ => {}
    }
}

fn narrow_list(live: &mut [Value], desired: &[Value]) {
    for l in live.iter_mut() {
        let Some(name) = l.get("name").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        if let Some(d) = desired
            .iter()
            .find(|d| d.get("name").and_then(Value::as_str) == Some(name.as_str()))
        {
            narrow(l, d);
        }
    }
}

/// `v1ClusterProfileUpdateEntity` from the desired entity: the template's type and packs (the
/// update template has no `cloudType`, and variables have their own endpoint).
pub(super) fn update_entity(desired: &Value) -> Value {
    let mut template = Map::new();
    for k in ["type", "packs"] {
        if let Some(v) = desired.pointer(&format!("/spec/template/{k}")) {
            template.insert(k.into(), v.clone());
        }
    }
    json!({
        "metadata": meta_of(desired),
        "spec": {
            "version": desired.pointer("/spec/version").cloned().unwrap_or_default(),
            "template": template,
        },
    })
}

/// `v1ProfileMetaEntity` from an entity-shaped value: name, labels, annotations, version.
pub(super) fn metadata_entity(entity: &Value) -> Value {
    json!({
        "metadata": meta_of(entity),
        "spec": {"version": entity.pointer("/spec/version").cloned().unwrap_or_default()},
    })
}

fn meta_of(entity: &Value) -> Value {
    let map = |k: &str| {
        entity
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    json!({
        "name": entity.pointer("/metadata/name").cloned().unwrap_or_default(),
        "labels": map("labels"),
        "annotations": map("annotations"),
    })
}

/// `v1Variables` from the desired entity.
pub(super) fn variables_entity(desired: &Value) -> Value {
    json!({"variables": desired.pointer("/spec/variables").cloned().unwrap_or_else(|| json!([]))})
}

/// The names of `status.inUseClusters` (uids when unnamed), sorted.
pub(super) fn in_use_by(profile: &Value) -> Vec<String> {
    let mut names: Vec<String> = profile
        .pointer("/status/inUseClusters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            str_at(c, "/name")
                .filter(|n| !n.is_empty())
                .or_else(|| str_at(c, "/uid"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbsync_core::plan::{FieldChange, normalize};

    fn diff(live: &Value, desired: &Value) -> Vec<FieldChange> {
        // The plan's own comparison, through its public normalize + a structural check.
        let (l, d) = (normalize(live), normalize(desired));
        if l == d {
            Vec::new()
        } else {
            vec![FieldChange {
                path: ".".into(),
                before: Some(l),
                after: Some(d),
            }]
        }
    }

    fn palette_profile() -> Value {
        json!({
            "apiVersion": "v1", "kind": "ClusterProfile",
            "metadata": {"name": "edge", "uid": "u1",
                "labels": {"team": "ml", "app.kubernetes.io/managed-by": "pbsync", "pbsync.dev/instance": "default"},
                "annotations": {"scope": "project", "pbsync.dev/source": "cp.yaml", "pbsync.dev/revision": "abc"},
                "creationTimestamp": "2025-01-01T00:00:01Z"},
            "spec": {
                "version": "1.0.0",
                "draft": {"type": "infra", "cloudType": "aws", "packs": []},
                "published": {"type": "infra", "cloudType": "aws", "packs": [
                    {"name": "k8s", "tag": "1.32", "version": "1.32", "type": "spectro", "layer": "k8s",
                     "values": "a: 1", "packUid": "p1", "registryUid": "r1",
                     "manifests": [{"kind": "Manifest", "name": "extra", "uid": "m1"}]}
                ]},
            },
            "status": {"inUseClusters": [{"name": "edge-2", "uid": "c2"}, {"uid": "c1"}]},
        })
    }

    fn desired() -> Value {
        json!({
            "metadata": {"name": "edge",
                "labels": {"team": "ml", "app.kubernetes.io/managed-by": "pbsync", "pbsync.dev/instance": "default"},
                "annotations": {"pbsync.dev/source": "cp.yaml", "pbsync.dev/revision": "def"}},
            "spec": {"version": "1.0.0",
                "template": {"type": "infra", "cloudType": "aws", "packs": [
                    {"name": "k8s", "tag": "1.32", "layer": "k8s", "values": "a: 1",
                     "manifests": [{"name": "extra", "content": "kind: X"}]}]},
                "variables": [{"name": "vip", "format": "ipv4", "required": true}]},
        })
    }

    fn live() -> Value {
        let manifests = BTreeMap::from([(
            "k8s".to_string(),
            vec![("extra".to_string(), "kind: X".to_string())],
        )]);
        let vars = [
            json!({"name": "vip", "format": "ipv4", "required": true, "defaultValue": "",
            "hidden": false, "immutable": false, "isSensitive": false, "inputType": "text"}),
        ];
        live_entity(&palette_profile(), &vars, &manifests)
    }

    #[test]
    fn the_published_template_is_taken_in_the_entity_shape() {
        let l = live();
        assert_eq!(l.pointer("/spec/template/packs/0/uid"), Some(&json!("p1")));
        assert_eq!(
            l.pointer("/spec/template/packs/0/manifests"),
            Some(&json!([{"name": "extra", "content": "kind: X"}]))
        );
        assert_eq!(l.pointer("/metadata/annotations/scope"), None);
        assert_eq!(in_use_by(&palette_profile()), ["c1", "edge-2"]);
        assert_eq!(packs_with_manifests(&palette_profile()), ["k8s"]);
    }

    #[test]
    fn an_unchanged_profile_compares_equal_once_narrowed() {
        let mut l = live();
        assert!(
            !diff(&l, &desired()).is_empty(),
            "server defaults differ before"
        );
        project_onto(&mut l, &desired());
        assert_eq!(diff(&l, &desired()), Vec::new());
    }

    #[test]
    fn declared_fields_that_differ_still_differ() {
        let mut d = desired();
        d["spec"]["template"]["packs"][0]["values"] = json!("a: 2");
        d["spec"]["variables"][0]["required"] = json!(false);
        let mut l = live();
        project_onto(&mut l, &d);
        assert_eq!(
            l.pointer("/spec/template/packs/0/values"),
            Some(&json!("a: 1"))
        );
        assert_eq!(l.pointer("/spec/variables/0/required"), Some(&json!(true)));
        assert!(!diff(&l, &d).is_empty());
    }

    #[test]
    fn an_unpublished_profile_has_no_template() {
        let mut p = palette_profile();
        p["spec"].as_object_mut().expect("spec").remove("published");
        let l = live_entity(&p, &[], &BTreeMap::new());
        assert_eq!(l.pointer("/spec/template"), Some(&Value::Null));
        let mut l2 = l.clone();
        project_onto(&mut l2, &desired());
        assert_eq!(l2, l);
    }

    #[test]
    fn bodies_follow_the_update_and_metadata_entities() {
        use pbsync_devkit::palette_sim::schema::Definitions;
        let defs = Definitions::palette();
        let u = update_entity(&desired());
        assert_eq!(u.pointer("/spec/template/cloudType"), None);
        defs.validate("v1ClusterProfileUpdateEntity", &u, "body")
            .expect("update entity");
        defs.validate("v1ProfileMetaEntity", &metadata_entity(&desired()), "body")
            .expect("metadata entity");
        defs.validate("v1Variables", &variables_entity(&desired()), "body")
            .expect("variables");
        defs.validate("v1ClusterProfileEntity", &desired(), "body")
            .expect("create entity");
    }
}
