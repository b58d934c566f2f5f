//! The seeds' workflow rules (domain §3, rules 7 and 8): which bundle types a Compute Pool, an
//! App Deployment and a Model Deployment accept on Dedicated and Shared pools, the
//! inference-engine match between a Model Deployment and the Shared pool it targets, and which
//! parts of a Fullstack bundle a deployment deploys. Pure: no I/O.
//!
//! The tables are the Profile Bundles seed's "Supported Workflows", "Mixing and Matching
//! Profile Bundle Types" and "Fullstack Profile Bundle Deployment Behavior". A pool or bundle
//! resolves in the repository first, then live (whoever owns it: a platform team's pbsync
//! instance, a person, PaletteAI): the rules hold against a live pool, the live bundle it was
//! built from and that bundle's labels as they do against declared ones. Without live state
//! (validate without a target) such references are not checked here; rule 6 warns about them.

use std::fmt;

use serde::Serialize;

use super::{
    AiWorkload, BundleType, Catalog, DeploymentType, DesiredState, INFERENCE_ENGINE_LABEL, Object,
    ObjectKey, PoolVariant, Ref, Resolution, Rule, Spec, Violation, WorkloadType, resolve,
};

/// The seed's "Deployment Type" column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workflow {
    /// A ComputePool.
    ComputePool,
    /// An AIWorkload labelled `application`.
    AppDeployment,
    /// An AIWorkload labelled `model`.
    ModelDeployment,
}

impl Workflow {
    /// The seed's name.
    pub(crate) fn seed_name(self) -> &'static str {
        match self {
            Self::ComputePool => "Compute Pool",
            Self::AppDeployment => "App Deployment",
            Self::ModelDeployment => "Model Deployment",
        }
    }

    fn with_article(self) -> &'static str {
        match self {
            Self::ComputePool => "a Compute Pool",
            Self::AppDeployment => "an App Deployment",
            Self::ModelDeployment => "a Model Deployment",
        }
    }

    /// The workflow of an AIWorkload's deployment type.
    pub fn of(t: DeploymentType) -> Self {
        match t {
            DeploymentType::Application => Self::AppDeployment,
            DeploymentType::Model => Self::ModelDeployment,
        }
    }

    /// The workload profile type an App or Model Deployment deploys.
    fn workload_type(self) -> Option<WorkloadType> {
        match self {
            Self::ComputePool => None,
            Self::AppDeployment => Some(WorkloadType::Application),
            Self::ModelDeployment => Some(WorkloadType::Model),
        }
    }
}

impl fmt::Display for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.seed_name())
    }
}

fn variant_name(v: PoolVariant) -> &'static str {
    match v {
        PoolVariant::Dedicated => "Dedicated",
        PoolVariant::Shared => "Shared",
    }
}

fn type_name(t: BundleType) -> &'static str {
    match t {
        BundleType::Application => "Application",
        BundleType::Infrastructure => "Infrastructure",
        BundleType::Fullstack => "Fullstack",
    }
}

fn with_article(t: BundleType) -> &'static str {
    match t {
        BundleType::Application => "an Application",
        BundleType::Infrastructure => "an Infrastructure",
        BundleType::Fullstack => "a Fullstack",
    }
}

/// The bundle combinations a workflow accepts on a pool type: the seed's "Supported
/// Workflows" row first (the primary workflow), then its "Mixing and Matching" row.
pub fn accepted(workflow: Workflow, pool: PoolVariant) -> &'static [&'static [BundleType]] {
    use BundleType::{Application, Fullstack, Infrastructure};
    match (workflow, pool) {
        (Workflow::ComputePool, _) => &[&[Infrastructure], &[Fullstack]],
        (Workflow::AppDeployment | Workflow::ModelDeployment, PoolVariant::Dedicated) => {
            &[&[Fullstack], &[Infrastructure, Application]]
        }
        (Workflow::AppDeployment | Workflow::ModelDeployment, PoolVariant::Shared) => {
            &[&[Application], &[Fullstack]]
        }
    }
}

/// True when `bundle` is the seed's "Supported Workflows" type for the workflow, i.e. the
/// bundle is used in its primary workflow.
pub(crate) fn is_primary(workflow: Workflow, pool: PoolVariant, bundle: BundleType) -> bool {
    accepted(workflow, pool)[0] == [bundle]
}

fn render_accepted(workflow: Workflow, pool: PoolVariant) -> String {
    accepted(workflow, pool)
        .iter()
        .map(|c| {
            c.iter()
                .map(|t| type_name(*t))
                .collect::<Vec<_>>()
                .join(" + ")
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// What is wrong with the bundle types of one deployment, in the order they are referenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The bundle at `index` has a type no accepted combination holds.
    NotAccepted {
        /// Position of the reference.
        index: usize,
    },
    /// The bundle at `index` is beyond the closest accepted combination.
    Extra {
        /// Position of the reference.
        index: usize,
    },
    /// The closest accepted combination also needs bundles of these types.
    Missing {
        /// The types missing, in table order.
        types: Vec<BundleType>,
    },
}

/// Checks the bundle types of one deployment against the workflow tables. `None` when they
/// are one accepted combination (in any order).
pub(crate) fn check_combination(
    workflow: Workflow,
    pool: PoolVariant,
    types: &[BundleType],
) -> Option<Mismatch> {
    let combos = accepted(workflow, pool);
    if let Some(index) = types
        .iter()
        .position(|t| !combos.iter().any(|c| c.contains(t)))
    {
        return Some(Mismatch::NotAccepted { index });
    }
    // The closest combination: fewest bundles too many plus too few; ties go to table order.
    let mut best: Option<(usize, Vec<usize>, Vec<BundleType>)> = None;
    for combo in combos {
        let mut remaining: Vec<BundleType> = combo.to_vec();
        let mut extra = Vec::new();
        for (i, t) in types.iter().enumerate() {
            match remaining.iter().position(|r| r == t) {
                Some(p) => {
                    remaining.remove(p);
                }
                None => extra.push(i),
            }
        }
        let cost = extra.len() + remaining.len();
        if cost == 0 {
            return None;
        }
        if best.as_ref().is_none_or(|(c, ..)| cost < *c) {
            best = Some((cost, extra, remaining));
        }
    }
    let (_, extra, missing) = best?;
    Some(match extra.first() {
        Some(&index) => Mismatch::Extra { index },
        None => Mismatch::Missing { types: missing },
    })
}

/// The seed's "Fullstack Profile Bundle Deployment Behavior" row: which parts of a Fullstack
/// bundle a workflow deploys (true) or ignores (false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullstackFilter {
    /// Cluster profiles (Infrastructure or Full, and Add-on).
    pub cluster_profiles: bool,
    /// Application workload profiles.
    pub application: bool,
    /// Model workload profiles.
    pub model: bool,
    /// Infrastructure workload profiles.
    pub infrastructure: bool,
}

/// The "Fullstack Profile Bundle Deployment Behavior" table.
pub fn fullstack_filter(workflow: Workflow, pool: PoolVariant) -> FullstackFilter {
    let row = |cluster_profiles, application, model, infrastructure| FullstackFilter {
        cluster_profiles,
        application,
        model,
        infrastructure,
    };
    match (workflow, pool) {
        (Workflow::ComputePool, PoolVariant::Dedicated | PoolVariant::Shared) => {
            row(true, false, false, true)
        }
        (Workflow::AppDeployment, PoolVariant::Dedicated) => row(true, true, false, true),
        (Workflow::AppDeployment, PoolVariant::Shared) => row(false, true, false, false),
        (Workflow::ModelDeployment, PoolVariant::Dedicated) => row(true, false, true, true),
        (Workflow::ModelDeployment, PoolVariant::Shared) => row(false, false, true, false),
    }
}

/// A column of the Fullstack table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// A cluster profile.
    ClusterProfile,
    /// An Application workload profile.
    ApplicationWorkloadProfile,
    /// A Model workload profile.
    ModelWorkloadProfile,
    /// An Infrastructure workload profile.
    InfrastructureWorkloadProfile,
}

impl Part {
    /// How the plan names the column.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClusterProfile => "cluster profile",
            Self::ApplicationWorkloadProfile => "Application workload profile",
            Self::ModelWorkloadProfile => "Model workload profile",
            Self::InfrastructureWorkloadProfile => "Infrastructure workload profile",
        }
    }

    fn of(t: WorkloadType) -> Self {
        match t {
            WorkloadType::Application => Self::ApplicationWorkloadProfile,
            WorkloadType::Model => Self::ModelWorkloadProfile,
            WorkloadType::Infrastructure => Self::InfrastructureWorkloadProfile,
        }
    }

    fn kept_by(self, f: FullstackFilter) -> bool {
        match self {
            Self::ClusterProfile => f.cluster_profiles,
            Self::ApplicationWorkloadProfile => f.application,
            Self::ModelWorkloadProfile => f.model,
            Self::InfrastructureWorkloadProfile => f.infrastructure,
        }
    }
}

/// One part of a Fullstack bundle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PartRef {
    /// Its column in the table.
    pub part: Part,
    /// The cluster profile or workload profile.
    pub key: ObjectKey,
}

/// What one deployment takes from one Fullstack bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentParts {
    /// The ComputePool or AIWorkload.
    pub deployment: ObjectKey,
    /// Its workflow.
    pub workflow: Workflow,
    /// The pool type: the pool's own variant, Shared for an AIWorkload onto an existing pool,
    /// Dedicated for an AIWorkload that creates its pool.
    pub pool: PoolVariant,
    /// The Fullstack bundle.
    pub bundle: ObjectKey,
    /// True in the bundle's primary workflow (App or Model Deployment, Dedicated pool).
    pub primary: bool,
    /// Parts that deploy, in table column order, then reference order.
    pub deployed: Vec<PartRef>,
    /// Parts PaletteAI ignores in this workflow.
    pub ignored: Vec<PartRef>,
}

/// Which parts of each Fullstack bundle each deployment of the commit deploys and ignores,
/// sorted by deployment then bundle. Workload profiles whose type is not known (not in the
/// repository) are left out; a valid commit has none.
pub fn fullstack_parts(desired: &DesiredState) -> Vec<DeploymentParts> {
    let catalog = Catalog::default();
    let mut out = Vec::new();
    for obj in &desired.objects {
        let Some((workflow, pool, refs)) = deployment_of(obj) else {
            continue;
        };
        for r in refs {
            let Some(bundle_obj) = repo_object(desired, r, &catalog) else {
                continue;
            };
            let Some(bundle) = bundle_obj.as_bundle() else {
                continue;
            };
            if bundle.bundle_type != BundleType::Fullstack {
                continue;
            }
            let filter = fullstack_filter(workflow, pool);
            let mut parts: Vec<PartRef> = bundle
                .cluster_profiles
                .iter()
                .map(|r| PartRef {
                    part: Part::ClusterProfile,
                    key: r.primary().clone(),
                })
                .collect();
            for w in &bundle.workload_profiles {
                if let Some((key, t)) = workload_type(desired, w, &catalog) {
                    parts.push(PartRef {
                        part: Part::of(t),
                        key,
                    });
                }
            }
            // Stable: column order first, reference order within a column.
            parts.sort_by_key(|p| p.part);
            let (deployed, ignored) = parts.into_iter().partition(|p| p.part.kept_by(filter));
            out.push(DeploymentParts {
                deployment: obj.key.clone(),
                workflow,
                pool,
                bundle: bundle_obj.key.clone(),
                primary: is_primary(workflow, pool, BundleType::Fullstack),
                deployed,
                ignored,
            });
        }
    }
    out.sort_by(|a, b| {
        a.deployment
            .cmp(&b.deployment)
            .then_with(|| a.bundle.cmp(&b.bundle))
    });
    out.dedup_by(|a, b| a.deployment == b.deployment && a.bundle == b.bundle);
    out
}

/// The workflow, pool type and bundle references of a ComputePool or AIWorkload.
fn deployment_of(obj: &Object) -> Option<(Workflow, PoolVariant, Vec<&Ref>)> {
    match &obj.spec {
        Spec::ComputePool(p) => Some((Workflow::ComputePool, p.variant, vec![&p.bundle])),
        Spec::AiWorkload(w) => Some((
            Workflow::of(w.deployment_type),
            target_variant(w),
            w.bundles.iter().collect(),
        )),
        _ => None,
    }
}

/// The pool type an AIWorkload deploys onto: a new Dedicated pool, or an existing one, which
/// the rules require to be Shared (checked on its own, at the pool reference).
fn target_variant(w: &AiWorkload) -> PoolVariant {
    if w.pool.is_some() {
        PoolVariant::Shared
    } else {
        PoolVariant::Dedicated
    }
}

fn repo_object<'a>(desired: &'a DesiredState, r: &Ref, catalog: &Catalog) -> Option<&'a Object> {
    match resolve(desired, r, catalog) {
        Resolution::Repo(o) => Some(o),
        Resolution::Live(..) | Resolution::Unchecked(_) | Resolution::Missing => None,
    }
}

/// A pool or bundle as the rules see it: declared in the repository, or live.
#[derive(Clone, Copy)]
struct Named<'a> {
    object: &'a Object,
    /// Who holds it, when it is live (not declared in the repository).
    live: Option<&'a str>,
}

impl Named<'_> {
    /// Its key, saying where it lives when that is not the repository.
    fn shown(&self) -> String {
        match self.live {
            None => self.object.key.to_string(),
            Some(holder) => format!("{} (on the hub, {holder})", self.object.key),
        }
    }
}

/// The object a reference names: in the repository, or live (its shape read back).
fn object_of<'a>(desired: &'a DesiredState, r: &Ref, catalog: &'a Catalog) -> Option<Named<'a>> {
    match resolve(desired, r, catalog) {
        Resolution::Repo(object) => Some(Named { object, live: None }),
        Resolution::Live(k, _) => catalog.live_object(&k).map(|object| Named {
            object,
            live: Some(catalog.holder(&k)),
        }),
        Resolution::Unchecked(_) | Resolution::Missing => None,
    }
}

fn workload_type(
    desired: &DesiredState,
    r: &Ref,
    catalog: &Catalog,
) -> Option<(ObjectKey, WorkloadType)> {
    if let Some(o) = repo_object(desired, r, catalog) {
        return match &o.spec {
            Spec::WorkloadProfile(w) => Some((o.key.clone(), w.workload_type)),
            _ => None,
        };
    }
    // A live bundle's workload profiles live on the hub too.
    r.candidates
        .iter()
        .find_map(|k| catalog.workload_type(k).map(|t| (k.clone(), t)))
}

/// The Application or Model type of a bundle's workload profiles, when known (rule 4 keeps a
/// bundle from holding both).
fn app_or_model(desired: &DesiredState, obj: &Object, catalog: &Catalog) -> Option<WorkloadType> {
    let bundle = obj.as_bundle()?;
    bundle
        .workload_profiles
        .iter()
        .filter_map(|r| workload_type(desired, r, catalog))
        .map(|(_, t)| t)
        .find(|t| matches!(t, WorkloadType::Application | WorkloadType::Model))
}

fn engine(v: Option<&String>) -> String {
    v.map_or_else(|| "not set".to_string(), |v| format!("{v:?}"))
}

/// Checks rules 7 and 8 on every ComputePool and AIWorkload of the commit.
pub fn check(desired: &DesiredState, catalog: &Catalog) -> Vec<Violation> {
    let mut violations = Vec::new();
    for obj in &desired.objects {
        let Some((workflow, pool, refs)) = deployment_of(obj) else {
            continue;
        };
        let at = |line: u32| obj.location.with_line(line);
        let name = &obj.key;
        let bundles: Vec<(&Ref, Option<Named<'_>>)> = refs
            .iter()
            .map(|r| {
                let o = object_of(desired, r, catalog).filter(|o| o.object.as_bundle().is_some());
                (*r, o)
            })
            .collect();
        let known: Vec<(&Ref, Named<'_>, BundleType)> = bundles
            .iter()
            .filter_map(|(r, o)| {
                o.and_then(|o| o.object.as_bundle().map(|b| (*r, o, b.bundle_type)))
            })
            .collect();
        let where_ = match workflow {
            Workflow::ComputePool => {
                format!("{} ({})", workflow.with_article(), variant_name(pool))
            }
            _ if pool == PoolVariant::Dedicated => {
                format!("{} on a new Dedicated pool", workflow.with_article())
            }
            _ => format!("{} onto a Shared pool", workflow.with_article()),
        };
        // Rule 8, the tables: only when every bundle resolved (rule 6 reports the others).
        if known.len() == bundles.len() {
            let types: Vec<BundleType> = known.iter().map(|(_, _, t)| *t).collect();
            let takes = format!("{where_} takes {} bundles", render_accepted(workflow, pool));
            match check_combination(workflow, pool, &types) {
                None => {}
                Some(Mismatch::NotAccepted { index }) => {
                    let (r, o, t) = known[index];
                    let why = match (workflow, t) {
                        (Workflow::ComputePool, _) => {
                            "; a pool is built from the cluster profiles of an Infrastructure or Fullstack bundle"
                        }
                        (_, BundleType::Infrastructure) => {
                            "; the existing pool already provides the infrastructure"
                        }
                        _ => "",
                    };
                    violations.push(Violation::at(
                        &at(r.line),
                        Rule::Workflow,
                        format!(
                            "{name}: {takes}; {} is {} bundle{why}",
                            o.shown(),
                            with_article(t)
                        ),
                    ));
                }
                Some(Mismatch::Extra { index }) => {
                    let (r, o, t) = known[index];
                    violations.push(Violation::at(
                        &at(r.line),
                        Rule::Workflow,
                        format!(
                            "{name}: {takes}; {} ({}) is one bundle too many",
                            o.shown(),
                            type_name(t)
                        ),
                    ));
                }
                Some(Mismatch::Missing { types: missing }) => {
                    if let Some((r, _, _)) = known.first() {
                        let have: Vec<String> = known
                            .iter()
                            .map(|(_, o, t)| format!("{} ({})", o.shown(), type_name(*t)))
                            .collect();
                        let need: Vec<&str> = missing.iter().map(|t| with_article(*t)).collect();
                        violations.push(Violation::at(
                            &at(r.line),
                            Rule::Workflow,
                            format!(
                                "{name}: {takes}; {} also needs {} bundle beside it",
                                have.join(", "),
                                need.join(" and ")
                            ),
                        ));
                    }
                }
            }
        }
        // Rule 8, the seed's core requirement: an App Deployment deploys Application workload
        // profiles, a Model Deployment Model ones.
        if let Some(want) = workflow.workload_type() {
            for (r, o, t) in &known {
                if *t == BundleType::Infrastructure {
                    continue;
                }
                match app_or_model(desired, o.object, catalog) {
                    Some(got) if got != want => {
                        violations.push(Violation::at(
                            &at(r.line),
                            Rule::Workflow,
                            format!(
                                "{name}: {} deploys {want:?} workload profiles, but {} holds {got:?} workload profiles (label {} decides the deployment type)",
                                workflow.with_article(),
                                o.shown(),
                                super::AIWORKLOAD_TYPE_LABEL,
                            ),
                        ));
                    }
                    _ => {}
                }
            }
        }
        // An AIWorkload onto an existing pool: the pool must be Shared, and a Model
        // Deployment's bundles must run the pool's inference engine (rule 7).
        if let Spec::AiWorkload(w) = &obj.spec {
            let Some(pool_ref) = &w.pool else {
                continue;
            };
            let Some(pool) = object_of(desired, pool_ref, catalog) else {
                continue;
            };
            let Spec::ComputePool(p) = &pool.object.spec else {
                continue;
            };
            if p.variant != PoolVariant::Shared {
                violations.push(Violation::at(
                    &at(pool_ref.line),
                    Rule::Workflow,
                    format!(
                        "{name}: a deployment onto an existing pool needs a Shared pool, but {} is {}; a Dedicated pool is created by and belongs to one deployment",
                        pool.shown(),
                        variant_name(p.variant)
                    ),
                ));
                continue;
            }
            if workflow != Workflow::ModelDeployment {
                continue;
            }
            let Some(infra) = object_of(desired, &p.bundle, catalog) else {
                continue;
            };
            let Some(infra_bundle) = infra.object.as_bundle() else {
                continue;
            };
            for (r, o, t) in &known {
                if *t == BundleType::Infrastructure {
                    continue;
                }
                let Some(b) = o.object.as_bundle() else {
                    continue;
                };
                if b.inference_engine != infra_bundle.inference_engine {
                    violations.push(Violation::at(
                        &at(r.line),
                        Rule::InferenceEngine,
                        format!(
                            "{name}: {INFERENCE_ENGINE_LABEL} of the model's {} is {}, but of {}, the bundle of {}, it is {}; a Model Deployment needs a pool running its inference engine",
                            o.shown(),
                            engine(b.inference_engine.as_ref()),
                            infra.shown(),
                            pool.shown(),
                            engine(infra_bundle.inference_engine.as_ref()),
                        ),
                    ));
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{Limits, parse_file};
    use crate::snapshot::{Content, SourceFile};

    use BundleType::{Application, Fullstack, Infrastructure};
    use PoolVariant::{Dedicated, Shared};
    use Workflow::{AppDeployment, ComputePool, ModelDeployment};

    fn filter(cp: bool, app: bool, model: bool, infra: bool) -> FullstackFilter {
        FullstackFilter {
            cluster_profiles: cp,
            application: app,
            model,
            infrastructure: infra,
        }
    }

    // The six rows of "Fullstack Profile Bundle Deployment Behavior".

    #[test]
    fn a_dedicated_compute_pool_deploys_cluster_profiles_and_infrastructure_profiles_only() {
        assert_eq!(
            fullstack_filter(ComputePool, Dedicated),
            filter(true, false, false, true)
        );
    }

    #[test]
    fn a_shared_compute_pool_deploys_cluster_profiles_and_infrastructure_profiles_only() {
        assert_eq!(
            fullstack_filter(ComputePool, Shared),
            filter(true, false, false, true)
        );
    }

    #[test]
    fn a_dedicated_app_deployment_deploys_everything_but_model_profiles() {
        assert_eq!(
            fullstack_filter(AppDeployment, Dedicated),
            filter(true, true, false, true)
        );
    }

    #[test]
    fn a_shared_app_deployment_deploys_only_application_profiles() {
        assert_eq!(
            fullstack_filter(AppDeployment, Shared),
            filter(false, true, false, false)
        );
    }

    #[test]
    fn a_dedicated_model_deployment_deploys_everything_but_application_profiles() {
        assert_eq!(
            fullstack_filter(ModelDeployment, Dedicated),
            filter(true, false, true, true)
        );
    }

    #[test]
    fn a_shared_model_deployment_deploys_only_model_profiles() {
        assert_eq!(
            fullstack_filter(ModelDeployment, Shared),
            filter(false, false, true, false)
        );
    }

    // "Supported Workflows" and "Mixing and Matching".

    #[test]
    fn every_primary_workflow_is_accepted() {
        for (w, p, t) in [
            (ComputePool, Shared, Infrastructure),
            (ComputePool, Dedicated, Infrastructure),
            (AppDeployment, Dedicated, Fullstack),
            (AppDeployment, Shared, Application),
            (ModelDeployment, Dedicated, Fullstack),
            (ModelDeployment, Shared, Application),
        ] {
            assert_eq!(check_combination(w, p, &[t]), None, "{w} {p:?} {t:?}");
            assert!(is_primary(w, p, t));
        }
    }

    #[test]
    fn every_mix_and_match_row_is_accepted_in_either_order() {
        for (w, p, types) in [
            (ComputePool, Dedicated, vec![Fullstack]),
            (ComputePool, Shared, vec![Fullstack]),
            (AppDeployment, Dedicated, vec![Infrastructure, Application]),
            (AppDeployment, Dedicated, vec![Application, Infrastructure]),
            (AppDeployment, Shared, vec![Fullstack]),
            (
                ModelDeployment,
                Dedicated,
                vec![Infrastructure, Application],
            ),
            (ModelDeployment, Shared, vec![Fullstack]),
        ] {
            assert_eq!(check_combination(w, p, &types), None, "{w} {p:?} {types:?}");
        }
        assert!(!is_primary(ComputePool, Shared, Fullstack));
        assert!(!is_primary(AppDeployment, Shared, Fullstack));
    }

    #[test]
    fn a_compute_pool_cannot_be_built_from_an_application_bundle() {
        for p in [Dedicated, Shared] {
            assert_eq!(
                check_combination(ComputePool, p, &[Application]),
                Some(Mismatch::NotAccepted { index: 0 })
            );
        }
    }

    #[test]
    fn a_deployment_onto_a_shared_pool_cannot_bring_an_infrastructure_bundle() {
        assert_eq!(
            check_combination(AppDeployment, Shared, &[Application, Infrastructure]),
            Some(Mismatch::NotAccepted { index: 1 })
        );
    }

    #[test]
    fn an_infrastructure_bundle_alone_misses_its_application_bundle() {
        assert_eq!(
            check_combination(ModelDeployment, Dedicated, &[Infrastructure]),
            Some(Mismatch::Missing {
                types: vec![Application]
            })
        );
    }

    #[test]
    fn an_application_bundle_alone_cannot_create_a_dedicated_pool() {
        assert_eq!(
            check_combination(AppDeployment, Dedicated, &[Application]),
            Some(Mismatch::Missing {
                types: vec![Infrastructure]
            })
        );
    }

    #[test]
    fn a_second_bundle_beside_a_fullstack_one_is_one_too_many() {
        assert_eq!(
            check_combination(AppDeployment, Dedicated, &[Fullstack, Application]),
            Some(Mismatch::Extra { index: 1 })
        );
        assert_eq!(
            check_combination(AppDeployment, Shared, &[Application, Application]),
            Some(Mismatch::Extra { index: 1 })
        );
    }

    // The rules on whole repositories.

    fn desired(text: &str) -> DesiredState {
        let file = SourceFile {
            path: Arc::from("repo.yaml"),
            blob: String::new(),
            content: Content::Bytes(text.as_bytes().to_vec()),
        };
        let (objs, v) = parse_file(&file, &Limits::default());
        assert!(v.is_empty(), "{v:?}");
        let mut v = Vec::new();
        let d = DesiredState::from_objects("rev".into(), objs, &mut v);
        assert!(v.is_empty(), "{v:?}");
        d
    }

    const BASE: &str = "\
apiVersion: pbsync.dev/v1
kind: ClusterProfile
metadata: {name: infra, scope: project}
spec: {version: 1.0.0, template: {type: infra, cloudType: edge-native}}
---
apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata: {name: app, namespace: ns}
spec: {type: Application, workload: {components: []}}
---
apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata: {name: model, namespace: ns}
spec: {type: Model, workload: {components: []}}
---
apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata: {name: exporter, namespace: ns}
spec: {type: Infrastructure, workload: {components: []}}
---
apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {name: gpu-infra, namespace: ns, labels: {palette.ai/inference-engine: vllm}}
spec: {type: Infrastructure, clusterProfiles: [{name: infra, version: 1.0.0}]}
---
apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {name: llama, namespace: ns, labels: {palette.ai/inference-engine: sglang}}
spec: {type: Application, workloadProfiles: [{name: model}]}
---
apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {name: chat, namespace: ns}
spec: {type: Application, workloadProfiles: [{name: app}]}
---
apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {name: stack, namespace: ns}
spec:
  type: Fullstack
  clusterProfiles: [{name: infra, version: 1.0.0}]
  workloadProfiles: [{name: model}, {name: exporter}]
---
apiVersion: spectrocloud.com/v1alpha1
kind: ComputePool
metadata: {name: shared, namespace: ns}
spec:
  profileBundleRef: {name: gpu-infra}
  clusterVariant: {shared: {}}
---
apiVersion: spectrocloud.com/v1alpha1
kind: ComputePool
metadata: {name: own, namespace: ns}
spec:
  profileBundleRef: {name: stack}
  clusterVariant: {dedicated: {}}
";

    fn violations_with(extra: &str) -> Vec<String> {
        let d = desired(&format!("{BASE}---\n{extra}"));
        check(&d, &Catalog::default())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_base_repository_follows_every_workflow() {
        assert_eq!(
            violations_with(
                "{apiVersion: pbsync.dev/v1, kind: ClusterProfile, metadata: {name: x, scope: project}, spec: {version: '1', template: {type: add-on, cloudType: all}}}\n"
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_model_on_another_inference_engine_than_its_pool_names_both_bundles_and_values() {
        let v = violations_with(
            "apiVersion: spectrocloud.com/v1alpha1
kind: AIWorkload
metadata: {name: m, namespace: ns, labels: {palette.ai/aiworkload-type: model}}
spec:
  profileBundleRefs:
    - name: llama
  computePool: {ref: {name: shared}}
",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("R7-inference-engine"), "{v:?}");
        for part in [
            "ProfileBundle ns/llama is \"sglang\"",
            "ProfileBundle ns/gpu-infra, the bundle of ComputePool ns/shared, it is \"vllm\"",
        ] {
            assert!(v[0].contains(part), "{part} in {v:?}");
        }
        // At the line of the offending bundle reference.
        assert!(v[0].starts_with("repo.yaml:"), "{v:?}");
    }

    #[test]
    fn a_deployment_onto_a_dedicated_pool_is_a_violation_at_the_pool_reference() {
        let v = violations_with(
            "apiVersion: spectrocloud.com/v1alpha1
kind: AIWorkload
metadata: {name: a, namespace: ns, labels: {palette.ai/aiworkload-type: application}}
spec:
  profileBundleRefs:
    - name: chat
  computePool:
    ref: {name: own}
",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("needs a Shared pool, but ComputePool ns/own is Dedicated"),
            "{v:?}"
        );
    }

    #[test]
    fn an_app_deployment_of_a_model_bundle_is_a_violation() {
        let v = violations_with(
            "apiVersion: spectrocloud.com/v1alpha1
kind: AIWorkload
metadata: {name: a, namespace: ns, labels: {palette.ai/aiworkload-type: application}}
spec:
  profileBundleRefs:
    - name: stack
  computePool: {ref: {name: shared}}
",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains(
                "an App Deployment deploys Application workload profiles, but ProfileBundle ns/stack holds Model"
            ),
            "{v:?}"
        );
    }

    #[test]
    fn a_compute_pool_from_an_application_bundle_is_a_violation_at_its_bundle_reference() {
        let v = violations_with(
            "apiVersion: spectrocloud.com/v1alpha1
kind: ComputePool
metadata: {name: bad, namespace: ns}
spec:
  profileBundleRef: {name: chat}
  clusterVariant: {shared: {}}
",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("R8-workflow: ComputePool ns/bad: a Compute Pool (Shared) takes Infrastructure or Fullstack bundles; ProfileBundle ns/chat is an Application bundle"),
            "{v:?}"
        );
    }

    #[test]
    fn infrastructure_and_application_together_make_a_dedicated_deployment() {
        let ok = violations_with(
            "apiVersion: spectrocloud.com/v1alpha1
kind: AIWorkload
metadata: {name: m, namespace: ns, labels: {palette.ai/aiworkload-type: model}}
spec:
  profileBundleRefs: [{name: gpu-infra}, {name: llama}]
  computePool: {dedicated: {}}
",
        );
        assert_eq!(ok, Vec::<String>::new());
        let missing = violations_with(
            "apiVersion: spectrocloud.com/v1alpha1
kind: AIWorkload
metadata: {name: m, namespace: ns, labels: {palette.ai/aiworkload-type: model}}
spec:
  profileBundleRefs: [{name: gpu-infra}]
  computePool: {dedicated: {}}
",
        );
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(
            missing[0].contains("ProfileBundle ns/gpu-infra (Infrastructure) also needs an Application bundle beside it"),
            "{missing:?}"
        );
    }

    #[test]
    fn fullstack_parts_list_what_deploys_and_what_is_ignored_by_name() {
        let d = desired(BASE);
        let parts = fullstack_parts(&d);
        assert_eq!(parts.len(), 1, "{parts:?}");
        let p = &parts[0];
        assert_eq!(p.deployment.to_string(), "ComputePool ns/own");
        assert_eq!(p.bundle.to_string(), "ProfileBundle ns/stack");
        assert!(!p.primary);
        let names = |v: &[PartRef]| -> Vec<String> {
            v.iter()
                .map(|p| format!("{} {}", p.part.label(), p.key.short()))
                .collect()
        };
        assert_eq!(
            names(&p.deployed),
            [
                "cluster profile project/infra@1.0.0",
                "Infrastructure workload profile ns/exporter"
            ]
        );
        assert_eq!(names(&p.ignored), ["Model workload profile ns/model"]);
    }

    // Pools and bundles that live only on the hub (another instance's, a person's).

    /// The hub of a platform team: a Shared pool built from an Infrastructure bundle labelled
    /// `vllm`, both managed by pbsync instance `platform`, and one pool of this instance.
    const HUB: &str = "\
apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {name: gpu-infra, namespace: team-a, labels: {palette.ai/inference-engine: vllm}}
spec: {type: Infrastructure, clusterProfiles: [{name: infra, version: 1.0.0}]}
---
apiVersion: spectrocloud.com/v1alpha1
kind: ComputePool
metadata: {name: gpu-shared, namespace: team-a}
spec:
  profileBundleRef: {name: gpu-infra}
  clusterVariant: {shared: {}}
---
apiVersion: spectrocloud.com/v1alpha1
kind: ComputePool
metadata: {name: gpu-own, namespace: team-a}
spec:
  profileBundleRef: {name: gpu-infra}
  clusterVariant: {dedicated: {}}
---
apiVersion: spectrocloud.com/v1alpha1
kind: ComputePool
metadata: {name: mine, namespace: team-a}
spec:
  profileBundleRef: {name: gpu-infra}
  clusterVariant: {shared: {}}
";

    /// The live state: [`HUB`], `mine` managed by this instance, the rest by `platform`.
    fn hub() -> crate::live::Observed {
        use crate::live::{LiveObject, Observed};
        use crate::ownership::Ownership;
        let mut observed = Observed::default();
        for obj in desired(HUB).objects {
            let ownership = if &*obj.key.name == "mine" {
                Ownership::Managed
            } else {
                Ownership::Foreign {
                    owner: Some("platform".into()),
                }
            };
            observed.objects.insert(
                obj.key.clone(),
                LiveObject::new(obj.manifest.value(), ownership),
            );
        }
        observed
    }

    const APPS: &str = "\
apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata: {name: model, namespace: apps}
spec: {type: Model, workload: {components: []}}
---
apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {name: llama, namespace: apps, labels: {palette.ai/inference-engine: ENGINE}}
spec: {type: Application, workloadProfiles: [{name: model}]}
---
apiVersion: spectrocloud.com/v1alpha1
kind: AIWorkload
metadata: {name: chat, namespace: apps, labels: {palette.ai/aiworkload-type: model}}
spec:
  profileBundleRefs: [{name: llama}]
  computePool: {ref: {name: POOL, namespace: team-a}}
";

    fn apps(engine: &str, pool: &str) -> DesiredState {
        desired(&APPS.replace("ENGINE", engine).replace("POOL", pool))
    }

    fn validated(d: &DesiredState, catalog: &Catalog) -> (Vec<String>, Vec<String>) {
        let (v, w) = crate::model::validate(d, catalog);
        (v.iter().map(ToString::to_string).collect(), w)
    }

    #[test]
    fn a_pool_only_on_the_hub_is_a_warning_without_live_state() {
        let (v, w) = validated(&apps("vllm", "gpu-shared"), &Catalog::default());
        assert_eq!(v, Vec::<String>::new());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("ComputePool team-a/gpu-shared (referenced 1 time(s)) is not declared in the repository; it must exist live and is checked against the target at plan time"),
            "{w:?}"
        );
    }

    #[test]
    fn a_pool_found_nowhere_is_unresolved_at_its_line() {
        let d = apps("vllm", "nowhere");
        let (v, w) = validated(&d, &hub().catalog(&d));
        assert_eq!(w, Vec::<String>::new());
        assert_eq!(
            v,
            [
                "repo.yaml:16: R6-unresolved-reference: compute pool ComputePool team-a/nowhere is neither declared in the repository nor found on the hub"
            ]
        );
    }

    #[test]
    fn a_model_onto_a_live_pool_of_its_engine_is_valid() {
        let d = apps("vllm", "gpu-shared");
        let catalog = hub().catalog(&d);
        assert_eq!(validated(&d, &catalog), (vec![], vec![]));
        // Only what the commit names is read: the pool and the bundle it was built from.
        let mut read: Vec<String> = catalog.roots.keys().map(ToString::to_string).collect();
        read.sort();
        assert_eq!(
            read,
            [
                "ComputePool team-a/gpu-shared",
                "ProfileBundle team-a/gpu-infra"
            ]
        );
    }

    #[test]
    fn a_model_onto_a_live_pool_of_another_engine_names_the_live_pool_and_its_bundles_label() {
        let d = apps("sglang", "gpu-shared");
        let (v, _) = validated(&d, &hub().catalog(&d));
        assert_eq!(
            v,
            [
                "repo.yaml:15: R7-inference-engine: AIWorkload apps/chat: palette.ai/inference-engine of the model's ProfileBundle apps/llama is \"sglang\", but of ProfileBundle team-a/gpu-infra (on the hub, managed by pbsync instance platform), the bundle of ComputePool team-a/gpu-shared (on the hub, managed by pbsync instance platform), it is \"vllm\"; a Model Deployment needs a pool running its inference engine"
            ]
        );
    }

    #[test]
    fn a_deployment_onto_a_live_dedicated_pool_breaks_the_workflow_tables() {
        let d = apps("vllm", "gpu-own");
        let (v, _) = validated(&d, &hub().catalog(&d));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("R8-workflow: AIWorkload apps/chat: a deployment onto an existing pool needs a Shared pool, but ComputePool team-a/gpu-own (on the hub, managed by pbsync instance platform) is Dedicated"),
            "{v:?}"
        );
    }

    #[test]
    fn a_pool_this_instance_manages_but_no_longer_declares_is_not_built_on() {
        // It is leaving with this commit: nothing may be deployed onto it.
        let d = apps("vllm", "mine");
        let (v, _) = validated(&d, &hub().catalog(&d));
        assert_eq!(
            v,
            [
                "repo.yaml:16: R6-unresolved-reference: compute pool ComputePool team-a/mine is no longer declared in the repository, and this instance's live copy is deleted with this commit"
            ]
        );
    }

    #[test]
    fn the_graph_records_where_a_live_reference_was_found() {
        use crate::graph::ResourceGraph;
        let d = apps("vllm", "gpu-shared");
        let catalog = hub().catalog(&d);
        let (g, v) = ResourceGraph::build(d, &catalog);
        assert!(v.is_empty(), "{v:?}");
        let pool = ObjectKey::new(crate::model::Kind::ComputePool, "team-a", "gpu-shared");
        let node = g.node(&pool).expect("an edge to the live pool");
        assert!(node.object.is_none() && node.desired);
        assert_eq!(
            node.found,
            Some(crate::model::Found::Live {
                holder: "managed by pbsync instance platform".into()
            })
        );
        assert_eq!(
            g.needed_by(&pool)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["AIWorkload apps/chat"]
        );
    }
}
