//! The bundle rules of the domain contract (§3, rules 1–6): references resolve, and each
//! bundle holds what its type allows. Pure: no I/O.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{
    BundleType, DesiredState, Kind, Object, ObjectKey, ProfileType, Ref, Rule, Spec, Violation,
    WorkloadType,
};

/// What the live side holds that a repository may reference without declaring: cluster
/// profiles (with their type) and definitions.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// False when no target was read (`pbsync validate` without `--target`): external
    /// references are then reported as warnings and checked at plan time.
    pub available: bool,
    /// Live cluster profiles and their type.
    pub cluster_profiles: HashMap<ObjectKey, ProfileType>,
    /// Live component, trait and policy definitions.
    pub definitions: HashSet<ObjectKey>,
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
        if k.kind == Kind::ClusterProfile {
            if let Some(t) = catalog.cluster_profiles.get(k) {
                return Resolution::Live(k.clone(), Some(*t));
            }
        } else if catalog.definitions.contains(k) {
            return Resolution::Live(k.clone(), None);
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
                    let where_ = if r.primary().kind.may_be_external() && !r.ordering_only {
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
