//! The request budget of the Kubernetes target: a token bucket (QPS and burst), the retry
//! policy (429 honours Retry-After; 5xx and transport failures back off exponentially), and
//! the request counts by verb and status code. Pure apart from tokio's clock.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What a request does, as counted. Dry-runs are counted apart from writes so "a pass with
/// nothing to do issues zero writes" can be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// API discovery (`/apis/<group>`, `/apis/<group>/<version>`).
    Discovery,
    /// A page of a list.
    List,
    /// One object.
    Get,
    /// A server-side dry-run of an apply: never persisted.
    DryRun,
    /// A server-side apply.
    Apply,
    /// A merge patch (release, deletion policy, ...).
    Patch,
    /// A create (Events).
    Create,
    /// A delete.
    Delete,
}

impl Verb {
    /// Every verb, in counting order.
    pub const ALL: [Self; 8] = [
        Self::Discovery,
        Self::List,
        Self::Get,
        Self::DryRun,
        Self::Apply,
        Self::Patch,
        Self::Create,
        Self::Delete,
    ];

    /// The verb as printed and used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discovery => "discovery",
            Self::List => "list",
            Self::Get => "get",
            Self::DryRun => "dry-run",
            Self::Apply => "apply",
            Self::Patch => "patch",
            Self::Create => "create",
            Self::Delete => "delete",
        }
    }

    /// True for requests that change something on the server.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Self::Apply | Self::Patch | Self::Create | Self::Delete
        )
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Requests sent, by verb and HTTP status code (0: no response, e.g. a timeout). Every
/// attempt counts, retries included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    counts: BTreeMap<(Verb, u16), u64>,
}

impl RequestCounts {
    /// Requests of `verb` answered with `code`.
    pub fn get(&self, verb: Verb, code: u16) -> u64 {
        self.counts.get(&(verb, code)).copied().unwrap_or(0)
    }

    /// Requests of `verb`, whatever the answer.
    pub fn verb(&self, verb: Verb) -> u64 {
        self.counts
            .iter()
            .filter(|((v, _), _)| *v == verb)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests that change something on the server (apply, patch, create, delete).
    pub fn writes(&self) -> u64 {
        self.counts
            .iter()
            .filter(|((v, _), _)| v.is_write())
            .map(|(_, n)| n)
            .sum()
    }

    /// Every request.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// `(verb, code, count)` in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (Verb, u16, u64)> + '_ {
        self.counts.iter().map(|((v, c), n)| (*v, *c, *n))
    }

    /// The counts added since `earlier` (a snapshot of the same counter).
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        let counts = self
            .counts
            .iter()
            .map(|(k, n)| (*k, n - earlier.counts.get(k).copied().unwrap_or(0).min(*n)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Self { counts }
    }

    pub(super) fn add(&mut self, verb: Verb, code: u16) {
        *self.counts.entry((verb, code)).or_default() += 1;
    }
}

impl fmt::Display for RequestCounts {
    /// `apply 200: 3, dry-run 200: 5`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.counts.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self
            .iter()
            .map(|(v, c, n)| format!("{v} {c}: {n}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// A token bucket: `qps` tokens a second, at most `burst` saved up. Each request takes one;
/// a request that finds none waits for its turn (reservations keep waiters in order).
#[derive(Debug)]
pub(super) struct Bucket {
    qps: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket. `qps <= 0` means no limit.
    pub(super) fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps,
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    /// How long the caller must wait before sending; takes its token now.
    fn reserve(&self) -> Duration {
        if self.qps <= 0.0 {
            return Duration::ZERO;
        }
        // A panic while holding the lock leaves consistent numbers behind: recover them.
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.qps).min(self.burst);
        s.at = now;
        s.tokens -= 1.0;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / self.qps)
        }
    }

    /// Waits for a token.
    pub(super) async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt<'a> {
    /// The server answered with this status and, maybe, a `Retry-After` header.
    Answered {
        /// HTTP status.
        code: u16,
        /// `Retry-After` header value.
        retry_after: Option<&'a str>,
    },
    /// No answer: connection refused, reset, timed out.
    NoAnswer,
}

/// When to try a request again.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub(super) max_attempts: u32,
    /// First backoff delay; doubles each retry.
    pub(super) base: Duration,
    /// Longest backoff delay.
    pub(super) max_delay: Duration,
    /// Longest wait a `Retry-After` header can ask for.
    pub(super) max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (`attempt` counts from 0), or `None` when the
    /// request is done: it succeeded, failed for good (other 4xx; 409 is retried by the caller
    /// after re-reading), or ran out of attempts.
    pub(super) fn delay(&self, attempt: u32, outcome: Attempt<'_>) -> Option<Duration> {
        if attempt + 1 >= self.max_attempts {
            return None;
        }
        match outcome {
            Attempt::Answered {
                code: 429,
                retry_after,
            } => Some(
                retry_after
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map_or_else(
                        || self.backoff(attempt),
                        |secs| Duration::from_secs(secs).min(self.max_retry_after),
                    ),
            ),
            Attempt::Answered { code, .. } if (500..600).contains(&code) && code != 501 => {
                Some(self.backoff(attempt))
            }
            Attempt::Answered { .. } => None,
            Attempt::NoAnswer => Some(self.backoff(attempt)),
        }
    }

    /// Exponential backoff with jitter in [50%, 100%] of the step, so that concurrent
    /// requests that failed together do not retry together.
    fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        step.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_spends_the_burst_then_paces_at_qps() {
        let bucket = Bucket::new(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            bucket.acquire().await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(999) && waited <= Duration::from_millis(1001),
            "10 more tokens at 10 qps take a second, took {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_while_idle_but_not_past_the_burst() {
        let bucket = Bucket::new(100.0, 3);
        for _ in 0..3 {
            bucket.acquire().await;
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        let start = Instant::now();
        for _ in 0..3 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        bucket.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_qps_means_no_limit() {
        let bucket = Bucket::new(0.0, 1);
        let start = Instant::now();
        for _ in 0..1000 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn too_many_requests_honours_retry_after() {
        let p = RetryPolicy::default();
        let d = p.delay(
            0,
            Attempt::Answered {
                code: 429,
                retry_after: Some("3"),
            },
        );
        assert_eq!(d, Some(Duration::from_secs(3)));
        let capped = p.delay(
            0,
            Attempt::Answered {
                code: 429,
                retry_after: Some("3600"),
            },
        );
        assert_eq!(capped, Some(p.max_retry_after));
    }

    #[test]
    fn server_errors_and_timeouts_back_off_exponentially() {
        let p = RetryPolicy::default();
        for attempt in 0..(p.max_attempts - 1) {
            let step = p.base.saturating_mul(1 << attempt).min(p.max_delay);
            for outcome in [
                Attempt::Answered {
                    code: 503,
                    retry_after: None,
                },
                Attempt::NoAnswer,
            ] {
                let d = p.delay(attempt, outcome).expect("retried");
                assert!(d >= step / 2 && d <= step, "{d:?} not within {step:?}");
            }
        }
        assert_eq!(p.delay(p.max_attempts - 1, Attempt::NoAnswer), None);
    }

    #[test]
    fn client_errors_and_conflicts_are_not_retried_here() {
        let p = RetryPolicy::default();
        for code in [200, 201, 400, 403, 404, 409, 422, 501] {
            let outcome = Attempt::Answered {
                code,
                retry_after: None,
            };
            assert_eq!(p.delay(0, outcome), None, "{code}");
        }
    }

    #[test]
    fn counts_tell_writes_from_reads_and_dry_runs() {
        let mut c = RequestCounts::default();
        c.add(Verb::List, 200);
        c.add(Verb::DryRun, 200);
        c.add(Verb::DryRun, 422);
        let before = c.clone();
        c.add(Verb::Apply, 200);
        c.add(Verb::Delete, 404);
        assert_eq!(c.writes(), 2);
        assert_eq!(c.verb(Verb::DryRun), 2);
        assert_eq!(c.total(), 5);
        let delta = c.since(&before);
        assert_eq!(delta.total(), 2);
        assert_eq!(delta.to_string(), "apply 200: 1, delete 404: 1");
    }
}
