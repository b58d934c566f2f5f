//! The last committed version of a leaving bundle (domain §4: "set orphan, then delete"
//! landing in one pass), read from real repositories: a full clone finds it; a shallow clone
//! (`git clone --depth 1`, most CI checkouts) cannot, and then every decision that depends on
//! the bundle's policy is `unknown` and nothing is deleted, never "delete"; the daemon's
//! shallow remote clone deepens its history until it finds the version.

use std::path::Path;
use std::process::Command;

use pbsync::engine::{self, Context, Goal, Input, history};
use pbsync::plan::{Action, Plan};
use pbsync::source::remote::GitAuth;
use pbsync::source::remote::Remote;
use pbsync::target::Secret;
use pbsync::target::local_dir::LocalDir;
use pbsync::target::{RunError, RunOptions};

use pbsync_devkit::testkit::git_http::serve;
use pbsync_devkit::testkit::{ScratchRepo, block_on};

const SHARED: &str = "
apiVersion: core.oam.dev/v1beta1
kind: ComponentDefinition
metadata: {name: web, namespace: ns}
spec: {workload: {type: autodetects.core.oam.dev}}
---
apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata: {name: keep-wp, namespace: ns}
spec: {type: Application, workload: {components: [{name: m, type: web}]}}
---
apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {name: keep, namespace: ns}
spec: {type: Application, workloadProfiles: [{name: keep-wp}]}
";

fn app_a(policy: &str) -> String {
    format!(
        "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata: {{name: app-a, namespace: ns}}\nspec:\n  type: Application\n  deletionPolicy: {policy}\n  workloadProfiles: [{{name: a-wp}}]\n  workloadProfileDependencies: {{helmRepositories: [{{name: charts-a}}]}}\n"
    )
}

const A_DEPENDENTS: &str = "
apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata: {name: a-wp, namespace: ns}
spec: {type: Application, workload: {components: [{name: m, type: web}]}}
---
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata: {name: charts-a, namespace: ns}
spec: {url: https://charts-a.example.com, interval: 1h}
";

/// The scenario of the issue: commit 1 applies app-a (policy delete) to `state`; commit 2
/// sets `orphan` on it (never applied); commit 3 removes it with its exclusive dependents.
fn scenario(state: &Path) -> ScratchRepo {
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", SHARED);
    repo.write("app-a.yaml", app_a("delete"));
    repo.write("a-deps.yaml", A_DEPENDENTS);
    repo.commit("1: app-a, policy delete");
    let ctx = Context::new(repo.path(), "HEAD", "");
    let snapshot = ctx.fetch().expect("fetch");
    block_on(engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(&LocalDir::new(state, "default"), RunOptions::default()),
    ))
    .expect("commit 1 applies");
    repo.write("app-a.yaml", app_a("orphan"));
    repo.commit("2: app-a says orphan");
    repo.remove("app-a.yaml");
    repo.remove("a-deps.yaml");
    repo.commit("3: app-a removed");
    repo
}

fn action(plan: &Plan, name: &str) -> (Action, String) {
    let c = plan
        .changes
        .iter()
        .find(|c| &*c.key.name == name)
        .unwrap_or_else(|| panic!("{name} not in plan"));
    (c.action, c.reasons.join(" | "))
}

fn plan_in(repo: &Path, state: &Path) -> engine::Result<engine::Report> {
    let ctx = Context::new(repo, "HEAD", "");
    let snapshot = ctx.fetch().expect("fetch");
    block_on(engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Plan(&LocalDir::new(state, "default")),
    ))
}

fn shallow_clone(repo: &Path, into: &Path) {
    let status = Command::new("git")
        .args(["clone", "-q", "--depth", "1"])
        .arg(format!("file://{}", repo.display()))
        .arg(into)
        .status()
        .expect("git clone --depth 1");
    assert!(status.success());
}

#[test]
fn a_full_clone_finds_the_orphan_policy_of_the_last_version() {
    let state = tempfile::tempdir().unwrap();
    let repo = scenario(state.path());
    let planned = plan_in(repo.path(), state.path()).expect("plan");
    for dependent in ["a-wp", "charts-a"] {
        let (action, why) = action(planned.plan(), dependent);
        assert_eq!(action, Action::Orphan, "{dependent}: {why}");
        assert!(why.contains("set in its last version in Git"), "{why}");
    }
    assert_eq!(action(planned.plan(), "app-a").0, Action::Delete);
}

#[test]
fn a_shallow_clone_plans_unknown_never_delete_and_its_apply_deletes_nothing() {
    let state = tempfile::tempdir().unwrap();
    let repo = scenario(state.path());
    let clone = tempfile::tempdir().unwrap();
    let shallow = clone.path().join("checkout");
    shallow_clone(repo.path(), &shallow);
    assert!(git2::Repository::open(&shallow).unwrap().is_shallow());

    let planned = plan_in(&shallow, state.path()).expect("plan");
    for name in ["app-a", "a-wp", "charts-a"] {
        let (action, why) = action(planned.plan(), name);
        assert_eq!(action, Action::Unknown, "{name}: {why}");
        assert!(why.contains("shallow clone"), "{name}: {why}");
        assert!(why.contains("git fetch --unshallow"), "the fix: {why}");
    }

    let files_before = pbsync_devkit::testkit::list_files(state.path());
    let ctx = Context::new(&shallow, "HEAD", "");
    let snapshot = ctx.fetch().expect("fetch");
    let target = LocalDir::new(state.path(), "default");
    // A one-shot apply cannot even tell whether this commit descends from the last one
    // applied (that commit is not in the clone): refused, naming the fix.
    let err = block_on(engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(&target, RunOptions::default()),
    ))
    .expect_err("refused");
    let text = pbsync::error_chain(&err);
    assert!(
        matches!(err.refusal(), Some(pbsync::guard::Refusal::Rollback { .. }))
            && text.contains("git fetch --unshallow"),
        "{text}"
    );
    // Allowed past that (as the daemon is), the decisions that need history are unknown and
    // the pass deletes nothing.
    let err = block_on(engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(
            &target,
            RunOptions {
                allow_rollback: true,
                ..RunOptions::default()
            },
        ),
    ))
    .expect_err("an apply with unknown decisions fails");
    let engine::Error::Apply { source, .. } = &err else {
        panic!("{}", pbsync::error_chain(&err));
    };
    assert!(matches!(**source, RunError::Unknown(3)), "{source}");
    let files_after = pbsync_devkit::testkit::list_files(state.path());
    assert_eq!(
        files_before.len(),
        files_after.len(),
        "nothing deleted: {files_after:?}"
    );
    assert!(
        state
            .path()
            .join("ns/helmrepository/charts-a.yaml")
            .exists()
    );
}

#[test]
fn the_history_depth_limit_is_unknown_too_and_says_so() {
    let state = tempfile::tempdir().unwrap();
    let repo = scenario(state.path());
    let mut ctx = Context::new(repo.path(), "HEAD", "");
    ctx.history_depth = 1;
    let snapshot = ctx.fetch().expect("fetch");
    let planned = block_on(engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Plan(&LocalDir::new(state.path(), "default")),
    ))
    .expect("plan");
    let (a, why) = action(planned.plan(), "charts-a");
    assert_eq!(a, Action::Unknown, "{why}");
    assert!(why.contains("raise history_depth"), "{why}");
}

#[test]
fn a_shallow_remote_clone_is_deepened_until_it_finds_the_last_version() {
    let state = tempfile::tempdir().unwrap();
    let repo = scenario(state.path());
    let served = tempfile::tempdir().unwrap();
    let status = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(repo.path())
        .arg(served.path().join("bundles.git"))
        .status()
        .expect("git clone --bare");
    assert!(status.success());
    let url = format!(
        "{}bundles.git",
        serve(served.path().to_path_buf(), "deploy", "s3cret")
    );
    let mirror = tempfile::tempdir().unwrap();
    let auth = GitAuth::Basic {
        username: "deploy".into(),
        password: Secret::new("s3cret"),
    };
    let remote = Remote::new(&url, None, auth, true, mirror.path());
    let head = remote.sync().expect("shallow fetch");
    let clone = git2::Repository::open(remote.dir()).expect("clone");
    assert!(
        clone.is_shallow(),
        "the daemon's git_shallow fetch is shallow"
    );

    let ctx = Context::new(remote.dir(), &head.to_string(), "");
    let snapshot = ctx.fetch().expect("read the fetched commit");
    let plan_with = |deepen: Option<&dyn history::Deepen>| {
        let tips = [head];
        block_on(engine::run(
            &ctx,
            Input {
                history: Some(history::Lookup {
                    repo: remote.dir(),
                    tips: &tips,
                    max_commits: ctx.history_depth,
                    deepen,
                }),
                ..Input::of(&snapshot)
            },
            Goal::Plan(&LocalDir::new(state.path(), "default")),
        ))
        .expect("plan")
    };
    // Without deepening (a one-shot command in a shallow checkout): unknown.
    let (a, why) = action(plan_with(None).plan(), "charts-a");
    assert_eq!(a, Action::Unknown, "{why}");
    // The daemon deepens its clone and finds commit 2's orphan.
    let (a, why) = action(plan_with(Some(&remote)).plan(), "charts-a");
    assert_eq!(a, Action::Orphan, "{why}");
    assert!(why.contains("set in its last version in Git"), "{why}");
    // The depth is kept: the next fetch does not make the clone shallow again.
    remote.sync().expect("fetch again");
    let (a, _) = action(plan_with(None).plan(), "charts-a");
    assert_eq!(a, Action::Orphan);
}

#[test]
fn a_daemon_following_its_branch_back_plans_the_rollback_with_reasons() {
    let state = tempfile::tempdir().unwrap();
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", SHARED);
    let older = repo.commit("keep only");
    repo.write("app-a.yaml", app_a("delete"));
    repo.write("a-deps.yaml", A_DEPENDENTS);
    repo.commit("add app-a");
    let target = LocalDir::new(state.path(), "default");
    let apply_at = |rev: &str, allow_rollback: bool| {
        let ctx = Context::new(repo.path(), rev, "");
        let snapshot = ctx.fetch().expect("fetch");
        block_on(engine::run(
            &ctx,
            Input::of(&snapshot),
            Goal::Apply(
                &target,
                RunOptions {
                    allow_rollback,
                    ..RunOptions::default()
                },
            ),
        ))
    };
    apply_at("HEAD", false).expect("the newer commit applies");
    // A one-shot apply of the older commit is refused; the daemon (which allows it: Git is
    // the truth) plans it with reasons that say so.
    let err = apply_at(&older.to_string(), false).expect_err("refused");
    assert!(
        matches!(err.refusal(), Some(pbsync::guard::Refusal::Rollback { .. })),
        "{}",
        pbsync::error_chain(&err)
    );
    let report = apply_at(&older.to_string(), true).expect("the daemon follows its branch");
    let plan = report.plan();
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("moves the target back") && w.contains("older than")),
        "{:?}",
        plan.warnings
    );
    for name in ["app-a", "a-wp", "charts-a"] {
        let (a, why) = action(plan, name);
        assert_eq!(a, Action::Delete, "{name}: {why}");
        assert!(why.contains("undoes the last applied revision"), "{why}");
    }
}
