//! Ownership marks: the labels and annotations pbsync puts on what it creates, the rendering
//! of a desired object with them, and reading them back. Pure: no I/O.
//!
//! pbsync manages an object only if these marks say this instance created (or adopted) it;
//! everything else on a hub or in Palette is left alone. Several pbsync instances can share a
//! hub because the instance label tells their objects apart.

use serde_json::{Map, Value};

use crate::model::{Kind, Object};

/// The instance name when none is given (`--instance`, `PBSYNC_INSTANCE`, `instance:`).
pub const DEFAULT_INSTANCE: &str = "default";
/// `app.kubernetes.io/managed-by: pbsync` on everything pbsync manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of the managed-by label.
pub const MANAGED_BY_VALUE: &str = "pbsync";
/// Which pbsync instance manages the object.
pub const INSTANCE_LABEL: &str = "pbsync.dev/instance";
/// Present (value `true`) on objects pbsync adopted rather than created: released, never deleted.
pub const ADOPTED_LABEL: &str = "pbsync.dev/adopted";
/// Set when an instance released (orphaned) an object; names that instance.
pub const RELEASED_BY_ANNOTATION: &str = "pbsync.dev/released-by";
/// Repository path of the file the object was applied from.
pub const SOURCE_ANNOTATION: &str = "pbsync.dev/source";
/// Commit the object was last written from. Ignored when comparing, so a new commit that
/// leaves an object as it was costs no write.
pub const REVISION_ANNOTATION: &str = "pbsync.dev/revision";

/// Who owns a live object, from the point of view of this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Created by this instance: updated, and deleted by the deletion rules.
    Managed,
    /// Adopted by this instance: updated, released (never deleted) when it leaves.
    Adopted,
    /// Released (orphaned) earlier by this instance; taken back if a commit needs it again.
    Released,
    /// Not this instance's: never changed or deleted. `owner` names another pbsync instance.
    Foreign {
        /// Another pbsync instance that manages it, if any.
        owner: Option<String>,
    },
}

impl Ownership {
    /// True when this instance manages the object (created or adopted).
    pub fn is_managed(&self) -> bool {
        matches!(self, Self::Managed | Self::Adopted)
    }
}

/// What rendering needs to know besides the object.
#[derive(Debug, Clone)]
pub struct Stamp<'a> {
    /// This pbsync instance.
    pub instance: &'a str,
    /// Commit being applied.
    pub revision: &'a str,
    /// Mark the object as adopted.
    pub adopted: bool,
}

/// Reads the ownership marks of a live object's labels and annotations.
pub fn read(
    labels: Option<&Map<String, Value>>,
    annotations: Option<&Map<String, Value>>,
    instance: &str,
) -> Ownership {
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let managed = label(MANAGED_BY_LABEL) == Some(MANAGED_BY_VALUE);
    let owner = label(INSTANCE_LABEL);
    if managed && owner == Some(instance) {
        return if label(ADOPTED_LABEL) == Some("true") {
            Ownership::Adopted
        } else {
            Ownership::Managed
        };
    }
    let released_by = annotations
        .and_then(|a| a.get(RELEASED_BY_ANNOTATION))
        .and_then(Value::as_str);
    if !managed && released_by == Some(instance) {
        return Ownership::Released;
    }
    Ownership::Foreign {
        owner: if managed {
            owner.map(str::to_string)
        } else {
            None
        },
    }
}

/// Reads the ownership of a Kubernetes-shaped manifest.
pub fn read_manifest(manifest: &Value, instance: &str) -> Ownership {
    let meta = manifest.get("metadata");
    read(
        meta.and_then(|m| m.get("labels"))
            .and_then(Value::as_object),
        meta.and_then(|m| m.get("annotations"))
            .and_then(Value::as_object),
        instance,
    )
}

/// The labels and annotations pbsync adds to a hub object: the one definition both
/// [`render`] and the plan's copy-free comparison use.
#[derive(Debug, Clone)]
pub(crate) struct Marks<'a> {
    instance: &'a str,
    adopted: bool,
    source: &'a str,
    revision: &'a str,
}

impl<'a> Marks<'a> {
    /// The marks of `obj` written under `stamp`.
    pub fn of(obj: &'a Object, stamp: &Stamp<'a>) -> Self {
        Self {
            instance: stamp.instance,
            adopted: stamp.adopted,
            source: &obj.location.path,
            revision: stamp.revision,
        }
    }

    /// Labels, in the order they are added.
    pub fn labels(&self) -> Vec<(&'static str, &'a str)> {
        let mut v = vec![
            (MANAGED_BY_LABEL, MANAGED_BY_VALUE),
            (INSTANCE_LABEL, self.instance),
        ];
        if self.adopted {
            v.push((ADOPTED_LABEL, "true"));
        }
        v
    }

    /// Annotations, in the order they are added.
    pub fn annotations(&self) -> Vec<(&'static str, &'a str)> {
        vec![
            (SOURCE_ANNOTATION, self.source),
            (REVISION_ANNOTATION, self.revision),
        ]
    }
}

/// The object as pbsync writes it: the manifest as committed plus the ownership marks.
/// Cluster profiles render as Palette's create entity (`v1ClusterProfileEntity`).
pub fn render(obj: &Object, stamp: &Stamp<'_>) -> Value {
    if obj.key.kind == Kind::ClusterProfile {
        return render_cluster_profile(obj, stamp);
    }
    let mut manifest = obj.manifest.value();
    let root = manifest
        .as_object_mut()
        .expect("invariant: parsed manifests are mappings");
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("invariant: parsed metadata is a mapping");
    let marks = Marks::of(obj, stamp);
    let labels = sub_map(meta, "labels");
    for (k, v) in marks.labels() {
        labels.insert(k.into(), v.into());
    }
    let annotations = sub_map(meta, "annotations");
    for (k, v) in marks.annotations() {
        annotations.insert(k.into(), v.into());
    }
    manifest
}

fn render_cluster_profile(obj: &Object, stamp: &Stamp<'_>) -> Value {
    let manifest = obj.manifest.value();
    let spec = manifest.get("spec").cloned().unwrap_or(Value::Null);
    let mut labels = manifest
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(INSTANCE_LABEL.into(), stamp.instance.into());
    if stamp.adopted {
        labels.insert(ADOPTED_LABEL.into(), "true".into());
    }
    let mut annotations = manifest
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    annotations.insert(
        SOURCE_ANNOTATION.into(),
        obj.location.path.to_string().into(),
    );
    annotations.insert(REVISION_ANNOTATION.into(), stamp.revision.into());
    let mut entity_spec = Map::new();
    entity_spec.insert(
        "version".into(),
        spec.get("version").cloned().unwrap_or(Value::Null),
    );
    entity_spec.insert(
        "template".into(),
        spec.get("template").cloned().unwrap_or(Value::Null),
    );
    entity_spec.insert(
        "variables".into(),
        spec.get("variables")
            .cloned()
            .unwrap_or_else(|| Value::Array(Vec::new())),
    );
    serde_json::json!({
        "metadata": {
            "name": &*obj.key.name,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": entity_spec,
    })
}

/// Removes the ownership marks and notes the releasing instance: what orphaning does.
pub fn release(manifest: &mut Value, instance: &str) {
    let Some(meta) = manifest.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
        labels.remove(MANAGED_BY_LABEL);
        labels.remove(INSTANCE_LABEL);
        labels.remove(ADOPTED_LABEL);
    }
    let annotations = sub_map(meta, "annotations");
    annotations.remove(REVISION_ANNOTATION);
    annotations.insert(RELEASED_BY_ANNOTATION.into(), instance.into());
}

fn sub_map<'a>(meta: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = meta.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry
        .as_object_mut()
        .expect("invariant: just made an object")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn other_instances_objects_are_foreign() {
        let m =
            json!({"metadata": {"labels": {MANAGED_BY_LABEL: "pbsync", INSTANCE_LABEL: "blue"}}});
        assert_eq!(read_manifest(&m, "blue"), Ownership::Managed);
        assert_eq!(
            read_manifest(&m, "green"),
            Ownership::Foreign {
                owner: Some("blue".into())
            }
        );
        assert_eq!(
            read_manifest(&json!({"metadata": {}}), "blue"),
            Ownership::Foreign { owner: None }
        );
    }

    #[test]
    fn released_objects_remember_who_released_them() {
        let mut m =
            json!({"metadata": {"labels": {MANAGED_BY_LABEL: "pbsync", INSTANCE_LABEL: "blue"}}});
        release(&mut m, "blue");
        assert_eq!(read_manifest(&m, "blue"), Ownership::Released);
        assert_eq!(
            read_manifest(&m, "green"),
            Ownership::Foreign { owner: None }
        );
    }
}
