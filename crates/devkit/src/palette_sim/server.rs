//! The simulator's HTTP side: axum routes for the endpoints pbsync uses, the `ApiKey` check,
//! per-IP rate limits, request-body validation against the Swagger definitions, injected
//! faults, and a listener whose connections a handler can cut (a dropped connection).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::schema::Definitions;
use super::store::{ApiError, Caller, ListQuery, Store};
use super::{Config, Fault, FaultKind, RateLimit, Stats};

/// State shared by every request.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) store: Mutex<Store>,
    pub(super) faults: Mutex<Vec<Fault>>,
    pub(super) stats: Mutex<Stats>,
    limiter: Mutex<HashMap<(IpAddr, usize), Bucket>>,
    rate_limits: Vec<RateLimit>,
    api_key: Option<String>,
    refs: AtomicU64,
}

/// Locks a mutex; a panic elsewhere cannot leave these maps in a state worth refusing.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(super) fn new(config: &Config, store: Store) -> Self {
        let mut rate_limits = config.rate_limits.clone();
        // Longest prefix first, so the most specific rule wins.
        rate_limits.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self {
            store: Mutex::new(store),
            faults: Mutex::new(Vec::new()),
            stats: Mutex::new(Stats::default()),
            limiter: Mutex::new(HashMap::new()),
            rate_limits,
            api_key: config.api_key.clone(),
            refs: AtomicU64::new(0),
        }
    }

    fn error(&self, status: u16, code: &str, message: &str, details: Value) -> Response {
        let n = self.refs.fetch_add(1, Ordering::Relaxed) + 1;
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"code": code, "message": message, "details": details, "ref": format!("sim-{n:06}")});
        (status, axum::Json(body)).into_response()
    }

    fn api_error(&self, e: &ApiError) -> Response {
        self.error(e.status, e.code, &e.message, json!({}))
    }

    fn take_fault(&self, method: &Method, path: &str) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let i = faults.iter().position(|f| {
            f.times > 0
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
                && f.path.as_deref().is_none_or(|p| path.starts_with(p))
        })?;
        faults[i].times -= 1;
        let kind = faults[i].kind.clone();
        if faults[i].times == 0 {
            faults.remove(i);
        }
        Some(kind)
    }

    /// Token bucket per source IP and endpoint prefix, as Palette documents its limits.
    fn allow(&self, ip: IpAddr, path: &str) -> bool {
        let Some((i, rule)) = self
            .rate_limits
            .iter()
            .enumerate()
            .find(|(_, r)| path.starts_with(&r.prefix))
        else {
            return true;
        };
        let now = Instant::now();
        let capacity = rule.per_second * rule.burst;
        let mut buckets = lock(&self.limiter);
        let b = buckets.entry((ip, i)).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rule.per_second).min(capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A TCP listener whose connections can be cut from inside a handler.
#[derive(Debug)]
pub(super) struct CuttableListener(pub(super) TcpListener);

/// A connection that fails every read and write once cut: the server then closes it without
/// answering, which is what a client sees when a proxy or the network drops it.
#[derive(Debug)]
pub(super) struct CuttableStream {
    inner: TcpStream,
    cut: Arc<AtomicBool>,
}

impl axum::serve::Listener for CuttableListener {
    type Io = CuttableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    return (
                        CuttableStream {
                            inner,
                            cut: Arc::new(AtomicBool::new(false)),
                        },
                        addr,
                    );
                }
                // Out of file descriptors and the like: wait a little, as axum's own
                // listener does, instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection cut by a fault",
    )
}

impl AsyncRead for CuttableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a handler knows about its connection.
#[derive(Debug, Clone)]
pub(super) struct Conn {
    peer: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Conn {
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Connected<axum::serve::IncomingStream<'_, CuttableListener>> for Conn {
    fn connect_info(stream: axum::serve::IncomingStream<'_, CuttableListener>) -> Self {
        Self {
            peer: *stream.remote_addr(),
            cut: stream.io().cut.clone(),
        }
    }
}

type S = State<Arc<Shared>>;

/// The router: Palette's endpoints behind the gate, the admin endpoints beside it.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    let palette = Router::new()
        .route("/v1/dashboard/clusterprofiles", post(list_summary))
        .route("/v1/dashboard/clusterprofiles/metadata", get(list_metadata))
        .route("/v1/clusterprofiles", post(create))
        .route(
            "/v1/clusterprofiles/{uid}",
            get(get_profile).put(update).delete(delete),
        )
        .route("/v1/clusterprofiles/{uid}/publish", patch(publish))
        .route("/v1/clusterprofiles/{uid}/metadata", patch(update_metadata))
        .route(
            "/v1/clusterprofiles/{uid}/variables",
            get(get_variables).put(put_variables),
        )
        .route(
            "/v1/clusterprofiles/{uid}/packs/{pack}/manifests",
            get(pack_manifests),
        )
        .route_layer(middleware::from_fn_with_state(shared.clone(), gate));
    let admin = Router::new()
        .route("/__sim/profiles", get(admin_profiles))
        .route("/__sim/stats", get(admin_stats))
        .route(
            "/__sim/faults",
            post(admin_add_fault).delete(admin_clear_faults),
        )
        .route("/__sim/profiles/{uid}/in-use", put(admin_set_in_use));
    palette.merge(admin).fallback(not_found).with_state(shared)
}

async fn not_found(State(s): S, req: Request) -> Response {
    s.error(
        404,
        "ResourceNotFound",
        &format!(
            "{} {} is not an endpoint of this simulator",
            req.method(),
            req.uri().path()
        ),
        json!({}),
    )
}

/// Every Palette request passes here: statistics, injected faults, rate limits, the API key;
/// then the handler runs in its own task, so a client that gives up (a timeout) does not
/// cancel work the server already started, as on a real server.
async fn gate(
    State(s): S,
    ConnectInfo(conn): ConnectInfo<Conn>,
    matched: MatchedPath,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let route = format!("{method} {}", matched.as_str());
    lock(&s.stats).record_request(&route);
    let mut cut_after = false;
    let mut latency = None;
    match s.take_fault(&method, req.uri().path()) {
        Some(FaultKind::Drop) => {
            conn.cut();
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Some(FaultKind::Status { status, error }) => {
            let (code, msg) = match (&error, status) {
                (Some(e), _) => (e.code.as_str(), e.message.as_str()),
                (None, 429) => (
                    "TooManyRequests",
                    "too many requests; retry after a few moments",
                ),
                (None, 500) => ("InternalError", "internal server error (injected)"),
                (None, 502) => ("BadGateway", "bad gateway (injected)"),
                (None, 503) => ("ServiceUnavailable", "service unavailable (injected)"),
                (None, _) => ("InjectedFault", "injected fault"),
            };
            let resp = s.error(status, code, msg, json!({}));
            lock(&s.stats).record_response(&route, resp.status().as_u16());
            return resp;
        }
        Some(FaultKind::DropAfterResponse) => cut_after = true,
        Some(FaultKind::Latency { millis }) => {
            latency = Some(std::time::Duration::from_millis(millis));
        }
        None => {}
    }
    if !s.allow(conn.peer.ip(), req.uri().path()) {
        let resp = s.error(
            429,
            "TooManyRequests",
            "too many requests from this address; retry after a few moments",
            json!({}),
        );
        lock(&s.stats).record_response(&route, 429);
        return resp;
    }
    let key_ok = req
        .headers()
        .get("ApiKey")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| !k.is_empty() && s.api_key.as_deref().is_none_or(|want| want == k));
    if !key_ok {
        let resp = s.error(
            401,
            "Unauthorized",
            "a valid ApiKey header is required",
            json!({}),
        );
        lock(&s.stats).record_response(&route, 401);
        return resp;
    }
    let task = tokio::spawn(async move {
        if let Some(d) = latency {
            tokio::time::sleep(d).await;
        }
        next.run(req).await
    });
    let resp = match task.await {
        Ok(r) => r,
        Err(_) => s.error(500, "InternalError", "the handler failed", json!({})),
    };
    if cut_after {
        conn.cut();
    } else {
        lock(&s.stats).record_response(&route, resp.status().as_u16());
    }
    resp
}

fn caller(headers: &HeaderMap) -> Caller {
    Caller {
        project: headers
            .get("ProjectUid")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string),
    }
}

/// Parses and validates a body against a Swagger definition; `Err` is the 400 answer.
fn body(
    s: &Shared,
    bytes: &Bytes,
    definition: &str,
    required: bool,
) -> Result<Value, Box<Response>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if required {
            return Err(Box::new(s.error(
                400,
                "BadRequest",
                "a request body is required",
                json!({}),
            )));
        }
        return Ok(json!({}));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        Box::new(s.error(
            400,
            "BadRequest",
            &format!("the request body is not valid JSON: {e}"),
            json!({}),
        ))
    })?;
    Definitions::palette()
        .validate(definition, &value, "body")
        .map_err(|m| {
            Box::new(s.error(
                400,
                "BadRequest",
                &format!("request body does not match {definition}: {m}"),
                json!({"definition": definition, "path": m.path, "reason": m.reason}),
            ))
        })?;
    Ok(value)
}

fn answer(s: &Shared, result: Result<Value, ApiError>, status: StatusCode) -> Response {
    match result {
        Ok(v) => (status, axum::Json(v)).into_response(),
        Err(e) => s.api_error(&e),
    }
}

fn no_content(s: &Shared, result: Result<(), ApiError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => s.api_error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<i64>,
    offset: Option<i64>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

async fn list_summary(
    State(s): S,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
    bytes: Bytes,
) -> Response {
    let filter = match body(&s, &bytes, "v1ClusterProfilesFilterSpec", false) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let q = ListQuery {
        limit: p.limit,
        offset: p.offset,
        continue_token: p.continue_token,
    };
    let result = lock(&s.store).list_summary(&caller(&headers), &filter, &q);
    answer(&s, result, StatusCode::OK)
}

async fn list_metadata(State(s): S, headers: HeaderMap) -> Response {
    let v = lock(&s.store).list_metadata(&caller(&headers));
    (StatusCode::OK, axum::Json(v)).into_response()
}

#[derive(Debug, Deserialize)]
struct CreateParams {
    publish: Option<bool>,
}

async fn create(
    State(s): S,
    headers: HeaderMap,
    Query(p): Query<CreateParams>,
    bytes: Bytes,
) -> Response {
    let entity = match body(&s, &bytes, "v1ClusterProfileEntity", true) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let result = lock(&s.store).create(&caller(&headers), &entity, p.publish.unwrap_or(false));
    match result {
        Ok(uid) => {
            let mut resp = (StatusCode::CREATED, axum::Json(json!({"uid": uid}))).into_response();
            if let Ok(v) = format!("audit-{uid}").parse() {
                resp.headers_mut().insert("AuditUid", v);
            }
            resp
        }
        Err(e) => s.api_error(&e),
    }
}

async fn get_profile(State(s): S, headers: HeaderMap, Path(uid): Path<String>) -> Response {
    let result = lock(&s.store).get_json(&caller(&headers), &uid);
    answer(&s, result, StatusCode::OK)
}

async fn update(
    State(s): S,
    headers: HeaderMap,
    Path(uid): Path<String>,
    bytes: Bytes,
) -> Response {
    let entity = match body(&s, &bytes, "v1ClusterProfileUpdateEntity", true) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let result = lock(&s.store).update(&caller(&headers), &uid, &entity);
    no_content(&s, result)
}

async fn delete(State(s): S, headers: HeaderMap, Path(uid): Path<String>) -> Response {
    let result = lock(&s.store).delete(&caller(&headers), &uid);
    no_content(&s, result)
}

async fn publish(State(s): S, headers: HeaderMap, Path(uid): Path<String>) -> Response {
    let result = lock(&s.store).publish(&caller(&headers), &uid);
    no_content(&s, result)
}

async fn update_metadata(
    State(s): S,
    headers: HeaderMap,
    Path(uid): Path<String>,
    bytes: Bytes,
) -> Response {
    let entity = match body(&s, &bytes, "v1ProfileMetaEntity", true) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let result = lock(&s.store).update_metadata(&caller(&headers), &uid, &entity);
    no_content(&s, result)
}

async fn get_variables(State(s): S, headers: HeaderMap, Path(uid): Path<String>) -> Response {
    let result = lock(&s.store).variables(&caller(&headers), &uid);
    answer(&s, result, StatusCode::OK)
}

async fn put_variables(
    State(s): S,
    headers: HeaderMap,
    Path(uid): Path<String>,
    bytes: Bytes,
) -> Response {
    let entity = match body(&s, &bytes, "v1Variables", true) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let result = lock(&s.store).put_variables(&caller(&headers), &uid, &entity);
    no_content(&s, result)
}

async fn pack_manifests(
    State(s): S,
    headers: HeaderMap,
    Path((uid, pack)): Path<(String, String)>,
) -> Response {
    let result = lock(&s.store).pack_manifests(&caller(&headers), &uid, &pack);
    answer(&s, result, StatusCode::OK)
}

async fn admin_profiles(State(s): S) -> Response {
    let list: Vec<Value> = lock(&s.store)
        .profiles()
        .map(|p| serde_json::to_value(p).unwrap_or_default())
        .collect();
    axum::Json(list).into_response()
}

async fn admin_stats(State(s): S) -> Response {
    axum::Json(lock(&s.stats).clone()).into_response()
}

async fn admin_add_fault(State(s): S, axum::Json(fault): axum::Json<Fault>) -> Response {
    lock(&s.faults).push(fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_clear_faults(State(s): S) -> Response {
    lock(&s.faults).clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_set_in_use(
    State(s): S,
    Path(uid): Path<String>,
    axum::Json(clusters): axum::Json<Vec<Value>>,
) -> Response {
    let result = lock(&s.store).set_in_use(&uid, clusters);
    no_content(&s, result)
}
