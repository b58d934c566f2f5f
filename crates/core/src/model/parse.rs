//! Parsing: one source file into typed objects, or violations at file:line. Pure: no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::yaml::{self, PathSegment};
use super::{
    AIWORKLOAD_TYPE_LABEL, AiWorkload, Bundle, BundleType, ClusterProfile, ComputePool,
    DEPENDS_ON_ANNOTATION, DeletionPolicy, DeploymentType, INFERENCE_ENGINE_LABEL, Kind, Location,
    Object, ObjectKey, PoolVariant, ProfileType, Ref, Rule, Spec, Violation, WorkloadProfile,
    WorkloadType,
};
use crate::snapshot::{Content, SourceFile};

/// Bounds on the input one file may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// YAML expansion bounds.
    pub yaml: yaml::Limits,
    /// Largest file read, in bytes.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            yaml: yaml::Limits::default(),
            max_file_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Parses every document of one file. Returns the objects that parsed and a violation for
/// each document (or the whole file) that did not.
pub fn parse_file(file: &SourceFile, limits: &Limits) -> (Vec<Object>, Vec<Violation>) {
    let parsed = parse_file_detailed(file, limits);
    (parsed.objects, parsed.violations)
}

/// What one file parsed into.
#[derive(Debug, Default)]
pub struct ParsedFile {
    /// Objects whose spec parsed. An object whose only faults are in its metadata (a name
    /// that is not RFC 1123, say) is kept, beside its violations, so the bundle rules are
    /// still checked on it and one push can fix everything.
    pub objects: Vec<Object>,
    /// Every violation of the file.
    pub violations: Vec<Violation>,
    /// Identities (version left out) claimed by documents that were rejected: a reference
    /// to one is not also reported as unresolved, as the document's own violation says why.
    pub rejected: Vec<ObjectKey>,
}

/// [`parse_file`], also returning the identities of rejected documents.
pub fn parse_file_detailed(file: &SourceFile, limits: &Limits) -> ParsedFile {
    let rejected_file = |v: Violation| ParsedFile {
        violations: vec![v],
        ..ParsedFile::default()
    };
    let text = match read_text(file, limits) {
        Ok(text) => text,
        Err(v) => return rejected_file(v),
    };
    let docs = match yaml::load_all(text, limits.yaml) {
        Ok(docs) => docs,
        Err(e) => {
            let at = Location {
                path: file.path.clone(),
                line: e.line,
            };
            return rejected_file(Violation::at(&at, Rule::Yaml, e.message));
        }
    };
    let mut out = ParsedFile::default();
    for doc in docs {
        let lines = |segs: &[PathSegment<'_>]| doc.root.line_of(segs.iter().copied());
        let mut d = document(&file.path, doc.line, doc.root.to_json(), &lines);
        out.objects.extend(d.object);
        out.violations.append(&mut d.violations);
        out.rejected.extend(d.claimed);
    }
    out
}

/// The file's text, or the violation that keeps it from being read (size, encoding).
fn read_text<'a>(file: &'a SourceFile, limits: &Limits) -> Result<&'a str, Violation> {
    let at = |line: u32| Location {
        path: file.path.clone(),
        line,
    };
    let bytes = match &file.content {
        Content::TooLarge(size) => {
            let v = Violation::at(
                &at(1),
                Rule::FileSize,
                format!(
                    "file is {size} bytes, over the {} byte limit; split it or add it to .pbsyncignore",
                    limits.max_file_bytes
                ),
            );
            return Err(v);
        }
        Content::Bytes(b) => b,
    };
    if bytes.len() as u64 > limits.max_file_bytes {
        let v = Violation::at(
            &at(1),
            Rule::FileSize,
            format!(
                "file is {} bytes, over the {} byte limit",
                bytes.len(),
                limits.max_file_bytes
            ),
        );
        return Err(v);
    }
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
        Violation::at(
            &at(u32::try_from(line).unwrap_or(u32::MAX)),
            Rule::Encoding,
            format!(
                "file is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Parses a manifest read back from a target (no line information), to learn what a live
/// object references. `None` when the live object does not have a shape pbsync understands.
/// The returned object's `manifest` is `Null`: the caller has the manifest already.
pub fn parse_live(path: &str, manifest: &serde_json::Value) -> Option<Object> {
    let path: Arc<str> = Arc::from(path);
    object_from_json(&path, 0, std::borrow::Cow::Borrowed(manifest), &|_| 0).ok()
}

/// One document: the object (when its spec parsed), its violations, and the identity it
/// claims when it was rejected.
struct DocumentResult {
    object: Option<Object>,
    violations: Vec<Violation>,
    claimed: Option<ObjectKey>,
}

fn document(
    path: &Arc<str>,
    doc_line: u32,
    json: serde_json::Value,
    lines: &Lines<'_>,
) -> DocumentResult {
    let claimed = json
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .and_then(Kind::parse)
        .and_then(|kind| claimed_key(kind, &json));
    match object_from_json(path, doc_line, std::borrow::Cow::Owned(json), lines) {
        Ok(obj) => DocumentResult {
            object: Some(obj),
            violations: Vec::new(),
            claimed: None,
        },
        Err(Rejected { violations, object }) => DocumentResult {
            claimed: if object.is_some() { None } else { claimed },
            object: object.map(|o| *o),
            violations,
        },
    }
}

/// The identity a document claims, read without validating anything but its presence.
fn claimed_key(kind: Kind, json: &serde_json::Value) -> Option<ObjectKey> {
    let text = |ptr: &str| {
        json.pointer(ptr)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let name = text("/metadata/name")?;
    let namespace = if kind.is_palette() {
        text("/metadata/scope").unwrap_or("project")
    } else {
        text("/metadata/namespace")?
    };
    Some(ObjectKey::new(kind, namespace, name))
}

/// Why a document is not a valid object.
struct Rejected {
    violations: Vec<Violation>,
    /// The object anyway, when only its metadata is at fault (see [`ParsedFile::objects`]).
    object: Option<Box<Object>>,
}

impl From<Vec<Violation>> for Rejected {
    fn from(violations: Vec<Violation>) -> Self {
        Self {
            violations,
            object: None,
        }
    }
}

type Lines<'a> = dyn Fn(&[PathSegment<'_>]) -> u32 + 'a;

struct Header {
    api_version: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
    scope: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn object_from_json(
    path: &Arc<str>,
    doc_line: u32,
    json: std::borrow::Cow<'_, serde_json::Value>,
    lines: &Lines<'_>,
) -> Result<Object, Rejected> {
    use PathSegment::Key;
    let loc = |line: u32| Location {
        path: path.clone(),
        line,
    };
    let doc_loc = loc(doc_line);
    if !json.is_object() {
        return Err(Rejected::from(vec![Violation::at(
            &doc_loc,
            Rule::Shape,
            "a document must be a mapping",
        )]));
    }
    // Only the two fields: deserializing a clone of the whole document here was a third of
    // the parse time of a large repository.
    let header = Header {
        api_version: json.get("apiVersion").cloned(),
        kind: json.get("kind").cloned(),
    };
    let (Some(serde_json::Value::String(api_version)), Some(serde_json::Value::String(kind))) =
        (&header.api_version, &header.kind)
    else {
        let missing: Vec<&str> = [("apiVersion", &header.api_version), ("kind", &header.kind)]
            .into_iter()
            .filter(|(_, v)| !matches!(v, Some(serde_json::Value::String(_))))
            .map(|(field, _)| field)
            .collect();
        return Err(Rejected::from(vec![Violation::at(
            &doc_loc,
            Rule::Shape,
            format!(
                "document has no {} string; every document needs apiVersion and kind",
                missing.join(" and ")
            ),
        )]));
    };
    let kind_loc = loc(lines(&[Key("kind")]));
    let Some(kind) = Kind::parse(kind) else {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        return Err(Rejected::from(vec![Violation::at(
            &kind_loc,
            Rule::UnknownKind,
            format!(
                "kind {kind:?} is not managed by pbsync (known kinds: {})",
                known.join(", ")
            ),
        )]));
    };
    if !kind.api_versions().contains(&api_version.as_str()) {
        return Err(Rejected::from(vec![Violation::at(
            &loc(lines(&[Key("apiVersion")])),
            Rule::Shape,
            format!(
                "apiVersion {api_version:?} is not accepted for {kind}; use {}",
                kind.api_versions().join(" or ")
            ),
        )]));
    }
    let meta: Metadata = typed(&json, &[Key("metadata")], lines, path)?.unwrap_or_default();
    let mut violations = Vec::new();
    let meta_line = lines(&[Key("metadata")]);
    let name = match meta.name.as_deref() {
        None | Some("") => {
            violations.push(Violation::at(
                &loc(meta_line),
                Rule::Names,
                "metadata.name is required",
            ));
            String::new()
        }
        Some(n) => {
            if let Err(why) = check_subdomain(n) {
                violations.push(Violation::at(
                    &loc(lines(&[Key("metadata"), Key("name")])),
                    Rule::Names,
                    format!("name {n:?} is not a valid RFC 1123 name: {why}"),
                ));
            }
            n.to_string()
        }
    };
    let namespace = if kind.is_palette() {
        let scope = meta.scope.clone().unwrap_or_else(|| "project".to_string());
        if scope != "project" && scope != "tenant" {
            violations.push(Violation::at(
                &loc(lines(&[Key("metadata"), Key("scope")])),
                Rule::Names,
                format!("scope {scope:?} must be project or tenant"),
            ));
        }
        scope
    } else {
        match meta.namespace.as_deref() {
            None | Some("") => {
                violations.push(Violation::at(
                    &loc(meta_line),
                    Rule::Names,
                    format!(
                        "metadata.namespace is required: pbsync never guesses where a {kind} goes"
                    ),
                ));
                String::new()
            }
            Some(ns) => {
                if let Err(why) = check_label(ns) {
                    violations.push(Violation::at(
                        &loc(lines(&[Key("metadata"), Key("namespace")])),
                        Rule::Names,
                        format!("namespace {ns:?} is not a valid RFC 1123 label: {why}"),
                    ));
                }
                ns.to_string()
            }
        }
    };
    let ns: Arc<str> = Arc::from(namespace.as_str());
    let spec_result = parse_spec(kind, &ns, &meta, &json, lines, path);
    let (spec, version) = match spec_result {
        Ok(s) => s,
        Err(mut v) => {
            violations.append(&mut v);
            return Err(violations.into());
        }
    };
    let depends_on = match meta.annotations.get(DEPENDS_ON_ANNOTATION) {
        None => Vec::new(),
        Some(list) => {
            let line = lines(&[
                Key("metadata"),
                Key("annotations"),
                Key(DEPENDS_ON_ANNOTATION),
            ]);
            match parse_depends_on(list, line) {
                Ok(refs) => refs,
                Err(msg) => {
                    violations.push(Violation::at(&loc(line), Rule::Shape, msg));
                    Vec::new()
                }
            }
        }
    };
    let key = ObjectKey {
        kind,
        namespace: ns,
        name: Arc::from(name.as_str()),
        version,
    };
    let object = Object {
        key,
        location: doc_loc,
        // A live object parsed for its references only keeps no copy of its manifest.
        manifest: match json {
            std::borrow::Cow::Owned(v) => super::Manifest::new(&v),
            std::borrow::Cow::Borrowed(_) => super::Manifest::null(),
        },
        spec,
        depends_on,
    };
    if violations.is_empty() {
        Ok(object)
    } else {
        // Keep an object that has an identity, however badly spelt, for the rules.
        let named = !object.key.name.is_empty() && !object.key.namespace.is_empty();
        Err(Rejected {
            violations,
            object: named.then(|| Box::new(object)),
        })
    }
}

/// Deserializes the value at `at` (None when absent), reporting a shape violation at the line
/// of the offending field.
fn typed<T: DeserializeOwned>(
    json: &serde_json::Value,
    at: &[PathSegment<'_>],
    lines: &Lines<'_>,
    path: &Arc<str>,
) -> Result<Option<T>, Vec<Violation>> {
    let mut value = json;
    for seg in at {
        let next = match seg {
            PathSegment::Key(k) => value.get(*k),
            PathSegment::Index(i) => value.get(*i),
        };
        match next {
            Some(v) => value = v,
            None => return Ok(None),
        }
    }
    if value.is_null() {
        return Ok(None);
    }
    serde_path_to_error::deserialize(value)
        .map(Some)
        .map_err(|err| {
            let keys: Vec<String> = err
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(format!("#{index}")),
                    _ => None,
                })
                .collect();
            let mut segs: Vec<PathSegment<'_>> = at.to_vec();
            for k in &keys {
                match k.strip_prefix('#').and_then(|i| i.parse().ok()) {
                    Some(i) => segs.push(PathSegment::Index(i)),
                    None => segs.push(PathSegment::Key(k)),
                }
            }
            let mut field = at
                .iter()
                .map(|s| match s {
                    PathSegment::Key(k) => (*k).to_string(),
                    PathSegment::Index(i) => format!("[{i}]"),
                })
                .collect::<Vec<_>>()
                .join(".");
            for k in &keys {
                match k.strip_prefix('#') {
                    Some(i) => field.push_str(&format!("[{i}]")),
                    None => {
                        field.push('.');
                        field.push_str(k);
                    }
                }
            }
            let inner = err.inner().to_string();
            vec![Violation::at(
                &Location {
                    path: path.clone(),
                    line: lines(&segs),
                },
                Rule::Shape,
                format!("{field}: {inner}"),
            )]
        })
}

fn require<T>(
    value: Option<T>,
    what: &str,
    line: u32,
    path: &Arc<str>,
) -> Result<T, Vec<Violation>> {
    value.ok_or_else(|| {
        vec![Violation::at(
            &Location {
                path: path.clone(),
                line,
            },
            Rule::Shape,
            format!("{what} is required"),
        )]
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BundleSpecDoc {
    #[serde(rename = "type")]
    bundle_type: BundleType,
    #[serde(default)]
    deletion_policy: DeletionPolicy,
    #[serde(default)]
    cluster_profiles: Vec<ProfileRefDoc>,
    #[serde(default)]
    workload_profiles: Vec<NameRefDoc>,
    #[serde(default)]
    workload_profile_dependencies: DependenciesDoc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileRefDoc {
    name: String,
    version: String,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameRefDoc {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NsNameRefDoc {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// `ComputePool.spec.profileBundleRef` (doc): name, namespace and the cloud type.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PoolBundleRefDoc {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    cloud_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DependenciesDoc {
    #[serde(default)]
    helm_repositories: Vec<NameRefDoc>,
    #[serde(default)]
    oci_repositories: Vec<NameRefDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadProfileSpecDoc {
    #[serde(rename = "type")]
    workload_type: WorkloadType,
    workload: WorkloadDoc,
}

#[derive(Deserialize)]
struct WorkloadDoc {
    #[serde(default)]
    components: Vec<ComponentDoc>,
    #[serde(default)]
    policies: Vec<TypedDoc>,
}

#[derive(Deserialize)]
struct ComponentDoc {
    #[allow(dead_code)]
    name: String,
    #[serde(rename = "type")]
    component_type: String,
    #[serde(default)]
    traits: Vec<TypedDoc>,
}

#[derive(Deserialize)]
struct TypedDoc {
    #[serde(rename = "type")]
    def_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClusterProfileSpecDoc {
    version: String,
    template: TemplateDoc,
    #[serde(default)]
    #[allow(dead_code)]
    variables: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TemplateDoc {
    #[serde(rename = "type")]
    profile_type: ProfileType,
    #[allow(dead_code)]
    cloud_type: String,
    #[serde(default)]
    #[allow(dead_code)]
    packs: Vec<PackDoc>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct PackDoc {
    name: String,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ComputePoolSpecDoc {
    profile_bundle_ref: PoolBundleRefDoc,
    #[serde(default)]
    cluster_variant: Option<ClusterVariantDoc>,
}

#[derive(Deserialize)]
struct ClusterVariantDoc {
    #[serde(default)]
    dedicated: Option<serde_json::Value>,
    #[serde(default)]
    shared: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AiWorkloadSpecDoc {
    profile_bundle_refs: Vec<NsNameRefDoc>,
    compute_pool: PoolChoiceDoc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolChoiceDoc {
    #[serde(default, rename = "ref")]
    existing: Option<NsNameRefDoc>,
    #[serde(default)]
    dedicated: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct UrlSpecDoc {
    url: String,
}

fn parse_spec(
    kind: Kind,
    ns: &Arc<str>,
    meta: &Metadata,
    json: &serde_json::Value,
    lines: &Lines<'_>,
    path: &Arc<str>,
) -> Result<(Spec, Option<Arc<str>>), Vec<Violation>> {
    use PathSegment::{Index, Key};
    let spec_line = lines(&[Key("spec")]);
    let shape = |line: u32, msg: String| {
        vec![Violation::at(
            &Location {
                path: path.clone(),
                line,
            },
            Rule::Shape,
            msg,
        )]
    };
    let spec = match kind {
        Kind::ProfileBundle => {
            let doc: BundleSpecDoc = require(
                typed(json, &[Key("spec")], lines, path)?,
                "spec",
                spec_line,
                path,
            )?;
            let cluster_profiles = doc
                .cluster_profiles
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let scope = r.scope.as_deref().unwrap_or("project");
                    Ref::to(
                        ObjectKey::cluster_profile(scope, r.name.as_str(), r.version.as_str()),
                        lines(&[Key("spec"), Key("clusterProfiles"), Index(i)]),
                        "cluster profile",
                    )
                })
                .collect();
            let name_refs = |list: &[NameRefDoc], kind: Kind, segs: &[&str], field| {
                list.iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let mut p: Vec<PathSegment<'_>> = segs.iter().map(|s| Key(s)).collect();
                        p.push(Index(i));
                        Ref::to(
                            ObjectKey::new(kind, ns.clone(), r.name.as_str()),
                            lines(&p),
                            field,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let workload_profiles = name_refs(
                &doc.workload_profiles,
                Kind::WorkloadProfile,
                &["spec", "workloadProfiles"],
                "workload profile",
            );
            let mut repositories = name_refs(
                &doc.workload_profile_dependencies.helm_repositories,
                Kind::HelmRepository,
                &["spec", "workloadProfileDependencies", "helmRepositories"],
                "Helm repository",
            );
            repositories.extend(name_refs(
                &doc.workload_profile_dependencies.oci_repositories,
                Kind::OciRepository,
                &["spec", "workloadProfileDependencies", "ociRepositories"],
                "OCI repository",
            ));
            // Rule 9 for the references themselves: each at the line of its own field.
            let mut bad_refs = Vec::new();
            for (i, r) in doc.cluster_profiles.iter().enumerate() {
                let at = |field| {
                    let line = lines(&[Key("spec"), Key("clusterProfiles"), Index(i), Key(field)]);
                    Location {
                        path: path.clone(),
                        line,
                    }
                };
                if let Some(scope) = r
                    .scope
                    .as_deref()
                    .filter(|s| !matches!(*s, "project" | "tenant"))
                {
                    bad_refs.push(Violation::at(
                        &at("scope"),
                        Rule::Names,
                        format!("cluster profile scope {scope:?} must be project or tenant"),
                    ));
                }
                if r.version.trim().is_empty() {
                    bad_refs.push(Violation::at(
                        &at("version"),
                        Rule::Names,
                        format!("cluster profile {} needs a non-empty version", r.name),
                    ));
                }
            }
            if !bad_refs.is_empty() {
                return Err(bad_refs);
            }
            Spec::Bundle(Bundle {
                bundle_type: doc.bundle_type,
                deletion_policy: doc.deletion_policy,
                cluster_profiles,
                workload_profiles,
                repositories,
                inference_engine: meta.labels.get(INFERENCE_ENGINE_LABEL).cloned(),
            })
        }
        Kind::WorkloadProfile => {
            let doc: WorkloadProfileSpecDoc = require(
                typed(json, &[Key("spec")], lines, path)?,
                "spec",
                spec_line,
                path,
            )?;
            let def_ref = |kind: Kind, name: &str, line: u32, field: &'static str| {
                let mut candidates = vec![ObjectKey::new(kind, ns.clone(), name)];
                if &**ns != "vela-system" {
                    candidates.push(ObjectKey::new(kind, "vela-system", name));
                }
                Ref {
                    candidates,
                    line,
                    field,
                    ordering_only: false,
                }
            };
            let mut definitions = Vec::new();
            for (i, c) in doc.workload.components.iter().enumerate() {
                let at = [Key("spec"), Key("workload"), Key("components"), Index(i)];
                definitions.push(def_ref(
                    Kind::ComponentDefinition,
                    &c.component_type,
                    lines(&[at[0], at[1], at[2], at[3], Key("type")]),
                    "component type",
                ));
                for (j, t) in c.traits.iter().enumerate() {
                    definitions.push(def_ref(
                        Kind::TraitDefinition,
                        &t.def_type,
                        lines(&[
                            at[0],
                            at[1],
                            at[2],
                            at[3],
                            Key("traits"),
                            Index(j),
                            Key("type"),
                        ]),
                        "trait type",
                    ));
                }
            }
            for (i, p) in doc.workload.policies.iter().enumerate() {
                definitions.push(def_ref(
                    Kind::PolicyDefinition,
                    &p.def_type,
                    lines(&[
                        Key("spec"),
                        Key("workload"),
                        Key("policies"),
                        Index(i),
                        Key("type"),
                    ]),
                    "policy type",
                ));
            }
            Spec::WorkloadProfile(WorkloadProfile {
                workload_type: doc.workload_type,
                definitions,
            })
        }
        Kind::ClusterProfile => {
            let doc: ClusterProfileSpecDoc = require(
                typed(json, &[Key("spec")], lines, path)?,
                "spec",
                spec_line,
                path,
            )?;
            if doc.version.trim().is_empty() {
                return Err(vec![Violation::at(
                    &Location {
                        path: path.clone(),
                        line: lines(&[Key("spec"), Key("version")]),
                    },
                    Rule::Names,
                    "cluster profile version must not be empty",
                )]);
            }
            let version: Arc<str> = Arc::from(doc.version.as_str());
            return Ok((
                Spec::ClusterProfile(ClusterProfile {
                    profile_type: doc.template.profile_type,
                }),
                Some(version),
            ));
        }
        Kind::ComputePool => {
            let doc: ComputePoolSpecDoc = require(
                typed(json, &[Key("spec")], lines, path)?,
                "spec",
                spec_line,
                path,
            )?;
            let variant_line = lines(&[Key("spec"), Key("clusterVariant")]);
            let variant = match doc.cluster_variant {
                Some(ClusterVariantDoc {
                    dedicated: Some(_),
                    shared: None,
                }) => PoolVariant::Dedicated,
                Some(ClusterVariantDoc {
                    dedicated: None,
                    shared: Some(_),
                }) => PoolVariant::Shared,
                _ => {
                    return Err(shape(
                        variant_line,
                        "spec.clusterVariant must set exactly one of dedicated or shared".into(),
                    ));
                }
            };
            let r = &doc.profile_bundle_ref;
            let bundle_ns: Arc<str> = r.namespace.as_deref().map_or_else(|| ns.clone(), Arc::from);
            Spec::ComputePool(ComputePool {
                bundle: Ref::to(
                    ObjectKey::new(Kind::ProfileBundle, bundle_ns, r.name.as_str()),
                    lines(&[Key("spec"), Key("profileBundleRef")]),
                    "profile bundle",
                ),
                variant,
            })
        }
        Kind::AiWorkload => {
            let type_line = lines(&[Key("metadata"), Key("labels"), Key(AIWORKLOAD_TYPE_LABEL)]);
            let deployment_type = match meta.labels.get(AIWORKLOAD_TYPE_LABEL).map(String::as_str) {
                Some("application") => DeploymentType::Application,
                Some("model") => DeploymentType::Model,
                other => {
                    return Err(shape(
                        type_line,
                        format!(
                            "label {AIWORKLOAD_TYPE_LABEL} must be application or model, not {}",
                            other.map_or_else(|| "missing".to_string(), |o| format!("{o:?}"))
                        ),
                    ));
                }
            };
            let doc: AiWorkloadSpecDoc = require(
                typed(json, &[Key("spec")], lines, path)?,
                "spec",
                spec_line,
                path,
            )?;
            if doc.profile_bundle_refs.is_empty() {
                return Err(shape(
                    lines(&[Key("spec"), Key("profileBundleRefs")]),
                    "spec.profileBundleRefs needs at least one bundle".into(),
                ));
            }
            let bundles = doc
                .profile_bundle_refs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let bns: Arc<str> =
                        r.namespace.as_deref().map_or_else(|| ns.clone(), Arc::from);
                    Ref::to(
                        ObjectKey::new(Kind::ProfileBundle, bns, r.name.as_str()),
                        lines(&[Key("spec"), Key("profileBundleRefs"), Index(i)]),
                        "profile bundle",
                    )
                })
                .collect();
            let pool_line = lines(&[Key("spec"), Key("computePool")]);
            let pool = match (doc.compute_pool.existing, doc.compute_pool.dedicated) {
                (Some(r), None) => {
                    let pns: Arc<str> =
                        r.namespace.as_deref().map_or_else(|| ns.clone(), Arc::from);
                    Some(Ref::to(
                        ObjectKey::new(Kind::ComputePool, pns, r.name.as_str()),
                        lines(&[Key("spec"), Key("computePool"), Key("ref")]),
                        "compute pool",
                    ))
                }
                (None, Some(_)) => None,
                _ => {
                    return Err(shape(
                        pool_line,
                        "spec.computePool must set exactly one of ref (an existing Shared pool) or dedicated".into(),
                    ));
                }
            };
            Spec::AiWorkload(AiWorkload {
                deployment_type,
                bundles,
                pool,
            })
        }
        Kind::HelmRepository | Kind::OciRepository => {
            let doc: UrlSpecDoc = require(
                typed(json, &[Key("spec")], lines, path)?,
                "spec",
                spec_line,
                path,
            )?;
            let ok = if kind == Kind::HelmRepository {
                ["http://", "https://", "oci://"]
                    .iter()
                    .any(|p| doc.url.starts_with(p))
            } else {
                doc.url.starts_with("oci://")
            };
            if !ok {
                let want = if kind == Kind::HelmRepository {
                    "http://, https:// or oci://"
                } else {
                    "oci://"
                };
                return Err(shape(
                    lines(&[Key("spec"), Key("url")]),
                    format!("spec.url {:?} must start with {want}", doc.url),
                ));
            }
            Spec::Leaf
        }
        Kind::ComponentDefinition | Kind::TraitDefinition | Kind::PolicyDefinition => {
            require(
                typed::<serde_json::Map<String, serde_json::Value>>(
                    json,
                    &[Key("spec")],
                    lines,
                    path,
                )?,
                "spec",
                spec_line,
                path,
            )?;
            Spec::Leaf
        }
    };
    Ok((spec, None))
}

fn parse_depends_on(list: &str, line: u32) -> Result<Vec<Ref>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let bad = || format!("{DEPENDS_ON_ANNOTATION}: {item:?} is not Kind/namespace/name (or ClusterProfile/scope/name@version)");
            let mut parts = item.splitn(3, '/');
            let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad());
            };
            let kind = Kind::parse(kind).ok_or_else(bad)?;
            let key = if kind.is_palette() {
                let (name, version) = name.split_once('@').ok_or_else(bad)?;
                ObjectKey::cluster_profile(ns, name, version)
            } else {
                ObjectKey::new(kind, ns, name)
            };
            Ok(Ref { candidates: vec![key], line, field: "depends-on", ordering_only: true })
        })
        .collect()
}

/// RFC 1123 subdomain: what Kubernetes requires of most object names.
fn check_subdomain(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        check_label_chars(
            label,
            "only lower-case letters, digits, '-' and '.' are allowed",
        )?;
    }
    Ok(())
}

/// RFC 1123 label: what Kubernetes requires of namespace names.
fn check_label(name: &str) -> Result<(), &'static str> {
    if name.len() > 63 {
        return Err("longer than 63 characters");
    }
    // A label has no dots: say so, rather than the subdomain's "'-' and '.' are allowed".
    check_label_chars(name, "only lower-case letters, digits and '-' are allowed")
}

fn check_label_chars(label: &str, allowed: &'static str) -> Result<(), &'static str> {
    let bytes = label.as_bytes();
    if bytes.is_empty() {
        return Err("empty segment");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(allowed);
    }
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> SourceFile {
        SourceFile {
            path: Arc::from("bundles/a.yaml"),
            blob: String::new(),
            content: Content::Bytes(text.as_bytes().to_vec()),
        }
    }

    fn parse(text: &str) -> (Vec<Object>, Vec<Violation>) {
        parse_file(&file(text), &Limits::default())
    }

    #[test]
    fn bundle_references_carry_their_lines() {
        let (objs, v) = parse(
            "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata:\n  name: b\n  namespace: ns\nspec:\n  type: Fullstack\n  clusterProfiles:\n    - {name: infra, version: 1.0.0}\n  workloadProfiles:\n    - name: wp\n",
        );
        assert!(v.is_empty(), "{v:?}");
        let b = objs[0].as_bundle().unwrap();
        assert_eq!(b.cluster_profiles[0].line, 9);
        assert_eq!(b.workload_profiles[0].line, 11);
        assert_eq!(
            b.cluster_profiles[0].primary().to_string(),
            "ClusterProfile project/infra@1.0.0"
        );
    }

    #[test]
    fn wrong_enum_is_a_shape_violation_at_its_line() {
        let (_, v) = parse(
            "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata: {name: b, namespace: ns}\nspec:\n  type: Everything\n",
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].rule, Rule::Shape);
        assert_eq!(v[0].line, 5);
        assert!(v[0].message.starts_with("spec.type"), "{}", v[0].message);
    }

    #[test]
    fn unknown_kinds_and_missing_namespaces_are_reported() {
        let (_, v) = parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
        assert_eq!(v[0].rule, Rule::UnknownKind);
        let (_, v) = parse(
            "apiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata: {name: x}\nspec: {url: 'https://a'}\n",
        );
        assert_eq!(v[0].rule, Rule::Names);
    }

    #[test]
    fn not_utf8_reports_the_line_of_the_bad_byte() {
        let mut bytes = b"a: 1\nb: 2\n".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        let f = SourceFile {
            path: Arc::from("x.yaml"),
            blob: String::new(),
            content: Content::Bytes(bytes),
        };
        let (_, v) = parse_file(&f, &Limits::default());
        assert_eq!((v[0].rule, v[0].line), (Rule::Encoding, 3));
    }

    #[test]
    fn an_object_with_only_a_bad_name_is_kept_for_the_rules() {
        let (objs, v) = parse(
            "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata: {name: Web, namespace: ns}\nspec:\n  type: Application\n",
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].rule, Rule::Names);
        assert_eq!(objs.len(), 1, "kept beside its violation");
    }

    #[test]
    fn a_rejected_document_still_claims_its_identity() {
        let parsed = parse_file_detailed(
            &file(
                "apiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata: {name: charts, namespace: ns}\nspec: {url: charts.example.com}\n",
            ),
            &Limits::default(),
        );
        assert!(parsed.objects.is_empty());
        assert_eq!(parsed.violations[0].line, 4);
        assert_eq!(
            parsed.rejected,
            vec![ObjectKey::new(Kind::HelmRepository, "ns", "charts")]
        );
    }

    #[test]
    fn bundle_cluster_profile_references_need_a_version_and_a_scope() {
        let (_, v) = parse(
            "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata: {name: b, namespace: ns}\nspec:\n  type: Infrastructure\n  clusterProfiles:\n    - name: infra\n      version: ''\n      scope: global\n",
        );
        let got: Vec<(Rule, u32)> = v.iter().map(|v| (v.rule, v.line)).collect();
        assert_eq!(got, vec![(Rule::Names, 9), (Rule::Names, 8)]);
    }

    #[test]
    fn compute_pool_bundle_refs_may_name_their_cloud_type() {
        let (objs, v) = parse(
            "apiVersion: spectrocloud.com/v1alpha1\nkind: ComputePool\nmetadata: {name: p, namespace: ns}\nspec:\n  profileBundleRef: {name: b, cloudType: edge-native}\n  clusterVariant: {shared: {}}\n",
        );
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(
            objs[0].refs().next().unwrap().primary().to_string(),
            "ProfileBundle ns/b"
        );
    }

    #[test]
    fn names_follow_rfc_1123() {
        assert!(check_subdomain("a.b-c").is_ok());
        assert!(check_subdomain("Upper").is_err());
        assert!(check_subdomain("-a").is_err());
        assert!(check_label("a.b").is_err());
    }
}
