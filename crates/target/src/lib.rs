//! Applying a plan: the `Target` trait the rest of the code sees, the ChangeSet that reports
//! what happened (even when something failed), and the one guarded path to a deletion or a
//! release.
//!
//! Client types stay private to each target's file. [`run`] is the only caller of
//! `Target::write`; `Target::delete` and `Target::release` take a permit that only the guard
//! (`pbsync_core::guard`) makes, from the object's ownership read again at that moment
//! (`Target::recheck`).

pub mod kubernetes;
pub mod local_dir;
pub mod pace;
pub mod palette;
mod requests;
mod split;

pub use requests::RequestCounts;

pub use split::Split;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;

use serde::Serialize;
use serde_json::Value;

use pbsync_core::graph::ResourceGraph;
use pbsync_core::guard::{self, DeletePermit, Now, Refusal, ReleasePermit};
use pbsync_core::health::Health;
use pbsync_core::live::{Observed, Removal};
use pbsync_core::model::{Kind, ObjectKey};
use pbsync_core::ownership::Stamp;
use pbsync_core::plan::{Action, Change, Executor, Phase, Plan};

/// Errors of the apply stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the live state failed; nothing was written.
    #[error("cannot read live state of {what}")]
    ObserveFailed {
        /// What was being read.
        what: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The target rejected or failed a write.
    #[error("cannot {verb} {key}{at}")]
    WriteFailed {
        /// create, update, delete, release.
        verb: &'static str,
        /// Object.
        key: ObjectKey,
        /// ` (path:line)` of the object's declaration, when known.
        at: String,
        /// Whether trying again may succeed (network, timeout, 5xx, 429, conflict).
        retryable: bool,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Recording status failed.
    #[error("cannot record status")]
    StatusFailed {
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The target is misconfigured (missing CRD, unusable directory, ...).
    #[error("{0}")]
    Config(String),
    /// Another pass of this instance holds the target's lock.
    #[error(
        "another pass of this instance is running against {what} (held by {holder}); waited {waited:?}: try again when it is done, or stop the daemon that holds it"
    )]
    Locked {
        /// The lock (the Lease, the lock file).
        what: String,
        /// Who holds it.
        holder: String,
        /// How long this pass waited.
        waited: Duration,
    },
    /// The guard refused the change (ownership changed since the plan, a kind never
    /// deleted, another instance's object, ...): final for this commit, never retried blindly.
    #[error(transparent)]
    Refused(Box<Refusal>),
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(Box::new(refusal))
    }
}

impl Error {
    /// The guard's refusal, when that is what this is.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// True when trying the same commit again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ObserveFailed { .. } | Self::StatusFailed { .. } | Self::Locked { .. } => true,
            Self::WriteFailed { retryable, .. } => *retryable,
            Self::Config(_) | Self::Refused(_) => false,
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one pass recorded about itself.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Instance.
    pub instance: String,
    /// Revision applied completely, if this pass did.
    pub applied: Option<String>,
    /// Revision attempted.
    pub attempted: String,
    /// `applied` or the failure.
    pub outcome: String,
    /// Counts per outcome word.
    pub counts: std::collections::BTreeMap<String, usize>,
}

/// A secret value (an API key, a token, a password): its `Debug` output is redacted, so it
/// never shows in logs, plans, comments or error messages. The one place that sends it calls
/// [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a secret from a file: its whole content, surrounding whitespace (the trailing
    /// newline of an editor) removed.
    pub fn read_file(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self::new(std::fs::read_to_string(path)?.trim()))
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The one way pbsync builds an HTTP client (Palette, the Git hosts, notifications): rustls
/// with ring as its crypto provider (reqwest is built without a default one; the rest of the
/// process, kube, uses ring, and installing it twice is harmless), `timeout` per request, a
/// connect timeout of at most 10 s, and pbsync's user agent.
pub fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    http_client_builder(timeout).build()
}

/// The builder of [`http_client`], for a client that needs one setting more (notifications
/// follow no redirects).
pub fn http_client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("pbsync/", env!("CARGO_PKG_VERSION")))
}

/// The current time in RFC 3339 (UTC, whole seconds): the one formatter of the timestamps
/// pbsync prints and records (plan footers, status, Events).
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

/// What a target recorded about this instance's passes (`pbsync status`, and the rollback
/// check of `pbsync apply`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    /// Last revision applied completely.
    pub last_applied_revision: Option<String>,
    /// Last revision attempted.
    pub last_attempted_revision: Option<String>,
    /// `applied`, or the failure of the last attempt.
    pub outcome: Option<String>,
    /// The last revision whose objects all became current (the daemon follows health).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_healthy_revision: Option<String>,
    /// When (RFC 3339) it became so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_healthy_at: Option<String>,
}

/// A root whose health changed, for [`Target::record_health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// The root.
    pub key: ObjectKey,
    /// Its state before.
    pub from: pbsync_core::health::State,
    /// Its state now.
    pub to: pbsync_core::health::State,
    /// Why, as a cause chain (`ProfileBundle a/b not ready: ...`), or that it is current.
    pub message: String,
}

/// What the daemon records about the health of what it manages, after a change of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthRecord {
    /// Roots whose health changed since the last record (none on the first reading).
    pub changes: Vec<HealthChange>,
    /// A revision that just became fully healthy, and when (RFC 3339).
    pub healthy: Option<(String, String)>,
}

/// A target's lock for one pass of one instance, held until released: a `flock` on the
/// local directory's lock file (released by the kernel if the process dies), the Lease
/// `pbsync-<instance>` on the hub (renewed while held).
#[derive(Debug)]
pub enum PassLock {
    /// The target has no lock of its own (Palette: the hub side's lock covers the pass).
    None,
    /// The local directory's lock file, locked.
    File(std::fs::File),
    /// The hub's Lease.
    Lease(kubernetes::lease::Held),
}

impl PassLock {
    /// Lets the next pass in.
    pub async fn release(self) {
        match self {
            Self::None => {}
            Self::File(file) => drop(file),
            Self::Lease(held) => held.release().await,
        }
    }
}

/// Where objects go. Implemented by the local directory, the Kubernetes hub and Palette.
pub trait Target: Send + Sync {
    /// Checks what needs no request: whether this target can take the commit of `graph` at
    /// all (the kube target without a Palette side refuses cluster profiles). Runs before the
    /// lock is taken or anything is read.
    fn check(&self, _graph: &ResourceGraph) -> Result<()> {
        Ok(())
    }
    /// Reads the live state the plan needs (see [`Observed`]): every object this instance
    /// manages, every object the graph names, every ProfileBundle, ComputePool and AIWorkload
    /// (whoever owns them), and the catalogue for external references.
    fn observe(
        &self,
        graph: &ResourceGraph,
        stamp: &Stamp<'_>,
    ) -> impl Future<Output = Result<Observed>> + Send;
    /// Records the intent to own these objects before writing them, so a crash between the
    /// write and the bookkeeping can never turn pbsync's own object into a foreign one.
    fn prepare(&self, changes: &[&Change]) -> impl Future<Output = Result<()>> + Send;
    /// Creates or updates one object to `desired`.
    fn write(&self, change: &Change, desired: &Value) -> impl Future<Output = Result<()>> + Send;
    /// Reads one object's ownership (and, for cluster profiles, the clusters using it) as
    /// it is now, not as observed for the plan: what the guard decides a deletion or a
    /// release on. `None` when the object no longer exists. A target may keep what it read
    /// (a Kubernetes object's uid and resourceVersion) as the precondition of the change.
    fn recheck(&self, change: &Change) -> impl Future<Output = Result<Option<Now>>> + Send;
    /// Removes the ownership marks of one object, leaving it in place.
    fn release(
        &self,
        change: &Change,
        permit: ReleasePermit,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Deletes one object.
    fn delete(
        &self,
        change: &Change,
        permit: DeletePermit,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Records the outcome of the pass. A pass that applied its revision completely clears
    /// the removals [`Target::record_pending`] recorded.
    fn record(&self, status: &Status) -> impl Future<Output = Result<()>> + Send;
    /// Records, before the first removal of a pass, every removal the pass is about to carry
    /// out (see [`pbsync_core::live::Removal`]); `observe` reads them back into
    /// `Observed::pending` until a pass completes.
    fn record_pending(
        &self,
        removals: &[(ObjectKey, Removal)],
    ) -> impl Future<Output = Result<()>> + Send;
    /// What the last passes of this instance recorded (`None`: nothing yet).
    fn recorded(&self) -> impl Future<Output = Result<Option<Recorded>>> + Send;
    /// Records a change of health the daemon saw: an Event on each bundle whose health
    /// changed (kube), and the revision that became fully healthy (kube: the status
    /// ConfigMap; dir: the inventory). Never deletes or changes a managed object.
    fn record_health(&self, _record: &HealthRecord) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// Takes the lock of this target and instance for one applying pass, as `holder`,
    /// waiting up to `wait` for another pass to finish. Two passes never run at once.
    fn lock(&self, holder: &str, wait: Duration) -> impl Future<Output = Result<PassLock>> + Send;
    /// The requests this target sent so far, by the client that sent them (`kubernetes`,
    /// `palette`): `apply --stats` and the daemon's metrics read them.
    fn request_counts(&self) -> Vec<(&'static str, RequestCounts)> {
        Vec::new()
    }
    /// Whether [`observe`](Self::observe) is cheap enough to run before the lock is taken:
    /// a pass that finds nothing to do then takes no lock and sends no request (the kube
    /// target with its watch cache). Otherwise the lock comes first and the state is read
    /// once.
    fn observes_cheaply(&self) -> bool {
        false
    }
    /// How many writes of one wave may run at once.
    fn concurrency(&self) -> usize {
        1
    }
    /// Follows the health of `keys` (objects of `graph`): yields a first [`Reading`] of every
    /// key as soon as it is known, then every change, until dropped. The hub watches (one
    /// watch per kind and namespace, re-listed only when the server says the watch expired);
    /// Palette, which has no watch, is read again every few seconds; the directory's objects
    /// are current once written. A failed read yields an error and the target keeps trying:
    /// it never reads as "gone".
    fn follow<'a>(&'a self, graph: &'a ResourceGraph, keys: Vec<ObjectKey>) -> Follow<'a>;
}

/// What [`Target::follow`] yields.
pub type Follow<'a> = futures::stream::BoxStream<'a, Result<(ObjectKey, Reading)>>;

/// One reading of an object followed by [`Target::follow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// The object exists; its own health.
    Present(Health),
    /// The object does not exist (deleted, or never created).
    Gone,
}

/// Outcome of one object, in Flux's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Created.
    Created,
    /// Updated.
    Configured,
    /// Nothing to do.
    Unchanged,
    /// Deleted.
    Deleted,
    /// Released.
    Orphaned,
    /// Not acted on (blocked, unknown, performed by the server, or not reached).
    Skipped,
    /// Tried and failed.
    Failed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
            Self::Orphaned => "orphaned",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        })
    }
}

/// One entry of a ChangeSet.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Object.
    pub key: ObjectKey,
    /// What happened.
    pub outcome: Outcome,
    /// Why it was skipped or how it failed.
    pub note: Option<String>,
}

/// What one apply did, complete even when it failed part-way.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChangeSet {
    /// Entries in execution order.
    pub entries: Vec<Entry>,
}

impl ChangeSet {
    fn push(&mut self, key: &ObjectKey, outcome: Outcome, note: Option<String>) {
        self.entries.push(Entry {
            key: key.clone(),
            outcome,
            note,
        });
    }

    /// Counts per outcome word.
    pub fn counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for e in &self.entries {
            *m.entry(e.outcome.to_string()).or_default() += 1;
        }
        m
    }
}

/// Why an apply stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The guard refused the plan before anything was written (the mass-deletion guard).
    #[error(transparent)]
    Refused(Box<Refusal>),
    /// Some changes are `unknown` (an object that could not be compared with its live state,
    /// a deletionPolicy Git history could not tell); nothing was deleted.
    #[error(
        "{0} object(s) could not be compared with live state or decided from Git history; nothing was deleted"
    )]
    Unknown(usize),
    /// A write failed; later writes and all deletions were skipped.
    #[error("apply stopped")]
    Write(#[source] Error),
    /// The hub lacks namespaces the commit writes into: nothing was written.
    #[error("{0}")]
    MissingNamespaces(String),
    /// Deletions failed; the objects stay managed and are retried on the next pass.
    #[error("{count} deletion(s) failed; the objects stay managed and are retried next pass")]
    Prune {
        /// Number of failures.
        count: usize,
        /// The first failure.
        #[source]
        first: Error,
    },
    /// Objects a deletion wave deleted were still there when the wait ran out (finalizers
    /// hold them): the later waves were not started; the next pass continues.
    #[error(
        "{} deleted object(s) still present after {waited:?} (finalizers pending): {}; later deletions wait for the next pass",
        waiting.len(),
        waiting.iter().map(|(k, why)| format!("{k} ({why})")).collect::<Vec<_>>().join(", ")
    )]
    DeletionsPending {
        /// How long the pass waited.
        waited: Duration,
        /// What is still there, with its health's message.
        waiting: Vec<(ObjectKey, String)>,
    },
    /// The status could not be recorded.
    #[error("apply finished")]
    Status(#[source] Error),
}

impl RunError {
    /// The guard's refusal that stopped the apply, if one did.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            Self::Write(e) | Self::Status(e) | Self::Prune { first: e, .. } => e.refusal(),
            Self::Unknown(_) | Self::MissingNamespaces(_) | Self::DeletionsPending { .. } => None,
        }
    }

    /// True when the same commit may succeed on a later try.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Refused(_) => false,
            // Someone may create the namespace; the same commit then applies.
            Self::Unknown(_) | Self::MissingNamespaces(_) | Self::DeletionsPending { .. } => true,
            Self::Write(e) | Self::Status(e) | Self::Prune { first: e, .. } => e.is_retryable(),
        }
    }
}

/// How long a pass waits, by default, for the objects one deletion wave deleted to be gone
/// before it starts the next wave.
pub const DEFAULT_DELETION_TIMEOUT: Duration = Duration::from_secs(120);

/// Options of one apply.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Apply even when the mass-deletion guard trips.
    pub allow_mass_deletion: bool,
    /// Apply a revision that does not descend from the last one applied (a rollback). The
    /// daemon follows its branch as Git has it and sets it; a one-shot apply needs
    /// `--allow-rollback`.
    pub allow_rollback: bool,
    /// How long to wait for one wave's deletions to be gone (finalizers run) before the next
    /// wave; past it the pass stops, and the next pass continues from the recorded removals.
    pub deletion_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            allow_mass_deletion: false,
            allow_rollback: false,
            deletion_timeout: DEFAULT_DELETION_TIMEOUT,
        }
    }
}

/// Applies `plan`: creates and updates in dependency order, stopping at the first failure;
/// then, only if all of them succeeded and every object could be compared, deletions and
/// orphanings in deletion order. Always returns the ChangeSet of what was done.
/// The outcome of `plan` when it has nothing to do at all (every change `unchanged`, no
/// namespace missing): what [`run`] would report, without running it. `None` otherwise.
pub fn nothing_to_do(plan: &Plan) -> Option<ChangeSet> {
    let idle = plan.missing_namespaces.is_empty()
        && plan.guard.is_none()
        && plan
            .changes
            .iter()
            .all(|c| c.action == pbsync_core::plan::Action::Unchanged);
    idle.then(|| {
        let mut set = ChangeSet::default();
        for c in &plan.changes {
            set.push(&c.key, Outcome::Unchanged, None);
        }
        set
    })
}

pub async fn run<T: Target>(
    target: &T,
    graph: &ResourceGraph,
    plan: &Plan,
    stamp: &Stamp<'_>,
    opts: RunOptions,
) -> (ChangeSet, Result<(), RunError>) {
    let mut set = ChangeSet::default();
    if let Err(refusal) = guard::within_mass_deletion_guard(plan, opts.allow_mass_deletion) {
        return (set, Err(RunError::Refused(Box::new(refusal))));
    }
    let result = run_steps(target, graph, plan, stamp, opts, &mut set).await;
    let status = Status {
        instance: stamp.instance.to_string(),
        applied: result.is_ok().then(|| plan.revision.clone()),
        attempted: plan.revision.clone(),
        outcome: match &result {
            Ok(()) => "applied".into(),
            Err(e) => format!("failed: {}", pbsync_core::error_chain(e)),
        },
        counts: set.counts(),
    };
    let started = std::time::Instant::now();
    let recorded = target.record(&status).await;
    tracing::debug!(elapsed = ?started.elapsed(), "status recorded");
    let result = match (result, recorded) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(RunError::Status(e)),
        (Ok(()), Ok(())) => Ok(()),
    };
    (set, result)
}

async fn run_steps<T: Target>(
    target: &T,
    graph: &ResourceGraph,
    plan: &Plan,
    stamp: &Stamp<'_>,
    opts: RunOptions,
    set: &mut ChangeSet,
) -> Result<(), RunError> {
    let allow_mass_deletion = opts.allow_mass_deletion;
    if !plan.missing_namespaces.is_empty() {
        let names: Vec<String> = plan
            .missing_namespaces
            .iter()
            .map(|m| format!("{} (used by {})", m.namespace, m.files.join(", ")))
            .collect();
        for c in &plan.changes {
            set.push(
                &c.key,
                Outcome::Skipped,
                Some("not written: a namespace the commit needs does not exist".into()),
            );
        }
        return Err(RunError::MissingNamespaces(format!(
            "refusing to write anything: the hub has no namespace {}; create them, then apply again",
            names.join("; ")
        )));
    }
    let (applies, removals): (Vec<&Change>, Vec<&Change>) =
        plan.changes.iter().partition(|c| !is_removal_phase(c));
    let writes: Vec<&Change> = applies
        .iter()
        .copied()
        .filter(|c| matches!(c.action, Action::Create | Action::Update))
        .collect();
    if !writes.is_empty() {
        target.prepare(&writes).await.map_err(RunError::Write)?;
    }
    // An object that could not be compared, or a deletion whose policy could not be read,
    // stops every deletion of the pass: a failure to read never reads as "delete".
    let unknown = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Unknown)
        .count();
    // Waves in dependency order; the writes of one wave run concurrently, bounded by the
    // target. A failure lets the wave finish, then stops before the next one.
    let mut waves: BTreeMap<usize, Vec<&Change>> = BTreeMap::new();
    for change in &applies {
        waves
            .entry(graph.wave(&change.key))
            .or_default()
            .push(change);
    }
    let mut failed: Option<Error> = None;
    for wave in waves.into_values() {
        if failed.is_some() {
            for c in wave {
                set.push(
                    &c.key,
                    Outcome::Skipped,
                    Some("not reached: an earlier step failed".into()),
                );
            }
            continue;
        }
        let started = std::time::Instant::now();
        // Unordered, so one slow request does not hold back the ones behind it; the
        // results are put back in plan order so the ChangeSet stays deterministic.
        let mut results: Vec<(usize, &Change, Option<Result<()>>)> =
            futures::stream::iter(wave.into_iter().enumerate())
                .map(|(i, change)| async move {
                    if !matches!(change.action, Action::Create | Action::Update) {
                        return (i, change, None);
                    }
                    // The one adoption rule, against the object the plan was made for.
                    if let Some(own) = &change.observed
                        && let Err(refusal) = guard::may_write(change, own)
                    {
                        return (i, change, Some(Err(Error::from(refusal))));
                    }
                    let node = graph
                        .node(&change.key)
                        .expect("invariant: planned writes are graph nodes");
                    let obj = graph
                        .object(node)
                        .expect("invariant: planned writes are declared");
                    let desired = pbsync_core::ownership::render(
                        obj,
                        &Stamp {
                            adopted: change.adopt,
                            ..stamp.clone()
                        },
                    );
                    (i, change, Some(target.write(change, &desired).await))
                })
                .buffer_unordered(target.concurrency().max(1))
                .collect()
                .await;
        tracing::debug!(elapsed = ?started.elapsed(), "wave written");
        results.sort_by_key(|(i, _, _)| *i);
        for (_, change, result) in results {
            match (change.action, result) {
                (_, Some(Err(e))) => {
                    set.push(
                        &change.key,
                        Outcome::Failed,
                        Some(pbsync_core::error_chain(&e)),
                    );
                    failed.get_or_insert(e);
                }
                (Action::Create, Some(Ok(()))) => set.push(&change.key, Outcome::Created, None),
                (_, Some(Ok(()))) => set.push(&change.key, Outcome::Configured, None),
                (Action::Unchanged, None) => set.push(&change.key, Outcome::Unchanged, None),
                (_, None) => set.push(
                    &change.key,
                    Outcome::Skipped,
                    change.reasons.last().cloned(),
                ),
            }
        }
    }
    if let Some(e) = failed {
        for rest in &removals {
            set.push(
                &rest.key,
                Outcome::Skipped,
                Some("not reached: an earlier step failed".into()),
            );
        }
        return Err(RunError::Write(e));
    }
    if unknown > 0 {
        for c in &removals {
            set.push(
                &c.key,
                Outcome::Skipped,
                Some("not deleted: some objects could not be compared or decided".into()),
            );
        }
        return Err(RunError::Unknown(unknown));
    }
    // The decisions, recorded before the first of them is carried out, so a pass cut short
    // between removals leaves them for the next one to finish.
    let pending: Vec<(ObjectKey, Removal)> = removals
        .iter()
        .filter_map(|c| match (c.action, c.executor) {
            (Action::Delete, Executor::Pbsync) => Some((c.key.clone(), Removal::Delete)),
            (Action::Orphan, _) => Some((c.key.clone(), Removal::Orphan)),
            _ => None,
        })
        .collect();
    if !pending.is_empty() {
        target
            .record_pending(&pending)
            .await
            .map_err(RunError::Write)?;
    }
    let mut failures: Vec<Error> = Vec::new();
    // Deleted in this wave, to wait for before the next one starts.
    let mut deleted: Vec<ObjectKey> = Vec::new();
    let mut wave = None;
    for (i, change) in removals.iter().enumerate() {
        let this_wave = pbsync_core::plan::deletion_wave(change.key.kind);
        if wave != Some(this_wave) {
            wave = Some(this_wave);
            if !deleted.is_empty()
                && let Err(waiting) = await_gone(
                    target,
                    graph,
                    std::mem::take(&mut deleted),
                    opts.deletion_timeout,
                )
                .await
            {
                for rest in &removals[i..] {
                    set.push(
                        &rest.key,
                        Outcome::Skipped,
                        Some("not reached: the previous deletion wave is not gone yet".into()),
                    );
                }
                return Err(RunError::DeletionsPending {
                    waited: opts.deletion_timeout,
                    waiting,
                });
            }
        }
        if change.key.kind == Kind::ProfileBundle && !failures.is_empty() {
            // The bundle is the record of what still has to go: keep it until its
            // dependents are gone.
            set.push(
                &change.key,
                Outcome::Skipped,
                Some("kept until its dependents' deletions succeed".into()),
            );
            continue;
        }
        let done = match (change.action, change.executor) {
            (Action::Delete, Executor::Pbsync) => {
                guarded_delete(target, plan, change, allow_mass_deletion)
                    .await
                    .map(|()| Outcome::Deleted)
            }
            (Action::Orphan, _) => guarded_release(target, plan, change, allow_mass_deletion)
                .await
                .map(|()| Outcome::Orphaned),
            _ => {
                set.push(
                    &change.key,
                    Outcome::Skipped,
                    change.reasons.last().cloned(),
                );
                continue;
            }
        };
        match done {
            Ok(outcome) => {
                if outcome == Outcome::Deleted {
                    deleted.push(change.key.clone());
                }
                set.push(&change.key, outcome, None);
            }
            Err(e) => {
                set.push(
                    &change.key,
                    Outcome::Failed,
                    Some(pbsync_core::error_chain(&e)),
                );
                failures.push(e);
            }
        }
    }
    // Not the last wave: nothing waits behind it, and a controller's clean-up of a bundle
    // (its finalizers) may take longer than a pass should. A bundle still being deleted is
    // live and unwanted, so the next pass deletes it again (a no-op) until it is gone.
    if failures.is_empty() {
        Ok(())
    } else {
        let count = failures.len();
        Err(RunError::Prune {
            count,
            first: failures.remove(0),
        })
    }
}

/// Waits until every object of `keys` is gone (its finalizers done), up to `timeout`.
/// `Err` lists what is still there, each with its health's message.
async fn await_gone<T: Target>(
    target: &T,
    graph: &ResourceGraph,
    keys: Vec<ObjectKey>,
    timeout: Duration,
) -> std::result::Result<(), Vec<(ObjectKey, String)>> {
    // A Palette DELETE removes the profile before it answers (Palette has no finalizers).
    let keys: Vec<ObjectKey> = keys.into_iter().filter(|k| !k.kind.is_palette()).collect();
    if keys.is_empty() {
        return Ok(());
    }
    let mut waiting: BTreeMap<ObjectKey, String> = keys
        .iter()
        .map(|k| (k.clone(), "not read yet".to_string()))
        .collect();
    let started = std::time::Instant::now();
    let mut stream = target.follow(graph, keys);
    let wait = async {
        while let Some(reading) = stream.next().await {
            match reading {
                Ok((key, Reading::Gone)) => {
                    waiting.remove(&key);
                }
                Ok((key, Reading::Present(health))) => {
                    if let Some(w) = waiting.get_mut(&key) {
                        *w = health.message;
                    }
                }
                Err(e) => tracing::warn!(
                    error = %pbsync_core::error_chain(&e),
                    "cannot read whether deleted objects are gone; still waiting"
                ),
            }
            if waiting.is_empty() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, wait).await;
    tracing::debug!(elapsed = ?started.elapsed(), left = waiting.len(), "deletion wave awaited");
    if waiting.is_empty() {
        Ok(())
    } else {
        Err(waiting.into_iter().collect())
    }
}

fn is_removal_phase(c: &Change) -> bool {
    c.phase == Phase::Prune
}

/// The one delete path: reads the object's ownership now, lets the guard decide, and
/// deletes with the permit it gives. An object already gone counts as deleted.
async fn guarded_delete<T: Target>(
    target: &T,
    plan: &Plan,
    change: &Change,
    allow_mass_deletion: bool,
) -> Result<()> {
    // The plan-level rules first, so a refused change costs no request.
    guard::check_delete(plan, change, allow_mass_deletion)?;
    let Some(now) = target.recheck(change).await? else {
        return Ok(());
    };
    let permit = guard::permit_delete(plan, change, &now, allow_mass_deletion)?;
    target.delete(change, permit).await
}

/// The one release path: as [`guarded_delete`], for orphaning. An object already gone has
/// nothing left to release.
async fn guarded_release<T: Target>(
    target: &T,
    plan: &Plan,
    change: &Change,
    allow_mass_deletion: bool,
) -> Result<()> {
    let Some(now) = target.recheck(change).await? else {
        return Ok(());
    };
    let permit = guard::permit_release(plan, change, &now.ownership, allow_mass_deletion)?;
    target.release(change, permit).await
}
