//! The model: typed objects read from one commit, the rules they must follow, and the
//! violations that make a commit unusable. Pure: no I/O.
//!
//! `load` turns a [`Snapshot`](crate::snapshot::Snapshot) into a [`DesiredState`] and the list
//! of every violation found on the way (syntax, shape, unknown kinds, names, duplicates).
//! `validate` then checks the bundle rules of the domain contract (§3, rules 1–8) once
//! references can be resolved against the repository and, when a target is available, the
//! live catalogue of cluster profiles and definitions.

mod key;
mod manifest;
mod parse;
pub mod stored;
mod validate;
mod workflow;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use key::{KeyMap, Kind, ObjectKey};
pub use manifest::Manifest;
pub use parse::{Limits, ParsedFile, parse_file, parse_file_detailed, parse_live};
pub use validate::{Catalog, Found, Resolution, resolve, validate};
pub use workflow::{
    DeploymentParts, FullstackFilter, Part, PartRef, Workflow, fullstack_filter, fullstack_parts,
};

/// Label marking a Model or Application bundle with its inference engine (seed document).
pub(crate) const INFERENCE_ENGINE_LABEL: &str = "palette.ai/inference-engine";
/// Label telling an AIWorkload's deployment type (doc: `model`; `application` is our choice).
pub(crate) const AIWORKLOAD_TYPE_LABEL: &str = "palette.ai/aiworkload-type";
/// Annotation listing extra ordering dependencies (`Kind/namespace/name`, comma separated).
pub(crate) const DEPENDS_ON_ANNOTATION: &str = "pbsync.dev/depends-on";

/// Where a document (or a field in it) was written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Location {
    /// Repository-relative path.
    pub path: Arc<str>,
    /// 1-based line; 0 when unknown (objects read back from a target).
    pub line: u32,
}

impl Location {
    /// The same file at another line.
    pub(crate) fn with_line(&self, line: u32) -> Self {
        Self {
            path: self.path.clone(),
            line,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path, self.line)
    }
}

/// Which rule a violation breaks. The ids are stable: scripts match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// The file is not UTF-8.
    Encoding,
    /// The file is larger than the configured limit.
    FileSize,
    /// YAML syntax, or input over the nesting/alias limits.
    Yaml,
    /// A document without apiVersion/kind, a wrong apiVersion, or fields of the wrong shape.
    Shape,
    /// A kind pbsync does not manage.
    UnknownKind,
    /// Rule 1: Application bundles.
    ApplicationBundle,
    /// Rule 2: Infrastructure bundles.
    InfrastructureBundle,
    /// Rule 3: Fullstack bundles.
    FullstackBundle,
    /// Rule 4: never Application and Model workload profiles together.
    ApplicationAndModel,
    /// Rule 5: at most one Infrastructure-or-Full cluster profile.
    OneInfrastructureProfile,
    /// Rule 6: every name resolves.
    UnresolvedReference,
    /// Rule 7: inference-engine labels match.
    InferenceEngine,
    /// Rule 8: deployment workflows.
    Workflow,
    /// Rule 9: names, versions, explicit namespaces.
    Names,
    /// Two different objects with one identity.
    DuplicateConflict,
    /// A dependency cycle.
    Cycle,
}

impl Rule {
    /// True for rules about reading a file (encoding, size, YAML, shapes, kinds) rather than
    /// about what it declares.
    pub fn is_parse(self) -> bool {
        matches!(
            self,
            Self::Yaml | Self::Encoding | Self::FileSize | Self::Shape | Self::UnknownKind
        )
    }

    /// The stable id printed in reports.
    pub fn id(self) -> &'static str {
        match self {
            Self::Encoding => "encoding",
            Self::FileSize => "file-size",
            Self::Yaml => "yaml",
            Self::Shape => "shape",
            Self::UnknownKind => "unknown-kind",
            Self::ApplicationBundle => "R1-application-bundle",
            Self::InfrastructureBundle => "R2-infrastructure-bundle",
            Self::FullstackBundle => "R3-fullstack-bundle",
            Self::ApplicationAndModel => "R4-application-and-model",
            Self::OneInfrastructureProfile => "R5-one-infrastructure-profile",
            Self::UnresolvedReference => "R6-unresolved-reference",
            Self::InferenceEngine => "R7-inference-engine",
            Self::Workflow => "R8-workflow",
            Self::Names => "R9-names",
            Self::DuplicateConflict => "duplicate-conflict",
            Self::Cycle => "dependency-cycle",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// One broken rule at one place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Violation {
    /// Repository-relative path.
    pub path: Arc<str>,
    /// 1-based line.
    pub line: u32,
    /// The rule.
    pub rule: Rule,
    /// One line saying what is wrong.
    pub message: String,
}

impl Violation {
    /// A violation at `loc`.
    pub fn at(loc: &Location, rule: Rule, message: impl Into<String>) -> Self {
        Self {
            path: loc.path.clone(),
            line: loc.line,
            rule,
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.path, self.line, self.rule, self.message
        )
    }
}

/// Every violation of one commit, sorted by file and line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    /// Sorts and removes exact repeats.
    pub fn normalized(mut self) -> Self {
        self.0.sort();
        self.0.dedup();
        self
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violation(s)", self.0.len())?;
        if let Some(first) = self.0.first() {
            write!(f, ", first {first}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// ProfileBundle `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BundleType {
    /// Workload profiles only.
    Application,
    /// Cluster profiles (and Infrastructure workload profiles).
    Infrastructure,
    /// Both.
    Fullstack,
}

/// ProfileBundle `spec.deletionPolicy` (doc).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeletionPolicy {
    /// Delete dependents no other bundle references (the default).
    #[default]
    Delete,
    /// Leave dependents in place.
    Orphan,
}

impl fmt::Display for DeletionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delete => "delete",
            Self::Orphan => "orphan",
        })
    }
}

/// WorkloadProfile `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WorkloadType {
    /// An end-user application.
    Application,
    /// A model and its inference engine.
    Model,
    /// An infrastructure dependency outside the cluster profile.
    Infrastructure,
}

/// Palette cluster profile `template.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProfileType {
    /// Infrastructure.
    #[serde(rename = "infra")]
    Infra,
    /// Add-on.
    #[serde(rename = "add-on")]
    AddOn,
    /// Full (`cluster` in Palette's API).
    #[serde(rename = "cluster")]
    Full,
    /// Palette system profile (never valid in a bundle).
    #[serde(rename = "system")]
    System,
}

impl ProfileType {
    /// True for Infrastructure and Full, the types a bundle may hold at most one of.
    pub(crate) fn is_infrastructure(self) -> bool {
        matches!(self, Self::Infra | Self::Full)
    }

    /// Parses Palette's API name.
    pub fn from_api(s: &str) -> Option<Self> {
        match s {
            "infra" => Some(Self::Infra),
            "add-on" => Some(Self::AddOn),
            "cluster" => Some(Self::Full),
            "system" => Some(Self::System),
            _ => None,
        }
    }
}

/// A reference from one object to another, with the line it is written on.
///
/// `candidates` lists the keys it may resolve to, most preferred first: a definition type
/// resolves in the object's own namespace, then in `vela-system` (KubeVela's convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    /// Keys this reference may resolve to, in order of preference.
    pub candidates: Vec<ObjectKey>,
    /// Line of the reference in its file.
    pub line: u32,
    /// What the reference is (for messages), e.g. "workload profile".
    pub field: &'static str,
    /// True for ordering-only references from the depends-on annotation.
    pub ordering_only: bool,
}

impl Ref {
    fn to(key: ObjectKey, line: u32, field: &'static str) -> Self {
        Self {
            candidates: vec![key],
            line,
            field,
            ordering_only: false,
        }
    }

    /// The preferred key, used when naming the reference in messages.
    pub(crate) fn primary(&self) -> &ObjectKey {
        &self.candidates[0]
    }
}

/// ProfileBundle spec, as far as pbsync reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Bundle type.
    pub bundle_type: BundleType,
    /// Deletion policy.
    pub deletion_policy: DeletionPolicy,
    /// Cluster profiles.
    pub cluster_profiles: Vec<Ref>,
    /// Workload profiles.
    pub workload_profiles: Vec<Ref>,
    /// Flux Helm and OCI repositories.
    pub repositories: Vec<Ref>,
    /// `palette.ai/inference-engine` label.
    pub inference_engine: Option<String>,
}

/// WorkloadProfile spec, as far as pbsync reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadProfile {
    /// Type.
    pub workload_type: WorkloadType,
    /// Component, trait and policy definitions named by `type`.
    pub definitions: Vec<Ref>,
}

/// ClusterProfile envelope, as far as pbsync reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterProfile {
    /// Palette profile type.
    pub profile_type: ProfileType,
}

/// A Compute Pool's variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PoolVariant {
    /// Its own cluster.
    Dedicated,
    /// A cluster shared by several deployments.
    Shared,
}

/// ComputePool spec, as far as pbsync reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputePool {
    /// `spec.profileBundleRef` (doc).
    pub bundle: Ref,
    /// Dedicated or Shared.
    pub variant: PoolVariant,
}

/// AIWorkload deployment type (label `palette.ai/aiworkload-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeploymentType {
    /// App Deployment.
    Application,
    /// Model Deployment.
    Model,
}

/// AIWorkload spec (our choice of schema; see the README).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiWorkload {
    /// App or Model deployment.
    pub deployment_type: DeploymentType,
    /// The bundles it deploys.
    pub bundles: Vec<Ref>,
    /// An existing (Shared) pool, or `None` for a new Dedicated pool.
    pub pool: Option<Ref>,
}

/// What pbsync knows about an object beyond its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// A ProfileBundle.
    Bundle(Bundle),
    /// A WorkloadProfile.
    WorkloadProfile(WorkloadProfile),
    /// A ClusterProfile envelope.
    ClusterProfile(ClusterProfile),
    /// A ComputePool.
    ComputePool(ComputePool),
    /// An AIWorkload.
    AiWorkload(AiWorkload),
    /// A definition or a repository: referenced, references nothing.
    Leaf,
}

/// One object read from the repository (or back from a target).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Identity.
    pub key: ObjectKey,
    /// Where it was written.
    pub location: Location,
    /// The document as written (JSON form, held compactly). Shared, so that a cached parse
    /// hands the same document to every pass without copying it (and a target may know it
    /// by identity).
    pub manifest: Manifest,
    /// Typed view of the fields pbsync acts on.
    pub spec: Spec,
    /// Ordering-only dependencies from the depends-on annotation.
    pub depends_on: Vec<Ref>,
}

impl Object {
    /// Every reference this object makes, graph edges included ordering-only ones.
    pub fn refs(&self) -> impl Iterator<Item = &Ref> {
        let own: Vec<&Ref> = match &self.spec {
            Spec::Bundle(b) => b
                .cluster_profiles
                .iter()
                .chain(&b.workload_profiles)
                .chain(&b.repositories)
                .collect(),
            Spec::WorkloadProfile(w) => w.definitions.iter().collect(),
            Spec::ComputePool(p) => vec![&p.bundle],
            Spec::AiWorkload(w) => w.bundles.iter().chain(w.pool.as_ref()).collect(),
            Spec::ClusterProfile(_) | Spec::Leaf => Vec::new(),
        };
        own.into_iter().chain(&self.depends_on)
    }

    /// The bundle spec, for ProfileBundles.
    pub fn as_bundle(&self) -> Option<&Bundle> {
        match &self.spec {
            Spec::Bundle(b) => Some(b),
            _ => None,
        }
    }
}

/// The objects of one commit, deduplicated, indexed by key.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    /// Revision they were read at.
    pub revision: String,
    /// Objects, sorted by key.
    pub objects: Vec<Object>,
    /// Position of each key in `objects`.
    pub index: KeyMap<usize>,
    /// Non-fatal findings (merged duplicates, ...).
    pub warnings: Vec<String>,
    /// Identities (without version) of documents that were rejected with a violation of
    /// their own; references to them are not reported a second time as unresolved.
    pub rejected: BTreeSet<ObjectKey>,
}

impl DesiredState {
    /// Builds the state from parsed objects: merges identical duplicates, reports differing
    /// ones, and sorts by key.
    pub fn from_objects(
        revision: String,
        objects: Vec<Object>,
        violations: &mut Vec<Violation>,
    ) -> Self {
        let mut by_key: BTreeMap<ObjectKey, Object> = BTreeMap::new();
        let mut warnings = Vec::new();
        for obj in objects {
            match by_key.get(&obj.key) {
                None => {
                    by_key.insert(obj.key.clone(), obj);
                }
                Some(first) if first.manifest == obj.manifest => {
                    warnings.push(format!(
                        "{} is declared identically in {} and {}; merged",
                        obj.key, first.location, obj.location
                    ));
                }
                Some(first) => violations.push(Violation::at(
                    &obj.location,
                    Rule::DuplicateConflict,
                    format!(
                        "{} is also declared, differently, at {}",
                        obj.key, first.location
                    ),
                )),
            }
        }
        let objects: Vec<Object> = by_key.into_values().collect();
        let index = objects
            .iter()
            .enumerate()
            .map(|(i, o)| (o.key.clone(), i))
            .collect();
        Self {
            revision,
            objects,
            index,
            warnings,
            rejected: BTreeSet::new(),
        }
    }

    /// True when a rejected document claimed this identity (any version).
    pub(crate) fn is_rejected(&self, key: &ObjectKey) -> bool {
        !self.rejected.is_empty()
            && self.rejected.contains(&ObjectKey {
                version: None,
                ..key.clone()
            })
    }

    /// The object with this key.
    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.index.get(key).map(|&i| &self.objects[i])
    }
}
