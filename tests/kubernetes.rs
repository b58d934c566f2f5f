//! The Kubernetes target against a real kube-apiserver and etcd (`scripts/testcluster`),
//! driven through the real pipeline (`reconcile::run_once` on git repositories built in temp
//! dirs). Each test gets its own namespace and its own pbsync instance, and depends on no
//! other test.
//!
//! The cluster, the namespace guard, the repositories and the YAML come from the test kit
//! (`pbsync_devkit::testkit`): the cluster is found through `KUBECONFIG`, else
//! `scripts/testcluster env`, and a test without one fails unless `PBSYNC_TEST_SKIP_CLUSTER=1`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

use pbsync::engine::{self, Context, Error, Goal, Input, Report};
use pbsync::guard::Refusal;
use pbsync::model::Kind;
use pbsync::ownership::Stamp;
use pbsync::plan::{Action, Cascade, Change, Plan};
use pbsync::target::kubernetes::{KubeOptions, KubeTarget, RequestCounts, Verb};
use pbsync::target::{self, Outcome, RunError, RunOptions, Target};
use pbsync_devkit::testkit::ScratchRepo;
use pbsync_devkit::testkit::cluster::{self, Namespace};
use pbsync_devkit::testkit::yaml::{self, app, shared};

// ---------------------------------------------------------------------------------------
// The test's environment
// ---------------------------------------------------------------------------------------

/// One test's corner of the cluster: a namespace and a pbsync instance of its own. The
/// namespace goes when the `Env` is dropped, also when the test panics (see [`Namespace`]).
struct Env {
    kubeconfig: PathBuf,
    client: kube::Client,
    ns: String,
    instance: String,
    _namespace: Namespace,
}

/// The test's environment, or `None` when there is no cluster and
/// `PBSYNC_TEST_SKIP_CLUSTER=1` says to skip (see [`cluster::require`]).
async fn env(test: &str) -> Option<Env> {
    let kubeconfig = cluster::require(test)?;
    let client = cluster::client(&kubeconfig).await;
    let namespace = Namespace::create(&kubeconfig, test).await;
    let ns = namespace.name().to_string();
    Some(Env {
        kubeconfig,
        client,
        instance: ns.clone(),
        ns,
        _namespace: namespace,
    })
}

impl Env {
    fn options(&self) -> KubeOptions {
        KubeOptions {
            kubeconfig: Some(self.kubeconfig.clone()),
            instance: self.instance.clone(),
            status_namespace: self.ns.clone(),
            ..KubeOptions::default()
        }
    }

    /// A fresh target, as a new pbsync process would have.
    fn target(&self) -> KubeTarget {
        KubeTarget::new(self.options())
    }

    fn ctx(&self, repo: &ScratchRepo) -> Context {
        let mut ctx = Context::new(repo.path(), "HEAD", "");
        ctx.plan.instance.clone_from(&self.instance);
        ctx
    }

    fn ctx_with_wait(&self, repo: &ScratchRepo, wait: Duration) -> Context {
        let mut ctx = self.ctx(repo);
        ctx.lock_wait = wait;
        ctx
    }

    async fn apply_with<T: Target>(
        &self,
        ctx: &Context,
        target: &T,
        opts: RunOptions,
    ) -> engine::Result<Report> {
        let snapshot = ctx.fetch().expect("fetch");
        engine::run(ctx, Input::of(&snapshot), Goal::Apply(target, opts)).await
    }

    async fn apply<T: Target>(&self, repo: &ScratchRepo, target: &T) -> engine::Result<Report> {
        self.apply_with(&self.ctx(repo), target, RunOptions::default())
            .await
    }

    async fn plan<T: Target>(&self, repo: &ScratchRepo, target: &T) -> Report {
        let ctx = self.ctx(repo);
        let snapshot = ctx.fetch().expect("fetch");
        engine::run(&ctx, Input::of(&snapshot), Goal::Plan(target))
            .await
            .expect("plan")
    }

    fn api(&self, kind: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &resource(kind))
    }

    async fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let obj = self.api(kind).get_opt(name).await.expect("get")?;
        Some(serde_json::to_value(obj).expect("json"))
    }

    async fn must_get(&self, kind: &str, name: &str) -> Value {
        self.get(kind, name)
            .await
            .unwrap_or_else(|| panic!("{kind} {}/{name} should exist", self.ns))
    }

    /// Creates an object by hand (as a person or another tool would).
    async fn create(&self, kind: &str, manifest: Value) {
        let obj: DynamicObject = serde_json::from_value(manifest).expect("object");
        self.api(kind)
            .create(&PostParams::default(), &obj)
            .await
            .expect("create by hand");
    }

    /// Changes an object by hand, with its own field manager.
    async fn edit(&self, kind: &str, name: &str, patch: Value) {
        let pp = PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..PatchParams::default()
        };
        self.api(kind)
            .patch(name, &pp, &Patch::Merge(patch))
            .await
            .expect("edit by hand");
    }

    async fn delete(&self, kind: &str, name: &str) {
        self.api(kind)
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete by hand");
    }

    /// The status ConfigMap's data.
    async fn status(&self) -> BTreeMap<String, String> {
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.client.clone(), &self.ns);
        let cm = cms
            .get(&format!("pbsync-status-{}", self.instance))
            .await
            .expect("status configmap");
        cm.data.unwrap_or_default().into_iter().collect()
    }

    /// (reason, message, involvedObject.uid) of the Events on `bundle`.
    async fn events_for(&self, bundle: &str) -> Vec<(String, String, Option<String>)> {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        let list = events
            .list(&kube::api::ListParams::default())
            .await
            .expect("events");
        let mut out: Vec<(String, String, Option<String>)> = list
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(bundle))
            .map(|e| {
                (
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                    e.involved_object.uid,
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Ends the test: its namespace goes (the guard's drop, which also runs when a test
    /// fails).
    async fn cleanup(self) {
        drop(self);
    }
}

fn resource(kind: &str) -> ApiResource {
    let (group, version, plural) = match kind {
        "ProfileBundle" => ("spectrocloud.com", "v1beta1", "profilebundles"),
        "WorkloadProfile" => ("spectrocloud.com", "v1beta1", "workloadprofiles"),
        "ComputePool" => ("spectrocloud.com", "v1alpha1", "computepools"),
        "AIWorkload" => ("spectrocloud.com", "v1alpha1", "aiworkloads"),
        "HelmRepository" => ("source.toolkit.fluxcd.io", "v1", "helmrepositories"),
        "ComponentDefinition" => ("core.oam.dev", "v1beta1", "componentdefinitions"),
        other => panic!("no test resource for {other}"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")?.get(key)?.as_str()
}

fn rv(obj: &Value) -> String {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .expect("resourceVersion")
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Repositories
// ---------------------------------------------------------------------------------------

/// A repository whose first commit holds one Application bundle `a` using HelmRepository
/// `charts` (the starting point of many tests).
fn one_bundle_repo(ns: &str) -> ScratchRepo {
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts"]));
    repo.commit("one");
    repo
}

// ---------------------------------------------------------------------------------------
// Reading results
// ---------------------------------------------------------------------------------------

fn change<'a>(plan: &'a Plan, kind: Kind, name: &str) -> &'a Change {
    plan.changes
        .iter()
        .find(|c| c.key.kind == kind && &*c.key.name == name)
        .unwrap_or_else(|| panic!("no change for {kind} {name} in plan:\n{}", render(plan)))
}

fn render(plan: &Plan) -> String {
    pbsync::plan::render_text(plan, false, true)
}

fn outcomes(report: &Report) -> BTreeMap<String, Outcome> {
    report
        .changes()
        .entries
        .iter()
        .map(|e| (format!("{} {}", e.key.kind, e.key.name), e.outcome))
        .collect()
}

fn writes_between(before: &RequestCounts, after: &RequestCounts) -> RequestCounts {
    after.since(before)
}

/// Expects a successful pass.
fn ok(r: engine::Result<Report>) -> Report {
    match r {
        Ok(report) => report,
        Err(e) => panic!("pass failed: {}", pbsync::error_chain(&e)),
    }
}

// ---------------------------------------------------------------------------------------
// Create, update, no-op, drift
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_objects_with_ownership_marks_then_updates_only_what_changed() {
    let Some(env) = env("create-update").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/chat.yaml", app(ns, "chat", "delete", &["charts"]));
    let first = repo.commit("one").to_string();
    let target = env.target();

    let report = ok(env.apply(&repo, &target).await);
    assert_eq!(
        report.changes().counts().get("created"),
        Some(&4),
        "{:?}",
        outcomes(&report)
    );
    let wp = env.must_get("WorkloadProfile", "chat-wp").await;
    let l = labels(&wp);
    assert_eq!(l["app.kubernetes.io/managed-by"], "pbsync");
    assert_eq!(l["pbsync.dev/instance"], env.instance);
    assert!(!l.contains_key("pbsync.dev/adopted"));
    assert_eq!(
        annotation(&wp, "pbsync.dev/source"),
        Some("bundles/chat.yaml")
    );
    assert_eq!(annotation(&wp, "pbsync.dev/revision"), Some(first.as_str()));
    let fields = wp["metadata"]["managedFields"]
        .as_array()
        .expect("managed fields");
    assert!(
        fields
            .iter()
            .any(|f| f["manager"] == "pbsync" && f["operation"] == "Apply"),
        "written by server-side apply as field manager pbsync: {fields:?}"
    );
    let status = env.status().await;
    assert_eq!(status["lastAppliedRevision"], first);
    assert_eq!(status["lastAttemptedRevision"], first);
    assert_eq!(status["outcome"], "applied");
    assert_eq!(status["counts"], r#"{"created":4}"#);
    let events = env.events_for("chat").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "Created");
    // The uid comes from the create's answer (its metadata only).
    let bundle = env.must_get("ProfileBundle", "chat").await;
    assert_eq!(
        events[0].2.as_deref(),
        bundle["metadata"]["uid"].as_str(),
        "the Event names the bundle it was written for"
    );

    // Change one property: one object is updated, nothing else is written.
    repo.write(
        "bundles/chat.yaml",
        app(ns, "chat", "delete", &["charts"]).replace("chart: chat", "chart: chat-v2"),
    );
    let second = repo.commit("two").to_string();
    let planned = env.plan(&repo, &target).await;
    let wp_change = change(planned.plan(), Kind::WorkloadProfile, "chat-wp");
    assert_eq!(
        wp_change.action,
        Action::Update,
        "{}",
        render(planned.plan())
    );
    assert_eq!(
        wp_change.diff[0].path,
        "spec.workload.components[0].properties.chart"
    );
    assert_eq!(
        planned.plan().summary().unchanged,
        3,
        "{}",
        render(planned.plan())
    );
    let before = target.requests();
    let report = ok(env.apply(&repo, &target).await);
    let delta = writes_between(&before, &target.requests());
    assert_eq!(
        outcomes(&report)["WorkloadProfile chat-wp"],
        Outcome::Configured
    );
    // The object, then the status ConfigMap (revision and counts changed).
    assert_eq!(delta.verb(Verb::Apply), 2, "{delta}");
    assert_eq!(delta.writes(), 2, "{delta}");
    let wp = env.must_get("WorkloadProfile", "chat-wp").await;
    assert_eq!(
        wp["spec"]["workload"]["components"][0]["properties"]["chart"],
        "chat-v2"
    );
    assert_eq!(
        annotation(&wp, "pbsync.dev/revision"),
        Some(second.as_str())
    );
    // Unchanged objects keep the revision they were written at.
    let h = env.must_get("HelmRepository", "charts").await;
    assert_eq!(annotation(&h, "pbsync.dev/revision"), Some(first.as_str()));
    assert_eq!(env.status().await["lastAppliedRevision"], second);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_with_nothing_to_do_issues_no_writes_and_a_repeated_plan_no_dry_runs() {
    let Some(env) = env("noop").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts"]))
        .write("bundles/b.yaml", app(ns, "b", "delete", &["charts"]));
    repo.commit("one");
    let target = env.target();
    ok(env.apply(&repo, &target).await);

    // The same target (a daemon's next pass): every comparison is cached, so no dry-runs,
    // and nothing to write.
    let before = target.requests();
    let report = ok(env.apply(&repo, &target).await);
    let delta = writes_between(&before, &target.requests());
    assert_eq!(report.changes().counts().get("unchanged"), Some(&6));
    assert_eq!(delta.writes(), 0, "a no-op pass writes nothing: {delta}");
    assert_eq!(delta.verb(Verb::DryRun), 0, "cached comparisons: {delta}");
    assert_eq!(
        delta.verb(Verb::Get),
        0,
        "lists, not one GET per object: {delta}"
    );

    // A fresh target (a new process): server-side apply's field ownership shows every
    // object already holds what pbsync would apply, so neither dry-runs nor writes.
    let fresh = env.target();
    let report = ok(env.apply(&repo, &fresh).await);
    let counts = fresh.requests();
    assert_eq!(report.changes().counts().get("unchanged"), Some(&6));
    assert_eq!(counts.writes(), 0, "{counts}");
    assert_eq!(counts.verb(Verb::DryRun), 0, "{counts}");

    // Someone takes a field over (changes it, then sets it back): the value is as desired,
    // but pbsync no longer owns it, so that object (only) is compared by dry-run again.
    for t in ["Model", "Application"] {
        env.edit("WorkloadProfile", "a-wp", json!({"spec": {"type": t}}))
            .await;
    }
    let again = env.target();
    let report = ok(env.apply(&repo, &again).await);
    let counts = again.requests();
    assert_eq!(report.changes().counts().get("unchanged"), Some(&6));
    assert_eq!(counts.verb(Verb::DryRun), 1, "{counts}");
    assert_eq!(counts.writes(), 0, "{counts}");

    // A new commit that changes no object: no object write, only the status revision.
    repo.write("README.md", "not yaml\n");
    repo.commit("docs only");
    let before = again.requests();
    ok(env.apply(&repo, &again).await);
    let delta = writes_between(&before, &again.requests());
    assert_eq!(delta.verb(Verb::DryRun), 0, "{delta}");
    assert_eq!(delta.writes(), 1, "only the status ConfigMap: {delta}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_made_by_hand_is_planned_and_restored() {
    let Some(env) = env("drift").await else {
        return;
    };
    let ns = &env.ns;
    let repo = one_bundle_repo(ns);
    let target = env.target();
    ok(env.apply(&repo, &target).await);

    env.edit(
        "HelmRepository",
        "charts",
        json!({"spec": {"url": "https://evil.example.com"}}),
    )
    .await;
    let planned = env.plan(&repo, &target).await;
    let c = change(planned.plan(), Kind::HelmRepository, "charts");
    assert_eq!(c.action, Action::Update, "{}", render(planned.plan()));
    assert_eq!(c.diff.len(), 1, "{:?}", c.diff);
    assert_eq!(c.diff[0].path, "spec.url");
    assert_eq!(c.diff[0].before, Some(json!("https://evil.example.com")));
    let report = ok(env.apply(&repo, &target).await);
    assert_eq!(
        outcomes(&report)["HelmRepository charts"],
        Outcome::Configured
    );
    let h = env.must_get("HelmRepository", "charts").await;
    assert_eq!(h["spec"]["url"], "https://charts.example.com");
    let again = env.plan(&repo, &target).await;
    assert!(!again.plan().has_changes(), "{}", render(again.plan()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_between_plan_and_apply_is_retried_after_rereading() {
    let Some(env) = env("conflict").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = one_bundle_repo(ns);
    let target = env.target();
    ok(env.apply(&repo, &target).await);

    repo.write(
        "shared.yaml",
        shared(ns, &["charts"]).replace("interval: 1h", "interval: 2h"),
    );
    repo.commit("two");
    let planned = env.plan(&repo, &target).await;
    assert_eq!(
        change(planned.plan(), Kind::HelmRepository, "charts").action,
        Action::Update
    );
    // Someone changes the object after the plan read it.
    env.edit(
        "HelmRepository",
        "charts",
        json!({"metadata": {"labels": {"team": "search"}}}),
    )
    .await;
    let stamp = Stamp {
        instance: &env.instance,
        revision: &planned.plan().revision,
        adopted: false,
    };
    let before = target.requests();
    let (set, result) = target::run(
        &target,
        &planned.graph,
        planned.plan(),
        &stamp,
        RunOptions::default(),
    )
    .await;
    result.expect("apply");
    let delta = writes_between(&before, &target.requests());
    assert_eq!(
        delta.get(Verb::Apply, 409),
        1,
        "the stale write conflicted: {delta}"
    );
    assert_eq!(delta.get(Verb::Get, 200), 1, "then re-read: {delta}");
    assert!(set.entries.iter().any(|e| e.outcome == Outcome::Configured));
    let h = env.must_get("HelmRepository", "charts").await;
    assert_eq!(h["spec"]["interval"], "2h");
    assert_eq!(labels(&h)["team"], "search", "the other change is kept");
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Deletion rules (domain.md §4)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_object_is_kept_while_referenced_and_deleted_with_its_last_referrer() {
    let Some(env) = env("shared-kept").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["common", "a-only"]))
        .write(
            "bundles/a.yaml",
            app(ns, "a", "delete", &["common", "a-only"]),
        )
        .write("bundles/b.yaml", app(ns, "b", "delete", &["common"]))
        .write("bundles/keeper.yaml", app(ns, "keeper", "delete", &[]));
    repo.commit("one");
    let target = env.target();
    ok(env.apply(&repo, &target).await);

    // a goes: its own objects are deleted, `common` stays for b.
    repo.remove("bundles/a.yaml");
    repo.write("shared.yaml", shared(ns, &["common"]));
    repo.commit("a leaves");
    let planned = env.plan(&repo, &target).await;
    let common = change(planned.plan(), Kind::HelmRepository, "common");
    assert_eq!(
        common.action,
        Action::Unchanged,
        "{}",
        render(planned.plan())
    );
    assert!(
        common
            .reasons
            .iter()
            .any(|r| r.contains("kept: still referenced by ProfileBundle") && r.contains("/b")),
        "{:?}",
        common.reasons
    );
    let report = ok(env.apply(&repo, &target).await);
    let o = outcomes(&report);
    assert_eq!(o["ProfileBundle a"], Outcome::Deleted);
    assert_eq!(o["WorkloadProfile a-wp"], Outcome::Deleted);
    assert_eq!(o["HelmRepository a-only"], Outcome::Deleted);
    assert!(env.get("ProfileBundle", "a").await.is_none());
    assert!(env.get("HelmRepository", "a-only").await.is_none());
    assert!(env.get("HelmRepository", "common").await.is_some());
    let events = env.events_for("a").await;
    let deleted: Vec<_> = events.iter().filter(|(r, _, _)| r == "Deleted").collect();
    assert_eq!(deleted.len(), 1, "{events:?}");
    // The same bundle as the Created Event named: the uid it had when it was deleted.
    let created = events.iter().find(|(r, _, _)| r == "Created");
    assert!(deleted[0].2.is_some(), "{events:?}");
    assert_eq!(created.map(|c| &c.2), Some(&deleted[0].2), "{events:?}");

    // b goes: it was the last referrer of `common`, with policy delete.
    repo.remove("bundles/b.yaml");
    repo.write("shared.yaml", shared(ns, &[]));
    repo.commit("b leaves");
    let planned = env.plan(&repo, &target).await;
    let common = change(planned.plan(), Kind::HelmRepository, "common");
    assert_eq!(common.action, Action::Delete, "{}", render(planned.plan()));
    assert!(
        common.reasons[0].starts_with("last referrer"),
        "{:?}",
        common.reasons
    );
    ok(env.apply(&repo, &target).await);
    assert!(env.get("HelmRepository", "common").await.is_none());
    assert!(env.get("ProfileBundle", "keeper").await.is_some());
    assert!(
        env.get("ComponentDefinition", "web").await.is_some(),
        "keeper still uses it"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_policy_releases_dependents_and_a_later_commit_takes_them_back() {
    let Some(env) = env("orphan").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/a.yaml", app(ns, "a", "orphan", &["charts"]))
        .write("bundles/keeper.yaml", app(ns, "keeper", "delete", &[]));
    repo.commit("one");
    let target = env.target();
    ok(env.apply(&repo, &target).await);

    repo.remove("bundles/a.yaml");
    repo.write("shared.yaml", shared(ns, &[]));
    repo.commit("a leaves");
    let planned = env.plan(&repo, &target).await;
    assert_eq!(
        change(planned.plan(), Kind::HelmRepository, "charts").action,
        Action::Orphan
    );
    let report = ok(env.apply(&repo, &target).await);
    let o = outcomes(&report);
    assert_eq!(o["HelmRepository charts"], Outcome::Orphaned);
    assert_eq!(o["WorkloadProfile a-wp"], Outcome::Orphaned);
    assert_eq!(o["ProfileBundle a"], Outcome::Deleted);
    for (kind, name) in [("HelmRepository", "charts"), ("WorkloadProfile", "a-wp")] {
        let obj = env.must_get(kind, name).await;
        let l = labels(&obj);
        assert!(
            !l.contains_key("app.kubernetes.io/managed-by"),
            "{kind} {name}: {l:?}"
        );
        assert!(!l.contains_key("pbsync.dev/instance"));
        assert_eq!(
            annotation(&obj, "pbsync.dev/released-by"),
            Some(env.instance.as_str())
        );
        assert_eq!(annotation(&obj, "pbsync.dev/revision"), None);
    }
    // No later pass touches released objects.
    let again = env.plan(&repo, &target).await;
    assert!(!again.plan().has_changes(), "{}", render(again.plan()));

    // A new bundle needs `charts` again: taken back, not a conflict.
    repo.write("bundles/c.yaml", app(ns, "c", "delete", &["charts"]));
    repo.write("shared.yaml", shared(ns, &["charts"]));
    repo.commit("c needs charts");
    let planned = env.plan(&repo, &target).await;
    let charts = change(planned.plan(), Kind::HelmRepository, "charts");
    assert_eq!(charts.action, Action::Update, "{}", render(planned.plan()));
    assert!(
        charts.reasons[0].starts_with("taken back"),
        "{:?}",
        charts.reasons
    );
    ok(env.apply(&repo, &target).await);
    let taken = env.must_get("HelmRepository", "charts").await;
    assert_eq!(labels(&taken)["pbsync.dev/instance"], env.instance);
    // Found by scripts/chaos: the release's note stayed beside the ownership labels.
    assert_eq!(
        annotation(&taken, "pbsync.dev/released-by"),
        None,
        "a taken-back object no longer says it was released"
    );
    // And a later pass has nothing to do.
    let after = env.plan(&repo, &target).await;
    assert!(!after.plan().has_changes(), "{}", render(after.plan()));
    env.cleanup().await;
}

/// Found by scripts/chaos: a take-back is two requests (the apply, then the removal of the
/// release's note); a pass killed between them left a managed object that still said it was
/// released, and no later pass saw anything to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_back_cut_short_before_the_note_went_is_finished_by_the_next_pass() {
    let Some(env) = env("takeback-note").await else {
        return;
    };
    let repo = one_bundle_repo(&env.ns);
    let target = env.target();
    ok(env.apply(&repo, &target).await);
    // What the cut-short take-back leaves: this instance's labels and the release's note.
    env.edit(
        "HelmRepository",
        "charts",
        json!({"metadata": {"annotations": {"pbsync.dev/released-by": env.instance}}}),
    )
    .await;
    let fresh = env.target();
    let planned = env.plan(&repo, &fresh).await;
    let charts = change(planned.plan(), Kind::HelmRepository, "charts");
    assert_eq!(charts.action, Action::Update, "{}", render(planned.plan()));
    assert!(
        charts.reasons.iter().any(|r| r.contains("released-by")),
        "{:?}",
        charts.reasons
    );
    ok(env.apply(&repo, &fresh).await);
    let now = env.must_get("HelmRepository", "charts").await;
    assert_eq!(annotation(&now, "pbsync.dev/released-by"), None);
    let again = env.plan(&repo, &env.target()).await;
    assert!(!again.plan().has_changes(), "{}", render(again.plan()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_whose_bundle_was_removed_out_of_band_is_orphaned_with_a_warning() {
    let Some(env) = env("out-of-band").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts"]))
        .write("bundles/keeper.yaml", app(ns, "keeper", "delete", &[]));
    repo.commit("one");
    let target = env.target();
    ok(env.apply(&repo, &target).await);

    // Someone deletes the bundle by hand; then the repository drops it too.
    env.delete("ProfileBundle", "a").await;
    repo.remove("bundles/a.yaml");
    repo.write("shared.yaml", shared(ns, &[]));
    repo.commit("a removed out of band");
    let report = ok(env.apply(&repo, &target).await);
    assert!(
        report
            .plan()
            .warnings
            .iter()
            .any(|w| w.contains("HelmRepository") && w.contains("no live bundle references it")),
        "{:?}",
        report.plan().warnings
    );
    let o = outcomes(&report);
    assert_eq!(o["HelmRepository charts"], Outcome::Orphaned);
    assert_eq!(o["WorkloadProfile a-wp"], Outcome::Orphaned);
    let h = env.must_get("HelmRepository", "charts").await;
    assert_eq!(
        annotation(&h, "pbsync.dev/released-by"),
        Some(env.instance.as_str())
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_pool_blocks_the_deletion_of_its_bundle_and_its_dependents() {
    let Some(env) = env("pool-blocks").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts"]))
        .write("bundles/keeper.yaml", app(ns, "keeper", "delete", &[]));
    repo.commit("one");
    let target = env.target();
    ok(env.apply(&repo, &target).await);
    // A pool deployed from bundle a, created outside pbsync.
    env.create(
        "ComputePool",
        json!({
            "apiVersion": "spectrocloud.com/v1alpha1",
            "kind": "ComputePool",
            "metadata": {"name": "edge-pool", "namespace": ns},
            "spec": {"profileBundleRef": {"name": "a"}, "clusterVariant": {"dedicated": {}}},
        }),
    )
    .await;

    repo.remove("bundles/a.yaml");
    repo.write("shared.yaml", shared(ns, &[]));
    repo.commit("a leaves");
    let report = ok(env.apply(&repo, &target).await);
    let a = change(report.plan(), Kind::ProfileBundle, "a");
    assert_eq!(a.action, Action::Blocked, "{}", render(report.plan()));
    assert!(a.reasons[0].contains("ComputePool"), "{:?}", a.reasons);
    assert!(a.reasons[0].contains("edge-pool"), "{:?}", a.reasons);
    assert!(env.get("ProfileBundle", "a").await.is_some());
    assert!(env.get("WorkloadProfile", "a-wp").await.is_some());
    assert!(env.get("HelmRepository", "charts").await.is_some());

    // Once the pool is gone, the next pass deletes the bundle and its dependents.
    env.delete("ComputePool", "edge-pool").await;
    ok(env.apply(&repo, &target).await);
    assert!(env.get("ProfileBundle", "a").await.is_none());
    assert!(env.get("WorkloadProfile", "a-wp").await.is_none());
    assert!(env.get("HelmRepository", "charts").await.is_none());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mass_deletion_guard_refuses_until_allowed() {
    let Some(env) = env("guard").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts"]))
        .write("bundles/b.yaml", app(ns, "b", "delete", &["charts"]));
    repo.commit("one");
    let target = env.target();
    ok(env.apply(&repo, &target).await);

    repo.remove("bundles/a.yaml").remove("bundles/b.yaml");
    repo.write("shared.yaml", "# nothing left\n");
    repo.commit("everything leaves");
    let before = target.requests();
    let err = env.apply(&repo, &target).await.expect_err("guard");
    let Error::Apply { source, .. } = &err else {
        panic!(
            "expected a refused apply, got {}",
            pbsync::error_chain(&err)
        );
    };
    assert!(
        matches!(
            (&**source, source.refusal()),
            (
                RunError::Refused(_),
                Some(pbsync::guard::Refusal::MassDeletion(_))
            )
        ),
        "{source}"
    );
    let delta = writes_between(&before, &target.requests());
    assert_eq!(delta.verb(Verb::Delete), 0, "{delta}");
    assert_eq!(delta.verb(Verb::Patch), 0, "{delta}");
    assert!(env.get("ProfileBundle", "a").await.is_some());

    let report = ok(env
        .apply_with(
            &env.ctx(&repo),
            &target,
            RunOptions {
                allow_mass_deletion: true,
                ..RunOptions::default()
            },
        )
        .await);
    assert_eq!(report.changes().counts().get("deleted"), Some(&6));
    assert!(env.get("ProfileBundle", "a").await.is_none());
    assert!(env.get("ComponentDefinition", "web").await.is_none());
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Ownership: foreign objects, other instances, adoption
// ---------------------------------------------------------------------------------------

fn foreign_helm(ns: &str, name: &str, url: &str) -> Value {
    json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmRepository",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"url": url, "interval": "5m"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_object_is_left_alone_and_another_instance_leaves_ours_alone() {
    let Some(env) = env("foreign").await else {
        return;
    };
    let ns = &env.ns;
    env.create(
        "HelmRepository",
        foreign_helm(ns, "charts", "https://theirs.example.com"),
    )
    .await;
    env.create(
        "HelmRepository",
        foreign_helm(ns, "unrelated", "https://other.example.com"),
    )
    .await;
    let charts_before = env.must_get("HelmRepository", "charts").await;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts"]))
        .write("bundles/keeper.yaml", app(ns, "keeper", "delete", &[]));
    repo.commit("one");
    let target = env.target();
    let report = ok(env.apply(&repo, &target).await);
    let c = change(report.plan(), Kind::HelmRepository, "charts");
    assert_eq!(c.action, Action::Blocked, "{}", render(report.plan()));
    assert!(
        c.reasons[0].contains("not created by pbsync"),
        "{:?}",
        c.reasons
    );
    let charts = env.must_get("HelmRepository", "charts").await;
    assert_eq!(rv(&charts), rv(&charts_before), "never written");
    assert!(env.get("ProfileBundle", "a").await.is_some());

    // Another instance sharing the hub, with nothing to apply, deletes nothing of ours.
    let other = KubeTarget::new(KubeOptions {
        instance: format!("{}-other", env.instance),
        ..env.options()
    });
    let mut empty = ScratchRepo::new();
    empty.write("README.md", "nothing here\n");
    empty.commit("empty");
    let mut ctx = env.ctx(&empty);
    ctx.plan.instance = format!("{}-other", env.instance);
    let report = ok(env.apply_with(&ctx, &other, RunOptions::default()).await);
    assert!(
        report.plan().changes.is_empty(),
        "{}",
        render(report.plan())
    );
    assert_eq!(
        other.requests().writes(),
        1,
        "only its own status ConfigMap"
    );

    // Our bundle leaves: the foreign objects stay untouched.
    repo.remove("bundles/a.yaml");
    repo.commit("a leaves");
    ok(env.apply(&repo, &target).await);
    assert!(env.get("ProfileBundle", "a").await.is_none());
    assert_eq!(
        rv(&env.must_get("HelmRepository", "charts").await),
        rv(&charts_before)
    );
    assert!(env.get("HelmRepository", "unrelated").await.is_some());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_takes_over_a_foreign_object_and_only_ever_releases_it() {
    let Some(env) = env("adopt").await else {
        return;
    };
    let ns = &env.ns;
    env.create(
        "HelmRepository",
        foreign_helm(ns, "charts", "https://theirs.example.com"),
    )
    .await;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts"]))
        .write("bundles/keeper.yaml", app(ns, "keeper", "delete", &[]));
    repo.commit("one");
    let target = env.target();
    let mut ctx = env.ctx(&repo);
    ctx.plan.adopt = true;
    let report = ok(env.apply_with(&ctx, &target, RunOptions::default()).await);
    let c = change(report.plan(), Kind::HelmRepository, "charts");
    assert_eq!(c.action, Action::Update, "{}", render(report.plan()));
    assert!(c.reasons[0].starts_with("adopted"), "{:?}", c.reasons);
    let h = env.must_get("HelmRepository", "charts").await;
    assert_eq!(labels(&h)["pbsync.dev/adopted"], "true");
    assert_eq!(labels(&h)["pbsync.dev/instance"], env.instance);
    assert_eq!(h["spec"]["url"], "https://charts.example.com");

    // Its last referrer leaves with policy delete: an adopted object is released instead.
    repo.remove("bundles/a.yaml");
    repo.write("shared.yaml", shared(ns, &[]));
    repo.commit("a leaves");
    let report = ok(env
        .apply_with(&env.ctx(&repo), &target, RunOptions::default())
        .await);
    assert_eq!(
        outcomes(&report)["HelmRepository charts"],
        Outcome::Orphaned
    );
    assert_eq!(outcomes(&report)["WorkloadProfile a-wp"], Outcome::Deleted);
    let h = env.must_get("HelmRepository", "charts").await;
    assert!(!labels(&h).contains_key("pbsync.dev/adopted"));
    assert!(!labels(&h).contains_key("pbsync.dev/instance"));
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Configuration errors and rejected objects
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_never_takes_an_object_another_instance_manages() {
    let Some(env) = env("adopt-other").await else {
        return;
    };
    let ns = &env.ns;
    let repo = one_bundle_repo(ns);
    // Another pbsync instance applies the same repository first.
    let green = format!("{}-green", env.instance);
    let theirs = KubeTarget::new(KubeOptions {
        instance: green.clone(),
        ..env.options()
    });
    let mut green_ctx = env.ctx(&repo);
    green_ctx.plan.instance.clone_from(&green);
    ok(env
        .apply_with(&green_ctx, &theirs, RunOptions::default())
        .await);
    let before = env.must_get("HelmRepository", "charts").await;

    // This instance, with adoption on, leaves every one of them alone and names the owner.
    let target = env.target();
    let mut ctx = env.ctx(&repo);
    ctx.plan.adopt = true;
    let report = ok(env.apply_with(&ctx, &target, RunOptions::default()).await);
    for c in &report.plan().changes {
        assert_eq!(c.action, Action::Blocked, "{}", render(report.plan()));
        assert!(
            c.reasons[0].contains(&format!("managed by pbsync instance {green:?}")),
            "{:?}",
            c.reasons
        );
    }
    let after = env.must_get("HelmRepository", "charts").await;
    assert_eq!(rv(&after), rv(&before), "never written");
    assert_eq!(labels(&after)["pbsync.dev/instance"], green);
    assert_eq!(
        target.requests().writes(),
        1,
        "only its own status ConfigMap"
    );

    // A plan that says adopt anyway (forged here) is refused before any request: the apply
    // checks every write with the guard's adoption rule against the object planned for.
    let mut forged = report.plan().clone();
    for c in &mut forged.changes {
        c.action = Action::Update;
        c.adopt = true;
    }
    forged
        .changes
        .retain(|c| c.key.kind == Kind::HelmRepository);
    let stamp = pbsync::ownership::Stamp {
        instance: &env.instance,
        revision: &report.revision,
        adopted: false,
    };
    let planned = env.plan(&repo, &target).await;
    let (_, result) = target::run(
        &target,
        &planned.graph,
        &forged,
        &stamp,
        RunOptions::default(),
    )
    .await;
    let Err(RunError::Write(e)) = &result else {
        panic!("expected a refused write, got {result:?}");
    };
    assert!(
        matches!(e.refusal(), Some(Refusal::OtherInstance { owner, .. }) if *owner == green),
        "{}",
        pbsync::error_chain(e)
    );
    let after = env.must_get("HelmRepository", "charts").await;
    assert_eq!(rv(&after), rv(&before), "never written");
    assert_eq!(labels(&after)["pbsync.dev/instance"], green);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_whose_object_changed_hands_after_the_plan_is_refused() {
    let Some(env) = env("recheck-delete").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts-a", "charts-b"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts-a"]))
        .write("bundles/b.yaml", app(ns, "b", "delete", &["charts-b"]));
    repo.commit("two bundles");
    let target = env.target();
    ok(env.apply(&repo, &target).await);
    repo.remove("bundles/a.yaml");
    repo.write("shared.yaml", shared(ns, &["charts-b"]));
    repo.commit("a leaves");
    let planned = env.plan(&repo, &target).await;
    assert_eq!(
        change(planned.plan(), Kind::HelmRepository, "charts-a").action,
        Action::Delete
    );

    // Between the plan and its apply, the object is handed to another instance.
    env.edit(
        "HelmRepository",
        "charts-a",
        json!({"metadata": {"labels": {"pbsync.dev/instance": "green"}}}),
    )
    .await;
    let stamp = pbsync::ownership::Stamp {
        instance: &env.instance,
        revision: &planned.revision,
        adopted: false,
    };
    let before = target.requests();
    let (set, result) = target::run(
        &target,
        &planned.graph,
        planned.plan(),
        &stamp,
        RunOptions::default(),
    )
    .await;
    let Err(RunError::Prune { first, .. }) = &result else {
        panic!("expected a refused deletion, got {result:?}");
    };
    assert!(
        matches!(first.refusal(), Some(Refusal::NotOurs { .. })),
        "{}",
        pbsync::error_chain(first)
    );
    assert!(
        env.get("HelmRepository", "charts-a").await.is_some(),
        "kept"
    );
    assert!(
        env.get("ProfileBundle", "a").await.is_some(),
        "its bundle is kept"
    );
    let charts = set
        .entries
        .iter()
        .find(|e| &*e.key.name == "charts-a")
        .expect("entry");
    assert_eq!(charts.outcome, Outcome::Failed);
    // The bundle's own workload profile, which nobody took, went; nothing else did.
    assert!(env.get("WorkloadProfile", "a-wp").await.is_none());
    let delta = writes_between(&before, &target.requests());
    assert_eq!(delta.verb(Verb::Delete), 1, "{delta}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_object_changed_hands_after_the_plan_is_refused() {
    let Some(env) = env("recheck-release").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts-a", "charts-b"]))
        .write("bundles/a.yaml", app(ns, "a", "orphan", &["charts-a"]))
        .write("bundles/b.yaml", app(ns, "b", "delete", &["charts-b"]));
    repo.commit("two bundles");
    let target = env.target();
    ok(env.apply(&repo, &target).await);
    repo.remove("bundles/a.yaml");
    repo.write("shared.yaml", shared(ns, &["charts-b"]));
    repo.commit("a leaves, orphaning its dependents");
    let planned = env.plan(&repo, &target).await;
    assert_eq!(
        change(planned.plan(), Kind::HelmRepository, "charts-a").action,
        Action::Orphan
    );

    // Between the plan and its apply, another instance takes the repository over.
    env.edit(
        "HelmRepository",
        "charts-a",
        json!({"metadata": {"labels": {"pbsync.dev/instance": "green"}}}),
    )
    .await;
    let before = env.must_get("HelmRepository", "charts-a").await;
    let stamp = pbsync::ownership::Stamp {
        instance: &env.instance,
        revision: &planned.revision,
        adopted: false,
    };
    let (_, result) = target::run(
        &target,
        &planned.graph,
        planned.plan(),
        &stamp,
        RunOptions::default(),
    )
    .await;
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
    let after = env.must_get("HelmRepository", "charts-a").await;
    assert_eq!(rv(&after), rv(&before), "green's object is not touched");
    assert_eq!(labels(&after)["pbsync.dev/instance"], "green");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_into_a_namespace_the_hub_lacks_is_refused_before_any_write() {
    let Some(env) = env("missing-ns").await else {
        return;
    };
    let ns = &env.ns;
    let absent = format!("{ns}-absent");
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts"]))
        .write("elsewhere/shared.yaml", shared(&absent, &["charts"]))
        .write("elsewhere/b.yaml", app(&absent, "b", "delete", &["charts"]));
    repo.commit("two namespaces, one of them missing");
    let target = env.target();
    let planned = env.plan(&repo, &target).await;
    let plan = planned.plan();
    assert_eq!(plan.missing_namespaces.len(), 1, "{}", render(plan));
    assert_eq!(plan.missing_namespaces[0].namespace, absent);
    assert!(
        plan.missing_namespaces[0]
            .files
            .iter()
            .any(|f| f.starts_with("elsewhere/b.yaml:")),
        "{:?}",
        plan.missing_namespaces
    );
    for c in plan.changes.iter().filter(|c| *c.key.namespace == *absent) {
        assert_eq!(c.action, Action::Unknown, "{}", render(plan));
        assert!(
            c.reasons[0].contains("does not exist on the hub"),
            "{:?}",
            c.reasons
        );
    }
    assert_eq!(
        change(plan, Kind::ProfileBundle, "a").action,
        Action::Create,
        "the namespace that exists plans as usual"
    );

    let err = env.apply(&repo, &target).await.expect_err("refused");
    let Error::Apply { source, .. } = &err else {
        panic!("{}", pbsync::error_chain(&err));
    };
    let RunError::MissingNamespaces(msg) = &**source else {
        panic!("{}", pbsync::error_chain(&err));
    };
    assert!(
        msg.contains(&absent) && msg.contains("elsewhere/b.yaml:"),
        "{msg}"
    );
    for (kind, name) in [
        ("ProfileBundle", "a"),
        ("HelmRepository", "charts"),
        ("ComponentDefinition", "web"),
    ] {
        assert!(
            env.get(kind, name).await.is_none(),
            "{kind} {name} was written although the commit was refused"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_waits_for_the_instances_lease_and_takes_over_from_a_dead_process() {
    let Some(env) = env("lease").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = one_bundle_repo(ns);
    let ctx = env.ctx_with_wait(&repo, Duration::from_secs(1));
    let apply = |ctx: &Context| {
        let ctx = ctx.clone();
        let snapshot = ctx.fetch().expect("fetch");
        let target = env.target();
        async move {
            engine::run(
                &ctx,
                Input::of(&snapshot),
                Goal::Apply(&target, RunOptions::default()),
            )
            .await
        }
    };

    // Another pass (another host's daemon, say) holds the instance's Lease.
    let other = env.target();
    let held = other
        .lock("other-host-4242", Duration::ZERO)
        .await
        .expect("lock");
    let lease: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.client.clone(), ns);
    let name = format!("pbsync-{}", env.instance);
    let record = lease.get(&name).await.expect("the lease exists");
    assert_eq!(
        record.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("other-host-4242")
    );
    let err = apply(&ctx).await.expect_err("locked");
    let Error::Lock(e) = &err else {
        panic!("{}", pbsync::error_chain(&err));
    };
    let text = pbsync::error_chain(e);
    assert!(
        text.contains("other-host-4242") && text.contains(&name),
        "{text}"
    );
    assert!(
        env.get("ProfileBundle", "a").await.is_none(),
        "nothing written"
    );
    held.release().await;
    ok(apply(&ctx).await);
    let record = lease.get(&name).await.expect("the lease");
    assert_eq!(
        record.spec.and_then(|s| s.holder_identity),
        None,
        "released after the pass"
    );

    // A `pbsync apply` of this host killed mid-pass leaves a fresh record behind: its
    // process is gone, so the next pass takes over at once instead of waiting it out.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string();
    let dead = format!("{host}-9999999");
    let mut record = lease.get(&name).await.expect("the lease");
    let spec = record.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some(dead.clone());
    spec.lease_duration_seconds = Some(3600);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    lease
        .replace(&name, &PostParams::default(), &record)
        .await
        .expect("a dead holder's record");
    repo.write("bundles/b.yaml", app(ns, "b", "delete", &[]));
    repo.commit("two");
    let report = ok(apply(&env.ctx_with_wait(&repo, Duration::from_secs(2))).await);
    assert!(env.get("ProfileBundle", "b").await.is_some());
    assert!(report.plan().has_changes());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_crd_is_a_configuration_error_before_anything_is_written() {
    let Some(env) = env("missing-crd").await else {
        return;
    };
    let ns = &env.ns;
    let repo = one_bundle_repo(ns);
    // A hub where WorkloadProfiles would be served by a group that is not installed.
    let mut options = env.options();
    options
        .api_versions
        .insert(Kind::WorkloadProfile, "missing.pbsync.test/v1".into());
    let target = KubeTarget::new(options);
    let err = env.apply(&repo, &target).await.expect_err("missing CRD");
    let Some(target::Error::Config(msg)) = (match &err {
        Error::Observe(e) => Some(&**e),
        _ => None,
    }) else {
        panic!(
            "expected a configuration error, got {}",
            pbsync::error_chain(&err)
        );
    };
    assert!(
        msg.contains("CRD workloadprofiles.missing.pbsync.test is not installed"),
        "{msg}"
    );
    assert!(!err.is_retryable());
    let counts = target.requests();
    assert_eq!(counts.writes(), 0, "{counts}");
    assert_eq!(counts.verb(Verb::DryRun), 0, "{counts}");
    assert!(env.get("ProfileBundle", "a").await.is_none());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_the_crd_schema_rejects_plans_as_unknown_and_applies_nothing() {
    let Some(env) = env("schema-rejects").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = one_bundle_repo(ns);
    // `pbsync plan` always dry-runs new objects; `apply --preflight` too.
    let target = KubeTarget::new(KubeOptions {
        preflight: true,
        ..env.options()
    });
    ok(env.apply(&repo, &target).await);
    let charts_before = env.must_get("HelmRepository", "charts").await;

    // An interval Flux's schema rejects on an existing object, and a new object with one.
    repo.write(
        "shared.yaml",
        &(shared(ns, &["charts"]).replace("interval: 1h", "interval: often")
            + &yaml::stream([yaml::helm_repository(
                ns,
                "fresh",
                "https://fresh.example.com",
                "sometimes",
            )])),
    );
    repo.write(
        "bundles/a.yaml",
        app(ns, "a", "delete", &["charts", "fresh"]),
    );
    repo.commit("invalid intervals");
    let planned = env.plan(&repo, &target).await;
    for name in ["charts", "fresh"] {
        let c = change(planned.plan(), Kind::HelmRepository, name);
        assert_eq!(c.action, Action::Unknown, "{}", render(planned.plan()));
        let why = c.reasons.last().expect("reason");
        assert!(why.contains("spec.interval"), "the server's message: {why}");
    }
    let before = target.requests();
    let err = env.apply(&repo, &target).await.expect_err("unknown");
    let Error::Apply { source, .. } = &err else {
        panic!("{}", pbsync::error_chain(&err));
    };
    assert!(matches!(**source, RunError::Unknown(2)), "{source}");
    let delta = writes_between(&before, &target.requests());
    // The bundle changed (it names `fresh`), so it is written; the rejected objects are not.
    assert_eq!(delta.verb(Verb::Delete), 0, "{delta}");
    assert_eq!(
        rv(&env.must_get("HelmRepository", "charts").await),
        rv(&charts_before),
        "the rejected update was not written"
    );
    assert!(env.get("HelmRepository", "fresh").await.is_none());
    assert!(env.status().await["outcome"].contains("could not be compared"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_preflight_a_rejected_create_fails_the_pass_before_any_deletion() {
    let Some(env) = env("no-preflight").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts", "old"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts", "old"]));
    repo.commit("two repositories");
    let target = env.target();
    ok(env.apply(&repo, &target).await);

    // `old` goes (its last reference is dropped), `fresh` comes with an interval Flux's
    // schema rejects. Without preflight the plan cannot know; the create finds out.
    repo.write(
        "shared.yaml",
        &(shared(ns, &["charts"])
            + &yaml::stream([yaml::helm_repository(
                ns,
                "fresh",
                "https://fresh.example.com",
                "sometimes",
            )])),
    );
    repo.write(
        "bundles/a.yaml",
        app(ns, "a", "delete", &["charts", "fresh"]),
    );
    repo.commit("an invalid new repository");
    let planned = env.plan(&repo, &target).await;
    assert_eq!(
        change(planned.plan(), Kind::HelmRepository, "fresh").action,
        Action::Create
    );
    assert_eq!(
        change(planned.plan(), Kind::HelmRepository, "old").action,
        Action::Delete
    );
    let before = target.requests();
    let err = env
        .apply(&repo, &target)
        .await
        .expect_err("rejected create");
    let msg = pbsync::error_chain(&err);
    assert!(
        msg.contains("shared.yaml:"),
        "the object's file:line: {msg}"
    );
    assert!(msg.contains("spec.interval"), "the server's message: {msg}");
    let delta = writes_between(&before, &target.requests());
    assert_eq!(delta.verb(Verb::DryRun), 0, "no preflight: {delta}");
    assert_eq!(
        delta.verb(Verb::Delete),
        0,
        "nothing deleted after a failed write: {delta}"
    );
    assert!(env.get("HelmRepository", "old").await.is_some());
    assert!(env.get("HelmRepository", "fresh").await.is_none());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_update_alone_writes_nothing() {
    let Some(env) = env("invalid-only").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = one_bundle_repo(ns);
    let target = env.target();
    ok(env.apply(&repo, &target).await);
    repo.write(
        "shared.yaml",
        shared(ns, &["charts"]).replace("interval: 1h", "interval: often"),
    );
    repo.commit("invalid interval");
    let before = target.requests();
    let err = env.apply(&repo, &target).await.expect_err("unknown");
    let delta = writes_between(&before, &target.requests());
    assert!(pbsync::error_chain(&err).contains("could not be compared"));
    // Only the status ConfigMap records the failed attempt; no object is written.
    assert_eq!(delta.writes(), 1, "{delta}");
    assert_eq!(delta.verb(Verb::Apply), 1, "{delta}");
    let h = env.must_get("HelmRepository", "charts").await;
    assert_eq!(h["spec"]["interval"], "1h");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_status_namespace_is_reported_clearly() {
    let Some(env) = env("status-ns").await else {
        return;
    };
    let ns = &env.ns;
    let repo = one_bundle_repo(ns);
    let target = KubeTarget::new(KubeOptions {
        status_namespace: format!("{ns}-nowhere"),
        ..env.options()
    });
    let err = env.apply(&repo, &target).await.expect_err("status");
    let msg = pbsync::error_chain(&err);
    assert!(
        msg.contains(&format!("status namespace \"{ns}-nowhere\" does not exist")),
        "{msg}"
    );
    // The namespace also holds the instance's Lease, which a pass takes before it reads or
    // writes anything: nothing was applied.
    assert!(env.get("ProfileBundle", "a").await.is_none());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_profiles_without_a_palette_target_are_a_configuration_error() {
    let Some(env) = env("cluster-profiles").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write(
        "profiles.yaml",
        yaml::cluster_profile("edge-infra", "1.0.0", "infra"),
    )
    .write("bundles/a.yaml", app(ns, "a", "delete", &[]))
    .write("shared.yaml", shared(ns, &[]));
    repo.commit("one");
    let target = env.target();
    let err = env.apply(&repo, &target).await.expect_err("config");
    let Some(target::Error::Config(msg)) = (match &err {
        Error::Observe(e) => Some(&**e),
        _ => None,
    }) else {
        panic!("{}", pbsync::error_chain(&err));
    };
    assert!(
        msg.contains("Palette cluster profiles (project/edge-infra@1.0.0)"),
        "{msg}"
    );
    assert!(msg.contains("--palette-url"), "{msg}");
    assert_eq!(
        target.requests().total(),
        0,
        "refused before contacting the hub"
    );
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Interrupted passes and the server-side cascade
// ---------------------------------------------------------------------------------------

/// A plain-HTTP proxy on loopback in front of the test cluster, for a pbsync process to
/// talk through. It forwards every request with the test's own credentials, except the first
/// one `hold` picks (by method and path): that one is signalled on `held`, never forwarded
/// and never answered, so the process can be killed while it waits, at an exact point of its
/// pass.
struct HoldingProxy {
    dir: tempfile::TempDir,
    held: tokio::sync::oneshot::Receiver<()>,
}

impl HoldingProxy {
    async fn start(
        client: kube::Client,
        hold: impl Fn(&http::Method, &str) -> bool + Send + Sync + 'static,
    ) -> Self {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, held) = tokio::sync::oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let hold = Arc::new(hold);
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (client, tx, hold) = (client.clone(), tx.clone(), hold.clone());
            async move {
                let (parts, body) = req.into_parts();
                if hold(&parts.method, parts.uri.path()) {
                    let first = tx.lock().expect("lock").take();
                    if let Some(tx) = first {
                        let _ = tx.send(());
                        return std::future::pending().await;
                    }
                }
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or("/", http::uri::PathAndQuery::as_str)
                    .to_string();
                let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
                let mut forward = http::Request::builder()
                    .method(parts.method.clone())
                    .uri(&path);
                for (name, value) in &parts.headers {
                    if name != http::header::HOST {
                        forward = forward.header(name, value);
                    }
                }
                let forward = forward
                    .body(kube::client::Body::from(body.to_vec()))
                    .expect("request");
                let answer = client.send(forward).await.expect("forward");
                let (mut parts, body) = answer.into_parts();
                let body = body.collect_bytes().await.expect("answer body");
                for hop in [http::header::TRANSFER_ENCODING, http::header::CONNECTION] {
                    parts.headers.remove(hop);
                }
                axum::response::Response::from_parts(parts, axum::body::Body::from(body))
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: proxy\n\
                 clusters: [{{name: proxy, cluster: {{server: 'http://{addr}'}}}}]\n\
                 users: [{{name: proxy, user: {{}}}}]\n\
                 contexts: [{{name: proxy, context: {{cluster: proxy, user: proxy}}}}]\n"
            ),
        )
        .expect("write kubeconfig");
        Self { dir, held }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_killed_between_dependents_and_bundle_is_completed_by_the_next() {
    let Some(env) = env("interrupted").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["common", "a-only"]))
        .write(
            "bundles/a.yaml",
            app(ns, "a", "delete", &["common", "a-only"]),
        )
        .write(
            "bundles/keeper.yaml",
            app(ns, "keeper", "delete", &["common"]),
        );
    repo.commit("one");
    ok(env.apply(&repo, &env.target()).await);

    repo.remove("bundles/a.yaml");
    repo.write("shared.yaml", shared(ns, &["common"]));
    repo.commit("a leaves");
    // A real `pbsync apply` process, through a proxy that holds its delete of the bundle: by
    // then a's dependents (its WorkloadProfile and a-only) are gone. The process is killed
    // (SIGKILL) while it waits; the bundle's delete never reaches the server.
    let bundle_path = format!("/namespaces/{ns}/profilebundles/a");
    let mut proxy = HoldingProxy::start(env.client.clone(), move |method, path| {
        method == http::Method::DELETE && path.ends_with(&bundle_path)
    })
    .await;
    let logs = tempfile::tempdir().expect("tempdir");
    let stderr = logs.path().join("stderr");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pbsync"))
        .args(["apply", "--target", "kube", "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(proxy.kubeconfig())
        .args(["--instance", &env.instance, "--status-namespace", ns])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pbsync");
    tokio::select! {
        held = &mut proxy.held => held.expect("proxy"),
        exit = child.wait() => panic!(
            "pbsync exited ({exit:?}) before deleting the bundle:\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        ),
        () = tokio::time::sleep(Duration::from_secs(60)) => panic!("pbsync never deleted the bundle"),
    }
    assert!(
        env.get("WorkloadProfile", "a-wp").await.is_none(),
        "deleted before the bundle"
    );
    assert!(
        env.get("HelmRepository", "a-only").await.is_none(),
        "deleted before the bundle"
    );
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("wait");
    assert!(!status.success(), "killed: {status:?}");
    let a = env.must_get("ProfileBundle", "a").await;
    assert_eq!(
        labels(&a)["pbsync.dev/instance"],
        env.instance,
        "still managed"
    );

    // A new process: the bundle is still the record of what has to go, and goes now.
    let next = env.target();
    let report = ok(env.apply(&repo, &next).await);
    assert_eq!(outcomes(&report)["ProfileBundle a"], Outcome::Deleted);
    assert!(env.get("ProfileBundle", "a").await.is_none());
    // Nothing lost: the keeper and what it uses are intact and unchanged.
    for (kind, name) in [
        ("ProfileBundle", "keeper"),
        ("WorkloadProfile", "keeper-wp"),
        ("HelmRepository", "common"),
        ("ComponentDefinition", "web"),
    ] {
        let obj = env.must_get(kind, name).await;
        assert_eq!(
            labels(&obj)["pbsync.dev/instance"],
            env.instance,
            "{kind} {name}"
        );
    }
    let again = env.plan(&repo, &next).await;
    assert!(!again.plan().has_changes(), "{}", render(again.plan()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_server_sets_the_live_policy_to_orphan_before_deleting_only_the_bundle() {
    let Some(env) = env("cascade-server").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &["charts"]))
        .write("bundles/a.yaml", app(ns, "a", "delete", &["charts"]))
        .write("bundles/b.yaml", app(ns, "b", "delete", &[]))
        .write("bundles/keeper.yaml", app(ns, "keeper", "delete", &[]));
    repo.commit("one");
    let target = env.target();
    ok(env.apply(&repo, &target).await);
    // Hold the bundles' deletion so the live object can be inspected afterwards (PaletteAI's
    // controller would hold it the same way while it cleans up).
    for b in ["a", "b"] {
        env.edit(
            "ProfileBundle",
            b,
            json!({"metadata": {"finalizers": ["test.pbsync.dev/hold"]}}),
        )
        .await;
    }

    // Commit two says orphan for a; commit three removes a and b. Both land in one pass.
    repo.write("bundles/a.yaml", app(ns, "a", "orphan", &["charts"]));
    repo.commit("a: orphan");
    repo.remove("bundles/a.yaml").remove("bundles/b.yaml");
    repo.write("shared.yaml", shared(ns, &[]));
    repo.commit("a and b leave");
    let mut ctx = env.ctx(&repo);
    ctx.plan.cascade = Cascade::Server;
    let report = ok(env.apply_with(&ctx, &target, RunOptions::default()).await);
    let a = change(report.plan(), Kind::ProfileBundle, "a");
    assert_eq!(
        a.effective_policy,
        Some(pbsync::model::DeletionPolicy::Orphan)
    );
    let o = outcomes(&report);
    assert_eq!(o["ProfileBundle a"], Outcome::Deleted);
    assert_eq!(o["ProfileBundle b"], Outcome::Deleted);
    // b's dependent is the server's to delete: reported, not performed.
    let bwp = change(report.plan(), Kind::WorkloadProfile, "b-wp");
    assert_eq!(
        bwp.executor,
        pbsync::plan::Executor::Server,
        "{}",
        render(report.plan())
    );
    assert_eq!(o["WorkloadProfile b-wp"], Outcome::Skipped);
    assert!(env.get("WorkloadProfile", "b-wp").await.is_some());

    let a_live = env.must_get("ProfileBundle", "a").await;
    assert!(
        a_live["metadata"]["deletionTimestamp"].is_string(),
        "deleted"
    );
    assert_eq!(
        a_live["spec"]["deletionPolicy"], "orphan",
        "patched before the delete"
    );
    let b_live = env.must_get("ProfileBundle", "b").await;
    assert_eq!(
        b_live["spec"]["deletionPolicy"], "delete",
        "b's policy left as it was"
    );
    for b in ["a", "b"] {
        env.edit(
            "ProfileBundle",
            b,
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_palette_side_cluster_profiles_go_there_and_hub_objects_to_kubernetes() {
    let Some(env) = env("split").await else {
        return;
    };
    let ns = &env.ns;
    let mut repo = ScratchRepo::new();
    repo.write(
        "profiles.yaml",
        yaml::cluster_profile("edge-infra", "1.0.0", "infra"),
    )
    .write(
        "bundles/edge.yaml",
        yaml::profile_bundle(ns, "edge", "Infrastructure")
            .cluster_profiles(&["edge-infra@1.0.0"])
            .to_string(),
    );
    repo.commit("one");
    // The Palette side is the local-directory target here; `--palette-url` builds the same
    // split with the Palette target.
    let palette_dir = tempfile::tempdir().expect("tempdir");
    let split = target::Split {
        hub: KubeTarget::new(KubeOptions {
            cluster_profiles: pbsync::target::kubernetes::ClusterProfiles::Elsewhere,
            ..env.options()
        }),
        palette: pbsync::target::local_dir::LocalDir::new(palette_dir.path(), env.instance.clone()),
    };
    let report = ok(env.apply(&repo, &split).await);
    let o = outcomes(&report);
    assert_eq!(o["ProfileBundle edge"], Outcome::Created);
    assert_eq!(o["ClusterProfile edge-infra"], Outcome::Created);
    assert!(env.get("ProfileBundle", "edge").await.is_some());
    assert!(
        palette_dir
            .path()
            .join("palette/project/edge-infra@1.0.0.json")
            .exists()
    );
    let sent = split.hub.requests();
    assert_eq!(
        sent.verb(Verb::Apply),
        2,
        "the bundle and the status only: {sent}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_write_names_the_file_line_and_the_servers_message() {
    let Some(env) = env("rejected-write").await else {
        return;
    };
    let ns = &env.ns;
    let repo = one_bundle_repo(ns);
    let target = env.target();
    let planned = env.plan(&repo, &target).await;
    assert_eq!(
        planned.plan().summary().create,
        4,
        "{}",
        render(planned.plan())
    );
    // Between plan and apply the namespace starts terminating: the server now refuses
    // every create in it (403), which no retry can fix.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    let stamp = Stamp {
        instance: &env.instance,
        revision: &planned.plan().revision,
        adopted: false,
    };
    let (set, result) = target::run(
        &target,
        &planned.graph,
        planned.plan(),
        &stamp,
        RunOptions::default(),
    )
    .await;
    let Err(RunError::Write(err)) = result else {
        panic!("expected a failed write, got {result:?}");
    };
    let msg = pbsync::error_chain(&err);
    assert!(
        msg.starts_with(&format!(
            "cannot create ComponentDefinition {ns}/web (shared.yaml:1): "
        )) || msg.starts_with(&format!(
            "cannot create HelmRepository {ns}/charts (shared.yaml:"
        )),
        "{msg}"
    );
    assert!(msg.contains("403 Forbidden"), "{msg}");
    assert!(
        msg.contains("because it is being terminated"),
        "the server's message: {msg}"
    );
    assert!(!err.is_retryable());
    let outcome = |name: &str| {
        set.entries
            .iter()
            .find(|e| &*e.key.name == name)
            .map(|e| e.outcome)
    };
    assert_eq!(outcome("web"), Some(Outcome::Failed));
    assert_eq!(
        outcome("a"),
        Some(Outcome::Skipped),
        "later waves are not reached"
    );
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Readiness: health followed with watches, `--wait`, deletion waves. PaletteAI's controllers
// are proprietary: the tests play them, writing conditions through the status subresource.
// ---------------------------------------------------------------------------------------

impl Env {
    /// Writes `status` on an object as its controller would (status subresource).
    async fn set_status(&self, kind: &str, name: &str, status: Value) {
        let pp = PatchParams {
            field_manager: Some("paletteai-controller".into()),
            ..PatchParams::default()
        };
        self.api(kind)
            .patch_status(name, &pp, &Patch::Merge(json!({ "status": status })))
            .await
            .expect("write status");
    }

    /// The object's `metadata.generation`.
    async fn generation(&self, kind: &str, name: &str) -> i64 {
        self.must_get(kind, name)
            .await
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .expect("generation")
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-12-07T10:00:00Z"})
}

/// A repository of bundles without Flux sources (no controller runs for them here), each
/// with its own WorkloadProfile using the ComponentDefinition `web`.
fn bundles_repo(ns: &str, names: &[&str]) -> ScratchRepo {
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &[]));
    for name in names {
        repo.write(
            &format!("bundles/{name}.yaml"),
            app(ns, name, "delete", &[]),
        );
    }
    repo.commit("bundles");
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_follows_a_bundle_until_its_controller_reports_it_ready() {
    let Some(env) = env("wait-ready").await else {
        return;
    };
    let ns = env.ns.clone();
    let repo = bundles_repo(&ns, &["chat"]);
    let target = env.target();
    let report = ok(env.apply(&repo, &target).await);
    // The controller starts working on it: Reconciling, not ready yet.
    env.set_status(
        "ProfileBundle",
        "chat",
        json!({"conditions": [
            condition("Reconciling", "True", "Progressing", "deploying workloads"),
            condition("Ready", "False", "Progressing", "deploying workloads"),
        ]}),
    )
    .await;
    // ...and reports it ready a moment later, for the generation it saw.
    let generation = env.generation("ProfileBundle", "chat").await;
    let controller = {
        let client = env.client.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let api: Api<DynamicObject> =
                Api::namespaced_with(client, &ns, &resource("ProfileBundle"));
            let status = json!({"status": {"observedGeneration": generation, "conditions": [
                condition("Ready", "True", "Ready", "all workloads deployed"),
            ]}});
            api.patch_status("chat", &PatchParams::default(), &Patch::Merge(status))
                .await
                .expect("status");
        })
    };
    let mut seen: Vec<String> = Vec::new();
    let waited = engine::wait::wait(
        &target,
        &report.graph,
        report.changes(),
        Duration::from_secs(60),
        |p| {
            seen.extend(
                p.waiting
                    .iter()
                    .map(|(k, s, why)| format!("{k} {s}: {why}")),
            );
        },
    )
    .await;
    controller.await.expect("controller");
    assert_eq!(waited.ending, engine::wait::Ending::Healthy, "{seen:?}");
    let working = format!("ProfileBundle {ns}/chat in-progress: deploying workloads (since ");
    assert!(
        seen.iter().any(|s| s.starts_with(&working)),
        "the bundle was waited on while its controller worked: {seen:?}"
    );
    // Everything the commit created was waited on: the bundle, its profile, the definition.
    let waited_on: Vec<String> = waited.waited_on.iter().map(ToString::to_string).collect();
    assert_eq!(
        waited_on,
        vec![
            format!("ComponentDefinition {ns}/web"),
            format!("WorkloadProfile {ns}/chat-wp"),
            format!("ProfileBundle {ns}/chat"),
        ]
    );
    assert!(waited.report.healthy());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_fails_with_the_cause_traced_to_every_bundle_the_shared_object_holds_back() {
    let Some(env) = env("wait-failed").await else {
        return;
    };
    let ns = env.ns.clone();
    let mut repo = ScratchRepo::new();
    // Two bundles sharing one WorkloadProfile.
    repo.write("shared.yaml", shared(&ns, &[]))
        .write(
            "profile.yaml",
            yaml::workload_profile(&ns, "shared-wp", "web", "chat"),
        )
        .write(
            "bundles.yaml",
            yaml::stream(["chat", "rag"].map(|b| {
                yaml::profile_bundle(&ns, b, "Application")
                    .workload_profiles(&["shared-wp"])
                    .to_string()
            })),
        );
    repo.commit("two bundles, one profile");
    let target = env.target();
    let report = ok(env.apply(&repo, &target).await);
    env.set_status(
        "WorkloadProfile",
        "shared-wp",
        json!({"conditions": [condition("Stalled", "True", "RenderFailed", "component main: chart chat not found")]}),
    )
    .await;
    let waited = engine::wait::wait(
        &target,
        &report.graph,
        report.changes(),
        Duration::from_secs(60),
        |_| {},
    )
    .await;
    assert_eq!(waited.ending, engine::wait::Ending::Failed);
    let now: jiff::Timestamp = "2026-12-07T10:03:12Z".parse().expect("time");
    // The shared profile is named once, with both bundles it holds back.
    assert_eq!(
        waited.causes(now),
        vec![format!(
            "WorkloadProfile {ns}/shared-wp failed: component main: chart chat not found (since 3m12s)\n    holds back ProfileBundle {ns}/chat, ProfileBundle {ns}/rag"
        )]
    );
    let chat = waited
        .report
        .root(&pbsync::model::ObjectKey::new(
            Kind::ProfileBundle,
            &*ns,
            "chat",
        ))
        .expect("root");
    assert_eq!(
        chat.chains(now),
        vec![format!(
            "ProfileBundle {ns}/chat not ready: WorkloadProfile {ns}/shared-wp failed: component main: chart chat not found (since 3m12s)"
        )]
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_naming_what_is_still_in_progress() {
    let Some(env) = env("wait-timeout").await else {
        return;
    };
    let ns = env.ns.clone();
    let repo = bundles_repo(&ns, &["slow"]);
    let target = env.target();
    let report = ok(env.apply(&repo, &target).await);
    env.set_status(
        "ProfileBundle",
        "slow",
        json!({"conditions": [condition("Reconciling", "True", "Progressing", "waiting for a compute pool")]}),
    )
    .await;
    let waited = engine::wait::wait(
        &target,
        &report.graph,
        report.changes(),
        Duration::from_secs(3),
        |_| {},
    )
    .await;
    assert_eq!(waited.ending, engine::wait::Ending::TimedOut);
    assert!(waited.elapsed >= Duration::from_secs(3));
    let now: jiff::Timestamp = "2026-12-07T10:00:05Z".parse().expect("time");
    assert_eq!(
        waited.causes(now),
        vec![format!(
            "ProfileBundle {ns}/slow in-progress: waiting for a compute pool (since 5s)"
        )]
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finalizer_that_holds_a_deletion_keeps_the_next_wave_waiting() {
    let Some(env) = env("deletion-waves").await else {
        return;
    };
    let ns = env.ns.clone();
    let mut repo = bundles_repo(&ns, &["gone", "stays"]);
    repo.write("shared.yaml", shared(&ns, &[]))
        .write(
            "extra-def.yaml",
            yaml::component_definition(&ns, "gone-def"),
        )
        .write(
            "bundles/gone.yaml",
            yaml::stream([
                yaml::profile_bundle(&ns, "gone", "Application")
                    .deletion_policy("delete")
                    .workload_profiles(&["gone-wp"])
                    .to_string(),
                yaml::workload_profile(&ns, "gone-wp", "gone-def", "gone"),
            ]),
        );
    repo.commit("gone uses a definition of its own");
    let target = env.target();
    ok(env.apply(&repo, &target).await);
    // Another controller holds the profile with a finalizer.
    env.edit(
        "WorkloadProfile",
        "gone-wp",
        json!({"metadata": {"finalizers": ["example.com/hold"]}}),
    )
    .await;
    repo.remove("bundles/gone.yaml").remove("extra-def.yaml");
    repo.commit("gone leaves");
    let opts = RunOptions {
        deletion_timeout: Duration::from_secs(2),
        ..RunOptions::default()
    };
    let result = env.apply_with(&env.ctx(&repo), &target, opts).await;
    let Err(Error::Apply {
        source, changes, ..
    }) = result
    else {
        panic!("expected the pass to stop on the held deletion, got {result:?}");
    };
    let RunError::DeletionsPending { waiting, .. } = &*source else {
        panic!("expected DeletionsPending, got {source}");
    };
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(
        waiting[0].0.to_string(),
        format!("WorkloadProfile {ns}/gone-wp")
    );
    assert!(waiting[0].1.contains("example.com/hold"), "{waiting:?}");
    // The next waves did not start: the definition and the bundle are still there.
    assert!(env.get("ComponentDefinition", "gone-def").await.is_some());
    assert!(env.get("ProfileBundle", "gone").await.is_some());
    let skipped: Vec<String> = changes
        .entries
        .iter()
        .filter(|e| e.outcome == Outcome::Skipped)
        .map(|e| e.key.to_string())
        .collect();
    assert_eq!(
        skipped,
        vec![
            format!("ComponentDefinition {ns}/gone-def"),
            format!("ProfileBundle {ns}/gone")
        ]
    );

    // The finalizer goes while the next pass waits: that pass finishes the deletions.
    let release = {
        let client = env.client.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let api: Api<DynamicObject> =
                Api::namespaced_with(client, &ns, &resource("WorkloadProfile"));
            api.patch(
                "gone-wp",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .expect("remove the finalizer");
        })
    };
    let opts = RunOptions {
        deletion_timeout: Duration::from_secs(60),
        ..RunOptions::default()
    };
    ok(env.apply_with(&env.ctx(&repo), &target, opts).await);
    release.await.expect("release");
    for (kind, name) in [
        ("WorkloadProfile", "gone-wp"),
        ("ComponentDefinition", "gone-def"),
        ("ProfileBundle", "gone"),
    ] {
        assert!(env.get(kind, name).await.is_none(), "{kind} {name} is gone");
    }
    assert!(env.get("ProfileBundle", "stays").await.is_some());
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Readiness with the real Flux source-controller of the test cluster: `pbsync apply --wait`
// as a user runs it, against a Helm repository served on loopback (or not).
// ---------------------------------------------------------------------------------------

/// A HelmRepository at `url` that the test cluster's source-controller reconciles (it
/// watches only objects with its shard label, see `testkit::flux`).
fn reconciled_helm_repository(ns: &str, name: &str, url: &str) -> String {
    let labels = pbsync_devkit::testkit::flux::watched_labels();
    let (key, value) = labels
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("one label");
    format!(
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    {key}: {}\nspec:\n  url: {url}\n  interval: 1m\n  timeout: 15s\n---\n",
        value.as_str().expect("label value")
    )
}

/// Runs `pbsync apply --wait` on `repo` into the test's namespace; (exit code, stdout).
async fn apply_wait(env: &Env, repo: &ScratchRepo, extra: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pbsync"))
        .args(["apply", "--repo"])
        .arg(repo.path())
        .args(["--target", "kube", "--kubeconfig"])
        .arg(&env.kubeconfig)
        .args(["--instance", &env.instance, "--status-namespace", &env.ns])
        .args(["--wait", "--timeout", "90s"])
        .args(extra)
        .output()
        .await
        .expect("run pbsync");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        format!("{stdout}\n--- stderr ---\n{stderr}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_exits_0_once_source_controller_has_fetched_the_served_index() {
    let Some(env) = env("wait-flux-ready").await else {
        return;
    };
    let ns = env.ns.clone();
    let charts = pbsync_devkit::testkit::helm_repo::HelmRepoServer::with_chart("chat", "0.1.0");
    let mut repo = ScratchRepo::new();
    repo.write(
        "shared.yaml",
        format!(
            "{}{}",
            shared(&ns, &[]),
            reconciled_helm_repository(&ns, "charts", charts.url())
        ),
    )
    .write("bundles/chat.yaml", app(&ns, "chat", "delete", &["charts"]));
    repo.commit("a bundle on a served Helm repository");
    let (code, out) = apply_wait(&env, &repo, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("healthy: 4 object(s) current after"),
        "the bundle, its profile, the definition and the repository: {out}"
    );
    // It really was the controller's verdict: the index was fetched.
    assert!(
        charts.requests().iter().any(|r| r.contains("index.yaml")),
        "{:?}",
        charts.requests()
    );
    let live = env.must_get("HelmRepository", "charts").await;
    assert_eq!(live["status"]["conditions"][0]["type"], "Ready", "{live}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_fails_naming_the_missing_index_once_with_every_bundle_it_holds_back() {
    let Some(env) = env("wait-flux-404").await else {
        return;
    };
    let ns = env.ns.clone();
    // A Helm repository without an index: every path answers 404.
    let charts = pbsync_devkit::testkit::helm_repo::HelmRepoServer::start();
    let mut repo = ScratchRepo::new();
    repo.write(
        "shared.yaml",
        format!(
            "{}{}",
            shared(&ns, &[]),
            reconciled_helm_repository(&ns, "charts", charts.url())
        ),
    )
    .write("bundles/chat.yaml", app(&ns, "chat", "delete", &["charts"]))
    .write("bundles/rag.yaml", app(&ns, "rag", "delete", &["charts"]));
    repo.commit("two bundles on a Helm repository with no index");
    let (code, out) = apply_wait(&env, &repo, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("failed after "), "{out}");
    // The repository is named once, with the controller's own words and both bundles.
    let culprit = format!("  HelmRepository {ns}/charts failed: ");
    assert_eq!(out.matches(&culprit).count(), 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&culprit))
        .expect("culprit line");
    assert!(line.contains("404"), "Flux's message names the 404: {line}");
    assert!(
        out.contains(&format!(
            "holds back ProfileBundle {ns}/chat, ProfileBundle {ns}/rag"
        )),
        "{out}"
    );
    // Applied again, nothing changed: nothing to wait for (only what a commit creates or
    // changes is waited on).
    let (code, again) = apply_wait(&env, &repo, &[]).await;
    assert_eq!(code, 0, "{again}");
    assert!(
        again.contains("nothing created or changed: nothing to wait for"),
        "{again}"
    );
    // A commit that changes both bundles: --format json says the same to a script.
    for b in ["chat", "rag"] {
        repo.write(
            &format!("bundles/{b}.yaml"),
            app(&ns, b, "orphan", &["charts"]),
        );
    }
    repo.commit("both bundles: orphan");
    let (code, json_out) = apply_wait(&env, &repo, &["--format", "json"]).await;
    assert_eq!(code, 1, "{json_out}");
    let doc: Value = serde_json::from_str(json_out.split("\n--- stderr ---").next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {json_out}"));
    assert_eq!(doc["ending"], "failed");
    assert_eq!(
        doc["health"]["culprits"][0]["key"]["kind"],
        "HelmRepository"
    );
    assert_eq!(
        doc["health"]["culprits"][0]["holdsBack"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{doc}"
    );
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// The daemon's watch cache: lists served from watch-fed mirrors
// ---------------------------------------------------------------------------------------

impl Env {
    /// A target that reads the hub through the watch cache, as the daemon's does.
    fn cached_target(&self) -> KubeTarget {
        KubeTarget::new(KubeOptions {
            watch_cache: true,
            ..self.options()
        })
    }

    /// The instance's Lease (`pbsync-<instance>` in the status namespace), if any.
    async fn api_lease(&self) -> Option<k8s_openapi::api::coordination::v1::Lease> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), &self.ns);
        leases
            .get_opt(&format!("pbsync-{}", self.instance))
            .await
            .expect("lease")
    }
}

/// What a plan decides, without when it was read: each change's action, object and reasons.
fn decisions(plan: &Plan) -> Vec<String> {
    plan.changes
        .iter()
        .map(|c| format!("{:?} {} {}", c.action, c.key, c.reasons.join("; ")))
        .collect()
}

/// Plans `repo` with `cached` until its plan equals a fresh target's (the watches deliver
/// an edit within moments), and returns it; fails if they never agree within 20 s.
async fn cached_plan_agrees(env: &Env, repo: &ScratchRepo, cached: &KubeTarget, step: &str) {
    let fresh = decisions(env.plan(repo, &env.target()).await.plan());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let from_cache = decisions(env.plan(repo, cached).await.plan());
        if from_cache == fresh {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{step}: the cached plan never matched a fresh one\ncached: {from_cache:#?}\nfresh: {fresh:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_watch_cache_a_pass_with_nothing_to_do_sends_no_request() {
    let Some(env) = env("cache-idle").await else {
        return;
    };
    let ns = env.ns.clone();
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(&ns, &["charts"]))
        .write("bundles/a.yaml", app(&ns, "a", "delete", &["charts"]))
        .write("bundles/b.yaml", app(&ns, "b", "delete", &["charts"]));
    repo.commit("two bundles");
    let target = env.cached_target();
    ok(env.apply(&repo, &target).await);
    let lease = || async {
        env.api_lease()
            .await
            .and_then(|l| l.metadata.resource_version)
    };
    // The first pass listed through the watches; the next one reads only them.
    let before = target.requests();
    let lease_before = lease().await;
    let report = ok(env.apply(&repo, &target).await);
    let sent = target.requests().since(&before);
    assert_eq!(
        sent.total(),
        0,
        "requests of a pass with nothing to do: {sent:?}"
    );
    assert!(
        report
            .changes()
            .entries
            .iter()
            .all(|e| e.outcome == Outcome::Unchanged),
        "{:?}",
        report.changes()
    );
    assert_eq!(
        lease().await,
        lease_before,
        "no lock was taken (the Lease is unchanged)"
    );
    assert!(
        before.get(Verb::Watch, 200) > 0,
        "the mirrors' first lists are counted: {before:?}"
    );

    // An object deleted by hand is seen through the watch, and the next pass recreates it.
    env.delete("HelmRepository", "charts").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = ok(env.apply(&repo, &target).await);
        if outcomes(&report)["HelmRepository charts"] == Outcome::Created {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deletion was never seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.get("HelmRepository", "charts").await.is_some());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_from_the_watch_cache_equals_a_fresh_plan_after_edits_out_of_band() {
    let Some(env) = env("cache-equal").await else {
        return;
    };
    let ns = env.ns.clone();
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(&ns, &["charts", "extra"]))
        .write("bundles/a.yaml", app(&ns, "a", "delete", &["charts"]))
        .write(
            "bundles/b.yaml",
            app(&ns, "b", "delete", &["charts", "extra"]),
        )
        .write("bundles/c.yaml", app(&ns, "c", "orphan", &["extra"]));
    repo.commit("three bundles");
    let cached = env.cached_target();
    ok(env.apply(&repo, &cached).await);
    cached_plan_agrees(&env, &repo, &cached, "after the first apply").await;

    // Edits a person, another tool or another owner makes, in an order drawn from a fixed
    // seed (printed, so a failure can be replayed), each followed by the comparison; every
    // third one also applied through the cache (its writes go into the mirrors).
    let seed = std::env::var("PBSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261207_u64);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut edits: Vec<u8> = (0..8).collect();
    rng.shuffle(&mut edits);
    for (i, edit) in edits.into_iter().enumerate() {
        let step = match edit {
            0 => {
                if env.get("WorkloadProfile", "c-wp").await.is_some() {
                    env.edit(
                        "WorkloadProfile",
                        "c-wp",
                        json!({"spec": {"type": "Infrastructure"}}),
                    )
                    .await;
                }
                "drift on c-wp"
            }
            1 => {
                if env.get("HelmRepository", "extra").await.is_some() {
                    env.delete("HelmRepository", "extra").await;
                }
                "extra deleted by hand"
            }
            2 => {
                env.create(
                    "ProfileBundle",
                    json!({"apiVersion": "spectrocloud.com/v1beta1", "kind": "ProfileBundle",
                        "metadata": {"name": "foreign", "namespace": ns},
                        "spec": {"type": "Application", "workloadProfileDependencies":
                            {"helmRepositories": [{"name": "charts"}]}}}),
                )
                .await;
                "a foreign bundle uses charts"
            }
            3 => {
                if env.get("WorkloadProfile", "b-wp").await.is_some() {
                    env.edit(
                        "WorkloadProfile",
                        "b-wp",
                        json!({"metadata": {"labels": {"pbsync.dev/instance": null}}}),
                    )
                    .await;
                }
                "b-wp's instance label removed"
            }
            4 => {
                env.create(
                    "ComponentDefinition",
                    json!({"apiVersion": "core.oam.dev/v1beta1", "kind": "ComponentDefinition",
                        "metadata": {"name": "by-hand", "namespace": ns},
                        "spec": {"workload": {"definition": {"apiVersion": "apps/v1", "kind": "Deployment"}},
                                 "schematic": {"cue": {"template": "output: {}"}}}}),
                )
                .await;
                "an unrelated object made by hand"
            }
            5 => {
                repo.remove("bundles/c.yaml");
                repo.commit("c leaves");
                "commit: c leaves (orphan)"
            }
            6 => {
                repo.remove("bundles/a.yaml");
                repo.commit("a leaves");
                "commit: a leaves"
            }
            _ => {
                if env.get("ProfileBundle", "b").await.is_some() {
                    env.edit(
                        "ProfileBundle",
                        "b",
                        json!({"metadata": {"annotations": {"example.com/touched": "yes"}}}),
                    )
                    .await;
                }
                "b annotated by hand"
            }
        };
        cached_plan_agrees(&env, &repo, &cached, step).await;
        if i % 3 == 2 {
            // Apply what the cache plans; the fresh plan afterwards must agree again.
            let applied = env.apply(&repo, &cached).await;
            if let Err(e) = &applied {
                // The guard may refuse (a mass deletion); a refusal is an answer too.
                println!("{step}: apply: {}", pbsync::error_chain(e));
            }
            cached_plan_agrees(&env, &repo, &cached, &format!("{step}, applied")).await;
        }
    }
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Two instances on one hub: deploying onto a pool that lives only on the hub
// ---------------------------------------------------------------------------------------

/// A ProfileBundle labelled with the inference engine `engine`.
fn bundle_with_engine(ns: &str, name: &str, spec: &str, engine: &str) -> String {
    format!(
        "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{palette.ai/inference-engine: {engine}}}\nspec:\n{spec}"
    )
}

/// An AIWorkload of type `kind` (`model`, `application`) deploying `bundle` onto the pool
/// `pool`.
fn deployment(ns: &str, name: &str, kind: &str, bundle: &str, pool: &str) -> String {
    format!(
        "apiVersion: spectrocloud.com/v1alpha1\nkind: AIWorkload\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{palette.ai/aiworkload-type: {kind}}}\nspec:\n  profileBundleRefs:\n    - name: {bundle}\n  computePool:\n    ref: {{name: {pool}}}\n"
    )
}

fn workload_profile_of(ns: &str, name: &str, kind: &str) -> String {
    format!(
        "apiVersion: spectrocloud.com/v1beta1\nkind: WorkloadProfile\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  type: {kind}\n  workload:\n    components: []\n"
    )
}

/// Plans HEAD of `ctx`'s repository against `target`.
async fn plan_result<T: Target>(ctx: &Context, target: &T) -> engine::Result<Report> {
    let snapshot = ctx.fetch().expect("fetch");
    engine::run(ctx, Input::of(&snapshot), Goal::Plan(target)).await
}

/// The apps team's repository: a Model Deployment of an Application bundle labelled
/// `engine` onto the pool `pool`, which the repository does not declare.
fn apps_files(repo: &mut ScratchRepo, ns: &str, engine: &str, pool: &str) {
    repo.write("profiles.yaml", workload_profile_of(ns, "llama", "Model"))
        .write(
            "bundles/llama.yaml",
            bundle_with_engine(
                ns,
                "llama",
                "  type: Application\n  workloadProfiles:\n    - name: llama\n",
                engine,
            ),
        )
        .write(
            "deployments/chat.yaml",
            deployment(ns, "chat", "model", "llama", pool),
        );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_instance_deploys_onto_a_pool_another_instance_manages() {
    let Some(env) = env("live-pool").await else {
        return;
    };
    let ns = &env.ns;
    // One hub, one Palette (a directory both instances share), two pbsync instances.
    let palette = tempfile::tempdir().expect("tempdir");
    let instance = |name: &str| {
        let instance = format!("{}-{name}", env.instance);
        let split = target::Split {
            hub: KubeTarget::new(KubeOptions {
                instance: instance.clone(),
                cluster_profiles: pbsync::target::kubernetes::ClusterProfiles::Elsewhere,
                ..env.options()
            }),
            palette: pbsync::target::local_dir::LocalDir::new(palette.path(), instance.clone()),
        };
        (instance, split)
    };
    let (platform, platform_target) = instance("platform");
    let (apps, apps_target) = instance("apps");
    let ctx_of = |repo: &ScratchRepo, instance: &str| {
        let mut ctx = env.ctx(repo);
        ctx.plan.instance = instance.to_string();
        ctx
    };

    // The platform instance: a Shared pool from an Infrastructure bundle labelled vllm.
    let mut platform_repo = ScratchRepo::new();
    platform_repo
        .write(
            "profiles.yaml",
            yaml::cluster_profile("gpu-infra", "1.0.0", "infra"),
        )
        .write(
            "bundles/gpu-infra.yaml",
            bundle_with_engine(
                ns,
                "gpu-infra",
                "  type: Infrastructure\n  clusterProfiles:\n    - {name: gpu-infra, version: 1.0.0}\n",
                "vllm",
            ),
        )
        .write(
            "pools/gpu-shared.yaml",
            yaml::compute_pool(ns, "gpu-shared", "gpu-infra", "shared"),
        );
    platform_repo.commit("platform");
    let platform_ctx = ctx_of(&platform_repo, &platform);
    ok(env
        .apply_with(&platform_ctx, &platform_target, RunOptions::default())
        .await);
    assert!(env.get("ComputePool", "gpu-shared").await.is_some());

    // The apps instance: its repository holds neither the pool nor its bundle.
    let mut apps_repo = ScratchRepo::new();
    apps_files(&mut apps_repo, ns, "vllm", "gpu-shared");
    apps_repo.commit("model deployment");
    let apps_ctx = ctx_of(&apps_repo, &apps);
    let offline = engine::run::<engine::NoTarget>(
        &apps_ctx,
        Input::of(&apps_ctx.fetch().expect("fetch")),
        Goal::Validate(None),
    )
    .await
    .expect("offline validate: a warning, not a violation");
    assert!(
        offline.warnings.iter().any(|w| w.starts_with(&format!(
            "ComputePool {ns}/gpu-shared (referenced 1 time(s)) is not declared in the repository"
        ))),
        "{:?}",
        offline.warnings
    );
    let report = ok(env
        .apply_with(&apps_ctx, &apps_target, RunOptions::default())
        .await);
    let chat = change(report.plan(), Kind::AiWorkload, "chat");
    assert_eq!(chat.action, Action::Create, "{}", render(report.plan()));
    let found = format!(
        "resolved on the hub: ComputePool {ns}/gpu-shared, managed by pbsync instance {platform}"
    );
    assert!(chat.reasons.contains(&found), "{:?}", chat.reasons);
    assert_eq!(report.plan().references.len(), 1);
    assert_eq!(report.plan().references[0].reason, found);
    assert!(env.get("AIWorkload", "chat").await.is_some());
    let pool = env.must_get("ComputePool", "gpu-shared").await;
    assert_eq!(
        labels(&pool)["pbsync.dev/instance"],
        platform,
        "the live pool is never written by the apps instance"
    );

    // A model on another engine than the pool's bundle: R7, naming the live pool and label.
    apps_files(&mut apps_repo, ns, "sglang", "gpu-shared");
    apps_repo.commit("sglang");
    match plan_result(&apps_ctx, &apps_target).await {
        Err(Error::Invalid { violations, .. }) => {
            let v: Vec<String> = violations.0.iter().map(ToString::to_string).collect();
            assert_eq!(v.len(), 1, "{v:?}");
            for part in [
                "deployments/chat.yaml:9: R7-inference-engine",
                "is \"sglang\"",
                &format!(
                    "ProfileBundle {ns}/gpu-infra (on the hub, managed by pbsync instance {platform}), the bundle of ComputePool {ns}/gpu-shared (on the hub, managed by pbsync instance {platform}), it is \"vllm\""
                ),
            ] {
                assert!(v[0].contains(part), "{part} in {v:?}");
            }
        }
        other => panic!("expected R7, got {:?}", other.map(|r| render(r.plan()))),
    }

    // An App Deployment of a Fullstack bundle onto the live pool: only its Application
    // profile deploys.
    apps_files(&mut apps_repo, ns, "vllm", "gpu-shared");
    apps_repo.write(
        "shop.yaml",
        yaml::stream([
            workload_profile_of(ns, "storefront", "Application"),
            yaml::profile_bundle(ns, "shop-stack", "Fullstack")
                .cluster_profiles(&["gpu-infra@1.0.0"])
                .workload_profiles(&["storefront"])
                .to_string(),
            deployment(ns, "shop", "application", "shop-stack", "gpu-shared"),
        ]),
    );
    apps_repo.commit("fullstack app");
    let report = ok(env
        .apply_with(&apps_ctx, &apps_target, RunOptions::default())
        .await);
    let parts = &report.plan().deployments;
    assert_eq!(parts.len(), 1, "{}", render(report.plan()));
    let show = |list: &[pbsync::model::PartRef]| -> Vec<String> {
        list.iter()
            .map(|p| format!("{} {}", p.part.label(), p.key.short()))
            .collect()
    };
    assert_eq!(
        show(&parts[0].deployed),
        [format!("Application workload profile {ns}/storefront")]
    );
    assert_eq!(
        show(&parts[0].ignored),
        ["cluster profile project/gpu-infra@1.0.0"]
    );
    assert!(env.get("AIWorkload", "shop").await.is_some());

    // The platform instance removes its pool and bundle while the deployments use them.
    platform_repo
        .remove("bundles/gpu-infra.yaml")
        .remove("pools/gpu-shared.yaml");
    platform_repo.commit("pool leaves");
    let report = ok(env
        .apply_with(&platform_ctx, &platform_target, RunOptions::default())
        .await);
    let plan = report.plan();
    let pool = change(plan, Kind::ComputePool, "gpu-shared");
    assert_eq!(pool.action, Action::Blocked, "{}", render(plan));
    assert_eq!(
        pool.reasons,
        [format!(
            "blocked: AIWorkload {ns}/chat, {ns}/shop deploy onto this pool; the pool stays"
        )]
    );
    let bundle = change(plan, Kind::ProfileBundle, "gpu-infra");
    assert_eq!(bundle.action, Action::Blocked, "{}", render(plan));
    assert!(
        bundle.reasons[0].contains(&format!(
            "AIWorkload {ns}/chat, {ns}/shop deploy onto ComputePool {ns}/gpu-shared, built from this bundle"
        )),
        "{:?}",
        bundle.reasons
    );
    assert!(env.get("ComputePool", "gpu-shared").await.is_some());
    assert!(env.get("ProfileBundle", "gpu-infra").await.is_some());

    // A pool that exists nowhere: R6 at plan time, at its line.
    apps_files(&mut apps_repo, ns, "vllm", "gpu-nowhere");
    apps_repo.commit("nowhere");
    match plan_result(&apps_ctx, &apps_target).await {
        Err(Error::Invalid { violations, .. }) => {
            let v: Vec<String> = violations.0.iter().map(ToString::to_string).collect();
            assert_eq!(
                v,
                [format!(
                    "deployments/chat.yaml:11: R6-unresolved-reference: compute pool ComputePool {ns}/gpu-nowhere is neither declared in the repository nor found on the hub"
                )]
            );
        }
        other => panic!("expected R6, got {:?}", other.map(|r| render(r.plan()))),
    }
    env.cleanup().await;
}
