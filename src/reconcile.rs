//! The one place that runs the stages in order: fetch -> parse -> validate -> graph ->
//! observe -> plan -> apply. It decides nothing about timing or output; errors carry their
//! stage and whether trying again may help.

use std::fmt;
use std::path::PathBuf;

use crate::source::{self, GitConfig, Snapshot};
use pbsync_core::graph::ResourceGraph;
use pbsync_core::live::Observed;
use pbsync_core::model::{self, Catalog, DesiredState, Kind, Limits, Violation, Violations};
use pbsync_core::ownership::Stamp;
use pbsync_core::plan::{self, History, Plan};
use pbsync_target::{ChangeSet, RunError, RunOptions, Target};

/// Pipeline stages, for metrics labels, health reasons and systemd `STATUS=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Reading the commit.
    Fetch,
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
    /// Live state could not be read.
    #[error("observe failed")]
    Observe(#[source] pbsync_target::Error),
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
            Self::Invalid { violations, .. } => {
                let rules: Vec<model::Rule> = violations.0.iter().map(|v| v.rule).collect();
                if rules.iter().all(|r| matches!(r, model::Rule::Cycle)) {
                    Stage::Graph
                } else if rules.iter().any(|r| {
                    matches!(
                        r,
                        model::Rule::Yaml
                            | model::Rule::Encoding
                            | model::Rule::FileSize
                            | model::Rule::Shape
                            | model::Rule::UnknownKind
                    )
                }) {
                    Stage::Parse
                } else {
                    Stage::Validate
                }
            }
            Self::Observe(_) => Stage::Observe,
            Self::Apply { source, .. } if matches!(**source, RunError::Prune { .. }) => {
                Stage::Prune
            }
            Self::Apply { .. } => Stage::Apply,
        }
    }

    /// True when the same commit may succeed later (network, timeouts, 5xx, 429, conflicts);
    /// false when only a new commit can fix it.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Fetch(_) => true,
            Self::Invalid { .. } => false,
            Self::Observe(e) => e.is_retryable(),
            Self::Apply { source, .. } => source.is_retryable(),
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A commit read, parsed, validated (without live state) and graphed.
#[derive(Debug)]
pub struct Loaded {
    /// The graph (holds the desired state).
    pub graph: ResourceGraph,
    /// Warnings so far.
    pub warnings: Vec<String>,
}

/// Parses one file. The daemon's cache implements it so a file whose blob did not change is
/// not parsed again.
pub trait FileParser: Sync {
    /// The objects, violations and rejected identities of `file`.
    fn parse_file(&self, file: &source::SourceFile, limits: &Limits) -> model::ParsedFile;
}

/// Parses every file, every time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Uncached;

impl FileParser for Uncached {
    fn parse_file(&self, file: &source::SourceFile, limits: &Limits) -> model::ParsedFile {
        model::parse_file_detailed(file, limits)
    }
}

/// Parses every file of `snapshot` into a desired state; returns every violation found.
pub fn parse(snapshot: &Snapshot, limits: &Limits) -> (DesiredState, Vec<Violation>) {
    parse_with(snapshot, limits, &Uncached)
}

/// [`parse`] with each file parsed by `parser`.
pub fn parse_with(
    snapshot: &Snapshot,
    limits: &Limits,
    parser: &dyn FileParser,
) -> (DesiredState, Vec<Violation>) {
    use rayon::prelude::*;
    // Files parse independently: spread them over the cores, then gather in file order so
    // the result does not depend on scheduling.
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
    (desired, violations)
}

/// The pure stages on a snapshot: parse, validate against `catalog`, graph. Fails with
/// every violation of the commit.
pub fn load(snapshot: &Snapshot, limits: &Limits, catalog: &Catalog) -> Result<Loaded> {
    let (desired, violations) = parse(snapshot, limits);
    check(desired, violations, catalog)
}

/// Validates a parsed desired state against `catalog` and builds its graph; `violations`
/// are those found while parsing. Fails with every violation of the commit.
pub fn check(
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
/// (cluster profiles, definitions) resolve against live state now, reusing the parsed
/// objects. Without any external reference the catalogue cannot change a thing, and
/// `loaded` stands as it is.
pub fn recheck(loaded: Loaded, observed: &Observed) -> Result<Loaded> {
    if loaded.graph.has_external() {
        check(
            loaded.graph.into_desired_state(),
            Vec::new(),
            &observed.catalog(),
        )
    } else {
        Ok(loaded)
    }
}

/// Everything one pass needs.
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
        }
    }
}

/// A plan made against live state, with the graph it came from.
#[derive(Debug)]
pub struct Planned {
    /// The graph.
    pub graph: ResourceGraph,
    /// The plan.
    pub plan: Plan,
    /// The live state it was made against.
    pub observed: Observed,
}

/// Reads the configured commit.
pub fn fetch(ctx: &Context) -> Result<Snapshot> {
    source::read(&ctx.git).map_err(Error::Fetch)
}

/// Fetch, parse, validate, graph, observe, validate against live state, plan.
pub async fn plan_commit<T: Target>(
    ctx: &Context,
    snapshot: &Snapshot,
    target: &T,
) -> Result<Planned> {
    plan_commit_with(ctx, snapshot, target, &Uncached).await
}

/// [`plan_commit`] with each file parsed by `parser`.
pub async fn plan_commit_with<T: Target>(
    ctx: &Context,
    snapshot: &Snapshot,
    target: &T,
    parser: &dyn FileParser,
) -> Result<Planned> {
    let (desired, violations) = parse_with(snapshot, &ctx.limits, parser);
    plan_parsed(ctx, snapshot, desired, violations, target).await
}

/// [`plan_commit`] of a commit already parsed into `desired` (with the `violations` found
/// while parsing).
pub async fn plan_parsed<T: Target>(
    ctx: &Context,
    snapshot: &Snapshot,
    desired: DesiredState,
    violations: Vec<Violation>,
    target: &T,
) -> Result<Planned> {
    let started = std::time::Instant::now();
    let loaded = check(desired, violations, &Catalog::default())?;
    tracing::debug!(elapsed = ?started.elapsed(), nodes = loaded.graph.nodes().len(), "validated; graph built");
    let stamp = Stamp {
        instance: &ctx.plan.instance,
        revision: &snapshot.revision,
        adopted: false,
    };
    let started = std::time::Instant::now();
    let observed = target
        .observe(&loaded.graph, &stamp)
        .await
        .map_err(Error::Observe)?;
    tracing::debug!(elapsed = ?started.elapsed(), objects = observed.objects.len(), "observed");
    let loaded = recheck(loaded, &observed)?;
    let history = history(ctx, &loaded.graph, &observed, &snapshot.revision);
    let mut plan = plan::plan(&loaded.graph, &observed, &history, &ctx.plan);
    for w in loaded.warnings {
        if !plan.warnings.contains(&w) {
            plan.warnings.push(w);
        }
    }
    Ok(Planned {
        graph: loaded.graph,
        plan,
        observed,
    })
}

/// Looks up the last committed deletionPolicy of every bundle that is leaving.
fn history(ctx: &Context, graph: &ResourceGraph, observed: &Observed, revision: &str) -> History {
    let mut history = History::default();
    let leaving = plan::leaving_bundles(graph, observed);
    if leaving.is_empty() {
        return history;
    }
    let Ok(repo) = source::open(&ctx.git.repo) else {
        return history;
    };
    let Ok(head) = git2::Oid::from_str(revision) else {
        return history;
    };
    for (key, path) in leaving {
        let Some(path) = path else { continue };
        if let Some(policy) = last_committed_policy(&repo, head, key, path, ctx) {
            history.policies.insert(key.clone(), policy);
        }
    }
    history
}

/// The deletionPolicy of bundle `key` in the newest commit, walking first-parent history from
/// `from`, whose blob at `path` declares it: a removed bundle's last committed version.
pub fn last_committed_policy(
    repo: &git2::Repository,
    from: git2::Oid,
    key: &model::ObjectKey,
    path: &str,
    ctx: &Context,
) -> Option<model::DeletionPolicy> {
    let found = source::find_in_history(repo, from, path, ctx.history_depth, |bytes| {
        let file = source::SourceFile {
            path: path.into(),
            blob: String::new(),
            content: source::Content::Bytes(bytes.to_vec()),
        };
        let (objs, _) = model::parse_file(&file, &ctx.limits);
        objs.into_iter()
            .find(|o| &o.key == key && o.key.kind == Kind::ProfileBundle)
            .and_then(|o| o.as_bundle().map(|b| b.deletion_policy))
    });
    found.ok().flatten()
}

/// What a successful pass did.
#[derive(Debug)]
pub struct Report {
    /// The plan applied.
    pub plan: Plan,
    /// What happened.
    pub changes: ChangeSet,
}

/// One full pass: plan the commit, then apply it.
pub async fn run_once<T: Target>(
    ctx: &Context,
    snapshot: &Snapshot,
    target: &T,
    opts: RunOptions,
) -> Result<Report> {
    run_once_with(ctx, snapshot, target, opts, &Uncached).await
}

/// [`run_once`] with each file parsed by `parser`.
pub async fn run_once_with<T: Target>(
    ctx: &Context,
    snapshot: &Snapshot,
    target: &T,
    opts: RunOptions,
    parser: &dyn FileParser,
) -> Result<Report> {
    let (desired, violations) = parse_with(snapshot, &ctx.limits, parser);
    run_parsed(ctx, snapshot, desired, violations, target, opts).await
}

/// [`run_once`] of a commit already parsed into `desired` (with the `violations` found while
/// parsing).
pub async fn run_parsed<T: Target>(
    ctx: &Context,
    snapshot: &Snapshot,
    desired: DesiredState,
    violations: Vec<Violation>,
    target: &T,
    opts: RunOptions,
) -> Result<Report> {
    let planned = plan_parsed(ctx, snapshot, desired, violations, target).await?;
    let stamp = Stamp {
        instance: &ctx.plan.instance,
        revision: &snapshot.revision,
        adopted: false,
    };
    let started = std::time::Instant::now();
    let (changes, result) =
        pbsync_target::run(target, &planned.graph, &planned.plan, &stamp, opts).await;
    tracing::debug!(elapsed = ?started.elapsed(), ok = result.is_ok(), "applied");
    match result {
        Ok(()) => Ok(Report {
            plan: planned.plan,
            changes,
        }),
        Err(source) => Err(Error::Apply {
            revision: snapshot.revision.clone(),
            plan: Box::new(planned.plan),
            changes: Box::new(changes),
            source: Box::new(source),
        }),
    }
}
