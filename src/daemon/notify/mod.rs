//! Notifications: a generic webhook (CloudEvents 1.0, structured mode) and a Slack-compatible
//! incoming webhook, told about pass outcomes and health changes. Pure: no I/O; [`sink`]
//! sends.
//!
//! Three decisions, in this order, each sink with its own state:
//! - [`Deduper`]: what an event means given what came before ([`What`]); the same failure
//!   that every retry reports again is news once (again only after `repeat-interval`), a
//!   success after failures is a recovery, and health counts only when its state changes.
//! - [`Filter`]: what this sink wants (`failures`, `changes`, `all`).
//! - [`RateLimiter`]: at most one notification per `min-interval`; what comes faster is
//!   held and sent as the latest, with the headlines of the others it stands for.

pub mod sink;

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::report::Event;
use pbsync_core::health::State as Health;
use pbsync_target::Secret;

/// Where a sink sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A generic webhook: a CloudEvents 1.0 JSON event per notification.
    Cloudevents,
    /// A Slack (or Mattermost, Rocket.Chat, ...) incoming webhook: `{"text": ...}`.
    Slack,
}

impl Kind {
    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cloudevents => "cloudevents",
            Self::Slack => "slack",
        }
    }

    /// The `sink` label of `pbsync_reports_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Cloudevents => "webhook",
            Self::Slack => "slack",
        }
    }
}

/// What a sink is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Failed passes, health turning failed, and the recovery after either.
    #[default]
    Failures,
    /// Also every commit applied that changed something, and every health state change.
    Changes,
    /// Also every commit started and every commit applied, changed or not.
    All,
}

impl Filter {
    /// Whether a sink with this filter is told `what`.
    pub fn admits(self, what: &What) -> bool {
        let failure = match what {
            What::Failed { .. } | What::Recovered { .. } => true,
            What::Health {
                turned_failed,
                recovered,
                ..
            } => *turned_failed || *recovered,
            What::Applying | What::Applied { .. } => false,
        };
        let change = match what {
            What::Applied { acted } => *acted,
            What::Health { .. } => true,
            _ => failure,
        };
        match self {
            Self::Failures => failure,
            Self::Changes => change,
            Self::All => true,
        }
    }
}

/// One validated entry of `notifications:`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Names it in logs (default `<kind>-<position>`).
    pub name: String,
    /// Where it sends.
    pub kind: Kind,
    /// The endpoint; a Slack webhook's URL is its credential, so always a secret.
    pub url: Secret,
    /// CloudEvents: the key of the body's HMAC-SHA256 in [`SIGNATURE_HEADER`].
    pub secret: Option<Secret>,
    /// What it is told.
    pub on: Filter,
    /// At most one notification per this long (zero: no limit).
    pub min_interval: Duration,
    /// The same failure is told again after this long (`None`: never).
    pub repeat_interval: Option<Duration>,
}

/// Default `min-interval`.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Default `repeat-interval`.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(3600);
/// The header carrying `sha256=<hex HMAC-SHA256 of the body>` when a secret is configured
/// (the same form as the webhook pbsync receives).
pub const SIGNATURE_HEADER: &str = "X-Pbsync-Signature";
/// The prefix of every CloudEvents `type` pbsync sends.
pub const TYPE_PREFIX: &str = "ai.palette.pbsync.";

/// What an event means for the people watching, given what came before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A pass started applying a commit.
    Applying,
    /// A commit was applied (`acted`: something was written).
    Applied {
        /// Something was written.
        acted: bool,
    },
    /// A pass failed.
    Failed {
        /// The same failure as told before, told again after `repeat-interval`.
        again: bool,
    },
    /// The first good pass after failures.
    Recovered {
        /// The stage of the failure it recovers from.
        from: String,
    },
    /// The health of the applied commit changed state.
    Health {
        /// The state before (`None`: the first reading).
        from: Option<Health>,
        /// The state now.
        to: Health,
        /// It turned failed (not: failed again without becoming current in between).
        turned_failed: bool,
        /// It became current after being failed.
        recovered: bool,
    },
}

impl What {
    /// The CloudEvents `type`.
    pub fn event_type(&self) -> String {
        let suffix = match self {
            Self::Applying => "pass.applying",
            Self::Applied { .. } => "pass.applied",
            Self::Failed { .. } => "pass.failed",
            Self::Recovered { .. } => "pass.recovered",
            Self::Health { .. } => "health.changed",
        };
        format!("{TYPE_PREFIX}{suffix}")
    }
}

/// A failure: the same key again is the same failure.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FailureKey {
    revision: Option<String>,
    stage: String,
    message: String,
}

/// The failure last told, and when.
#[derive(Debug, Clone)]
struct Failing {
    key: FailureKey,
    told: Instant,
}

/// Turns events into [`What`] changed, dropping repeats (see the module).
#[derive(Debug, Default)]
pub struct Deduper {
    repeat: Option<Duration>,
    failing: Option<Failing>,
    health: Option<Health>,
    /// Health turned failed and has not been current since.
    health_failed: bool,
}

impl Deduper {
    /// A deduper telling the same failure again after `repeat` (`None`: never).
    pub fn new(repeat: Option<Duration>) -> Self {
        Self {
            repeat,
            ..Self::default()
        }
    }

    /// What `event`, seen at `now`, changes; `None`: nothing (a repeated failure, a health
    /// reading in the same state, a fetch after a fetch that worked).
    pub fn observe(&mut self, event: &Event, now: Instant) -> Option<What> {
        match event {
            Event::Applying { .. } => Some(What::Applying),
            Event::Applied { acted, .. } => Some(match self.failing.take() {
                Some(f) => What::Recovered { from: f.key.stage },
                None => What::Applied { acted: *acted },
            }),
            Event::Fetched { .. } => {
                // Only a fetch failure (which has no commit) is recovered by a fetch; a commit
                // that failed later is recovered by its (or a newer commit's) apply.
                if self
                    .failing
                    .as_ref()
                    .is_some_and(|f| f.key.revision.is_none())
                {
                    self.failing
                        .take()
                        .map(|f| What::Recovered { from: f.key.stage })
                } else {
                    None
                }
            }
            Event::Failed {
                revision,
                stage,
                message,
                ..
            } => {
                let key = FailureKey {
                    revision: revision.clone(),
                    stage: stage.clone(),
                    message: message.clone(),
                };
                let again = match &self.failing {
                    Some(f) if f.key == key => {
                        let due = self
                            .repeat
                            .is_some_and(|r| now.saturating_duration_since(f.told) >= r);
                        if !due {
                            return None;
                        }
                        true
                    }
                    _ => false,
                };
                self.failing = Some(Failing { key, told: now });
                Some(What::Failed { again })
            }
            Event::Health { state, .. } => {
                let from = self.health.replace(*state);
                if from == Some(*state) {
                    return None;
                }
                let turned_failed = *state == Health::Failed && !self.health_failed;
                let recovered = *state == Health::Current && self.health_failed;
                match state {
                    Health::Failed => self.health_failed = true,
                    Health::Current => self.health_failed = false,
                    Health::InProgress | Health::Unknown => {}
                }
                Some(What::Health {
                    from,
                    to: *state,
                    turned_failed,
                    recovered,
                })
            }
        }
    }
}

/// What a [`RateLimiter`] lets through: the latest item held, and the others it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<T> {
    /// The newest item.
    pub latest: T,
    /// Older items held back, oldest first (at most [`HELD`] - 1 of them).
    pub earlier: Vec<T>,
    /// How many items this batch stands for besides `latest` (`earlier` and any dropped).
    pub suppressed: usize,
}

/// Most items a [`RateLimiter`] holds; older ones are only counted.
pub const HELD: usize = 20;

/// At most one batch per `min_interval`: the first item after a quiet period goes at once,
/// what comes within the interval is held and goes, folded into one batch, when it ends.
#[derive(Debug)]
pub struct RateLimiter<T> {
    min_interval: Duration,
    last_sent: Option<Instant>,
    held: VecDeque<T>,
    dropped: usize,
}

impl<T> RateLimiter<T> {
    /// A limiter letting one batch through per `min_interval` (zero: every item alone).
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_sent: None,
            held: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Holds `item` until [`Self::take`] lets it through.
    pub fn offer(&mut self, item: T) {
        if self.held.len() == HELD {
            self.held.pop_front();
            self.dropped += 1;
        }
        self.held.push_back(item);
    }

    /// How long from `now` until something held may go; `None`: nothing is held.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        if self.held.is_empty() {
            return None;
        }
        Some(self.last_sent.map_or(Duration::ZERO, |t| {
            // An interval past the clock's range never ends.
            t.checked_add(self.min_interval)
                .map_or(Duration::MAX, |open| open.saturating_duration_since(now))
        }))
    }

    /// What may go at `now`: everything held, as one batch; `None` while the interval since
    /// the last batch runs, or when nothing is held.
    pub fn take(&mut self, now: Instant) -> Option<Batch<T>> {
        if self.wait(now)? > Duration::ZERO {
            return None;
        }
        let latest = self.held.pop_back()?;
        let earlier: Vec<T> = self.held.drain(..).collect();
        let suppressed = earlier.len() + std::mem::take(&mut self.dropped);
        self.last_sent = Some(now);
        Some(Batch {
            latest,
            earlier,
            suppressed,
        })
    }
}

/// One notification: what happened, the event that says so, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// What it means.
    pub what: What,
    /// The event.
    pub event: Event,
    /// When it was seen.
    pub at: jiff::Timestamp,
}

/// Characters of a commit id shown in a line.
const SHORT: usize = 12;
/// Most characters of an error message in a line.
const MESSAGE_CHARS: usize = 300;
/// Most violations listed in a Slack message.
const VIOLATIONS_SHOWN: usize = 3;
/// Most violations carried in a CloudEvent.
const VIOLATIONS_CARRIED: usize = 20;

fn short(revision: &str) -> &str {
    revision.get(..SHORT).unwrap_or(revision)
}

/// `s` cut to `max` characters, an ellipsis marking the cut.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// The first line of an error message, cut.
fn first_line(message: &str) -> String {
    cut(message.lines().next().unwrap_or_default(), MESSAGE_CHARS)
}

/// One line saying what happened (Slack's text, the CloudEvent's `summary`, the headlines of
/// held-back notifications).
pub fn headline(notice: &Notice) -> String {
    let rev = notice.event.revision().map(short).unwrap_or_default();
    match (&notice.what, &notice.event) {
        (What::Failed { again }, Event::Failed { stage, message, .. }) => {
            let still = if *again { "still " } else { "" };
            let at = if rev.is_empty() {
                String::new()
            } else {
                format!(" {rev}")
            };
            format!("{still}failed at {stage}{at}: {}", first_line(message))
        }
        (What::Recovered { from }, Event::Applied { summary, .. }) => {
            format!("recovered (after failing at {from}): applied {rev}: {summary}")
        }
        (What::Recovered { from }, _) => {
            format!("recovered (after failing at {from}): fetched {rev}")
        }
        (What::Applying, _) => format!("applying {rev}"),
        (What::Applied { .. }, Event::Applied { summary, .. }) => {
            format!("applied {rev}: {summary}")
        }
        (
            What::Health {
                from,
                to,
                recovered,
                ..
            },
            event,
        ) => {
            let line = match event {
                Event::Health { line, .. } if !line.is_empty() => {
                    format!(": {}", cut(line, MESSAGE_CHARS))
                }
                _ => String::new(),
            };
            match (to, recovered) {
                (Health::Current, true) => format!("{rev} is healthy again"),
                (Health::Current, false) => format!("{rev} is healthy"),
                (Health::Failed, _) => format!("{rev} is unhealthy{line}"),
                (state, _) => {
                    let from = from.map(Health::as_str).unwrap_or("new");
                    format!("{rev} health {from} → {state}{line}")
                }
            }
        }
        // An event that does not carry what `what` says (not made by the deduper).
        (what, _) => format!("{} {rev}", what.event_type()),
    }
}

/// The word of `data.outcome`.
fn outcome(what: &What) -> &'static str {
    match what {
        What::Applying => "applying",
        What::Applied { .. } => "applied",
        What::Failed { .. } => "failed",
        What::Recovered { .. } => "recovered",
        What::Health { .. } => "health",
    }
}

/// The CloudEvent's `data`: the notice as JSON.
fn data(notice: &Notice, instance: &str) -> Value {
    let mut d = json!({
        "instance": instance,
        "outcome": outcome(&notice.what),
        "summary": headline(notice),
        "revision": notice.event.revision(),
    });
    let map = d.as_object_mut().expect("invariant: built as an object");
    match &notice.event {
        Event::Applied {
            summary,
            acted,
            note,
            ..
        } => {
            map.insert("changes".into(), json!(summary));
            map.insert("acted".into(), json!(acted));
            map.insert("changeCount".into(), json!(note.count));
        }
        Event::Failed {
            stage,
            message,
            violations,
            ..
        } => {
            map.insert("stage".into(), json!(stage));
            map.insert("message".into(), json!(message));
            map.insert(
                "violations".into(),
                json!(&violations[..violations.len().min(VIOLATIONS_CARRIED)]),
            );
            map.insert("violationCount".into(), json!(violations.len()));
        }
        Event::Health { state, line, .. } => {
            let previous = match &notice.what {
                What::Health { from, .. } => from.map(Health::as_str),
                _ => None,
            };
            map.insert(
                "health".into(),
                json!({ "state": state.as_str(), "previous": previous, "culprit": line }),
            );
        }
        Event::Applying { .. } | Event::Fetched { .. } => {}
    }
    match &notice.what {
        What::Failed { again } => {
            map.insert("repeated".into(), json!(again));
        }
        What::Recovered { from } => {
            map.insert("recoveredFrom".into(), json!(from));
        }
        _ => {}
    }
    d
}

/// `s` percent-encoded where a URI path segment may not hold it as is.
fn uri_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The CloudEvents 1.0 event (structured mode, `application/cloudevents+json`) of `batch`:
/// the latest notice, with the headlines of those it stands for in `data.earlier`. `id` is
/// unique per notification (kept across retries, so a receiver can drop a duplicate).
pub fn cloudevent(batch: &Batch<Notice>, instance: &str, id: &str) -> Value {
    let n = &batch.latest;
    let mut data = data(n, instance);
    if batch.suppressed > 0 {
        let map = data.as_object_mut().expect("invariant: built as an object");
        map.insert("suppressed".into(), json!(batch.suppressed));
        map.insert(
            "earlier".into(),
            json!(batch.earlier.iter().map(headline).collect::<Vec<_>>()),
        );
    }
    let mut event = json!({
        "specversion": "1.0",
        "id": id,
        "source": format!("pbsync/{}", uri_segment(instance)),
        "type": n.what.event_type(),
        "time": n.at.to_string(),
        "datacontenttype": "application/json",
    });
    let map = event
        .as_object_mut()
        .expect("invariant: built as an object");
    if let Some(rev) = n.event.revision() {
        map.insert("subject".into(), json!(rev));
    }
    map.insert("data".into(), data);
    event
}

/// `s` with the three characters Slack's mrkdwn reserves escaped.
fn mrkdwn(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Slack message of `batch`: one line (instance, an emoji for the outcome, the
/// headline), the first violations of an invalid commit, and what was held back.
pub fn slack(batch: &Batch<Notice>, instance: &str) -> Value {
    let n = &batch.latest;
    let emoji = match &n.what {
        What::Failed { .. } => ":x:",
        What::Recovered { .. } | What::Applied { .. } => ":white_check_mark:",
        What::Applying => ":arrows_counterclockwise:",
        What::Health { to, .. } => match to {
            Health::Current => ":white_check_mark:",
            Health::Failed => ":warning:",
            Health::InProgress | Health::Unknown => ":hourglass_flowing_sand:",
        },
    };
    let mut text = format!(
        "*pbsync {}* {emoji} {}",
        mrkdwn(instance),
        mrkdwn(&headline(n))
    );
    if let Event::Failed { violations, .. } = &n.event {
        for v in violations.iter().take(VIOLATIONS_SHOWN) {
            text.push_str(&format!("\n• {}", mrkdwn(&cut(v, MESSAGE_CHARS))));
        }
        if violations.len() > VIOLATIONS_SHOWN {
            text.push_str(&format!(
                "\n• … {} more",
                violations.len() - VIOLATIONS_SHOWN
            ));
        }
    }
    if batch.suppressed > 0 {
        let lines: Vec<String> = batch.earlier.iter().map(|e| mrkdwn(&headline(e))).collect();
        text.push_str(&format!(
            "\n_{} earlier held back by the rate limit: {}_",
            batch.suppressed,
            lines.join("; ")
        ));
    }
    json!({ "text": text })
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`, the value of [`SIGNATURE_HEADER`].
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit as _, Mac as _};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret).expect("invariant: HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests;
