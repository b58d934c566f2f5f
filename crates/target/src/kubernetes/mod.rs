//! The Kubernetes target (`--target kube`): hub objects on a Kubernetes API server, written
//! with server-side apply (field manager `pbsync`), compared by server-side dry-run, owned
//! through labels, deleted only through the guarded delete path.
//!
//! - `discovery`: which API resource serves each kind; a missing CRD is a configuration error.
//! - `observe`: label-selected, paged lists; dry-runs cached by (desired hash, resourceVersion).
//! - `fields`: server-side apply's field ownership proves an object unchanged without a dry-run.
//! - `client`: every request spends the budget (QPS/burst), is counted, and is retried on
//!   429 (Retry-After), 5xx and timeouts.
//! - `change`: apply, release and delete of one object, with preconditions and 409 retries.
//! - `status`: the status ConfigMap and the Events on changed bundles.
//!
//! Client types stay private to this module; the rest of the code sees a [`Target`].

mod budget;
mod cache;
mod change;
mod client;
mod discovery;
mod fields;
mod follow;
pub mod lease;
mod observe;
mod status;

pub use crate::requests::RequestCounts;
pub use budget::Verb;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::{Result, Status, Target};
use client::ApiClient;
use discovery::Resources;
use pbsync_core::graph::ResourceGraph;
use pbsync_core::guard::{DeletePermit, Now, Refusal, ReleasePermit};
use pbsync_core::live::Observed;
use pbsync_core::model::{DeletionPolicy, Kind, ObjectKey};
use pbsync_core::ownership::Stamp;
use pbsync_core::plan::Change;

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
    /// The object changed hands since it was observed; the guard leaves it alone.
    #[error(transparent)]
    Refused(#[from] Refusal),
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
            Self::Refused(_) | Self::StatusNamespaceMissing { .. } => false,
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
    /// Dry-run objects that do not exist yet while observing, so a create the server would
    /// reject shows in the plan as `unknown` and an apply writes nothing of such a commit.
    /// `pbsync plan` always does; an apply without it lets each create be checked by the
    /// create itself (one request per new object instead of two): a rejected create fails
    /// the pass, with the server's message, before anything is deleted.
    pub preflight: bool,
    /// Cluster profiles: refused, or handled by another target.
    pub cluster_profiles: ClusterProfiles,
    /// How long the Lease a pass holds lasts without renewal (the daemon's
    /// `lease-duration`): another pass waits at most this long after a holder on another
    /// host died.
    pub lease_duration: Duration,
    /// apiVersion to use for a kind instead of the ones pbsync knows (`group/version`), for
    /// hubs that serve a kind elsewhere; reads and writes use it.
    pub api_versions: BTreeMap<Kind, String>,
    /// Keep the lists a plan reads in watch-fed mirrors (the daemon): after their first
    /// list, a pass reads the hub only through the watches (see the `cache` module).
    pub watch_cache: bool,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            instance: pbsync_core::ownership::DEFAULT_INSTANCE.into(),
            status_namespace: DEFAULT_STATUS_NAMESPACE.into(),
            // A first sync of a large repository sends a few thousand requests; the API
            // server's priority and fairness protects it beyond that.
            qps: 500.0,
            burst: 1000,
            concurrency: 16,
            preflight: false,
            cluster_profiles: ClusterProfiles::Refuse,
            lease_duration: Duration::from_secs(15),
            api_versions: BTreeMap::new(),
            watch_cache: false,
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
    /// It carries the note of an earlier release (`pbsync.dev/released-by`).
    released_note: bool,
}

impl Seen {
    /// After a write: the identity (uid, resourceVersion) from the server's answer, which
    /// holds the metadata only; apiVersion and deletion policy are those written.
    fn written(desired: &Value, answer: &Value) -> Self {
        let identity = Self::of(answer);
        Self {
            uid: identity.uid,
            resource_version: identity.resource_version,
            released_note: false,
            ..Self::of(desired)
        }
    }

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
            released_note: manifest
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(pbsync_core::ownership::RELEASED_BY_ANNOTATION))
                .is_some(),
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

/// A cached comparison: what applying a desired object (by fingerprint) to one live
/// resourceVersion gives.
#[derive(Debug, Clone)]
struct Compared {
    fingerprint: Vec<u8>,
    resource_version: Option<String>,
    answer: Answer,
}

/// What applying a desired object gives.
#[derive(Debug, Clone)]
enum Answer {
    /// The server's answer to a dry-run: the object it would store, or its rejection.
    DryRun(std::result::Result<Value, String>),
    /// The live object at the cached resourceVersion itself: pbsync's own apply wrote it, or
    /// field ownership showed applying again changes nothing.
    Live,
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
    /// The revision of the current pass (observe sets it), for the Events' messages.
    revision: Mutex<String>,
    /// The watch-fed mirrors of the lists a plan reads (`watch_cache`).
    mirrors: Option<cache::Mirrors>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold caches and bookkeeping that stay consistent entry by entry.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KubeTarget {
    /// A target; the kubeconfig is read and the server contacted on first use.
    pub fn new(options: KubeOptions) -> Self {
        let mirrors = options.watch_cache.then(cache::Mirrors::default);
        Self {
            options,
            api: tokio::sync::OnceCell::new(),
            resources: Mutex::new(None),
            compared: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            recorded: tokio::sync::Mutex::new(None),
            revision: Mutex::new(String::new()),
            mirrors,
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
                let client = connect(
                    self.options.kubeconfig.as_deref(),
                    self.options.context.as_deref(),
                )
                .await?;
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
}

/// The one kubeconfig loader: a client for `kubeconfig` and `context` (without either:
/// `$KUBECONFIG`, `~/.kube/config`, or the in-cluster service account), used by the target,
/// the Lease and `pbsync status`. pbsync retries itself (counting every attempt and
/// honouring Retry-After), so kube's own retries are off; reads time out after 60 s.
pub async fn connect(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<kube::Client> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let fail = |what: &str, e: &(dyn std::error::Error + 'static)| {
        super::Error::Config(format!("{what}: {}", pbsync_core::error_chain(e)))
    };
    let mut config = match (kubeconfig, context) {
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| fail("cannot find a kubeconfig or in-cluster service account", &e))?,
        (path, context) => {
            let opts = KubeConfigOptions {
                context: context.map(str::to_string),
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
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(60));
    kube::Client::try_from(config).map_err(|e| fail("cannot build a Kubernetes client", &e))
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
    fn check(&self, graph: &ResourceGraph) -> Result<()> {
        self.check_cluster_profiles(graph)
    }

    async fn observe(&self, graph: &ResourceGraph, stamp: &Stamp<'_>) -> Result<Observed> {
        self.observe_hub(graph, stamp).await
    }

    async fn prepare(&self, _changes: &[&Change]) -> Result<()> {
        // Ownership lives on the object itself and is written with it in one request.
        Ok(())
    }

    async fn write(&self, change: &Change, desired: &Value) -> Result<()> {
        self.write_change(change, desired).await
    }

    async fn recheck(&self, change: &Change) -> Result<Option<Now>> {
        self.recheck_change(change).await
    }

    async fn release(&self, change: &Change, permit: ReleasePermit) -> Result<()> {
        self.release_change(change, permit).await
    }

    async fn delete(&self, change: &Change, permit: DeletePermit) -> Result<()> {
        self.delete_change(change, permit).await
    }

    fn follow<'a>(&'a self, graph: &'a ResourceGraph, keys: Vec<ObjectKey>) -> crate::Follow<'a> {
        self.follow_hub(graph, keys)
    }

    async fn record(&self, status: &Status) -> Result<()> {
        self.record_status(status).await
    }

    async fn recorded(&self) -> Result<Option<crate::Recorded>> {
        self.read_status().await
    }

    async fn record_health(&self, record: &crate::HealthRecord) -> Result<()> {
        self.record_health(record).await
    }

    fn observes_cheaply(&self) -> bool {
        self.mirrors.is_some()
    }

    async fn record_pending(
        &self,
        removals: &[(ObjectKey, pbsync_core::live::Removal)],
    ) -> Result<()> {
        self.record_pending(removals).await
    }

    /// The Lease `pbsync-<instance>` in the status namespace, the one the daemon's leader
    /// election holds.
    async fn lock(&self, holder: &str, wait: Duration) -> Result<crate::PassLock> {
        let api = self.api().await?;
        let cfg = lease::LeaseConfig {
            lease_name: lease::lease_name(&self.options.instance),
            namespace: self.options.status_namespace.clone(),
            duration: self.options.lease_duration,
            identity: holder.to_string(),
        };
        let what = format!("lease {}/{}", cfg.namespace, cfg.lease_name);
        let candidate = lease::Candidate::new(api.client(), cfg);
        match lease::hold(candidate, wait).await {
            Ok(Ok(held)) => Ok(crate::PassLock::Lease(held)),
            Ok(Err(other)) => Err(super::Error::Locked {
                what,
                holder: other,
                waited: wait,
            }),
            Err(lease::Error::RequestFailed {
                source: kube::Error::Api(e),
                ..
            }) if e.code == 404 => Err(super::Error::Config(format!(
                "status namespace {:?} does not exist: create it, or choose another with --status-namespace (it holds the instance's Lease and status)",
                self.options.status_namespace
            ))),
            Err(e) => Err(super::Error::ObserveFailed {
                what,
                source: Box::new(e),
            }),
        }
    }

    fn concurrency(&self) -> usize {
        self.parallelism()
    }

    fn request_counts(&self) -> Vec<(&'static str, crate::RequestCounts)> {
        vec![("kubernetes", self.requests())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn seen_after_a_write_takes_the_identity_from_the_answer_and_the_rest_from_the_request() {
        let desired = json!({
            "apiVersion": "spectrocloud.com/v1beta1",
            "kind": "ProfileBundle",
            "metadata": {"name": "b", "namespace": "n"},
            "spec": {"deletionPolicy": "orphan"}
        });
        let answer = json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {"name": "b", "uid": "u2", "resourceVersion": "7"}
        });
        let s = Seen::written(&desired, &answer);
        assert_eq!(s.uid.as_deref(), Some("u2"));
        assert_eq!(s.resource_version.as_deref(), Some("7"));
        assert_eq!(s.api_version, "spectrocloud.com/v1beta1");
        assert_eq!(s.deletion_policy, Some(DeletionPolicy::Orphan));
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
