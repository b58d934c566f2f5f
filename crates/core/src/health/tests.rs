use serde_json::json;

use super::*;
use crate::model::{Catalog, DesiredState, parse_file};
use crate::snapshot::{Content, SourceFile};

fn at(s: &str) -> jiff::Timestamp {
    s.parse().expect("timestamp")
}

fn obj(generation: i64, status: Value) -> Value {
    json!({"metadata": {"name": "x", "namespace": "a", "generation": generation}, "status": status})
}

fn ready(status: &str, reason: &str, message: &str) -> Value {
    json!({"type": "Ready", "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-12-07T10:00:00Z"})
}

#[test]
fn an_object_being_deleted_is_in_progress_and_names_its_finalizers() {
    let o = json!({"metadata": {"generation": 1, "deletionTimestamp": "2026-12-07T10:00:00Z",
                   "finalizers": ["example.com/hold"]},
                   "status": {"conditions": [ready("True", "Ok", "")]}});
    let h = of_object(Kind::WorkloadProfile, &o);
    assert_eq!(h.state, State::InProgress);
    assert_eq!(h.reason.as_deref(), Some("Terminating"));
    assert!(h.message.contains("example.com/hold"), "{h:?}");
}

#[test]
fn a_generation_the_controller_has_not_observed_is_in_progress() {
    let h = of_object(
        Kind::HelmRepository,
        &obj(
            3,
            json!({"observedGeneration": 2, "conditions": [ready("True", "Succeeded", "ok")]}),
        ),
    );
    assert_eq!(h.state, State::InProgress);
    assert_eq!(h.reason.as_deref(), Some("LatestGenerationNotObserved"));
}

#[test]
fn a_source_flux_never_fetched_fails_with_the_controllers_words() {
    // As source-controller v1.9.6 writes it for an index that answers 404.
    let failing = json!({"type": "Ready", "status": "False", "reason": "Failed", "observedGeneration": 1,
        "message": "failed to fetch Helm repository index: failed to fetch http://127.0.0.1:1/index.yaml : 404 Not Found",
        "lastTransitionTime": "2026-12-07T21:05:00Z"});
    let retrying = json!({"type": "Reconciling", "status": "True", "reason": "ProgressingWithRetry",
        "observedGeneration": 1, "message": "building artifact"});
    let h = of_object(
        Kind::HelmRepository,
        &obj(
            1,
            json!({"observedGeneration": -1, "conditions": [retrying, failing]}),
        ),
    );
    assert_eq!(h.state, State::Failed, "{h:?}");
    assert!(h.message.ends_with("404 Not Found (retrying)"), "{h:?}");
    // Without a condition for the generation, -1 is still "not observed yet".
    let h = of_object(
        Kind::HelmRepository,
        &obj(
            2,
            json!({"observedGeneration": -1, "conditions": [ready("False", "Failed", "x")]}),
        ),
    );
    assert_eq!(h.state, State::InProgress, "{h:?}");
}

#[test]
fn reconciling_is_in_progress_and_stalled_is_failed() {
    let reconciling = json!({"type": "Reconciling", "status": "True", "reason": "Progressing", "message": "fetching"});
    let h = of_object(
        Kind::ProfileBundle,
        &obj(1, json!({"conditions": [reconciling]})),
    );
    assert_eq!(
        (h.state, h.message.as_str()),
        (State::InProgress, "fetching")
    );

    let stalled =
        json!({"type": "Stalled", "status": "True", "reason": "InvalidURL", "message": "bad url"});
    let h = of_object(
        Kind::ProfileBundle,
        &obj(1, json!({"conditions": [stalled]})),
    );
    assert_eq!((h.state, h.message.as_str()), (State::Failed, "bad url"));
}

#[test]
fn ready_true_is_current_and_ready_unknown_in_progress() {
    let h = of_object(
        Kind::ProfileBundle,
        &obj(1, json!({"conditions": [ready("True", "Ready", "")]})),
    );
    assert_eq!(h.state, State::Current);
    let h = of_object(
        Kind::ProfileBundle,
        &obj(
            1,
            json!({"conditions": [ready("Unknown", "Pending", "soon")]}),
        ),
    );
    assert_eq!(h.state, State::InProgress);
}

#[test]
fn ready_false_is_in_progress_until_the_controller_reports_it_for_this_generation() {
    // kstatus: Ready=False alone cannot tell progress from failure.
    let h = of_object(
        Kind::ProfileBundle,
        &obj(
            2,
            json!({"conditions": [ready("False", "Waiting", "pool pending")]}),
        ),
    );
    assert_eq!(h.state, State::InProgress);
    // Reported for the current generation, with no ongoing reconciliation: failed.
    let h = of_object(
        Kind::ProfileBundle,
        &obj(
            2,
            json!({"observedGeneration": 2, "conditions": [ready("False", "Waiting", "pool pending")]}),
        ),
    );
    assert_eq!(
        (h.state, h.message.as_str()),
        (State::Failed, "pool pending")
    );
    // The condition's own observedGeneration counts too (metav1.Condition).
    let mut c = ready("False", "Waiting", "pool pending");
    c["observedGeneration"] = json!(2);
    let h = of_object(Kind::ComputePool, &obj(2, json!({"conditions": [c]})));
    assert_eq!(h.state, State::Failed);
}

#[test]
fn flux_retrying_after_a_failed_attempt_is_failed_with_readys_message() {
    let status = json!({"observedGeneration": 1, "conditions": [
        {"type": "Reconciling", "status": "True", "reason": "ProgressingWithRetry", "message": "retrying"},
        ready("False", "FailedToFetch", "failed to fetch index: 404"),
    ]});
    let h = of_object(Kind::HelmRepository, &obj(1, status));
    assert_eq!(h.state, State::Failed);
    assert_eq!(h.message, "failed to fetch index: 404 (retrying)");
    assert_eq!(h.reason.as_deref(), Some("FailedToFetch"));
    assert_eq!(h.since, Some(at("2026-12-07T10:00:00Z")));
}

#[test]
fn no_conditions_is_current_except_for_a_flux_source_never_observed() {
    let bare = json!({"metadata": {"generation": 1}});
    assert_eq!(
        of_object(Kind::ComponentDefinition, &bare).state,
        State::Current
    );
    assert_eq!(of_object(Kind::ProfileBundle, &bare).state, State::Current);
    let h = of_object(Kind::HelmRepository, &bare);
    assert_eq!(
        (h.state, h.message.as_str()),
        (State::InProgress, "not yet observed by its controller")
    );
    let seen = obj(1, json!({"observedGeneration": 1}));
    assert_eq!(of_object(Kind::OciRepository, &seen).state, State::Current);
}

#[test]
fn a_profile_is_current_only_when_its_published_version_matches() {
    assert_eq!(of_profile(Publication::Matches, None).state, State::Current);
    let h = of_profile(Publication::DraftOnly, None);
    assert_eq!(
        (h.state, h.message.as_str()),
        (State::Failed, "a draft that was never published")
    );
    let h = of_profile(Publication::Differs, Some("pack nginx: invalid values"));
    assert_eq!(h.message, "publish failed: pack nginx: invalid values");
    assert_eq!(of_profile(Publication::Differs, None).state, State::Failed);
}

#[test]
fn describe_adds_how_long_the_state_has_held() {
    let h = Health {
        since: Some(at("2026-12-07T10:00:00Z")),
        ..Health::failed("failed to fetch index: 404")
    };
    assert_eq!(
        h.describe(at("2026-12-07T10:03:12Z")),
        "failed to fetch index: 404 (since 3m12s)"
    );
    assert_eq!(age(7_500), "2h5m");
    assert_eq!(age(90_000), "1d1h");
    assert_eq!(age(12), "12s");
}

fn graph(yaml: &str) -> ResourceGraph {
    let file = SourceFile {
        path: "repo.yaml".into(),
        blob: String::new(),
        content: Content::Bytes(yaml.as_bytes().to_vec()),
    };
    let (objects, _) = parse_file(&file, &crate::model::Limits::default());
    let mut violations = Vec::new();
    let desired = DesiredState::from_objects("rev1".into(), objects, &mut violations);
    assert!(violations.is_empty(), "{violations:?}");
    ResourceGraph::build(desired, &Catalog::default()).0
}

const REPO: &str = "apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata: {name: charts, namespace: team-a}
spec: {url: 'https://charts.example.com', interval: 1h}
---
apiVersion: core.oam.dev/v1beta1
kind: ComponentDefinition
metadata: {name: web, namespace: team-a}
spec: {workload: {type: autodetects.core.oam.dev}}
---
apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata: {name: app, namespace: team-a}
spec:
  type: Application
  workload:
    components: [{name: main, type: web}]
";

fn bundle(name: &str) -> String {
    format!(
        "---\napiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata: {{name: {name}, namespace: team-a}}\nspec:\n  type: Application\n  workloadProfiles: [{{name: app}}]\n  workloadProfileDependencies:\n    helmRepositories: [{{name: charts}}]\n"
    )
}

fn key(kind: Kind, name: &str) -> ObjectKey {
    ObjectKey::new(kind, "team-a", name)
}

fn all_current(g: &ResourceGraph) -> BTreeMap<ObjectKey, Health> {
    g.nodes()
        .iter()
        .filter(|n| n.desired)
        .map(|n| (n.key.clone(), Health::current()))
        .collect()
}

#[test]
fn a_shared_source_that_failed_is_named_once_with_every_bundle_it_holds_back() {
    let g = graph(&format!("{REPO}{}{}", bundle("chat"), bundle("rag")));
    let mut objects = all_current(&g);
    objects.insert(
        key(Kind::HelmRepository, "charts"),
        Health {
            since: Some(at("2026-12-07T10:00:00Z")),
            ..Health::failed("failed to fetch index: 404")
        },
    );
    let report = trace(&g, &objects);
    assert_eq!(report.state, State::Failed);
    assert!(!report.healthy());
    assert_eq!(report.counts[&State::Failed], 1);
    assert_eq!(report.counts[&State::Current], 4);

    let now = at("2026-12-07T10:03:12Z");
    let chat = report
        .root(&key(Kind::ProfileBundle, "chat"))
        .expect("root");
    assert_eq!(chat.state, State::Failed);
    assert_eq!(chat.own.state, State::Current);
    assert_eq!(
        chat.chains(now),
        vec![
            "ProfileBundle team-a/chat not ready: HelmRepository team-a/charts failed: failed to fetch index: 404 (since 3m12s)"
        ]
    );
    assert_eq!(report.culprits.len(), 1, "{:?}", report.culprits);
    assert_eq!(
        report.culprit_lines(now),
        vec![
            "HelmRepository team-a/charts failed: failed to fetch index: 404 (since 3m12s)\n    holds back ProfileBundle team-a/chat, ProfileBundle team-a/rag"
        ]
    );
}

#[test]
fn a_cause_deeper_in_the_closure_is_traced_through_every_hop() {
    let g = graph(&format!("{REPO}{}", bundle("chat")));
    let mut objects = all_current(&g);
    objects.insert(
        key(Kind::ComponentDefinition, "web"),
        Health::in_progress("generation 2 not yet observed by its controller (it has seen 1)"),
    );
    let report = trace(&g, &objects);
    let chat = report
        .root(&key(Kind::ProfileBundle, "chat"))
        .expect("root");
    assert_eq!(chat.state, State::InProgress);
    assert_eq!(
        chat.chains(at("2026-12-07T10:00:00Z")),
        vec![
            "ProfileBundle team-a/chat not ready: WorkloadProfile team-a/app not ready: ComponentDefinition team-a/web in-progress: generation 2 not yet observed by its controller (it has seen 1)"
        ]
    );
    assert_eq!(
        report.combined(&key(Kind::WorkloadProfile, "app")),
        State::Current
    );
}

#[test]
fn a_roots_own_status_counts_and_the_worst_cause_comes_first() {
    let g = graph(&format!("{REPO}{}", bundle("chat")));
    let mut objects = all_current(&g);
    objects.insert(
        key(Kind::ProfileBundle, "chat"),
        Health::in_progress("deploying"),
    );
    objects.insert(
        key(Kind::WorkloadProfile, "app"),
        Health::in_progress("rendering"),
    );
    objects.insert(key(Kind::HelmRepository, "charts"), Health::failed("404"));
    let report = trace(&g, &objects);
    let chat = report
        .root(&key(Kind::ProfileBundle, "chat"))
        .expect("root");
    assert_eq!(chat.state, State::Failed);
    let culprits: Vec<&ObjectKey> = chat.causes.iter().map(Cause::culprit).collect();
    assert_eq!(
        culprits,
        vec![
            &key(Kind::HelmRepository, "charts"),
            &key(Kind::WorkloadProfile, "app")
        ]
    );
    let lines = chat.chains(at("2026-12-07T10:00:00Z"));
    assert_eq!(lines[0], "ProfileBundle team-a/chat in-progress: deploying");
    // The root itself is a culprit, holding back itself only.
    let own = report
        .culprits
        .iter()
        .find(|c| c.key == key(Kind::ProfileBundle, "chat"))
        .expect("culprit");
    assert_eq!(own.holds_back, vec![key(Kind::ProfileBundle, "chat")]);
}

#[test]
fn an_object_not_read_is_unknown_and_every_current_graph_is_healthy() {
    let g = graph(&format!("{REPO}{}", bundle("chat")));
    let mut objects = all_current(&g);
    assert!(trace(&g, &objects).healthy());
    objects.remove(&key(Kind::HelmRepository, "charts"));
    let report = trace(&g, &objects);
    assert_eq!(report.state, State::Unknown);
    assert_eq!(
        report.objects[&key(Kind::HelmRepository, "charts")].message,
        "not read"
    );
}

#[test]
fn a_report_serializes_to_json_with_objects_as_a_list() {
    let g = graph(&format!("{REPO}{}", bundle("chat")));
    let mut objects = all_current(&g);
    objects.insert(key(Kind::HelmRepository, "charts"), Health::failed("404"));
    let v = serde_json::to_value(trace(&g, &objects)).expect("serializes");
    assert_eq!(v["state"], "failed");
    assert_eq!(v["counts"]["failed"], 1);
    let charts = v["objects"]
        .as_array()
        .expect("list")
        .iter()
        .find(|o| o["name"] == "charts")
        .expect("charts");
    assert_eq!(
        (&charts["kind"], &charts["state"], &charts["message"]),
        (&json!("HelmRepository"), &json!("failed"), &json!("404"))
    );
    assert_eq!(v["roots"][0]["causes"][0]["path"][0]["name"], "charts");
    assert_eq!(v["culprits"][0]["holdsBack"][0]["name"], "chat");
}
