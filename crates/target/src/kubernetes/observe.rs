//! Reading the hub for a plan. Label-selected, paged lists, not one GET per object:
//! - every object of this instance (`pbsync.dev/instance=<instance>`), in all namespaces;
//! - every ProfileBundle, ComputePool and AIWorkload, whoever owns them (a foreign bundle that
//!   references a shared object keeps it alive; a pool or a deployment blocks the deletion of
//!   the bundle and pool it uses; a commit may deploy onto a pool or bundle that lives only on
//!   the hub);
//! - the other objects (`pbsync.dev/instance!=<instance>`, metadata only) of each kind in the
//!   namespaces the desired state touches, so a desired object that exists unlabelled is
//!   known as foreign or released; definitions also in `vela-system`, WorkloadProfiles in full
//!   where live bundles use them.
//!
//! Then a server-side dry-run apply of every desired object, so the plan compares what the
//! server would store (defaults, pruning, validation) with what it stores. Dry-runs are cached
//! by (hash of the desired object without its revision annotation, live resourceVersion):
//! a repeated plan with nothing changed issues none.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::cache::ListId;
use super::client::{self, ApiClient};
use super::discovery::{self, Resources};
use super::fields;
use super::{
    Answer, ClusterProfiles, Compared, KubeTarget, Seen, lock, version_of, with_api_version,
};
use crate::{Error, Result};
use pbsync_core::graph::ResourceGraph;
use pbsync_core::live::{LiveObject, Observed};
use pbsync_core::model::{Kind, ObjectKey};
use pbsync_core::ownership::{self, INSTANCE_LABEL, Ownership, REVISION_ANNOTATION, Stamp};

/// KubeVela's namespace for definitions shared by every namespace.
const VELA_SYSTEM: &str = "vela-system";
/// Above this many namespaces of one kind, other owners' objects are listed across all
/// namespaces in one (paged) list instead of one list per namespace.
const MAX_NAMESPACE_LISTS: usize = 8;

/// Where to look for objects of other owners, per kind (bundles, pools and workloads are listed
/// whole):
/// - every namespace the graph names an object of that kind in (desired, unused or external
///   references), so a desired object that exists unlabelled is known;
/// - definitions also in `vela-system`, where references fall back to;
/// - WorkloadProfiles also where live bundles may use them to reference a definition this
///   instance manages (a foreign bundle keeps a shared object alive): the namespaces of those
///   definitions, or every bundle's namespace when one of them is in `vela-system`.
fn foreign_namespaces(
    graph: &ResourceGraph,
    listed: &BTreeMap<ObjectKey, Item>,
) -> BTreeMap<Kind, BTreeSet<String>> {
    let mut namespaces: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
    for node in graph.nodes() {
        if !node.key.kind.is_palette() && !is_listed_whole(node.key.kind) {
            namespaces
                .entry(node.key.kind)
                .or_default()
                .insert(node.key.namespace.to_string());
        }
    }
    for kind in [
        Kind::ComponentDefinition,
        Kind::TraitDefinition,
        Kind::PolicyDefinition,
    ] {
        namespaces
            .entry(kind)
            .or_default()
            .insert(VELA_SYSTEM.to_string());
    }
    let our_definitions: BTreeSet<&str> = listed
        .keys()
        .filter(|k| {
            matches!(
                k.kind,
                Kind::ComponentDefinition | Kind::TraitDefinition | Kind::PolicyDefinition
            )
        })
        .map(|k| &*k.namespace)
        .collect();
    let everywhere = our_definitions.contains(VELA_SYSTEM);
    let wps = namespaces.entry(Kind::WorkloadProfile).or_default();
    for k in listed.keys().filter(|k| k.kind == Kind::ProfileBundle) {
        if everywhere || our_definitions.contains(&*k.namespace) {
            wps.insert(k.namespace.to_string());
        }
    }
    namespaces
}

/// Kinds listed in full across all namespaces whoever owns them.
fn is_listed_whole(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ProfileBundle | Kind::ComputePool | Kind::AiWorkload
    )
}

/// The hash a comparison is cached by: the desired object without its revision annotation,
/// so a new commit that leaves an object as it was still hits the cache.
pub(super) fn fingerprint(desired: &Value) -> Vec<u8> {
    let mut v = desired.clone();
    if let Some(a) = v
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(REVISION_ANNOTATION);
    }
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&v).expect("invariant: JSON values serialize");
    Sha256::digest(&bytes).to_vec()
}

/// One list to read.
struct ListJob {
    kind: Kind,
    api_version: String,
    path: String,
    namespace: Option<String>,
    selector: Option<String>,
    metadata_only: bool,
    /// The list as the watch cache mirrors it.
    id: ListId,
}

impl ListJob {
    fn new(
        kind: Kind,
        res: &discovery::Resource,
        namespace: Option<String>,
        selector: Option<String>,
        metadata_only: bool,
    ) -> Self {
        Self {
            kind,
            api_version: res.api_version(),
            path: res.collection(None, namespace.as_deref()),
            id: ListId {
                kind,
                group: res.group.clone(),
                version: res.versions[0].clone(),
                plural: res.plural.clone(),
                namespace: namespace.clone(),
                selector: selector.clone(),
                metadata_only,
            },
            namespace,
            selector,
            metadata_only,
        }
    }
}

/// One listed object.
struct Item {
    manifest: Value,
    /// False for metadata-only items.
    full: bool,
}

/// One desired object to compare.
struct Compare {
    key: ObjectKey,
    collection: String,
    rendered: Value,
    fingerprint: Vec<u8>,
    /// The live object when listed in full at the right version.
    live: Option<Value>,
    /// The object exists but must be read in full (or at the desired version).
    fetch: bool,
    /// Managed or adopted: pbsync's own last apply may already hold the desired object.
    ours: bool,
}

/// What comparing one desired object found.
struct Compared1 {
    key: ObjectKey,
    live: Option<Value>,
    fingerprint: Vec<u8>,
    result: std::result::Result<Value, String>,
    /// `result` is the live object itself (cached as [`Answer::Live`], not as a copy).
    is_live: bool,
}

fn observe_failed(what: impl Into<String>, e: client::Error) -> Error {
    Error::ObserveFailed {
        what: what.into(),
        source: Box::new(e),
    }
}

/// True for answers that reject the object itself (schema, admission, RBAC, a missing
/// namespace): the plan shows them as `unknown` with the server's message. Anything else
/// (no answer, 429, 5xx) fails the observation, to be retried.
fn is_rejection(e: &client::Error) -> bool {
    e.code()
        .is_some_and(|c| (400..500).contains(&c) && c != 429)
}

impl KubeTarget {
    pub(super) async fn observe_hub(
        &self,
        graph: &ResourceGraph,
        stamp: &Stamp<'_>,
    ) -> Result<Observed> {
        if stamp.instance != self.options.instance {
            return Err(Error::Config(format!(
                "the plan is for pbsync instance {:?} but the Kubernetes target was built for {:?}",
                stamp.instance, self.options.instance
            )));
        }
        self.check_cluster_profiles(graph)?;
        *lock(&self.revision) = stamp.revision.to_string();
        let api = self.api().await?;
        let desired: Vec<_> = graph
            .nodes()
            .iter()
            .filter(|n| n.desired && !n.key.kind.is_palette())
            .filter_map(|n| graph.object(n).map(|o| (n, o)))
            .collect();
        let needed: BTreeSet<Kind> = desired.iter().map(|(n, _)| n.key.kind).collect();
        let started = std::time::Instant::now();
        let resources = self.discover(api, &needed).await?;
        tracing::debug!(elapsed = ?started.elapsed(), "discovered");
        let instance = stamp.instance;

        // 1. This instance's objects, and every bundle and pool.
        let ours = format!("{INSTANCE_LABEL}={instance}");
        let mut jobs = Vec::new();
        for (kind, res) in resources.served() {
            let everyone = is_listed_whole(kind);
            jobs.push(ListJob::new(
                kind,
                res,
                None,
                (!everyone).then(|| ours.clone()),
                false,
            ));
        }
        let started = std::time::Instant::now();
        let mut items = self.run_lists(api, jobs).await?;
        tracing::debug!(elapsed = ?started.elapsed(), items = items.len(), "listed this instance's objects");

        // 2. Other objects where the desired state (or a live bundle) may meet them.
        let namespaces = foreign_namespaces(graph, &items);
        let not_ours = format!("{INSTANCE_LABEL}!={instance}");
        let mut jobs = Vec::new();
        for (kind, res) in resources.served() {
            let Some(set) = namespaces.get(&kind) else {
                continue;
            };
            // WorkloadProfiles are parsed for the definitions live bundles use.
            let metadata_only = kind != Kind::WorkloadProfile;
            // Many namespaces: one list across all of them costs fewer requests.
            let scopes: Vec<Option<&String>> = if set.len() > MAX_NAMESPACE_LISTS {
                vec![None]
            } else {
                set.iter().map(Some).collect()
            };
            for ns in scopes {
                jobs.push(ListJob::new(
                    kind,
                    res,
                    ns.cloned(),
                    Some(not_ours.clone()),
                    metadata_only,
                ));
            }
        }
        let started = std::time::Instant::now();
        items.extend(self.run_lists(api, jobs).await?);
        tracing::debug!(elapsed = ?started.elapsed(), "listed other objects nearby");

        // 3. Every namespace the commit writes into must exist, checked before anything is
        // written: one that holds a listed object does; the others are read (rare: only a
        // namespace with nothing of pbsync's in it yet).
        let holding: BTreeSet<&str> = items.keys().map(|k| &*k.namespace).collect();
        let unproven: BTreeSet<String> = desired
            .iter()
            .map(|(n, _)| &*n.key.namespace)
            .filter(|ns| !holding.contains(ns))
            .map(str::to_string)
            .collect();
        let missing = self.missing_namespaces(api, unproven).await?;

        // 4. Dry-run every desired object (cached); none in a namespace that does not exist.
        let mut compares = Vec::new();
        for (node, obj) in &desired {
            let key = &node.key;
            if missing.contains(&*key.namespace) {
                continue;
            }
            let res = resources
                .get(key.kind)
                .expect("invariant: discovery checked every desired kind");
            let existing = items.get(key);
            let own = existing.map(|i| ownership::read_manifest(&i.manifest, instance));
            let rendered = with_api_version(
                ownership::render(
                    obj,
                    &Stamp {
                        instance,
                        revision: stamp.revision,
                        adopted: matches!(
                            own,
                            Some(Ownership::Adopted | Ownership::Foreign { .. })
                        ),
                    },
                ),
                key.kind,
                &self.options.api_versions,
            );
            let collection = res.collection(version_of(&rendered), Some(&key.namespace));
            let wanted = rendered.get("apiVersion").cloned();
            let fetch = existing
                .is_some_and(|i| !i.full || i.manifest.get("apiVersion") != wanted.as_ref());
            compares.push(Compare {
                key: key.clone(),
                collection,
                fingerprint: fingerprint(&rendered),
                rendered,
                live: existing.filter(|_| !fetch).map(|i| i.manifest.clone()),
                fetch,
                ours: own.as_ref().is_some_and(Ownership::is_managed),
            });
        }
        let started = std::time::Instant::now();
        let mut compared: Vec<Compared1> = futures::stream::iter(compares)
            .map(|c| self.compare(api, c))
            .buffer_unordered(self.parallelism())
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        compared.sort_by(|a, b| a.key.cmp(&b.key));
        tracing::debug!(elapsed = ?started.elapsed(), "compared");

        // 5. Assemble, and keep what the writes and the next pass need.
        let mut observed = Observed {
            read_at: Some(crate::now_rfc3339()),
            missing_namespaces: missing,
            ..Observed::default()
        };
        let mut cache = std::collections::HashMap::new();
        for c in compared {
            match c.live {
                Some(live) => {
                    let rv = Seen::of(&live).resource_version;
                    items.insert(
                        c.key.clone(),
                        Item {
                            manifest: live,
                            full: true,
                        },
                    );
                    cache.insert(
                        c.key.clone(),
                        Compared {
                            fingerprint: c.fingerprint,
                            resource_version: rv,
                            answer: if c.is_live {
                                Answer::Live
                            } else {
                                Answer::DryRun(c.result)
                            },
                        },
                    );
                }
                None => {
                    items.remove(&c.key);
                    match c.result {
                        Ok(_) if !self.options.preflight => {}
                        Ok(v) => {
                            cache.insert(
                                c.key.clone(),
                                Compared {
                                    fingerprint: c.fingerprint,
                                    resource_version: None,
                                    answer: Answer::DryRun(Ok(v)),
                                },
                            );
                        }
                        Err(msg) => {
                            observed.rejected.insert(c.key.clone(), msg);
                        }
                    }
                }
            }
        }
        let mut seen = std::collections::HashMap::new();
        for (key, item) in items {
            seen.insert(key.clone(), Seen::of(&item.manifest));
            let own = ownership::read_manifest(&item.manifest, instance);
            let mut live = LiveObject::new(item.manifest, own);
            if let Some(c) = cache.get(&key).filter(|c| c.resource_version.is_some()) {
                live.dry_run = match &c.answer {
                    Answer::DryRun(result) => Some(result.clone()),
                    Answer::Live => live.manifest.clone().map(Ok),
                };
            }
            observed.objects.insert(key, live);
        }
        *lock(&self.seen) = seen;
        *lock(&self.compared) = cache;
        observed.pending = self.read_pending().await?;
        Ok(observed)
    }

    /// The namespaces of `names` the hub does not have. A namespace that cannot be read
    /// (forbidden, no answer) fails the observe: it never reads as present.
    async fn missing_namespaces(
        &self,
        api: &ApiClient,
        names: BTreeSet<String>,
    ) -> Result<BTreeSet<String>> {
        let found: Vec<(String, client::Result<Option<Value>>)> = futures::stream::iter(names)
            .map(|ns| async move {
                let r = api.get("/api/v1/namespaces", &ns).await;
                (ns, r)
            })
            .buffer_unordered(self.parallelism())
            .collect()
            .await;
        let mut missing = BTreeSet::new();
        for (ns, result) in found {
            match result {
                Ok(Some(_)) => {}
                Ok(None) => {
                    missing.insert(ns);
                }
                Err(e) => {
                    return Err(observe_failed(
                        format!(
                            "namespace {ns} (pbsync needs get on namespaces to check it exists)"
                        ),
                        e,
                    ));
                }
            }
        }
        Ok(missing)
    }

    /// Dry-runs one desired object unless the cache already holds the answer for this
    /// desired object and this live resourceVersion.
    async fn compare(&self, api: &ApiClient, c: Compare) -> Result<Compared1> {
        let live = if c.fetch {
            api.get(&c.collection, &c.key.name)
                .await
                .map_err(|e| observe_failed(c.key.to_string(), e))?
        } else {
            c.live
        };
        let rv = live.as_ref().and_then(|l| Seen::of(l).resource_version);
        let cached = lock(&self.compared)
            .get(&c.key)
            .filter(|hit| hit.fingerprint == c.fingerprint && hit.resource_version == rv)
            .map(|hit| hit.answer.clone());
        let (result, is_live) = match (cached, &live) {
            (Some(Answer::DryRun(r)), _) => (r, false),
            (Some(Answer::Live), Some(l)) => (Ok(l.clone()), true),
            // Without preflight, a new object is checked by its create.
            (_, None) if !self.options.preflight => (Ok(c.rendered.clone()), false),
            // Field ownership proves that applying would change nothing: no dry-run needed.
            (_, Some(l)) if c.ours && fields::already_applied(l, &c.rendered) => {
                (Ok(l.clone()), true)
            }
            _ => match if live.is_some() {
                api.dry_run_apply(&c.collection, &c.key.name, &c.rendered)
                    .await
            } else {
                api.dry_run_create(&c.collection, &c.rendered).await
            } {
                Ok(v) => (Ok(v), false),
                Err(e) if is_rejection(&e) => (Err(e.server_message()), false),
                Err(e) => return Err(observe_failed(format!("dry-run of {}", c.key), e)),
            },
        };
        Ok(Compared1 {
            key: c.key,
            live,
            fingerprint: c.fingerprint,
            result,
            is_live,
        })
    }

    /// Reads every list, concurrently, into objects by key.
    async fn run_lists(
        &self,
        api: &ApiClient,
        jobs: Vec<ListJob>,
    ) -> Result<BTreeMap<ObjectKey, Item>> {
        let results: Vec<(ListJob, client::Result<Vec<Value>>)> = futures::stream::iter(jobs)
            .map(|job| async move {
                if let Some(mirrors) = &self.mirrors
                    && let Some(items) = mirrors.list(api, &job.id).await
                {
                    return (job, Ok(items));
                }
                let r = api
                    .list(&job.path, job.selector.as_deref(), job.metadata_only)
                    .await;
                (job, r)
            })
            .buffer_unordered(self.parallelism())
            .collect()
            .await;
        let mut out = BTreeMap::new();
        for (job, result) in results {
            let where_ = job.namespace.as_deref().map_or_else(
                || "all namespaces".to_string(),
                |ns| format!("namespace {ns}"),
            );
            let list = match result {
                Ok(list) => list,
                Err(e) => {
                    if e.code() == Some(404) {
                        // The CRD went away since discovery: discover again next time.
                        *lock(&self.resources) = None;
                    }
                    return Err(observe_failed(format!("{}s in {where_}", job.kind), e));
                }
            };
            for mut item in list {
                let (Some(ns), Some(name)) = (
                    item.pointer("/metadata/namespace").and_then(Value::as_str),
                    item.pointer("/metadata/name").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let key = ObjectKey::new(job.kind, ns, name);
                if let Some(root) = item.as_object_mut() {
                    // List items may omit them; metadata-only ones say PartialObjectMetadata.
                    root.insert("apiVersion".into(), Value::String(job.api_version.clone()));
                    root.insert("kind".into(), Value::String(job.kind.as_str().into()));
                }
                out.insert(
                    key,
                    Item {
                        manifest: item,
                        full: !job.metadata_only,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Discovery, cached for the target's life; read again when a needed kind is missing
    /// (its CRD may have been installed since).
    pub(super) async fn discover(
        &self,
        api: &ApiClient,
        needed: &BTreeSet<Kind>,
    ) -> Result<Resources> {
        if let Some(r) = lock(&self.resources).as_ref()
            && needed.iter().all(|k| r.get(*k).is_some())
        {
            return Ok(r.clone());
        }
        let r = discovery::discover(api, &self.options.api_versions)
            .await
            .map_err(|e| observe_failed("API discovery", e))?;
        *lock(&self.resources) = Some(r.clone());
        let missing: Vec<String> = needed
            .iter()
            .filter_map(|k| r.missing(*k).map(|m| m.message(*k)))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Config(missing.join("; ")));
        }
        Ok(r)
    }

    /// Cluster profiles live in Palette: without a Palette target, a repository that names
    /// them cannot be applied, and saying so beats skipping them silently.
    pub(super) fn check_cluster_profiles(&self, graph: &ResourceGraph) -> Result<()> {
        if self.options.cluster_profiles == ClusterProfiles::Elsewhere {
            return Ok(());
        }
        let profiles: Vec<String> = graph
            .nodes()
            .iter()
            .filter(|n| n.key.kind == Kind::ClusterProfile && (n.object.is_some() || n.desired))
            .map(|n| n.key.short())
            .collect();
        if profiles.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = profiles.iter().take(3).map(String::as_str).collect();
        let more = if profiles.len() > 3 {
            format!(" and {} more", profiles.len() - 3)
        } else {
            String::new()
        };
        Err(Error::Config(format!(
            "the repository declares or references Palette cluster profiles ({}{more}), but \
             --target kube writes only to the Kubernetes hub: configure the Palette target \
             (--palette-url) to manage them",
            shown.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprints_ignore_the_revision_and_preconditions() {
        let a = json!({"metadata": {"name": "x", "annotations": {REVISION_ANNOTATION: "abc", "k": "v"}}, "spec": {"a": 1}});
        let b = json!({"metadata": {"name": "x", "resourceVersion": "7", "annotations": {REVISION_ANNOTATION: "def", "k": "v"}}, "spec": {"a": 1}});
        let c = json!({"metadata": {"name": "x", "annotations": {REVISION_ANNOTATION: "abc", "k": "v"}}, "spec": {"a": 2}});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn only_client_errors_are_rejections() {
        let api = |code| client::Error::Api {
            code,
            reason: String::new(),
            message: "m".into(),
        };
        assert!(is_rejection(&api(422)));
        assert!(is_rejection(&api(404)));
        assert!(is_rejection(&api(403)));
        assert!(!is_rejection(&api(429)));
        assert!(!is_rejection(&api(500)));
    }
}
