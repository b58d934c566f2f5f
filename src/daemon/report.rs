//! Talking back: what each pass and each health change means for the people watching the
//! commit. The pass and the health board send [`Event`]s; each sink (the commit status, the
//! answer on a merged pull request, the notifications of `notify`) runs as a task of its
//! own, so a slow or failing provider never delays or fails a pass: sending is a channel
//! push, and a sink retries with backoff in the background, the newest state of a commit
//! superseding an older one still waiting.
//!
//! What to report is decided purely here ([`status_of`], [`answer`]); the tasks only send.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::http::Shared;
use super::notify;
use crate::forge::{self, CommitStatus, Forge, sticky};
use pbsync_core::health::State as Health;
use pbsync_core::plan::comment::{ChangeNote, MARKER};

/// Something worth reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A pass read a commit again after the previous pass could not fetch (the recovery of
    /// a fetch failure, which an unchanged revision would otherwise leave unreported).
    Fetched {
        /// The commit.
        revision: String,
    },
    /// A pass started applying a commit.
    Applying {
        /// The commit.
        revision: String,
    },
    /// A pass applied a commit completely.
    Applied {
        /// The commit.
        revision: String,
        /// Change counts, one line (`3 created, 1 updated`).
        summary: String,
        /// Whether anything was written.
        acted: bool,
        /// The changes of the plan applied.
        note: ChangeNote,
    },
    /// A pass failed.
    Failed {
        /// The commit, if it was read.
        revision: Option<String>,
        /// The stage (fetch, verify, parse, validate, observe, plan, apply).
        stage: String,
        /// The error chain.
        message: String,
        /// Violations of an invalid commit, `file:line: rule: message`, first ones first.
        violations: Vec<String>,
    },
    /// The traced health of an applied commit.
    Health {
        /// The commit.
        revision: String,
        /// The worst state of its objects.
        state: Health,
        /// The first culprit, one line (empty when current).
        line: String,
    },
}

impl Event {
    /// The commit an event is about, if any.
    pub fn revision(&self) -> Option<&str> {
        match self {
            Self::Fetched { revision }
            | Self::Applying { revision }
            | Self::Applied { revision, .. }
            | Self::Health { revision, .. } => Some(revision),
            Self::Failed { revision, .. } => revision.as_deref(),
        }
    }
}

/// Where events go: one channel per sink of the running configuration (replaced on
/// reload). Sending never blocks.
#[derive(Debug, Default)]
pub struct Reporter {
    sinks: Mutex<Vec<mpsc::UnboundedSender<Event>>>,
}

impl Reporter {
    /// Sends `event` to every sink (a sink that stopped is skipped).
    pub fn send(&self, event: &Event) {
        let sinks = self
            .sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in sinks.iter() {
            let _ = s.send(event.clone());
        }
    }

    /// Replaces the sinks.
    pub fn replace(&self, sinks: Vec<mpsc::UnboundedSender<Event>>) {
        *self
            .sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = sinks;
    }
}

/// Starts the sinks `config` asks for, each stopping with `stop`; their channels, for
/// [`Reporter::replace`].
pub fn spawn(
    config: &crate::config::Config,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> Vec<mpsc::UnboundedSender<Event>> {
    let mut sinks = Vec::new();
    let instance = config.plan_options().instance;
    if let Some(f) = &config.daemon.forge {
        // The configuration was checked when it was loaded; a client that still cannot be
        // built only loses the reports, never a pass.
        match Forge::new(&f.client) {
            Ok(forge) => {
                if f.commit_status {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let settings = StatusSettings {
                        context: format!("pbsync/{instance}"),
                        target_url: f.status_url.clone(),
                        wait_for_health: f.wait_for_health,
                    };
                    tokio::spawn(statuses(
                        forge.clone(),
                        settings,
                        rx,
                        Arc::clone(shared),
                        stop.clone(),
                    ));
                    sinks.push(tx);
                }
                if f.answer_pull_requests {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(answers(
                        forge,
                        instance.clone(),
                        rx,
                        Arc::clone(shared),
                        stop.clone(),
                    ));
                    sinks.push(tx);
                }
            }
            Err(e) => {
                tracing::error!(error = %pbsync_core::error_chain(&e), "not reporting to the Git host");
            }
        }
    }
    for n in &config.daemon.notifications {
        // Checked when loaded, like the forge's client.
        match notify::sink::Client::new(n) {
            Ok(client) => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(notify::sink::run(
                    client,
                    n.clone(),
                    instance.clone(),
                    rx,
                    Arc::clone(shared),
                    stop.clone(),
                ));
                sinks.push(tx);
            }
            Err(e) => {
                tracing::error!(sink = %n.name, error = %pbsync_core::error_chain(&e), "not sending these notifications");
            }
        }
    }
    sinks
}

/// How the commit status is reported.
#[derive(Debug, Clone)]
pub struct StatusSettings {
    /// `pbsync/<instance>`.
    pub context: String,
    /// The status page, linked from each status.
    pub target_url: Option<String>,
    /// Report `success` only once the commit's objects are healthy (else once applied).
    pub wait_for_health: bool,
}

/// Most violations named in a failure's description (the provider cuts it anyway).
const VIOLATIONS_SHOWN: usize = 3;

/// The commit status an event calls for: the commit, its state and one line. `None`: the
/// event says nothing about a commit's status (a fetch that failed before reading one).
pub fn status_of(event: &Event, settings: &StatusSettings) -> Option<(String, CommitStatus)> {
    let status = |state, description: String| CommitStatus {
        state,
        context: settings.context.clone(),
        description,
        target_url: settings.target_url.clone(),
    };
    let (revision, s) = match event {
        // Fetching says nothing about a commit.
        Event::Fetched { .. } => return None,
        Event::Applying { revision } => (
            revision,
            status(
                forge::State::Pending,
                "pbsync is applying this commit".into(),
            ),
        ),
        Event::Applied {
            revision, summary, ..
        } => {
            if settings.wait_for_health {
                (
                    revision,
                    status(
                        forge::State::Pending,
                        format!("applied ({summary}); waiting for health"),
                    ),
                )
            } else {
                (
                    revision,
                    status(forge::State::Success, format!("applied: {summary}")),
                )
            }
        }
        Event::Failed {
            revision,
            stage,
            message,
            violations,
        } => {
            let revision = revision.as_ref()?;
            let description = if stage == "verify" {
                format!("refused, nothing applied: {message}")
            } else if violations.is_empty() {
                format!("failed at {stage}: {message}")
            } else {
                let shown: Vec<&str> = violations
                    .iter()
                    .take(VIOLATIONS_SHOWN)
                    .map(String::as_str)
                    .collect();
                let more = violations.len().saturating_sub(VIOLATIONS_SHOWN);
                let more = if more > 0 {
                    format!(" (+{more} more)")
                } else {
                    String::new()
                };
                format!("invalid, nothing applied: {}{more}", shown.join("; "))
            };
            (revision, status(forge::State::Failure, description))
        }
        Event::Health {
            revision,
            state,
            line,
        } => {
            if !settings.wait_for_health {
                return None;
            }
            let s = match state {
                Health::Current => status(forge::State::Success, "applied and healthy".into()),
                Health::Failed => status(forge::State::Failure, format!("unhealthy: {line}")),
                Health::InProgress | Health::Unknown => status(
                    forge::State::Pending,
                    format!("applied; waiting for health: {line}"),
                ),
            };
            (revision, s)
        }
    };
    Some((revision.clone(), s))
}

/// The marker of the daemon's answer on a merged pull request (one per instance).
pub fn answer_marker(instance: &str) -> String {
    format!("<!-- pbsync-applied instance={instance} -->")
}

/// Most changes listed in an answer.
const ANSWER_LINES: usize = 50;

/// The answer on a merged pull request: what was applied from `revision`, and whether it is
/// what the last plan posted there (`posted`, from the plan comment's note) showed; said
/// loudly when not.
pub fn answer(
    instance: &str,
    revision: &str,
    summary: &str,
    applied: &ChangeNote,
    posted: Option<&ChangeNote>,
) -> String {
    let mut out = format!(
        "{}\n### pbsync applied `{}` (instance `{instance}`)\n\n{summary}\n",
        answer_marker(instance),
        &revision[..revision.len().min(12)]
    );
    match posted.map(|p| p.difference(applied)) {
        None => out.push_str(
            "\nNo plan by pbsync was posted on this pull request, so nothing was compared.\n",
        ),
        Some(None) => {
            out.push_str("\nWhat was applied matches the last plan posted on this pull request.\n");
        }
        Some(Some(d)) => {
            out.push_str(
                "\n> [!WARNING]\n> **What was applied differs from the last plan posted on this pull request: \
                 reviewers did not see this change.**\n",
            );
            if d.unreviewed.is_empty() && d.not_applied.is_empty() {
                out.push_str(&format!(
                    "> The posted plan had {} change(s); {} were applied.\n",
                    d.counts.0, d.counts.1
                ));
            }
            for (title, lines) in [
                ("Applied but not in the posted plan", &d.unreviewed),
                ("In the posted plan but not applied", &d.not_applied),
            ] {
                if lines.is_empty() {
                    continue;
                }
                out.push_str(&format!(">\n> {title}:\n"));
                for l in lines.iter().take(ANSWER_LINES) {
                    out.push_str(&format!("> - `{l}`\n"));
                }
                if lines.len() > ANSWER_LINES {
                    out.push_str(&format!("> - … {} more\n", lines.len() - ANSWER_LINES));
                }
            }
        }
    }
    if !applied.changes.is_empty() {
        out.push_str("\n<details><summary>Changes applied</summary>\n\n");
        for l in applied.changes.iter().take(ANSWER_LINES) {
            out.push_str(&format!("- `{l}`\n"));
        }
        out.push_str("\n</details>\n");
    }
    out
}

/// The commit-status sink: sets the status each event calls for, newest per commit first
/// superseding older ones, retrying transient failures with backoff (up to `max_attempts`)
/// in the background; an identical status is not sent twice.
pub async fn statuses(
    forge: Forge,
    settings: StatusSettings,
    mut events: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut desired: BTreeMap<String, CommitStatus> = BTreeMap::new();
    let mut sent: BTreeMap<String, CommitStatus> = BTreeMap::new();
    let mut sent_order: VecDeque<String> = VecDeque::new();
    let mut attempt: u32 = 0;
    let mut rng = fastrand::Rng::new();
    loop {
        let mut take = |event: Event, queue: &mut VecDeque<String>| {
            if let Some((sha, status)) = status_of(&event, &settings) {
                if !queue.contains(&sha) {
                    queue.push_back(sha.clone());
                }
                desired.insert(sha, status);
            }
        };
        // Wait for work (or, while retrying, for the backoff to pass).
        let wait = if queue.is_empty() {
            None
        } else if attempt == 0 {
            Some(Duration::ZERO)
        } else {
            Some(pbsync_target::pace::backoff(
                attempt - 1,
                Duration::from_secs(1),
                Duration::from_secs(300),
                &mut rng,
            ))
        };
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => { take(ev, &mut queue); while let Ok(ev) = events.try_recv() { take(ev, &mut queue); } continue; }
                None => return,
            },
            _ = stop.changed() => return,
            () = async { match wait { Some(w) => tokio::time::sleep(w).await, None => std::future::pending().await } } => {}
        }
        let Some(sha) = queue.front().cloned() else {
            continue;
        };
        let Some(status) = desired.get(&sha).cloned() else {
            queue.pop_front();
            continue;
        };
        if sent.get(&sha) == Some(&status) {
            queue.pop_front();
            desired.remove(&sha);
            continue;
        }
        match forge.set_status(&sha, &status).await {
            Ok(()) => {
                tracing::debug!(revision = %sha, state = status.state.as_str(), "commit status set");
                shared.metrics.count_report("commit-status", "sent");
                // A newer status for the commit may have arrived meanwhile: keep it queued.
                if desired.get(&sha) == Some(&status) {
                    desired.remove(&sha);
                    queue.pop_front();
                }
                sent.insert(sha.clone(), status);
                sent_order.retain(|s| *s != sha);
                sent_order.push_back(sha);
                while sent_order.len() > 64 {
                    if let Some(old) = sent_order.pop_front() {
                        sent.remove(&old);
                    }
                }
                attempt = 0;
            }
            Err(e) if e.is_transient() && attempt < MAX_ATTEMPTS => {
                attempt += 1;
                tracing::warn!(revision = %sha, attempt, error = %pbsync_core::error_chain(&e), "cannot set the commit status; retrying");
                shared.metrics.count_report("commit-status", "failed");
            }
            Err(e) => {
                tracing::warn!(revision = %sha, error = %pbsync_core::error_chain(&e), "cannot set the commit status; giving up on this one");
                shared.metrics.count_report("commit-status", "failed");
                queue.pop_front();
                desired.remove(&sha);
                attempt = 0;
            }
        }
    }
}

/// Attempts of one report before it is given up (about 20 minutes of backoff).
const MAX_ATTEMPTS: u32 = 8;

/// The pull-request sink: after a commit is applied for the first time, answers on each
/// merged pull request the commit belongs to with what was applied (one sticky comment per
/// instance), compared with the last plan posted there.
pub async fn answers(
    forge: Forge,
    instance: String,
    mut events: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut answered: HashSet<String> = HashSet::new();
    loop {
        let ev = tokio::select! {
            ev = events.recv() => match ev { Some(ev) => ev, None => return },
            _ = stop.changed() => return,
        };
        let Event::Applied {
            revision,
            summary,
            note,
            ..
        } = ev
        else {
            continue;
        };
        if answered.contains(&revision) {
            continue;
        }
        let mut rng = fastrand::Rng::new();
        let mut attempt = 0;
        loop {
            match answer_once(&forge, &instance, &revision, &summary, &note).await {
                Ok(n) => {
                    if n > 0 {
                        shared.metrics.count_report("pull-request", "sent");
                    }
                    answered.insert(revision.clone());
                    break;
                }
                Err(e) if e.is_transient() && attempt < MAX_ATTEMPTS => {
                    shared.metrics.count_report("pull-request", "failed");
                    let wait = pbsync_target::pace::backoff(
                        attempt,
                        Duration::from_secs(1),
                        Duration::from_secs(300),
                        &mut rng,
                    );
                    attempt += 1;
                    tracing::warn!(revision = %revision, attempt, error = %pbsync_core::error_chain(&e), "cannot answer on the pull request; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return,
                    }
                }
                Err(e) => {
                    shared.metrics.count_report("pull-request", "failed");
                    tracing::warn!(revision = %revision, error = %pbsync_core::error_chain(&e), "cannot answer on the pull request; giving up");
                    answered.insert(revision.clone());
                    break;
                }
            }
        }
        if answered.len() > 1024 {
            answered.clear();
            answered.insert(revision);
        }
    }
}

/// Answers on every merged pull request `revision` belongs to; the number answered.
async fn answer_once(
    forge: &Forge,
    instance: &str,
    revision: &str,
    summary: &str,
    note: &ChangeNote,
) -> Result<usize, forge::Error> {
    let pulls = forge.pulls_of_commit(revision).await?;
    let mut n = 0;
    for pr in pulls
        .iter()
        .filter(|p| p.merged && p.merge_commit.as_deref().is_none_or(|m| m == revision))
    {
        let comments = forge.comments(pr.number).await?;
        // The last plan posted: the note sits in the first part of the newest plan comment.
        let posted = comments
            .iter()
            .rev()
            .filter(|c| c.body.starts_with(MARKER))
            .find_map(|c| ChangeNote::find(&c.body));
        let body = answer(instance, revision, summary, note, posted.as_ref());
        let marker = answer_marker(instance);
        let (steps, _) = sticky::steps(&comments, &marker, &[body]);
        for step in steps {
            match step {
                sticky::Step::Update { id, body } => {
                    forge.update_comment(pr.number, id, &body).await?;
                }
                sticky::Step::Create { body } => {
                    forge.create_comment(pr.number, &body).await?;
                }
                sticky::Step::Delete { id } => forge.delete_comment(pr.number, id).await?,
            }
        }
        tracing::info!(pull_request = pr.number, revision = %revision, differs = posted.as_ref().is_some_and(|p| p.difference(note).is_some()), "answered on the merged pull request");
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(wait_for_health: bool) -> StatusSettings {
        StatusSettings {
            context: "pbsync/platform".into(),
            target_url: Some("http://127.0.0.1:9/".into()),
            wait_for_health,
        }
    }

    fn note(lines: &[&str]) -> ChangeNote {
        use sha2::Digest as _;
        let changes: Vec<String> = lines.iter().map(|l| (*l).to_string()).collect();
        ChangeNote {
            count: changes.len(),
            sha256: hex::encode(sha2::Sha256::digest(changes.join("\n").as_bytes())),
            changes,
        }
    }

    #[test]
    fn a_commit_goes_pending_then_success_once_healthy() {
        let s = settings(true);
        let applying = status_of(
            &Event::Applying {
                revision: "abc".into(),
            },
            &s,
        )
        .expect("a status");
        assert_eq!(applying.0, "abc");
        assert_eq!(applying.1.state, forge::State::Pending);
        assert_eq!(applying.1.context, "pbsync/platform");
        let applied = status_of(
            &Event::Applied {
                revision: "abc".into(),
                summary: "2 created".into(),
                acted: true,
                note: note(&[]),
            },
            &s,
        )
        .expect("a status");
        assert_eq!(applied.1.state, forge::State::Pending);
        assert!(applied.1.description.contains("waiting for health"));
        let healthy = status_of(
            &Event::Health {
                revision: "abc".into(),
                state: Health::Current,
                line: String::new(),
            },
            &s,
        )
        .expect("a status");
        assert_eq!(healthy.1.state, forge::State::Success);
        let broken = status_of(
            &Event::Health {
                revision: "abc".into(),
                state: Health::Failed,
                line: "HelmRepository team-a/charts: failed: 404".into(),
            },
            &s,
        )
        .expect("a status");
        assert_eq!(broken.1.state, forge::State::Failure);
        assert!(broken.1.description.contains("404"));
    }

    #[test]
    fn without_waiting_for_health_applied_is_success_and_health_is_silent() {
        let s = settings(false);
        let applied = status_of(
            &Event::Applied {
                revision: "abc".into(),
                summary: "1 updated".into(),
                acted: true,
                note: note(&[]),
            },
            &s,
        )
        .expect("a status");
        assert_eq!(applied.1.state, forge::State::Success);
        assert_eq!(
            status_of(
                &Event::Health {
                    revision: "abc".into(),
                    state: Health::Failed,
                    line: String::new()
                },
                &s
            ),
            None
        );
    }

    #[test]
    fn an_invalid_commit_fails_with_its_first_violations() {
        let violations: Vec<String> = (1..=5)
            .map(|i| format!("bundles/a.yaml:{i}: R1-schema: bad"))
            .collect();
        let (_, s) = status_of(
            &Event::Failed {
                revision: Some("abc".into()),
                stage: "validate".into(),
                message: "5 violations".into(),
                violations,
            },
            &settings(true),
        )
        .expect("a status");
        assert_eq!(s.state, forge::State::Failure);
        assert!(
            s.description
                .starts_with("invalid, nothing applied: bundles/a.yaml:1: R1-schema")
        );
        assert!(s.description.contains("(+2 more)"), "{}", s.description);
        // A fetch that failed before a commit was read has no commit to mark.
        assert_eq!(
            status_of(
                &Event::Failed {
                    revision: None,
                    stage: "fetch".into(),
                    message: "no route".into(),
                    violations: Vec::new()
                },
                &settings(true)
            ),
            None
        );
    }

    #[test]
    fn an_answer_says_loudly_when_the_applied_changes_differ_from_the_posted_plan() {
        let posted = note(&["create ConfigMap team-a/a"]);
        let same = answer(
            "platform",
            "abcdef0123456789",
            "1 created",
            &posted,
            Some(&posted),
        );
        assert!(same.starts_with(&answer_marker("platform")));
        assert!(same.contains("matches the last plan posted"));
        assert!(!same.contains("WARNING"));

        let applied = note(&["create ConfigMap team-a/a", "delete ConfigMap team-a/b"]);
        let differs = answer(
            "platform",
            "abcdef0123456789",
            "1 created, 1 deleted",
            &applied,
            Some(&posted),
        );
        assert!(differs.contains("[!WARNING]"));
        assert!(differs.contains("reviewers did not see this change"));
        assert!(differs.contains("`delete ConfigMap team-a/b`"));

        let unposted = answer("platform", "abcdef0123456789", "1 created", &posted, None);
        assert!(unposted.contains("No plan by pbsync was posted"));
    }

    #[tokio::test]
    async fn a_status_the_provider_refuses_for_a_while_is_sent_once_it_is_back() {
        use pbsync_devkit::testkit::gitlab::GitlabSim;
        let sim = GitlabSim::start("t", "a/b");
        let forge = Forge::new(&forge::Settings {
            provider: forge::Provider::Gitlab,
            api_url: sim.api_url.clone(),
            repository: "a/b".into(),
            token: pbsync_target::Secret::new("t"),
            timeout: Duration::from_secs(10),
        })
        .expect("client");
        // The client retries 3 times itself; the sink retries the status after that.
        sim.fail_next(4);
        let shared = Arc::new(Shared {
            health: super::super::health::Health::default(),
            board: super::super::board::Board::default(),
            metrics: super::super::metrics::Metrics::new(),
            triggers: mpsc::channel(1).0,
            webhook: Mutex::default(),
            page: Mutex::default(),
            reporter: Reporter::default(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (_stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(statuses(
            forge,
            settings(false),
            rx,
            Arc::clone(&shared),
            stop,
        ));
        let sha = "0123456789abcdef0123456789abcdef01234567";
        // Sending never waits for the provider.
        tx.send(Event::Applied {
            revision: sha.into(),
            summary: "1 created".into(),
            acted: true,
            note: note(&[]),
        })
        .expect("send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while sim.statuses().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the status never arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            sim.unavailable(),
            4,
            "the outage was met, then sent through"
        );
        assert_eq!(sim.statuses().len(), 1);
        assert_eq!(sim.statuses()[0]["status"], "success");
        let metrics = shared.metrics.render();
        assert!(
            metrics.contains("pbsync_reports_total{sink=\"commit-status\",result=\"failed\"} 1"),
            "{metrics}"
        );
        task.abort();
    }
}
