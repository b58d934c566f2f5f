use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use pbsync_core::model::{Catalog, DesiredState, Kind, Limits, parse_file};
use pbsync_core::snapshot::{Content, SourceFile};

/// The graph of `yaml` (one file, revision `rev`).
pub(crate) fn graph(rev: &str, yaml: &str) -> Arc<ResourceGraph> {
    let file = SourceFile {
        path: "repo.yaml".into(),
        blob: String::new(),
        content: Content::Bytes(yaml.as_bytes().to_vec()),
    };
    let (objects, _) = parse_file(&file, &Limits::default());
    let mut violations = Vec::new();
    let desired = DesiredState::from_objects(rev.into(), objects, &mut violations);
    assert!(violations.is_empty(), "{violations:?}");
    Arc::new(ResourceGraph::build(desired, &Catalog::default()).0)
}

/// Two bundles sharing a HelmRepository and a WorkloadProfile.
pub(crate) const REPO: &str = "apiVersion: source.toolkit.fluxcd.io/v1
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
---
apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {name: chat, namespace: team-a}
spec:
  type: Application
  workloadProfiles: [{name: app}]
  workloadProfileDependencies:
    helmRepositories: [{name: charts}]
---
apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata: {name: rag, namespace: team-a}
spec:
  type: Application
  workloadProfiles: [{name: app}]
  workloadProfileDependencies:
    helmRepositories: [{name: charts}]
";

pub(crate) fn key(kind: Kind, name: &str) -> ObjectKey {
    ObjectKey::new(kind, "team-a", name)
}

/// Every object of `g` current, but `failing` failed with `why`.
pub(crate) fn report(g: &ResourceGraph, failing: Option<(ObjectKey, &str)>) -> Report {
    let mut objects: BTreeMap<ObjectKey, Health> = g
        .nodes()
        .iter()
        .filter(|n| n.desired)
        .map(|n| (n.key.clone(), Health::current()))
        .collect();
    if let Some((k, why)) = failing {
        objects.insert(k, Health::failed(why));
    }
    health::trace(g, &objects)
}

#[test]
fn the_first_picture_records_no_change_and_a_healthy_revision_once() {
    let board = Board::default();
    let g = graph("r1", REPO);
    let first = board.publish(Arc::clone(&g), report(&g, None));
    assert!(first.changes.is_empty(), "{first:?}");
    assert_eq!(first.healthy.as_ref().map(|h| h.0.as_str()), Some("r1"));
    // The same healthy revision again: nothing new to record.
    let again = board.publish(Arc::clone(&g), report(&g, None));
    assert_eq!(again, HealthRecord::default());
    assert_eq!(board.healthy().map(|h| h.0), Some("r1".to_string()));
}

#[test]
fn a_failing_shared_source_changes_every_bundle_it_holds_back_and_back() {
    let board = Board::default();
    let g = graph("r1", REPO);
    board.publish(Arc::clone(&g), report(&g, None));
    let charts = key(Kind::HelmRepository, "charts");
    let failed = board.publish(
        Arc::clone(&g),
        report(&g, Some((charts.clone(), "failed to fetch index: 404"))),
    );
    let changed: Vec<(String, State, State)> = failed
        .changes
        .iter()
        .map(|c| (c.key.to_string(), c.from, c.to))
        .collect();
    assert_eq!(
        changed,
        vec![
            (
                "ProfileBundle team-a/chat".into(),
                State::Current,
                State::Failed
            ),
            (
                "ProfileBundle team-a/rag".into(),
                State::Current,
                State::Failed
            ),
        ]
    );
    assert_eq!(
        failed.changes[0].message,
        "ProfileBundle team-a/chat not ready: HelmRepository team-a/charts failed: failed to fetch index: 404"
    );
    assert_eq!(failed.healthy, None, "nothing became healthy");

    // Healthy again: both change back; the revision was healthy before, so it is not new.
    let healed = board.publish(Arc::clone(&g), report(&g, None));
    assert_eq!(healed.changes.len(), 2);
    assert!(healed.changes.iter().all(|c| c.to == State::Current));
    assert_eq!(healed.healthy, None);
    // A new revision that is healthy is recorded.
    let g2 = graph("r2", REPO);
    let next = board.publish(Arc::clone(&g2), report(&g2, None));
    assert_eq!(next.healthy.map(|h| h.0), Some("r2".to_string()));
}

#[test]
fn status_json_carries_each_roots_chains_and_each_culprit_once() {
    let board = Board::default();
    assert_eq!(board.to_json()["state"], Value::Null, "nothing read yet");
    let g = graph("r1", REPO);
    let charts = key(Kind::HelmRepository, "charts");
    board.publish(Arc::clone(&g), report(&g, Some((charts, "index: 404"))));
    let doc = board.to_json();
    assert_eq!(doc["state"], "failed");
    assert_eq!(doc["revision"], "r1");
    let roots = doc["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 2);
    assert_eq!(
        roots[0]["chains"],
        json!([
            "ProfileBundle team-a/chat not ready: HelmRepository team-a/charts failed: index: 404"
        ])
    );
    let culprits = doc["culprits"].as_array().expect("culprits");
    assert_eq!(culprits.len(), 1, "{culprits:?}");
    assert_eq!(
        culprits[0]["line"],
        "HelmRepository team-a/charts failed: index: 404\n    holds back ProfileBundle team-a/chat, ProfileBundle team-a/rag"
    );
    assert_eq!(doc["healthyRevision"], Value::Null);
    // Every object says what it needs, by id, so a client can draw the trees.
    let objects = doc["objects"].as_array().expect("objects");
    let chat = objects
        .iter()
        .find(|o| o["id"] == "ProfileBundle team-a/chat")
        .expect("chat");
    assert_eq!(
        chat["needs"],
        json!(["HelmRepository team-a/charts", "WorkloadProfile team-a/app"])
    );
}
