//! The bundle rules of the domain contract (§3, rules 1–6): references resolve, and each
//! bundle holds what its type allows. Pure: no I/O.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{
    BundleType, DesiredState, Kind, Object, ObjectKey, ProfileType, Ref, Rule, Spec, Violation,
    WorkloadType,
};

/// What the live side holds that a repository may reference without declaring: cluster
/// profiles (with their type), definitions, and the ProfileBundles and ComputePools that pools
/// and deployments are built on, whoever owns them.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// False when no target was read (`pbsync validate` without `--target`, offline
    /// pull-request plans): external references are then reported as warnings and checked at
    /// plan time.
    pub available: bool,
    /// Live cluster profiles and their type.
    pub cluster_profiles: HashMap<ObjectKey, ProfileType>,
    /// Live component, trait and policy definitions.
    pub definitions: HashSet<ObjectKey>,
    /// Live ProfileBundles and ComputePools this instance does not manage (another pbsync
    /// instance's, a person's, PaletteAI's), as read back from the target: `None` when the
    /// object exists but has no shape pbsync reads. This instance's own are left out: one
    /// that the commit does not declare is leaving, so nothing may be built on it.
    pub roots: HashMap<ObjectKey, Option<Object>>,
    /// Live ProfileBundles and ComputePools the commit names without declaring that this
    /// instance manages: they leave with this commit, so they resolve nowhere.
    pub leaving: HashSet<ObjectKey>,
    /// Types of live workload profiles, for the rules on live bundles.
    pub workload_profiles: HashMap<ObjectKey, WorkloadType>,
    /// Who holds each live object above, as the plan says it ("managed by pbsync instance
    /// platform", "not managed by pbsync").
    pub holders: HashMap<ObjectKey, String>,
}

impl Catalog {
    /// The live bundle or pool with this key, when its shape was read.
    pub fn live_object(&self, key: &ObjectKey) -> Option<&Object> {
        self.roots.get(key).and_then(Option::as_ref)
    }

    /// Who holds a live object ("managed by pbsync instance platform").
    pub fn holder(&self, key: &ObjectKey) -> &str {
        self.holders
            .get(key)
            .map_or("held by an unknown owner", String::as_str)
    }

    /// The type of a workload profile that lives only on the hub.
    pub(crate) fn workload_type(&self, key: &ObjectKey) -> Option<WorkloadType> {
        self.workload_profiles.get(key).copied()
    }
}

/// Where a reference that the repository does not declare was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Found {
    /// Live: in Palette (cluster profiles) or on the hub (everything else).
    Live {
        /// Who holds it ("managed by pbsync instance platform").
        holder: String,
    },
    /// Not looked up: no live state was read (validate without a target, offline plans).
    Unchecked,
}

/// What a reference points at.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution<'a> {
    /// An object of the repository.
    Repo(&'a Object),
    /// An object that exists only live (never changed by pbsync), with its profile type for
    /// cluster profiles.
    Live(ObjectKey, Option<ProfileType>),
    /// Not declared; live state was not read, so existence is not known yet.
    Unchecked(ObjectKey),
    /// Declared nowhere.
    Missing,
}

/// Resolves `r` against the repository, then (for kinds that may be external) the catalogue.
pub fn resolve<'a>(desired: &'a DesiredState, r: &Ref, catalog: &Catalog) -> Resolution<'a> {
    if let Some(obj) = r.candidates.iter().find_map(|k| desired.get(k)) {
        return Resolution::Repo(obj);
    }
    let primary = r.primary();
    if !primary.kind.may_be_external() || r.ordering_only {
        return Resolution::Missing;
    }
    if !catalog.available {
        return Resolution::Unchecked(primary.clone());
    }
    for k in &r.candidates {
        match k.kind {
            Kind::ClusterProfile => {
                if let Some(t) = catalog.cluster_profiles.get(k) {
                    return Resolution::Live(k.clone(), Some(*t));
                }
            }
            Kind::ProfileBundle | Kind::ComputePool => {
                if catalog.roots.contains_key(k) {
                    return Resolution::Live(k.clone(), None);
                }
            }
            _ => {
                if catalog.definitions.contains(k) {
                    return Resolution::Live(k.clone(), None);
                }
            }
        }
    }
    Resolution::Missing
}

/// Checks rules 1–6 on every object. Returns the violations and the warnings (references
/// left to be checked against live state).
pub fn validate(desired: &DesiredState, catalog: &Catalog) -> (Vec<Violation>, Vec<String>) {
    let mut violations = Vec::new();
    let mut unchecked: BTreeMap<ObjectKey, usize> = BTreeMap::new();
    for obj in &desired.objects {
        for r in obj.refs() {
            let rejected = || r.candidates.iter().any(|k| desired.is_rejected(k));
            match resolve(desired, r, catalog) {
                Resolution::Missing if !rejected() => {
                    let loc = obj.location.with_line(r.line);
                    let leaving = r.candidates.iter().any(|k| catalog.leaving.contains(k));
                    let where_ = if leaving {
                        "no longer declared in the repository, and this instance's live copy is deleted with this commit"
                    } else if r.primary().kind.may_be_external() && !r.ordering_only {
                        if r.primary().kind.is_palette() {
                            "neither declared in the repository nor found in Palette"
                        } else {
                            "neither declared in the repository nor found on the hub"
                        }
                    } else {
                        "not declared in the repository"
                    };
                    let tried = if r.candidates.len() > 1 {
                        format!(
                            " (looked in {})",
                            r.candidates
                                .iter()
                                .map(|k| &*k.namespace)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    } else {
                        String::new()
                    };
                    // A pool's bundle cannot go while the pool stays (domain §4): say so.
                    let hint = if obj.key.kind == Kind::ComputePool
                        && r.primary().kind == Kind::ProfileBundle
                    {
                        format!(
                            "; {} is deployed from it, so the bundle cannot be deleted while the pool stays: keep the bundle, or remove the pool in the same commit",
                            obj.key
                        )
                    } else {
                        String::new()
                    };
                    violations.push(Violation::at(
                        &loc,
                        Rule::UnresolvedReference,
                        format!("{} {} is {where_}{tried}{hint}", r.field, r.primary()),
                    ));
                }
                Resolution::Unchecked(k) if !rejected() => {
                    *unchecked.entry(k).or_default() += 1;
                }
                Resolution::Missing
                | Resolution::Unchecked(_)
                | Resolution::Repo(_)
                | Resolution::Live(..) => {}
            }
        }
        if let Spec::Bundle(_) = obj.spec {
            check_bundle(desired, obj, catalog, &mut violations);
        }
    }
    violations.extend(super::workflow::check(desired, catalog));
    let warnings = unchecked
        .into_iter()
        .map(|(k, n)| {
            format!(
                "{k} (referenced {n} time(s)) is not declared in the repository; it must exist live and is checked against the target at plan time"
            )
        })
        .collect();
    (violations, warnings)
}

fn check_bundle(
    desired: &DesiredState,
    obj: &Object,
    catalog: &Catalog,
    violations: &mut Vec<Violation>,
) {
    let Some(bundle) = obj.as_bundle() else {
        return;
    };
    let at = |line: u32| obj.location.with_line(line);
    let name = &obj.key;
    // Cluster profile types; None when the profile is external and live state was not read.
    let profiles: Vec<(&Ref, Option<ProfileType>)> = bundle
        .cluster_profiles
        .iter()
        .map(|r| {
            let t = match resolve(desired, r, catalog) {
                Resolution::Repo(o) => match &o.spec {
                    Spec::ClusterProfile(c) => Some(c.profile_type),
                    _ => None,
                },
                Resolution::Live(_, t) => t,
                Resolution::Unchecked(_) | Resolution::Missing => None,
            };
            (r, t)
        })
        .collect();
    let all_profile_types_known = profiles.iter().all(|(_, t)| t.is_some());
    let workloads: Vec<(&Ref, Option<WorkloadType>)> = bundle
        .workload_profiles
        .iter()
        .map(|r| {
            let t = match resolve(desired, r, catalog) {
                Resolution::Repo(o) => match &o.spec {
                    Spec::WorkloadProfile(w) => Some(w.workload_type),
                    _ => None,
                },
                _ => None,
            };
            (r, t)
        })
        .collect();
    let infra_profiles: Vec<&Ref> = profiles
        .iter()
        .filter(|(_, t)| t.is_some_and(ProfileType::is_infrastructure))
        .map(|(r, _)| *r)
        .collect();
    // A workload profile that does not resolve is already a rule 6 violation; do not also
    // claim the bundle has no Application or Model profile when that one may be it.
    let all_workload_types_known = workloads.iter().all(|(_, t)| t.is_some());
    let has_app_or_model = workloads
        .iter()
        .any(|(_, t)| matches!(t, Some(WorkloadType::Application | WorkloadType::Model)));
    let has = |w: WorkloadType| {
        workloads
            .iter()
            .find(|(_, t)| *t == Some(w))
            .map(|(r, _)| *r)
    };

    for (r, t) in &profiles {
        if *t == Some(ProfileType::System) {
            violations.push(Violation::at(
                &at(r.line),
                Rule::OneInfrastructureProfile,
                format!("{name}: cluster profile {} is a Palette system profile, which no bundle may hold", r.primary()),
            ));
        }
    }
    match bundle.bundle_type {
        BundleType::Application => {
            for (r, _) in &profiles {
                violations.push(Violation::at(
                    &at(r.line),
                    Rule::ApplicationBundle,
                    format!(
                        "{name}: an Application bundle cannot hold cluster profiles ({})",
                        r.primary()
                    ),
                ));
            }
            for (r, t) in &workloads {
                if *t == Some(WorkloadType::Infrastructure) {
                    violations.push(Violation::at(
                        &at(r.line),
                        Rule::ApplicationBundle,
                        format!("{name}: an Application bundle holds only Application or Model workload profiles, not Infrastructure {}", r.primary()),
                    ));
                }
            }
            if !has_app_or_model && all_workload_types_known {
                violations.push(Violation::at(
                    &obj.location,
                    Rule::ApplicationBundle,
                    format!("{name}: an Application bundle needs at least one Application or Model workload profile"),
                ));
            }
        }
        BundleType::Infrastructure => {
            if infra_profiles.is_empty() && all_profile_types_known {
                violations.push(Violation::at(
                    &obj.location,
                    Rule::InfrastructureBundle,
                    format!("{name}: an Infrastructure bundle needs a cluster profile of type Infrastructure or Full"),
                ));
            }
            for (r, t) in &workloads {
                if matches!(t, Some(WorkloadType::Application | WorkloadType::Model)) {
                    violations.push(Violation::at(
                        &at(r.line),
                        Rule::InfrastructureBundle,
                        format!("{name}: an Infrastructure bundle holds only Infrastructure workload profiles, not {:?} {}", t.expect("matched Some"), r.primary()),
                    ));
                }
            }
        }
        BundleType::Fullstack => {
            if infra_profiles.is_empty() && all_profile_types_known {
                violations.push(Violation::at(
                    &obj.location,
                    Rule::FullstackBundle,
                    format!("{name}: a Fullstack bundle needs a cluster profile of type Infrastructure or Full"),
                ));
            }
            if !has_app_or_model && all_workload_types_known {
                violations.push(Violation::at(
                    &obj.location,
                    Rule::FullstackBundle,
                    format!("{name}: a Fullstack bundle needs at least one Application or Model workload profile"),
                ));
            }
        }
    }
    if let (Some(app), Some(model)) = (has(WorkloadType::Application), has(WorkloadType::Model)) {
        violations.push(Violation::at(
            &at(model.line),
            Rule::ApplicationAndModel,
            format!(
                "{name}: a bundle deploys applications or models, never both ({} is Application, {} is Model)",
                app.primary(),
                model.primary()
            ),
        ));
    }
    if infra_profiles.len() > 1 {
        let names: Vec<String> = infra_profiles.iter().map(|r| r.primary().short()).collect();
        violations.push(Violation::at(
            &at(infra_profiles[1].line),
            Rule::OneInfrastructureProfile,
            format!(
                "{name}: a bundle holds at most one Infrastructure or Full cluster profile, found {}: {}",
                names.len(),
                names.join(", ")
            ),
        ));
    }
}
