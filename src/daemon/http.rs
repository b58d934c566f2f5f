//! The HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, `/status`, `POST /webhook` and
//! `POST /reconcile`. Served on a thread and current-thread runtime of their own (like
//! linkerd's admin server), so a busy reconcile never delays a health check.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, watch};

use super::board::Board;
use super::health::Health;
use super::metrics::Metrics;
use super::scheduler::{Trigger, send};
use super::webhook::{self, Verdict};
use pbsync_target::Secret;

/// Largest webhook body accepted (GitHub caps payloads at 25 MB; pushes are far smaller).
const MAX_BODY: usize = 1 << 20;

/// The webhook's settings (replaced on reload).
#[derive(Debug, Clone, Default)]
pub struct WebhookSettings {
    /// The HMAC secret; without one every delivery is refused.
    pub secret: Option<Secret>,
    /// The generic signature header.
    pub header: String,
}

/// What the endpoints share with the loop.
#[derive(Debug)]
pub struct Shared {
    /// Liveness, readiness, last outcome.
    pub health: Health,
    /// The health of what the daemon manages.
    pub board: Board,
    /// Metrics.
    pub metrics: Metrics,
    /// Where triggers go.
    pub triggers: mpsc::Sender<Trigger>,
    /// Webhook settings.
    pub webhook: Mutex<WebhookSettings>,
    /// The instance, and whether the page on `/` is served (`ui`; replaced on reload).
    pub page: Mutex<(String, bool)>,
    /// Where pass outcomes and health changes are reported (commit status, notifications).
    pub reporter: super::report::Reporter,
}

/// The router (also used by tests without a socket).
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/webhook", post(webhook_delivery))
        .route("/reconcile", post(reconcile_now))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no commit fetched and parsed yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// The read-only page (`ui: true`), else 404 with how to turn it on.
async fn page(State(s): State<Arc<Shared>>) -> Response {
    let (instance, on) = s
        .page
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if !on {
        return (
            StatusCode::NOT_FOUND,
            "the health page is off: set `ui: true` in the configuration (or --ui)\n",
        )
            .into_response();
    }
    let html = super::page::render(&instance, &s.health.last(), &s.board);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The last outcome, and the health of what the daemon manages (`health`).
async fn status(State(s): State<Arc<Shared>>) -> Response {
    let mut doc = serde_json::to_value(s.health.last()).unwrap_or_default();
    doc["health"] = s.board.to_json();
    axum::Json(doc).into_response()
}

async fn webhook_delivery(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let settings = s
        .webhook
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let delivery = webhook::Delivery {
        github: value(webhook::GITHUB_HEADER),
        gitea: value(webhook::GITEA_HEADER),
        gitlab: value(webhook::GITLAB_HEADER),
        generic: value(&settings.header),
        event: value("x-github-event")
            .or_else(|| value("x-gitea-event"))
            .or_else(|| value("x-gitlab-event")),
    };
    let verdict = webhook::judge(
        settings.secret.as_ref().map(Secret::expose),
        &body,
        &delivery,
    );
    s.metrics.count_webhook(verdict.as_str());
    match verdict {
        Verdict::Accepted => {
            send(&s.triggers, Trigger::Webhook);
            (StatusCode::ACCEPTED, "fetching\n").into_response()
        }
        Verdict::Ignored => (StatusCode::OK, "ignored\n").into_response(),
        Verdict::MissingSignature | Verdict::BadSignature => {
            tracing::warn!(result = verdict.as_str(), "webhook delivery rejected");
            (StatusCode::UNAUTHORIZED, "bad or missing signature\n").into_response()
        }
        Verdict::Disabled => {
            (StatusCode::FORBIDDEN, "no webhook secret configured\n").into_response()
        }
    }
}

async fn reconcile_now(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    // Unauthenticated, so only from this host (an operator's `pbsync reconcile-now`).
    if !peer.ip().is_loopback() {
        return (StatusCode::FORBIDDEN, "only from loopback\n").into_response();
    }
    send(&s.triggers, Trigger::Manual);
    (StatusCode::ACCEPTED, "reconcile requested\n").into_response()
}

/// Serves `router(shared)` on `listener` from a thread of its own until `stop` turns true.
pub fn spawn(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("pbsync-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serve http");
                        return;
                    }
                };
                let app = router(shared).into_make_service_with_connect_info::<SocketAddr>();
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        while !*stop.borrow() {
                            if stop.changed().await.is_err() {
                                break;
                            }
                        }
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "http server stopped");
                }
            });
        })
}
