//! A Helm chart repository on loopback: files served over plain HTTP from memory, the way a
//! chart museum or a static web server serves `index.yaml` and the chart archives. A test
//! points a Flux HelmRepository at [`HelmRepoServer::url`], and can take the index away
//! ([`HelmRepoServer::remove`]) to see what the controller says about a 404.
//!
//! ```no_run
//! use pbsync_devkit::testkit::helm_repo::HelmRepoServer;
//! let repo = HelmRepoServer::with_chart("hello", "0.1.0");
//! // HelmRepository spec.url: repo.url()  (http://127.0.0.1:PORT/)
//! repo.remove("index.yaml"); // from now on GET /index.yaml answers 404
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::Response;

use super::archive;

type Files = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// A loopback HTTP server of files held in memory, stopped when dropped. `GET` (and `HEAD`)
/// of a path it holds answers 200 with the file, of any other path 404; every request's
/// path is recorded ([`requests`](Self::requests)).
#[derive(Debug)]
pub struct HelmRepoServer {
    url: String,
    files: Files,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HelmRepoServer {
    /// An empty repository: every path answers 404 until [`put`](Self::put).
    pub fn start() -> Self {
        let files: Files = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (served, seen) = (files.clone(), requests.clone());
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
            let (served, seen) = (served.clone(), seen.clone());
            async move { respond(&served, &seen, &method, &uri) }
        });
        let (addr, thread) = super::serve_loopback(app, async {
            let _ = stopped.await;
        });
        Self {
            url: format!("http://{addr}/"),
            files,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// A repository with one chart: `<name>-<version>.tgz` (see [`chart_tgz`]) and an
    /// `index.yaml` listing it (see [`index_yaml`]).
    pub fn with_chart(name: &str, version: &str) -> Self {
        let server = Self::start();
        let tgz = chart_tgz(name, version);
        server.put("index.yaml", index_yaml(&[(name, version, &tgz)]));
        server.put(&format!("{name}-{version}.tgz"), tgz);
        server
    }

    /// Serves a copy of the files under `dir` (read now, once; paths relative to `dir`).
    pub fn from_dir(dir: &Path) -> Self {
        let server = Self::start();
        for rel in super::list_files(dir) {
            let content = std::fs::read(dir.join(&rel))
                .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(&rel).display()));
            server.put(&rel.replace(std::path::MAIN_SEPARATOR, "/"), content);
        }
        server
    }

    /// The repository's URL, `http://127.0.0.1:PORT/` (a HelmRepository's `spec.url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves `content` at `path` (relative, e.g. `index.yaml`), replacing what was there.
    pub fn put(&self, path: &str, content: impl Into<Vec<u8>>) {
        self.files
            .lock()
            .expect("files")
            .insert(path.trim_start_matches('/').to_string(), content.into());
    }

    /// Stops serving `path` (it answers 404 from now on); returns what it served.
    pub fn remove(&self, path: &str) -> Option<Vec<u8>> {
        self.files
            .lock()
            .expect("files")
            .remove(path.trim_start_matches('/'))
    }

    /// The paths requested so far (e.g. `/index.yaml`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for HelmRepoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn respond(files: &Files, seen: &Mutex<Vec<String>>, method: &Method, uri: &Uri) -> Response {
    seen.lock().expect("requests").push(uri.path().to_string());
    let file = (method == Method::GET || method == Method::HEAD)
        .then(|| {
            files
                .lock()
                .expect("files")
                .get(uri.path().trim_start_matches('/'))
                .cloned()
        })
        .flatten();
    let Some(content) = file else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("404 page not found\n"))
            .expect("response");
    };
    let content_type = if uri.path().ends_with(".tgz") {
        "application/x-gzip"
    } else if uri.path().ends_with(".yaml") {
        "application/x-yaml"
    } else {
        "application/octet-stream"
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(content.clone())
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, content.len())
        .body(body)
        .expect("response")
}

/// A chart archive as `helm package` lays it out: `<name>/Chart.yaml` (apiVersion v2, type
/// application), `<name>/values.yaml` and one template, gzip-compressed tar. Deterministic.
pub fn chart_tgz(name: &str, version: &str) -> Vec<u8> {
    let chart = format!(
        "apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: \"{version}\"\n\
         description: A chart of pbsync's tests\ntype: application\n"
    );
    let values = "message: hello\n";
    let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n\
                    data:\n  message: {{ .Values.message | quote }}\n";
    archive::tar_gz(&[
        (&format!("{name}/Chart.yaml"), chart.as_bytes()),
        (&format!("{name}/values.yaml"), values.as_bytes()),
        (
            &format!("{name}/templates/configmap.yaml"),
            template.as_bytes(),
        ),
    ])
}

/// A Helm repository index (`index.yaml`, apiVersion v1) listing `charts` as (name, version,
/// archive): each entry's `digest` is the archive's SHA-256 and its URL is relative,
/// `<name>-<version>.tgz`, as `helm repo index` writes them. Deterministic (fixed dates).
pub fn index_yaml(charts: &[(&str, &str, &[u8])]) -> String {
    const CREATED: &str = "2024-01-01T00:00:00Z";
    let mut by_name: BTreeMap<&str, Vec<(&str, &[u8])>> = BTreeMap::new();
    for (name, version, tgz) in charts {
        by_name.entry(name).or_default().push((version, tgz));
    }
    let mut out = String::from("apiVersion: v1\n");
    if by_name.is_empty() {
        out.push_str("entries: {}\n");
    } else {
        out.push_str("entries:\n");
    }
    for (name, versions) in by_name {
        out.push_str(&format!("  {name}:\n"));
        for (version, tgz) in versions {
            out.push_str(&format!(
                "  - apiVersion: v2\n    name: {name}\n    version: {version}\n    \
                 appVersion: \"{version}\"\n    type: application\n    \
                 description: A chart of pbsync's tests\n    created: \"{CREATED}\"\n    \
                 digest: {}\n    urls:\n    - {name}-{version}.tgz\n",
                archive::sha256_hex(tgz)
            ));
        }
    }
    out.push_str(&format!("generated: \"{CREATED}\"\n"));
    out
}
