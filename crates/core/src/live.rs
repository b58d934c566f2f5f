//! Live state as a target observed it: the value handed from `apply` (I/O) to `plan` (pure).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::graph::ResourceGraph;
use crate::model::{
    Catalog, DesiredState, Kind, Manifest, Object, ObjectKey, ProfileType, Spec, WorkloadType,
    parse_live,
};
use crate::ownership::{self, Ownership, Stamp};

/// One live object.
#[derive(Debug, Clone)]
pub struct LiveObject {
    /// The object as the target holds it, in the same shape `ownership::render` produces;
    /// `None` when it exists but could not be read (`error` says why), or when
    /// `matches_desired` made keeping it unnecessary.
    pub manifest: Option<Value>,
    /// The target checked that it holds exactly what pbsync would write for the desired
    /// object of this key (the graph given to `observe`, rendered with this instance's marks),
    /// except for the revision annotation, which no comparison looks at. The plan then takes
    /// the object as unchanged and reads its references from the desired object, so a large
    /// unchanged target need not be parsed or held in memory.
    pub matches_desired: bool,
    /// Why the object could not be read or compared.
    pub error: Option<String>,
    /// Ownership from this instance's point of view.
    pub ownership: Ownership,
    /// The desired object as the target would store it (a server-side dry-run), when the
    /// target computes one: `Err` carries the server's message.
    pub dry_run: Option<Result<Value, String>>,
    /// For cluster profiles: the clusters using it (Palette `status.inUseClusters`).
    pub in_use_by: Vec<String>,
    /// For cluster profiles: the profile type, for validating external references.
    pub profile_type: Option<ProfileType>,
}

impl LiveObject {
    /// A readable live object.
    pub fn new(manifest: Value, ownership: Ownership) -> Self {
        Self {
            manifest: Some(manifest),
            matches_desired: false,
            error: None,
            ownership,
            dry_run: None,
            in_use_by: Vec::new(),
            profile_type: None,
        }
    }

    /// A live object the target found to hold exactly the desired object (see
    /// [`Self::matches_desired`]); its manifest is not kept.
    pub fn matching_desired(ownership: Ownership) -> Self {
        Self {
            manifest: None,
            matches_desired: true,
            error: None,
            ownership,
            dry_run: None,
            in_use_by: Vec::new(),
            profile_type: None,
        }
    }

    /// A live object that exists but could not be read.
    pub fn unreadable(error: impl Into<String>, ownership: Ownership) -> Self {
        Self {
            manifest: None,
            matches_desired: false,
            error: Some(error.into()),
            ownership,
            dry_run: None,
            in_use_by: Vec::new(),
            profile_type: None,
        }
    }

    /// True when the object carries the note a release leaves (`pbsync.dev/released-by`).
    pub fn released_note(&self) -> bool {
        self.manifest
            .as_ref()
            .and_then(|m| m.pointer("/metadata/annotations"))
            .and_then(|a| a.get(crate::ownership::RELEASED_BY_ANNOTATION))
            .is_some()
    }

    /// Repository path recorded on the object when pbsync wrote it.
    pub(crate) fn source_path(&self) -> Option<&str> {
        self.manifest
            .as_ref()?
            .pointer("/metadata/annotations")?
            .get(crate::ownership::SOURCE_ANNOTATION)?
            .as_str()
    }
}

/// Everything a target observed: every object it manages, every object the desired state
/// names, every ProfileBundle, ComputePool and AIWorkload (whoever owns them: they hold
/// references that keep shared objects alive and bundles and pools in place, and a commit may
/// deploy onto them), and the catalogue of live cluster profiles and definitions.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Live objects by key.
    pub objects: BTreeMap<ObjectKey, LiveObject>,
    /// When the live state was read (RFC 3339), for plan footers.
    pub read_at: Option<String>,
    /// Desired objects that do not exist yet and that a server-side dry-run of their
    /// creation rejected, with the server's message: planned as `unknown`, never as `create`.
    pub rejected: BTreeMap<ObjectKey, String>,
    /// Namespaces the commit writes into that the hub does not have: their objects are
    /// planned as `unknown`, and the apply writes nothing at all.
    pub missing_namespaces: std::collections::BTreeSet<String>,
    /// Removals an earlier pass decided and recorded before it began removing, and did not
    /// finish (it was killed, or a removal failed): see [`Removal`].
    pub pending: BTreeMap<ObjectKey, Removal>,
}

/// A removal a pass decided, recorded by the target before the first one is carried out.
///
/// A pass that is killed after deleting a WorkloadProfile but before the definition only
/// that profile used leaves the definition unreachable from the bundle that is still
/// leaving: the next pass could no longer tell it from an object whose bundle was removed
/// out of band (which is orphaned, never deleted). The record keeps the decision made with
/// the whole chain in view, so the next pass finishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Removal {
    /// To be deleted.
    Delete,
    /// To be released.
    Orphan,
}

impl Observed {
    /// The state `graph` would leave on an empty target: every desired object, rendered and
    /// managed by `instance` (offline pull-request plans, benchmarks).
    pub fn as_applied(graph: &ResourceGraph, instance: &str) -> Self {
        let stamp = Stamp {
            instance,
            revision: graph.revision(),
            adopted: false,
        };
        let mut observed = Self::default();
        for node in graph.creation_order() {
            if let Some(obj) = graph.object(node) {
                observed.objects.insert(
                    node.key.clone(),
                    LiveObject::new(ownership::render(obj, &stamp), Ownership::Managed),
                );
            }
        }
        observed
    }

    /// [`Self::as_applied`] `base`, as seen by a plan of `head`: an object whose parsed
    /// document head shares (the same document, by identity, from the same file: a file both
    /// commits hold unchanged is parsed once) is marked as holding head's desired object
    /// instead of being rendered, so a one-file change in a large repository renders one
    /// file's objects.
    pub fn as_applied_for(base: &ResourceGraph, head: &ResourceGraph, instance: &str) -> Self {
        let stamp = Stamp {
            instance,
            revision: base.revision(),
            adopted: false,
        };
        let mut observed = Self::default();
        for node in base.creation_order() {
            let Some(obj) = base.object(node) else {
                continue;
            };
            let shared = head
                .node(&node.key)
                .filter(|n| n.desired)
                .and_then(|n| head.object(n))
                .is_some_and(|h| {
                    Manifest::same_document(&h.manifest, &obj.manifest)
                        && h.location.path == obj.location.path
                });
            let live = if shared {
                LiveObject::matching_desired(Ownership::Managed)
            } else {
                LiveObject::new(ownership::render(obj, &stamp), Ownership::Managed)
            };
            observed.objects.insert(node.key.clone(), live);
        }
        observed
    }

    /// The object with this key.
    pub fn get(&self, key: &ObjectKey) -> Option<&LiveObject> {
        self.objects.get(key)
    }

    /// The catalogue of live objects for resolving the references of `desired`: every live
    /// cluster profile, definition and workload profile type, and the live ProfileBundles and
    /// ComputePools the commit names without declaring (and the bundles those pools were
    /// built from), unless this instance manages them. Only those are parsed: a hub may hold
    /// many more.
    pub fn catalog(&self, desired: &DesiredState) -> Catalog {
        let mut catalog = Catalog {
            available: true,
            ..Catalog::default()
        };
        for (key, obj) in &self.objects {
            match key.kind {
                Kind::ClusterProfile => {
                    let t = obj.profile_type.or_else(|| {
                        obj.manifest
                            .as_ref()
                            .and_then(|m| m.pointer("/spec/template/type"))
                            .and_then(Value::as_str)
                            .and_then(ProfileType::from_api)
                    });
                    if let Some(t) = t {
                        catalog.cluster_profiles.insert(key.clone(), t);
                        catalog.holders.insert(key.clone(), holder(&obj.ownership));
                    }
                }
                Kind::ComponentDefinition | Kind::TraitDefinition | Kind::PolicyDefinition => {
                    catalog.definitions.insert(key.clone());
                    catalog.holders.insert(key.clone(), holder(&obj.ownership));
                }
                Kind::WorkloadProfile => {
                    let t = obj
                        .manifest
                        .as_ref()
                        .and_then(|m| m.pointer("/spec/type"))
                        .and_then(|t| serde_json::from_value::<WorkloadType>(t.clone()).ok());
                    if let Some(t) = t {
                        catalog.workload_profiles.insert(key.clone(), t);
                    }
                }
                _ => {}
            }
        }
        let mut wanted: Vec<ObjectKey> = desired
            .objects
            .iter()
            .flat_map(Object::refs)
            .filter(|r| {
                !r.ordering_only
                    && matches!(r.primary().kind, Kind::ProfileBundle | Kind::ComputePool)
                    && r.candidates.iter().all(|k| desired.get(k).is_none())
            })
            .flat_map(|r| r.candidates.iter().cloned())
            .collect();
        while let Some(key) = wanted.pop() {
            if catalog.roots.contains_key(&key) {
                continue;
            }
            let Some(live) = self.objects.get(&key) else {
                continue;
            };
            if live.ownership.is_managed() {
                catalog.leaving.insert(key);
                continue;
            }
            let object = live.manifest.as_ref().and_then(|m| parse_live("(live)", m));
            if let Some(Spec::ComputePool(p)) = object.as_ref().map(|o| &o.spec) {
                wanted.extend(p.bundle.candidates.iter().cloned());
            }
            catalog.holders.insert(key.clone(), holder(&live.ownership));
            catalog.roots.insert(key, object);
        }
        catalog
    }
}

/// Who holds a live object, as the plan says it.
fn holder(ownership: &Ownership) -> String {
    match ownership {
        Ownership::Managed => "managed by this pbsync instance".into(),
        Ownership::Adopted => "adopted by this pbsync instance".into(),
        Ownership::Released => "released earlier by this pbsync instance".into(),
        Ownership::Foreign { owner: Some(o) } => format!("managed by pbsync instance {o}"),
        Ownership::Foreign { owner: None } => "not managed by pbsync".into(),
    }
}
