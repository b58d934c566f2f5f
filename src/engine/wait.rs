//! `apply --wait`: after the writes, follow what the commit created or changed until it is
//! all current, something failed, or the time is up. The target follows (watches on the hub,
//! see [`Target::follow`]); health is judged by `pbsync_core::health` and traced through the
//! graph, so a failure names the object that causes it and every root it holds back.
//!
//! What is waited on: every object the apply created or updated, judged by its own health,
//! and every root (bundle, pool, workload) among them or depending on one of them, judged by
//! its health combined with its closure's. What is followed: those and the closures of those
//! roots, so the causes can be traced.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};

use pbsync_core::graph::ResourceGraph;
use pbsync_core::health::{self, Health, Report, State};
use pbsync_core::model::ObjectKey;
use pbsync_target::{ChangeSet, Outcome, Reading, Target};

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Everything waited on is current.
    Healthy,
    /// Something waited on failed.
    Failed,
    /// The time ran out first.
    TimedOut,
}

/// Where a wait stands, for a progress display.
#[derive(Debug)]
pub struct Progress<'a> {
    /// Waited-on objects that are current.
    pub current: usize,
    /// Waited-on objects.
    pub total: usize,
    /// The ones not current yet, with the health that holds each back (its own, or its
    /// closure's worst).
    pub waiting: Vec<(&'a ObjectKey, State, String)>,
    /// Time since the wait started.
    pub elapsed: Duration,
}

/// The result of a wait.
#[derive(Debug)]
pub struct Waited {
    /// How it ended.
    pub ending: Ending,
    /// The health as last read, traced through the graph.
    pub report: Report,
    /// What was waited on.
    pub waited_on: BTreeSet<ObjectKey>,
    /// What was followed (the waited-on objects and the closures of their roots).
    pub followed: BTreeSet<ObjectKey>,
    /// How long it took.
    pub elapsed: Duration,
}

impl Waited {
    /// The lines that explain the ending: the culprits among the followed objects, each once
    /// with the waited-on roots it holds back. A failed wait names what failed only (other
    /// objects may simply not have been read when the failure ended it); a timed-out one
    /// names everything not current yet.
    pub fn causes(&self, now: jiff::Timestamp) -> Vec<String> {
        let relevant = Report {
            culprits: self
                .report
                .culprits
                .iter()
                .filter(|c| self.followed.contains(&c.key))
                .filter(|c| self.ending != Ending::Failed || c.health.state == State::Failed)
                .cloned()
                .collect(),
            ..self.report.clone()
        };
        relevant.culprit_lines(now)
    }
}

/// Takes `first` and the burst of readings behind it (a list's worth, ready now) into
/// `objects`, so the graph is traced once per burst; true when any health changed. A reading
/// that failed is logged and changes nothing (the target retries; it never reads as gone).
/// The one place readings become health, for `--wait` and the daemon's board.
pub fn take_burst(
    objects: &mut BTreeMap<ObjectKey, Health>,
    first: pbsync_target::Result<(ObjectKey, Reading)>,
    stream: &mut pbsync_target::Follow<'_>,
) -> bool {
    let mut batch = vec![first];
    while let Some(Some(r)) = stream.next().now_or_never() {
        batch.push(r);
    }
    let mut changed = false;
    for reading in batch {
        let (key, h) = match reading {
            Ok((key, Reading::Present(h))) => (key, h),
            Ok((key, Reading::Gone)) => (key, Health::not_found()),
            Err(e) => {
                tracing::warn!(error = %pbsync_core::error_chain(&e), "cannot read health");
                continue;
            }
        };
        if objects.get(&key) != Some(&h) {
            objects.insert(key, h);
            changed = true;
        }
    }
    changed
}

/// What to wait on and what to follow for `changes` of `graph`.
pub fn scope(
    graph: &ResourceGraph,
    changes: &ChangeSet,
) -> (BTreeSet<ObjectKey>, BTreeSet<ObjectKey>) {
    let mut waited: BTreeSet<ObjectKey> = changes
        .entries
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Created | Outcome::Configured))
        .map(|e| e.key.clone())
        .collect();
    let roots: BTreeSet<ObjectKey> = waited
        .iter()
        .filter_map(|k| graph.node(k))
        .flat_map(|n| {
            let mut r = n.dependents();
            if n.key.kind.is_root() {
                r.push(n.key.clone());
            }
            r
        })
        .collect();
    waited.extend(roots.iter().cloned());
    let mut followed = waited.clone();
    let mut stack: Vec<ObjectKey> = roots.into_iter().collect();
    while let Some(key) = stack.pop() {
        for next in graph.needs(&key) {
            if followed.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    (waited, followed)
}

/// The health of `key` the wait judges: a root's combined with its closure, another
/// object's own.
fn judged(report: &Report, key: &ObjectKey) -> (State, String) {
    let now = jiff::Timestamp::now();
    let Some(root) = report.root(key) else {
        return report
            .objects
            .get(key)
            .map_or((State::Unknown, "not read".into()), |h| {
                (h.state, h.describe(now))
            });
    };
    // Causes are sorted worst first: the root's state is its own or its first cause's.
    match root.causes.first() {
        Some(cause) if cause.health.state > root.own.state => (
            root.state,
            format!(
                "{} {}: {}",
                cause.culprit(),
                cause.health.state,
                cause.health.describe(now)
            ),
        ),
        _ => (root.state, root.own.describe(now)),
    }
}

/// Waits on what `changes` created or changed (see the module doc), reporting progress to
/// `on_progress` whenever a reading changes something.
pub async fn wait<T: Target>(
    target: &T,
    graph: &ResourceGraph,
    changes: &ChangeSet,
    timeout: Duration,
    mut on_progress: impl FnMut(&Progress<'_>),
) -> Waited {
    let started = Instant::now();
    let (waited_on, followed) = scope(graph, changes);
    let mut objects: BTreeMap<ObjectKey, Health> = BTreeMap::new();
    let mut report = health::trace(graph, &objects);
    let mut ending = if waited_on.is_empty() {
        Some(Ending::Healthy)
    } else {
        None
    };
    if ending.is_none() {
        let mut stream = target.follow(graph, followed.iter().cloned().collect());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, stream.next()).await;
            let first = match next {
                Err(_) | Ok(None) => break,
                Ok(Some(r)) => r,
            };
            if !take_burst(&mut objects, first, &mut stream) {
                continue;
            }
            report = health::trace(graph, &objects);
            let judged: Vec<(&ObjectKey, State, String)> = waited_on
                .iter()
                .map(|k| {
                    let (s, why) = judged(&report, k);
                    (k, s, why)
                })
                .collect();
            let current = judged.iter().filter(|j| j.1 == State::Current).count();
            let waiting: Vec<(&ObjectKey, State, String)> = judged
                .into_iter()
                .filter(|j| j.1 != State::Current)
                .collect();
            let failed = waiting.iter().any(|j| j.1 == State::Failed);
            on_progress(&Progress {
                current,
                total: waited_on.len(),
                waiting,
                elapsed: started.elapsed(),
            });
            // No verdict before every followed object has been read once: a failure is then
            // told with all its causes, and a first burst cannot read as healthy.
            if !followed.iter().all(|k| objects.contains_key(k)) {
                continue;
            }
            if failed {
                ending = Some(Ending::Failed);
                break;
            }
            if current == waited_on.len() {
                ending = Some(Ending::Healthy);
                break;
            }
        }
    }
    Waited {
        ending: ending.unwrap_or(Ending::TimedOut),
        report,
        waited_on,
        followed,
        elapsed: started.elapsed(),
    }
}
