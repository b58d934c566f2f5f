//! The HTTP client of Palette's cluster-profile API: the `ApiKey` and `ProjectUid` headers,
//! pacing per endpoint prefix, retries of 429 and 5xx with backoff, and `v1Error` decoding.
//! Private to the Palette target: the rest of the code sees only the `Target` trait.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::throttle::Buckets;
use super::{ApiKey, Error, PaletteConfig};
use crate::pace::Backoff;
use crate::requests::RequestCounts;
use pbsync_core::guard::DeletePermit;

/// Whether a request may be sent again after a failure that may have been carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Reads, updates, publishes and deletes: safe to repeat.
    Idempotent,
    /// Creates: only a 429 (refused before it was carried out) is retried here; any other
    /// failure returns, and the caller looks the object up before trying again.
    NotIdempotent,
}

/// The methods of a [`Call`] made with [`Call::new`]. There is no delete: the only
/// `DELETE` is [`Call::delete`], which needs the guard's permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Get,
    Post,
    Put,
    Patch,
}

/// One request. Its fields are private to this file, so no other code can make a `DELETE`.
#[derive(Debug)]
pub(super) struct Call<'a> {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<&'a Value>,
    /// Send `ProjectUid` (project scope) or not (tenant scope).
    project: bool,
    retry: Retry,
}

impl<'a> Call<'a> {
    pub(super) fn new(verb: Verb, path: impl Into<String>, project: bool) -> Self {
        let method = match verb {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
            Verb::Put => Method::PUT,
            Verb::Patch => Method::PATCH,
        };
        Self::with_method(method, path, project)
    }

    /// `DELETE /v1/clusterprofiles/{uid}` of the profile the guard's permit names: the only
    /// delete this client can send.
    pub(super) fn delete(_permit: &DeletePermit, uid: &str, project: bool) -> Self {
        Self::with_method(
            Method::DELETE,
            format!("{}/{}", super::profiles::PROFILES_PATH, encode_segment(uid)),
            project,
        )
    }

    fn with_method(method: Method, path: impl Into<String>, project: bool) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            project,
            retry: Retry::Idempotent,
        }
    }

    pub(super) fn body(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }

    pub(super) fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    pub(super) fn not_idempotent(mut self) -> Self {
        self.retry = Retry::NotIdempotent;
        self
    }
}

/// A Palette API client.
pub(super) struct Client {
    http: reqwest::Client,
    base: String,
    api_key: ApiKey,
    project_uid: Option<String>,
    buckets: Buckets,
    backoff: Backoff,
    max_retries: u32,
    counts: Mutex<RequestCounts>,
}

/// The operation a request performs, for counting.
fn operation(method: &Method, path: &str) -> &'static str {
    match *method {
        Method::GET => "get",
        Method::POST if path.starts_with("/v1/dashboard") => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH if path.ends_with("/publish") => "publish",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("api_key", &self.api_key)
            .field("project_uid", &self.project_uid)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(super) fn new(config: &PaletteConfig) -> Result<Self, Error> {
        let base = config.url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "palette url {base:?} must start with http:// or https://"
            )));
        }
        if config.api_key.expose().is_empty() {
            return Err(Error::Config("the palette api key is empty".into()));
        }
        let http = crate::http_client(config.timeout).map_err(Error::Client)?;
        Ok(Self {
            http,
            base,
            api_key: config.api_key.clone(),
            project_uid: config.project_uid.clone(),
            buckets: if config.rate_limits {
                Buckets::documented()
            } else {
                Buckets::new(Vec::new())
            },
            backoff: Backoff::new(
                config.retry_base,
                Duration::from_secs(60),
                config.jitter_seed,
            ),
            max_retries: config.max_retries,
            counts: Mutex::new(RequestCounts::default()),
        })
    }

    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// The configured project, for project-scope requests.
    pub(super) fn project_uid(&self) -> Option<&str> {
        self.project_uid.as_deref()
    }

    /// The wait before retry `attempt` (for callers that retry on their own).
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        self.backoff.delay(attempt)
    }

    pub(super) fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Requests sent so far.
    pub(super) fn counts(&self) -> RequestCounts {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn count(&self, call: &Call<'_>, status: u16) {
        let op = operation(&call.method, &call.path);
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(op, status);
    }

    fn headers(&self, project: bool) -> Result<HeaderMap, Error> {
        let mut h = HeaderMap::new();
        let mut key = HeaderValue::from_str(self.api_key.expose())
            .map_err(|_| Error::Config("the palette api key is not a valid header value".into()))?;
        // Keeps the key out of any debug output of the request.
        key.set_sensitive(true);
        h.insert("ApiKey", key);
        if project {
            let uid = self.project_uid.as_deref().ok_or_else(|| {
                Error::Config("a project-scope request needs --palette-project-uid".into())
            })?;
            let v = HeaderValue::from_str(uid).map_err(|_| {
                Error::Config(format!("project uid {uid:?} is not a valid header value"))
            })?;
            h.insert("ProjectUid", v);
        }
        h.insert("Accept", HeaderValue::from_static("application/json"));
        Ok(h)
    }

    /// Sends `call`, retrying 429 always and 5xx and transport failures when the request is
    /// idempotent, with exponential backoff. Returns the decoded body (`Null` when empty).
    pub(super) async fn send(&self, call: &Call<'_>) -> Result<Value, Error> {
        let mut attempt = 0u32;
        loop {
            self.buckets.acquire(&call.path).await;
            let result = self.send_once(call).await;
            self.count(
                call,
                match &result {
                    Ok((status, _)) => *status,
                    Err(Error::Api { status, .. }) => *status,
                    Err(_) => 0,
                },
            );
            let err = match result {
                Ok((_, v)) => return Ok(v),
                Err(e) => e,
            };
            let again = match call.retry {
                Retry::Idempotent => err.is_transient(),
                Retry::NotIdempotent => err.is_throttled(),
            };
            if !again {
                return Err(err);
            }
            if attempt >= self.max_retries {
                return Err(Error::Retried {
                    attempts: attempt + 1,
                    source: Box::new(err),
                });
            }
            let wait = self.backoff.delay(attempt);
            tracing::debug!(
                method = %call.method,
                path = %call.path,
                attempt = attempt + 1,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                error = %pbsync_core::error_chain(&err),
                "palette request failed; retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn send_once(&self, call: &Call<'_>) -> Result<(u16, Value), Error> {
        let what = || (call.method.to_string(), call.path.clone());
        let mut url = format!("{}{}", self.base, call.path);
        for (i, (k, v)) in call.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&encode_segment(v));
        }
        let mut req = self
            .http
            .request(call.method.clone(), url)
            .headers(self.headers(call.project)?);
        if let Some(body) = call.body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|source| {
            let (method, path) = what();
            Error::Request {
                method,
                path,
                source,
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| {
            let (method, path) = what();
            Error::Request {
                method,
                path,
                source,
            }
        })?;
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok((status.as_u16(), Value::Null));
            }
            return serde_json::from_slice(&bytes)
                .map(|v| (status.as_u16(), v))
                .map_err(|source| {
                    let (method, path) = what();
                    Error::Decode {
                        method,
                        path,
                        source,
                    }
                });
        }
        // Palette answers v1Error; anything else is wrapped the way its SDK does: the
        // status text as the code, the raw body as the message.
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let (method, path) = what();
        Err(Error::Api {
            method,
            path,
            status: status.as_u16(),
            code: field("code")
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("Unknown").to_string()),
            message: field("message")
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string()),
            reference: field("ref"),
        })
    }
}

/// Percent-encodes one path segment or query value.
pub(super) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_segment("edge-k8s_1.0"), "edge-k8s_1.0");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
