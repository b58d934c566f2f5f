//! The one guard on the local-directory target: a deletion or a release is decided on the
//! ownership read at that moment (not as planned), adoption never takes another instance's
//! object (not even from a plan that says so), and a refusal is its own error kind. The same
//! rules against the Kubernetes and Palette targets are in tests/kubernetes.rs and
//! tests/palette.rs.

use pbsync::engine::{self, Context, Goal, Input};
use pbsync::guard::Refusal;
use pbsync::plan::Action;
use pbsync::target::local_dir::{LocalDir, key_string};
use pbsync::target::{Outcome, RunError, RunOptions};
use serde_json::Value;

use pbsync_devkit::testkit::{ScratchRepo, block_on};

const SHARED: &str = "
apiVersion: core.oam.dev/v1beta1
kind: ComponentDefinition
metadata: {name: web, namespace: ns}
spec: {workload: {type: autodetects.core.oam.dev}}
---
apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata: {name: site, namespace: ns}
spec: {type: Application, workload: {components: [{name: m, type: web}]}}
";

fn bundle(name: &str, policy: &str, helm: &str) -> String {
    format!(
        "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{type: Application, deletionPolicy: {policy}, workloadProfiles: [{{name: site}}], workloadProfileDependencies: {{helmRepositories: [{{name: {helm}}}]}}}}\n---\napiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata: {{name: {helm}, namespace: ns}}\nspec: {{url: https://{helm}.example.com, interval: 1h}}\n"
    )
}

fn ctx_for(repo: &ScratchRepo, instance: &str) -> Context {
    let mut ctx = Context::new(repo.path(), "HEAD", "");
    ctx.plan.instance = instance.into();
    ctx
}

fn apply(ctx: &Context, target: &LocalDir) -> engine::Result<engine::Report> {
    let snapshot = ctx.fetch().expect("fetch");
    block_on(engine::run(
        ctx,
        Input::of(&snapshot),
        Goal::Apply(target, RunOptions::default()),
    ))
}

fn plan(ctx: &Context, target: &LocalDir) -> engine::Report {
    let snapshot = ctx.fetch().expect("fetch");
    block_on(engine::run(ctx, Input::of(&snapshot), Goal::Plan(target))).expect("plan")
}

/// Moves `key` from this instance's records to `owner`'s in the inventory on disk: what
/// another instance taking the object over between a plan and its apply looks like.
fn hand_over(state: &std::path::Path, key: &str, owner: &str) {
    let path = state.join(".pbsync/inventory.json");
    let mut inv: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("inventory")).expect("inventory json");
    let record = inv["instances"]["default"]["objects"]
        .as_object_mut()
        .expect("default's objects")
        .remove(key)
        .expect("default owns it");
    inv["instances"][owner]["objects"][key] = record;
    std::fs::write(&path, serde_json::to_vec_pretty(&inv).expect("json")).expect("write");
}

/// Two bundles, each with a repository of its own; commit 2 removes `a` (policy `policy`).
fn two_bundles_then_one_leaves(policy: &str) -> (ScratchRepo, tempfile::TempDir, LocalDir) {
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", SHARED);
    repo.write("a.yaml", bundle("a", policy, "charts-a"));
    repo.write("b.yaml", bundle("b", "delete", "charts-b"));
    repo.commit("two bundles");
    let state = tempfile::tempdir().expect("state");
    let target = LocalDir::new(state.path(), "default");
    apply(&ctx_for(&repo, "default"), &target).expect("first apply");
    repo.remove("a.yaml");
    repo.commit("a leaves");
    (repo, state, target)
}

#[test]
fn a_deletion_whose_object_changed_hands_after_the_plan_is_refused_and_kept() {
    let (repo, state, target) = two_bundles_then_one_leaves("delete");
    let ctx = ctx_for(&repo, "default");
    let planned = plan(&ctx, &target);
    let helm = planned
        .plan()
        .changes
        .iter()
        .find(|c| c.key.name.as_ref() == "charts-a")
        .expect("charts-a planned");
    assert_eq!(helm.action, Action::Delete, "{:?}", helm.reasons);

    // Between the plan and its apply, instance green takes the repository over.
    hand_over(state.path(), &key_string(&helm.key), "green");
    let stamp = pbsync::ownership::Stamp {
        instance: "default",
        revision: &planned.revision,
        adopted: false,
    };
    let (set, result) = block_on(pbsync::target::run(
        &target,
        &planned.graph,
        planned.plan(),
        &stamp,
        RunOptions::default(),
    ));
    let Err(RunError::Prune { first, .. }) = &result else {
        panic!("expected a refused deletion, got {result:?}");
    };
    assert!(
        matches!(first.refusal(), Some(Refusal::NotOurs { .. })),
        "{}",
        pbsync::error_chain(first)
    );
    assert!(
        pbsync::error_chain(first).contains("managed by pbsync instance \"green\""),
        "{}",
        pbsync::error_chain(first)
    );
    let path = state.path().join("ns/helmrepository/charts-a.yaml");
    assert!(path.exists(), "the refused object is kept");
    let outcome = |name: &str| {
        set.entries
            .iter()
            .find(|e| e.key.name.as_ref() == name)
            .map(|e| e.outcome)
    };
    assert_eq!(outcome("charts-a"), Some(Outcome::Failed));
    // Its bundle is the record of what is left: kept until the dependents are gone.
    assert_eq!(outcome("a"), Some(Outcome::Skipped));
    assert!(state.path().join("ns/profilebundle/a.yaml").exists());
}

#[test]
fn a_release_whose_object_changed_hands_after_the_plan_is_refused() {
    let (repo, state, target) = two_bundles_then_one_leaves("orphan");
    let ctx = ctx_for(&repo, "default");
    let planned = plan(&ctx, &target);
    let helm = planned
        .plan()
        .changes
        .iter()
        .find(|c| c.key.name.as_ref() == "charts-a")
        .expect("charts-a planned");
    assert_eq!(helm.action, Action::Orphan, "{:?}", helm.reasons);
    let before = std::fs::read(state.path().join("ns/helmrepository/charts-a.yaml")).unwrap();

    hand_over(state.path(), &key_string(&helm.key), "green");
    let stamp = pbsync::ownership::Stamp {
        instance: "default",
        revision: &planned.revision,
        adopted: false,
    };
    let (_, result) = block_on(pbsync::target::run(
        &target,
        &planned.graph,
        planned.plan(),
        &stamp,
        RunOptions::default(),
    ));
    let Err(RunError::Prune { first, .. }) = &result else {
        panic!("expected a refused release, got {result:?}");
    };
    assert!(
        matches!(
            first.refusal(),
            Some(Refusal::NotOurs {
                verb: "release",
                ..
            })
        ),
        "{}",
        pbsync::error_chain(first)
    );
    let after = std::fs::read(state.path().join("ns/helmrepository/charts-a.yaml")).unwrap();
    assert_eq!(before, after, "green's object is not touched");
    let inv: Value = serde_json::from_slice(
        &std::fs::read(state.path().join(".pbsync/inventory.json")).unwrap(),
    )
    .unwrap();
    assert!(inv["instances"]["green"]["objects"]["HelmRepository/ns/charts-a"].is_object());
    assert!(inv["released"].get("HelmRepository/ns/charts-a").is_none());
}

#[test]
fn adoption_never_takes_another_instances_object_and_names_the_owner() {
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", SHARED);
    repo.write("a.yaml", bundle("a", "delete", "charts"));
    repo.commit("one bundle");
    let state = tempfile::tempdir().expect("state");
    let green = LocalDir::new(state.path(), "green");
    apply(&ctx_for(&repo, "green"), &green).expect("green applies");

    let mut ctx = ctx_for(&repo, "default");
    ctx.plan.adopt = true;
    let ours = LocalDir::new(state.path(), "default");
    let planned = plan(&ctx, &ours);
    for c in &planned.plan().changes {
        assert_eq!(c.action, Action::Blocked, "{}: {:?}", c.key, c.reasons);
        assert!(
            c.reasons[0].contains("managed by pbsync instance \"green\"")
                && c.reasons[0].contains("adoption never takes another instance's object"),
            "{:?}",
            c.reasons
        );
    }
    let report = apply(&ctx, &ours).expect("an apply with nothing to do");
    assert!(
        report
            .changes()
            .entries
            .iter()
            .all(|e| e.outcome == Outcome::Skipped)
    );

    // A plan that says adopt anyway (forged here) is refused before anything is written.
    let mut forged = planned.plan().clone();
    for c in &mut forged.changes {
        c.action = Action::Update;
        c.adopt = true;
    }
    let stamp = pbsync::ownership::Stamp {
        instance: "default",
        revision: &planned.revision,
        adopted: false,
    };
    let (_, result) = block_on(pbsync::target::run(
        &ours,
        &planned.graph,
        &forged,
        &stamp,
        RunOptions::default(),
    ));
    let Err(RunError::Write(e)) = &result else {
        panic!("expected a refused write, got {result:?}");
    };
    assert!(
        matches!(e.refusal(), Some(Refusal::OtherInstance { owner, .. }) if owner == "green"),
        "{}",
        pbsync::error_chain(e)
    );
    let inv: Value = serde_json::from_slice(
        &std::fs::read(state.path().join(".pbsync/inventory.json")).unwrap(),
    )
    .unwrap();
    let ours = inv["instances"]["default"]["objects"]
        .as_object()
        .map_or(0, serde_json::Map::len);
    assert_eq!(
        ours, 0,
        "no object is recorded as owned by two instances: {inv}"
    );
    assert_eq!(
        inv["instances"]["green"]["objects"]
            .as_object()
            .map_or(0, serde_json::Map::len),
        planned.plan().changes.len()
    );
}
