//! The Flux source-controller of the test control plane (`scripts/testcluster up` runs it):
//! which objects it reconciles, the source kinds' API resources, and waiting for its verdict.
//!
//! It reconciles only objects labelled [`WATCH_LABEL_KEY`]`=`[`WATCH_LABEL_VALUE`] (Flux's
//! sharding label; `--watch-label-selector`), so that the HelmRepositories and
//! OCIRepositories other tests write get no finalizer and no status from it. A test that
//! wants the controller's verdict labels its objects with [`watched_labels`].

use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

/// The label the test cluster's source-controller selects objects by (its
/// `--watch-label-selector`, in `scripts/testcluster`).
pub const WATCH_LABEL_KEY: &str = "sharding.fluxcd.io/key";
/// The value of [`WATCH_LABEL_KEY`] it selects.
pub const WATCH_LABEL_VALUE: &str = "pbsync-testcluster";
/// The group of Flux's source kinds.
pub const GROUP: &str = "source.toolkit.fluxcd.io";
/// The annotation that asks a Flux controller to reconcile now (`flux reconcile source`).
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
/// How long [`wait_for_ready`] waits for the controller's verdict. Generous: it is a wait,
/// not a timed assertion (each test of `tests/it/flux_source.rs` takes ≈ 2 s in all).
pub const WAIT: Duration = Duration::from_secs(60);

/// `metadata.labels` that make the test cluster's source-controller reconcile an object.
pub fn watched_labels() -> Value {
    json!({ WATCH_LABEL_KEY: WATCH_LABEL_VALUE })
}

/// The `v1` API resource of a Flux source kind: GitRepository, HelmRepository, HelmChart,
/// Bucket, OCIRepository or ExternalArtifact.
pub fn resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "GitRepository" => "gitrepositories",
        "HelmRepository" => "helmrepositories",
        "HelmChart" => "helmcharts",
        "Bucket" => "buckets",
        "OCIRepository" => "ocirepositories",
        "ExternalArtifact" => "externalartifacts",
        other => panic!("not a Flux source kind: {other}"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1", kind), plural)
}

/// A status condition of a Flux object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The reason, e.g. `Succeeded`, `FetchFailed`.
    pub reason: String,
    /// The human-readable message.
    pub message: String,
    /// The `metadata.generation` the condition was computed for.
    pub observed_generation: Option<i64>,
}

/// The condition `type_` (e.g. `Ready`) in `obj`'s status, if there is one.
pub fn condition(obj: &DynamicObject, type_: &str) -> Option<Condition> {
    let conditions = obj.data.pointer("/status/conditions")?.as_array()?;
    let c = conditions
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))?;
    let text = |field: &str| {
        c.get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Some(Condition {
        status: text("status"),
        reason: text("reason"),
        message: text("message"),
        observed_generation: c.get("observedGeneration").and_then(Value::as_i64),
    })
}

/// Asks the controller to reconcile `name` now (sets [`REQUESTED_AT`], as `flux reconcile`
/// does) and returns the token to pass to [`wait_for_ready`]: the controller copies it to
/// `status.lastHandledReconcileAt` once it has handled the request.
pub async fn request_reconcile(api: &Api<DynamicObject>, name: &str) -> String {
    let token = format!("pbsync-test-{:016x}", fastrand::u64(..));
    let patch = json!({"metadata": {"annotations": {REQUESTED_AT: token}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("request a reconciliation of {name}: {e}"));
    token
}

/// Polls `name` until the controller's verdict on its current spec is in: its `Ready`
/// condition has status `True` (`ready`) or `False` (`!ready`), was computed for the current
/// `metadata.generation`, and, given a token of [`request_reconcile`], after that request.
/// Returns the object and its Ready condition. Panics after [`WAIT`] with what it last saw
/// and where the controller's log is.
///
/// A Flux controller writes its verdict in two requests (fluxcd/pkg/runtime's
/// `patch.Helper`: the conditions first, then the rest of the status), so a Ready condition
/// alone can be seen before `status.artifact`. The second request is waited for too: for
/// `ready`, by `status.observedGeneration` reaching the generation (set only on success, as
/// kstatus reads it); with a token, by `status.lastHandledReconcileAt`. A `!ready` wait
/// without a token has nothing to wait for after the conditions: read only them.
pub async fn wait_for_ready(
    api: &Api<DynamicObject>,
    name: &str,
    ready: bool,
    handled: Option<&str>,
) -> (DynamicObject, Condition) {
    let want = if ready { "True" } else { "False" };
    let started = Instant::now();
    let mut last = None;
    loop {
        let obj = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"));
        let ready_condition = condition(&obj, "Ready");
        let current = obj.metadata.generation.is_some()
            && ready_condition.as_ref().and_then(|c| c.observed_generation)
                == obj.metadata.generation;
        let requested = handled.is_none_or(|token| {
            obj.data
                .pointer("/status/lastHandledReconcileAt")
                .and_then(Value::as_str)
                == Some(token)
        });
        let observed = !ready
            || obj
                .data
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64)
                == obj.metadata.generation;
        let complete = current && requested && observed;
        if let Some(c) = ready_condition.filter(|c| c.status == want && complete) {
            return (obj, c);
        }
        if started.elapsed() > WAIT {
            panic!(
                "{name}: no Ready={want} from source-controller in {WAIT:?}; last status: {}\n\
                 (is it running? `scripts/testcluster up` starts it; its log is \
                 source-controller.log in the cluster's state dir, /tmp/pbsync-testcluster by default)",
                last.map_or_else(|| "none".to_string(), |s: Value| s.to_string())
            );
        }
        last = obj.data.get("status").cloned();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
