//! The request budget of the Kubernetes target: the retry policy (429 honours Retry-After;
//! 5xx and transport failures back off with the one backoff of `pace`) and the verbs
//! requests are counted by. The token bucket is `pace`'s; the counts are `counts`'.

use std::fmt;
use std::time::Duration;

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
    /// A (re-)list of a watch-fed cache: its first list, or a list again after the server
    /// said the watch expired (`410 Gone`). The watch that follows is one long request.
    Watch,
}

impl Verb {
    /// Every verb, in counting order.
    pub const ALL: [Self; 9] = [
        Self::Discovery,
        Self::List,
        Self::Get,
        Self::DryRun,
        Self::Apply,
        Self::Patch,
        Self::Create,
        Self::Delete,
        Self::Watch,
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
            Self::Watch => "watch",
        }
    }
}

impl From<Verb> for &'static str {
    fn from(v: Verb) -> Self {
        v.as_str()
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

    /// The one backoff (`pace::backoff`: doubling, equal jitter).
    fn backoff(&self, attempt: u32) -> Duration {
        crate::pace::backoff(
            attempt,
            self.base,
            self.max_delay,
            &mut fastrand::Rng::new(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
