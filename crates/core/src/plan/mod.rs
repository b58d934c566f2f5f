//! The plan: desired state paired with live state, every decision with the reasons that
//! trace it through the reference graph. Pure and infallible: no I/O, no clock, no clients.
//!
//! The deletion rules are the domain contract §4; each has its own golden fixture under
//! `tests/fixtures/plans/`.

pub mod comment;
mod diff;
pub mod impact;
pub mod mask;
mod render;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

pub use diff::{FieldChange, normalize};
pub use impact::Impact;
pub use render::{render_json, render_text};

use crate::graph::ResourceGraph;
use crate::guard::{Adoption, GuardTrip, MassDeletion};
use crate::live::{LiveObject, Observed};
use crate::model::{
    DeletionPolicy, DeploymentParts, Found, Kind, Location, ObjectKey, Spec, Violation, parse_live,
};
use crate::ownership::{self, Ownership, Stamp};

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Create an object that does not exist.
    Create,
    /// Change an object to match the commit (or take it back, or adopt it).
    Update,
    /// Delete a managed object.
    Delete,
    /// Release a managed object: leave it in place, remove the ownership marks.
    Orphan,
    /// Nothing to do.
    Unchanged,
    /// Would act, but a rule stops it (a pool uses the bundle, a foreign object, a profile in use).
    Blocked,
    /// The live state or a dry-run could not be read: never taken as "unchanged".
    Unknown,
}

impl Action {
    /// The word as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Orphan => "orphan",
            Self::Unchanged => "unchanged",
            Self::Blocked => "blocked",
            Self::Unknown => "unknown",
        }
    }

    /// True for actions that change something.
    pub(crate) fn is_change(self) -> bool {
        matches!(
            self,
            Self::Create | Self::Update | Self::Delete | Self::Orphan
        )
    }
}

/// Who performs a deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// pbsync does it.
    #[default]
    Pbsync,
    /// PaletteAI's ProfileBundle controller does it (`--cascade=server`); pbsync reports it.
    Server,
}

/// When a change is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Creates and updates, in dependency order.
    Apply,
    /// Deletions and orphanings, after every apply step succeeded.
    Prune,
}

/// One planned change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// What happens.
    pub action: Action,
    /// When it happens.
    pub phase: Phase,
    /// Identity.
    pub key: ObjectKey,
    /// Number of ProfileBundles that reference it (shared objects).
    pub references: Option<u32>,
    /// Sentences tracing the decision through the graph.
    pub reasons: Vec<String>,
    /// Where the object is declared, for objects in the commit.
    pub source: Option<Location>,
    /// Field-level differences, for updates.
    pub diff: Vec<FieldChange>,
    /// Mark the object adopted when writing it.
    pub adopt: bool,
    /// Who performs it.
    pub executor: Executor,
    /// For a leaving ProfileBundle: its effective deletionPolicy (live object or last Git
    /// version says orphan => orphan). A server-side cascade needs it set on the live object
    /// before the bundle is deleted.
    pub effective_policy: Option<DeletionPolicy>,
    /// The ownership of the live object the plan was made against (`None`: it did not
    /// exist). The apply checks every write against it with the guard's adoption rule.
    #[serde(skip)]
    pub observed: Option<Ownership>,
}

/// The plan of one commit against one live state.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The commit.
    pub revision: String,
    /// Changes in execution order: creates and updates in dependency order, then deletions
    /// and orphanings (dependents before bundles).
    pub changes: Vec<Change>,
    /// Non-fatal findings.
    pub warnings: Vec<String>,
    /// Set when the plan exceeds the mass-deletion guard.
    pub guard: Option<GuardTrip>,
    /// When the live state was read.
    pub read_at: Option<String>,
    /// For each changed shared object, the roots that depend on it (see [`impact`]); filled
    /// by callers that know the commit before (pull-request plans).
    pub impact: Vec<Impact>,
    /// Violations of the commit: a plan of an invalid commit has no changes, only these.
    pub violations: Vec<Violation>,
    /// For each Fullstack bundle a ComputePool or AIWorkload uses: which of its parts deploy
    /// and which PaletteAI ignores in that workflow (domain §3 rule 8).
    pub deployments: Vec<DeploymentParts>,
    /// Namespaces the commit writes into that the hub does not have: the apply refuses to
    /// write anything while one is missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_namespaces: Vec<MissingNamespace>,
    /// References the repository does not declare: where each was found (domain §3 rule 6),
    /// or that it could not be looked up (an offline plan).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<LiveReference>,
}

/// A reference to an object the repository does not declare. It is an edge of the graph like
/// any other, but its object is never created, changed or deleted by this instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveReference {
    /// The object referenced.
    pub key: ObjectKey,
    /// `unchanged` when found live, `unknown` when no live state was read.
    pub action: Action,
    /// Where it was found, or why that is not known.
    pub reason: String,
    /// The declared objects that reference it, sorted.
    pub used_by: Vec<ObjectKey>,
}

/// Where a live object of this kind lives, for sentences.
fn live_place(kind: Kind) -> &'static str {
    if kind.is_palette() {
        "in Palette"
    } else {
        "on the hub"
    }
}

/// The references of `graph` that resolved outside the repository, sorted by key.
fn live_references(graph: &ResourceGraph) -> Vec<LiveReference> {
    let mut out: Vec<LiveReference> = graph
        .nodes()
        .iter()
        .filter(|n| n.desired)
        .filter_map(|n| {
            let (action, reason) = match n.found.as_ref()? {
                Found::Live { holder } => (
                    Action::Unchanged,
                    format!("resolved {}: {}, {holder}", live_place(n.key.kind), n.key),
                ),
                Found::Unchecked => (
                    Action::Unknown,
                    format!(
                        "unknown: {} is not declared in the repository and this plan read no live state (offline); it must exist {} and is checked when planned against a target",
                        n.key,
                        live_place(n.key.kind)
                    ),
                ),
            };
            Some(LiveReference {
                key: n.key.clone(),
                action,
                reason,
                used_by: graph.needed_by(&n.key).into_iter().cloned().collect(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// A namespace the commit needs and the hub lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingNamespace {
    /// The namespace.
    pub namespace: String,
    /// `path:line` of every declaration that goes into it.
    pub files: Vec<String>,
}

/// Who performs the reference-counted cascade: the one definition the plan, the command
/// line (`--cascade client|server`) and the configuration file (`cascade:`) use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cascade {
    /// pbsync deletes dependents itself.
    #[default]
    Client,
    /// PaletteAI's ProfileBundle controller does; pbsync deletes only bundles.
    Server,
}

impl Cascade {
    /// The word as written on the command line and in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

impl std::fmt::Display for Cascade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Cascade {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client" => Ok(Self::Client),
            "server" => Ok(Self::Server),
            other => Err(format!("{other:?} is not client or server")),
        }
    }
}

/// Options of one plan.
#[derive(Debug, Clone)]
pub struct Options {
    /// This pbsync instance.
    pub instance: String,
    /// Take over objects that exist but were not created by pbsync.
    pub adopt: bool,
    /// Who deletes dependents.
    pub cascade: Cascade,
    /// Mass-deletion guard.
    pub guard: MassDeletion,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            instance: crate::ownership::DEFAULT_INSTANCE.into(),
            adopt: false,
            cascade: Cascade::Client,
            guard: MassDeletion::default(),
        }
    }
}

/// What Git history says about one leaving bundle: its last committed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastVersion {
    /// Its deletionPolicy in the newest commit that declared it.
    Policy(DeletionPolicy),
    /// Its whole history was read and no commit declared it: Git has no say.
    Absent,
    /// History could not be read far enough (a shallow clone, the history-depth limit, a
    /// git error): the reason names the cause and the fix. Never read as `delete`.
    Unreadable(String),
}

/// What Git history says for a plan: the last committed versions of the bundles that are
/// leaving (see [`leaving_bundles`]), and whether the commit moves the target backwards.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// By bundle. A bundle not listed was not looked up: Git has no say.
    pub versions: HashMap<ObjectKey, LastVersion>,
    /// Set when the commit does not descend from the last revision applied to the target
    /// (a branch moved back, a force-push): every deletion says so.
    pub moved_back: Option<MovedBack>,
}

/// The commit of a plan does not descend from the last one applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedBack {
    /// The last revision applied to the target by this instance.
    pub applied: String,
    /// How the commit relates to it.
    pub lineage: crate::guard::Lineage,
}

/// A leaving bundle's effective deletionPolicy, with where it comes from; or why it is not
/// known.
type Effective = Result<(DeletionPolicy, String), String>;

/// Managed live bundles that are not in the desired set, with the path they were applied
/// from: the bundles whose last Git version the caller should look up for [`History`].
pub fn leaving_bundles<'a>(
    graph: &ResourceGraph,
    observed: &'a Observed,
) -> Vec<(&'a ObjectKey, Option<&'a str>)> {
    observed
        .objects
        .iter()
        .filter(|(k, o)| {
            k.kind == Kind::ProfileBundle
                && o.ownership.is_managed()
                && !graph
                    .node(k)
                    .is_some_and(|n| n.desired && n.object.is_some())
        })
        .map(|(k, o)| (k, o.source_path()))
        .collect()
}

/// What the live bundles reference: the live reference graph.
struct LiveRefs {
    /// Live bundles whose live closure contains each key.
    referrers: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Live pools naming each bundle.
    pools: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Live deployments (AIWorkloads) using each bundle and pool, whoever owns them: a bundle
    /// they name, a pool they deploy onto, and the bundle that pool was built from (with the
    /// pool it is used through).
    deployments: HashMap<ObjectKey, BTreeSet<(ObjectKey, Option<ObjectKey>)>>,
    /// Deletion policy on each live bundle.
    policies: HashMap<ObjectKey, DeletionPolicy>,
}

impl LiveRefs {
    fn build(observed: &Observed, graph: &ResourceGraph) -> Self {
        let mut referrers: HashMap<ObjectKey, BTreeSet<ObjectKey>> = HashMap::new();
        let mut pools: HashMap<ObjectKey, BTreeSet<ObjectKey>> = HashMap::new();
        let mut policies = HashMap::new();
        let find = |candidates: &[ObjectKey]| {
            candidates
                .iter()
                .find(|k| observed.objects.contains_key(*k))
                .cloned()
        };
        let parsed = |kind: Kind| {
            observed
                .objects
                .iter()
                .filter(move |(k, _)| k.kind == kind)
                .filter_map(|(k, live)| {
                    let object = match &live.manifest {
                        Some(m) => parse_live("(live)", m).map(Cow::Owned),
                        // Holds exactly the desired object: the same references.
                        None if live.matches_desired => graph
                            .node(k)
                            .and_then(|n| graph.object(n))
                            .map(Cow::Borrowed),
                        None => None,
                    };
                    object.map(|o| (k, o))
                })
        };
        // What each live workload profile uses, resolved once (many bundles share them).
        let definitions: HashMap<&ObjectKey, Vec<ObjectKey>> = parsed(Kind::WorkloadProfile)
            .map(|(k, wp)| (k, wp.refs().filter_map(|r| find(&r.candidates)).collect()))
            .collect();
        for (key, obj) in parsed(Kind::ProfileBundle) {
            let Some(bundle) = obj.as_bundle() else {
                continue;
            };
            policies.insert(key.clone(), bundle.deletion_policy);
            for r in obj.refs() {
                let Some(target) = find(&r.candidates) else {
                    continue;
                };
                for def in definitions.get(&target).into_iter().flatten() {
                    referrers
                        .entry(def.clone())
                        .or_default()
                        .insert(key.clone());
                }
                referrers.entry(target).or_default().insert(key.clone());
            }
        }
        let mut pool_bundles: HashMap<&ObjectKey, ObjectKey> = HashMap::new();
        for (key, obj) in parsed(Kind::ComputePool) {
            if let Spec::ComputePool(p) = &obj.spec {
                let bundle =
                    find(&p.bundle.candidates).unwrap_or_else(|| p.bundle.primary().clone());
                pools.entry(bundle.clone()).or_default().insert(key.clone());
                pool_bundles.insert(key, bundle);
            }
        }
        let mut deployments: HashMap<ObjectKey, BTreeSet<(ObjectKey, Option<ObjectKey>)>> =
            HashMap::new();
        for (key, obj) in parsed(Kind::AiWorkload) {
            let Spec::AiWorkload(w) = &obj.spec else {
                continue;
            };
            for b in &w.bundles {
                if let Some(bundle) = find(&b.candidates) {
                    deployments
                        .entry(bundle)
                        .or_default()
                        .insert((key.clone(), None));
                }
            }
            let Some(pool) = w.pool.as_ref().and_then(|p| find(&p.candidates)) else {
                continue;
            };
            if let Some(bundle) = pool_bundles.get(&pool) {
                deployments
                    .entry(bundle.clone())
                    .or_default()
                    .insert((key.clone(), Some(pool.clone())));
            }
            deployments
                .entry(pool)
                .or_default()
                .insert((key.clone(), None));
        }
        Self {
            referrers,
            pools,
            deployments,
            policies,
        }
    }
}

/// Plans the commit of `graph` against `observed`.
pub fn plan(graph: &ResourceGraph, observed: &Observed, history: &History, opts: &Options) -> Plan {
    let live_refs = LiveRefs::build(observed, graph);
    let desired_keys = |k: &ObjectKey| {
        graph
            .node(k)
            .is_some_and(|n| n.desired && n.object.is_some())
    };
    let mut changes = Vec::new();
    let mut warnings = graph.warnings();

    // Which managed live objects are leaving, and which leaving bundles are blocked.
    let leaving: BTreeMap<&ObjectKey, &LiveObject> = observed
        .objects
        .iter()
        .filter(|(k, o)| o.ownership.is_managed() && !desired_keys(k))
        .collect();
    // Leaving pools and bundles that stay because something live is built on them: a pool a
    // deployment (of any owner) runs on; a bundle a pool references or a deployment uses,
    // directly or through its pool. Pools first: a blocked pool keeps its bundle.
    let deleted = |k: &ObjectKey| {
        leaving
            .get(k)
            .is_some_and(|o| o.ownership == Ownership::Managed)
    };
    let mut blocked: BTreeMap<&ObjectKey, String> = BTreeMap::new();
    for k in leaving.keys().filter(|k| k.kind == Kind::ComputePool) {
        let users: Vec<&ObjectKey> = live_refs
            .deployments
            .get(*k)
            .into_iter()
            .flatten()
            .map(|(w, _)| w)
            .filter(|w| !deleted(w))
            .collect();
        if !users.is_empty() {
            let verb = if users.len() == 1 {
                "deploys"
            } else {
                "deploy"
            };
            blocked.insert(
                *k,
                format!(
                    "blocked: {} {verb} onto this pool; the pool stays",
                    join_keys(users)
                ),
            );
        }
    }
    for k in leaving.keys().filter(|k| k.kind == Kind::ProfileBundle) {
        let pools: Vec<&ObjectKey> = live_refs
            .pools
            .get(*k)
            .into_iter()
            .flatten()
            .filter(|pool| !deleted(pool) || blocked.contains_key(*pool))
            .collect();
        let mut why = Vec::new();
        if !pools.is_empty() {
            why.push(format!("{} references this bundle", join_keys(pools)));
        }
        let users = live_refs.deployments.get(*k).into_iter().flatten();
        let direct: Vec<&ObjectKey> = users
            .clone()
            .filter(|(w, through)| through.is_none() && !deleted(w))
            .map(|(w, _)| w)
            .collect();
        if !direct.is_empty() {
            let verb = if direct.len() == 1 {
                "deploys"
            } else {
                "deploy"
            };
            why.push(format!("{} {verb} this bundle", join_keys(direct)));
        }
        let mut through_pools: BTreeMap<&ObjectKey, Vec<&ObjectKey>> = BTreeMap::new();
        for (w, through) in users {
            if let Some(pool) = through
                && !deleted(w)
            {
                through_pools.entry(pool).or_default().push(w);
            }
        }
        for (pool, users) in through_pools {
            let verb = if users.len() == 1 {
                "deploys"
            } else {
                "deploy"
            };
            why.push(format!(
                "{} {verb} onto {pool}, built from this bundle",
                join_keys(users)
            ));
        }
        if !why.is_empty() {
            blocked.insert(
                *k,
                format!(
                    "blocked: {}; the bundle and its dependents stay",
                    why.join("; ")
                ),
            );
        }
    }
    let effective_policy = |bundle: &ObjectKey| -> Effective {
        let live = live_refs.policies.get(bundle).copied();
        let git = if desired_keys(bundle) {
            graph
                .object(graph.node(bundle).expect("desired"))
                .and_then(|o| o.as_bundle())
                .map(|b| LastVersion::Policy(b.deletion_policy))
        } else {
            history.versions.get(bundle).cloned()
        };
        let from = match (live, &git) {
            (Some(DeletionPolicy::Orphan), Some(LastVersion::Policy(DeletionPolicy::Orphan))) => {
                " (live object and Git)"
            }
            (Some(DeletionPolicy::Orphan), _) => " (set on the live object)",
            (_, Some(LastVersion::Policy(DeletionPolicy::Orphan))) if desired_keys(bundle) => {
                " (set in this commit)"
            }
            (_, Some(LastVersion::Policy(DeletionPolicy::Orphan))) => {
                " (set in its last version in Git)"
            }
            // The live object does not say orphan and Git cannot tell: unknown, never delete.
            (_, Some(LastVersion::Unreadable(why))) => return Err(why.clone()),
            _ => return Ok((DeletionPolicy::Delete, String::new())),
        };
        Ok((DeletionPolicy::Orphan, from.to_string()))
    };

    // References outside the repository: each is said on the objects that make it.
    let references = live_references(graph);
    let mut referenced: HashMap<&ObjectKey, Vec<&LiveReference>> = HashMap::new();
    for r in &references {
        for user in &r.used_by {
            referenced.entry(user).or_default().push(r);
        }
    }

    // Namespaces the commit writes into that the hub lacks, and the files that use them.
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();

    // 1. Creates and updates, in dependency order.
    for node in graph.creation_order() {
        let obj = graph
            .object(node)
            .expect("invariant: creation order holds declared objects");
        let key = &node.key;
        let shared = key.kind.is_shared();
        let mut change = Change {
            action: Action::Create,
            phase: Phase::Apply,
            key: key.clone(),
            references: shared.then_some(node.references),
            reasons: Vec::new(),
            source: Some(obj.location.clone()),
            diff: Vec::new(),
            adopt: false,
            executor: Executor::Pbsync,
            effective_policy: None,
            observed: observed.get(key).map(|l| l.ownership.clone()),
        };
        let needed_by = if shared {
            if node.referrers.is_empty() {
                format!("needed by {}", join_keys(&node.other_dependents))
            } else {
                format!("needed by {}", join_keys(&node.referrers))
            }
        } else {
            format!("declared in {}", obj.location)
        };

        let namespace_missing =
            !key.kind.is_palette() && observed.missing_namespaces.contains(&*key.namespace);
        match observed.get(key) {
            None if namespace_missing => {
                change.action = Action::Unknown;
                change.reasons.push(format!(
                    "namespace {} does not exist on the hub: create it first; nothing of this commit is written until it exists",
                    key.namespace
                ));
                missing
                    .entry(key.namespace.to_string())
                    .or_default()
                    .push(obj.location.to_string());
            }
            None => {
                match observed.rejected.get(key) {
                    None => change.reasons.push(format!("does not exist; {needed_by}")),
                    Some(msg) => {
                        change.action = Action::Unknown;
                        change.reasons.push(format!("does not exist, and a server-side dry-run of its creation failed: {msg}"));
                    }
                }
            }
            Some(live) => match crate::guard::adoption(&live.ownership, opts.adopt) {
                Adoption::Blocked(why) => {
                    change.action = Action::Blocked;
                    change.reasons.push(why);
                }
                decision => {
                    let adopted =
                        matches!(decision, Adoption::Adopt) || live.ownership == Ownership::Adopted;
                    change.adopt = adopted;
                    let stamp = Stamp {
                        instance: &opts.instance,
                        revision: graph.revision(),
                        adopted,
                    };
                    compare(&mut change, live, obj, &stamp);
                    // A take-back cut short between its write and the removal of the
                    // release's note leaves a managed object that still says it was released.
                    if change.action == Action::Unchanged
                        && decision == Adoption::Own
                        && live.released_note()
                    {
                        change.action = Action::Update;
                        change.reasons.push(format!(
                            "still carries {} from an earlier release, which a take-back cut short left behind",
                            ownership::RELEASED_BY_ANNOTATION
                        ));
                    }
                    match decision {
                        Adoption::Adopt => {
                            change.action = Action::Update;
                            change.reasons.insert(0, "adopted: exists but was not created by pbsync; adoption is enabled, so it is managed from now on and only ever released, never deleted".into());
                        }
                        Adoption::TakeBack => {
                            if change.action != Action::Unknown {
                                change.action = Action::Update;
                            }
                            change.reasons.insert(0, format!(
                                "taken back: this instance released it earlier; {needed_by} again"
                            ));
                        }
                        _ => {}
                    }
                    if change.action == Action::Unchanged || change.action == Action::Update {
                        change.reasons.push(needed_by);
                    }
                }
            },
        }
        for r in referenced.get(key).into_iter().flatten() {
            change.reasons.push(r.reason.clone());
        }
        // Say who keeps a shared object alive when some of its live referrers are leaving.
        if shared {
            let leaving_refs: Vec<&ObjectKey> = live_refs
                .referrers
                .get(key)
                .into_iter()
                .flatten()
                .filter(|b| leaving.contains_key(b))
                .collect();
            if !leaving_refs.is_empty() && !node.referrers.is_empty() {
                change.reasons.push(format!(
                    "kept: still referenced by {}, although {} is leaving",
                    join_keys(&node.referrers),
                    join_keys(leaving_refs)
                ));
            }
        }
        changes.push(change);
    }

    // 2. Deletions and orphanings, dependents before bundles.
    let mut deletions: Vec<Change> = Vec::new();
    for (key, live) in &leaving {
        let key = *key;
        let mut change = Change {
            action: Action::Delete,
            phase: Phase::Prune,
            key: key.clone(),
            references: key.kind.is_shared().then_some(0),
            reasons: Vec::new(),
            source: None,
            diff: Vec::new(),
            adopt: false,
            executor: Executor::Pbsync,
            effective_policy: None,
            observed: Some(live.ownership.clone()),
        };
        let declared_unused = graph.node(key).is_some_and(|n| n.object.is_some());
        let gone = if declared_unused {
            "still declared but no longer used by any bundle, pool or workload"
        } else {
            "removed from the repository"
        };
        if live.ownership == Ownership::Adopted {
            change.action = Action::Orphan;
            change.reasons.push(format!(
                "{gone}; it was adopted, so it is released, never deleted"
            ));
        } else if !key.kind.is_shared() {
            if let Some(why) = blocked.get(key) {
                change.action = Action::Blocked;
                change.reasons.push(why.clone());
            } else if key.kind == Kind::ProfileBundle {
                match effective_policy(key) {
                    Ok((policy, from)) => {
                        change.effective_policy = Some(policy);
                        change
                            .reasons
                            .push(format!("{gone}; its deletionPolicy is {policy}{from}"));
                    }
                    Err(why) => {
                        change.action = Action::Unknown;
                        change.reasons.push(format!(
                            "{gone}; its deletionPolicy is unknown: {why}; nothing is deleted in this pass"
                        ));
                    }
                }
            } else {
                change.reasons.push(gone.to_string());
            }
        } else {
            decide_shared(
                &mut change,
                key,
                &live_refs,
                &leaving,
                &blocked,
                &desired_keys,
                &effective_policy,
                gone,
                observed.pending.get(key).copied(),
                &mut warnings,
            );
        }
        if !live.in_use_by.is_empty() && change.action == Action::Delete {
            change.action = Action::Blocked;
            change.reasons.push(format!(
                "blocked: in use by cluster(s) {}",
                live.in_use_by.join(", ")
            ));
        }
        if opts.cascade == Cascade::Server
            && key.kind.is_shared()
            && change.action == Action::Delete
        {
            change.executor = Executor::Server;
            change.reasons.push("performed by PaletteAI's ProfileBundle controller when the bundle is deleted (--cascade=server); pbsync reports it".into());
        }
        deletions.push(change);
    }
    deletions.sort_by(|a, b| {
        deletion_wave(a.key.kind)
            .cmp(&deletion_wave(b.key.kind))
            .then_with(|| a.key.cmp(&b.key))
    });
    changes.extend(deletions);

    if let Some(back) = &history.moved_back {
        let rev = graph.revision();
        let short = |r: &str| r.chars().take(12).collect::<String>();
        let what = format!(
            "{} is {} the last revision applied, {}",
            short(rev),
            back.lineage,
            short(&back.applied)
        );
        warnings.push(format!(
            "this commit moves the target back: {what}; what that revision added is removed (the mass-deletion guard still applies)"
        ));
        for c in &mut changes {
            if matches!(c.action, Action::Delete | Action::Orphan) {
                c.reasons
                    .push(format!("undoes the last applied revision: {what}"));
            }
        }
    }
    let missing_namespaces: Vec<MissingNamespace> = missing
        .into_iter()
        .map(|(namespace, mut files)| {
            files.sort();
            files.dedup();
            warnings.push(format!(
                "namespace {namespace} does not exist on the hub (used by {}); the apply writes nothing until it exists",
                files.join(", ")
            ));
            MissingNamespace { namespace, files }
        })
        .collect();
    let guard = crate::guard::mass_deletion(&changes, observed, opts.guard);
    if let Some(trip) = &guard {
        warnings.push(trip.message.clone());
    }
    Plan {
        revision: graph.revision().to_string(),
        changes,
        warnings,
        guard,
        read_at: observed.read_at.clone(),
        impact: Vec::new(),
        violations: Vec::new(),
        deployments: crate::model::fullstack_parts(graph.desired_state()),
        missing_namespaces,
        references,
    }
}

#[allow(clippy::too_many_arguments)]
fn decide_shared(
    change: &mut Change,
    key: &ObjectKey,
    live_refs: &LiveRefs,
    leaving: &BTreeMap<&ObjectKey, &LiveObject>,
    blocked: &BTreeMap<&ObjectKey, String>,
    desired: &dyn Fn(&ObjectKey) -> bool,
    effective_policy: &dyn Fn(&ObjectKey) -> Effective,
    gone: &str,
    pending: Option<crate::live::Removal>,
    warnings: &mut Vec<String>,
) {
    let referrers: Vec<&ObjectKey> = live_refs.referrers.get(key).into_iter().flatten().collect();
    if referrers.is_empty()
        && let Some(decided) = pending
    {
        // An earlier pass decided this with the whole chain in view, then was cut short
        // after removing what linked it to its leaving bundle: finish that decision.
        change.action = match decided {
            crate::live::Removal::Delete => Action::Delete,
            crate::live::Removal::Orphan => Action::Orphan,
        };
        change.reasons.push(format!(
            "{gone}; an earlier pass decided to {} it and was interrupted before it did (what linked it to its leaving bundle is already gone): finishing that decision",
            if decided == crate::live::Removal::Delete { "delete" } else { "orphan" }
        ));
        return;
    }
    if referrers.is_empty() {
        change.action = Action::Orphan;
        change.reasons.push(format!(
            "{gone}, and no live bundle references it (its bundle was removed out of band); orphaned, never deleted silently"
        ));
        warnings.push(format!(
            "{key} is managed but no live bundle references it; orphaned, not deleted"
        ));
        return;
    }
    // Referrers that keep it: bundles pbsync will not delete in this pass.
    let keepers: Vec<&ObjectKey> = referrers
        .iter()
        .copied()
        .filter(|b| {
            let deleted = leaving
                .get(*b)
                .is_some_and(|o| o.ownership == Ownership::Managed)
                && !blocked.contains_key(*b);
            !desired(b) && !deleted
        })
        .collect();
    if !keepers.is_empty() {
        change.action = Action::Unchanged;
        let (blocked_ones, others): (Vec<&ObjectKey>, Vec<&ObjectKey>) =
            keepers.iter().partition(|b| blocked.contains_key(*b));
        if !others.is_empty() {
            change.reasons.push(format!(
                "kept: still referenced by {} (not deleted by this instance)",
                join_keys(others)
            ));
        }
        if !blocked_ones.is_empty() {
            change.reasons.push(format!(
                "kept: still referenced by {}, whose deletion is blocked",
                join_keys(blocked_ones)
            ));
        }
        change.references = Some(u32::try_from(keepers.len()).unwrap_or(u32::MAX));
        return;
    }
    // Every referrer is leaving (or, staying, no longer references it): their policies decide.
    // One that says orphan decides alone; otherwise a policy that cannot be read leaves the
    // decision unknown, never delete.
    let mut orphaners = Vec::new();
    let mut unknown = Vec::new();
    let mut explained = Vec::new();
    for b in &referrers {
        let role = if desired(b) {
            "no longer references it"
        } else {
            "removed"
        };
        match effective_policy(b) {
            Ok((policy, from)) => {
                explained.push(format!("{b} ({role}; deletionPolicy {policy}{from})"));
                if policy == DeletionPolicy::Orphan {
                    orphaners.push(*b);
                }
            }
            Err(why) => {
                explained.push(format!("{b} ({role}; deletionPolicy unknown)"));
                unknown.push((*b, why));
            }
        }
    }
    let last = if referrers.len() == 1 {
        "last referrer"
    } else {
        "last referrers"
    };
    change
        .reasons
        .push(format!("{last}: {}", explained.join(", ")));
    if !orphaners.is_empty() {
        change.action = Action::Orphan;
        change.reasons.push(format!(
            "orphaned: {} says orphan, so it is left in place and released",
            join_keys(orphaners)
        ));
    } else if let Some((bundle, why)) = unknown.first() {
        change.action = Action::Unknown;
        change.reasons.push(format!(
            "unknown: the deletionPolicy of {bundle} cannot be read ({why}), so it is neither deleted nor orphaned in this pass"
        ));
    } else {
        change.action = Action::Delete;
    }
}

/// The deletion wave of a kind: removals run wave by wave, lowest first: workloads and pools,
/// then the bundles' dependents (profiles before the definitions and repositories they use),
/// then the bundles themselves, so a crash between the steps leaves the bundle as the record
/// of what still has to go. A wave starts only once the objects the previous one deleted are
/// gone (finalizers included).
pub fn deletion_wave(kind: Kind) -> u8 {
    match kind {
        Kind::AiWorkload => 0,
        Kind::ComputePool => 1,
        Kind::WorkloadProfile | Kind::ClusterProfile => 2,
        Kind::ComponentDefinition
        | Kind::TraitDefinition
        | Kind::PolicyDefinition
        | Kind::HelmRepository
        | Kind::OciRepository => 3,
        Kind::ProfileBundle => 4,
    }
}

fn compare(change: &mut Change, live: &LiveObject, obj: &crate::model::Object, stamp: &Stamp<'_>) {
    if live.matches_desired && live.dry_run.is_none() {
        change.action = Action::Unchanged;
        change.reasons.push("matches the live object".to_string());
        return;
    }
    let Some(live_manifest) = &live.manifest else {
        change.action = Action::Unknown;
        change.reasons.push(format!(
            "live state could not be read: {}",
            live.error.as_deref().unwrap_or("unknown error")
        ));
        return;
    };
    let same = match &live.dry_run {
        Some(Err(msg)) => {
            change.action = Action::Unknown;
            change
                .reasons
                .push(format!("server-side dry-run failed: {msg}"));
            return;
        }
        Some(Ok(v)) => diff::same_normalized(live_manifest, v),
        // Hub objects compare against the manifest with the ownership marks laid over it,
        // without building the rendered copy; cluster profiles render to another shape.
        None if obj.key.kind != Kind::ClusterProfile => {
            let marks = ownership::Marks::of(obj, stamp);
            diff::same_with_marks(
                live_manifest,
                &obj.manifest.value(),
                &marks.labels(),
                &marks.annotations(),
            )
        }
        None => diff::same_normalized(live_manifest, &ownership::render(obj, stamp)),
    };
    let diff = if same {
        Vec::new()
    } else {
        let desired = match &live.dry_run {
            Some(Ok(v)) => v.clone(),
            _ => ownership::render(obj, stamp),
        };
        diff::diff(&normalize(live_manifest), &normalize(&desired))
    };
    if diff.is_empty() {
        change.action = Action::Unchanged;
        change.reasons.push("matches the live object".to_string());
    } else {
        change.action = Action::Update;
        let fields: Vec<&str> = diff.iter().map(|d| d.path.as_str()).take(5).collect();
        let more = if diff.len() > 5 {
            format!(" and {} more", diff.len() - 5)
        } else {
            String::new()
        };
        change.reasons.push(format!(
            "differs from the live object in {}{more}",
            fields.join(", ")
        ));
        change.diff = diff;
    }
}

fn join_keys<'a>(keys: impl IntoIterator<Item = &'a ObjectKey>) -> String {
    let mut by_kind: BTreeMap<crate::model::Kind, Vec<String>> = BTreeMap::new();
    for k in keys {
        by_kind.entry(k.kind).or_default().push(k.short());
    }
    by_kind
        .into_iter()
        .map(|(kind, names)| format!("{kind} {}", names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Counts per action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Creates.
    pub create: usize,
    /// Updates.
    pub update: usize,
    /// Deletes.
    pub delete: usize,
    /// Orphans.
    pub orphan: usize,
    /// Unchanged.
    pub unchanged: usize,
    /// Blocked.
    pub blocked: usize,
    /// Unknown.
    pub unknown: usize,
}

impl Plan {
    /// The plan of a commit that failed validation: its violations first, no changes.
    pub fn invalid(revision: String, violations: Vec<Violation>, warnings: Vec<String>) -> Self {
        Self {
            revision,
            changes: Vec::new(),
            warnings,
            guard: None,
            read_at: None,
            impact: Vec::new(),
            violations,
            deployments: Vec::new(),
            missing_namespaces: Vec::new(),
            references: Vec::new(),
        }
    }

    /// Counts per action.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            *match c.action {
                Action::Create => &mut s.create,
                Action::Update => &mut s.update,
                Action::Delete => &mut s.delete,
                Action::Orphan => &mut s.orphan,
                Action::Unchanged => &mut s.unchanged,
                Action::Blocked => &mut s.blocked,
                Action::Unknown => &mut s.unknown,
            } += 1;
        }
        s
    }

    /// True when applying would change something.
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action.is_change())
    }

    /// True when some comparison could not be made.
    pub fn has_unknown(&self) -> bool {
        self.changes.iter().any(|c| c.action == Action::Unknown)
    }
}
