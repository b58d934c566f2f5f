//! A small GitLab simulator for the calls pbsync makes (GitLab is not built here; Gitea,
//! which follows GitHub's API, is the real server of the tests). Every request is checked
//! against GitLab's documented shapes (REST API v4: "Commits → Set the pipeline status of a
//! commit", "Notes → Merge requests", "Commits → List merge requests associated with a
//! commit") and answered with the documented response fields; a request that does not fit
//! is refused with GitLab's status code and recorded in [`GitlabSim::refused`], so a test
//! can assert that none was.
//!
//! - `POST /api/v4/projects/:id/statuses/:sha`: `state` required, one of `pending`,
//!   `running`, `success`, `failed`, `canceled`, `skipped`; optional `ref`, `name` (alias
//!   `context`), `target_url` (http or https), `description` (at most 255 characters),
//!   `coverage`, `pipeline_id`; 201 with the status.
//! - `GET/POST /api/v4/projects/:id/merge_requests/:iid/notes` (`sort`, `order_by`,
//!   `per_page` at most 100, `page`), `PUT/DELETE .../notes/:note_id`; `body` required, at
//!   most 1,000,000 characters.
//! - `GET /api/v4/projects/:id/repository/commits/:sha/merge_requests`.
//!
//! `:id` is the project's numeric id or its URL-encoded path (`group%2Fname`); the token
//! goes in `PRIVATE-TOKEN`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

#[derive(Debug, Default)]
struct Inner {
    token: String,
    project: String,
    statuses: Vec<Value>,
    notes: BTreeMap<u64, Vec<Value>>,
    merge_requests: Vec<Value>,
    next_id: u64,
    refused: Vec<String>,
    /// Requests still to be answered 503 (an outage), and how many were.
    outage: usize,
    unavailable: usize,
}

type Shared = Arc<Mutex<Inner>>;

/// A running simulator.
#[derive(Debug, Clone)]
pub struct GitlabSim {
    /// The API root (`http://127.0.0.1:PORT/api/v4`).
    pub api_url: String,
    inner: Shared,
}

impl GitlabSim {
    /// Starts a simulator of one project (`group/name`) that takes `token`.
    pub fn start(token: &str, project: &str) -> Self {
        let inner: Shared = Arc::new(Mutex::new(Inner {
            token: token.into(),
            project: project.into(),
            next_id: 100,
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/api/v4/projects/{id}/statuses/{sha}", post(set_status))
            .route(
                "/api/v4/projects/{id}/merge_requests/{iid}/notes",
                get(list_notes).post(create_note),
            )
            .route(
                "/api/v4/projects/{id}/merge_requests/{iid}/notes/{note}",
                put(update_note).delete(delete_note),
            )
            .route(
                "/api/v4/projects/{id}/repository/commits/{sha}/merge_requests",
                get(merge_requests_of_commit),
            )
            .fallback(|req: axum::extract::Request| async move {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"message": format!("404 Not found: {}", req.uri().path())})),
                )
            })
            .with_state(inner.clone());
        let (addr, _thread) = super::serve_loopback(app, std::future::pending());
        Self {
            api_url: format!("http://{addr}/api/v4"),
            inner,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a merged merge request `iid` whose merge commit is `merge_commit`.
    pub fn add_merged(&self, iid: u64, merge_commit: &str) {
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        let web_url = format!("http://gitlab.invalid/{}/-/merge_requests/{iid}", s.project);
        s.merge_requests.push(json!({
            "id": id, "iid": iid, "project_id": 1, "title": format!("MR {iid}"),
            "state": "merged", "merge_commit_sha": merge_commit, "squash_commit_sha": null,
            "sha": "0000000000000000000000000000000000000000",
            "web_url": web_url,
        }));
    }

    /// Adds a comment by someone else to merge request `iid`.
    pub fn add_note(&self, iid: u64, body: &str) {
        let mut s = self.lock();
        let note = new_note(&mut s, body, "reviewer");
        s.notes.entry(iid).or_default().push(note);
    }

    /// Answers the next `n` requests with 503 Service Unavailable (an outage).
    pub fn fail_next(&self, n: usize) {
        self.lock().outage = n;
    }

    /// How many requests were answered 503 by [`GitlabSim::fail_next`].
    pub fn unavailable(&self) -> usize {
        self.lock().unavailable
    }

    /// Every status set, oldest first.
    pub fn statuses(&self) -> Vec<Value> {
        self.lock().statuses.clone()
    }

    /// The notes of merge request `iid`, oldest first.
    pub fn notes(&self, iid: u64) -> Vec<Value> {
        self.lock().notes.get(&iid).cloned().unwrap_or_default()
    }

    /// Requests refused as not fitting GitLab's documented shapes (`METHOD path: why`).
    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }
}

fn new_note(s: &mut Inner, body: &str, author: &str) -> Value {
    let id = s.next_id;
    s.next_id += 1;
    json!({
        "id": id, "type": null, "body": body, "attachment": null,
        "author": {"id": 1, "username": author, "name": author, "state": "active"},
        "created_at": "2026-12-07T00:00:00.000Z", "updated_at": "2026-12-07T00:00:00.000Z",
        "system": false, "noteable_type": "MergeRequest", "resolvable": false,
        "confidential": false, "internal": false,
    })
}

/// The simulator's state for one request that passed [`admit`], or the refusal to answer.
fn open<'a>(
    shared: &'a Shared,
    headers: &HeaderMap,
    id: &str,
    what: &str,
) -> Result<std::sync::MutexGuard<'a, Inner>, Box<Response>> {
    let mut s = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if s.outage > 0 {
        s.outage -= 1;
        s.unavailable += 1;
        return Err(Box::new(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"message": "503 Service Unavailable"})),
            )
                .into_response(),
        ));
    }
    admit(&mut s, headers, id, what)?;
    Ok(s)
}

/// Checks the token and the project; the refusal to answer otherwise.
fn admit(s: &mut Inner, headers: &HeaderMap, id: &str, what: &str) -> Result<(), Box<Response>> {
    let token = headers.get("private-token").and_then(|v| v.to_str().ok());
    if token != Some(s.token.as_str()) {
        s.refused
            .push(format!("{what}: missing or wrong PRIVATE-TOKEN"));
        return Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"message": "401 Unauthorized"})),
            )
                .into_response(),
        ));
    }
    if id != s.project && id != "1" {
        s.refused.push(format!("{what}: unknown project {id:?}"));
        return Err(Box::new(
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "404 Project Not Found"})),
            )
                .into_response(),
        ));
    }
    Ok(())
}

fn bad_request(s: &mut Inner, what: &str, why: String) -> Response {
    s.refused.push(format!("{what}: {why}"));
    (StatusCode::BAD_REQUEST, axum::Json(json!({"message": why}))).into_response()
}

fn body_of(v: &Value) -> Option<&serde_json::Map<String, Value>> {
    v.as_object()
}

const STATUS_PARAMS: &[&str] = &[
    "state",
    "ref",
    "name",
    "context",
    "target_url",
    "description",
    "coverage",
    "pipeline_id",
];
const STATES: &[&str] = &[
    "pending", "running", "success", "failed", "canceled", "skipped",
];

async fn set_status(
    State(shared): State<Shared>,
    Path((id, sha)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let what = format!("POST /projects/{id}/statuses/{sha}");
    let mut s = match open(&shared, &headers, &id, &what) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(b) = body_of(&body) else {
        return bad_request(&mut s, &what, "the body is not an object".into());
    };
    if let Some(k) = b.keys().find(|k| !STATUS_PARAMS.contains(&k.as_str())) {
        return bad_request(
            &mut s,
            &what,
            format!("{k} is not a parameter of this call"),
        );
    }
    let state = b.get("state").and_then(Value::as_str).unwrap_or_default();
    if !STATES.contains(&state) {
        return bad_request(&mut s, &what, format!("state is invalid: {state:?}"));
    }
    let text = |k: &str| match b.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(v)) => Ok(Some(v.clone())),
        Some(_) => Err(format!("{k} is invalid")),
    };
    let (name, description, target_url) =
        match (text("name"), text("description"), text("target_url")) {
            (Ok(n), Ok(d), Ok(t)) => (n, d, t),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return bad_request(&mut s, &what, e);
            }
        };
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 255)
    {
        return bad_request(
            &mut s,
            &what,
            "description is too long (maximum is 255 characters)".into(),
        );
    }
    if target_url
        .as_ref()
        .is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://")))
    {
        return bad_request(&mut s, &what, "target_url is invalid".into());
    }
    if sha.len() != 40 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        s.refused.push(format!("{what}: no such commit"));
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "404 Commit Not Found"})),
        )
            .into_response();
    }
    let id_n = s.next_id;
    s.next_id += 1;
    let status = json!({
        "id": id_n, "sha": sha, "ref": null, "status": state,
        "name": name.unwrap_or_else(|| "default".into()),
        "target_url": target_url, "description": description,
        "created_at": "2026-12-07T00:00:00.000Z", "started_at": null, "finished_at": null,
        "allow_failure": false, "coverage": null,
        "author": {"id": 1, "username": "pbsync", "name": "pbsync", "state": "active"},
    });
    s.statuses.push(status.clone());
    (StatusCode::CREATED, axum::Json(status)).into_response()
}

async fn list_notes(
    State(shared): State<Shared>,
    Path((id, iid)): Path<(String, u64)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let what = format!("GET /projects/{id}/merge_requests/{iid}/notes");
    let mut s = match open(&shared, &headers, &id, &what) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let per_page: usize = q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(20);
    let page: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
    if per_page == 0 || per_page > 100 || page == 0 {
        return bad_request(
            &mut s,
            &what,
            "per_page must be 1..=100 and page at least 1".into(),
        );
    }
    if let Some(sort) = q.get("sort")
        && sort != "asc"
        && sort != "desc"
    {
        return bad_request(&mut s, &what, "sort does not have a valid value".into());
    }
    if let Some(o) = q.get("order_by")
        && o != "created_at"
        && o != "updated_at"
    {
        return bad_request(&mut s, &what, "order_by does not have a valid value".into());
    }
    let mut notes = s.notes.get(&iid).cloned().unwrap_or_default();
    // GitLab's default order is newest first.
    if q.get("sort").map(String::as_str) != Some("asc") {
        notes.reverse();
    }
    let total = notes.len();
    let items: Vec<Value> = notes
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert("x-total", total.to_string().parse().expect("header"));
    headers.insert("x-page", page.to_string().parse().expect("header"));
    (StatusCode::OK, headers, axum::Json(Value::Array(items))).into_response()
}

/// The `body` of a note request, checked.
fn note_body(s: &mut Inner, what: &str, body: &Value) -> Result<String, Box<Response>> {
    let Some(b) = body_of(body) else {
        return Err(Box::new(bad_request(
            s,
            what,
            "the body is not an object".into(),
        )));
    };
    if let Some(k) = b.keys().find(|k| {
        ![
            "body",
            "created_at",
            "internal",
            "merge_request_diff_head_sha",
        ]
        .contains(&k.as_str())
    }) {
        return Err(Box::new(bad_request(
            s,
            what,
            format!("{k} is not a parameter of this call"),
        )));
    }
    match b.get("body").and_then(Value::as_str) {
        None => Err(Box::new(bad_request(s, what, "body is missing".into()))),
        Some(t) if t.chars().count() > 1_000_000 => Err(Box::new(bad_request(
            s,
            what,
            "Note is too long (maximum is 1000000 characters)".into(),
        ))),
        Some(t) if t.trim().is_empty() => {
            Err(Box::new(bad_request(s, what, "body is empty".into())))
        }
        Some(t) => Ok(t.to_string()),
    }
}

async fn create_note(
    State(shared): State<Shared>,
    Path((id, iid)): Path<(String, u64)>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let what = format!("POST /projects/{id}/merge_requests/{iid}/notes");
    let mut s = match open(&shared, &headers, &id, &what) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let text = match note_body(&mut s, &what, &body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let note = new_note(&mut s, &text, "pbsync");
    s.notes.entry(iid).or_default().push(note.clone());
    (StatusCode::CREATED, axum::Json(note)).into_response()
}

async fn update_note(
    State(shared): State<Shared>,
    Path((id, iid, note)): Path<(String, u64, u64)>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let what = format!("PUT /projects/{id}/merge_requests/{iid}/notes/{note}");
    let mut s = match open(&shared, &headers, &id, &what) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let text = match note_body(&mut s, &what, &body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let found = s
        .notes
        .get_mut(&iid)
        .and_then(|v| v.iter_mut().find(|n| n["id"] == note));
    match found {
        Some(n) => {
            n["body"] = json!(text);
            let n = n.clone();
            (StatusCode::OK, axum::Json(n)).into_response()
        }
        None => {
            s.refused.push(format!("{what}: no such note"));
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "404 Note Not Found"})),
            )
                .into_response()
        }
    }
}

async fn delete_note(
    State(shared): State<Shared>,
    Path((id, iid, note)): Path<(String, u64, u64)>,
    headers: HeaderMap,
) -> Response {
    let what = format!("DELETE /projects/{id}/merge_requests/{iid}/notes/{note}");
    let mut s = match open(&shared, &headers, &id, &what) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let notes = s.notes.entry(iid).or_default();
    let before = notes.len();
    notes.retain(|n| n["id"] != note);
    if notes.len() == before {
        s.refused.push(format!("{what}: no such note"));
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "404 Note Not Found"})),
        )
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn merge_requests_of_commit(
    State(shared): State<Shared>,
    Path((id, sha)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let what = format!("GET /projects/{id}/repository/commits/{sha}/merge_requests");
    let s = match open(&shared, &headers, &id, &what) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let found: Vec<Value> = s
        .merge_requests
        .iter()
        .filter(|mr| mr["merge_commit_sha"] == sha.as_str() || mr["sha"] == sha.as_str())
        .cloned()
        .collect();
    (StatusCode::OK, axum::Json(Value::Array(found))).into_response()
}
