//! What a document of a Studio archive is, told by its content (never by its path), and its
//! conversion into the repository's form: Palette cluster-profile exports become
//! `ClusterProfile` envelopes, variable sets join the envelopes' `spec.variables`, and hub
//! objects get the target namespace. Pure: no I/O.

use serde_json::{Map, Value, json};

use pbsync_core::model::Kind;

/// Annotation Palette keeps a cluster profile's description in (our choice for envelopes).
pub(crate) const DESCRIPTION_ANNOTATION: &str = "description";

/// Pack fields an envelope carries (`src/apply/palette/convert.rs`); others are dropped with a
/// note.
const PACK_FIELDS: &[&str] = &[
    "name",
    "tag",
    "type",
    "layer",
    "values",
    "uid",
    "registryUid",
    "manifests",
];

/// Server-set metadata that an exported Kubernetes object may carry and a repository must not.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
    "selfLink",
    "ownerReferences",
];

/// One document, classified.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Doc {
    /// A kind pbsync manages (hub object or an envelope already).
    Object(Kind, Value),
    /// A Palette cluster-profile export (`v1ClusterProfileImportEntity`).
    ProfileExport(Value),
    /// A variable set: Palette variables, for the named profiles or for the profiles whose
    /// packs use them.
    VariableSet {
        /// `(name, version)` of the profiles it names; empty: every profile that uses one of
        /// its variables.
        targets: Vec<(String, Option<String>)>,
        /// The variables (`v1Variable`).
        variables: Vec<Value>,
    },
    /// Not something an import carries; the reason.
    Other(String),
}

/// Tells what a document is from its content.
pub(crate) fn classify(doc: &Value) -> Doc {
    let Some(map) = doc.as_object() else {
        return Doc::Other("not a mapping".into());
    };
    let api = map.get("apiVersion").and_then(Value::as_str);
    let kind = map.get("kind").and_then(Value::as_str);
    if let (Some(api), Some(kind_name)) = (api, kind) {
        return match Kind::parse(kind_name) {
            Some(k) if k.api_versions().contains(&api) => Doc::Object(k, doc.clone()),
            _ => Doc::Other(format!("{kind_name} ({api}) is not a kind pbsync imports")),
        };
    }
    let spec = map.get("spec");
    let is_export = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .is_some_and(Value::is_string)
        && spec
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("type"))
            .is_some_and(Value::is_string)
        && spec.and_then(|s| s.get("version")).is_some();
    if is_export {
        return Doc::ProfileExport(doc.clone());
    }
    if let Some(vars) = map.get("variables").and_then(Value::as_array)
        && vars
            .iter()
            .all(|v| v.get("name").is_some_and(Value::is_string))
        && spec.is_none()
    {
        let one = map.get("clusterProfile").into_iter();
        let many = map
            .get("clusterProfiles")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        let targets = one
            .chain(many)
            .filter_map(|t| {
                let name = t.get("name")?.as_str()?.to_string();
                let version = t.get("version").and_then(Value::as_str).map(String::from);
                Some((name, version))
            })
            .collect();
        return Doc::VariableSet {
            targets,
            variables: vars.clone(),
        };
    }
    Doc::Other(
        "neither a manifest (apiVersion/kind), a cluster-profile export nor a variable set".into(),
    )
}

/// Turns a Palette cluster-profile export into a `pbsync.dev/v1` envelope in `scope`.
/// Returns the envelope and notes on what was dropped.
pub fn envelope(export: &Value, scope: &str) -> (Value, Vec<String>) {
    let mut notes = Vec::new();
    let meta = export.get("metadata").cloned().unwrap_or(Value::Null);
    let spec = export.get("spec").cloned().unwrap_or(Value::Null);
    let name = meta.get("name").cloned().unwrap_or(Value::Null);
    let mut metadata = Map::new();
    metadata.insert("name".into(), name.clone());
    metadata.insert("scope".into(), json!(scope));
    if let Some(labels) = meta
        .get("labels")
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
    {
        metadata.insert("labels".into(), Value::Object(labels.clone()));
    }
    let mut annotations = meta
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(d) = meta
        .get("description")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
    {
        annotations.insert(DESCRIPTION_ANNOTATION.into(), json!(d));
    }
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    let template = spec.get("template").cloned().unwrap_or(Value::Null);
    let mut tpl = Map::new();
    for key in ["type", "cloudType"] {
        if let Some(v) = template.get(key) {
            tpl.insert(key.into(), v.clone());
        }
    }
    let packs: Vec<Value> = template
        .get("packs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let Some(p) = p.as_object() else {
                return p.clone();
            };
            let mut kept = Map::new();
            for (k, v) in p {
                if PACK_FIELDS.contains(&k.as_str()) {
                    kept.insert(k.clone(), v.clone());
                } else {
                    notes.push(format!(
                        "cluster profile {}: pack {}: field {k} dropped (an envelope names packs by name, tag, type, layer, values, uid and registryUid)",
                        name.as_str().unwrap_or("?"),
                        p.get("name").and_then(Value::as_str).unwrap_or("?")
                    ));
                }
            }
            Value::Object(kept)
        })
        .collect();
    tpl.insert("packs".into(), Value::Array(packs));
    let variables = spec.get("variables").cloned().unwrap_or_else(|| json!([]));
    let env = json!({
        "apiVersion": "pbsync.dev/v1",
        "kind": "ClusterProfile",
        "metadata": metadata,
        "spec": {
            "version": spec.get("version").cloned().unwrap_or(Value::Null),
            "template": tpl,
            "variables": variables,
        },
    });
    (env, notes)
}

/// True when some pack of the envelope uses variable `name` (`{{.spectro.var.NAME}}`).
pub(crate) fn uses_variable(envelope: &Value, name: &str) -> bool {
    let needle = format!(".spectro.var.{name}");
    envelope
        .pointer("/spec/template/packs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("values").and_then(Value::as_str))
        .any(|v| {
            v.match_indices(&needle).any(|(i, _)| {
                // A whole name: not the prefix of a longer one.
                !v[i + needle.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
        })
}

/// Adds `var` to the envelope's `spec.variables`. `Err` names the clash when a variable of
/// that name is already there with another definition.
pub(crate) fn add_variable(envelope: &mut Value, var: &Value) -> Result<(), String> {
    let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
    let Some(list) = envelope
        .pointer_mut("/spec/variables")
        .and_then(Value::as_array_mut)
    else {
        return Err("the envelope has no variables list".into());
    };
    match list
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
    {
        Some(v) if v == var => Ok(()),
        Some(_) => Err(format!("variable {name} is defined twice, differently")),
        None => {
            list.push(var.clone());
            Ok(())
        }
    }
}

/// Sets the namespace of a hub object, keeping `metadata.name` first, and removes the
/// server-set fields and `status` an export may carry.
pub(crate) fn set_namespace(doc: &Value, namespace: &str) -> Value {
    let mut out = Map::new();
    for (k, v) in doc.as_object().into_iter().flatten() {
        match k.as_str() {
            "status" => {}
            "metadata" => {
                let mut meta = Map::new();
                if let Some(n) = v.get("name") {
                    meta.insert("name".into(), n.clone());
                }
                meta.insert("namespace".into(), json!(namespace));
                for (mk, mv) in v.as_object().into_iter().flatten() {
                    if mk != "name" && mk != "namespace" && !SERVER_METADATA.contains(&mk.as_str())
                    {
                        meta.insert(mk.clone(), mv.clone());
                    }
                }
                out.insert(k.clone(), Value::Object(meta));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    // References that name a namespace follow the objects into the target namespace.
    let mut out = Value::Object(out);
    for ptr in ["/spec/profileBundleRef", "/spec/computePool/ref"] {
        if let Some(r) = out.pointer_mut(ptr).and_then(Value::as_object_mut)
            && r.contains_key("namespace")
        {
            r.insert("namespace".into(), json!(namespace));
        }
    }
    if let Some(refs) = out
        .pointer_mut("/spec/profileBundleRefs")
        .and_then(Value::as_array_mut)
    {
        for r in refs.iter_mut().filter_map(Value::as_object_mut) {
            if r.contains_key("namespace") {
                r.insert("namespace".into(), json!(namespace));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export() -> Value {
        json!({
            "metadata": {"name": "edge-infra", "description": "Edge GPU", "labels": {"team": "ml"}},
            "spec": {
                "version": "1.0.0",
                "template": {"type": "infra", "cloudType": "edge-native", "packs": [
                    {"name": "edge-k8s", "tag": "1.32.3", "type": "spectro", "layer": "k8s",
                     "values": "vip: '{{.spectro.var.vip}}'", "registry": {"name": "Public"}}
                ]},
                "variables": [{"name": "vip", "format": "ipv4"}]
            }
        })
    }

    #[test]
    fn a_palette_export_is_told_by_its_shape() {
        assert!(matches!(classify(&export()), Doc::ProfileExport(_)));
    }

    #[test]
    fn a_manifest_is_told_by_api_version_and_kind() {
        let d = json!({"apiVersion": "spectrocloud.com/v1beta1", "kind": "ProfileBundle", "metadata": {"name": "b"}});
        assert!(matches!(classify(&d), Doc::Object(Kind::ProfileBundle, _)));
        let d = json!({"apiVersion": "v1", "kind": "Secret"});
        assert!(matches!(classify(&d), Doc::Other(_)));
    }

    #[test]
    fn a_variable_set_is_a_variables_list_with_an_optional_target() {
        let d = json!({"clusterProfile": {"name": "edge-infra"}, "variables": [{"name": "vip"}]});
        assert_eq!(
            classify(&d),
            Doc::VariableSet {
                targets: vec![("edge-infra".into(), None)],
                variables: vec![json!({"name": "vip"})]
            }
        );
    }

    #[test]
    fn an_export_becomes_an_envelope_with_its_description_and_variables() {
        let (env, notes) = envelope(&export(), "project");
        assert_eq!(env["kind"], "ClusterProfile");
        assert_eq!(env["metadata"]["scope"], "project");
        assert_eq!(env["metadata"]["annotations"]["description"], "Edge GPU");
        assert_eq!(env["spec"]["variables"][0]["name"], "vip");
        assert!(
            env["spec"]["template"]["packs"][0]
                .get("registry")
                .is_none()
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn variables_are_matched_by_whole_name_in_pack_values() {
        let (env, _) = envelope(&export(), "project");
        assert!(uses_variable(&env, "vip"));
        assert!(!uses_variable(&env, "vi"));
    }

    #[test]
    fn a_variable_defined_twice_differently_is_refused() {
        let (mut env, _) = envelope(&export(), "project");
        assert!(add_variable(&mut env, &json!({"name": "vip", "format": "ipv4"})).is_ok());
        assert!(add_variable(&mut env, &json!({"name": "vip", "format": "text"})).is_err());
        assert!(add_variable(&mut env, &json!({"name": "dns"})).is_ok());
        assert_eq!(env["spec"]["variables"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn the_namespace_is_set_and_server_fields_removed() {
        let d = json!({"apiVersion": "x", "kind": "K", "metadata": {"namespace": "studio", "uid": "1", "name": "n", "labels": {"a": "b"}}, "spec": {}, "status": {}});
        let out = set_namespace(&d, "team-a");
        assert_eq!(
            out,
            json!({"apiVersion": "x", "kind": "K", "metadata": {"name": "n", "namespace": "team-a", "labels": {"a": "b"}}, "spec": {}})
        );
    }
}
