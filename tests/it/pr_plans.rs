//! Pull-request plans: the merge of a branch into its base planned offline (against the state
//! base would produce) or against a live local-directory target, rendered as PR comments
//! (Markdown) and JSON, snapshotted. Branches are built with the test kit's
//! `ScratchRepo::commit_on` (a branch at a commit, commits on it, without the work tree) with
//! a fixed author and time, so commit ids are stable.

use std::collections::BTreeMap;

use git2::Oid;
use pbsync::engine::{self, Context, Goal, Input, NoTarget};
use pbsync::plan::comment::{GITHUB_LIMIT, MARKER, render_comments};
use pbsync::review::{self, Request, Review};
use pbsync::target::RunOptions;
use pbsync::target::local_dir::LocalDir;

use pbsync_devkit::testkit::{ScratchRepo, block_on, yaml};

use crate::support::load_snapshot;

/// A repository with named branches; each commit applies file changes to a branch's tip.
struct Branches {
    repo: ScratchRepo,
}

impl Branches {
    fn new() -> Self {
        Self {
            repo: ScratchRepo::new(),
        }
    }

    /// Commits `changes` (path -> Some(content) to write, None to remove) on `branch`, which
    /// starts at `from` when it does not exist yet.
    fn commit(
        &mut self,
        branch: &str,
        from: Option<&str>,
        changes: &[(&str, Option<&str>)],
    ) -> Oid {
        self.repo.commit_on(branch, from, changes)
    }

    fn context(&self) -> Context {
        Context::new(self.repo.path(), "HEAD", "")
    }

    fn offline(&self, base: &str, head: &str) -> Review {
        block_on(review::plan::<NoTarget>(
            &self.context(),
            &request(base, head),
            None,
        ))
        .expect("offline plan")
    }
}

fn request(base: &str, head: &str) -> Request {
    Request {
        cache_dir: None,
        base: format!("refs/heads/{base}"),
        head: format!("refs/heads/{head}"),
    }
}

/// The snapshot text: every comment, then the JSON document.
fn render(review: &Review) -> String {
    let parts = render_comments(&review.plan, &review.comment_context());
    let json = serde_json::to_string_pretty(&review.to_json()).expect("json");
    format!(
        "{}\n=== json ===\n{json}\n",
        parts.join("\n=== next comment ===\n")
    )
}

const DEFINITIONS: &str = "apiVersion: core.oam.dev/v1beta1
kind: ComponentDefinition
metadata: {name: web, namespace: team-a}
spec:
  workload: {type: autodetects.core.oam.dev}
---
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata: {name: charts, namespace: team-a}
spec: {url: https://charts.example.com, interval: 1h}
";

fn profile(name: &str, image: &str) -> String {
    format!(
        "apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata: {{name: {name}, namespace: team-a}}
spec:
  type: Application
  workload:
    components:
      - name: main
        type: web
        properties:
          image: {image}
          replicas: 2
          apiKey: key-for-{image}
"
    )
}

fn bundle(name: &str, profile: &str, policy: &str) -> String {
    format!(
        "apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {{name: {name}, namespace: team-a}}
spec:
  type: Application
  deletionPolicy: {policy}
  workloadProfiles: [{{name: {profile}}}]
  workloadProfileDependencies:
    helmRepositories: [{{name: charts}}]
"
    )
}

/// main: definitions, the shared profile `web`, and the given bundles (all using `web`).
fn base_with(bundles: &[(&str, &str)]) -> Branches {
    let mut b = Branches::new();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    files.insert("shared/definitions.yaml".into(), DEFINITIONS.into());
    files.insert("shared/web.yaml".into(), profile("web", "nginx:1.27"));
    for (name, policy) in bundles {
        files.insert(format!("bundles/{name}.yaml"), bundle(name, "web", policy));
    }
    let changes: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    b.commit("main", None, &changes);
    b
}

#[test]
fn adding_a_bundle() {
    let mut b = base_with(&[("shop", "delete")]);
    let api = profile("api", "api:2.0");
    let new = bundle("blog", "api", "delete");
    b.commit(
        "pr",
        Some("main"),
        &[
            ("shared/api.yaml", Some(&api)),
            ("bundles/blog.yaml", Some(&new)),
        ],
    );
    let review = b.offline("main", "pr");
    assert_eq!(review.plan.summary().create, 2, "{:?}", review.plan.changes);
    insta::assert_snapshot!("pr-adding-a-bundle", render(&review));
}

#[test]
fn editing_a_shared_profile_used_by_three_bundles() {
    let mut b = base_with(&[("a", "delete"), ("b", "delete"), ("c", "delete")]);
    let edited = profile("web", "nginx:1.28");
    b.commit("pr", Some("main"), &[("shared/web.yaml", Some(&edited))]);
    let review = b.offline("main", "pr");
    let impact = &review.plan.impact;
    assert_eq!(impact.len(), 1, "{impact:?}");
    assert_eq!(impact[0].dependents.len(), 3, "every bundle that uses it");
    let text = render(&review);
    assert!(!text.contains("key-for-nginx"), "secret masked:\n{text}");
    insta::assert_snapshot!("pr-editing-a-shared-profile-used-by-three-bundles", text);
}

#[test]
fn a_parse_store_from_an_earlier_run_gives_the_same_plan() {
    let mut b = base_with(&[("a", "delete"), ("b", "delete"), ("c", "delete")]);
    let edited = profile("web", "nginx:1.28");
    b.commit("pr", Some("main"), &[("shared/web.yaml", Some(&edited))]);
    let without = render(&b.offline("main", "pr"));
    let cache = tempfile::tempdir().unwrap();
    let cached = |b: &Branches, base: &str, head: &str| {
        let req = Request {
            cache_dir: Some(cache.path().to_path_buf()),
            ..request(base, head)
        };
        render(&block_on(review::plan::<NoTarget>(&b.context(), &req, None)).expect("plan"))
    };
    assert_eq!(
        cached(&b, "main", "pr"),
        without,
        "a first run writes the store"
    );
    let stores: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(stores.len(), 1, "one store per repository and path");
    assert_eq!(cached(&b, "main", "pr"), without, "a later run reads it");
    // Another pull request on the same base: its new file is parsed, the rest comes from
    // the store, and the plan is what a run without the store makes.
    let fresh = profile("web", "nginx:1.29");
    b.commit("pr2", Some("main"), &[("shared/web.yaml", Some(&fresh))]);
    assert_eq!(cached(&b, "main", "pr2"), render(&b.offline("main", "pr2")));
}

#[test]
fn removing_one_of_two_bundles_that_share_a_profile() {
    let mut b = base_with(&[("a", "delete"), ("b", "delete")]);
    b.commit("pr", Some("main"), &[("bundles/b.yaml", None)]);
    let review = b.offline("main", "pr");
    let s = review.plan.summary();
    assert_eq!((s.delete, s.orphan), (1, 0), "only the bundle goes");
    insta::assert_snapshot!("pr-removing-one-of-two-bundles", render(&review));
}

#[test]
fn removing_the_last_bundle() {
    let mut b = base_with(&[("a", "delete")]);
    b.commit("pr", Some("main"), &[("bundles/a.yaml", None)]);
    let review = b.offline("main", "pr");
    assert!(
        review.plan.summary().delete >= 3,
        "bundle, profile, definition, repository"
    );
    assert!(
        review.plan.guard.is_some(),
        "every managed bundle goes: the guard trips"
    );
    insta::assert_snapshot!("pr-removing-the-last-bundle", render(&review));
}

#[test]
fn orphan_policy() {
    let mut b = base_with(&[("a", "orphan")]);
    b.commit("pr", Some("main"), &[("bundles/a.yaml", None)]);
    let review = b.offline("main", "pr");
    assert!(
        review.plan.summary().orphan >= 3,
        "{:?}",
        review.plan.summary()
    );
    insta::assert_snapshot!("pr-orphan-policy", render(&review));
}

#[test]
fn orphan_set_on_the_branch_before_removal_is_honoured() {
    let mut b = base_with(&[("a", "delete"), ("b", "delete")]);
    let orphan = bundle("b", "web", "orphan");
    b.commit("pr", Some("main"), &[("bundles/b.yaml", Some(&orphan))]);
    b.commit(
        "pr",
        None,
        &[("bundles/b.yaml", None), ("bundles/a.yaml", None)],
    );
    let review = b.offline("main", "pr");
    let web = review
        .plan
        .changes
        .iter()
        .find(|c| c.key.name.as_ref() == "web")
        .expect("web planned");
    assert_eq!(
        web.action,
        pbsync::plan::Action::Orphan,
        "{:?}",
        web.reasons
    );
}

#[test]
fn a_blocked_deletion() {
    let mut b = base_with(&[("a", "delete"), ("b", "delete")]);
    b.commit("pr", Some("main"), &[("bundles/b.yaml", None)]);
    let state = tempfile::tempdir().expect("state");
    let target = LocalDir::new(state.path(), "default");
    let mut ctx = b.context();
    ctx.git.reference = "refs/heads/main".into();
    let snapshot = ctx.fetch().expect("fetch base");
    block_on(engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(&target, RunOptions::default()),
    ))
    .expect("apply base");
    // A Compute Pool pbsync did not create uses bundle b.
    let pool = state.path().join("team-a/computepool/gpu-pool.yaml");
    std::fs::create_dir_all(pool.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        pool,
        yaml::compute_pool("team-a", "gpu-pool", "b", "shared"),
    )
    .expect("write pool");
    let mut review =
        block_on(review::plan(&ctx, &request("main", "pr"), Some(&target))).expect("live plan");
    review.plan.read_at = Some("2025-06-01T12:00:00Z".into());
    assert_eq!(
        review.plan.summary().blocked,
        1,
        "{:?}",
        review.plan.changes
    );
    let text = render(&review);
    assert!(text.contains("gpu-pool"), "{text}");
    assert!(text.find("Blocked") < text.find("Create").or(Some(usize::MAX)));
    insta::assert_snapshot!("pr-a-blocked-deletion", text);
}

/// A Model Deployment onto `team-a/gpu-shared`, a pool the repository does not declare.
const ONTO_A_LIVE_POOL: &str = "apiVersion: spectrocloud.com/v1alpha1
kind: AIWorkload
metadata:
  name: chat
  namespace: team-a
  labels: {palette.ai/aiworkload-type: application}
spec:
  profileBundleRefs: [{name: a}]
  computePool:
    ref: {name: gpu-shared}
";

#[test]
fn a_deployment_onto_a_pool_that_lives_only_on_the_hub() {
    let mut b = base_with(&[("a", "delete")]);
    b.commit(
        "pr",
        Some("main"),
        &[("deployments/chat.yaml", Some(ONTO_A_LIVE_POOL))],
    );
    // Offline: the pool cannot be looked up. The review goes on; the reference is unknown.
    let review = b.offline("main", "pr");
    assert!(
        review.plan.violations.is_empty(),
        "{:?}",
        review.plan.violations
    );
    assert_eq!(review.plan.summary().create, 1, "{:?}", review.plan.changes);
    let refs = &review.plan.references;
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(refs[0].action, pbsync::plan::Action::Unknown);
    assert_eq!(refs[0].key.to_string(), "ComputePool team-a/gpu-shared");
    insta::assert_snapshot!("pr-onto-a-live-pool-offline", render(&review));

    // Against live state: the same resolution as plan and apply. A platform team's pool,
    // created outside pbsync, is found.
    let state = tempfile::tempdir().expect("state");
    let target = LocalDir::new(state.path(), "default");
    let mut ctx = b.context();
    ctx.git.reference = "refs/heads/main".into();
    let snapshot = ctx.fetch().expect("fetch base");
    block_on(engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(&target, RunOptions::default()),
    ))
    .expect("apply base");
    let live = block_on(review::plan(&ctx, &request("main", "pr"), Some(&target)))
        .expect("a plan whose pool is missing is still a review");
    assert_eq!(
        live.plan
            .violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "deployments/chat.yaml:10: R6-unresolved-reference: compute pool ComputePool team-a/gpu-shared is neither declared in the repository nor found on the hub"
        ],
        "missing live: R6 at its line"
    );
    let pool = state.path().join("team-a/computepool/gpu-shared.yaml");
    std::fs::create_dir_all(pool.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        pool,
        yaml::compute_pool("team-a", "gpu-shared", "gpu-infra", "shared"),
    )
    .expect("write pool");
    let mut live =
        block_on(review::plan(&ctx, &request("main", "pr"), Some(&target))).expect("live plan");
    live.plan.read_at = Some("2025-06-01T12:00:00Z".into());
    assert!(
        live.plan.violations.is_empty(),
        "{:?}",
        live.plan.violations
    );
    let refs = &live.plan.references;
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(refs[0].action, pbsync::plan::Action::Unchanged);
    assert_eq!(
        refs[0].reason,
        "resolved on the hub: ComputePool team-a/gpu-shared, not managed by pbsync"
    );
    insta::assert_snapshot!("pr-onto-a-live-pool-live", render(&live));
}

#[test]
fn a_head_with_validation_errors() {
    let mut b = base_with(&[("a", "delete")]);
    let broken = "apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {name: broken, namespace: team-a}
spec:
  type: Application
  workloadProfiles: [{name: missing}]
";
    b.commit("pr", Some("main"), &[("bundles/broken.yaml", Some(broken))]);
    let review = b.offline("main", "pr");
    assert!(!review.plan.violations.is_empty());
    assert!(review.plan.changes.is_empty(), "nothing is applied from it");
    let text = render(&review);
    let first_section = text.find("####").expect("a section");
    assert!(
        text[first_section..].starts_with("#### :x:"),
        "violations come first:\n{text}"
    );
    assert!(text.contains("`bundles/broken.yaml:"), "file:line:\n{text}");
    insta::assert_snapshot!("pr-a-head-with-validation-errors", text);
}

#[test]
fn a_plan_over_the_comment_limit_is_split_into_numbered_parts() {
    let mut b = base_with(&[("a", "delete")]);
    let mut files: Vec<(String, String)> = Vec::new();
    for i in 0..400 {
        let name = format!("profile-with-a-rather-long-name-{i:04}");
        files.push((
            format!("shared/p{i:04}.yaml"),
            profile(&name, &format!("img:{i}")),
        ));
        files.push((
            format!("bundles/b{i:04}.yaml"),
            bundle(
                &format!("bundle-with-a-rather-long-name-{i:04}"),
                &name,
                "delete",
            ),
        ));
    }
    let changes: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    b.commit("pr", Some("main"), &changes);
    let review = b.offline("main", "pr");
    let parts = render_comments(&review.plan, &review.comment_context());
    let n = parts.len();
    assert!(n >= 2, "{n} part(s)");
    let mut headers = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            part.chars().count() < GITHUB_LIMIT,
            "part {} is {} chars",
            i + 1,
            part.chars().count()
        );
        assert!(part.starts_with(MARKER));
        assert!(part.contains(&format!("(part {} of {n})", i + 1)));
        headers.push(part.lines().nth(1).expect("title").to_string());
    }
    let all = parts.join("");
    for i in 0..400 {
        assert!(all.contains(&format!("`team-a/bundle-with-a-rather-long-name-{i:04}`")));
    }
    insta::assert_snapshot!("pr-over-the-comment-limit-titles", headers.join("\n"));
}

#[test]
fn a_base_that_moved_since_the_branch_was_made() {
    let mut b = base_with(&[("a", "delete")]);
    // The branch adds `blog`; meanwhile main gains `shop`.
    let blog = bundle("blog", "web", "delete");
    b.commit("pr", Some("main"), &[("bundles/blog.yaml", Some(&blog))]);
    let shop = bundle("shop", "web", "delete");
    b.commit("main", None, &[("bundles/shop.yaml", Some(&shop))]);

    let review = b.offline("main", "pr");
    let s = review.plan.summary();
    assert_eq!(
        (s.create, s.delete, s.orphan),
        (1, 0, 0),
        "{:?}",
        review.plan.changes
    );

    // The branch alone, planned against what main now produces, would delete `shop`.
    let ctx = b.context();
    let repo = b.repo.git();
    let base_id = repo.revparse_single("refs/heads/main").expect("main").id();
    let head_id = repo.revparse_single("refs/heads/pr").expect("pr").id();
    let base = pbsync::source::read_commit(repo, base_id, "", 1 << 20).expect("base");
    let head = pbsync::source::read_commit(repo, head_id, "", 1 << 20).expect("head");
    let _catalog = pbsync::model::Catalog::default();
    let base_graph = load_snapshot(&base).expect("base").graph;
    let head_graph = load_snapshot(&head).expect("head").graph;
    let stale = pbsync::plan::plan(
        &head_graph,
        &pbsync::live::Observed::as_applied(&base_graph, "default"),
        &pbsync::plan::History::default(),
        &ctx.plan,
    );
    assert_eq!(
        stale.summary().delete,
        1,
        "the spurious deletion the merge plan avoids"
    );
    insta::assert_snapshot!("pr-a-base-that-moved", render(&review));
}

#[test]
fn a_conflicting_merge_is_an_error_naming_the_paths() {
    let mut b = base_with(&[("a", "delete")]);
    let one = profile("web", "nginx:2");
    let two = profile("web", "nginx:3");
    b.commit("pr", Some("main"), &[("shared/web.yaml", Some(&one))]);
    b.commit("main", None, &[("shared/web.yaml", Some(&two))]);
    let err = block_on(review::plan::<NoTarget>(
        &b.context(),
        &request("main", "pr"),
        None,
    ))
    .expect_err("conflict");
    let text = pbsync::error_chain(&err);
    assert!(text.contains("conflicts in shared/web.yaml"), "{text}");
}

#[test]
fn the_cli_writes_comment_files_and_exits_by_the_plan() {
    let mut b = base_with(&[("a", "delete")]);
    let edited = profile("web", "nginx:1.28");
    b.commit("pr", Some("main"), &[("shared/web.yaml", Some(&edited))]);
    let dir = tempfile::tempdir().expect("comment dir");
    let stale = dir.path().join("comment-7.md");
    std::fs::write(&stale, "old").expect("stale");
    let repo_path = b.repo.path().to_string_lossy().into_owned();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "plan".to_string(),
            "--repo".into(),
            repo_path.clone(),
            "--base".into(),
            "main".into(),
            "--head".into(),
            "pr".into(),
            "--offline".into(),
        ];
        args.extend(extra.iter().map(ToString::to_string));
        std::process::Command::new(env!("CARGO_BIN_EXE_pbsync"))
            .args(&args)
            .output()
            .expect("run pbsync")
    };
    let comment_dir = dir.path().to_string_lossy().into_owned();
    let out = run(&[
        "--format",
        "markdown",
        "--comment-dir",
        &comment_dir,
        "--detailed-exitcode",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let first = std::fs::read_to_string(dir.path().join("comment-1.md")).expect("comment-1.md");
    assert!(first.starts_with(MARKER));
    assert!(
        !stale.exists(),
        "parts of an earlier, longer plan are removed"
    );
    let out = run(&["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["impact"][0]["bundles"][0]["name"], "a");
    assert_eq!(doc["offline"], true);
    assert!(doc["violations"].as_array().is_some_and(Vec::is_empty));

    // An invalid head: violations first, exit 1 whatever the format.
    b.commit(
        "pr",
        None,
        &[("bundles/broken.yaml", Some("kind: ProfileBundle\n"))],
    );
    let out = run(&["--format", "json", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["violations"][0]["path"], "bundles/broken.yaml");
    assert!(doc["violations"][0]["line"].as_u64().is_some());
    let out = run(&["--format", "markdown"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let md = String::from_utf8(out.stdout).expect("utf-8");
    assert!(md.contains("#### :x:"), "{md}");
}
