//! The test Gitea server (`scripts/gitea`): finding it, the rule for the tests that need it,
//! and the calls of its REST API and Git remote that tests make (repositories, pushes, pull
//! requests, webhooks, commit statuses, comments).
//!
//! The rule, as for the cluster: a test that needs Gitea calls [`require`]. Without a Gitea
//! that answers, the test fails, naming the way to start one; only
//! `PBSYNC_TEST_SKIP_GITEA=1` (which CI never sets) makes it print `SKIPPED` and return.
//!
//! Every call blocks (on a thread and runtime of its own, so it works from synchronous tests
//! and from inside a tokio runtime alike; on a current-thread runtime the test's other tasks
//! wait meanwhile), and the helpers panic with the request, status and body when Gitea
//! answers anything but success ([`Gitea::call`] returns the status instead). The endpoints
//! are those of Gitea's own OpenAPI document (`templates/swagger/v1_json.tmpl` of the module
//! `scripts/gitea` builds).
//!
//! ```no_run
//! use pbsync_devkit::testkit::gitea;
//! let Some(gitea) = gitea::require("my_test") else { return };
//! let repo = gitea.create_repo("my_test");
//! // ... commit on `main` and `feature` in a local repository at `local` ...
//! # let local = std::path::Path::new(".");
//! gitea.push(&repo, local, "main");
//! gitea.push(&repo, local, "feature");
//! let number = gitea.create_pull_request(&repo, "feature", "main", "a change");
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

/// The variable that lets Gitea tests skip when there is no Gitea.
pub const SKIP_VAR: &str = "PBSYNC_TEST_SKIP_GITEA";
/// The server's base URL (`http://127.0.0.1:PORT`), as `scripts/gitea up` exports it.
pub const URL_VAR: &str = "PBSYNC_GITEA_URL";
/// The file holding the admin's API token.
pub const TOKEN_FILE_VAR: &str = "PBSYNC_GITEA_TOKEN_FILE";
/// The server's state dir (its database, log and repositories).
pub const DIR_VAR: &str = "PBSYNC_GITEA_DIR";
/// The admin user `scripts/gitea up` creates; it owns the repositories tests create.
pub const ADMIN_USER: &str = "pbsync-admin";

/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Gitea's background work after a push or a new pull request (the branch table,
/// the mergeability check) may take before a call that depends on it gives up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `scripts/gitea` of this workspace.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gitea")
}

/// A running test Gitea: its base URL and the admin's token.
#[derive(Clone)]
pub struct Gitea {
    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub url: String,
    token: String,
    /// The state dir, when known: its database holds the webhook deliveries.
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for Gitea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gitea")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("dir", &self.dir)
            .finish()
    }
}

/// A repository created on the test Gitea for one test.
#[derive(Clone)]
pub struct RepoHandle {
    /// Its owner ([`ADMIN_USER`]).
    pub owner: String,
    /// Its name, unique per test run.
    pub name: String,
    /// Its Git remote without credentials (`http://127.0.0.1:PORT/owner/name.git`), e.g. for a
    /// daemon given the token separately.
    pub url: String,
    /// Its Git remote with the admin's credentials in it
    /// (`http://pbsync-admin:TOKEN@127.0.0.1:PORT/owner/name.git`), to push to.
    pub clone_url: String,
    /// Its API path below `/api/v1`: `/repos/owner/name`.
    pub api_path: String,
}

impl std::fmt::Debug for RepoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoHandle")
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("url", &self.url)
            .field("api_path", &self.api_path)
            .finish_non_exhaustive()
    }
}

/// The test Gitea named by `PBSYNC_GITEA_URL` and `PBSYNC_GITEA_TOKEN_FILE`, else the one
/// `scripts/gitea env` prints when its server is up and healthy; looked up once per test
/// binary. `Err` says why there is none. Whether it answers is [`require`]'s question.
pub fn find() -> Result<Gitea, String> {
    static FOUND: OnceLock<Result<Gitea, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let (url, token_file, dir) = if let Some(url) = from_env(URL_VAR) {
                let token_file = from_env(TOKEN_FILE_VAR)
                    .ok_or_else(|| format!("{URL_VAR} is set but {TOKEN_FILE_VAR} is not"))?;
                (url, token_file, from_env(DIR_VAR))
            } else {
                let vars = script_env()?;
                let get = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                let (Some(url), Some(token_file)) = (get(URL_VAR), get(TOKEN_FILE_VAR)) else {
                    return Err("`scripts/gitea env` printed no URL and token file".into());
                };
                (url.clone(), token_file.clone(), get(DIR_VAR).cloned())
            };
            let token = std::fs::read_to_string(&token_file)
                .map_err(|e| format!("cannot read the token file {token_file}: {e}"))?
                .trim()
                .to_string();
            Ok(Gitea {
                url: url.trim_end_matches('/').to_string(),
                token,
                dir: dir.map(PathBuf::from),
            })
        })
        .clone()
}

/// The `KEY=VALUE` pairs of the export line `scripts/gitea env` prints when its server is
/// healthy (`printf %q` leaves the paths and URLs it prints unquoted).
fn script_env() -> Result<Vec<(String, String)>, String> {
    let out = Command::new(script())
        .arg("env")
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run scripts/gitea env: {e}"))?;
    if !out.status.success() {
        return Err("`scripts/gitea env` finds none running".into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("export "))
        .ok_or("`scripts/gitea env` printed no export line")?;
    Ok(line
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['"', '\'']).to_string()))
        .collect())
}

/// The test Gitea, answering and accepting its token, for the test `test`. Without one the
/// test fails (this panics, saying how to start it), unless `PBSYNC_TEST_SKIP_GITEA=1`: then
/// it prints `SKIPPED <test>: ...` and returns `None`, and the test returns at once.
///
/// Whether Gitea answers is asked once per test binary.
pub fn require(test: &str) -> Option<Gitea> {
    static ANSWERS: OnceLock<Result<Gitea, String>> = OnceLock::new();
    let found = ANSWERS.get_or_init(|| {
        let start = "start it with `eval \"$(scripts/gitea up)\"`";
        let gitea = find().map_err(|why| format!("no test Gitea ({why}): {start}"))?;
        let probe = gitea.clone();
        let answer = super::on_own_runtime(async move {
            Session::new(probe)
                .try_call(reqwest::Method::GET, "/user", None)
                .await
        });
        match answer {
            Ok((200, user)) if user["login"] == ADMIN_USER => Ok(gitea),
            Ok((status, body)) => Err(format!(
                "the test Gitea at {} does not accept its token (GET /user: {status} {body}): restart it with `scripts/gitea down` and `eval \"$(scripts/gitea up)\"`",
                gitea.url
            )),
            Err(e) => Err(format!(
                "the test Gitea at {} does not answer ({e}): {start}",
                gitea.url
            )),
        }
    });
    match found {
        Ok(gitea) => Some(gitea.clone()),
        Err(why) => {
            if std::env::var_os(SKIP_VAR).is_none_or(|v| v != "1") {
                panic!("{test}: {why}; to skip the Gitea tests on purpose, set {SKIP_VAR}=1");
            }
            eprintln!("SKIPPED {test}: {why} ({SKIP_VAR}=1)");
            None
        }
    }
}

impl Gitea {
    /// The admin's API token (scope `all`); also the password of Git over HTTP.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The URL of the API path `path` (`/repos/...`, below `/api/v1`).
    pub fn api_url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    /// One API request with the token; returns the status and the JSON body (`Null` when
    /// empty, a string when not JSON). For the calls the helpers below do not cover.
    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let path = path.to_string();
        self.session(async move |s| s.call(method, &path, body).await)
    }

    /// [`call`](Self::call) that demands a 2xx answer; returns its body.
    pub fn call_ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let path = path.to_string();
        self.session(async move |s| s.call_ok(method, &path, body).await)
    }

    /// Creates an empty public repository owned by [`ADMIN_USER`] whose name is `test`'s
    /// letters and digits plus a random suffix, unique per test run (default branch `main`;
    /// the first push creates it).
    pub fn create_repo(&self, test: &str) -> RepoHandle {
        let short: String = test
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(40)
            .collect();
        let name = format!("{short}-{:06x}", fastrand::u32(..0xff_ffff)).to_ascii_lowercase();
        let created = self.call_ok(
            reqwest::Method::POST,
            "/user/repos",
            Some(json!({"name": name, "private": false, "auto_init": false, "default_branch": "main"})),
        );
        let owner = created["owner"]["login"]
            .as_str()
            .unwrap_or_else(|| panic!("gitea: created repository without owner: {created}"))
            .to_string();
        let url = format!("{}/{owner}/{name}.git", self.url);
        let clone_url = url.replacen("://", &format!("://{ADMIN_USER}:{}@", self.token), 1);
        RepoHandle {
            api_path: format!("/repos/{owner}/{name}"),
            owner,
            name,
            url,
            clone_url,
        }
    }

    /// Pushes the local branch `branch` of the repository at `local` to the branch of the
    /// same name of `repo`, with the real `git push` over smart HTTP; then waits until
    /// Gitea's API shows the branch at the pushed commit (Gitea records pushes in the
    /// background), so that pull requests and statuses on it can follow at once. Returns the
    /// pushed commit's id.
    pub fn push(&self, repo: &RepoHandle, local: &Path, branch: &str) -> String {
        let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
        let out = Command::new("git")
            .arg("-C")
            .arg(local)
            .args(["-c", "credential.helper=", "push", "--quiet"])
            .arg(&repo.clone_url)
            .arg(&refspec)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .unwrap_or_else(|e| panic!("gitea: cannot run git push: {e}"));
        assert!(
            out.status.success(),
            "gitea: git push {refspec} to {} failed: {}{}",
            repo.url,
            self.redact(&String::from_utf8_lossy(&out.stdout)),
            self.redact(&String::from_utf8_lossy(&out.stderr)),
        );
        let sha = Command::new("git")
            .arg("-C")
            .arg(local)
            .args(["rev-parse", &format!("refs/heads/{branch}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| panic!("gitea: git rev-parse {branch} failed"));
        let path = format!("{}/branches/{branch}", repo.api_path);
        let what = format!("branch {branch} at {sha}");
        let want = sha.clone();
        self.session(async move |s| {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            loop {
                let (status, body) = s.call(reqwest::Method::GET, &path, None).await;
                if status == 200 && body["commit"]["id"] == want.as_str() {
                    return;
                }
                s.wait_until(deadline, &what).await;
            }
        });
        sha
    }

    /// Opens a pull request of `head` into `base` (branches of `repo`); returns its number.
    pub fn create_pull_request(
        &self,
        repo: &RepoHandle,
        head: &str,
        base: &str,
        title: &str,
    ) -> u64 {
        let created = self.call_ok(
            reqwest::Method::POST,
            &format!("{}/pulls", repo.api_path),
            Some(json!({"head": head, "base": base, "title": title})),
        );
        created["number"]
            .as_u64()
            .unwrap_or_else(|| panic!("gitea: created pull request without number: {created}"))
    }

    /// The pull requests of `repo`, open and closed, newest first.
    pub fn pull_requests(&self, repo: &RepoHandle) -> Vec<Value> {
        self.list(&format!("{}/pulls?state=all", repo.api_path))
    }

    /// Merges pull request `number` of `repo` with a merge commit; returns the merge
    /// commit's id. Gitea checks a new pull request's mergeability in the background and
    /// refuses to merge (405) until it has: this retries for up to 30 seconds.
    pub fn merge_pull_request(&self, repo: &RepoHandle, number: u64) -> String {
        let path = format!("{}/pulls/{number}", repo.api_path);
        self.session(async move |s| {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            let merge = format!("{path}/merge");
            loop {
                let (status, body) = s
                    .call(reqwest::Method::POST, &merge, Some(json!({"do": "merge"})))
                    .await;
                match status {
                    200..=299 => break,
                    405 => {
                        s.wait_until(
                            deadline,
                            &format!("merge of {path} (last: {status} {body})"),
                        )
                        .await;
                    }
                    _ => panic!("gitea: POST {merge}: {status} {body}"),
                }
            }
            let merged = s.call_ok(reqwest::Method::GET, &path, None).await;
            merged["merge_commit_sha"]
                .as_str()
                .unwrap_or_else(|| {
                    panic!("gitea: merged pull request without merge commit: {merged}")
                })
                .to_string()
        })
    }

    /// Adds an active webhook of type `gitea` to `repo` that POSTs JSON to `url` for the
    /// `events` (`push`, `pull_request`, ...), signed with `secret` (HMAC-SHA256 of the body
    /// in `X-Gitea-Signature`); returns the hook's id.
    pub fn add_webhook(&self, repo: &RepoHandle, url: &str, secret: &str, events: &[&str]) -> u64 {
        let created = self.call_ok(
            reqwest::Method::POST,
            &format!("{}/hooks", repo.api_path),
            Some(json!({
                "type": "gitea",
                "active": true,
                "events": events,
                "config": {"url": url, "content_type": "json", "secret": secret},
            })),
        );
        created["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("gitea: created webhook without id: {created}"))
    }

    /// The statuses of commit `sha` of `repo`, newest first (every status ever set, not only
    /// the latest per context).
    pub fn commit_statuses(&self, repo: &RepoHandle, sha: &str) -> Vec<Value> {
        self.list(&format!("{}/statuses/{sha}", repo.api_path))
    }

    /// The comments of issue or pull request `number` of `repo`, oldest first.
    pub fn issue_comments(&self, repo: &RepoHandle, number: u64) -> Vec<Value> {
        self.list(&format!("{}/issues/{number}/comments", repo.api_path))
    }

    /// What Gitea delivered for webhook `hook_id` of `repo`, oldest first: one object per
    /// delivery with `uuid`, `event_type`, `is_delivered`, `is_succeed`, `request_content`
    /// and `response_content` (both JSON text: headers and body sent, the receiver's status
    /// and answer). Gitea's API has no call for them (its web UI shows them), so this reads
    /// its database with the `sqlite3` shell; for diagnosing a webhook test. Panics if the
    /// state dir is not known (`PBSYNC_GITEA_DIR`) or `sqlite3` is missing.
    pub fn hook_deliveries(&self, repo: &RepoHandle, hook_id: u64) -> Vec<Value> {
        let dir = self
            .dir
            .as_ref()
            .unwrap_or_else(|| panic!("gitea: hook_deliveries needs {DIR_VAR}"));
        // The hook must be this repository's: a hook id alone would read any repository's.
        let hook = self.call_ok(
            reqwest::Method::GET,
            &format!("{}/hooks/{hook_id}", repo.api_path),
            None,
        );
        assert_eq!(hook["id"], hook_id, "gitea: hook {hook_id}: {hook}");
        let out = Command::new("sqlite3")
            .args(["-readonly", "-json", "-cmd", ".timeout 5000"])
            .arg(dir.join("data/gitea.db"))
            .arg(format!(
                "SELECT id, uuid, event_type, is_delivered, is_succeed, delivered, \
                 request_content, response_content FROM hook_task \
                 WHERE hook_id = {hook_id} ORDER BY id"
            ))
            .output()
            .unwrap_or_else(|e| {
                panic!("gitea: cannot run sqlite3 (scripts/deps installs it): {e}")
            });
        assert!(
            out.status.success(),
            "gitea: sqlite3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("gitea: sqlite3 printed no JSON array: {e}"))
    }

    /// The last `lines` lines of the server's log (when its state dir is known), for a
    /// failing test's message.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(self.dir.as_deref(), lines)
    }

    /// A GET of a whole list.
    fn list(&self, path: &str) -> Vec<Value> {
        let path = path.to_string();
        self.session(async move |s| s.list(&path).await)
    }

    /// Runs `f` with a [`Session`] on a thread and runtime of its own, and waits for it.
    fn session<T: Send + 'static, F>(&self, f: impl FnOnce(Session) -> F + Send + 'static) -> T
    where
        F: Future<Output = T> + Send,
    {
        let gitea = self.clone();
        super::on_own_runtime(async move { f(Session::new(gitea)).await })
    }

    /// `text` with the token blanked out (git may print the remote URL).
    fn redact(&self, text: &str) -> String {
        text.replace(&self.token, "<token>")
    }
}

/// The requests of one call of a [`Gitea`] helper, on the runtime that call runs on.
struct Session {
    gitea: Gitea,
    client: reqwest::Client,
}

impl Session {
    fn new(gitea: Gitea) -> Self {
        // rustls needs a process-wide crypto provider even for plain HTTP; the first caller
        // installs it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A client per session: a client's pooled connections belong to the runtime it was
        // used on, and this one ends with the call. No proxy: Gitea is on loopback.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("gitea: http client");
        Self { gitea, client }
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self
            .client
            .request(method, self.gitea.api_url(path))
            .header("Authorization", format!("token {}", self.gitea.token))
            .header("Accept", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok((status, value))
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let what = format!("{method} {path}");
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("gitea: {what}: {e}"))
    }

    async fn call_ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let what = format!("{method} {path}");
        let (status, answer) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "gitea: {what}: {status} {answer}"
        );
        answer
    }

    /// A GET of a list, all of it (Gitea pages lists; 50 is its largest page).
    async fn list(&self, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut all = Vec::new();
        for page in 1.. {
            let answer = self
                .call_ok(
                    reqwest::Method::GET,
                    &format!("{path}{sep}limit=50&page={page}"),
                    None,
                )
                .await;
            let Value::Array(items) = answer else {
                panic!("gitea: GET {path}: not a list: {answer}");
            };
            let done = items.len() < 50;
            all.extend(items);
            if done {
                break;
            }
        }
        all
    }

    /// Sleeps before the next attempt of a wait for `what`; panics (with the end of Gitea's
    /// log) once `deadline` has passed.
    async fn wait_until(&self, deadline: Instant, what: &str) {
        assert!(
            Instant::now() < deadline,
            "gitea: no {what} after {SETTLE_TIMEOUT:?}; the end of its log:\n{}",
            log_tail(self.gitea.dir.as_deref(), 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `lines` lines of the log of the Gitea whose state dir is `dir`.
fn log_tail(dir: Option<&Path>, lines: usize) -> String {
    let Some(text) = dir.and_then(|d| std::fs::read_to_string(d.join("log/gitea.log")).ok()) else {
        return String::from("(no Gitea log: its state dir is not known)");
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
