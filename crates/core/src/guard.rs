//! The one guard: the whole safety policy of every target in one module. Pure: no I/O.
//!
//! - **Permits.** Only this module can make a [`DeletePermit`] or a [`ReleasePermit`], and a
//!   target's raw delete and release take one, so neither can be reached without the checks
//!   below (by type: the fields are private). The caller reads the object's ownership *now*
//!   (`Target::recheck`, at the moment of the change, not as observed when the plan was made)
//!   and hands it in.
//! - **Never deleted**: Namespaces, CRDs and pbsync's own state objects, whatever a plan says.
//! - **Adoption**: one rule for every target. An object another pbsync instance manages is
//!   never adopted: it is `blocked`, naming the owner. An object nobody manages is adopted
//!   only when adoption is enabled, and an adopted object is only ever released.
//! - **Mass deletion**: a plan that deletes or orphans too much is refused unless allowed.
//! - **Rollback**: applying a revision that does not descend from the last one applied is
//!   refused unless allowed.
//!
//! A refusal is a [`Refusal`]: its own error kind (and exit code), never a configuration error.

use std::fmt;

use serde::Serialize;

use crate::live::Observed;
use crate::model::{Kind, ObjectKey};
use crate::ownership::Ownership;
use crate::plan::{Action, Change, Executor, Plan};

/// Kinds pbsync never deletes, whatever a plan says. pbsync's own kinds cannot name them;
/// the check stays in the guard so that adding pass-through kinds cannot open a hole.
pub(crate) const NEVER_DELETED_KINDS: [&str; 2] = ["Namespace", "CustomResourceDefinition"];
/// Prefix of the status ConfigMaps (`pbsync-status-<instance>`): pbsync's own state.
pub const STATUS_CONFIGMAP_PREFIX: &str = "pbsync-status-";
/// Prefix of the Leases pbsync holds (`pbsync-<instance>`): pbsync's own state.
pub const LEASE_PREFIX: &str = "pbsync-";

/// True for objects pbsync never deletes: Namespaces, CRDs, and its own state objects (the
/// status ConfigMaps and the Leases).
pub(crate) fn never_deleted(kind: &str, name: &str) -> bool {
    NEVER_DELETED_KINDS.contains(&kind)
        || (kind == "ConfigMap" && name.starts_with(STATUS_CONFIGMAP_PREFIX))
        || (kind == "Lease" && name.starts_with(LEASE_PREFIX))
}

/// Proof that the guard allowed deleting one object. Made only by [`permit_delete`]; every
/// target's raw delete takes one and checks it names the object it deletes.
///
/// ```compile_fail
/// // Outside the guard a permit cannot be made:
/// let key = pbsync_core::model::ObjectKey::new(pbsync_core::model::Kind::HelmRepository, "a", "b");
/// let permit = pbsync_core::guard::DeletePermit { key };
/// ```
#[derive(Debug)]
pub struct DeletePermit {
    key: ObjectKey,
}

impl DeletePermit {
    /// The object this permit allows deleting.
    pub fn key(&self) -> &ObjectKey {
        &self.key
    }
}

/// Proof that the guard allowed releasing (orphaning) one object. Made only by
/// [`permit_release`].
///
/// ```compile_fail
/// let key = pbsync_core::model::ObjectKey::new(pbsync_core::model::Kind::HelmRepository, "a", "b");
/// let permit = pbsync_core::guard::ReleasePermit { key };
/// ```
#[derive(Debug)]
pub struct ReleasePermit {
    key: ObjectKey,
}

impl ReleasePermit {
    /// The object this permit allows releasing.
    pub fn key(&self) -> &ObjectKey {
        &self.key
    }
}

/// An object as a target reads it at the moment of a deletion or release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Now {
    /// Its ownership marks, read now.
    pub ownership: Ownership,
    /// What uses it now (Palette: the clusters of `status.inUseClusters`).
    pub in_use_by: Vec<String>,
}

impl Now {
    /// An object with this ownership that nothing uses.
    pub fn owned(ownership: Ownership) -> Self {
        Self {
            ownership,
            in_use_by: Vec::new(),
        }
    }
}

/// Why the guard refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A kind or object pbsync never deletes.
    #[error(
        "refusing to delete {kind} {name}: Namespaces, CRDs and pbsync's own state objects are never deleted"
    )]
    NeverDeleted {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
    },
    /// The plan deletes or orphans more than the mass-deletion guard allows.
    #[error("{0}")]
    MassDeletion(String),
    /// The change is not a deletion (or release) of the plan being applied.
    #[error("refusing to {verb} {key}: the plan being applied does not say pbsync {verb}s it")]
    NotPlanned {
        /// Object.
        key: ObjectKey,
        /// delete, release.
        verb: &'static str,
    },
    /// The object is not (or no longer) this instance's to change.
    #[error("refusing to {verb} {key}: it is {now}, not this instance's to {verb}")]
    NotOurs {
        /// Object.
        key: ObjectKey,
        /// delete, release, write.
        verb: &'static str,
        /// Its ownership, read at the moment of the change.
        now: Described,
    },
    /// Something uses the object now (a cluster uses the cluster profile).
    #[error("refusing to delete {key}: it is in use by {}", users.join(", "))]
    InUse {
        /// Object.
        key: ObjectKey,
        /// What uses it.
        users: Vec<String>,
    },
    /// Adoption never takes an object another pbsync instance manages.
    #[error(
        "refusing to adopt {key}: it is managed by pbsync instance {owner:?}, and adoption never takes another instance's object"
    )]
    OtherInstance {
        /// Object.
        key: ObjectKey,
        /// The instance that manages it.
        owner: String,
    },
    /// The revision does not descend from the last one applied to this target and instance.
    #[error(
        "refusing to apply {requested}: it is {relation} the last revision applied to this target by instance {instance:?}, {applied}, so applying it would undo what that revision did; pass --allow-rollback if that is what you want"
    )]
    Rollback {
        /// Revision asked for.
        requested: String,
        /// Last revision applied.
        applied: String,
        /// Instance.
        instance: String,
        /// How the two relate.
        relation: Lineage,
    },
}

/// An ownership as a refusal names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described(pub Ownership);

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ownership::Managed => f.write_str("managed by this instance"),
            Ownership::Adopted => f.write_str("adopted by this instance (released, never deleted)"),
            Ownership::Released => f.write_str("released by this instance"),
            Ownership::Foreign { owner: Some(o) } => write!(f, "managed by pbsync instance {o:?}"),
            Ownership::Foreign { owner: None } => f.write_str("not created by pbsync"),
        }
    }
}

/// The rules of a deletion that do not depend on the live object: not a kind pbsync never
/// deletes, a `delete` of the plan being applied that pbsync itself performs, within the
/// mass-deletion guard (or explicitly allowed past it).
pub fn check_delete(
    plan: &Plan,
    change: &Change,
    allow_mass_deletion: bool,
) -> Result<(), Refusal> {
    let key = &change.key;
    if never_deleted(key.kind.as_str(), &key.name) {
        return Err(Refusal::NeverDeleted {
            kind: key.kind.as_str().to_string(),
            name: key.to_string(),
        });
    }
    within_mass_deletion_guard(plan, allow_mass_deletion)?;
    if change.action != Action::Delete
        || change.executor != Executor::Pbsync
        || !in_plan(plan, change)
    {
        return Err(Refusal::NotPlanned {
            key: key.clone(),
            verb: "delete",
        });
    }
    Ok(())
}

/// Allows deleting `change` of `plan`, given the object as read `now`: [`check_delete`], and
/// an object this instance created (not adopted, not released, not someone else's) that
/// nothing uses, at the moment of deletion.
pub fn permit_delete(
    plan: &Plan,
    change: &Change,
    now: &Now,
    allow_mass_deletion: bool,
) -> Result<DeletePermit, Refusal> {
    check_delete(plan, change, allow_mass_deletion)?;
    let key = &change.key;
    may_delete(key, &now.ownership)?;
    if !now.in_use_by.is_empty() {
        return Err(Refusal::InUse {
            key: key.clone(),
            users: now.in_use_by.clone(),
        });
    }
    Ok(DeletePermit { key: key.clone() })
}

/// Allows releasing (orphaning) `change` of `plan`, given the object's ownership read `now`:
/// an `orphan` change of the plan, of an object this instance manages, adopted or already
/// released (releasing again changes nothing), within the mass-deletion guard (orphaning
/// counts as deleting).
pub fn permit_release(
    plan: &Plan,
    change: &Change,
    now: &Ownership,
    allow_mass_deletion: bool,
) -> Result<ReleasePermit, Refusal> {
    within_mass_deletion_guard(plan, allow_mass_deletion)?;
    if change.action != Action::Orphan || !in_plan(plan, change) {
        return Err(Refusal::NotPlanned {
            key: change.key.clone(),
            verb: "release",
        });
    }
    may_release(&change.key, now)?;
    Ok(ReleasePermit {
        key: change.key.clone(),
    })
}

/// Whether an object with ownership `now` may be deleted by this instance: only what it
/// created (adopted objects are released, never deleted). Targets use it again when they
/// re-read an object after a conflict.
pub fn may_delete(key: &ObjectKey, now: &Ownership) -> Result<(), Refusal> {
    if *now == Ownership::Managed {
        Ok(())
    } else {
        Err(Refusal::NotOurs {
            key: key.clone(),
            verb: "delete",
            now: Described(now.clone()),
        })
    }
}

/// Whether an object with ownership `now` may be released by this instance: what it
/// manages or adopted, or released already (releasing again changes nothing).
pub fn may_release(key: &ObjectKey, now: &Ownership) -> Result<(), Refusal> {
    match now {
        Ownership::Managed | Ownership::Adopted | Ownership::Released => Ok(()),
        Ownership::Foreign { .. } => Err(Refusal::NotOurs {
            key: key.clone(),
            verb: "release",
            now: Described(now.clone()),
        }),
    }
}

/// Whether a create or update of `change` may write over an object whose ownership is `now`
/// (read at the moment of the write, e.g. after a conflict): this instance's objects, objects
/// it released earlier (taken back), and objects nobody manages when the plan adopts them.
/// Another instance's object: never.
pub fn may_write(change: &Change, now: &Ownership) -> Result<(), Refusal> {
    match now {
        Ownership::Managed | Ownership::Adopted | Ownership::Released => Ok(()),
        Ownership::Foreign { owner: Some(owner) } => Err(Refusal::OtherInstance {
            key: change.key.clone(),
            owner: owner.clone(),
        }),
        Ownership::Foreign { owner: None } if change.adopt => Ok(()),
        Ownership::Foreign { owner: None } => Err(Refusal::NotOurs {
            key: change.key.clone(),
            verb: "write",
            now: Described(now.clone()),
        }),
    }
}

/// What the plan does with an existing object the commit declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Adoption {
    /// This instance manages it (created or adopted earlier): compare and update.
    Own,
    /// This instance released it earlier: take it back.
    TakeBack,
    /// Nobody manages it and adoption is enabled: adopt it.
    Adopt,
    /// Left alone: the reason, naming the owner.
    Blocked(String),
}

/// The one adoption rule, for every target alike.
pub(crate) fn adoption(now: &Ownership, adopt: bool) -> Adoption {
    match now {
        Ownership::Managed | Ownership::Adopted => Adoption::Own,
        Ownership::Released => Adoption::TakeBack,
        Ownership::Foreign { owner: Some(o) } => Adoption::Blocked(format!(
            "conflict: exists but it is managed by pbsync instance {o:?}; left alone (adoption never takes another instance's object)"
        )),
        Ownership::Foreign { owner: None } if adopt => Adoption::Adopt,
        Ownership::Foreign { owner: None } => Adoption::Blocked(
            "conflict: exists but it was not created by pbsync; left alone (enable adoption to manage it)".into(),
        ),
    }
}

/// How a revision to apply relates to the last one applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lineage {
    /// The same revision, or nothing applied yet.
    Same,
    /// It descends from the last applied revision.
    Forward,
    /// It is an ancestor of the last applied revision: older.
    Behind,
    /// Neither contains the other (history rewritten, another branch).
    Diverged,
    /// They share no history.
    Unrelated,
    /// The last applied revision is not in this repository (a shallow or partial clone).
    Unknown,
}

impl fmt::Display for Lineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Same => "the same as",
            Self::Forward => "newer than",
            Self::Behind => "older than (an ancestor of)",
            Self::Diverged => "diverged from (neither contains the other)",
            Self::Unrelated => "unrelated to",
            Self::Unknown => {
                "not known to descend from (that revision is not in this repository: fetch it, e.g. git fetch --unshallow, to let pbsync check)"
            }
        })
    }
}

impl Lineage {
    /// True when applying moves the target backwards, sideways or somewhere unknown.
    pub fn is_rollback(self) -> bool {
        !matches!(self, Self::Same | Self::Forward)
    }
}

/// A one-shot apply of `requested` after `applied`: refused when it does not descend from
/// it, unless rollbacks are allowed.
pub fn check_revision(
    requested: &str,
    applied: &str,
    relation: Lineage,
    instance: &str,
    allow_rollback: bool,
) -> Result<(), Refusal> {
    if relation.is_rollback() && !allow_rollback {
        return Err(Refusal::Rollback {
            requested: requested.to_string(),
            applied: applied.to_string(),
            instance: instance.to_string(),
            relation,
        });
    }
    Ok(())
}

/// The mass-deletion guard's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MassDeletion {
    /// Trip when more than this fraction of managed objects would go ...
    pub max_fraction: f64,
    /// ... and that is more than this many objects.
    pub min_objects: usize,
}

impl Default for MassDeletion {
    fn default() -> Self {
        Self {
            max_fraction: 0.5,
            min_objects: 10,
        }
    }
}

/// The mass-deletion guard's verdict on a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardTrip {
    /// Deletions and orphanings planned.
    pub deletions: usize,
    /// Objects this instance manages.
    pub managed: usize,
    /// Managed bundles the plan deletes.
    pub bundles_deleted: usize,
    /// Managed bundles.
    pub bundles_managed: usize,
    /// Why it tripped.
    pub message: String,
}

/// Trips when `changes` delete or orphan every managed ProfileBundle, or more than the
/// thresholds' fraction of the managed objects when that is more than their minimum.
pub(crate) fn mass_deletion(
    changes: &[Change],
    observed: &Observed,
    limits: MassDeletion,
) -> Option<GuardTrip> {
    let managed = observed
        .objects
        .values()
        .filter(|o| o.ownership.is_managed())
        .count();
    let bundles_managed = observed
        .objects
        .iter()
        .filter(|(k, o)| k.kind == Kind::ProfileBundle && o.ownership.is_managed())
        .count();
    let removing = |c: &&Change| matches!(c.action, Action::Delete | Action::Orphan);
    let deletions = changes.iter().filter(removing).count();
    let bundles_deleted = changes
        .iter()
        .filter(removing)
        .filter(|c| c.key.kind == Kind::ProfileBundle)
        .count();
    #[allow(clippy::cast_precision_loss)]
    let too_many =
        deletions > limits.min_objects && deletions as f64 > limits.max_fraction * managed as f64;
    let all_bundles = bundles_managed > 0 && bundles_deleted == bundles_managed;
    if !(too_many || all_bundles) {
        return None;
    }
    let why = if all_bundles {
        format!("it deletes every managed ProfileBundle ({bundles_deleted} of {bundles_managed})")
    } else {
        format!(
            "it deletes or orphans {deletions} of {managed} managed objects (more than {:.0}% and more than {})",
            limits.max_fraction * 100.0,
            limits.min_objects
        )
    };
    Some(GuardTrip {
        deletions,
        managed,
        bundles_deleted,
        bundles_managed,
        message: format!("mass-deletion guard: {why}; apply refuses without --allow-mass-deletion"),
    })
}

/// Refuses a plan over the mass-deletion guard unless allowed.
pub fn within_mass_deletion_guard(plan: &Plan, allow: bool) -> Result<(), Refusal> {
    match &plan.guard {
        Some(trip) if !allow => Err(Refusal::MassDeletion(format!(
            "refusing to apply: {}",
            trip.message
        ))),
        _ => Ok(()),
    }
}

fn in_plan(plan: &Plan, change: &Change) -> bool {
    plan.changes.iter().any(|c| std::ptr::eq(c, change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Phase;

    fn change(action: Action) -> Change {
        Change {
            action,
            phase: Phase::Prune,
            key: ObjectKey::new(Kind::HelmRepository, "team-a", "charts"),
            references: Some(0),
            reasons: Vec::new(),
            source: None,
            diff: Vec::new(),
            adopt: false,
            executor: Executor::Pbsync,
            effective_policy: None,
            observed: None,
        }
    }

    fn plan_of(changes: Vec<Change>) -> Plan {
        let mut p = Plan::invalid("r".into(), Vec::new(), Vec::new());
        p.changes = changes;
        p
    }

    fn other() -> Ownership {
        Ownership::Foreign {
            owner: Some("green".into()),
        }
    }

    #[test]
    fn namespaces_crds_and_state_objects_are_never_deleted() {
        assert!(never_deleted("Namespace", "team-a"));
        assert!(never_deleted(
            "CustomResourceDefinition",
            "profilebundles.spectrocloud.com"
        ));
        assert!(never_deleted("ConfigMap", "pbsync-status-default"));
        assert!(never_deleted("Lease", "pbsync-default"));
        assert!(!never_deleted("ConfigMap", "settings"));
        for kind in Kind::ALL {
            assert!(!never_deleted(kind.as_str(), "x"), "{kind}");
        }
    }

    #[test]
    fn a_delete_is_permitted_only_for_what_this_instance_created_now() {
        let plan = plan_of(vec![change(Action::Delete)]);
        let c = &plan.changes[0];
        let permit =
            permit_delete(&plan, c, &Now::owned(Ownership::Managed), false).expect("permitted");
        assert_eq!(permit.key(), &c.key);
        for now in [
            Ownership::Adopted,
            Ownership::Released,
            other(),
            Ownership::Foreign { owner: None },
        ] {
            let err = permit_delete(&plan, c, &Now::owned(now), false).expect_err("refused");
            assert!(matches!(err, Refusal::NotOurs { .. }), "{err}");
        }
        let used = Now {
            ownership: Ownership::Managed,
            in_use_by: vec!["edge-1".into()],
        };
        assert!(matches!(
            permit_delete(&plan, c, &used, false),
            Err(Refusal::InUse { users, .. }) if users == ["edge-1"]
        ));
    }

    #[test]
    fn a_delete_outside_the_plan_or_not_performed_by_pbsync_is_refused() {
        let plan = plan_of(vec![change(Action::Delete)]);
        let stray = change(Action::Delete);
        assert!(matches!(
            permit_delete(&plan, &stray, &Now::owned(Ownership::Managed), false),
            Err(Refusal::NotPlanned { .. })
        ));
        let mut server = plan_of(vec![change(Action::Delete)]);
        server.changes[0].executor = Executor::Server;
        assert!(matches!(
            permit_delete(
                &server,
                &server.changes[0],
                &Now::owned(Ownership::Managed),
                false
            ),
            Err(Refusal::NotPlanned { .. })
        ));
        let orphan = plan_of(vec![change(Action::Orphan)]);
        assert!(matches!(
            permit_delete(
                &orphan,
                &orphan.changes[0],
                &Now::owned(Ownership::Managed),
                false
            ),
            Err(Refusal::NotPlanned { .. })
        ));
    }

    #[test]
    fn the_mass_deletion_guard_refuses_deletes_and_releases_until_allowed() {
        let mut plan = plan_of(vec![change(Action::Delete), change(Action::Orphan)]);
        plan.guard = Some(GuardTrip {
            deletions: 2,
            managed: 2,
            bundles_deleted: 0,
            bundles_managed: 0,
            message: "too much".into(),
        });
        let (d, o) = (&plan.changes[0], &plan.changes[1]);
        assert!(matches!(
            permit_delete(&plan, d, &Now::owned(Ownership::Managed), false),
            Err(Refusal::MassDeletion(_))
        ));
        assert!(matches!(
            permit_release(&plan, o, &Ownership::Managed, false),
            Err(Refusal::MassDeletion(_))
        ));
        assert!(permit_delete(&plan, d, &Now::owned(Ownership::Managed), true).is_ok());
        assert!(permit_release(&plan, o, &Ownership::Managed, true).is_ok());
    }

    #[test]
    fn a_release_needs_the_object_to_be_this_instances() {
        let plan = plan_of(vec![change(Action::Orphan)]);
        let c = &plan.changes[0];
        for now in [Ownership::Managed, Ownership::Adopted, Ownership::Released] {
            assert!(permit_release(&plan, c, &now, false).is_ok(), "{now:?}");
        }
        assert!(matches!(
            permit_release(&plan, c, &other(), false),
            Err(Refusal::NotOurs { .. })
        ));
    }

    #[test]
    fn adoption_never_takes_another_instances_object() {
        assert!(
            matches!(adoption(&other(), true), Adoption::Blocked(why) if why.contains("\"green\""))
        );
        assert!(matches!(adoption(&other(), false), Adoption::Blocked(_)));
        assert_eq!(
            adoption(&Ownership::Foreign { owner: None }, true),
            Adoption::Adopt
        );
        assert!(matches!(
            adoption(&Ownership::Foreign { owner: None }, false),
            Adoption::Blocked(_)
        ));
        assert_eq!(adoption(&Ownership::Released, false), Adoption::TakeBack);
        assert_eq!(adoption(&Ownership::Adopted, false), Adoption::Own);
        let mut c = change(Action::Update);
        c.adopt = true;
        assert!(matches!(
            may_write(&c, &other()),
            Err(Refusal::OtherInstance { owner, .. }) if owner == "green"
        ));
        assert!(may_write(&c, &Ownership::Foreign { owner: None }).is_ok());
        c.adopt = false;
        assert!(may_write(&c, &Ownership::Foreign { owner: None }).is_err());
    }

    #[test]
    fn a_revision_that_does_not_descend_from_the_applied_one_is_refused_unless_allowed() {
        for ok in [Lineage::Same, Lineage::Forward] {
            assert!(check_revision("b", "a", ok, "default", false).is_ok());
        }
        for back in [
            Lineage::Behind,
            Lineage::Diverged,
            Lineage::Unrelated,
            Lineage::Unknown,
        ] {
            let err = check_revision("old", "new", back, "default", false).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains("old") && text.contains("new"), "{text}");
            assert!(check_revision("old", "new", back, "default", true).is_ok());
        }
    }
}
