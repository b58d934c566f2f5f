//! The Git hosting providers pbsync talks back to: GitHub, Gitea and GitLab. Four calls
//! matter: set a commit status, list / create / edit / delete the comments of a pull
//! request, and find the pull requests a commit belongs to. GitHub's and Gitea's calls
//! coincide (Gitea's REST API follows GitHub's); GitLab's differ in paths, names and states.
//!
//! The token is sent only in the one header each provider wants and never logged (it lives
//! in a [`Secret`]). Transient failures (connection errors, 429, 5xx) are retried here with
//! backoff, a few times; callers that must never block (the daemon) run these calls in the
//! background.

pub mod sticky;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use pbsync_target::Secret;

/// Errors of one call to a provider.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings cannot work (bad URL, bad repository name).
    #[error("{0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The request did not get an answer (after retries).
    #[error("{method} {path}: no answer from {provider}")]
    Transport {
        /// Provider.
        provider: Provider,
        /// Method.
        method: Method,
        /// Path below the API root (no token in it).
        path: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The provider answered with an error status.
    #[error("{method} {path}: {provider} answered {status}: {message}")]
    Status {
        /// Provider.
        provider: Provider,
        /// Method.
        method: Method,
        /// Path below the API root.
        path: String,
        /// HTTP status.
        status: StatusCode,
        /// The provider's message (its `message` field, or the start of the body).
        message: String,
    },
    /// The answer is not what the provider documents.
    #[error("{path}: unexpected answer from {provider}: {message}")]
    Decode {
        /// Provider.
        provider: Provider,
        /// Path below the API root.
        path: String,
        /// What did not fit.
        message: String,
    },
}

impl Error {
    /// True for failures worth trying again later (no answer, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            _ => false,
        }
    }
}

/// A Git hosting provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// GitHub (github.com or GitHub Enterprise Server).
    Github,
    /// Gitea (and Forgejo).
    Gitea,
    /// GitLab.
    Gitlab,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Github => "GitHub",
            Self::Gitea => "Gitea",
            Self::Gitlab => "GitLab",
        })
    }
}

impl Provider {
    /// The longest commit-status description the provider keeps (GitHub documents 140
    /// characters and Gitea follows it; GitLab's is 255).
    pub fn description_limit(self) -> usize {
        match self {
            Self::Github | Self::Gitea => 140,
            Self::Gitlab => 255,
        }
    }

    /// The longest comment body the provider takes, in characters (GitHub 65,536; GitLab
    /// 1,000,000; Gitea stores any length, and GitHub's limit keeps comments readable).
    pub fn comment_limit(self) -> usize {
        match self {
            Self::Github | Self::Gitea => 65_536,
            Self::Gitlab => 1_000_000,
        }
    }

    /// The API root when none is configured: github.com's and gitlab.com's, or for Gitea
    /// the host of the repository's URL (`https://git.example.com/org/repo.git` →
    /// `https://git.example.com/api/v1`).
    pub fn default_api_url(self, repo_url: Option<&str>) -> Option<String> {
        match self {
            Self::Github => Some("https://api.github.com".into()),
            Self::Gitlab => Some("https://gitlab.com/api/v4".into()),
            Self::Gitea => {
                let url = repo_url?;
                let (scheme, rest) = url.split_once("://")?;
                if scheme != "http" && scheme != "https" {
                    return None;
                }
                let host = rest.split('/').next()?;
                let host = host.rsplit('@').next()?;
                Some(format!("{scheme}://{host}/api/v1"))
            }
        }
    }
}

/// `owner/name` from a Git URL (`https://host/owner/name.git`, `git@host:owner/name.git`):
/// the repository a status or comment goes to when none is configured. GitLab's subgroups
/// make the whole path the project (`group/sub/name`).
pub fn repository_of_url(url: &str) -> Option<String> {
    let path = if let Some((_, rest)) = url.split_once("://") {
        rest.split_once('/')?.1
    } else {
        // scp-like syntax.
        url.split_once(':')?.1
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    (path.contains('/') && !path.starts_with('/')).then(|| path.to_string())
}

/// The state of a commit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Applying, or waiting for health.
    Pending,
    /// Applied (and healthy).
    Success,
    /// Invalid, failed, or unhealthy.
    Failure,
}

impl State {
    /// The word in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// One commit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    /// State.
    pub state: State,
    /// `pbsync/<instance>`.
    pub context: String,
    /// One line; cut to the provider's limit by [`Forge::set_status`].
    pub description: String,
    /// Link shown beside the status (the daemon's status page).
    pub target_url: Option<String>,
}

/// A comment of a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    /// The provider's id.
    pub id: u64,
    /// Markdown.
    pub body: String,
}

/// A pull request a commit belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Number (GitLab: the merge request's iid).
    pub number: u64,
    /// Merged.
    pub merged: bool,
    /// The merge (or squash) commit, once merged.
    pub merge_commit: Option<String>,
}

/// Where to talk to: the provider, its API root, the repository and the token.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Provider.
    pub provider: Provider,
    /// API root (`https://api.github.com`, `https://gitea.example.com/api/v1`,
    /// `https://gitlab.example.com/api/v4`).
    pub api_url: String,
    /// `owner/name` (GitLab: the project's path, or its numeric id).
    pub repository: String,
    /// The token.
    pub token: Secret,
    /// Timeout of one request.
    pub timeout: Duration,
}

/// A client of one repository on one provider.
#[derive(Debug, Clone)]
pub struct Forge {
    provider: Provider,
    api: String,
    /// The repository part of paths: `repos/owner/name` or `projects/<url-encoded path>`.
    repo_path: String,
    token: Secret,
    http: reqwest::Client,
    attempts: u32,
    backoff_base: Duration,
}

impl Forge {
    /// A client for `settings`.
    pub fn new(settings: &Settings) -> Result<Self, Error> {
        let api = settings.api_url.trim_end_matches('/').to_string();
        if !(api.starts_with("http://") || api.starts_with("https://")) {
            return Err(Error::Config(format!(
                "API URL {api:?} must start with http:// or https://"
            )));
        }
        let repo = settings.repository.trim_matches('/');
        let repo_path = match settings.provider {
            Provider::Github | Provider::Gitea => {
                let Some((owner, name)) = repo.split_once('/') else {
                    return Err(Error::Config(format!(
                        "repository {repo:?} is not owner/name"
                    )));
                };
                if owner.is_empty() || name.is_empty() || name.contains('/') {
                    return Err(Error::Config(format!(
                        "repository {repo:?} is not owner/name"
                    )));
                }
                format!("repos/{owner}/{name}")
            }
            Provider::Gitlab => {
                if repo.is_empty() {
                    return Err(Error::Config("the GitLab project is empty".into()));
                }
                format!("projects/{}", repo.replace('/', "%2F"))
            }
        };
        if settings.token.expose().is_empty() {
            return Err(Error::Config(format!(
                "the {} token is empty",
                settings.provider
            )));
        }
        let http = pbsync_target::http_client(settings.timeout).map_err(Error::Client)?;
        Ok(Self {
            provider: settings.provider,
            api,
            repo_path,
            token: settings.token.clone(),
            http,
            attempts: 3,
            backoff_base: Duration::from_millis(500),
        })
    }

    /// The provider.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Sets `status` on commit `sha`. The description is cut to the provider's limit.
    pub async fn set_status(&self, sha: &str, status: &CommitStatus) -> Result<(), Error> {
        let description = cut(&status.description, self.provider.description_limit());
        let body = match self.provider {
            Provider::Github | Provider::Gitea => json!({
                "state": status.state.as_str(),
                "context": status.context,
                "description": description,
                "target_url": status.target_url,
            }),
            Provider::Gitlab => json!({
                "state": match status.state {
                    State::Pending => "running",
                    State::Success => "success",
                    State::Failure => "failed",
                },
                "name": status.context,
                "description": description,
                "target_url": status.target_url,
            }),
        };
        let path = match self.provider {
            Provider::Github | Provider::Gitea => format!("{}/statuses/{sha}", self.repo_path),
            Provider::Gitlab => format!("{}/statuses/{sha}", self.repo_path),
        };
        self.call(Method::POST, &path, Some(body)).await.map(drop)
    }

    /// Every comment of pull request `number`, oldest first.
    pub async fn comments(&self, number: u64) -> Result<Vec<Comment>, Error> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let path = match self.provider {
                Provider::Github => format!(
                    "{}/issues/{number}/comments?per_page=100&page={page}",
                    self.repo_path
                ),
                // Gitea answers every comment at once (no paging on this call).
                Provider::Gitea => format!("{}/issues/{number}/comments", self.repo_path),
                Provider::Gitlab => format!(
                    "{}/merge_requests/{number}/notes?sort=asc&order_by=created_at&per_page=100&page={page}",
                    self.repo_path
                ),
            };
            let v = self.call(Method::GET, &path, None).await?;
            let items = v
                .as_array()
                .ok_or_else(|| self.decode(&path, "not a list"))?;
            for item in items {
                // GitLab lists system notes ("added 1 commit") among the comments.
                if item.get("system").and_then(Value::as_bool) == Some(true) {
                    continue;
                }
                let id = item.get("id").and_then(Value::as_u64);
                let body = item.get("body").and_then(Value::as_str);
                match (id, body) {
                    (Some(id), Some(body)) => out.push(Comment {
                        id,
                        body: body.to_string(),
                    }),
                    _ => return Err(self.decode(&path, "a comment without id or body")),
                }
            }
            if self.provider == Provider::Gitea || items.len() < 100 {
                break;
            }
            page += 1;
        }
        out.sort_by_key(|c| c.id);
        Ok(out)
    }

    /// Adds a comment to pull request `number`.
    pub async fn create_comment(&self, number: u64, body: &str) -> Result<u64, Error> {
        let path = match self.provider {
            Provider::Github | Provider::Gitea => {
                format!("{}/issues/{number}/comments", self.repo_path)
            }
            Provider::Gitlab => format!("{}/merge_requests/{number}/notes", self.repo_path),
        };
        let v = self
            .call(Method::POST, &path, Some(json!({ "body": body })))
            .await?;
        v.get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| self.decode(&path, "the new comment has no id"))
    }

    /// Replaces the body of comment `id` (of pull request `number`).
    pub async fn update_comment(&self, number: u64, id: u64, body: &str) -> Result<(), Error> {
        let (method, path) = match self.provider {
            Provider::Github | Provider::Gitea => (
                Method::PATCH,
                format!("{}/issues/comments/{id}", self.repo_path),
            ),
            Provider::Gitlab => (
                Method::PUT,
                format!("{}/merge_requests/{number}/notes/{id}", self.repo_path),
            ),
        };
        self.call(method, &path, Some(json!({ "body": body })))
            .await
            .map(drop)
    }

    /// Deletes comment `id` (of pull request `number`).
    pub async fn delete_comment(&self, number: u64, id: u64) -> Result<(), Error> {
        let path = match self.provider {
            Provider::Github | Provider::Gitea => {
                format!("{}/issues/comments/{id}", self.repo_path)
            }
            Provider::Gitlab => format!("{}/merge_requests/{number}/notes/{id}", self.repo_path),
        };
        self.call(Method::DELETE, &path, None).await.map(drop)
    }

    /// The pull requests commit `sha` belongs to (as head, or as their merge commit).
    pub async fn pulls_of_commit(&self, sha: &str) -> Result<Vec<PullRequest>, Error> {
        let path = match self.provider {
            Provider::Github => format!("{}/commits/{sha}/pulls", self.repo_path),
            Provider::Gitea => format!("{}/commits/{sha}/pull", self.repo_path),
            Provider::Gitlab => {
                format!("{}/repository/commits/{sha}/merge_requests", self.repo_path)
            }
        };
        let v = match self.call(Method::GET, &path, None).await {
            Ok(v) => v,
            // Gitea answers 404 for a commit of no pull request.
            Err(Error::Status { status, .. })
                if self.provider == Provider::Gitea && status == StatusCode::NOT_FOUND =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let items = match v {
            Value::Array(items) => items,
            one @ Value::Object(_) => vec![one],
            _ => return Err(self.decode(&path, "not a pull request or a list of them")),
        };
        items
            .iter()
            .map(|pr| self.pull_request(&path, pr))
            .collect()
    }

    fn pull_request(&self, path: &str, pr: &Value) -> Result<PullRequest, Error> {
        let field = |name: &str| pr.get(name).and_then(Value::as_str).map(str::to_string);
        let number = match self.provider {
            Provider::Gitlab => pr.get("iid"),
            _ => pr.get("number"),
        }
        .and_then(Value::as_u64)
        .ok_or_else(|| self.decode(path, "a pull request without a number"))?;
        let merged = match self.provider {
            Provider::Gitlab => field("state").as_deref() == Some("merged"),
            Provider::Gitea => pr.get("merged").and_then(Value::as_bool) == Some(true),
            Provider::Github => pr.get("merged_at").is_some_and(|m| !m.is_null()),
        };
        let merge_commit = match self.provider {
            Provider::Gitlab => field("merge_commit_sha").or_else(|| field("squash_commit_sha")),
            _ => field("merge_commit_sha"),
        };
        Ok(PullRequest {
            number,
            merged,
            merge_commit,
        })
    }

    fn decode(&self, path: &str, message: &str) -> Error {
        Error::Decode {
            provider: self.provider,
            path: strip_query(path).to_string(),
            message: message.into(),
        }
    }

    /// One call, retried with backoff on transient failures. The JSON answer (`null` for an
    /// empty one).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let mut rng = fastrand::Rng::new();
        let mut attempt = 0;
        loop {
            let result = self.call_once(method.clone(), path, body.as_ref()).await;
            match result {
                Err(e) if e.is_transient() && attempt + 1 < self.attempts => {
                    let wait = pbsync_target::pace::backoff(
                        attempt,
                        self.backoff_base,
                        Duration::from_secs(10),
                        &mut rng,
                    );
                    tracing::debug!(error = %pbsync_core::error_chain(&e), wait_ms = wait.as_millis() as u64, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let url = format!("{}/{path}", self.api);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header(reqwest::header::ACCEPT, "application/json");
        req = match self.provider {
            Provider::Github => req
                .bearer_auth(self.token.expose())
                .header("X-GitHub-Api-Version", "2022-11-28"),
            Provider::Gitea => req.header(
                reqwest::header::AUTHORIZATION,
                format!("token {}", self.token.expose()),
            ),
            Provider::Gitlab => req.header("PRIVATE-TOKEN", self.token.expose()),
        };
        if let Some(body) = body {
            req = req.json(body);
        }
        let shown = strip_query(path).to_string();
        let transport = |source: reqwest::Error| Error::Transport {
            provider: self.provider,
            method: method.clone(),
            path: shown.clone(),
            source: source.without_url(),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let text = resp.text().await.map_err(transport)?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .or_else(|| v.get("error"))
                        .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                })
                .unwrap_or_else(|| cut(text.trim(), 200));
            return Err(Error::Status {
                provider: self.provider,
                method,
                path: shown,
                status,
                message,
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| Error::Decode {
            provider: self.provider,
            path: shown,
            message: format!("not JSON: {e}"),
        })
    }
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// `text` cut to at most `limit` characters, with `…` when cut.
pub fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let mut out: String = text.chars().take(limit.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_is_read_from_the_git_url() {
        assert_eq!(
            repository_of_url("https://git.example.com/platform/bundles.git").as_deref(),
            Some("platform/bundles")
        );
        assert_eq!(
            repository_of_url("git@github.com:platform/bundles.git").as_deref(),
            Some("platform/bundles")
        );
        assert_eq!(
            repository_of_url("https://gitlab.example.com/group/sub/bundles").as_deref(),
            Some("group/sub/bundles")
        );
        assert_eq!(repository_of_url("/srv/repo"), None);
    }

    #[test]
    fn gitea_s_api_lives_on_the_repository_s_host() {
        assert_eq!(
            Provider::Gitea
                .default_api_url(Some("http://pbsync:tok@127.0.0.1:3000/org/repo.git"))
                .as_deref(),
            Some("http://127.0.0.1:3000/api/v1")
        );
        assert_eq!(Provider::Gitea.default_api_url(Some("/srv/repo")), None);
        assert_eq!(
            Provider::Github.default_api_url(None).as_deref(),
            Some("https://api.github.com")
        );
    }

    #[test]
    fn descriptions_are_cut_to_the_provider_s_limit() {
        let long = "x".repeat(300);
        let cut140 = cut(&long, Provider::Gitea.description_limit());
        assert_eq!(cut140.chars().count(), 140);
        assert!(cut140.ends_with('…'));
        assert_eq!(cut("short", 140), "short");
        assert_eq!(
            cut(&long, Provider::Gitlab.description_limit())
                .chars()
                .count(),
            255
        );
    }

    #[test]
    fn a_repository_that_is_not_owner_and_name_is_a_configuration_error() {
        let s = |provider, repository: &str| Settings {
            provider,
            api_url: "http://127.0.0.1:1".into(),
            repository: repository.into(),
            token: Secret::new("t"),
            timeout: Duration::from_secs(1),
        };
        assert!(Forge::new(&s(Provider::Github, "justname")).is_err());
        assert!(Forge::new(&s(Provider::Gitea, "a/b/c")).is_err());
        assert!(Forge::new(&s(Provider::Gitlab, "group/sub/name")).is_ok());
        let mut empty = s(Provider::Gitea, "a/b");
        empty.token = Secret::new("");
        assert!(Forge::new(&empty).is_err());
    }
}
