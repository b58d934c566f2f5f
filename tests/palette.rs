//! The Palette target against the Palette API simulator on 127.0.0.1:0: the whole pipeline
//! (`reconcile::run_once` with hub objects in a local directory and cluster profiles in
//! Palette) on git repositories built in temp dirs, and the health the target follows
//! afterwards (`apply --wait`). Each test has its own simulator.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use pbsync::engine::wait::{Ending, Waited};
use pbsync::engine::{self, Context, Error, Goal, Input, Report};
use pbsync::graph::ResourceGraph;
use pbsync::guard::Refusal;
use pbsync::health::{Health, State};
use pbsync::live::Observed;
use pbsync::model::{ObjectKey, Rule};
use pbsync::plan::{Action, Plan};
use pbsync::target::local_dir::LocalDir;
use pbsync::target::palette::{ApiKey, PaletteConfig, PaletteTarget};
use pbsync::target::{Outcome, Reading, RunError, RunOptions, Split, Target as _};
use pbsync_devkit::palette_sim::{self, Fault, RateLimit, Scope, SeedProfile, Simulator};
use pbsync_devkit::testkit::ScratchRepo;
use pbsync_devkit::testkit::yaml::{full_cluster_profile, infrastructure_bundle};
use serde_json::{Value, json};

const KEY: &str = "test-api-key";
const PROJECT: &str = "project-uid-1";
const INSTANCE: &str = "default";

/// The namespace of every bundle.
const NAMESPACE: &str = "project-a";

fn seed(name: &str, version: &str, ptype: &str) -> SeedProfile {
    SeedProfile {
        name: name.into(),
        version: version.into(),
        scope: Some(Scope::Project),
        project_uid: Some(PROJECT.into()),
        template: json!({"type": ptype, "cloudType": "edge-native",
            "packs": [{"name": "os", "tag": "1.0", "layer": "os"}]}),
        ..SeedProfile::default()
    }
}

/// A simulator, a repository and a state directory.
struct World {
    sim: Simulator,
    repo: ScratchRepo,
    state: tempfile::TempDir,
}

fn sim_config() -> palette_sim::Config {
    palette_sim::Config {
        api_key: Some(KEY.into()),
        ..palette_sim::Config::default()
    }
}

impl World {
    async fn new() -> Self {
        Self::with(sim_config()).await
    }

    async fn with(config: palette_sim::Config) -> Self {
        let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), config)
            .await
            .expect("simulator");
        Self {
            sim,
            repo: ScratchRepo::new(),
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn palette_config(&self) -> PaletteConfig {
        let mut c = PaletteConfig::new(self.sim.url(), ApiKey::new(KEY));
        c.project_uid = Some(PROJECT.into());
        c.timeout = Duration::from_secs(5);
        c.retry_base = Duration::from_millis(10);
        c.max_retries = 8;
        c.jitter_seed = 42;
        c
    }

    /// A fresh target, as each CLI run builds one.
    fn target(&self) -> Split<LocalDir, PaletteTarget> {
        self.target_with(self.palette_config())
    }

    fn target_with(&self, config: PaletteConfig) -> Split<LocalDir, PaletteTarget> {
        Split {
            hub: LocalDir::new(self.state.path(), INSTANCE),
            palette: PaletteTarget::new(config, INSTANCE).expect("palette target"),
        }
    }

    fn context(&self) -> Context {
        Context::new(self.repo.path(), "HEAD", "")
    }

    async fn pass(&self) -> Result<Report, Error> {
        self.pass_with(&self.target()).await
    }

    async fn pass_with(&self, target: &Split<LocalDir, PaletteTarget>) -> Result<Report, Error> {
        let ctx = self.context();
        let snapshot = ctx.fetch().expect("fetch");
        engine::run(
            &ctx,
            Input::of(&snapshot),
            Goal::Apply(target, RunOptions::default()),
        )
        .await
    }

    async fn plan(&self) -> Plan {
        let ctx = self.context();
        let snapshot = ctx.fetch().expect("fetch");
        engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&self.target()))
            .await
            .expect("plan")
            .plan
            .expect("a plan")
    }

    fn only(&self, name: &str, version: &str) -> palette_sim::Profile {
        let found = self.sim.find(name, version);
        assert_eq!(found.len(), 1, "exactly one {name}@{version}: {found:#?}");
        found.into_iter().next().expect("one")
    }
}

/// A plain HTTP client for talking to the simulator directly.
fn http() -> reqwest::Client {
    // reqwest is built without a default crypto provider (see the Palette client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn key(name: &str, version: &str) -> ObjectKey {
    ObjectKey::cluster_profile("project", name, version)
}

fn action_of(plan: &Plan, key: &ObjectKey) -> Action {
    plan.changes
        .iter()
        .find(|c| &c.key == key)
        .map(|c| c.action)
        .unwrap_or_else(|| panic!("{key} not in plan"))
}

fn outcome_of(report: &Report, key: &ObjectKey) -> String {
    report
        .changes()
        .entries
        .iter()
        .find(|e| &e.key == key)
        .map(|e| e.outcome.to_string())
        .unwrap_or_else(|| panic!("{key} not in change set"))
}

fn file_exists(dir: &Path, rel: &str) -> bool {
    dir.join(rel).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_profile_is_created_published_and_a_second_pass_writes_nothing() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "edge", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");

    let report = w.pass().await.expect("first pass");
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "created");
    let p = w.only("edge", "1.0.0");
    assert_eq!(p.scope, Scope::Project);
    assert_eq!(p.project_uid.as_deref(), Some(PROJECT));
    let published = p.published.as_ref().expect("published");
    assert_eq!(published["packs"][0]["values"], json!("a: 1"));
    assert_eq!(
        published["packs"][1]["manifests"][0]["content"],
        json!("kind: ConfigMap")
    );
    assert_eq!(p.labels["app.kubernetes.io/managed-by"], json!("pbsync"));
    assert_eq!(p.labels["pbsync.dev/instance"], json!(INSTANCE));
    assert_eq!(p.labels["team"], json!("platform"));
    assert_eq!(p.annotations["pbsync.dev/source"], json!("cp.yaml"));
    assert_eq!(p.variables[0]["name"], json!("vip"));
    let stats = w.sim.stats();
    assert_eq!(stats.count("POST /v1/clusterprofiles"), 1);
    assert_eq!(stats.count("PATCH /v1/clusterprofiles/{uid}/publish"), 1);
    assert_eq!(stats.writes(), 2, "{stats:#?}");
    assert!(file_exists(
        w.state.path(),
        "project-a/profilebundle/edge.yaml"
    ));

    // An empty commit: a new revision, nothing to change, not a single write.
    w.repo.write("README.md", "docs\n");
    w.repo.commit("test");
    w.sim.reset_stats();
    let report = w.pass().await.expect("second pass");
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "unchanged");
    assert_eq!(report.plan().summary().unchanged, 2);
    let stats = w.sim.stats();
    assert_eq!(stats.writes(), 0, "{stats:#?}");
    assert!(stats.count("GET /v1/clusterprofiles/{uid}") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_profile_is_written_as_draft_then_published() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "edge", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.pass().await.expect("create");
    let uid = w.only("edge", "1.0.0").uid;

    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 2"),
    );
    w.repo.commit("test");
    let plan = w.plan().await;
    let change = plan
        .changes
        .iter()
        .find(|c| c.key == key("edge", "1.0.0"))
        .expect("change");
    assert_eq!(change.action, Action::Update);
    let paths: Vec<&str> = change.diff.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["spec.template.packs[0].values"]);

    w.sim.reset_stats();
    let report = w.pass().await.expect("update");
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "configured");
    let p = w.only("edge", "1.0.0");
    assert_eq!(p.uid, uid, "updated in place");
    assert_eq!(
        p.published.as_ref().expect("published")["packs"][0]["values"],
        json!("a: 2")
    );
    let stats = w.sim.stats();
    assert_eq!(stats.count("PUT /v1/clusterprofiles/{uid}"), 1);
    assert_eq!(stats.count("PATCH /v1/clusterprofiles/{uid}/publish"), 1);
    // Only the template differed: no variables or metadata writes.
    assert_eq!(stats.writes(), 2, "{stats:#?}");

    // Variables and labels go through their own endpoints.
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 2")
            .replace("team: platform", "team: ml")
            .replace("required: true", "required: false"),
    );
    w.repo.commit("test");
    w.sim.reset_stats();
    w.pass().await.expect("update metadata and variables");
    let p = w.only("edge", "1.0.0");
    assert_eq!(p.labels["team"], json!("ml"));
    assert_eq!(p.variables[0]["required"], json!(false));
    let stats = w.sim.stats();
    assert_eq!(stats.count("PUT /v1/clusterprofiles/{uid}/variables"), 1);
    assert_eq!(stats.count("PATCH /v1/clusterprofiles/{uid}/metadata"), 1);
    assert_eq!(stats.count("PUT /v1/clusterprofiles/{uid}"), 0);
    assert_eq!(w.plan().await.summary().unchanged, 2, "converged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_bundle_deletes_its_profile_across_both_targets() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "edge", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.pass().await.expect("create");

    w.repo.remove("b.yaml");
    w.repo.remove("cp.yaml");
    w.repo.write("README.md", "empty\n");
    w.repo.commit("test");
    let ctx = w.context();
    let snapshot = ctx.fetch().expect("fetch");
    let target = w.target();
    // Deleting every managed bundle trips the mass-deletion guard: allow it explicitly.
    let report = engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(
            &target,
            RunOptions {
                allow_mass_deletion: true,
                ..RunOptions::default()
            },
        ),
    )
    .await
    .expect("delete pass");
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "deleted");
    assert!(w.sim.find("edge", "1.0.0").is_empty());
    assert!(!file_exists(
        w.state.path(),
        "project-a/profilebundle/edge.yaml"
    ));
    // The profile goes before the bundle that referenced it.
    let order: Vec<String> = report
        .changes()
        .entries
        .iter()
        .map(|e| e.key.kind.to_string())
        .collect();
    assert_eq!(order, ["ClusterProfile", "ProfileBundle"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_profile_is_kept_until_its_last_referrer_goes() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "a.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "b", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.pass().await.expect("create");

    w.repo.remove("a.yaml");
    w.repo.commit("test");
    let report = w.pass().await.expect("remove a");
    let change = report
        .plan()
        .changes
        .iter()
        .find(|c| c.key == key("edge", "1.0.0"))
        .expect("profile");
    assert_eq!(change.action, Action::Unchanged);
    assert!(
        change.reasons.iter().any(|r| r.contains("kept")),
        "{:?}",
        change.reasons
    );
    w.only("edge", "1.0.0");
    assert!(!file_exists(
        w.state.path(),
        "project-a/profilebundle/a.yaml"
    ));

    w.repo.remove("b.yaml");
    w.repo.remove("cp.yaml");
    w.repo.write("README.md", "empty\n");
    w.repo.commit("test");
    let ctx = w.context();
    let snapshot = ctx.fetch().expect("fetch");
    let report = engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(
            &w.target(),
            RunOptions {
                allow_mass_deletion: true,
                ..RunOptions::default()
            },
        ),
    )
    .await
    .expect("remove b");
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "deleted");
    assert!(w.sim.find("edge", "1.0.0").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_policy_releases_the_profile_in_palette() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "keep.yaml",
        full_cluster_profile("other", "1.0.0", "infra", "b: 1"),
    );
    w.repo.write(
        "a.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "orphan"),
    );
    w.repo.write(
        "k.yaml",
        infrastructure_bundle(NAMESPACE, "k", &["other@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.pass().await.expect("create");

    w.repo.remove("a.yaml");
    w.repo.remove("cp.yaml");
    w.repo.commit("test");
    let report = w.pass().await.expect("orphan");
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "orphaned");
    let p = w.only("edge", "1.0.0");
    assert!(!p.labels.contains_key("app.kubernetes.io/managed-by"));
    assert!(!p.labels.contains_key("pbsync.dev/instance"));
    assert_eq!(p.labels["team"], json!("platform"), "other labels stay");
    assert_eq!(p.annotations["pbsync.dev/released-by"], json!(INSTANCE));
    assert_eq!(p.annotations["scope"], json!("project"));

    // Released: no later pass touches it.
    w.sim.reset_stats();
    w.pass().await.expect("quiet pass");
    assert_eq!(w.sim.stats().writes(), 0);

    // A commit that needs it again takes it back.
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "a.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    let report = w.pass().await.expect("take back");
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "configured");
    let p = w.only("edge", "1.0.0");
    assert_eq!(p.labels["pbsync.dev/instance"], json!(INSTANCE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_in_use_is_blocked_naming_its_clusters() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "keep.yaml",
        full_cluster_profile("other", "1.0.0", "infra", "b: 1"),
    );
    w.repo.write(
        "a.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.write(
        "k.yaml",
        infrastructure_bundle(NAMESPACE, "k", &["other@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.pass().await.expect("create");
    let uid = w.only("edge", "1.0.0").uid;
    w.sim
        .set_in_use(
            &uid,
            vec![
                json!({"name": "edge-2", "uid": "c2"}),
                json!({"name": "edge-1", "uid": "c1"}),
            ],
        )
        .expect("in use");

    w.repo.remove("a.yaml");
    w.repo.remove("cp.yaml");
    w.repo.commit("test");
    w.sim.reset_stats();
    let report = w.pass().await.expect("pass");
    let change = report
        .plan()
        .changes
        .iter()
        .find(|c| c.key == key("edge", "1.0.0"))
        .expect("profile");
    assert_eq!(change.action, Action::Blocked);
    assert!(
        change
            .reasons
            .iter()
            .any(|r| r.contains("in use by cluster(s) edge-1, edge-2")),
        "{:?}",
        change.reasons
    );
    w.only("edge", "1.0.0");
    assert_eq!(w.sim.stats().count("DELETE /v1/clusterprofiles/{uid}"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_profile_that_exists_is_validated_and_never_changed() {
    let mut w = World::new().await;
    let uid = w
        .sim
        .seed(seed("base-infra", "2.0.0", "cluster"))
        .expect("seed");
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["base-infra@2.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.sim.reset_stats();
    let report = w.pass().await.expect("pass");
    assert!(
        report
            .plan()
            .changes
            .iter()
            .all(|c| c.key.kind != pbsync::model::Kind::ClusterProfile),
        "an external profile is not planned: {:?}",
        report.plan().changes
    );
    assert_eq!(w.sim.stats().writes(), 0);
    let p = w.only("base-infra", "2.0.0");
    assert_eq!(p.uid, uid);
    assert!(p.labels.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_profile_that_does_not_exist_is_a_violation() {
    let mut w = World::new().await;
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["missing@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    match w.pass().await {
        Err(Error::Invalid { violations, .. }) => {
            let v = &violations.0[0];
            assert_eq!(v.rule, Rule::UnresolvedReference);
            assert_eq!(&*v.path, "b.yaml");
            assert!(v.message.contains("nor found in Palette"), "{v}");
        }
        other => panic!("expected a violation, got {other:?}"),
    }
    assert_eq!(w.sim.stats().writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_profile_of_the_wrong_type_is_a_violation() {
    let mut w = World::new().await;
    w.sim
        .seed(seed("monitoring", "1.0.0", "add-on"))
        .expect("seed");
    // An Infrastructure bundle needs an Infrastructure or Full profile; this one is Add-on.
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["monitoring@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    match w.pass().await {
        Err(Error::Invalid { violations, .. }) => {
            assert!(
                violations
                    .0
                    .iter()
                    .any(|v| v.rule == Rule::InfrastructureBundle),
                "{violations:?}"
            );
        }
        other => panic!("expected a violation, got {other:?}"),
    }
    assert_eq!(w.sim.stats().writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_someone_else_made_is_never_changed_or_deleted() {
    let mut w = World::new().await;
    let mut foreign = seed("edge", "1.0.0", "infra");
    foreign.labels.insert("team".into(), json!("other"));
    let uid = w.sim.seed(foreign).expect("seed");
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.sim.reset_stats();
    let report = w.pass().await.expect("pass");
    assert_eq!(
        action_of(report.plan(), &key("edge", "1.0.0")),
        Action::Blocked
    );
    assert_eq!(w.sim.stats().writes(), 0);

    // The target checks ownership itself, whatever a plan says.
    let target = w.target();
    let ctx = w.context();
    let snapshot = ctx.fetch().expect("fetch");
    let planned = engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&target))
        .await
        .expect("plan");
    let mut change = planned
        .plan()
        .changes
        .iter()
        .find(|c| c.key == key("edge", "1.0.0"))
        .expect("change")
        .clone();
    change.action = Action::Update;
    let err = target
        .write(&change, &json!({"metadata": {"name": "edge"}}))
        .await
        .expect_err("refused");
    assert!(
        matches!(err.refusal(), Some(Refusal::NotOurs { .. })),
        "{}",
        pbsync::error_chain(&err)
    );
    // A plan that says delete (here forged) gets no permit: the guard reads the profile's
    // labels again at the moment of deletion.
    change.action = Action::Delete;
    change.phase = pbsync::plan::Phase::Prune;
    let plan = Plan {
        changes: vec![change],
        ..planned.plan().clone()
    };
    let stamp = pbsync::ownership::Stamp {
        instance: "default",
        revision: &plan.revision,
        adopted: false,
    };
    let (set, result) = pbsync::target::run(
        &target,
        &planned.graph,
        &plan,
        &stamp,
        RunOptions::default(),
    )
    .await;
    let Err(RunError::Prune { first, .. }) = result else {
        panic!("expected a refused deletion, got {result:?}");
    };
    assert!(
        matches!(first.refusal(), Some(Refusal::NotOurs { .. })),
        "{}",
        pbsync::error_chain(&first)
    );
    assert_eq!(set.entries[0].outcome, Outcome::Failed);
    assert_eq!(w.only("edge", "1.0.0").uid, uid);
    assert_eq!(w.sim.stats().writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_and_5xx_answers_are_survived_without_duplicates() {
    let mut w = World::new().await;
    for i in 0..3 {
        w.repo.write(
            &format!("cp{i}.yaml"),
            full_cluster_profile(&format!("edge{i}"), "1.0.0", "infra", "a: 1"),
        );
        w.repo.write(
            &format!("b{i}.yaml"),
            infrastructure_bundle(
                NAMESPACE,
                &format!("b{i}"),
                &[&format!("edge{i}@1.0.0")],
                "delete",
            ),
        );
    }
    w.repo.commit("test");
    // Each request is retried at most `max_retries` (8) times, so the storm is spread
    // over the endpoints a pass uses.
    for (method, path) in [
        ("POST", "/v1/dashboard/clusterprofiles"),
        ("POST", "/v1/clusterprofiles"),
        ("PATCH", "/v1/clusterprofiles"),
        ("GET", "/v1/clusterprofiles"),
    ] {
        w.sim.inject(Fault::status(429).on(method, path).times(4));
    }
    // 5xx on a create is ambiguous: looked up before it is sent again.
    w.sim.inject(
        Fault::status(503)
            .on("POST", "/v1/clusterprofiles")
            .times(2),
    );
    w.sim.inject(
        Fault::status(500)
            .on("PATCH", "/v1/clusterprofiles")
            .times(2),
    );
    w.sim
        .inject(Fault::status(502).on("GET", "/v1/clusterprofiles").times(2));
    w.pass().await.expect("survives");
    w.pass().await.expect("observes through the rest");
    assert!(w.sim.pending_faults().is_empty(), "every fault was hit");
    let stats = w.sim.stats();
    assert_eq!(stats.answered(429), 16, "{stats:#?}");
    assert_eq!(stats.answered(503), 2);
    assert_eq!(stats.answered(500), 2);
    assert_eq!(stats.answered(502), 2);
    assert_eq!(w.sim.profiles().len(), 3, "no duplicates");
    for i in 0..3 {
        let p = w.only(&format!("edge{i}"), "1.0.0");
        assert!(p.published.is_some());
    }
    assert_eq!(w.plan().await.summary().unchanged, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_rate_limit_is_respected_by_backing_off() {
    // A Palette far stricter than documented: 2 requests a second, no burst to speak of.
    let mut config = sim_config();
    config.rate_limits = vec![RateLimit {
        prefix: "/".into(),
        per_second: 4.0,
        burst: 0.5,
    }];
    let mut w = World::with(config).await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.pass().await.expect("create under a tight limit");
    w.pass().await.expect("observe under a tight limit");
    assert!(w.sim.stats().answered(429) > 0, "the limit was hit");
    w.only("edge", "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_create_leaves_exactly_one_profile() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    // The server creates the profile, then the connection drops before the answer.
    w.sim
        .inject(Fault::drop_after_response().on("POST", "/v1/clusterprofiles"));
    let report = w.pass().await.expect("pass");
    assert!(
        w.sim.pending_faults().is_empty(),
        "the connection was dropped"
    );
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "created");
    let p = w.only("edge", "1.0.0");
    assert!(p.published.is_some(), "published after the lookup");
    let stats = w.sim.stats();
    assert_eq!(
        stats.count("POST /v1/clusterprofiles"),
        1,
        "found by lookup, not created again: {stats:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_timed_out_is_looked_up_not_repeated() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    // Slower than the client's timeout; the server still carries the create out.
    w.sim
        .inject(Fault::latency(400).on("POST", "/v1/clusterprofiles"));
    let mut config = w.palette_config();
    config.timeout = Duration::from_millis(150);
    config.retry_base = Duration::from_millis(1000);
    let target = w.target_with(config);
    w.pass_with(&target).await.expect("pass");
    assert!(w.sim.pending_faults().is_empty());
    w.only("edge", "1.0.0");
    let stats = w.sim.stats();
    assert_eq!(stats.count("POST /v1/clusterprofiles"), 1);
    assert_eq!(stats.answered(201), 0, "the client never saw the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_dropped_before_the_server_acted_is_tried_again_once() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.sim
        .inject(Fault::drop_connection().on("POST", "/v1/clusterprofiles"));
    w.pass().await.expect("pass");
    w.only("edge", "1.0.0");
    assert_eq!(w.sim.stats().count("POST /v1/clusterprofiles"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_profile_reports_palettes_code_and_its_file_and_line() {
    let mut w = World::new().await;
    // Palette knows no pack layer "firmware": a 400, not retried.
    w.repo.write(
        "profiles/cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1")
            .replace("layer: k8s", "layer: firmware"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    let err = w.pass().await.expect_err("rejected");
    let Error::Apply { changes, .. } = &err else {
        panic!("expected an apply error, got {err:?}");
    };
    let text = pbsync::error_chain(&err);
    assert!(text.contains("profiles/cp.yaml:1"), "{text}");
    assert!(text.contains("400 BadRequest"), "{text}");
    assert!(text.contains("firmware"), "{text}");
    assert!(!err.is_retryable());
    assert_eq!(outcome_of_set(changes, &key("edge", "1.0.0")), "failed");
    assert_eq!(
        w.sim.stats().count("POST /v1/clusterprofiles"),
        1,
        "not retried"
    );
    // The bundle was not written: it comes after its profile.
    assert!(!file_exists(
        w.state.path(),
        "project-a/profilebundle/a.yaml"
    ));
}

fn outcome_of_set(set: &pbsync::target::ChangeSet, key: &ObjectKey) -> String {
    set.entries
        .iter()
        .find(|e| &e.key == key)
        .map(|e| e.outcome.to_string())
        .unwrap_or_else(|| panic!("{key} not in change set"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_pages_through_every_profile() {
    let mut config = sim_config();
    config.page_cap = 2;
    let mut w = World::with(config).await;
    for i in 0..7 {
        w.sim
            .seed(seed(&format!("aaa-other-{i}"), "1.0.0", "add-on"))
            .expect("seed");
    }
    // Sorts last: on the fourth page of two.
    w.sim
        .seed(seed("zz-infra", "1.0.0", "infra"))
        .expect("seed");
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["zz-infra@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    let target = w.target();
    let ctx = w.context();
    let snapshot = ctx.fetch().expect("fetch");
    let planned = engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&target))
        .await
        .expect("plan");
    let observed: &Observed = planned.observed();
    assert!(observed.get(&key("zz-infra", "1.0.0")).is_some());
    assert!(observed.read_at.is_some());
    assert!(
        w.sim.stats().count("POST /v1/dashboard/clusterprofiles") >= 4,
        "{:#?}",
        w.sim.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_profile_without_a_project_uid_is_unknown_not_created() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    let mut config = w.palette_config();
    config.project_uid = None;
    let target = w.target_with(config);
    let err = w.pass_with(&target).await.expect_err("unknown");
    let Error::Apply { plan, .. } = &err else {
        panic!("expected an apply error, got {err:?}");
    };
    assert_eq!(action_of(plan, &key("edge", "1.0.0")), Action::Unknown);
    assert!(w.sim.profiles().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_that_violate_the_schema_are_answered_400() {
    let w = World::new().await;
    let http = http();
    let post = |body: Value| {
        http.post(format!("{}/v1/clusterprofiles", w.sim.url()))
            .header("ApiKey", KEY)
            .header("ProjectUid", PROJECT)
            .json(&body)
            .send()
    };
    // A field the API does not define (the update template has no cloudType, but here it
    // is the create entity with a misspelt field).
    let resp = post(json!({"metadata": {"name": "x"}, "spec": {"version": "1",
        "template": {"type": "infra", "packz": []}}}))
    .await
    .expect("send");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("v1Error");
    assert_eq!(body["code"], json!("BadRequest"));
    assert_eq!(body["details"]["path"], json!("body.spec.template.packz"));
    assert!(body["ref"].is_string());
    // A wrong type and a value outside an enum.
    for (bad, path) in [
        (
            json!({"metadata": {"name": "x"}, "spec": {"version": 1}}),
            "body.spec.version",
        ),
        (
            json!({"metadata": {"name": "x"}, "spec": {"template": {"type": "full"}}}),
            "body.spec.template.type",
        ),
        (
            json!({"metadata": {"name": "x"}, "spec": {"template": {"packs": [{"tag": "1"}]}}}),
            "body.spec.template.packs[0]",
        ),
    ] {
        let resp = post(bad).await.expect("send");
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.expect("v1Error");
        assert_eq!(body["details"]["path"], json!(path), "{body}");
    }
    // The update entity is checked against its own definition.
    let uid = w.sim.seed(seed("edge", "1.0.0", "infra")).expect("seed");
    let resp = http
        .put(format!("{}/v1/clusterprofiles/{uid}", w.sim.url()))
        .header("ApiKey", KEY)
        .header("ProjectUid", PROJECT)
        .json(&json!({"spec": {"template": {"cloudType": "aws", "packs": []}}}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    // No key, no entry.
    let resp = http
        .post(format!("{}/v1/clusterprofiles", w.sim.url()))
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    assert_eq!(w.sim.profiles().len(), 1, "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_refused_with_409() {
    let w = World::new().await;
    let http = http();
    let body = json!({"metadata": {"name": "x"}, "spec": {"version": "1.0.0",
        "template": {"type": "add-on", "cloudType": "all", "packs": []}}});
    for expected in [201, 409] {
        let resp = http
            .post(format!("{}/v1/clusterprofiles", w.sim.url()))
            .header("ApiKey", KEY)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_cluster_profiles_to_palette_and_hub_objects_to_files() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    let key_file = w.state.path().join("palette.key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key file");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pbsync"))
        .arg("apply")
        .arg("--repo")
        .arg(w.repo.path())
        .arg("--target")
        .arg(format!("dir:{}", w.state.path().join("hub").display()))
        .args(["--palette-url", &w.sim.url()])
        .arg("--palette-api-key-file")
        .arg(&key_file)
        .args(["--palette-project-uid", PROJECT, "--palette-timeout", "5s"])
        .arg("--stats")
        .env_remove("PALETTE_API_KEY")
        .output()
        .await
        .expect("run pbsync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ClusterProfile project/edge@1.0.0"),
        "{stdout}"
    );
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));
    assert!(
        stderr.contains("requests: create 201: 1, list 200: 1, publish 204: 1"),
        "{stderr}"
    );
    w.only("edge", "1.0.0");
    assert!(file_exists(
        &w.state.path().join("hub"),
        "project-a/profilebundle/a.yaml"
    ));
    assert!(
        !w.state.path().join("hub/palette").exists(),
        "profiles went to Palette, not to files"
    );

    // A URL without a key is a configuration error (exit 2).
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pbsync"))
        .arg("plan")
        .arg("--repo")
        .arg(w.repo.path())
        .arg("--target")
        .arg(format!("dir:{}", w.state.path().join("hub").display()))
        .args(["--palette-url", &w.sim.url()])
        .env_remove("PALETTE_API_KEY")
        .output()
        .await
        .expect("run pbsync");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_takes_over_a_foreign_profile_and_only_ever_releases_it() {
    let mut w = World::new().await;
    let uid = w.sim.seed(seed("edge", "1.0.0", "infra")).expect("seed");
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "keep.yaml",
        full_cluster_profile("other", "1.0.0", "infra", "b: 1"),
    );
    w.repo.write(
        "a.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.write(
        "k.yaml",
        infrastructure_bundle(NAMESPACE, "k", &["other@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    let mut ctx = w.context();
    ctx.plan.adopt = true;
    let target = w.target();
    let snapshot = ctx.fetch().expect("fetch");
    let report = engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(&target, RunOptions::default()),
    )
    .await
    .expect("adopt");
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "configured");
    let p = w.only("edge", "1.0.0");
    assert_eq!(p.uid, uid, "adopted in place, not recreated");
    assert_eq!(p.labels["pbsync.dev/adopted"], json!("true"));
    assert_eq!(
        p.published.as_ref().expect("published")["packs"][0]["name"],
        json!("edge-k8s")
    );

    // Leaving: an adopted profile is released, never deleted, whatever the policy says.
    w.repo.remove("a.yaml");
    w.repo.remove("cp.yaml");
    w.repo.commit("test");
    let snapshot = ctx.fetch().expect("fetch");
    let report = engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(&w.target(), RunOptions::default()),
    )
    .await
    .expect("release");
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "orphaned");
    let p = w.only("edge", "1.0.0");
    assert!(!p.labels.contains_key("pbsync.dev/adopted"));
    assert!(!p.labels.contains_key("pbsync.dev/instance"));
    assert_eq!(w.sim.stats().count("DELETE /v1/clusterprofiles/{uid}"), 0);
}

// ---------------------------------------------------------------------------------------
// The one guard: adoption, and the ownership and use of a profile read at deletion
// ---------------------------------------------------------------------------------------

/// A commit that removes bundle `a` and its profile `edge@1.0.0` (applied before), planned
/// but not yet applied: the stale plan to run after the world changed.
async fn a_planned_deletion_of_edge(w: &mut World) -> (Report, Split<LocalDir, PaletteTarget>) {
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "keep.yaml",
        full_cluster_profile("other", "1.0.0", "infra", "b: 1"),
    );
    w.repo.write(
        "a.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.write(
        "k.yaml",
        infrastructure_bundle(NAMESPACE, "k", &["other@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.pass().await.expect("create");
    w.repo.remove("a.yaml");
    w.repo.remove("cp.yaml");
    w.repo.commit("test");
    let target = w.target();
    let ctx = w.context();
    let snapshot = ctx.fetch().expect("fetch");
    let planned = engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&target))
        .await
        .expect("plan");
    assert_eq!(
        action_of(planned.plan(), &key("edge", "1.0.0")),
        Action::Delete
    );
    (planned, target)
}

async fn run_stale(
    planned: &Report,
    target: &Split<LocalDir, PaletteTarget>,
) -> Result<(), RunError> {
    let stamp = pbsync::ownership::Stamp {
        instance: INSTANCE,
        revision: &planned.revision,
        adopted: false,
    };
    let (_, result) = pbsync::target::run(
        target,
        &planned.graph,
        planned.plan(),
        &stamp,
        RunOptions::default(),
    )
    .await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_that_came_into_use_after_the_plan_is_not_deleted() {
    let mut w = World::new().await;
    let (planned, target) = a_planned_deletion_of_edge(&mut w).await;
    let uid = w.only("edge", "1.0.0").uid;
    w.sim
        .set_in_use(&uid, vec![json!({"name": "edge-1", "uid": "c1"})])
        .expect("in use");
    w.sim.reset_stats();
    let result = run_stale(&planned, &target).await;
    let Err(RunError::Prune { first, .. }) = &result else {
        panic!("expected a refused deletion, got {result:?}");
    };
    assert!(
        matches!(first.refusal(), Some(Refusal::InUse { users, .. }) if users == &["edge-1"]),
        "{}",
        pbsync::error_chain(first)
    );
    w.only("edge", "1.0.0");
    assert_eq!(w.sim.stats().count("DELETE /v1/clusterprofiles/{uid}"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_whose_profile_changed_hands_after_the_plan_is_refused() {
    let mut w = World::new().await;
    let (planned, target) = a_planned_deletion_of_edge(&mut w).await;
    let p = w.only("edge", "1.0.0");
    // Another instance takes the profile over between the plan and its apply.
    let resp = http()
        .patch(format!(
            "{}/v1/clusterprofiles/{}/metadata",
            w.sim.url(),
            p.uid
        ))
        .header("ApiKey", KEY)
        .header("ProjectUid", PROJECT)
        .json(&json!({
            "metadata": {"name": "edge", "labels": {
                "app.kubernetes.io/managed-by": "pbsync", "pbsync.dev/instance": "green"},
                "annotations": {}},
            "spec": {"version": "1.0.0"}
        }))
        .send()
        .await
        .expect("relabel");
    assert!(resp.status().is_success(), "{}", resp.status());
    w.sim.reset_stats();
    let result = run_stale(&planned, &target).await;
    let Err(RunError::Prune { first, .. }) = &result else {
        panic!("expected a refused deletion, got {result:?}");
    };
    assert!(
        matches!(first.refusal(), Some(Refusal::NotOurs { .. })),
        "{}",
        pbsync::error_chain(first)
    );
    assert!(pbsync::error_chain(first).contains("\"green\""));
    assert_eq!(w.only("edge", "1.0.0").uid, p.uid);
    assert_eq!(w.sim.stats().count("DELETE /v1/clusterprofiles/{uid}"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_never_takes_a_profile_another_instance_manages() {
    let mut w = World::new().await;
    let mut theirs = seed("edge", "1.0.0", "infra");
    theirs
        .labels
        .insert("app.kubernetes.io/managed-by".into(), json!("pbsync"));
    theirs
        .labels
        .insert("pbsync.dev/instance".into(), json!("green"));
    let uid = w.sim.seed(theirs).expect("seed");
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo.commit("test");
    w.sim.reset_stats();
    let mut ctx = w.context();
    ctx.plan.adopt = true;
    let snapshot = ctx.fetch().expect("fetch");
    let report = engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(&w.target(), RunOptions::default()),
    )
    .await
    .expect("pass");
    let change = report
        .plan()
        .changes
        .iter()
        .find(|c| c.key == key("edge", "1.0.0"))
        .expect("profile");
    assert_eq!(change.action, Action::Blocked, "{:?}", change.reasons);
    assert!(
        change.reasons[0].contains("managed by pbsync instance \"green\""),
        "{:?}",
        change.reasons
    );
    assert_eq!(w.sim.stats().writes(), 0, "nothing written in Palette");
    let p = w.only("edge", "1.0.0");
    assert_eq!(p.uid, uid);
    assert_eq!(p.labels["pbsync.dev/instance"], json!("green"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_profile_changed_hands_after_the_plan_is_refused() {
    let mut w = World::new().await;
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "keep.yaml",
        full_cluster_profile("other", "1.0.0", "infra", "b: 1"),
    );
    w.repo.write(
        "a.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "orphan"),
    );
    w.repo.write(
        "k.yaml",
        infrastructure_bundle(NAMESPACE, "k", &["other@1.0.0"], "delete"),
    );
    w.repo.commit("two bundles");
    w.pass().await.expect("create");
    w.repo.remove("a.yaml");
    w.repo.remove("cp.yaml");
    w.repo.commit("a leaves, orphaning its profile");
    let target = w.target();
    let ctx = w.context();
    let snapshot = ctx.fetch().expect("fetch");
    let planned = engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&target))
        .await
        .expect("plan");
    assert_eq!(
        action_of(planned.plan(), &key("edge", "1.0.0")),
        Action::Orphan
    );
    let p = w.only("edge", "1.0.0");
    let resp = http()
        .patch(format!(
            "{}/v1/clusterprofiles/{}/metadata",
            w.sim.url(),
            p.uid
        ))
        .header("ApiKey", KEY)
        .header("ProjectUid", PROJECT)
        .json(&json!({
            "metadata": {"name": "edge", "labels": {
                "app.kubernetes.io/managed-by": "pbsync", "pbsync.dev/instance": "green"},
                "annotations": {}},
            "spec": {"version": "1.0.0"}
        }))
        .send()
        .await
        .expect("relabel");
    assert!(resp.status().is_success(), "{}", resp.status());
    w.sim.reset_stats();
    let result = run_stale(&planned, &target).await;
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
    assert_eq!(
        w.only("edge", "1.0.0").labels["pbsync.dev/instance"],
        json!("green")
    );
    assert_eq!(
        w.sim
            .stats()
            .count("PATCH /v1/clusterprofiles/{uid}/metadata"),
        0,
        "nothing written"
    );
}

// ---------------------------------------------------------------------------------------
// Health: a profile is current when its published version matches the commit, failed when
// only a draft exists or a publish was refused (with Palette's message)
// ---------------------------------------------------------------------------------------

/// Palette's refusal of a publish, in its words, as the tests inject it.
const REFUSED: &str = "pack edge-k8s 1.32.3 is not available in any registry of this project";

fn refuse_publish() -> Fault {
    // The only PATCH a create or a template-only update sends is the publish.
    Fault::refusal(400, "ClusterProfilePublishRefused", REFUSED).on("PATCH", "/v1/clusterprofiles/")
}

/// The labels pbsync writes on a profile it creates as instance [`INSTANCE`].
fn ours() -> serde_json::Map<String, Value> {
    let mut labels = serde_json::Map::new();
    labels.insert("app.kubernetes.io/managed-by".into(), json!("pbsync"));
    labels.insert("pbsync.dev/instance".into(), json!(INSTANCE));
    labels
}

impl World {
    /// The commit's graph, as a plan (against a fresh target) builds it.
    async fn graph(&self) -> ResourceGraph {
        let ctx = self.context();
        let snapshot = ctx.fetch().expect("fetch");
        engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&self.target()))
            .await
            .expect("plan")
            .graph
    }

    fn edge_and_its_bundle(&mut self, values: &str) {
        self.repo.write(
            "cp.yaml",
            full_cluster_profile("edge", "1.0.0", "infra", values),
        );
        self.repo.write(
            "b.yaml",
            infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
        );
        self.repo.commit("edge and its bundle");
    }
}

/// The first reading `Target::follow` yields for `key` (it reads at once, then every few
/// seconds).
async fn health_of(target: &PaletteTarget, graph: &ResourceGraph, key: &ObjectKey) -> Health {
    let mut stream = target.follow(graph, vec![key.clone()]);
    let reading = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a first reading at once")
        .expect("the stream goes on")
        .expect("a readable profile");
    match reading {
        (k, Reading::Present(h)) if k == *key => h,
        other => panic!("expected a health reading of {key}, got {other:?}"),
    }
}

fn wait_causes(waited: &Waited) -> Vec<String> {
    waited.causes(jiff::Timestamp::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_and_published_profile_reads_current_and_the_wait_ends_healthy() {
    let mut w = World::new().await;
    w.edge_and_its_bundle("a: 1");
    let target = w.target();
    let report = w.pass_with(&target).await.expect("pass");
    assert_eq!(outcome_of(&report, &key("edge", "1.0.0")), "created");

    let waited = engine::wait::wait(
        &target,
        &report.graph,
        report.changes(),
        Duration::from_secs(30),
        |_| {},
    )
    .await;
    assert_eq!(waited.ending, Ending::Healthy, "{:?}", wait_causes(&waited));
    assert!(
        waited.waited_on.contains(&key("edge", "1.0.0")),
        "{:?}",
        waited.waited_on
    );
    assert_eq!(
        waited.report.objects[&key("edge", "1.0.0")].state,
        State::Current
    );
    assert_eq!(
        health_of(&target.palette, &report.graph, &key("edge", "1.0.0")).await,
        Health::current()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_of_ours_that_was_never_published_reads_failed() {
    let mut w = World::new().await;
    // What a pass that stopped between the create and the publish leaves behind: a draft
    // with this instance's labels and no published version.
    let mut draft = seed("edge", "1.0.0", "infra");
    draft.draft_only = true;
    draft.labels = ours();
    w.sim.seed(draft).expect("seed");
    w.edge_and_its_bundle("a: 1");
    let graph = w.graph().await;
    assert_eq!(
        action_of(&w.plan().await, &key("edge", "1.0.0")),
        Action::Update,
        "the draft is ours: the next pass publishes it"
    );

    let health = health_of(&w.target().palette, &graph, &key("edge", "1.0.0")).await;
    assert_eq!(health.state, State::Failed, "{health:?}");
    assert_eq!(health.reason.as_deref(), Some("NotPublished"));
    assert_eq!(health.message, "a draft that was never published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_palette_refuses_reads_failed_with_palettes_message() {
    let mut w = World::new().await;
    w.sim.inject(refuse_publish());
    w.edge_and_its_bundle("a: 1");
    let target = w.target();
    let err = w.pass_with(&target).await.expect_err("publish refused");
    let Error::Apply { changes, .. } = &err else {
        panic!("expected an apply error, got {err:?}");
    };
    assert_eq!(outcome_of_set(changes, &key("edge", "1.0.0")), "failed");
    assert!(w.sim.pending_faults().is_empty(), "the publish was sent");
    let p = w.only("edge", "1.0.0");
    assert!(p.draft.is_some() && p.published.is_none(), "{p:#?}");

    let graph = w.graph().await;
    let health = health_of(&target.palette, &graph, &key("edge", "1.0.0")).await;
    assert_eq!(health.state, State::Failed, "{health:?}");
    assert_eq!(health.reason.as_deref(), Some("PublishFailed"));
    assert_eq!(health.message, format!("publish failed: {REFUSED}"));

    // Another process never saw the publish fail; it still reads the profile as failed.
    let health = health_of(&w.target().palette, &graph, &key("edge", "1.0.0")).await;
    assert_eq!(health.state, State::Failed, "{health:?}");
    assert_eq!(health.message, "a draft that was never published");

    // The next pass publishes it, and the failure is forgotten.
    w.pass_with(&target).await.expect("publish goes through");
    assert_eq!(
        health_of(&target.palette, &graph, &key("edge", "1.0.0")).await,
        Health::current()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_version_that_differs_from_the_commit_reads_failed() {
    let mut w = World::new().await;
    w.edge_and_its_bundle("a: 1");
    let target = w.target();
    w.pass_with(&target).await.expect("create");

    // The commit changes the template; Palette takes the draft and refuses its publish, so
    // the published version stays the old one.
    w.edge_and_its_bundle("a: 2");
    w.sim.inject(refuse_publish());
    let err = w.pass_with(&target).await.expect_err("publish refused");
    assert!(matches!(err, Error::Apply { .. }), "{err:?}");
    let p = w.only("edge", "1.0.0");
    assert_eq!(
        p.draft.as_ref().expect("draft")["packs"][0]["values"],
        json!("a: 2")
    );
    assert_eq!(
        p.published.as_ref().expect("published")["packs"][0]["values"],
        json!("a: 1")
    );

    let graph = w.graph().await;
    let health = health_of(&target.palette, &graph, &key("edge", "1.0.0")).await;
    assert_eq!(health.state, State::Failed, "{health:?}");
    assert_eq!(health.message, format!("publish failed: {REFUSED}"));

    // Without the failure in memory (another process), the difference itself is the
    // finding: pbsync publishes synchronously, so nothing is still working towards the
    // commit's version and waiting would only run into the timeout.
    let health = health_of(&w.target().palette, &graph, &key("edge", "1.0.0")).await;
    assert_eq!(health.state, State::Failed, "{health:?}");
    assert_eq!(health.reason.as_deref(), Some("PublishedDiffers"));
    assert_eq!(
        health.message,
        "the published version differs from the commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_on_a_profile_only_palette_holds_waits_healthy() {
    let mut w = World::new().await;
    // Someone else's published profile, which the repository names but does not declare:
    // there is no commit version to compare it with.
    w.sim
        .seed(seed("base-infra", "2.0.0", "cluster"))
        .expect("seed");
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["base-infra@2.0.0"], "delete"),
    );
    w.repo.commit("a bundle on an external profile");
    let target = w.target();
    let report = w.pass_with(&target).await.expect("pass");
    let waited = engine::wait::wait(
        &target,
        &report.graph,
        report.changes(),
        Duration::from_secs(30),
        |_| {},
    )
    .await;
    assert!(
        waited.followed.contains(&key("base-infra", "2.0.0")),
        "the bundle's closure is followed: {:?}",
        waited.followed
    );
    assert_eq!(waited.ending, Ending::Healthy, "{:?}", wait_causes(&waited));
    assert_eq!(
        health_of(&target.palette, &report.graph, &key("base-infra", "2.0.0")).await,
        Health::current()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_profile_someone_else_published_reads_current_not_differs() {
    let mut w = World::new().await;
    let mut foreign = seed("edge", "1.0.0", "infra");
    foreign.labels.insert("team".into(), json!("other"));
    w.sim.seed(foreign).expect("seed");
    w.repo.write(
        "cp.yaml",
        full_cluster_profile("edge", "1.0.0", "infra", "a: 1"),
    );
    w.repo.write(
        "b.yaml",
        infrastructure_bundle(NAMESPACE, "a", &["edge@1.0.0"], "delete"),
    );
    w.repo
        .commit("a bundle on a profile another team publishes");
    let report = w.pass().await.expect("pass");
    assert_eq!(
        action_of(report.plan(), &key("edge", "1.0.0")),
        Action::Blocked
    );
    // Blocked (not ours) is not "the published version differs": it is published, which is
    // all this instance can ask of it.
    let h = health_of(&w.target().palette, &report.graph, &key("edge", "1.0.0")).await;
    assert_eq!(h.state, State::Current, "{h:?}");
}
