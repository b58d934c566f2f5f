//! The daemon's configuration: the YAML file (`pbsync run --config FILE`) and the flags of the
//! same names, read once, validated once (every problem with `file:line`, or the flag that
//! set it), and handed out as per-module sub-configs. Flags override the file.
//!
//! Secrets (Git token and password, webhook secret, Palette API key) are only ever read from
//! files or the environment; the values never reach a log line or a `Debug` print.

use std::collections::BTreeMap;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use pbsync_core::model::yaml::{self, PathSegment};

use crate::source::verify::Verifier;

/// Errors of reading and validating the configuration; all of them exit with code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read configuration file {path}")]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid; every problem is listed.
    #[error("invalid configuration:\n  {}", .problems.join("\n  "))]
    Invalid {
        /// `file:line: key: message` or `--flag: message`, one per problem.
        problems: Vec<String>,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use crate::source::remote::GitAuth;
use pbsync_core::ownership::DEFAULT_INSTANCE;
use pbsync_core::plan::Cascade;
pub use pbsync_target::Secret;

/// Parses a duration like `30s`, `500ms`, `10m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a duration like 30s, 500ms, 10m or 1h");
    let n: u64 = num.parse().map_err(|_| bad())?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(bad()),
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Plain lines (journald adds the timestamp); coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting, as written in the file or given as a flag; `None`: not set there. The
/// file's keys and the flags have the same names (`interval:` and `--interval`).
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Git repository: a local path, file://, https:// or ssh:// (git@host:path) URL
    #[arg(long)]
    pub repo: Option<String>,
    /// Branch, tag or commit to follow (default: the remote's HEAD, or HEAD of a local path)
    #[arg(long = "ref")]
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Subdirectory of the repository holding the manifests
    #[arg(long)]
    pub path: Option<String>,
    /// HTTPS: file holding a token (sent as the password; env PBSYNC_GIT_TOKEN also works)
    #[arg(long)]
    pub git_token_file: Option<PathBuf>,
    /// HTTPS basic auth: user name (with --git-password-file)
    #[arg(long)]
    pub git_username: Option<String>,
    /// HTTPS basic auth: file holding the password
    #[arg(long)]
    pub git_password_file: Option<PathBuf>,
    /// SSH: private key file
    #[arg(long)]
    pub git_ssh_key_file: Option<PathBuf>,
    /// SSH: known_hosts file; the server's host key must be listed (default ~/.ssh/known_hosts)
    #[arg(long)]
    pub git_known_hosts_file: Option<PathBuf>,
    /// Fetch only the tip commit; the clone deepens itself when a leaving bundle's last
    /// version lies further back
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub git_shallow: Option<bool>,
    /// Directory for the persistent clone (systemd StateDirectory)
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Poll interval (jittered by up to 10%); 0 disables polling
    #[arg(long)]
    pub interval: Option<String>,
    /// Full resync interval: apply even when Git did not change, to correct drift
    #[arg(long)]
    pub resync_interval: Option<String>,
    /// Watch a local repository's refs so a commit is seen at once
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub watch: Option<bool>,
    /// Address of the HTTP endpoints (/healthz, /readyz, /metrics, /webhook, /reconcile)
    #[arg(long)]
    pub listen: Option<String>,
    /// File holding the webhook HMAC secret (env PBSYNC_WEBHOOK_SECRET also works)
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Header carrying a generic hex HMAC-SHA256 of the body (besides X-Hub-Signature-256)
    #[arg(long)]
    pub webhook_header: Option<String>,
    /// Longest one reconcile may take before it is abandoned and retried
    #[arg(long)]
    pub reconcile_timeout: Option<String>,
    /// How long a pass waits for one deletion wave's objects to be gone (finalizers) before
    /// the next wave; past it the pass stops and the next one continues
    #[arg(long)]
    pub deletion_timeout: Option<String>,
    /// Longest a graceful stop may wait for the current reconcile
    #[arg(long)]
    pub shutdown_timeout: Option<String>,
    /// First retry delay after a retryable failure (doubles up to --backoff-max)
    #[arg(long)]
    pub backoff_min: Option<String>,
    /// Longest retry delay
    #[arg(long)]
    pub backoff_max: Option<String>,
    /// Elect a leader on a coordination.k8s.io Lease (kube target only)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: Option<bool>,
    /// Name of the Lease (default pbsync-<instance>)
    #[arg(long)]
    pub lease_name: Option<String>,
    /// Namespace of the Lease (default: --status-namespace)
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// How long a lease holds without renewal; failover happens within it
    #[arg(long)]
    pub lease_duration: Option<String>,
    /// Identity of this daemon in the Lease (default: hostname-pid)
    #[arg(long)]
    pub leader_id: Option<String>,
    /// Log format
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Target: dir:PATH or kube; cluster profiles go to Palette with --palette-url
    #[arg(long)]
    pub target: Option<String>,
    /// Name of this pbsync instance
    #[arg(long)]
    pub instance: Option<String>,
    /// Take over objects that exist but were not created by pbsync
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub adopt: Option<bool>,
    /// Who performs reference-counted deletion of dependents (client or server)
    #[arg(long)]
    pub cascade: Option<Cascade>,
    /// Mass-deletion guard: percentage of managed objects
    #[arg(long)]
    pub guard_percent: Option<u8>,
    /// Mass-deletion guard: minimum number of objects
    #[arg(long)]
    pub guard_min: Option<usize>,
    /// Apply plans that exceed the mass-deletion guard
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub allow_mass_deletion: Option<bool>,
    /// Serve the read-only health page on `/` of the listen address
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub ui: Option<bool>,
    /// Read the hub through watch-fed mirrors (kube target; default true): a pass with
    /// nothing to do sends no request
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub watch_cache: Option<bool>,
    /// Kubeconfig file (kube target)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (kube target)
    #[arg(long)]
    pub context: Option<String>,
    /// Namespace of the status ConfigMap (kube target)
    #[arg(long)]
    pub status_namespace: Option<String>,
    /// Requests per second to the API server
    #[arg(long)]
    pub kube_qps: Option<f64>,
    /// Token bucket size
    #[arg(long)]
    pub kube_burst: Option<u32>,
    /// Requests in flight at once
    #[arg(long)]
    pub kube_concurrency: Option<usize>,
    /// Dry-run every new object before the first write (all or nothing per commit)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub preflight: Option<bool>,
    /// Palette API base URL; cluster profiles go there
    #[arg(long)]
    pub palette_url: Option<String>,
    /// File holding the Palette API key (default: env PALETTE_API_KEY)
    #[arg(long)]
    pub palette_api_key_file: Option<PathBuf>,
    /// Palette project uid
    #[arg(long)]
    pub palette_project_uid: Option<String>,
    /// Timeout of one Palette request
    #[arg(long)]
    pub palette_timeout: Option<String>,
    /// Talking back to the Git host (file only): commit statuses and answers on merged pull
    /// requests
    #[arg(skip)]
    pub forge: Option<ForgeSettings>,
    /// Signed commits only (the file's `verify: {mode: head, keys: [...]}`; the flag is
    /// --verify-keys)
    #[arg(skip)]
    pub verify: Option<VerifySettings>,
    /// Apply only commits signed by a key in FILE: an OpenPGP public key (armored or binary)
    /// or an SSH allowed-signers file; repeatable (the file's `verify.keys`, mode head)
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub verify_keys: Option<Vec<PathBuf>>,
    /// Notifications (file only): CloudEvents webhooks and Slack incoming webhooks told about
    /// pass outcomes and health changes
    #[arg(skip)]
    pub notifications: Option<Vec<NotificationSettings>>,
}

/// `verify:` of the file: which commits must be signed, and by which keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySettings {
    /// What is verified (default `head`).
    #[serde(default)]
    pub mode: VerifyMode,
    /// Key files: OpenPGP public keys or keyrings, or SSH allowed-signers files.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
}

/// What `verify:` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// The signature of the commit being applied (Flux's `verify.mode: HEAD`); the commits
    /// before it are not checked.
    #[default]
    #[serde(alias = "HEAD")]
    Head,
}

/// The `forge:` section: where commit statuses and pull-request answers go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ForgeSettings {
    /// github, gitlab or gitea.
    pub provider: crate::forge::Provider,
    /// API root (default: github.com's, gitlab.com's, or Gitea's on the repository's host).
    pub api_url: Option<String>,
    /// owner/name, or GitLab's project path (default: from the repository URL).
    pub repository: Option<String>,
    /// File holding the token (default: env PBSYNC_FORGE_TOKEN).
    pub token_file: Option<PathBuf>,
    /// Set a commit status `pbsync/<instance>` on each commit applied (default true).
    pub commit_status: Option<bool>,
    /// Report `success` only once the commit's objects are healthy (default true).
    pub wait_for_health: Option<bool>,
    /// The link of each status (the daemon's status page).
    pub status_url: Option<String>,
    /// Answer on the merged pull request of each commit applied (default true).
    pub answer_pull_requests: Option<bool>,
}

/// One entry of the `notifications:` list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NotificationSettings {
    /// Names it in logs (default `<kind>-<position>`).
    pub name: Option<String>,
    /// cloudevents or slack.
    pub kind: crate::daemon::notify::Kind,
    /// The endpoint, when it is no secret (not for Slack, whose URL is its credential).
    pub url: Option<String>,
    /// File holding the endpoint.
    pub url_file: Option<PathBuf>,
    /// cloudevents: file holding the key of the body's HMAC-SHA256 signature.
    pub secret_file: Option<PathBuf>,
    /// failures (default), changes or all.
    pub on: Option<crate::daemon::notify::Filter>,
    /// At most one notification per this long (default 10s; 0: no limit).
    pub min_interval: Option<String>,
    /// The same failure is told again after this long (default 1h; 0: never).
    pub repeat_interval: Option<String>,
}

macro_rules! overlay {
    ($base:expr, $over:expr, $($field:ident),* $(,)?) => {
        $( if $over.$field.is_some() { $base.$field = $over.$field.clone(); } )*
    };
}

impl Settings {
    /// `self` with every field `flags` sets replaced.
    #[must_use]
    pub fn overlaid(mut self, flags: &Self) -> Self {
        overlay!(
            self,
            flags,
            repo,
            reference,
            path,
            git_token_file,
            git_username,
            git_password_file,
            git_ssh_key_file,
            git_known_hosts_file,
            git_shallow,
            state_dir,
            interval,
            resync_interval,
            watch,
            listen,
            webhook_secret_file,
            webhook_header,
            reconcile_timeout,
            deletion_timeout,
            shutdown_timeout,
            backoff_min,
            backoff_max,
            leader_elect,
            lease_name,
            lease_namespace,
            lease_duration,
            leader_id,
            log_format,
            target,
            instance,
            adopt,
            cascade,
            guard_percent,
            guard_min,
            allow_mass_deletion,
            ui,
            watch_cache,
            kubeconfig,
            context,
            status_namespace,
            kube_qps,
            kube_burst,
            kube_concurrency,
            preflight,
            palette_url,
            palette_api_key_file,
            palette_project_uid,
            palette_timeout,
            forge,
            verify,
            verify_keys,
            notifications,
        );
        self
    }
}

/// Keys whose values are durations.
const DURATION_KEYS: &[&str] = &[
    "interval",
    "resync-interval",
    "reconcile-timeout",
    "shutdown-timeout",
    "deletion-timeout",
    "backoff-min",
    "backoff-max",
    "lease-duration",
    "palette-timeout",
];

/// Duration keys of each `notifications:` entry.
const NOTIFICATION_DURATION_KEYS: &[&str] = &["min-interval", "repeat-interval"];

/// Where each key of the file was written, to put `file:line` on problems.
#[derive(Debug, Clone, Default)]
struct Origins {
    file: Option<PathBuf>,
    /// Top-level keys by name; the entries of a list of mappings as `key[i]`, and their keys
    /// as `key[i].field`.
    lines: BTreeMap<String, u32>,
    /// Keys a flag set (they win over the file).
    flags: Vec<&'static str>,
}

impl Origins {
    fn at(&self, key: &'static str) -> String {
        let flag = format!("--{key}");
        if self.flags.contains(&key) {
            return flag;
        }
        match (&self.file, self.lines.get(key)) {
            (Some(f), Some(line)) => format!("{}:{line}: {key}", f.display()),
            _ => flag,
        }
    }

    /// Where the nested key `path` of the file (`verify.keys[0]`, recorded by `read_file`)
    /// was written, or `--flag` when the flag set it.
    fn at_nested(&self, path: &str, flag: &'static str) -> String {
        if self.flags.contains(&flag) {
            return format!("--{flag}");
        }
        match (&self.file, self.lines.get(path)) {
            (Some(f), Some(line)) => format!("{}:{line}: {path}", f.display()),
            (Some(f), None) => format!("{}: {path}", f.display()),
            _ => format!("--{flag}"),
        }
    }

    /// Where `field` of entry `index` of the file-only list `list` was written (`field`
    /// empty: the entry), falling back to the entry's line, then the list's.
    fn at_entry(&self, list: &str, index: usize, field: &str) -> String {
        let entry = format!("{list}[{index}]");
        let name = if field.is_empty() {
            entry.clone()
        } else {
            format!("{entry}.{field}")
        };
        let line = [name.as_str(), entry.as_str(), list]
            .iter()
            .find_map(|k| self.lines.get(*k));
        match (&self.file, line) {
            (Some(f), Some(line)) => format!("{}:{line}: {name}", f.display()),
            _ => name,
        }
    }
}

/// Reads `path` into settings, with the line of every key.
fn read_file(path: &Path) -> Result<(Settings, BTreeMap<String, u32>)> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFailed {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |line: u32, message: String| Error::Invalid {
        problems: vec![format!("{}:{line}: {message}", path.display())],
    };
    let docs = yaml::load_all(&text, yaml::Limits::default())
        .map_err(|e| invalid(e.line, e.message.clone()))?;
    let Some(doc) = docs.into_iter().next() else {
        return Ok((Settings::default(), BTreeMap::new()));
    };
    let mut lines = BTreeMap::new();
    if let yaml::Value::Map(entries) = &doc.root.value {
        for (k, v) in entries {
            lines.insert(k.clone(), v.line);
            if let yaml::Value::Seq(items) = &v.value {
                for (i, item) in items.iter().enumerate() {
                    lines.insert(format!("{k}[{i}]"), item.line);
                    if let yaml::Value::Map(fields) = &item.value {
                        for (f, fv) in fields {
                            lines.insert(format!("{k}[{i}].{f}"), fv.line);
                        }
                    }
                }
            }
        }
        // The one nested setting: each key file's line, for the problems it may have.
        if let Some(keys) = doc.root.get("verify").and_then(|v| v.get("keys")) {
            lines.insert("verify.keys".into(), keys.line);
            for i in 0.. {
                let Some(key) = keys.at(i) else { break };
                lines.insert(format!("verify.keys[{i}]"), key.line);
            }
        }
    } else if doc.root.value != yaml::Value::Null {
        return Err(invalid(
            doc.root.line,
            "expected a mapping of settings".into(),
        ));
    }
    let json = doc.root.to_json();
    let mut json = if json.is_null() {
        serde_json::json!({})
    } else {
        json
    };
    // A bare number is a duration in seconds (`interval: 30`).
    if let Some(map) = json.as_object_mut() {
        for key in DURATION_KEYS {
            if let Some(v) = map.get_mut(*key)
                && v.is_number()
            {
                *v = serde_json::Value::String(v.to_string());
            }
        }
        if let Some(items) = map
            .get_mut("notifications")
            .and_then(serde_json::Value::as_array_mut)
        {
            for item in items
                .iter_mut()
                .filter_map(serde_json::Value::as_object_mut)
            {
                for key in NOTIFICATION_DURATION_KEYS {
                    if let Some(v) = item.get_mut(*key)
                        && v.is_number()
                    {
                        *v = serde_json::Value::String(v.to_string());
                    }
                }
            }
        }
    }
    let settings: Settings = serde_path_to_error::deserialize(json).map_err(|e| {
        enum Step {
            Key(String),
            Index(usize),
        }
        let steps: Vec<Step> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
                _ => None,
            })
            .collect();
        let line = doc.root.line_of(steps.iter().map(|s| match s {
            Step::Key(k) => PathSegment::Key(k.as_str()),
            Step::Index(i) => PathSegment::Index(*i),
        }));
        // `key.field`, `list[1].field`: as the problems of validation name them.
        let mut name = String::new();
        for s in &steps {
            match s {
                Step::Key(k) if name.is_empty() => name.push_str(k),
                Step::Key(k) => name.push_str(&format!(".{k}")),
                Step::Index(i) => name.push_str(&format!("[{i}]")),
            }
        }
        // An unknown key has no path below its mapping: find its line by name.
        let inner = e.inner().to_string();
        let line = inner
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .and_then(|k| {
                if name.is_empty() {
                    lines.get(k)
                } else {
                    lines.get(&format!("{name}.{k}"))
                }
            })
            .copied()
            .unwrap_or(line);
        let prefix = if name.is_empty() {
            String::new()
        } else {
            format!("{name}: ")
        };
        invalid(line, format!("{prefix}{inner}"))
    })?;
    Ok((settings, lines))
}

/// Which flags were set (for `file:line` vs `--flag` in messages).
fn flags_set(flags: &Settings) -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! set {
        ($($field:ident => $name:literal),* $(,)?) => {
            $( if flags.$field.is_some() { v.push($name); } )*
        };
    }
    set!(
        repo => "repo", reference => "ref", path => "path", interval => "interval",
        resync_interval => "resync-interval", listen => "listen",
        reconcile_timeout => "reconcile-timeout", shutdown_timeout => "shutdown-timeout",
        deletion_timeout => "deletion-timeout",
        backoff_min => "backoff-min", backoff_max => "backoff-max",
        lease_duration => "lease-duration", target => "target", leader_elect => "leader-elect",
        palette_timeout => "palette-timeout", webhook_secret_file => "webhook-secret-file",
        git_token_file => "git-token-file", git_password_file => "git-password-file",
        git_ssh_key_file => "git-ssh-key-file", git_known_hosts_file => "git-known-hosts-file",
        state_dir => "state-dir", guard_percent => "guard-percent", kube_qps => "kube-qps",
        verify_keys => "verify-keys",
    );
    v
}

/// The source sub-config.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The repository as given.
    pub repo: String,
    /// Branch, tag or commit; `None`: HEAD.
    pub reference: Option<String>,
    /// Subdirectory.
    pub path: String,
    /// Credentials.
    pub auth: GitAuth,
    /// Shallow fetches.
    pub shallow: bool,
    /// Where the persistent clone lives.
    pub state_dir: PathBuf,
    /// Watch a local repository's refs.
    pub watch: bool,
    /// The keys every commit must be signed with (`None`: signatures are not checked).
    pub verify: Option<Arc<Verifier>>,
}

/// Leader election sub-config: the Lease every applying pass of the instance takes too.
pub type LeaderConfig = pbsync_target::kubernetes::lease::LeaseConfig;

/// The daemon sub-config: timing, endpoints, webhook.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Poll interval (`None`: no polling).
    pub interval: Option<Duration>,
    /// Full resync interval (`None`: never).
    pub resync_interval: Option<Duration>,
    /// HTTP listen address.
    pub listen: Option<SocketAddr>,
    /// Webhook HMAC secret (`None`: the webhook endpoint refuses every delivery).
    pub webhook_secret: Option<Secret>,
    /// Generic HMAC header name.
    pub webhook_header: String,
    /// Bound on one reconcile.
    pub reconcile_timeout: Duration,
    /// Bound on the wait for one deletion wave to be gone.
    pub deletion_timeout: Duration,
    /// Bound on a graceful stop.
    pub shutdown_timeout: Duration,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Leader election, when enabled.
    pub leader: Option<LeaderConfig>,
    /// Apply plans over the mass-deletion guard.
    pub allow_mass_deletion: bool,
    /// Serve the read-only health page on `/`.
    pub ui: bool,
    /// Talking back to the Git host, when configured.
    pub forge: Option<ForgeConfig>,
    /// Notification sinks.
    pub notifications: Vec<crate::daemon::notify::Settings>,
}

/// The validated `forge:` section.
#[derive(Debug, Clone)]
pub struct ForgeConfig {
    /// Provider, API root, repository, token.
    pub client: crate::forge::Settings,
    /// Set commit statuses.
    pub commit_status: bool,
    /// `success` only once healthy.
    pub wait_for_health: bool,
    /// The link of each status.
    pub status_url: Option<String>,
    /// Answer on merged pull requests.
    pub answer_pull_requests: bool,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (for reloads).
    pub file: Option<PathBuf>,
    /// The settings after flags were laid over the file (what `--config` plus flags say).
    pub settings: Settings,
    /// Source.
    pub source: SourceConfig,
    /// Daemon.
    pub daemon: DaemonConfig,
    /// Log format.
    pub log_format: LogFormat,
}

/// Default poll interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default full resync interval.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(600);
/// Default state directory (systemd `StateDirectory=pbsync`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pbsync";
/// The environment variable holding the Git host's token (`forge:` without `token-file`).
pub const FORGE_TOKEN_ENV: &str = "PBSYNC_FORGE_TOKEN";

/// Default generic webhook signature header.
pub const DEFAULT_WEBHOOK_HEADER: &str = "X-Pbsync-Signature";

impl Config {
    /// Reads `file` (if any), lays `flags` over it and validates the result.
    pub fn load(file: Option<&Path>, flags: &Settings) -> Result<Self> {
        let (from_file, lines) = match file {
            Some(p) => read_file(p)?,
            None => (Settings::default(), BTreeMap::new()),
        };
        let origins = Origins {
            file: file.map(Path::to_path_buf),
            lines,
            flags: flags_set(flags),
        };
        let settings = from_file.overlaid(flags);
        Self::validate(file, settings, &origins)
    }

    fn validate(file: Option<&Path>, s: Settings, o: &Origins) -> Result<Self> {
        let mut problems = Vec::new();
        let mut duration = |key: &'static str, v: &Option<String>, default: Duration| match v {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|e| {
                problems.push(format!("{}: {e}", o.at(key)));
                default
            }),
        };
        let interval = duration("interval", &s.interval, DEFAULT_INTERVAL);
        let resync = duration("resync-interval", &s.resync_interval, DEFAULT_RESYNC);
        let reconcile_timeout = duration(
            "reconcile-timeout",
            &s.reconcile_timeout,
            Duration::from_secs(300),
        );
        let deletion_timeout = duration(
            "deletion-timeout",
            &s.deletion_timeout,
            pbsync_target::DEFAULT_DELETION_TIMEOUT,
        );
        let shutdown_timeout = duration(
            "shutdown-timeout",
            &s.shutdown_timeout,
            Duration::from_secs(20),
        );
        let backoff_min = duration("backoff-min", &s.backoff_min, Duration::from_secs(2));
        let backoff_max = duration("backoff-max", &s.backoff_max, Duration::from_secs(300));
        let lease_duration = duration("lease-duration", &s.lease_duration, Duration::from_secs(15));
        if let Some(t) = &s.palette_timeout
            && let Err(e) = pbsync_target::palette::parse_timeout(t)
        {
            problems.push(format!("{}: {e}", o.at("palette-timeout")));
        }
        if backoff_min > backoff_max {
            problems.push(format!(
                "{}: must not exceed backoff-max",
                o.at("backoff-min")
            ));
        }
        if reconcile_timeout.is_zero() {
            problems.push(format!(
                "{}: must be more than 0",
                o.at("reconcile-timeout")
            ));
        }
        if lease_duration < Duration::from_secs(2) {
            problems.push(format!("{}: must be at least 2s", o.at("lease-duration")));
        }

        let repo = s.repo.clone().unwrap_or_default();
        if repo.is_empty() {
            problems.push(format!("{}: a repository is required", o.at("repo")));
        }
        let listen = match &s.listen {
            None => None,
            Some(a) => match a.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    problems.push(format!(
                        "{}: {a:?} is not an address like 127.0.0.1:8080",
                        o.at("listen")
                    ));
                    None
                }
            },
        };
        let target = s
            .target
            .clone()
            .unwrap_or_else(|| "dir:./pbsync-state".into());
        let is_kube = target == "kube";
        if !is_kube && target.strip_prefix("dir:").is_none_or(str::is_empty) {
            problems.push(format!(
                "{}: unknown target {target:?}: expected dir:PATH or kube",
                o.at("target")
            ));
        }
        if s.guard_percent.is_some_and(|p| p > 100) {
            problems.push(format!(
                "{}: must be between 0 and 100",
                o.at("guard-percent")
            ));
        }
        if s.kube_qps.is_some_and(|q| !(q.is_finite() && q >= 0.0)) {
            problems.push(format!("{}: must be a number >= 0", o.at("kube-qps")));
        }

        // Secrets: from files or the environment only.
        let mut secret_file = |key: &'static str, path: &Option<PathBuf>| -> Option<Secret> {
            let p = path.as_ref()?;
            match Secret::read_file(p) {
                Ok(s) => Some(s),
                Err(e) => {
                    problems.push(format!("{}: cannot read {}: {e}", o.at(key), p.display()));
                    None
                }
            }
        };
        let token = secret_file("git-token-file", &s.git_token_file)
            .or_else(|| std::env::var("PBSYNC_GIT_TOKEN").ok().map(Secret::new));
        let password = secret_file("git-password-file", &s.git_password_file);
        let webhook_secret = secret_file("webhook-secret-file", &s.webhook_secret_file)
            .or_else(|| std::env::var("PBSYNC_WEBHOOK_SECRET").ok().map(Secret::new));
        let auth = if let Some(key) = &s.git_ssh_key_file {
            if !key.is_file() {
                problems.push(format!(
                    "{}: no such file {}",
                    o.at("git-ssh-key-file"),
                    key.display()
                ));
            }
            let known_hosts = s.git_known_hosts_file.clone().unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default()
                    .join(".ssh/known_hosts")
            });
            if !known_hosts.is_file() {
                problems.push(format!(
                    "{}: no such file {} (SSH host keys are checked strictly)",
                    o.at("git-known-hosts-file"),
                    known_hosts.display()
                ));
            }
            GitAuth::SshKey {
                key: key.clone(),
                known_hosts,
            }
        } else if let Some(password) = password {
            GitAuth::Basic {
                username: s.git_username.clone().unwrap_or_default(),
                password,
            }
        } else if let Some(token) = token {
            GitAuth::Token(token)
        } else {
            GitAuth::None
        };

        let forge = s.forge.as_ref().and_then(|f| {
            let at = o.at("forge");
            let provider = f.provider;
            let api_url = f
                .api_url
                .clone()
                .or_else(|| provider.default_api_url(Some(&repo)));
            let repository = f
                .repository
                .clone()
                .or_else(|| crate::forge::repository_of_url(&repo));
            let token = match &f.token_file {
                Some(p) => match Secret::read_file(p) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        problems.push(format!("{at}.token-file: cannot read {}: {e}", p.display()));
                        None
                    }
                },
                None => {
                    let t = std::env::var(FORGE_TOKEN_ENV).ok().map(Secret::new);
                    if t.is_none() {
                        problems.push(format!(
                            "{at}: no token-file, and {FORGE_TOKEN_ENV} is not set"
                        ));
                    }
                    t
                }
            };
            if api_url.is_none() {
                problems.push(format!(
                    "{at}: give api-url (it cannot be read from the repository URL)"
                ));
            }
            if repository.is_none() {
                problems.push(format!(
                    "{at}: give repository (it cannot be read from the repository URL)"
                ));
            }
            let client = crate::forge::Settings {
                provider,
                api_url: api_url?,
                repository: repository?,
                token: token?,
                timeout: Duration::from_secs(30),
            };
            if let Err(e) = crate::forge::Forge::new(&client) {
                problems.push(format!("{at}: {e}"));
                return None;
            }
            Some(ForgeConfig {
                client,
                commit_status: f.commit_status.unwrap_or(true),
                wait_for_health: f.wait_for_health.unwrap_or(true),
                status_url: f.status_url.clone(),
                answer_pull_requests: f.answer_pull_requests.unwrap_or(true),
            })
        });
        let notifications = notifications(
            s.notifications.as_deref().unwrap_or_default(),
            o,
            &mut problems,
        );
        let instance = s
            .instance
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE.into());
        let leader = if s.leader_elect.unwrap_or(false) {
            if !is_kube {
                problems.push(format!(
                    "{}: leader election needs the kube target",
                    o.at("leader-elect")
                ));
            }
            Some(LeaderConfig {
                lease_name: s
                    .lease_name
                    .clone()
                    .unwrap_or_else(|| pbsync_target::kubernetes::lease::lease_name(&instance)),
                namespace: s
                    .lease_namespace
                    .clone()
                    .or_else(|| s.status_namespace.clone())
                    .unwrap_or_else(|| {
                        pbsync_target::kubernetes::DEFAULT_STATUS_NAMESPACE.to_string()
                    }),
                duration: lease_duration,
                identity: s
                    .leader_id
                    .clone()
                    .unwrap_or_else(pbsync_target::kubernetes::lease::process_identity),
            })
        } else {
            None
        };
        let verify = verifier(&s, o, &mut problems);
        if !problems.is_empty() {
            return Err(Error::Invalid { problems });
        }
        Ok(Self {
            file: file.map(Path::to_path_buf),
            source: SourceConfig {
                repo,
                reference: s.reference.clone(),
                path: s.path.clone().unwrap_or_default(),
                auth,
                shallow: s.git_shallow.unwrap_or(false),
                state_dir: s
                    .state_dir
                    .clone()
                    .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
                watch: s.watch.unwrap_or(true),
                verify,
            },
            daemon: DaemonConfig {
                interval: (!interval.is_zero()).then_some(interval),
                resync_interval: (!resync.is_zero()).then_some(resync),
                listen,
                webhook_secret,
                webhook_header: s
                    .webhook_header
                    .clone()
                    .unwrap_or_else(|| DEFAULT_WEBHOOK_HEADER.into()),
                reconcile_timeout,
                deletion_timeout,
                shutdown_timeout,
                backoff_min,
                backoff_max,
                leader,
                allow_mass_deletion: s.allow_mass_deletion.unwrap_or(false),
                ui: s.ui.unwrap_or(false),
                forge,
                notifications,
            },
            log_format: s.log_format.unwrap_or_default(),
            settings: s,
        })
    }

    /// Plan options (instance, adoption, cascade, guard).
    pub fn plan_options(&self) -> pbsync_core::plan::Options {
        let s = &self.settings;
        pbsync_core::plan::Options {
            instance: s
                .instance
                .clone()
                .unwrap_or_else(|| DEFAULT_INSTANCE.into()),
            adopt: s.adopt.unwrap_or(false),
            cascade: s.cascade.unwrap_or_default(),
            guard: pbsync_core::guard::MassDeletion {
                max_fraction: f64::from(s.guard_percent.unwrap_or(50)) / 100.0,
                min_objects: s.guard_min.unwrap_or(10),
            },
        }
    }
}

/// The keys of `verify:` (or `--verify-keys`, which wins), read now: a key file that cannot
/// be used is a problem at the line that names it.
fn verifier(s: &Settings, o: &Origins, problems: &mut Vec<String>) -> Option<Arc<Verifier>> {
    let keys = match (&s.verify_keys, &s.verify) {
        (Some(keys), _) => keys.clone(),
        (None, Some(v)) => {
            // The one mode: the commit being applied is checked (a new mode lands here).
            let VerifyMode::Head = v.mode;
            v.keys.clone()
        }
        (None, None) => return None,
    };
    if keys.is_empty() {
        problems.push(format!(
            "{}: at least one key file is required",
            o.at_nested("verify.keys", "verify-keys")
        ));
        return None;
    }
    let mut verifier = Verifier::default();
    for (i, path) in keys.iter().enumerate() {
        if let Err(e) = verifier.add_file(path) {
            problems.push(format!(
                "{}: {}",
                o.at_nested(&format!("verify.keys[{i}]"), "verify-keys"),
                pbsync_core::error_chain(&e)
            ));
        }
    }
    Some(Arc::new(verifier))
}

/// The validated `notifications:` entries; what is wrong with them goes to `problems`.
fn notifications(
    list: &[NotificationSettings],
    o: &Origins,
    problems: &mut Vec<String>,
) -> Vec<crate::daemon::notify::Settings> {
    use crate::daemon::notify::{self, Kind};
    let mut out: Vec<notify::Settings> = Vec::new();
    for (i, n) in list.iter().enumerate() {
        let at = |field: &str| o.at_entry("notifications", i, field);
        let before = problems.len();
        let secret_file =
            |field: &str, path: &Path, problems: &mut Vec<String>| match Secret::read_file(path) {
                Ok(s) if s.expose().is_empty() => {
                    problems.push(format!("{}: {} is empty", at(field), path.display()));
                    None
                }
                Ok(s) => Some(s),
                Err(e) => {
                    problems.push(format!(
                        "{}: cannot read {}: {e}",
                        at(field),
                        path.display()
                    ));
                    None
                }
            };
        let url = match (&n.url, &n.url_file) {
            (Some(_), Some(_)) => {
                problems.push(format!("{}: give url or url-file, not both", at("url")));
                None
            }
            (None, None) => {
                problems.push(format!(
                    "{}: give url-file (or url, for an endpoint that is no secret)",
                    at("")
                ));
                None
            }
            (Some(_), None) if n.kind == Kind::Slack => {
                problems.push(format!(
                    "{}: a Slack webhook's URL is its credential: put it in a file and give url-file",
                    at("url")
                ));
                None
            }
            (Some(u), None) => Some(Secret::new(u.trim())),
            (None, Some(p)) => secret_file("url-file", p, problems),
        };
        let secret = match &n.secret_file {
            Some(_) if n.kind == Kind::Slack => {
                problems.push(format!(
                    "{}: Slack webhooks are not signed; only cloudevents takes a secret",
                    at("secret-file")
                ));
                None
            }
            Some(p) => secret_file("secret-file", p, problems),
            None => None,
        };
        let mut duration = |field: &str, v: &Option<String>, default: Duration| match v {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|e| {
                problems.push(format!("{}: {e}", at(field)));
                default
            }),
        };
        let min_interval = duration(
            "min-interval",
            &n.min_interval,
            notify::DEFAULT_MIN_INTERVAL,
        );
        let repeat_interval = duration(
            "repeat-interval",
            &n.repeat_interval,
            notify::DEFAULT_REPEAT_INTERVAL,
        );
        let name = n
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", n.kind.as_str(), i + 1));
        if out.iter().any(|o| o.name == name) {
            problems.push(format!("{}: {name:?} names another entry too", at("name")));
        }
        let Some(url) = url else { continue };
        if problems.len() > before {
            continue;
        }
        let settings = notify::Settings {
            name,
            kind: n.kind,
            url,
            secret,
            on: n.on.unwrap_or_default(),
            min_interval,
            repeat_interval: (!repeat_interval.is_zero()).then_some(repeat_interval),
        };
        if let Err(e) = notify::sink::Client::new(&settings) {
            let field = if n.url_file.is_some() {
                "url-file"
            } else {
                "url"
            };
            problems.push(format!("{}: {e}", at(field)));
            continue;
        }
        out.push(settings);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let (_d, path) = write("repo: /srv/repo\ninterval: 10s\ntarget: dir:/tmp/x\n");
        let flags = Settings {
            interval: Some("5s".into()),
            ..Settings::default()
        };
        let c = Config::load(Some(&path), &flags).expect("valid");
        assert_eq!(c.daemon.interval, Some(Duration::from_secs(5)));
        assert_eq!(c.source.repo, "/srv/repo");
        assert_eq!(c.daemon.resync_interval, Some(DEFAULT_RESYNC));
    }

    #[test]
    fn every_problem_is_reported_at_its_line() {
        let (_d, path) = write("repo: /srv/repo\ninterval: often\nlisten: nowhere\ntarget: s3\n");
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        let text = err.to_string();
        let p = path.display();
        assert!(text.contains(&format!("{p}:2: interval")), "{text}");
        assert!(text.contains(&format!("{p}:3: listen")), "{text}");
        assert!(text.contains(&format!("{p}:4: target")), "{text}");
    }

    #[test]
    fn the_example_configuration_uses_only_known_keys() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/config.example.yaml");
        let (settings, lines) = read_file(&example).expect("the example parses");
        assert!(lines.contains_key("preflight") && lines.contains_key("kube-concurrency"));
        assert_eq!(settings.preflight, Some(false));
        assert_eq!(settings.kube_qps, Some(200.0));
    }

    #[test]
    fn the_commented_notifications_of_the_example_parse_once_uncommented() {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/config.example.yaml"),
        )
        .expect("the example");
        let block: String = example
            .lines()
            .skip_while(|l| !l.starts_with("# notifications:"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or_default()))
            .collect();
        let (_d, path) = write(&block);
        let (settings, _) = read_file(&path).expect("the block parses");
        let n = settings.notifications.expect("a notifications list");
        assert_eq!(n.len(), 2);
        assert_eq!(n[1].min_interval.as_deref(), Some("10s"));
    }

    #[test]
    fn unknown_keys_are_reported_at_their_line() {
        let (_d, path) = write("repo: /srv/repo\n\nintervall: 10s\n");
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains(":3: ") && text.contains("unknown field `intervall`"),
            "{text}"
        );
    }

    #[test]
    fn wrong_types_are_reported_at_their_line() {
        let (_d, path) = write("repo: /srv/repo\nguard-percent: lots\n");
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        assert!(err.to_string().contains(":2: guard-percent: "), "{err}");
    }

    #[test]
    fn a_problem_set_by_a_flag_names_the_flag() {
        let flags = Settings {
            repo: Some("/srv/repo".into()),
            interval: Some("often".into()),
            ..Settings::default()
        };
        let err = Config::load(None, &flags).expect_err("invalid");
        assert!(err.to_string().contains("--interval: "), "{err}");
    }

    #[test]
    fn secrets_are_never_printed() {
        let (_d, path) = write("s3cr3t\n");
        let flags = Settings {
            repo: Some("/srv/repo".into()),
            webhook_secret_file: Some(path),
            ..Settings::default()
        };
        let c = Config::load(None, &flags).expect("valid");
        assert_eq!(
            c.daemon.webhook_secret.as_ref().map(Secret::expose),
            Some("s3cr3t")
        );
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    const SSH_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    #[test]
    fn verify_keys_are_read_at_load_and_a_bad_one_is_reported_at_its_line() {
        let (dir, _) = write("");
        let signers = dir.path().join("allowed_signers");
        std::fs::write(&signers, format!("ci@example.com {SSH_KEY}\n")).expect("write");
        let missing = dir.path().join("missing.asc");
        let (_d, path) = write(&format!(
            "repo: /srv/repo\nverify:\n  mode: head\n  keys:\n    - {}\n    - {}\n",
            signers.display(),
            missing.display()
        ));
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "{}:6: verify.keys[1]: cannot read key file {}",
                path.display(),
                missing.display()
            )),
            "{text}"
        );

        let (_d, path) = write(&format!(
            "repo: /srv/repo\nverify: {{mode: head, keys: [{}]}}\n",
            signers.display()
        ));
        let c = Config::load(Some(&path), &Settings::default()).expect("valid");
        assert!(c.source.verify.is_some_and(|v| !v.is_empty()));
        let c = Config::load(
            None,
            &Settings {
                repo: Some("/srv/repo".into()),
                ..Settings::default()
            },
        )
        .expect("valid");
        assert!(
            c.source.verify.is_none(),
            "signatures are checked only when asked"
        );
    }

    #[test]
    fn the_verify_keys_flag_wins_over_the_file_and_names_itself() {
        let (_d, path) = write("repo: /srv/repo\nverify: {keys: [/nonexistent/keys.asc]}\n");
        let (dir, _) = write("");
        let bad = dir.path().join("not-a-key");
        std::fs::write(&bad, "ci@example.com ssh-ed25519 garbage\n").expect("write");
        let flags = Settings {
            verify_keys: Some(vec![bad]),
            ..Settings::default()
        };
        let err = Config::load(Some(&path), &flags).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("--verify-keys: "), "{text}");
        assert!(
            text.contains("not-a-key:1: not an SSH public key"),
            "{text}"
        );
        assert!(!text.contains("/nonexistent/keys.asc"), "{text}");
    }

    #[test]
    fn a_verify_without_keys_or_with_an_unknown_mode_is_reported_at_its_line() {
        let (_d, path) = write("repo: /srv/repo\nverify:\n  mode: head\n  keys: []\n");
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        assert!(
            err.to_string()
                .contains(":4: verify.keys: at least one key file is required"),
            "{err}"
        );
        let (_d, path) = write("repo: /srv/repo\nverify:\n  mode: all\n  keys: [k]\n");
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        assert!(
            err.to_string().contains(":3: verify.mode: unknown variant"),
            "{err}"
        );
    }

    #[test]
    fn notifications_read_their_secrets_from_files_and_never_print_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = dir.path().join("slack-url");
        std::fs::write(&url, "https://hooks.slack.com/services/T0/B0/s3cr3tpath\n").expect("write");
        let key = dir.path().join("hmac");
        std::fs::write(&key, "hm4ck3y\n").expect("write");
        let (_d, path) = write(&format!(
            "repo: /srv/repo\nnotifications:\n  - kind: slack\n    url-file: {}\n    on: changes\n  - kind: cloudevents\n    name: events\n    url: http://127.0.0.1:9/events\n    secret-file: {}\n    min-interval: 0\n    repeat-interval: 0\n",
            url.display(),
            key.display()
        ));
        let c = Config::load(Some(&path), &Settings::default()).expect("valid");
        let n = &c.daemon.notifications;
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].name, "slack-1");
        assert_eq!(n[0].kind, crate::daemon::notify::Kind::Slack);
        assert_eq!(n[0].on, crate::daemon::notify::Filter::Changes);
        assert_eq!(
            n[0].url.expose(),
            "https://hooks.slack.com/services/T0/B0/s3cr3tpath"
        );
        assert_eq!(
            n[0].min_interval,
            crate::daemon::notify::DEFAULT_MIN_INTERVAL
        );
        assert_eq!(
            n[0].repeat_interval,
            Some(crate::daemon::notify::DEFAULT_REPEAT_INTERVAL)
        );
        assert_eq!(n[1].name, "events");
        assert_eq!(n[1].on, crate::daemon::notify::Filter::Failures);
        assert_eq!(n[1].secret.as_ref().map(Secret::expose), Some("hm4ck3y"));
        assert_eq!(n[1].min_interval, Duration::ZERO);
        assert_eq!(n[1].repeat_interval, None);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cr3tpath") && !debug.contains("hm4ck3y"),
            "{debug}"
        );
    }

    #[test]
    fn notification_problems_name_the_entry_and_its_line() {
        let (_d, path) = write(
            "repo: /srv/repo\nnotifications:\n  - kind: slack\n    url: https://hooks.slack.com/services/T0/B0/s3cr3t\n  - kind: cloudevents\n    url: ftp://host/x\n    min-interval: soon\n  - kind: cloudevents\n",
        );
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        let text = err.to_string();
        let p = path.display();
        assert!(
            text.contains(&format!(
                "{p}:4: notifications[0].url: a Slack webhook's URL is its credential"
            )),
            "{text}"
        );
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(
            text.contains(&format!("{p}:7: notifications[1].min-interval: ")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{p}:8: notifications[2]: give url-file")),
            "{text}"
        );

        let (_d, path) = write(
            "repo: /srv/repo\nnotifications:\n  - kind: cloudevents\n    url: ftp://host/x\n",
        );
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        assert!(
            err.to_string()
                .contains(":4: notifications[0].url: the URL is not an absolute http"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_of_a_notification_are_reported_at_their_line() {
        let (_d, path) = write(
            "repo: /srv/repo\nnotifications:\n  - kind: slack\n    url-file: /x\n  - kind: cloudevents\n    url: http://127.0.0.1:9/\n    filter: all\n",
        );
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains(":7: notifications[1].filter: unknown field `filter`"),
            "{text}"
        );
    }

    #[test]
    fn leader_election_needs_the_kube_target() {
        let flags = Settings {
            repo: Some("/srv/repo".into()),
            leader_elect: Some(true),
            ..Settings::default()
        };
        let err = Config::load(None, &flags).expect_err("invalid");
        assert!(err.to_string().contains("--leader-elect"), "{err}");
    }

    #[test]
    fn the_forge_section_reads_its_defaults_from_the_repository_url() {
        let (_t, token) = write("tok\n");
        let (_d, path) = write(&format!(
            "repo: https://git.example.com/platform/bundles.git\nforge:\n  provider: gitea\n  token-file: {}\n",
            token.display()
        ));
        let c = Config::load(Some(&path), &Settings::default()).expect("valid");
        let f = c.daemon.forge.expect("forge");
        assert_eq!(f.client.api_url, "https://git.example.com/api/v1");
        assert_eq!(f.client.repository, "platform/bundles");
        assert_eq!(f.client.token.expose(), "tok");
        assert!(f.commit_status && f.wait_for_health && f.answer_pull_requests);
        assert!(!format!("{:?}", f.client).contains("tok\""));
    }

    #[test]
    fn a_forge_section_without_a_token_or_with_an_unknown_provider_is_reported_at_its_line() {
        let (_d, path) = write(
            "repo: /srv/repo\n\nforge:\n  provider: gitea\n  api-url: http://127.0.0.1:3000/api/v1\n  repository: a/b\n",
        );
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains(":3: forge: no token-file"), "{text}");

        let (_d, path) = write("repo: /srv/repo\nforge:\n  provider: bitbucket\n");
        let err = Config::load(Some(&path), &Settings::default()).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains(":3: forge.provider: unknown variant `bitbucket`"),
            "{text}"
        );
    }
}
