//! The real Flux source-controller of the test control plane (`scripts/testcluster up` runs
//! it beside kube-controller-manager) against real sources on loopback: a Helm repository
//! served by the test kit and go-containerregistry's OCI registry, to which the test pushes a
//! Flux artifact. What the controller says (`Ready` and its message) is what a hub would say.
//!
//! The controller reconciles only objects labelled `sharding.fluxcd.io/key=pbsync-testcluster`
//! (`flux::watched_labels`); the other tests' Flux objects are left alone. Like every cluster
//! test, these fail without a cluster unless `PBSYNC_TEST_SKIP_CLUSTER=1`.

use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

use pbsync_devkit::testkit::cluster::{self, Namespace};
use pbsync_devkit::testkit::flux::{self, request_reconcile, wait_for_ready};
use pbsync_devkit::testkit::helm_repo::HelmRepoServer;
use pbsync_devkit::testkit::oci_registry::OciRegistry;

/// The test's namespace and the API of `kind` in it; `None` when skipping (no cluster and
/// `PBSYNC_TEST_SKIP_CLUSTER=1`).
async fn setup(test: &str, kind: &str) -> Option<(Namespace, Api<DynamicObject>)> {
    let kubeconfig = cluster::require(test)?;
    let client = cluster::client(&kubeconfig).await;
    let namespace = Namespace::create(&kubeconfig, test).await;
    let api = Api::namespaced_with(client, namespace.name(), &flux::resource(kind));
    Some((namespace, api))
}

/// Creates a Flux source `kind`/`name` that the test cluster's source-controller reconciles.
async fn create(api: &Api<DynamicObject>, kind: &str, name: &str, spec: Value) {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": kind,
        "metadata": {"name": name, "labels": flux::watched_labels()},
        "spec": spec,
    }))
    .expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {kind} {name}: {e}"));
}

fn text<'a>(obj: &'a DynamicObject, pointer: &str) -> &'a str {
    obj.data
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_repository_is_ready_with_an_index_and_not_ready_on_a_404() {
    let Some((_namespace, api)) = setup("flux-helm-repository", "HelmRepository").await else {
        return;
    };
    let charts = HelmRepoServer::with_chart("hello", "0.1.0");
    create(
        &api,
        "HelmRepository",
        "charts",
        json!({"url": charts.url(), "interval": "10m", "timeout": "15s"}),
    )
    .await;

    let (obj, ready) = wait_for_ready(&api, "charts", true, None).await;
    // source-controller v1.9.6 says: Succeeded, "stored artifact: revision 'sha256:<index digest>'".
    assert_eq!(ready.reason, "Succeeded", "{ready:?}");
    assert!(ready.message.contains("stored artifact"), "{ready:?}");
    assert!(
        charts.requests().iter().any(|p| p == "/index.yaml"),
        "the controller fetched the index: {:?}",
        charts.requests()
    );
    // Its copy of the index is served by its artifact server on loopback.
    assert!(
        text(&obj, "/status/artifact/url").starts_with("http://127.0.0.1:"),
        "{:?}",
        obj.data.get("status")
    );
    assert!(
        text(&obj, "/status/artifact/revision").starts_with("sha256:"),
        "{:?}",
        obj.data.get("status")
    );

    // The index goes away: the next reconciliation fails on the 404.
    charts.remove("index.yaml").expect("index was served");
    let token = request_reconcile(&api, "charts").await;
    let (_, failed) = wait_for_ready(&api, "charts", false, Some(&token)).await;
    // source-controller v1.9.6 says: Failed, "failed to fetch Helm repository index: failed
    // to cache index to temporary file: failed to fetch http://127.0.0.1:PORT/index.yaml :
    // 404 Not Found".
    assert_eq!(failed.reason, "Failed", "{failed:?}");
    assert!(failed.message.contains("404"), "{failed:?}");
    assert!(failed.message.contains("index.yaml"), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_repository_is_ready_with_a_pushed_artifact_and_not_ready_on_a_missing_tag() {
    let Some((_namespace, api)) = setup("flux-oci-repository", "OCIRepository").await else {
        return;
    };
    let registry = OciRegistry::start();
    let pushed = registry.push_artifact(
        "pbsync/manifests",
        "v1",
        &[
            ("app/configmap.yaml", b"apiVersion: v1\nkind: ConfigMap\n"),
            ("README.md", b"pushed by the pbsync test kit\n"),
        ],
    );
    let url = registry.url("pbsync/manifests");
    // Plain HTTP registry: `insecure` (else the controller speaks HTTPS to it).
    create(
        &api,
        "OCIRepository",
        "manifests",
        json!({"url": url, "ref": {"tag": "v1"}, "insecure": true, "interval": "10m", "timeout": "15s"}),
    )
    .await;
    let (obj, ready) = wait_for_ready(&api, "manifests", true, None).await;
    // source-controller v1.9.6 says: Succeeded, "stored artifact for digest 'v1@sha256:...'".
    assert_eq!(ready.reason, "Succeeded", "{ready:?}");
    assert!(ready.message.contains(&pushed.revision), "{ready:?}");
    assert_eq!(text(&obj, "/status/artifact/revision"), pushed.revision);
    assert_eq!(
        text(
            &obj,
            "/status/artifact/metadata/org.opencontainers.image.revision"
        ),
        "v1",
        "the manifest's annotations are the artifact's metadata"
    );

    // A tag that was never pushed.
    create(
        &api,
        "OCIRepository",
        "missing",
        json!({"url": url, "ref": {"tag": "v2"}, "insecure": true, "interval": "10m", "timeout": "15s"}),
    )
    .await;
    let (_, failed) = wait_for_ready(&api, "missing", false, None).await;
    // source-controller v1.9.6 says: OCIArtifactPullFailed, "failed to determine artifact
    // digest: GET http://127.0.0.1:PORT/v2/pbsync/manifests/manifests/v2: MANIFEST_UNKNOWN:
    // Unknown manifest" (the registry's error code, from the distribution spec).
    assert_eq!(failed.reason, "OCIArtifactPullFailed", "{failed:?}");
    assert!(failed.message.contains("MANIFEST_UNKNOWN"), "{failed:?}");
}
