//! One reconcile pass of the daemon: fetch the commit (a local repository read in place, or
//! the persistent clone of a remote), parse it through the blob cache, run the pipeline, and
//! record the outcome in metrics, health, the logs (once, here) and systemd `STATUS=`.
//!
//! An unchanged revision on a poll, watch or webhook trigger is a cheap no-op; a revision that
//! failed for good is not tried again until a new commit arrives (or an operator asks).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::health::LastOutcome;
use super::http::Shared;
use super::report::Event;
use super::scheduler::{Pass, Request, Verdict};
use super::systemd::Notifier;
use crate::engine::{self, Context, Error, Goal, Input, ParseCache, Timings, history};
use crate::source::{self, Snapshot, remote::Remote};
use pbsync_core::plan::comment::ChangeNote;
use pbsync_target::now_rfc3339;
use pbsync_target::{ChangeSet, RunOptions, Target};

/// Where commits come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A repository on this host, read in place.
    Local {
        /// The repository.
        repo: PathBuf,
        /// Branch, tag, commit or HEAD.
        reference: String,
    },
    /// A remote mirrored into the state directory.
    Remote(Remote),
}

impl Origin {
    /// The repository history look-ups read.
    pub fn repo_dir(&self) -> PathBuf {
        match self {
            Self::Local { repo, .. } => repo.clone(),
            Self::Remote(r) => r.dir().to_path_buf(),
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The remote could not be fetched.
    #[error(transparent)]
    Remote(#[from] source::remote::Error),
    /// The commit could not be read.
    #[error(transparent)]
    Source(#[from] source::Error),
    /// The blocking task died.
    #[error("the fetch task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The commit's signature is refused (`verify:`): final for this commit, and reported
    /// as the pass's outcome, not as a fetch that may be retried.
    #[error("commit {commit} is refused")]
    Refused {
        /// The commit.
        commit: String,
        /// [`Error::SignatureRefused`].
        #[source]
        error: Box<Error>,
    },
}

/// A fetched commit and how far it is ahead of the last applied one.
struct Fetched {
    snapshot: Snapshot,
    lag: Option<usize>,
}

fn fetch(
    origin: &Origin,
    ctx: &Context,
    applied: Option<&str>,
    earlier: Option<&Snapshot>,
) -> Result<Fetched, FetchError> {
    let (repo, oid) = match origin {
        Origin::Local { repo, reference } => {
            let r = source::open(repo)?;
            let oid = source::resolve(&r, reference)?;
            (r, oid)
        }
        Origin::Remote(remote) => {
            let oid = remote.sync()?;
            (source::open(remote.dir())?, oid)
        }
    };
    // A commit whose signature is refused is not read at all.
    ctx.verify(&repo, oid)
        .map_err(|error| FetchError::Refused {
            commit: oid.to_string(),
            error: Box::new(error),
        })?;
    // Blobs the previous pass read are not read again.
    let snapshot =
        source::read_commit_reusing(&repo, oid, &ctx.git.path, ctx.git.max_file_bytes, earlier)?;
    let lag = applied
        .and_then(|a| git2::Oid::from_str(a).ok())
        .and_then(|a| repo.graph_ahead_behind(oid, a).ok())
        .map(|(ahead, _)| ahead);
    Ok(Fetched { snapshot, lag })
}

/// The daemon's [`Pass`].
pub struct Reconciler<T> {
    target: Arc<T>,
    /// Where each applied revision's graph goes, for the health board to follow.
    graphs: watch::Sender<Option<Arc<pbsync_core::graph::ResourceGraph>>>,
    /// The revision the board follows.
    followed: Option<String>,
    origin: Origin,
    ctx: Context,
    cache: Arc<ParseCache>,
    shared: Arc<Shared>,
    notifier: Notifier,
    leader: Option<watch::Receiver<bool>>,
    opts: RunOptions,
    last_applied: Option<String>,
    applied_at: Option<String>,
    /// A revision that failed for good, and the outcome reported for it.
    final_failure: Option<(String, LastOutcome)>,
    /// The last commit read, whose blobs the next fetch need not read again.
    last_snapshot: Option<Arc<Snapshot>>,
    /// The revision whose last pass failed (its next success is reported again).
    failed_revision: Option<String>,
    /// The last pass could not fetch (its next fetch is reported: the recovery).
    fetch_failed: bool,
}

impl<T> std::fmt::Debug for Reconciler<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("origin", &self.origin)
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

/// Everything a [`Reconciler`] is built from.
#[derive(Debug)]
pub struct Parts {
    /// Where commits come from.
    pub origin: Origin,
    /// Pipeline settings (`git.path`, limits, plan options).
    pub ctx: Context,
    /// Shared with the HTTP endpoints.
    pub shared: Arc<Shared>,
    /// systemd.
    pub notifier: Notifier,
    /// Leadership, when elected.
    pub leader: Option<watch::Receiver<bool>>,
    /// Apply options.
    pub opts: RunOptions,
    /// The parse cache (kept across reloads).
    pub cache: Arc<ParseCache>,
    /// Where each applied revision's graph goes (see [`super::board::follow`]).
    pub graphs: watch::Sender<Option<Arc<pbsync_core::graph::ResourceGraph>>>,
}

impl<T: Target> Reconciler<T> {
    /// A reconciler applying to `target`.
    pub fn new(target: Arc<T>, parts: Parts) -> Self {
        let mut ctx = parts.ctx;
        ctx.git.repo = parts.origin.repo_dir();
        Self {
            target,
            graphs: parts.graphs,
            followed: None,
            origin: parts.origin,
            ctx,
            cache: parts.cache,
            shared: parts.shared,
            notifier: parts.notifier,
            leader: parts.leader,
            opts: parts.opts,
            last_applied: None,
            applied_at: None,
            final_failure: None,
            last_snapshot: None,
            failed_revision: None,
            fetch_failed: false,
        }
    }

    fn finish(&self, outcome: LastOutcome) {
        self.notifier.status(&outcome.summary());
        self.shared.health.record(outcome);
    }

    fn outcome(&self, result: &str, revision: Option<&str>, message: String) -> LastOutcome {
        LastOutcome {
            result: result.into(),
            revision: revision.map(str::to_string),
            applied_revision: self.last_applied.clone(),
            applied_at: self.applied_at.clone(),
            message,
            at: now_rfc3339(),
            ..LastOutcome::default()
        }
    }

    async fn pass(&mut self, request: &Request) -> Verdict {
        let started = Instant::now();
        let metrics = &self.shared.metrics;
        if let Some(leader) = &self.leader {
            let leads = *leader.borrow();
            metrics.set_leader(leads);
            if !leads {
                tracing::debug!("standby: another daemon holds the lease");
                let o = self.outcome("standby", None, "another daemon holds the lease".into());
                self.finish(o);
                metrics.count_reconcile("standby", None);
                return Verdict::Standby;
            }
        } else {
            metrics.set_leader(true);
        }

        // Fetch.
        let origin = self.origin.clone();
        let ctx = self.ctx.clone();
        let applied = self.last_applied.clone();
        let earlier = self.last_snapshot.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            fetch(&origin, &ctx, applied.as_deref(), earlier.as_deref())
        })
        .await
        .map_err(FetchError::Task)
        .and_then(|r| r);
        metrics.observe_stage("fetch", started.elapsed().as_secs_f64());
        let fetched = match fetched {
            Ok(f) => f,
            Err(FetchError::Refused { commit, error }) => {
                tracing::Span::current().record("revision", &commit[..commit.len().min(12)]);
                return self.failed(request, commit, *error);
            }
            Err(e) => {
                let message = pbsync_core::error_chain(&e);
                tracing::error!(stage = "fetch", retryable = true, error = %message, "reconcile failed");
                metrics.count_reconcile("failed", Some("fetch"));
                self.shared.reporter.send(&Event::Failed {
                    revision: None,
                    stage: "fetch".into(),
                    message: message.clone(),
                    violations: Vec::new(),
                });
                self.fetch_failed = true;
                let mut o = self.outcome("failed", None, message);
                o.stage = Some("fetch".into());
                o.retryable = Some(true);
                self.finish(o);
                return Verdict::Retryable;
            }
        };
        let snapshot = Arc::new(fetched.snapshot);
        self.last_snapshot = Some(Arc::clone(&snapshot));
        let revision = snapshot.revision.clone();
        if std::mem::take(&mut self.fetch_failed) {
            self.shared.reporter.send(&Event::Fetched {
                revision: revision.clone(),
            });
        }
        tracing::Span::current().record("revision", &revision[..revision.len().min(12)]);
        let lag = i64::try_from(fetched.lag.unwrap_or(0)).unwrap_or(i64::MAX);
        metrics.set_lag(if self.last_applied.as_deref() == Some(&revision) {
            0
        } else {
            lag.max(1)
        });

        if !request.is_full() && self.last_applied.as_deref() == Some(&revision) {
            metrics.count_reconcile("unchanged", None);
            return Verdict::Done;
        }
        if let Some((failed, outcome)) = &self.final_failure
            && *failed == revision
            && !request.is_manual()
        {
            // Final for this commit: reported once, tried again only for a new commit.
            tracing::debug!(revision = %revision, "revision failed for good; waiting for a new commit");
            let o = outcome.clone();
            self.finish(o);
            return Verdict::Final;
        }

        // Parse (through the cache), validate, observe, plan, apply: the engine's pass. History
        // of leaving bundles is read in the repository the commit came from; a shallow clone
        // of a remote is deepened when a bundle's last version lies beyond its boundary.
        let tips = git2::Oid::from_str(&revision)
            .ok()
            .into_iter()
            .collect::<Vec<_>>();
        let repo_dir = self.origin.repo_dir();
        let deepen = match &self.origin {
            Origin::Remote(remote) => Some(remote as &dyn history::Deepen),
            Origin::Local { .. } => None,
        };
        // A commit applied for the first time (or again after failing) is reported; a
        // resync of the applied commit is not (its status stands).
        let fresh = self.last_applied.as_deref() != Some(&revision)
            || self.failed_revision.as_deref() == Some(&revision);
        if fresh {
            self.shared.reporter.send(&Event::Applying {
                revision: revision.clone(),
            });
        }
        let timings = Timings::default();
        let input = Input {
            snapshot: &snapshot,
            history: Some(history::Lookup {
                repo: &repo_dir,
                tips: &tips,
                max_commits: self.ctx.history_depth,
                deepen,
            }),
            base: None,
            parser: self.cache.as_ref(),
            timings: Some(&timings),
        };
        let result = engine::run(&self.ctx, input, Goal::Apply(&*self.target, self.opts)).await;
        for (stage, took) in timings.take() {
            metrics.observe_stage(stage, took.as_secs_f64());
        }
        // Ready: a fetched commit whose files all parse.
        if !result.as_ref().is_err_and(Error::is_parse_failure) {
            self.shared.health.set_ready();
        }
        metrics.observe_stage("total", started.elapsed().as_secs_f64());
        metrics.count_requests(&*self.target);
        self.cache.retain(&snapshot);

        match result {
            Ok(outcome) => {
                // The board follows the revision applied (again after a pass that acted: its
                // objects may have changed under the same revision).
                let changes = outcome
                    .changes
                    .as_ref()
                    .expect("invariant: apply reports changes");
                metrics.count_changes(changes);
                let acted = acted(changes);
                let now = jiff::Timestamp::now();
                metrics.applied(&revision, now.as_second());
                metrics.set_lag(0);
                self.last_applied = Some(revision.clone());
                self.applied_at = Some(now_rfc3339());
                self.final_failure = None;
                let counts = summary(changes);
                metrics.count_reconcile(if acted { "applied" } else { "unchanged" }, None);
                self.shared.board.set_plan(outcome.plan().clone());
                for w in &outcome.plan().warnings {
                    tracing::warn!(warning = %w, "plan warning");
                }
                tracing::info!(changes = %counts, elapsed_ms = started.elapsed().as_millis() as u64, "reconciled");
                if fresh {
                    self.shared.reporter.send(&Event::Applied {
                        revision: revision.clone(),
                        summary: counts.clone(),
                        acted,
                        note: ChangeNote::of(outcome.plan()),
                    });
                }
                self.failed_revision = None;
                let o = self.outcome("applied", Some(&revision), counts);
                self.finish(o);
                if acted || self.followed.as_deref() != Some(&revision) {
                    self.followed = Some(revision.clone());
                    self.graphs.send_replace(Some(Arc::new(outcome.graph)));
                }
                Verdict::Done
            }
            Err(e) => self.failed(request, revision, e),
        }
    }

    /// Reports a pass that failed on `revision`: logs, metrics, health, systemd. A failure
    /// that is final for the commit is remembered, so later passes over the same commit
    /// report it again without logging it again (a refused signature is decided before the
    /// unchanged-revision check, on every pass).
    fn failed(&mut self, request: &Request, revision: String, e: Error) -> Verdict {
        let metrics = &self.shared.metrics;
        if let Some((failed, outcome)) = &self.final_failure
            && *failed == revision
            && !request.is_manual()
            && matches!(e, Error::SignatureRefused { .. })
        {
            tracing::debug!(revision = %revision, "revision refused for good; waiting for a new commit");
            let o = outcome.clone();
            self.finish(o);
            return Verdict::Final;
        }
        let stage = e.stage();
        let retryable = e.is_retryable();
        if let Error::Apply { changes, .. } = &e {
            metrics.count_changes(changes);
        }
        let message = pbsync_core::error_chain(&e);
        let violations = match &e {
            Error::Invalid { violations, .. } => {
                violations.0.iter().map(ToString::to_string).collect()
            }
            _ => Vec::new(),
        };
        self.shared.reporter.send(&Event::Failed {
            revision: Some(revision.clone()),
            stage: stage.to_string(),
            message: message.clone(),
            violations,
        });
        self.failed_revision = Some(revision.clone());
        tracing::error!(stage = %stage, retryable, error = %message, "reconcile failed");
        metrics.count_reconcile("failed", Some(stage.as_str()));
        let mut o = self.outcome("failed", Some(&revision), message);
        o.stage = Some(stage.to_string());
        o.retryable = Some(retryable);
        self.finish(o.clone());
        if retryable {
            Verdict::Retryable
        } else {
            self.final_failure = Some((revision, o));
            Verdict::Final
        }
    }
}

fn acted(changes: &ChangeSet) -> bool {
    changes
        .entries
        .iter()
        .any(|e| e.outcome != pbsync_target::Outcome::Unchanged)
}

fn summary(changes: &ChangeSet) -> String {
    let counts = changes.counts();
    if counts.is_empty() {
        return "nothing to do".into();
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    parts.join(", ")
}

impl<T: Target> Pass for Reconciler<T> {
    fn run(&mut self, request: &Request) -> impl std::future::Future<Output = Verdict> {
        let span = tracing::info_span!(
            "reconcile",
            trigger = %request.describe(),
            revision = tracing::field::Empty
        );
        let request = request.clone();
        async move { self.pass(&request).await }.instrument(span)
    }

    fn abandoned(&mut self, why: &str) {
        tracing::warn!(reason = why, "reconcile abandoned");
        self.shared.metrics.count_reconcile("abandoned", None);
    }
}
