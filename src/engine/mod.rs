//! The one pipeline. `validate`, `graph`, `plan`, `apply`, the daemon's pass and the
//! pull-request plan all run a pass through [`run`]; they differ only in the [`Goal`] and in
//! where the commit comes from (the caller's fetch: a local repository, the daemon's clone,
//! a merge computed in memory):
//!
//! ```text
//! parse -> validate -> graph                          (pure, pbsync-core)
//!   -> observe (the target's live state, or the state a base commit produces)
//!   -> validate against the live catalogue -> history of leaving bundles (git)
//!   -> plan -> mask secrets                           (pure)
//!   -> apply, every deletion through the guard        (pbsync-target)
//! ```
//!
//! It decides nothing about timing or output; errors carry their stage and whether trying
//! again may help.

mod cache;
pub mod history;
pub mod wait;

pub use cache::ParseCache;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::source::verify::{self, Verifier};
use crate::source::{self, GitConfig};
use pbsync_core::graph::ResourceGraph;
use pbsync_core::guard::{self, Refusal};
use pbsync_core::live::Observed;
use pbsync_core::model::{self, Catalog, DesiredState, Limits, Violation, Violations};
use pbsync_core::ownership::Stamp;
use pbsync_core::plan::{self, Plan, impact, mask};
use pbsync_core::snapshot::Snapshot;
use pbsync_target::{ChangeSet, RunError, RunOptions, Target};

/// Pipeline stages, for metrics labels, health reasons and systemd `STATUS=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Reading the commit.
    Fetch,
    /// Checking the commit's signature (`verify:`).
    Verify,
    /// YAML and shapes.
    Parse,
    /// Bundle rules and references.
    Validate,
    /// Cycles.
    Graph,
    /// Reading live state.
    Observe,
    /// Creates and updates.
    Apply,
    /// Deletions and orphanings.
    Prune,
}

impl Stage {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fetch => "fetch",
            Self::Verify => "verify",
            Self::Parse => "parse",
            Self::Validate => "validate",
            Self::Graph => "graph",
            Self::Observe => "observe",
            Self::Apply => "apply",
            Self::Prune => "prune",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The commit could not be read.
    #[error("fetch failed")]
    Fetch(#[source] source::Error),
    /// The commit is not signed by one of the configured keys (`verify:`, `--verify-keys`);
    /// nothing is read from it, nothing is written, nothing is deleted.
    #[error("commit {commit} is refused: its signature is not trusted")]
    SignatureRefused {
        /// The commit.
        commit: String,
        /// Why.
        #[source]
        reason: verify::Refusal,
    },
    /// The commit breaks rules; nothing is applied from it.
    #[error("commit {revision} is invalid: {violations}")]
    Invalid {
        /// The commit.
        revision: String,
        /// Every violation.
        violations: Violations,
        /// Warnings found on the way.
        warnings: Vec<String>,
    },
    /// A pull request's base does not build, so the state it would produce is unknown.
    #[error("base {revision} is invalid, so the state it would produce is unknown: {violations}")]
    BaseInvalid {
        /// Base commit.
        revision: String,
        /// Its violations.
        violations: Violations,
    },
    /// Live state could not be read.
    #[error("observe failed")]
    Observe(#[source] Box<pbsync_target::Error>),
    /// The target's lock for this instance could not be taken (another pass holds it).
    #[error("cannot start the pass")]
    Lock(#[source] Box<pbsync_target::Error>),
    /// A safety rule refused the pass before anything was read or written (a rollback).
    #[error(transparent)]
    Refused(Box<Refusal>),
    /// Applying failed part-way; the ChangeSet says how far it got.
    #[error("apply of {revision} failed")]
    Apply {
        /// The commit.
        revision: String,
        /// The plan being applied.
        plan: Box<Plan>,
        /// What was done.
        changes: Box<ChangeSet>,
        /// Why it stopped.
        #[source]
        source: Box<RunError>,
    },
}

impl Error {
    /// The stage that failed.
    pub fn stage(&self) -> Stage {
        match self {
            Self::Fetch(_) => Stage::Fetch,
            Self::SignatureRefused { .. } => Stage::Verify,
            Self::Invalid { violations, .. } | Self::BaseInvalid { violations, .. } => {
                let rules: Vec<model::Rule> = violations.0.iter().map(|v| v.rule).collect();
                if rules.iter().all(|r| matches!(r, model::Rule::Cycle)) {
                    Stage::Graph
                } else if rules.iter().any(|r| r.is_parse()) {
                    Stage::Parse
                } else {
                    Stage::Validate
                }
            }
            Self::Observe(_) | Self::Lock(_) | Self::Refused(_) => Stage::Observe,
            Self::Apply { source, .. }
                if matches!(
                    **source,
                    RunError::Prune { .. } | RunError::DeletionsPending { .. }
                ) =>
            {
                Stage::Prune
            }
            Self::Apply { .. } => Stage::Apply,
        }
    }

    /// True when the same commit may succeed later (network, timeouts, 5xx, 429, conflicts);
    /// false when only a new commit (or an operator) can fix it.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Fetch(_) => true,
            // Final for this commit: only a new (signed) commit or new keys can change it.
            Self::SignatureRefused { .. } => false,
            Self::Invalid { .. } | Self::BaseInvalid { .. } => false,
            Self::Observe(e) | Self::Lock(e) => e.is_retryable(),
            Self::Refused(_) => false,
            Self::Apply { source, .. } => source.is_retryable(),
        }
    }

    /// The guard's refusal that stopped the pass, if one did.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Apply { source, .. } => source.refusal(),
            Self::Observe(e) => e.refusal(),
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// True when the commit's files did not all parse (YAML, shapes): a daemon is not ready.
    pub(crate) fn is_parse_failure(&self) -> bool {
        matches!(self, Self::Invalid { violations, .. } if violations.0.iter().any(|v| v.rule.is_parse()))
    }
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses one file. The daemon's cache implements it so a file whose blob did not change is
/// not parsed again.
pub trait FileParser: Sync {
    /// The objects, violations and rejected identities of `file`.
    fn parse_file(
        &self,
        file: &pbsync_core::snapshot::SourceFile,
        limits: &Limits,
    ) -> model::ParsedFile;
}

/// Parses every file, every time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Uncached;

impl FileParser for Uncached {
    fn parse_file(
        &self,
        file: &pbsync_core::snapshot::SourceFile,
        limits: &Limits,
    ) -> model::ParsedFile {
        model::parse_file_detailed(file, limits)
    }
}

/// Everything a pass is configured with.
#[derive(Debug, Clone)]
pub struct Context {
    /// Where the commit comes from.
    pub git: GitConfig,
    /// Input limits.
    pub limits: Limits,
    /// Plan options (instance, adoption, cascade, guard).
    pub plan: plan::Options,
    /// How far back to look for a removed bundle's last version.
    pub history_depth: usize,
    /// Who holds the target's lock during an applying pass (`<host>-<pid>`; the daemon's
    /// leader identity).
    pub holder: String,
    /// How long an applying pass waits for another pass to release the target's lock.
    pub lock_wait: Duration,
    /// The keys every commit must be signed with (`None`: signatures are not checked).
    pub verify: Option<Arc<Verifier>>,
}

impl Context {
    /// A context reading `reference` of `repo` under `path`.
    pub fn new(repo: impl Into<PathBuf>, reference: &str, path: &str) -> Self {
        let limits = Limits::default();
        Self {
            git: GitConfig {
                repo: repo.into(),
                reference: reference.to_string(),
                path: path.to_string(),
                max_file_bytes: limits.max_file_bytes,
            },
            limits,
            plan: plan::Options::default(),
            history_depth: 1000,
            holder: pbsync_target::kubernetes::lease::process_identity(),
            lock_wait: Duration::from_secs(60),
            verify: None,
        }
    }

    /// Reads the configured commit (the fetch stage of the one-shot commands), refusing it
    /// before a file is read when its signature does not verify.
    pub fn fetch(&self) -> Result<Snapshot> {
        let repo = source::open(&self.git.repo).map_err(Error::Fetch)?;
        let commit = source::resolve(&repo, &self.git.reference).map_err(Error::Fetch)?;
        self.verify(&repo, commit)?;
        source::read_commit(&repo, commit, &self.git.path, self.git.max_file_bytes)
            .map_err(Error::Fetch)
    }

    /// Checks the signature of `commit` against the configured keys: who signed it (`None`
    /// when signatures are not checked), or [`Error::SignatureRefused`]. Every way a commit
    /// comes to be applied or planned (the one-shot commands, the daemon's pass, the head of
    /// a pull request) passes through here before its files are read.
    pub fn verify(
        &self,
        repo: &git2::Repository,
        commit: git2::Oid,
    ) -> Result<Option<verify::Signer>> {
        let Some(verifier) = &self.verify else {
            return Ok(None);
        };
        match verifier.verify_commit(repo, commit) {
            Ok(signer) => {
                tracing::debug!(%commit, %signer, "signature verified");
                Ok(Some(signer))
            }
            Err(reason) => Err(Error::SignatureRefused {
                commit: commit.to_string(),
                reason,
            }),
        }
    }
}

/// The commit a pass reads, and how.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    /// The commit's files.
    pub snapshot: &'a Snapshot,
    /// Where history is read (`None`: the context's repository, from the snapshot's
    /// revision, never deepened).
    pub history: Option<history::Lookup<'a>>,
    /// A pull request's base: loaded beside the commit (the merge), for the impact section
    /// and, offline, as the state to plan against.
    pub base: Option<&'a Snapshot>,
    /// How files are parsed (the daemon's and the PR plan's cache).
    pub parser: &'a dyn FileParser,
    /// Where stage durations are recorded, for the daemon's metrics.
    pub timings: Option<&'a Timings>,
}

impl<'a> Input<'a> {
    /// A commit read once, parsed without a cache, its history in the context's repository.
    pub fn of(snapshot: &'a Snapshot) -> Self {
        Self {
            snapshot,
            history: None,
            base: None,
            parser: &Uncached,
            timings: None,
        }
    }
}

/// How far a pass goes.
#[derive(Debug)]
pub enum Goal<'a, T> {
    /// Parse, validate and graph; with a target, also against its live catalogue
    /// (cluster profiles, definitions). Nothing is planned.
    Validate(Option<&'a T>),
    /// Plan against the live state of a target (its dry-runs write nothing).
    Plan(&'a T),
    /// Plan against the state the base commit produces (PR plans of CI jobs that cannot
    /// reach the hub); needs [`Input::base`].
    PlanOffline,
    /// Plan, then apply to the target.
    Apply(&'a T, RunOptions),
}

/// What a pass produced: as much as its goal asks for.
#[derive(Debug)]
pub struct Report {
    /// The commit.
    pub revision: String,
    /// Its reference graph (holds the desired state).
    pub graph: ResourceGraph,
    /// Warnings (validation, graph, plan).
    pub warnings: Vec<String>,
    /// The live state the plan was made against.
    pub observed: Option<Observed>,
    /// The plan (secrets masked).
    pub plan: Option<Plan>,
    /// What applying did.
    pub changes: Option<ChangeSet>,
}

impl Report {
    fn of(
        snapshot: &Snapshot,
        loaded: Loaded,
        observed: Option<Observed>,
        plan: Option<Plan>,
        changes: Option<ChangeSet>,
    ) -> Self {
        Self {
            revision: snapshot.revision.clone(),
            graph: loaded.graph,
            warnings: loaded.warnings,
            observed,
            plan,
            changes,
        }
    }

    /// The plan of a goal that makes one (plan, apply).
    pub fn plan(&self) -> &Plan {
        self.plan
            .as_ref()
            .expect("invariant: plan and apply goals produce a plan")
    }

    /// What applying did (the apply goal).
    pub fn changes(&self) -> &ChangeSet {
        self.changes
            .as_ref()
            .expect("invariant: the apply goal reports its changes")
    }

    /// The live state the plan was made against (plan, apply, validate with a target).
    pub fn observed(&self) -> &Observed {
        self.observed
            .as_ref()
            .expect("invariant: goals with a target observe it")
    }
}

/// Durations of the stages of one pass.
#[derive(Debug, Default)]
pub struct Timings(Mutex<Vec<(&'static str, Duration)>>);

impl Timings {
    fn record(&self, stage: &'static str, since: Instant) {
        let elapsed = since.elapsed();
        tracing::debug!(stage, ?elapsed, "stage done");
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((stage, elapsed));
    }

    /// `(stage, duration)` in the order they ran.
    pub fn take(&self) -> Vec<(&'static str, Duration)> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Runs one pass: as far as `goal` asks, against `goal`'s target.
pub async fn run<T: Target>(ctx: &Context, input: Input<'_>, goal: Goal<'_, T>) -> Result<Report> {
    let untimed = Timings::default();
    let timings = input.timings.unwrap_or(&untimed);
    let snapshot = input.snapshot;

    // Parse, validate and graph the commit (and the base, side by side).
    let started = Instant::now();
    let (loaded, base) = match input.base {
        None => (load(snapshot, &ctx.limits, input.parser), None),
        Some(base) => {
            let (head, base) = rayon::join(
                || load(snapshot, &ctx.limits, input.parser),
                || load(base, &ctx.limits, input.parser),
            );
            (head, Some(base))
        }
    };
    timings.record("parse", started);
    let base_graph = match base {
        Some(Ok(b)) => Some(b.graph),
        Some(Err(Error::Invalid {
            revision,
            violations,
            ..
        })) if matches!(goal, Goal::PlanOffline) => {
            return Err(Error::BaseInvalid {
                revision,
                violations,
            });
        }
        _ => None,
    };
    let loaded = loaded?;
    if let Goal::Validate(Some(t)) | Goal::Plan(t) | Goal::Apply(t, _) = &goal {
        t.check(&loaded.graph)
            .map_err(|e| Error::Observe(Box::new(e)))?;
    }

    match goal {
        Goal::Validate(None) => Ok(Report::of(snapshot, loaded, None, None, None)),
        Goal::Validate(Some(target)) => {
            let observed = observe(ctx, snapshot, &loaded, target, timings).await?;
            let loaded = recheck(loaded, &observed)?;
            Ok(Report::of(snapshot, loaded, Some(observed), None, None))
        }
        Goal::Plan(target) => {
            let observed = observe(ctx, snapshot, &loaded, target, timings).await?;
            let (loaded, plan) = plan_against(
                ctx,
                &input,
                loaded,
                &observed,
                base_graph,
                None,
                Catalogue::Live,
            )?;
            Ok(Report::of(
                snapshot,
                loaded,
                Some(observed),
                Some(plan),
                None,
            ))
        }
        Goal::PlanOffline => {
            let started = Instant::now();
            let base = base_graph.expect("invariant: PlanOffline without a base is refused above");
            let observed = Observed::as_applied_for(&base, &loaded.graph, &ctx.plan.instance);
            timings.record("observe", started);
            let (loaded, plan) = plan_against(
                ctx,
                &input,
                loaded,
                &observed,
                Some(base),
                None,
                Catalogue::Offline,
            )?;
            Ok(Report::of(
                snapshot,
                loaded,
                Some(observed),
                Some(plan),
                None,
            ))
        }
        Goal::Apply(target, opts) => {
            let (loaded, base_graph) =
                match idle_pass(ctx, &input, loaded, base_graph, target, timings).await? {
                    Idle::Done(report) => return Ok(report),
                    Idle::Busy(loaded, base_graph) => (loaded, base_graph),
                };
            // The target's lock is held from before the live state is read until the last
            // write, so two passes never interleave.
            let lock = target
                .lock(&ctx.holder, ctx.lock_wait)
                .await
                .map_err(|e| Error::Lock(Box::new(e)))?;
            let result = apply(ctx, &input, loaded, base_graph, target, opts, timings).await;
            lock.release().await;
            result
        }
    }
}

/// What a look before the lock found. Made once a pass and moved straight out: its size
/// does not matter.
#[allow(clippy::large_enum_variant)]
enum Idle {
    /// Nothing to do: the report of the pass.
    Done(Report),
    /// Something may be to do: take the lock and run the pass.
    Busy(Loaded, Option<ResourceGraph>),
}

/// A pass that only reads: when the target observes cheaply (the daemon's watch cache) and
/// already records this revision as applied, the plan is made before the lock is taken, and
/// if it has nothing to do the pass ends there: no lock, no request, no write. Anything else
/// (a change, a pending removal, a new revision to record) goes on under the lock, observed
/// again.
async fn idle_pass<T: Target>(
    ctx: &Context,
    input: &Input<'_>,
    loaded: Loaded,
    base_graph: Option<ResourceGraph>,
    target: &T,
    timings: &Timings,
) -> Result<Idle> {
    if !target.observes_cheaply() || base_graph.is_some() {
        return Ok(Idle::Busy(loaded, base_graph));
    }
    let snapshot = input.snapshot;
    let recorded = target
        .recorded()
        .await
        .map_err(|e| Error::Observe(Box::new(e)))?;
    let applied_here = recorded.is_some_and(|r| {
        r.last_applied_revision.as_deref() == Some(snapshot.revision.as_str())
            && r.outcome.as_deref() == Some("applied")
    });
    if !applied_here {
        return Ok(Idle::Busy(loaded, base_graph));
    }
    let observed = observe(ctx, snapshot, &loaded, target, timings).await?;
    let (loaded, plan) = plan_against(ctx, input, loaded, &observed, None, None, Catalogue::Live)?;
    match pbsync_target::nothing_to_do(&plan) {
        Some(changes) if observed.pending.is_empty() => Ok(Idle::Done(Report::of(
            snapshot,
            loaded,
            Some(observed),
            Some(plan),
            Some(changes),
        ))),
        _ => Ok(Idle::Busy(loaded, None)),
    }
}

/// The apply goal, under the target's lock: refuse a revision that does not descend from the
/// last one applied (unless allowed: the daemon follows its branch), observe, plan, apply.
async fn apply<T: Target>(
    ctx: &Context,
    input: &Input<'_>,
    loaded: Loaded,
    base_graph: Option<ResourceGraph>,
    target: &T,
    opts: RunOptions,
    timings: &Timings,
) -> Result<Report> {
    let snapshot = input.snapshot;
    let recorded = target
        .recorded()
        .await
        .map_err(|e| Error::Observe(Box::new(e)))?;
    let applied = recorded.and_then(|r| r.last_applied_revision);
    let mut moved_back = None;
    if let Some(applied) = applied.filter(|a| *a != snapshot.revision) {
        let lineage = match (
            source::open(input.history.map_or(ctx.git.repo.as_path(), |h| h.repo)),
            git2::Oid::from_str(&snapshot.revision),
        ) {
            (Ok(repo), Ok(requested)) => source::lineage(&repo, &applied, requested),
            _ => guard::Lineage::Unknown,
        };
        if lineage.is_rollback() {
            guard::check_revision(
                &snapshot.revision,
                &applied,
                lineage,
                &ctx.plan.instance,
                opts.allow_rollback,
            )
            .map_err(|r| Error::Refused(Box::new(r)))?;
            moved_back = Some(plan::MovedBack { applied, lineage });
        }
    }
    let observed = observe(ctx, snapshot, &loaded, target, timings).await?;
    let (loaded, plan) = plan_against(
        ctx,
        input,
        loaded,
        &observed,
        base_graph,
        moved_back,
        Catalogue::Live,
    )?;
    let stamp = Stamp {
        instance: &ctx.plan.instance,
        revision: &snapshot.revision,
        adopted: false,
    };
    let started = Instant::now();
    let (changes, result) = pbsync_target::run(target, &loaded.graph, &plan, &stamp, opts).await;
    timings.record("apply", started);
    match result {
        Ok(()) => Ok(Report::of(
            snapshot,
            loaded,
            Some(observed),
            Some(plan),
            Some(changes),
        )),
        Err(source) => Err(Error::Apply {
            revision: snapshot.revision.clone(),
            plan: Box::new(plan),
            changes: Box::new(changes),
            source: Box::new(source),
        }),
    }
}

/// Reads the live state of `target` for the commit's graph.
async fn observe<T: Target>(
    ctx: &Context,
    snapshot: &Snapshot,
    loaded: &Loaded,
    target: &T,
    timings: &Timings,
) -> Result<Observed> {
    let started = Instant::now();
    let stamp = Stamp {
        instance: &ctx.plan.instance,
        revision: &snapshot.revision,
        adopted: false,
    };
    let observed = target
        .observe(&loaded.graph, &stamp)
        .await
        .map_err(|e| Error::Observe(Box::new(e)))?;
    timings.record("observe", started);
    Ok(observed)
}

/// What external references are checked against when planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Catalogue {
    /// The live state observed: a reference found nowhere is a violation (rule 6).
    Live,
    /// Nothing live (an offline pull-request plan, against the state base would produce):
    /// a reference the repository does not declare stays unchecked, and the plan reports it
    /// as unknown rather than refusing the review.
    Offline,
}

/// Validates against the live catalogue, reads the history of leaving bundles, plans, adds
/// the impact (pull requests) and masks secrets.
fn plan_against(
    ctx: &Context,
    input: &Input<'_>,
    loaded: Loaded,
    observed: &Observed,
    base_graph: Option<ResourceGraph>,
    moved_back: Option<plan::MovedBack>,
    catalogue: Catalogue,
) -> Result<(Loaded, Plan)> {
    let started = Instant::now();
    let loaded = match catalogue {
        Catalogue::Live => recheck(loaded, observed)?,
        Catalogue::Offline => loaded,
    };
    let own_tips: Vec<git2::Oid> = git2::Oid::from_str(&input.snapshot.revision)
        .ok()
        .into_iter()
        .collect();
    let lookup = input.history.unwrap_or(history::Lookup {
        repo: &ctx.git.repo,
        tips: &own_tips,
        max_commits: ctx.history_depth,
        deepen: None,
    });
    let leaving = plan::leaving_bundles(&loaded.graph, observed);
    let mut history = history::lookup(&lookup, &leaving, &ctx.limits);
    history.moved_back = moved_back;
    let mut plan = plan::plan(&loaded.graph, observed, &history, &ctx.plan);
    for w in &loaded.warnings {
        if !plan.warnings.contains(w) {
            plan.warnings.push(w.clone());
        }
    }
    if input.base.is_some() {
        plan.impact = impact::compute(&plan, &loaded.graph, base_graph.as_ref());
    }
    mask::mask_plan(&mut plan);
    if let Some(t) = input.timings {
        t.record("plan", started);
    }
    Ok((loaded, plan))
}

/// A commit parsed, validated (without live state) and graphed.
#[derive(Debug)]
struct Loaded {
    graph: ResourceGraph,
    warnings: Vec<String>,
}

/// Parses every file of `snapshot` (in parallel, gathered in file order), validates the
/// result without live state and builds its graph. Fails with every violation.
fn load(snapshot: &Snapshot, limits: &Limits, parser: &dyn FileParser) -> Result<Loaded> {
    use rayon::prelude::*;
    let parsed: Vec<model::ParsedFile> = snapshot
        .files
        .par_iter()
        .map(|file| parser.parse_file(file, limits))
        .collect();
    let mut objects = Vec::with_capacity(parsed.iter().map(|p| p.objects.len()).sum());
    let mut violations = Vec::new();
    let mut rejected = Vec::new();
    for mut p in parsed {
        objects.append(&mut p.objects);
        violations.append(&mut p.violations);
        rejected.append(&mut p.rejected);
    }
    let mut desired =
        DesiredState::from_objects(snapshot.revision.clone(), objects, &mut violations);
    desired.rejected.extend(rejected);
    check(desired, violations, &Catalog::default())
}

/// Validates a parsed desired state against `catalog` and builds its graph; `violations`
/// are those found while parsing.
fn check(
    desired: DesiredState,
    mut violations: Vec<Violation>,
    catalog: &Catalog,
) -> Result<Loaded> {
    let (mut v, mut warnings) = model::validate(&desired, catalog);
    violations.append(&mut v);
    let revision = desired.revision.clone();
    let (graph, mut v) = ResourceGraph::build(desired, catalog);
    violations.append(&mut v);
    warnings.extend(graph.warnings());
    if !violations.is_empty() {
        return Err(Error::Invalid {
            revision,
            violations: Violations(violations).normalized(),
            warnings,
        });
    }
    Ok(Loaded { graph, warnings })
}

/// `loaded` checked again against the live catalogue of `observed`: external references
/// (cluster profiles, definitions, bundles and pools) resolve against live state now, reusing
/// the parsed objects. Without any external reference the catalogue cannot change a thing.
fn recheck(loaded: Loaded, observed: &Observed) -> Result<Loaded> {
    if loaded.graph.has_external() {
        let catalog = observed.catalog(loaded.graph.desired_state());
        check(loaded.graph.into_desired_state(), Vec::new(), &catalog)
    } else {
        Ok(loaded)
    }
}

/// A target that is never built: the type of `Goal::Validate(None)` and
/// `Goal::PlanOffline`, which read no live state.
#[derive(Debug)]
pub enum NoTarget {}

impl Target for NoTarget {
    async fn observe(&self, _: &ResourceGraph, _: &Stamp<'_>) -> pbsync_target::Result<Observed> {
        match *self {}
    }
    async fn recheck(
        &self,
        _: &plan::Change,
    ) -> pbsync_target::Result<Option<pbsync_core::guard::Now>> {
        match *self {}
    }
    async fn prepare(&self, _: &[&plan::Change]) -> pbsync_target::Result<()> {
        match *self {}
    }
    async fn write(&self, _: &plan::Change, _: &serde_json::Value) -> pbsync_target::Result<()> {
        match *self {}
    }
    async fn release(
        &self,
        _: &plan::Change,
        _: pbsync_core::guard::ReleasePermit,
    ) -> pbsync_target::Result<()> {
        match *self {}
    }
    async fn delete(
        &self,
        _: &plan::Change,
        _: pbsync_core::guard::DeletePermit,
    ) -> pbsync_target::Result<()> {
        match *self {}
    }
    async fn record(&self, _: &pbsync_target::Status) -> pbsync_target::Result<()> {
        match *self {}
    }
    async fn recorded(&self) -> pbsync_target::Result<Option<pbsync_target::Recorded>> {
        match *self {}
    }
    async fn record_pending(
        &self,
        _: &[(pbsync_core::model::ObjectKey, pbsync_core::live::Removal)],
    ) -> pbsync_target::Result<()> {
        match *self {}
    }
    async fn lock(&self, _: &str, _: Duration) -> pbsync_target::Result<pbsync_target::PassLock> {
        match *self {}
    }
    fn follow<'a>(
        &'a self,
        _: &'a ResourceGraph,
        _: Vec<pbsync_core::model::ObjectKey>,
    ) -> pbsync_target::Follow<'a> {
        match *self {}
    }
}
