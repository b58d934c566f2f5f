//! Health (domain §5): of one object, from what the target holds, and of each root through the
//! graph, with the chain of causes. Pure: the target reads, this module judges.
//!
//! One object, by kstatus's rules (kubernetes-sigs/cli-utils `pkg/kstatus/status`, read from
//! its source), in its order:
//! 1. `metadata.deletionTimestamp` set: in progress (kstatus: Terminating).
//! 2. `status.observedGeneration` present and not `metadata.generation`: in progress (the
//!    controller has not seen the latest spec), unless a condition was set for the current
//!    generation (its own `observedGeneration`, see the refinements below).
//! 3. A `Reconciling` condition `True`: in progress; a `Stalled` condition `True`: failed.
//! 4. A `Ready` condition: `True` current, `False` or `Unknown` in progress.
//! 5. No condition at all: current.
//!
//! Two refinements, both from the Flux conventions and both documented in the README, where
//! kstatus's generic rules cannot tell "still working" from "broken":
//! - A `Ready` condition `False` that the controller reported for the **current generation**
//!   (`status.observedGeneration`, or the condition's own `observedGeneration`, equals
//!   `metadata.generation`) and that no `Reconciling` condition qualifies as ongoing work is
//!   failed: the controller finished with this spec and says it is not ready. Flux writes
//!   `Reconciling` with reason `ProgressingWithRetry` after an attempt failed; that is failed
//!   too (the message is `Ready`'s, with "retrying").
//! - A condition's own `observedGeneration` (metav1.Condition) equal to `metadata.generation`
//!   counts as observed: Flux's source-controller leaves `status.observedGeneration` at -1
//!   until a first fetch succeeds, while its `Ready False` condition for the generation says
//!   why the fetch fails.
//! - A kind whose controller always reports status (Flux's HelmRepository and OCIRepository)
//!   is in progress until its controller has observed it once: kstatus would call a fresh
//!   object without conditions current before source-controller ever looked at it.
//!
//! Objects whose kinds have no status conventions (the KubeVela definitions) are current
//! once they exist. A Palette cluster profile is current when a published version exists and
//! matches the commit, failed when it was never published or its draft was not published.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::graph::ResourceGraph;
use crate::model::{Kind, ObjectKey};

/// The four health states, ordered from best to worst: the health of a set is its maximum.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Exists and reports it is ready (or has nothing to report).
    Current,
    /// Being worked on: not yet observed, reconciling, not ready yet, being deleted.
    InProgress,
    /// Could not be read, or is not there.
    #[default]
    Unknown,
    /// Its controller says it cannot become ready.
    Failed,
}

impl State {
    /// As written in plans, pages and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::InProgress => "in-progress",
            Self::Unknown => "unknown",
            Self::Failed => "failed",
        }
    }

    /// Every state, best first.
    pub const ALL: [Self; 4] = [Self::Current, Self::InProgress, Self::Unknown, Self::Failed];
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The health of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The state.
    pub state: State,
    /// The controller's reason (a condition's `reason`), when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What is wrong or going on, in the controller's words when it gave any.
    pub message: String,
    /// Since when (the deciding condition's `lastTransitionTime`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<jiff::Timestamp>,
}

impl Health {
    fn new(state: State, message: impl Into<String>) -> Self {
        Self {
            state,
            reason: None,
            message: message.into(),
            since: None,
        }
    }

    /// Current, with nothing to say.
    pub fn current() -> Self {
        Self::new(State::Current, "")
    }

    /// Unknown, with why.
    pub fn unknown(why: impl Into<String>) -> Self {
        Self::new(State::Unknown, why)
    }

    /// Failed, with why.
    pub fn failed(why: impl Into<String>) -> Self {
        Self::new(State::Failed, why)
    }

    /// In progress, with why.
    pub fn in_progress(why: impl Into<String>) -> Self {
        Self::new(State::InProgress, why)
    }

    /// An object that should exist and does not.
    pub fn not_found() -> Self {
        Self::unknown("not found")
    }

    /// The message with how long it has held: `failed to fetch index: 404 (since 3m12s)`.
    pub fn describe(&self, now: jiff::Timestamp) -> String {
        let mut out = if self.message.is_empty() {
            self.reason.clone().unwrap_or_default()
        } else {
            self.message.clone()
        };
        if let Some(since) = self.since {
            let secs = now.as_second().saturating_sub(since.as_second()).max(0);
            let age = age(secs);
            if out.is_empty() {
                out = format!("since {age}");
            } else {
                out.push_str(&format!(" (since {age})"));
            }
        }
        out
    }
}

/// `3m12s`, `2h5m`, `4d1h`, `12s`.
pub fn age(secs: i64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// One status condition, as Kubernetes writes them.
#[derive(Debug, Default)]
struct Condition<'a> {
    status: &'a str,
    reason: Option<&'a str>,
    message: Option<&'a str>,
    since: Option<jiff::Timestamp>,
    observed_generation: Option<i64>,
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<Condition<'a>> {
    let list = obj.pointer("/status/conditions")?.as_array()?;
    let c = list
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))?;
    let text = |k: &str| c.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    Some(Condition {
        status: text("status").unwrap_or(""),
        reason: text("reason"),
        message: text("message"),
        since: text("lastTransitionTime").and_then(|t| t.parse().ok()),
        observed_generation: c.get("observedGeneration").and_then(Value::as_i64),
    })
}

impl Condition<'_> {
    fn health(&self, state: State, fallback: &str) -> Health {
        Health {
            state,
            reason: self.reason.map(str::to_string),
            message: self.message.or(self.reason).unwrap_or(fallback).to_string(),
            since: self.since,
        }
    }
}

/// True for kinds whose controller always writes `status.observedGeneration` (Flux's
/// sources): until it has, the object is not yet looked at.
fn controller_always_reports(kind: Kind) -> bool {
    matches!(kind, Kind::HelmRepository | Kind::OciRepository)
}

/// Flux's reason on `Reconciling` after a failed attempt that will be retried.
const PROGRESSING_WITH_RETRY: &str = "ProgressingWithRetry";

/// The health of one Kubernetes object as the API server holds it, status included.
pub fn of_object(kind: Kind, obj: &Value) -> Health {
    if obj
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty())
    {
        let finalizers: Vec<&str> = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut h = Health::in_progress(if finalizers.is_empty() {
            "being deleted".to_string()
        } else {
            format!(
                "being deleted; waiting for finalizers {}",
                finalizers.join(", ")
            )
        });
        h.reason = Some("Terminating".into());
        h.since = obj
            .pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse().ok());
        return h;
    }
    let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = obj
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    // A condition set for this generation (metav1.Condition.observedGeneration) says the
    // controller saw it even when `status.observedGeneration` lags: Flux moves that one only
    // on success (it is -1 while a new source has never been fetched).
    let conditions_saw_it = generation.is_some_and(|g| {
        obj.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.get("observedGeneration").and_then(Value::as_i64) == Some(g))
            })
    });
    if let (Some(g), Some(o)) = (generation, observed)
        && o != g
        && !conditions_saw_it
    {
        let mut h = Health::in_progress(format!(
            "generation {g} not yet observed by its controller (it has seen {o})"
        ));
        h.reason = Some("LatestGenerationNotObserved".into());
        return h;
    }
    let ready = condition(obj, "Ready");
    let reconciling = condition(obj, "Reconciling").filter(|c| c.status == "True");
    if let Some(r) = &reconciling {
        if r.reason == Some(PROGRESSING_WITH_RETRY)
            && let Some(ready) = ready.as_ref().filter(|c| c.status == "False")
        {
            let mut h = ready.health(State::Failed, "not ready");
            h.message.push_str(" (retrying)");
            return h;
        }
        return r.health(State::InProgress, "reconciling");
    }
    if let Some(stalled) = condition(obj, "Stalled").filter(|c| c.status == "True") {
        return stalled.health(State::Failed, "stalled");
    }
    match ready {
        Some(c) if c.status == "True" => Health {
            since: c.since,
            reason: c.reason.map(str::to_string),
            ..Health::current()
        },
        Some(c) if c.status == "False" => {
            let seen = c.observed_generation.or(observed);
            if generation.is_some() && seen == generation {
                c.health(State::Failed, "not ready")
            } else {
                c.health(State::InProgress, "not ready")
            }
        }
        Some(c) => c.health(State::InProgress, "readiness unknown"),
        None if controller_always_reports(kind) && observed.is_none() => {
            let mut h = Health::in_progress("not yet observed by its controller");
            h.reason = Some("NotObserved".into());
            h
        }
        None => Health::current(),
    }
}

/// What a Palette cluster profile's health is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publication {
    /// A published version exists and equals the commit's profile.
    Matches,
    /// Never published: only a draft exists.
    DraftOnly,
    /// A published version exists but differs from the commit's (the last publish did not
    /// take, or someone changed the profile in Palette).
    Differs,
}

/// The health of a Palette cluster profile; `failure` is Palette's message for a publish
/// that failed, when pbsync saw it fail.
pub fn of_profile(publication: Publication, failure: Option<&str>) -> Health {
    match (publication, failure) {
        (Publication::Matches, _) => Health::current(),
        (_, Some(message)) => Health {
            reason: Some("PublishFailed".into()),
            ..Health::failed(format!("publish failed: {message}"))
        },
        (Publication::DraftOnly, None) => Health {
            reason: Some("NotPublished".into()),
            ..Health::failed("a draft that was never published")
        },
        (Publication::Differs, None) => Health {
            reason: Some("PublishedDiffers".into()),
            ..Health::failed("the published version differs from the commit")
        },
    }
}

/// One cause of a root's health: the path from the root to an object whose own health is
/// not current, and that health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cause {
    /// From the root (excluded) to the culprit (included).
    pub path: Vec<ObjectKey>,
    /// The culprit's own health.
    pub health: Health,
}

impl Cause {
    /// The culprit.
    pub fn culprit(&self) -> &ObjectKey {
        self.path.last().expect("invariant: a cause has a culprit")
    }
}

/// The health of one root: its own status combined with the worst of its closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RootHealth {
    /// The root.
    pub key: ObjectKey,
    /// Combined: the worst of its own and its causes'.
    pub state: State,
    /// Its own status.
    pub own: Health,
    /// Objects of its closure that are not current, worst first, nearest first.
    pub causes: Vec<Cause>,
}

impl RootHealth {
    /// The cause chains, one line each:
    /// `ProfileBundle team-a/chat not ready: HelmRepository team-a/charts failed: ...`.
    pub fn chains(&self, now: jiff::Timestamp) -> Vec<String> {
        let mut out = Vec::new();
        if self.own.state != State::Current {
            out.push(format!(
                "{} {}: {}",
                self.key,
                self.own.state,
                self.own.describe(now)
            ));
        }
        for cause in &self.causes {
            let mut line = format!("{} not ready", self.key);
            let (culprit, via) = cause.path.split_last().expect("non-empty");
            for hop in via {
                line.push_str(&format!(": {hop} not ready"));
            }
            line.push_str(&format!(
                ": {culprit} {}: {}",
                cause.health.state,
                cause.health.describe(now)
            ));
            out.push(line);
        }
        out
    }
}

/// An object that holds roots back, named once with every root it affects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Culprit {
    /// The object.
    pub key: ObjectKey,
    /// Its own health.
    pub health: Health,
    /// The roots it holds back (itself, when it is a root), sorted.
    pub holds_back: Vec<ObjectKey>,
}

/// The health of a whole commit: every object, every root, every culprit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The commit.
    pub revision: String,
    /// The worst state of all roots and objects.
    pub state: State,
    /// Objects per state.
    pub counts: BTreeMap<State, usize>,
    /// Every root of the desired set, sorted (bundles first).
    pub roots: Vec<RootHealth>,
    /// Objects that are not current, worst first, each with the roots it holds back.
    pub culprits: Vec<Culprit>,
    /// The own health of every object of the desired set (in JSON: a list of objects, each
    /// its key's fields and its health's).
    #[serde(serialize_with = "objects_as_list")]
    pub objects: BTreeMap<ObjectKey, Health>,
}

fn objects_as_list<S: serde::Serializer>(
    objects: &BTreeMap<ObjectKey, Health>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        #[serde(flatten)]
        key: &'a ObjectKey,
        #[serde(flatten)]
        health: &'a Health,
    }
    s.collect_seq(objects.iter().map(|(key, health)| Entry { key, health }))
}

impl Report {
    /// True when every object and root is current.
    pub fn healthy(&self) -> bool {
        self.state == State::Current
    }

    /// The root health of `key`, when it is a root.
    pub fn root(&self, key: &ObjectKey) -> Option<&RootHealth> {
        self.roots.iter().find(|r| &r.key == key)
    }

    /// The combined health of `key`: a root's with its closure, any other object's own.
    pub fn combined(&self, key: &ObjectKey) -> State {
        match self.root(key) {
            Some(r) => r.state,
            None => self.objects.get(key).map_or(State::Unknown, |h| h.state),
        }
    }

    /// Lines for a terminal: each culprit once, with what it holds back.
    pub fn culprit_lines(&self, now: jiff::Timestamp) -> Vec<String> {
        self.culprits
            .iter()
            .map(|c| {
                let mut line = format!("{} {}: {}", c.key, c.health.state, c.health.describe(now));
                let others: Vec<String> = c
                    .holds_back
                    .iter()
                    .filter(|r| **r != c.key)
                    .map(ToString::to_string)
                    .collect();
                if !others.is_empty() {
                    line.push_str(&format!("\n    holds back {}", others.join(", ")));
                }
                line
            })
            .collect()
    }
}

/// Traces `objects` (each object's own health, as read) through `graph`: every root of the
/// desired set with its combined health and causes, and every culprit once. An object of the
/// desired set missing from `objects` is unknown ("not read").
pub fn trace(graph: &ResourceGraph, objects: &BTreeMap<ObjectKey, Health>) -> Report {
    let desired: Vec<&ObjectKey> = graph
        .nodes()
        .iter()
        .filter(|n| n.desired)
        .map(|n| &n.key)
        .collect();
    let own = |key: &ObjectKey| -> Health {
        objects
            .get(key)
            .cloned()
            .unwrap_or_else(|| Health::unknown("not read"))
    };
    let mut all: BTreeMap<ObjectKey, Health> = BTreeMap::new();
    for key in &desired {
        all.insert((*key).clone(), own(key));
    }
    let mut roots: Vec<RootHealth> = Vec::new();
    let mut held: BTreeMap<ObjectKey, BTreeSet<ObjectKey>> = BTreeMap::new();
    let mut root_keys: Vec<&ObjectKey> = desired
        .iter()
        .copied()
        .filter(|k| k.kind.is_root() && graph.node(k).is_some_and(|n| n.object.is_some()))
        .collect();
    root_keys.sort_by(|a, b| b.kind.cmp(&a.kind).then_with(|| a.cmp(b)));
    for root in root_keys {
        let own_health = all[root].clone();
        let mut causes = Vec::new();
        // Breadth first, so each culprit is reached by a shortest path.
        let mut seen: BTreeSet<&ObjectKey> = BTreeSet::from([root]);
        let mut queue: VecDeque<(&ObjectKey, Vec<ObjectKey>)> = VecDeque::from([(root, vec![])]);
        while let Some((key, path)) = queue.pop_front() {
            for next in graph.needs(key) {
                if !seen.insert(next) {
                    continue;
                }
                let mut path = path.clone();
                path.push(next.clone());
                let h = all.get(next).cloned().unwrap_or_else(|| own(next));
                if h.state != State::Current {
                    held.entry(next.clone()).or_default().insert(root.clone());
                    all.entry(next.clone()).or_insert_with(|| h.clone());
                    causes.push(Cause {
                        path: path.clone(),
                        health: h,
                    });
                }
                queue.push_back((next, path));
            }
        }
        causes.sort_by(|a, b| {
            b.health
                .state
                .cmp(&a.health.state)
                .then_with(|| a.path.len().cmp(&b.path.len()))
                .then_with(|| a.culprit().cmp(b.culprit()))
        });
        if own_health.state != State::Current {
            held.entry(root.clone()).or_default().insert(root.clone());
        }
        let state = causes
            .iter()
            .map(|c| c.health.state)
            .chain([own_health.state])
            .max()
            .unwrap_or(State::Current);
        roots.push(RootHealth {
            key: root.clone(),
            state,
            own: own_health,
            causes,
        });
    }
    let mut culprits: Vec<Culprit> = all
        .iter()
        .filter(|(_, h)| h.state != State::Current)
        .map(|(key, h)| Culprit {
            key: key.clone(),
            health: h.clone(),
            holds_back: held
                .get(key)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
        })
        .collect();
    culprits.sort_by(|a, b| {
        b.health
            .state
            .cmp(&a.health.state)
            .then_with(|| b.holds_back.len().cmp(&a.holds_back.len()))
            .then_with(|| a.key.cmp(&b.key))
    });
    let mut counts: BTreeMap<State, usize> = State::ALL.iter().map(|s| (*s, 0)).collect();
    for h in all.values() {
        *counts.entry(h.state).or_default() += 1;
    }
    let state = all
        .values()
        .map(|h| h.state)
        .chain(roots.iter().map(|r| r.state))
        .max()
        .unwrap_or(State::Current);
    Report {
        revision: graph.revision().to_string(),
        state,
        counts,
        roots,
        culprits,
        objects: all,
    }
}

#[cfg(test)]
mod tests;
