//! Liveness and readiness, and what the daemon last did. Readiness is a latch (linkerd's
//! `Readiness`): released once, after the first successful fetch and parse, and never taken
//! back, so a later Git or API outage does not pull a working daemon out of rotation.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// What the last pass did, for `/status`, `pbsync status` and systemd `STATUS=`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LastOutcome {
    /// `applied`, `unchanged`, `failed`, `standby`.
    pub result: String,
    /// The revision the pass looked at.
    pub revision: Option<String>,
    /// The revision last applied completely.
    pub applied_revision: Option<String>,
    /// When (RFC 3339) the last revision was applied completely.
    pub applied_at: Option<String>,
    /// The failed stage.
    pub stage: Option<String>,
    /// Whether the failure is retried.
    pub retryable: Option<bool>,
    /// The error chain or the change counts.
    pub message: String,
    /// When (RFC 3339) the pass ended.
    pub at: String,
}

impl LastOutcome {
    /// One line for systemd `STATUS=` and logs.
    pub fn summary(&self) -> String {
        let short = |r: &Option<String>| {
            r.as_deref()
                .map(|r| r[..r.len().min(12)].to_string())
                .unwrap_or_else(|| "-".into())
        };
        match self.stage.as_deref() {
            Some(stage) => format!(
                "{} at {} of {}: {}",
                self.result,
                stage,
                short(&self.revision),
                self.message
            ),
            None => format!(
                "{} {}: {}",
                self.result,
                short(&self.revision),
                self.message
            ),
        }
    }
}

/// Liveness, readiness and the last outcome, shared by the loop and the HTTP endpoints.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    last: Mutex<LastOutcome>,
}

impl Health {
    /// Releases the readiness latch (idempotent).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// True once the first fetch and parse succeeded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records the outcome of a pass.
    pub fn record(&self, outcome: LastOutcome) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = outcome;
    }

    /// The last outcome.
    pub fn last(&self) -> LastOutcome {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_a_latch() {
        let h = Health::default();
        assert!(!h.is_ready());
        h.set_ready();
        h.record(LastOutcome {
            result: "failed".into(),
            ..LastOutcome::default()
        });
        assert!(h.is_ready());
    }

    #[test]
    fn a_failure_summary_names_the_stage_and_revision() {
        let o = LastOutcome {
            result: "failed".into(),
            revision: Some("0123456789abcdef".into()),
            stage: Some("validate".into()),
            message: "2 violations".into(),
            ..LastOutcome::default()
        };
        assert_eq!(
            o.summary(),
            "failed at validate of 0123456789ab: 2 violations"
        );
    }
}
