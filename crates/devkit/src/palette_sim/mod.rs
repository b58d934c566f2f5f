//! A Palette API simulator for the cluster-profile endpoints pbsync uses: the way to try the
//! Palette side locally, and the server the Palette target's tests run against.
//!
//! It keeps profiles in memory (optionally seeded from a JSON file) and implements Palette's
//! documented behaviour: uids, name+version uniqueness (409), draft and published templates
//! (`PUT` writes the draft, `PATCH …/publish` promotes it), project and tenant scope through
//! the `ProjectUid` header, paging with `continue` tokens (limit ≤ 50), `status.inUseClusters`,
//! the `v1Error` body, the `ApiKey` header (401 without it), per-IP rate limits answered with
//! 429, and injectable faults (latency, error statuses, 429 bursts, refusals in Palette's own
//! words, dropped connections, also after the request was carried out). Every request body is
//! validated against the Swagger 2.0 definitions of the vendored API subset and a mismatch is
//! answered 400 naming the first mismatching field, so a client that drifts from the real API
//! fails its tests.
//!
//! Use it from tests through [`Simulator`]; the `pbsync-palette-sim` binary wraps the same
//! thing and adds admin endpoints under `/__sim/` (see the README, "The Palette target and the Palette API simulator").

pub mod schema;
mod server;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use store::{ApiError, Profile, Scope, SeedProfile};

use server::{CuttableListener, Shared, lock};

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The seed file could not be read.
    #[error("cannot read seed file {path}")]
    ReadSeed {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The seed file is not a valid seed.
    #[error("seed file {path} is not valid")]
    ParseSeed {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A seed profile was refused (duplicate, bad template).
    #[error("seed profile {name}@{version} refused: {message}")]
    Seed {
        /// Name.
        name: String,
        /// Version.
        version: String,
        /// Why.
        message: String,
    },
}

/// One per-IP rate limit: requests whose path starts with `prefix` share a token bucket that
/// refills at `per_second` and holds `per_second × burst` tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Endpoint prefix, e.g. `/v1/dashboard`.
    pub prefix: String,
    /// Sustained rate.
    pub per_second: f64,
    /// Burst factor: the bucket holds `per_second × burst` requests.
    pub burst: f64,
}

impl RateLimit {
    /// Palette's documented limits: `/v1/clusterprofiles` 50 req/s (burst up to 250),
    /// `/v1/dashboard` and everything else 10 req/s (burst up to 50).
    pub fn documented() -> Vec<Self> {
        let rule = |prefix: &str, per_second: f64| Self {
            prefix: prefix.into(),
            per_second,
            burst: 5.0,
        };
        vec![
            rule("/v1/clusterprofiles", 50.0),
            rule("/v1/dashboard", 10.0),
            rule("/", 10.0),
        ]
    }
}

/// Seed file: `{"profiles": [...]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Profiles to start with.
    #[serde(default)]
    pub profiles: Vec<SeedProfile>,
}

impl Seed {
    /// Reads a seed file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::ReadSeed {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| Error::ParseSeed {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// How a simulator behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The accepted `ApiKey`; `None` accepts any non-empty key.
    pub api_key: Option<String>,
    /// Per-IP rate limits; empty disables limiting.
    pub rate_limits: Vec<RateLimit>,
    /// Largest page of the summary list (Palette: 50); smaller forces paging in tests.
    pub page_cap: usize,
    /// Profiles to start with.
    pub seed: Seed,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_key: None,
            rate_limits: RateLimit::documented(),
            page_cap: store::MAX_LIMIT,
            seed: Seed::default(),
        }
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum FaultKind {
    /// Answer with this status and a `v1Error` body (429 `TooManyRequests`, 500, 503, ...)
    /// without carrying out the request.
    Status {
        /// HTTP status.
        status: u16,
        /// `v1Error.code` and `message` (a refusal in Palette's words, e.g. a publish it
        /// turns down); a generic pair for the status when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<InjectedError>,
    },
    /// Close the connection without answering and without carrying out the request.
    Drop,
    /// Carry out the request, then close the connection without answering: the ambiguous
    /// failure (did the create happen?) a non-idempotent client must survive.
    DropAfterResponse,
    /// Wait this long before carrying out the request (the request is carried out even if
    /// the client gives up meanwhile).
    Latency {
        /// Milliseconds.
        millis: u64,
    },
}

/// The `v1Error` an injected status answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectedError {
    /// `code`, e.g. `ClusterProfilePublishFailed`.
    pub code: String,
    /// `message`.
    pub message: String,
}

/// A fault injected into the next `times` requests that match `method` and `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// HTTP method to match (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Path prefix to match (any when absent).
    #[serde(default)]
    pub path: Option<String>,
    /// How many requests it hits.
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

impl Fault {
    /// Answer `status` once.
    pub fn status(status: u16) -> Self {
        Self::new(FaultKind::Status {
            status,
            error: None,
        })
    }

    /// Answer `status` once with this `v1Error` code and message: Palette refusing the
    /// request in its own words.
    pub fn refusal(status: u16, code: &str, message: &str) -> Self {
        Self::new(FaultKind::Status {
            status,
            error: Some(InjectedError {
                code: code.into(),
                message: message.into(),
            }),
        })
    }

    /// Drop the connection once, before carrying out the request.
    pub fn drop_connection() -> Self {
        Self::new(FaultKind::Drop)
    }

    /// Carry out the request, then drop the connection without answering.
    pub fn drop_after_response() -> Self {
        Self::new(FaultKind::DropAfterResponse)
    }

    /// Delay once.
    pub fn latency(millis: u64) -> Self {
        Self::new(FaultKind::Latency { millis })
    }

    fn new(kind: FaultKind) -> Self {
        Self {
            kind,
            method: None,
            path: None,
            times: 1,
        }
    }

    /// Only requests with this method and a path starting with `path`.
    #[must_use]
    pub fn on(mut self, method: &str, path: &str) -> Self {
        self.method = Some(method.to_string());
        self.path = Some(path.to_string());
        self
    }

    /// Hit this many requests.
    #[must_use]
    pub fn times(mut self, n: u32) -> Self {
        self.times = n;
        self
    }
}

/// Requests seen and answers given, by `METHOD /route` (the route template, e.g.
/// `PUT /v1/clusterprofiles/{uid}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Requests received per route (faulted ones included).
    pub requests: BTreeMap<String, u64>,
    /// Answers per `METHOD /route STATUS` (dropped connections have none).
    pub responses: BTreeMap<String, u64>,
}

impl Stats {
    fn record_request(&mut self, route: &str) {
        *self.requests.entry(route.to_string()).or_default() += 1;
    }

    fn record_response(&mut self, route: &str, status: u16) {
        *self
            .responses
            .entry(format!("{route} {status}"))
            .or_default() += 1;
    }

    /// Requests received for one route.
    pub fn count(&self, route: &str) -> u64 {
        self.requests.get(route).copied().unwrap_or(0)
    }

    /// Requests that would change something (any method but GET, except the summary list,
    /// which is a read sent as POST).
    pub fn writes(&self) -> u64 {
        self.requests
            .iter()
            .filter(|(r, _)| {
                !r.starts_with("GET ") && r.as_str() != "POST /v1/dashboard/clusterprofiles"
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Answers with this status, over all routes.
    pub fn answered(&self, status: u16) -> u64 {
        let suffix = format!(" {status}");
        self.responses
            .iter()
            .filter(|(r, _)| r.ends_with(&suffix))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A running simulator; stops when dropped.
#[derive(Debug)]
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Starts a simulator on `addr` (port 0 picks a free port). Must run inside a tokio
    /// runtime.
    pub async fn start(addr: SocketAddr, config: Config) -> Result<Self, Error> {
        let mut store = store::Store::new();
        store.page_cap = config.page_cap.clamp(1, store::MAX_LIMIT);
        for p in config.seed.profiles.clone() {
            let (name, version) = (p.name.clone(), p.version.clone());
            store.seed(p).map_err(|e| Error::Seed {
                name,
                version,
                message: e.message,
            })?;
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let shared = Arc::new(Shared::new(&config, store));
        let app = server::router(shared.clone());
        let task = tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<server::Conn>();
            // axum's serve loop only ends when the task is aborted.
            let _ = axum::serve(CuttableListener(listener), service).await;
        });
        Ok(Self {
            addr: local,
            shared,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Faults not yet used up.
    pub fn pending_faults(&self) -> Vec<Fault> {
        lock(&self.shared.faults).clone()
    }

    /// Requests and answers so far.
    pub fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Forgets the statistics.
    pub fn reset_stats(&self) {
        *lock(&self.shared.stats) = Stats::default();
    }

    /// Every stored profile, by uid.
    pub fn profiles(&self) -> Vec<Profile> {
        lock(&self.shared.store).profiles().cloned().collect()
    }

    /// Stored profiles with this name and version (any scope).
    pub fn find(&self, name: &str, version: &str) -> Vec<Profile> {
        lock(&self.shared.store)
            .profiles()
            .filter(|p| p.name == name && p.version == version)
            .cloned()
            .collect()
    }

    /// Adds a profile as if someone else had created it; returns its uid.
    pub fn seed(&self, profile: SeedProfile) -> Result<String, ApiError> {
        lock(&self.shared.store).seed(profile)
    }

    /// Sets `status.inUseClusters` of a profile (`{name, uid}` objects).
    pub fn set_in_use(&self, uid: &str, clusters: Vec<Value>) -> Result<(), ApiError> {
        lock(&self.shared.store).set_in_use(uid, clusters)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
