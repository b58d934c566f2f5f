//! HTTP to the API server for the Kubernetes target. Every request goes through
//! [`ApiClient::send`], which spends the request budget, counts the request by verb and
//! status code, and retries 429 (after Retry-After), 5xx and requests that got no answer.
//! Conflicts (409) are returned to the caller, which re-reads the object before retrying.

use std::sync::{Arc, Mutex};

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, ValidationDirective};
use kube::core::Request;
use serde_json::Value;

use super::budget::{Attempt, RetryPolicy, Verb};
use crate::pace::TokenBucket;
use crate::requests::RequestCounts;
use pbsync_core::guard::DeletePermit;

/// The field manager of every write: server-side apply tracks field ownership by it.
pub(super) const FIELD_MANAGER: &str = "pbsync";
/// Page size of lists.
const PAGE: u32 = 500;

/// Errors of talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be built (an invalid name or parameter).
    #[error("cannot build the request")]
    BuildRequest(#[source] kube::core::request::Error),
    /// The server did not answer (connection refused or reset, timeout), after retries.
    #[error("no answer from the API server to {method} {path}")]
    NoAnswer {
        /// HTTP method.
        method: String,
        /// Path and query.
        path: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The server answered with an error status. `message` is the server's own.
    #[error("the API server answered {code} {reason}: {message}")]
    Api {
        /// HTTP status.
        code: u16,
        /// The Status reason (`Invalid`, `NotFound`, `Conflict`, ...).
        reason: String,
        /// The server's message.
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("cannot decode the API server's answer to {path}")]
    Decode {
        /// Path and query.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The HTTP status of an error answer.
    pub(super) fn code(&self) -> Option<u16> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the same request may succeed later: no answer, 429, 5xx, conflicts.
    pub(super) fn is_retryable(&self) -> bool {
        match self {
            Self::NoAnswer { .. } => true,
            Self::Api { code, .. } => *code == 409 || *code == 429 || *code >= 500,
            Self::BuildRequest(_) | Self::Decode { .. } => false,
        }
    }

    /// True for a 409 Conflict.
    pub(super) fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }

    /// The server's message, or this error's text.
    pub(super) fn server_message(&self) -> String {
        match self {
            Self::Api { message, .. } if !message.is_empty() => message.clone(),
            other => pbsync_core::error_chain(other),
        }
    }
}

/// Result alias of this module.
pub(super) type Result<T, E = Error> = std::result::Result<T, E>;

/// One answer.
struct Reply {
    code: u16,
    body: Vec<u8>,
}

/// A kube client with the request budget, retries and counts.
pub(super) struct ApiClient {
    client: kube::Client,
    bucket: TokenBucket,
    retry: RetryPolicy,
    counts: Arc<Mutex<RequestCounts>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Wraps `client` with a budget of `qps` requests a second, bursts of `burst`.
    pub(super) fn new(client: kube::Client, qps: f64, burst: u32) -> Self {
        Self {
            client,
            bucket: TokenBucket::new(qps, burst),
            retry: RetryPolicy::default(),
            counts: Arc::new(Mutex::new(RequestCounts::default())),
        }
    }

    /// The same client with another retry policy (tests use short delays).
    #[cfg(test)]
    fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The underlying client, for the Lease (whose requests are not budgeted: a handful per
    /// pass, and renewals must not queue behind a burst of writes).
    pub(super) fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The requests sent so far.
    pub(super) fn counts(&self) -> RequestCounts {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Counts requests made outside this client (the watch cache's lists) with the rest.
    pub(super) fn counter(&self) -> impl Fn(Verb, u16) + Send + Sync + 'static {
        let counts = Arc::clone(&self.counts);
        move |verb, code| {
            counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .add(verb, code);
        }
    }

    fn count(&self, verb: Verb, code: u16) {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(verb, code);
    }

    /// Sends `req`, spending a token per attempt and retrying what the policy retries.
    async fn send(&self, verb: Verb, req: http::Request<Vec<u8>>) -> Result<Reply> {
        let (parts, body) = req.into_parts();
        let mut attempt = 0;
        loop {
            self.bucket.acquire().await;
            let mut builder = http::Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.clone());
            for (name, value) in &parts.headers {
                builder = builder.header(name, value);
            }
            let request = builder
                .body(kube::client::Body::from(body.clone()))
                .expect("invariant: parts of a valid request rebuild into a valid request");
            let answer = match self.client.send(request).await {
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    resp.into_body()
                        .collect_bytes()
                        .await
                        .map(|body| (code, retry_after, body.to_vec()))
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok((code, retry_after, body)) => {
                    self.count(verb, code);
                    let outcome = Attempt::Answered {
                        code,
                        retry_after: retry_after.as_deref(),
                    };
                    match self.retry.delay(attempt, outcome) {
                        Some(wait) => {
                            tracing::debug!(%verb, code, ?wait, path = %parts.uri, "retrying");
                            tokio::time::sleep(wait).await;
                        }
                        None => return Ok(Reply { code, body }),
                    }
                }
                Err(source) => {
                    self.count(verb, 0);
                    match self.retry.delay(attempt, Attempt::NoAnswer) {
                        Some(wait) => {
                            tracing::debug!(%verb, ?wait, path = %parts.uri, error = %source, "retrying");
                            tokio::time::sleep(wait).await;
                        }
                        None => {
                            return Err(Error::NoAnswer {
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                source,
                            });
                        }
                    }
                }
            }
            attempt += 1;
        }
    }

    /// Sends `req` and decodes a 2xx answer as JSON; error answers become [`Error::Api`].
    async fn json(&self, verb: Verb, req: http::Request<Vec<u8>>) -> Result<Value> {
        let path = req.uri().to_string();
        let reply = self.send(verb, req).await?;
        if !(200..300).contains(&reply.code) {
            return Err(api_error(reply.code, &reply.body));
        }
        serde_json::from_slice(&reply.body).map_err(|source| Error::Decode { path, source })
    }

    /// GETs a raw path (discovery documents); `None` on 404.
    pub(super) async fn get_path(&self, verb: Verb, path: &str) -> Result<Option<Value>> {
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::BuildRequest(kube::core::request::Error::BuildRequest(e)))?;
        not_found_is_none(self.json(verb, req).await)
    }

    /// GETs one object; `None` when it does not exist.
    pub(super) async fn get(&self, collection: &str, name: &str) -> Result<Option<Value>> {
        let req = Request::new(collection)
            .get(name, &kube::api::GetParams::default())
            .map_err(Error::BuildRequest)?;
        not_found_is_none(self.json(Verb::Get, req).await)
    }

    /// Lists a collection, every page, optionally label-selected and metadata-only.
    /// Returns the items and the apiVersion the list was served at.
    pub(super) async fn list(
        &self,
        collection: &str,
        selector: Option<&str>,
        metadata_only: bool,
    ) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        let mut restarts = 0;
        loop {
            let lp = ListParams {
                label_selector: selector.map(str::to_string),
                limit: Some(PAGE),
                continue_token: token.clone(),
                ..ListParams::default()
            };
            let r = Request::new(collection);
            let req = if metadata_only {
                r.list_metadata(&lp)
            } else {
                r.list(&lp)
            }
            .map_err(Error::BuildRequest)?;
            let page = match self.json(Verb::List, req).await {
                // The continue token expired (410 Gone): start over for a consistent view.
                Err(Error::Api { code: 410, .. }) if restarts < 3 && token.is_some() => {
                    restarts += 1;
                    items.clear();
                    token = None;
                    continue;
                }
                other => other?,
            };
            if let Some(Value::Array(page_items)) = page.get("items") {
                items.extend(page_items.iter().cloned());
            }
            token = page
                .pointer("/metadata/continue")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(items);
            }
        }
    }

    /// Server-side apply of `body` (force: pbsync's desired state wins field conflicts;
    /// strict field validation: unknown fields are errors, not silently dropped). Returns
    /// the object's metadata only (uid, resourceVersion, managedFields): the server then
    /// encodes, and pbsync decodes, a fraction of the object; the rest is what was sent.
    pub(super) async fn apply(&self, collection: &str, name: &str, body: &Value) -> Result<Value> {
        let mut req = apply_request(collection, name, body, false)?;
        answer_metadata_only(&mut req);
        self.json(Verb::Apply, req).await
    }

    /// A server-side dry-run of applying `body`: the whole object the server would store.
    pub(super) async fn dry_run_apply(
        &self,
        collection: &str,
        name: &str,
        body: &Value,
    ) -> Result<Value> {
        let req = apply_request(collection, name, body, true)?;
        self.json(Verb::DryRun, req).await
    }

    /// A server-side dry-run of creating `body` (strict field validation): what the server
    /// would reject, for an object that does not exist yet. Cheaper for the server than a
    /// dry-run apply, which also computes field ownership.
    pub(super) async fn dry_run_create(&self, collection: &str, body: &Value) -> Result<Value> {
        let data = serde_json::to_vec(body).expect("invariant: JSON values serialize");
        let uri =
            format!("{collection}?dryRun=All&fieldManager={FIELD_MANAGER}&fieldValidation=Strict");
        let req = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(data)
            .map_err(|e| Error::BuildRequest(kube::core::request::Error::BuildRequest(e)))?;
        self.json(Verb::DryRun, req).await
    }

    /// A JSON merge patch (to remove ownership marks, set a deletion policy).
    pub(super) async fn merge_patch(
        &self,
        collection: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let req = Request::new(collection)
            .patch(name, &pp, &Patch::Merge(patch))
            .map_err(Error::BuildRequest)?;
        self.json(Verb::Patch, req).await
    }

    /// Deletes the object the guard's permit names, in `collection`, with background
    /// propagation; a missing object counts as deleted. The only DELETE this client sends.
    pub(super) async fn delete(
        &self,
        permit: &DeletePermit,
        collection: &str,
        uid: Option<&str>,
        resource_version: Option<&str>,
    ) -> Result<()> {
        let name = &*permit.key().name;
        let mut dp = DeleteParams::background();
        if uid.is_some() || resource_version.is_some() {
            dp = dp.preconditions(kube::api::Preconditions {
                uid: uid.map(str::to_string),
                resource_version: resource_version.map(str::to_string),
            });
        }
        #[allow(clippy::disallowed_methods)] // the one raw delete, behind the guard's permit
        let req = Request::new(collection)
            .delete(name, &dp)
            .map_err(Error::BuildRequest)?;
        match self.json(Verb::Delete, req).await {
            Ok(_) | Err(Error::Api { code: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates an object (Events); returns its metadata only.
    pub(super) async fn create(&self, collection: &str, body: &Value) -> Result<Value> {
        let data = serde_json::to_vec(body).expect("invariant: JSON values serialize");
        let mut req = Request::new(collection)
            .create(&PostParams::default(), data)
            .map_err(Error::BuildRequest)?;
        answer_metadata_only(&mut req);
        self.json(Verb::Create, req).await
    }
}

/// The request of a server-side apply as field manager `pbsync`, forced, strictly validated.
fn apply_request(
    collection: &str,
    name: &str,
    body: &Value,
    dry_run: bool,
) -> Result<http::Request<Vec<u8>>> {
    let pp = PatchParams {
        dry_run,
        force: true,
        field_manager: Some(FIELD_MANAGER.into()),
        field_validation: Some(ValidationDirective::Strict),
    };
    // kube builds the URL, query and content type; the body is ours (`()` spares kube
    // serializing the object only for its body to be replaced).
    let mut req = Request::new(collection)
        .patch(name, &pp, &Patch::Apply(()))
        .map_err(Error::BuildRequest)?;
    *req.body_mut() = apply_body(body);
    Ok(req)
}

/// The body of a server-side apply: JSON with one member or element per line. The API
/// server reads apply bodies with a YAML parser (twice under strict field validation), which
/// allocates more than twice as much for a document on one line as for the same document
/// over many (sigs.k8s.io/yaml: 75 KB against 33 KB for a WorkloadProfile). Measured on the
/// API server (`go_memstats_alloc_bytes_total`): a 1,000-object full apply allocates 401 MB
/// instead of 476 MB, and its garbage collection is a large part of its CPU.
fn apply_body(body: &Value) -> Vec<u8> {
    use serde::Serialize as _;
    let mut out = Vec::with_capacity(1024);
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    body.serialize(&mut ser)
        .expect("invariant: JSON values serialize");
    out
}

/// The answer `as=PartialObjectMetadata`: the API server converts the object it wrote to
/// its metadata before encoding it (any resource, custom ones included). Errors still come
/// back as a full Status.
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

fn answer_metadata_only(req: &mut http::Request<Vec<u8>>) {
    req.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(METADATA_ONLY),
    );
}

fn not_found_is_none(r: Result<Value>) -> Result<Option<Value>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::Api { code: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An error answer: the server's Status when it sent one, else its text.
fn api_error(code: u16, body: &[u8]) -> Error {
    let status: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        status
            .as_ref()
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let message = field("message").unwrap_or_else(|| {
        String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(500)
            .collect()
    });
    let reason = field("reason").unwrap_or_else(|| {
        http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("")
            .replace(' ', "")
    });
    Error::Api {
        code,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A server on 127.0.0.1:0 answering each request with the next of `answers`
    /// (status, Retry-After), then 200 with `{}`.
    async fn scripted(answers: Vec<(u16, Option<&'static str>)>) -> (ApiClient, Arc<AtomicUsize>) {
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        let app = axum::Router::new().fallback(move || {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let (code, retry_after) = answers.get(n).copied().unwrap_or((200, None));
            async move {
                let mut resp = http::Response::builder().status(code);
                if let Some(ra) = retry_after {
                    resp = resp.header(http::header::RETRY_AFTER, ra);
                }
                resp.body(axum::body::Body::from(if code == 200 {
                    "{}".to_string()
                } else {
                    format!(r#"{{"kind":"Status","code":{code},"reason":"R","message":"m{n}"}}"#)
                }))
                .expect("response")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let uri: http::Uri = format!("http://{addr}").parse().expect("uri");
        let mut config = kube::Config::new(uri);
        config.default_retry = false;
        let client = kube::Client::try_from(config).expect("client");
        let policy = RetryPolicy {
            base: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            ..RetryPolicy::default()
        };
        (ApiClient::new(client, 0.0, 1).with_retry(policy), seen)
    }

    #[tokio::test]
    async fn too_many_requests_waits_for_retry_after_then_succeeds() {
        let (api, seen) = scripted(vec![(429, Some("1"))]).await;
        let start = tokio::time::Instant::now();
        let got = api.get("/apis/g/v/namespaces/n/things", "x").await;
        assert_eq!(got.expect("ok"), Some(serde_json::json!({})));
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        let c = api.counts();
        assert_eq!((c.get(Verb::Get, 429), c.get(Verb::Get, 200)), (1, 1));
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_the_attempts_run_out() {
        let (api, _) = scripted(vec![(503, None), (500, None)]).await;
        assert!(
            api.get("/api/v1/namespaces/n/configmaps", "x")
                .await
                .is_ok()
        );
        assert_eq!(
            api.counts().to_string(),
            "get 200: 1, get 500: 1, get 503: 1"
        );

        let (api, seen) = scripted(vec![(503, None); 10]).await;
        let err = api
            .get("/api/v1/namespaces/n/configmaps", "x")
            .await
            .expect_err("gives up");
        assert_eq!(seen.load(Ordering::SeqCst), 6, "max attempts");
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), "the API server answered 503 R: m5");
    }

    #[test]
    fn apply_bodies_are_the_same_json_over_many_lines() {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"a": "b"}},
            "data": {"k": "v\nw"}, "list": [1, {"n": null}]
        });
        let bytes = apply_body(&body);
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(text.lines().count() > 10, "{text}");
        assert!(text.lines().all(|l| l.len() < 40), "no long line: {text}");
        let back: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(back, body);
        let req =
            apply_request("/api/v1/namespaces/n/configmaps", "x", &body, false).expect("request");
        assert_eq!(req.body(), &bytes);
        assert_eq!(
            req.headers()[http::header::CONTENT_TYPE],
            "application/apply-patch+yaml"
        );
        let query = req.uri().query().unwrap_or_default();
        for p in [
            "fieldManager=pbsync",
            "force=true",
            "fieldValidation=Strict",
        ] {
            assert!(query.contains(p), "{query}");
        }
        assert!(!query.contains("dryRun"), "{query}");
    }

    #[tokio::test]
    async fn client_errors_and_conflicts_are_returned_at_once() {
        for code in [400, 409, 422] {
            let (api, seen) = scripted(vec![(code, None)]).await;
            let err = api
                .apply("/apis/g/v/namespaces/n/things", "x", &serde_json::json!({}))
                .await
                .expect_err("error");
            assert_eq!(err.code(), Some(code));
            assert_eq!(seen.load(Ordering::SeqCst), 1, "{code} is not retried here");
            assert_eq!(api.counts().get(Verb::Apply, code), 1);
        }
    }

    #[tokio::test]
    async fn no_answer_is_retried_then_reported() {
        // A port nothing listens on: connection refused on every attempt.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let mut config = kube::Config::new(format!("http://{addr}").parse().expect("uri"));
        config.default_retry = false;
        let policy = RetryPolicy {
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..RetryPolicy::default()
        };
        let api = ApiClient::new(kube::Client::try_from(config).expect("client"), 0.0, 1)
            .with_retry(policy);
        let err = api
            .list("/apis/g/v/things", None, false)
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::NoAnswer { .. }), "{err}");
        assert!(err.is_retryable());
        assert_eq!(api.counts().get(Verb::List, 0), 6);
    }

    #[test]
    fn error_answers_carry_the_servers_message() {
        let body = br#"{"kind":"Status","status":"Failure","message":"HelmRepository.source.toolkit.fluxcd.io \"x\" is invalid: spec.interval: Invalid value","reason":"Invalid","code":422}"#;
        let e = api_error(422, body);
        assert_eq!(
            e.to_string(),
            "the API server answered 422 Invalid: HelmRepository.source.toolkit.fluxcd.io \"x\" is invalid: spec.interval: Invalid value"
        );
        assert!(!e.is_retryable());
        let e = api_error(429, b"Too many requests, please try again later.\n");
        assert_eq!(
            e.to_string(),
            "the API server answered 429 TooManyRequests: Too many requests, please try again later."
        );
        assert!(e.is_retryable());
        assert!(api_error(409, b"{}").is_conflict());
        assert!(api_error(503, b"").is_retryable());
    }
}
