//! The Kubernetes target (`--target kube`): hub objects on a Kubernetes API server, written
//! with server-side apply (field manager `pbsync`), compared by server-side dry-run, owned
//! through labels, deleted only through the guarded delete path.
//!
//! - `discovery`: which API resource serves each kind; a missing CRD is a configuration error.
//! - `observe`: label-selected, paged lists; dry-runs cached by (desired hash, resourceVersion).
//! - `fields`: server-side apply's field ownership proves an object unchanged without a dry-run.
//! - `client`: every request spends the budget (QPS/burst), is counted, and is retried on
//!   429 (Retry-After), 5xx and timeouts.
//! - `status`: the status ConfigMap and the Events on changed bundles.
//!
//! Client types stay private to this module; the rest of the code sees a [`Target`].

mod budget;
mod client;
mod discovery;
mod fields;
mod observe;
mod status;

pub use budget::{RequestCounts, Verb};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use super::{DeletePermit, Result, Status, Target};
use crate::graph::ResourceGraph;
use crate::live::Observed;
use crate::model::{DeletionPolicy, Kind, ObjectKey};
use crate::ownership::{self, Ownership, Stamp};
use crate::plan::{Action, Change};
use client::ApiClient;
use discovery::Resources;

/// Default namespace of the status ConfigMap.
pub const DEFAULT_STATUS_NAMESPACE: &str = "pbsync-system";
/// How many times a write is retried after a 409 Conflict (each time after re-reading).
const CONFLICT_RETRIES: usize = 5;

/// Errors of the Kubernetes target's own decisions (the HTTP layer has its own enum).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request failed.
    #[error("request failed")]
    Request(#[source] client::Error),
    /// The object changed hands since it was observed; pbsync leaves it alone.
    #[error("{key} is no longer managed by this instance ({ownership}); left alone")]
    NotOurs {
        /// Object.
        key: ObjectKey,
        /// Who owns it now.
        ownership: String,
    },
    /// The object kept changing under pbsync.
    #[error("{key} kept changing during the write ({attempts} conflicts)")]
    Conflicts {
        /// Object.
        key: ObjectKey,
        /// Attempts made.
        attempts: usize,
        /// The last conflict.
        #[source]
        source: client::Error,
    },
    /// The object was replaced (new uid) since it was observed.
    #[error("{key} was deleted and recreated since it was observed; left alone until next pass")]
    Replaced {
        /// Object.
        key: ObjectKey,
    },
    /// The status namespace does not exist.
    #[error(
        "status namespace {namespace:?} does not exist: create it, or choose another with --status-namespace"
    )]
    StatusNamespaceMissing {
        /// Namespace.
        namespace: String,
        /// The server's answer.
        #[source]
        source: client::Error,
    },
}

impl Error {
    fn is_retryable(&self) -> bool {
        match self {
            Self::Request(e) => e.is_retryable(),
            Self::Conflicts { .. } | Self::Replaced { .. } => true,
            Self::NotOurs { .. } | Self::StatusNamespaceMissing { .. } => false,
        }
    }
}

/// What to do with cluster profiles, which live in Palette and never on the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterProfiles {
    /// No Palette target: a repository that names cluster profiles is a configuration error.
    #[default]
    Refuse,
    /// Another target (Palette) handles them; this one ignores them.
    Elsewhere,
}

/// How to reach the hub and how hard to use it.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Kubeconfig file; `None`: `$KUBECONFIG`, `~/.kube/config`, or the in-cluster service
    /// account.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; `None`: the current context.
    pub context: Option<String>,
    /// This pbsync instance (the `pbsync.dev/instance` label).
    pub instance: String,
    /// Namespace of the status ConfigMap (must exist).
    pub status_namespace: String,
    /// Requests a second (token bucket refill rate); 0 means no limit.
    pub qps: f64,
    /// Requests that may be sent at once after an idle period.
    pub burst: u32,
    /// Requests in flight at once (dry-runs, writes of one wave, lists).
    pub concurrency: usize,
    /// Cluster profiles: refused, or handled by another target.
    pub cluster_profiles: ClusterProfiles,
    /// apiVersion to use for a kind instead of the ones pbsync knows (`group/version`), for
    /// hubs that serve a kind elsewhere; reads and writes use it.
    pub api_versions: BTreeMap<Kind, String>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            instance: "default".into(),
            status_namespace: DEFAULT_STATUS_NAMESPACE.into(),
            // A first sync of a large repository sends a few thousand requests; the API
            // server's priority and fairness protects it beyond that.
            qps: 500.0,
            burst: 1000,
            concurrency: 16,
            cluster_profiles: ClusterProfiles::Refuse,
            api_versions: BTreeMap::new(),
        }
    }
}

/// The last observed identity of a live object: preconditions for writes and deletes.
#[derive(Debug, Clone, Default)]
struct Seen {
    uid: Option<String>,
    resource_version: Option<String>,
    /// apiVersion the object was read at.
    api_version: String,
    /// For bundles: the live `spec.deletionPolicy`.
    deletion_policy: Option<DeletionPolicy>,
}

impl Seen {
    fn of(manifest: &Value) -> Self {
        let meta = |k: &str| {
            manifest
                .pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Self {
            uid: meta("uid"),
            resource_version: meta("resourceVersion"),
            api_version: manifest
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            deletion_policy: manifest
                .pointer("/spec/deletionPolicy")
                .and_then(Value::as_str)
                .map(|p| {
                    if p == "orphan" {
                        DeletionPolicy::Orphan
                    } else {
                        DeletionPolicy::Delete
                    }
                }),
        }
    }
}

/// A cached comparison: the dry-run of a desired object against one live resourceVersion.
#[derive(Debug, Clone)]
struct Compared {
    fingerprint: Vec<u8>,
    resource_version: Option<String>,
    result: std::result::Result<Value, String>,
}

/// The Kubernetes target.
#[derive(Debug)]
pub struct KubeTarget {
    options: KubeOptions,
    api: tokio::sync::OnceCell<ApiClient>,
    resources: Mutex<Option<Resources>>,
    compared: Mutex<HashMap<ObjectKey, Compared>>,
    seen: Mutex<HashMap<ObjectKey, Seen>>,
    /// The status ConfigMap's data as last read or written.
    recorded: tokio::sync::Mutex<Option<BTreeMap<String, String>>>,
    /// What happened to each bundle in the current pass (the reason of its Event).
    bundle_events: Mutex<BTreeMap<ObjectKey, &'static str>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold caches and bookkeeping that stay consistent entry by entry.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KubeTarget {
    /// A target; the kubeconfig is read and the server contacted on first use.
    pub fn new(options: KubeOptions) -> Self {
        Self {
            options,
            api: tokio::sync::OnceCell::new(),
            resources: Mutex::new(None),
            compared: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            recorded: tokio::sync::Mutex::new(None),
            bundle_events: Mutex::new(BTreeMap::new()),
        }
    }

    /// The options.
    pub fn options(&self) -> &KubeOptions {
        &self.options
    }

    /// Requests sent so far, by verb and status code.
    pub fn requests(&self) -> RequestCounts {
        self.api.get().map(ApiClient::counts).unwrap_or_default()
    }

    async fn api(&self) -> Result<&ApiClient> {
        self.api
            .get_or_try_init(|| async {
                let config = load_config(&self.options).await?;
                let client = kube::Client::try_from(config).map_err(|e| {
                    super::Error::Config(format!(
                        "cannot build a Kubernetes client: {}",
                        crate::error_chain(&e)
                    ))
                })?;
                Ok(ApiClient::new(client, self.options.qps, self.options.burst))
            })
            .await
    }

    fn parallelism(&self) -> usize {
        self.options.concurrency.max(1)
    }

    /// The resource of a kind discovery found (observe ran before any write).
    fn resource(&self, change: &Change) -> Result<discovery::Resource> {
        if change.key.kind.is_palette() {
            return Err(super::Error::Config(format!(
                "{} is a Palette cluster profile; it is never sent to Kubernetes",
                change.key
            )));
        }
        lock(&self.resources)
            .as_ref()
            .and_then(|r| r.get(change.key.kind).cloned())
            .ok_or_else(|| {
                super::Error::Config(format!(
                    "no API resource known for {}: observe first",
                    change.key.kind
                ))
            })
    }

    fn seen(&self, key: &ObjectKey) -> Option<Seen> {
        lock(&self.seen).get(key).cloned()
    }

    fn remember(&self, key: &ObjectKey, manifest: &Value) {
        lock(&self.seen).insert(key.clone(), Seen::of(manifest));
    }

    fn forget(&self, key: &ObjectKey) {
        lock(&self.seen).remove(key);
        lock(&self.compared).remove(key);
    }

    fn note_bundle(&self, key: &ObjectKey, reason: &'static str) {
        if key.kind == Kind::ProfileBundle {
            lock(&self.bundle_events).insert(key.clone(), reason);
        }
    }

    /// Re-reads an object after a conflict; checks it is still this instance's to change.
    async fn reread(
        &self,
        api: &ApiClient,
        collection: &str,
        key: &ObjectKey,
        allowed: impl Fn(&Ownership) -> bool,
    ) -> std::result::Result<Option<Value>, Error> {
        let live = api
            .get(collection, &key.name)
            .await
            .map_err(Error::Request)?;
        if let Some(live) = &live {
            let own = ownership::read_manifest(live, &self.options.instance);
            if !allowed(&own) {
                return Err(Error::NotOurs {
                    key: key.clone(),
                    ownership: describe(&own),
                });
            }
            self.remember(key, live);
        }
        Ok(live)
    }
}

fn describe(own: &Ownership) -> String {
    match own {
        Ownership::Managed => "managed".into(),
        Ownership::Adopted => "adopted".into(),
        Ownership::Released => "released by this instance".into(),
        Ownership::Foreign { owner: Some(o) } => format!("managed by pbsync instance {o:?}"),
        Ownership::Foreign { owner: None } => "not created by pbsync".into(),
    }
}

async fn load_config(o: &KubeOptions) -> Result<kube::Config> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let fail = |what: &str, e: &(dyn std::error::Error + 'static)| {
        super::Error::Config(format!("{what}: {}", crate::error_chain(e)))
    };
    let mut config = match (&o.kubeconfig, &o.context) {
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| fail("cannot find a kubeconfig or in-cluster service account", &e))?,
        (path, context) => {
            let opts = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            match path {
                Some(p) => {
                    let kc = Kubeconfig::read_from(p).map_err(|e| {
                        fail(&format!("cannot read kubeconfig {}", p.display()), &e)
                    })?;
                    kube::Config::from_custom_kubeconfig(kc, &opts)
                        .await
                        .map_err(|e| fail("cannot use the kubeconfig", &e))?
                }
                None => kube::Config::from_kubeconfig(&opts)
                    .await
                    .map_err(|e| fail("cannot use the kubeconfig", &e))?,
            }
        }
    };
    // pbsync retries itself (counting every attempt and honouring Retry-After).
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(config)
}

/// `" (path:line)"` of a change's declaration, for error messages.
fn at(change: &Change) -> String {
    change
        .source
        .as_ref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default()
}

fn write_failed(verb: &'static str, change: &Change, e: Error) -> super::Error {
    super::Error::WriteFailed {
        verb,
        key: change.key.clone(),
        at: at(change),
        retryable: e.is_retryable(),
        source: Box::new(e),
    }
}

/// The kinds and objects pbsync must never delete: Namespaces, CRDs and its own status
/// objects. pbsync's kinds cannot name the first two, but the check stays next to the delete
/// so that adding pass-through kinds cannot open a hole.
fn protected(kind: &str, namespace: &str, name: &str, status_namespace: &str) -> bool {
    matches!(kind, "Namespace" | "CustomResourceDefinition")
        || (kind == "ConfigMap"
            && namespace == status_namespace
            && name.starts_with(status::CONFIGMAP_PREFIX))
}

/// Sets `apiVersion` when the target overrides it for the kind.
fn with_api_version(mut v: Value, kind: Kind, overrides: &BTreeMap<Kind, String>) -> Value {
    if let (Some(gv), Some(root)) = (overrides.get(&kind), v.as_object_mut()) {
        root.insert("apiVersion".into(), Value::String(gv.clone()));
    }
    v
}

/// The version part of a manifest's apiVersion.
fn version_of(manifest: &Value) -> Option<&str> {
    manifest
        .get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|gv| gv.rsplit_once('/'))
        .map(|(_, v)| v)
}

impl Target for KubeTarget {
    async fn observe(&self, graph: &ResourceGraph, stamp: &Stamp<'_>) -> Result<Observed> {
        self.observe_hub(graph, stamp).await
    }

    async fn prepare(&self, _changes: &[&Change]) -> Result<()> {
        // Ownership lives on the object itself and is written with it in one request.
        Ok(())
    }

    async fn write(&self, change: &Change, desired: &Value) -> Result<()> {
        let verb = if change.action == Action::Create {
            "create"
        } else {
            "update"
        };
        let resource = self.resource(change)?;
        let api = self.api().await?;
        let desired =
            with_api_version(desired.clone(), change.key.kind, &self.options.api_versions);
        let collection = resource.collection(version_of(&desired), Some(&change.key.namespace));
        let fingerprint = observe::fingerprint(&desired);
        // Optimistic concurrency for updates: the object must still be the one planned
        // against, so a change made since (by a person, or another owner) is not overwritten
        // blindly; a conflict re-reads it and checks it is still ours.
        let mut precondition = if change.action == Action::Create {
            None
        } else {
            self.seen(&change.key).and_then(|s| s.resource_version)
        };
        let allowed = |own: &Ownership| match own {
            Ownership::Managed | Ownership::Adopted | Ownership::Released => true,
            Ownership::Foreign { owner } => change.adopt && owner.is_none(),
        };
        for attempt in 0..=CONFLICT_RETRIES {
            let mut body = desired.clone();
            if let (Some(rv), Some(meta)) = (
                &precondition,
                body.get_mut("metadata").and_then(Value::as_object_mut),
            ) {
                meta.insert("resourceVersion".into(), Value::String(rv.clone()));
            }
            match api.apply(&collection, &change.key.name, &body, false).await {
                Ok(applied) => {
                    self.remember(&change.key, &applied);
                    lock(&self.compared).insert(
                        change.key.clone(),
                        Compared {
                            fingerprint,
                            resource_version: Seen::of(&applied).resource_version,
                            result: Ok(applied),
                        },
                    );
                    self.note_bundle(
                        &change.key,
                        if change.action == Action::Create {
                            "Created"
                        } else {
                            "Updated"
                        },
                    );
                    return Ok(());
                }
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => {
                    tracing::debug!(key = %change.key, "conflict; re-reading");
                    let live = self
                        .reread(api, &collection, &change.key, allowed)
                        .await
                        .map_err(|e| write_failed(verb, change, e))?;
                    precondition = live.as_ref().and_then(|l| Seen::of(l).resource_version);
                }
                Err(e) if e.is_conflict() => {
                    return Err(write_failed(
                        verb,
                        change,
                        Error::Conflicts {
                            key: change.key.clone(),
                            attempts: attempt + 1,
                            source: e,
                        },
                    ));
                }
                Err(e) => return Err(write_failed(verb, change, Error::Request(e))),
            }
        }
        unreachable!("invariant: the loop returns on its last attempt")
    }

    async fn release(&self, change: &Change) -> Result<()> {
        let resource = self.resource(change)?;
        let api = self.api().await?;
        let seen = self.seen(&change.key);
        let collection = resource.collection(
            seen.as_ref()
                .and_then(|s| s.api_version.rsplit_once('/'))
                .map(|(_, v)| v),
            Some(&change.key.namespace),
        );
        let mut rv = seen.and_then(|s| s.resource_version);
        let instance = &self.options.instance;
        for attempt in 0..=CONFLICT_RETRIES {
            // ownership::release as a merge patch: null removes a label.
            let mut patch = json!({"metadata": {
                "labels": {
                    ownership::MANAGED_BY_LABEL: null,
                    ownership::INSTANCE_LABEL: null,
                    ownership::ADOPTED_LABEL: null,
                },
                "annotations": {
                    ownership::REVISION_ANNOTATION: null,
                    ownership::RELEASED_BY_ANNOTATION: instance,
                },
            }});
            if let Some(rv) = &rv {
                patch["metadata"]["resourceVersion"] = Value::String(rv.clone());
            }
            match api.merge_patch(&collection, &change.key.name, &patch).await {
                Ok(_) => {
                    self.forget(&change.key);
                    self.note_bundle(&change.key, "Orphaned");
                    return Ok(());
                }
                Err(e) if e.code() == Some(404) => {
                    self.forget(&change.key);
                    return Ok(());
                }
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => {
                    let live = self
                        .reread(api, &collection, &change.key, |own| {
                            own.is_managed() || *own == Ownership::Released
                        })
                        .await
                        .map_err(|e| write_failed("release", change, e))?;
                    let Some(live) = live else {
                        self.forget(&change.key);
                        return Ok(());
                    };
                    if ownership::read_manifest(&live, instance) == Ownership::Released {
                        self.forget(&change.key);
                        return Ok(());
                    }
                    rv = Seen::of(&live).resource_version;
                }
                Err(e) if e.is_conflict() => {
                    return Err(write_failed(
                        "release",
                        change,
                        Error::Conflicts {
                            key: change.key.clone(),
                            attempts: attempt + 1,
                            source: e,
                        },
                    ));
                }
                Err(e) => return Err(write_failed("release", change, Error::Request(e))),
            }
        }
        unreachable!("invariant: the loop returns on its last attempt")
    }

    async fn delete(&self, change: &Change, _permit: DeletePermit) -> Result<()> {
        let key = &change.key;
        if protected(
            key.kind.as_str(),
            &key.namespace,
            &key.name,
            &self.options.status_namespace,
        ) {
            return Err(super::Error::Config(format!(
                "refusing to delete {key}: Namespaces, CRDs and pbsync's status objects are never deleted"
            )));
        }
        let resource = self.resource(change)?;
        let api = self.api().await?;
        let mut seen = self.seen(key).unwrap_or_default();
        let collection = resource.collection(
            seen.api_version.rsplit_once('/').map(|(_, v)| v),
            Some(&key.namespace),
        );
        let only_managed = |own: &Ownership| *own == Ownership::Managed;
        for attempt in 0..=CONFLICT_RETRIES {
            // A server-side cascade (PaletteAI's controller) reads the live policy: make it
            // say what pbsync decided before the bundle goes.
            if key.kind == Kind::ProfileBundle
                && change.effective_policy == Some(DeletionPolicy::Orphan)
                && seen.deletion_policy != Some(DeletionPolicy::Orphan)
            {
                let mut patch = json!({"spec": {"deletionPolicy": "orphan"}});
                if let Some(rv) = &seen.resource_version {
                    patch["metadata"] = json!({"resourceVersion": rv});
                }
                match api.merge_patch(&collection, &key.name, &patch).await {
                    Ok(patched) => seen = Seen::of(&patched),
                    Err(e) if e.code() == Some(404) => {
                        self.forget(key);
                        return Ok(());
                    }
                    Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => {
                        match self
                            .reread(api, &collection, key, only_managed)
                            .await
                            .map_err(|e| write_failed("delete", change, e))?
                        {
                            Some(live) => seen = Seen::of(&live),
                            None => {
                                self.forget(key);
                                return Ok(());
                            }
                        }
                        continue;
                    }
                    Err(e) => return Err(write_failed("delete", change, Error::Request(e))),
                }
            }
            match api
                .delete(
                    &collection,
                    &key.name,
                    seen.uid.as_deref(),
                    seen.resource_version.as_deref(),
                )
                .await
            {
                Ok(()) => {
                    self.forget(key);
                    self.note_bundle(key, "Deleted");
                    return Ok(());
                }
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => {
                    let uid = seen.uid.clone();
                    match self
                        .reread(api, &collection, key, only_managed)
                        .await
                        .map_err(|e| write_failed("delete", change, e))?
                    {
                        Some(live) => {
                            seen = Seen::of(&live);
                            if uid.is_some() && seen.uid != uid {
                                return Err(write_failed(
                                    "delete",
                                    change,
                                    Error::Replaced { key: key.clone() },
                                ));
                            }
                        }
                        None => {
                            self.forget(key);
                            return Ok(());
                        }
                    }
                }
                Err(e) if e.is_conflict() => {
                    return Err(write_failed(
                        "delete",
                        change,
                        Error::Conflicts {
                            key: key.clone(),
                            attempts: attempt + 1,
                            source: e,
                        },
                    ));
                }
                Err(e) => return Err(write_failed("delete", change, Error::Request(e))),
            }
        }
        unreachable!("invariant: the loop returns on its last attempt")
    }

    async fn record(&self, status: &Status) -> Result<()> {
        self.record_status(status).await
    }

    fn concurrency(&self) -> usize {
        self.parallelism()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_crds_and_status_objects_are_protected() {
        assert!(protected("Namespace", "", "team-a", "pbsync-system"));
        assert!(protected(
            "CustomResourceDefinition",
            "",
            "profilebundles.spectrocloud.com",
            "pbsync-system"
        ));
        assert!(protected(
            "ConfigMap",
            "pbsync-system",
            "pbsync-status-default",
            "pbsync-system"
        ));
        assert!(!protected(
            "ConfigMap",
            "team-a",
            "pbsync-status-default",
            "pbsync-system"
        ));
        for kind in Kind::ALL {
            assert!(!protected(kind.as_str(), "team-a", "x", "pbsync-system"));
        }
    }

    #[test]
    fn overridden_api_versions_replace_the_manifests() {
        let mut o = BTreeMap::new();
        o.insert(Kind::WorkloadProfile, "example.com/v2".to_string());
        let v = with_api_version(
            json!({"apiVersion": "spectrocloud.com/v1beta1"}),
            Kind::WorkloadProfile,
            &o,
        );
        assert_eq!(v["apiVersion"], "example.com/v2");
        assert_eq!(version_of(&v), Some("v2"));
        let v = with_api_version(
            json!({"apiVersion": "spectrocloud.com/v1beta1"}),
            Kind::ProfileBundle,
            &o,
        );
        assert_eq!(v["apiVersion"], "spectrocloud.com/v1beta1");
    }

    #[test]
    fn seen_reads_preconditions_and_the_live_policy() {
        let s = Seen::of(&json!({
            "apiVersion": "spectrocloud.com/v1beta1",
            "metadata": {"uid": "u1", "resourceVersion": "42"},
            "spec": {"deletionPolicy": "orphan"}
        }));
        assert_eq!(s.uid.as_deref(), Some("u1"));
        assert_eq!(s.resource_version.as_deref(), Some("42"));
        assert_eq!(s.deletion_policy, Some(DeletionPolicy::Orphan));
    }
}
