//! The test control plane (`scripts/testcluster`): finding it, the rule for the tests that
//! need it, and a namespace of a test's own.
//!
//! The rule: a test that needs the cluster calls [`require`]. Without a cluster that
//! answers, the test fails, naming the way to start one; only `PBSYNC_TEST_SKIP_CLUSTER=1`
//! (which CI never sets) makes it print `SKIPPED` and return instead.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace as NamespaceObject;
use kube::api::{Api, DeleteParams, PostParams};

use super::on_own_runtime;

/// The variable that lets cluster tests skip when there is no cluster.
pub const SKIP_VAR: &str = "PBSYNC_TEST_SKIP_CLUSTER";

/// How long a client waits for the API server to answer its first request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a [`Namespace`]'s drop waits for its deletion to be accepted.
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);

/// `scripts/testcluster` of this workspace.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/testcluster")
}

/// The kubeconfig of the test cluster, looked up once per test binary: `KUBECONFIG` when it
/// is set and not empty, else the one `scripts/testcluster env` prints when its cluster is
/// up and healthy. `None` when neither names one. Whether the cluster answers is
/// [`require`]'s question.
pub fn kubeconfig() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
                return Some(PathBuf::from(p));
            }
            let out = std::process::Command::new(script())
                .arg("env")
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().find(|l| l.contains("KUBECONFIG="))?;
            let value = line
                .split_once("KUBECONFIG=")?
                .1
                .trim()
                .trim_matches(['"', '\'']);
            Some(PathBuf::from(value))
        })
        .clone()
}

/// The kubeconfig of a test cluster that answers, for the test `test`. Without one the
/// test fails (this panics, saying how to start a cluster), unless `PBSYNC_TEST_SKIP_CLUSTER=1`:
/// then it prints `SKIPPED <test>: ...` and returns `None`, and the test returns at once.
///
/// Whether the cluster answers is asked once per test binary. Callable from synchronous
/// tests and from inside a tokio runtime alike.
pub fn require(test: &str) -> Option<PathBuf> {
    static ANSWERS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = ANSWERS.get_or_init(|| {
        let Some(path) = kubeconfig() else {
            return Err(
                "no test cluster: start one with `eval \"$(scripts/testcluster up)\"`".into(),
            );
        };
        let answer = {
            let path = path.clone();
            on_own_runtime(async move { connect(&path).await.map(drop) })
        };
        match answer {
            Ok(()) => Ok(path),
            Err(e) => Err(format!(
                "the test cluster of {} does not answer ({e}): start it with `eval \"$(scripts/testcluster up)\"`",
                path.display()
            )),
        }
    });
    match found {
        Ok(path) => Some(path.clone()),
        Err(why) => {
            if std::env::var_os(SKIP_VAR).is_none_or(|v| v != "1") {
                panic!("{test}: {why}; to skip the cluster tests on purpose, set {SKIP_VAR}=1");
            }
            eprintln!("SKIPPED {test}: {why} ({SKIP_VAR}=1)");
            None
        }
    }
}

/// A client for the cluster of `kubeconfig` that has answered a first request (the API
/// server's version) within 10 seconds.
pub async fn connect(kubeconfig: &Path) -> Result<kube::Client, String> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    tokio::time::timeout(ANSWER_TIMEOUT, client.apiserver_version())
        .await
        .map_err(|_| format!("no answer in {ANSWER_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    Ok(client)
}

/// [`connect`], or a panic naming why not. The client lives on the runtime it was made on:
/// make it on the one that uses it.
pub async fn client(kubeconfig: &Path) -> kube::Client {
    connect(kubeconfig)
        .await
        .unwrap_or_else(|e| panic!("no client for the test cluster: {e}"))
}

/// A namespace of one test's own, `kt-<test>-<random>`, deleted when this guard is dropped:
/// at the end of the test and when the test panics, from synchronous code and from inside
/// a tokio runtime alike. The test control plane runs kube-controller-manager, whose
/// namespace and garbage-collector controllers then empty and remove it, as on a real hub.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    kubeconfig: PathBuf,
}

impl Namespace {
    /// Creates a fresh namespace for `test` in the cluster of `kubeconfig`.
    pub async fn create(kubeconfig: &Path, test: &str) -> Self {
        let short: String = test
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(40)
            .collect();
        let name = format!("kt-{short}-{:06x}", fastrand::u32(..0xff_ffff)).to_ascii_lowercase();
        let namespaces: Api<NamespaceObject> = Api::all(client(kubeconfig).await);
        let body: NamespaceObject =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                .expect("namespace");
        namespaces
            .create(&PostParams::default(), &body)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        Self {
            name,
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// [`create`](Self::create) for a test that is not async.
    pub fn create_blocking(kubeconfig: &Path, test: &str) -> Self {
        let (kubeconfig, test) = (kubeconfig.to_path_buf(), test.to_string());
        on_own_runtime(async move { Self::create(&kubeconfig, &test).await })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let (kubeconfig, name) = (self.kubeconfig.clone(), self.name.clone());
        // A runtime of its own on a thread of its own: a drop cannot await, the test's own
        // runtime may be the one panicking (or gone), and a client is bound to the runtime it
        // was made on, so this one makes its own. Failures are ignored: a drop must not panic.
        let deleted = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = tokio::time::timeout(DELETE_TIMEOUT, async {
                    let Ok(client) = connect(&kubeconfig).await else {
                        return;
                    };
                    let namespaces: Api<NamespaceObject> = Api::all(client);
                    let _ = namespaces.delete(&name, &DeleteParams::background()).await;
                })
                .await;
            });
        });
        let _ = deleted.join();
    }
}
