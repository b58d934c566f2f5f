//! Requests a client sent, by operation and HTTP status code (0: no answer): the one counter
//! of the Kubernetes and Palette clients, read by `apply --stats` and the daemon's metrics.
//! Every attempt counts, retries included.

use std::collections::BTreeMap;
use std::fmt;

/// Operations that read without changing anything: everything else counts as a write.
const READS: [&str; 4] = ["discovery", "list", "get", "dry-run"];

/// Requests sent, by operation (`list`, `apply`, `publish`, ...) and status code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    counts: BTreeMap<(&'static str, u16), u64>,
}

impl RequestCounts {
    /// Counts one request of `op` answered with `code` (0: no answer).
    pub fn add(&mut self, op: impl Into<&'static str>, code: u16) {
        *self.counts.entry((op.into(), code)).or_default() += 1;
    }

    /// Requests of `op` answered with `code`.
    pub fn get(&self, op: impl Into<&'static str>, code: u16) -> u64 {
        self.counts.get(&(op.into(), code)).copied().unwrap_or(0)
    }

    /// Requests of `op`, whatever the answer.
    pub fn verb(&self, op: impl Into<&'static str>) -> u64 {
        let op = op.into();
        self.counts
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests that change something on the server (neither reads nor dry-runs).
    pub fn writes(&self) -> u64 {
        self.counts
            .iter()
            .filter(|((o, _), _)| !READS.contains(o))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every request.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// `(operation, code, count)` in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u16, u64)> + '_ {
        self.counts.iter().map(|((o, c), n)| (*o, *c, *n))
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
}

impl fmt::Display for RequestCounts {
    /// `apply 200: 3, dry-run 200: 5`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.counts.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self
            .iter()
            .map(|(o, c, n)| format!("{o} {c}: {n}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tell_writes_from_reads_and_dry_runs() {
        let mut c = RequestCounts::default();
        c.add("list", 200);
        c.add("dry-run", 200);
        c.add("dry-run", 422);
        let before = c.clone();
        c.add("apply", 200);
        c.add("delete", 404);
        assert_eq!(c.writes(), 2);
        assert_eq!(c.verb("dry-run"), 2);
        assert_eq!(c.get("dry-run", 422), 1);
        assert_eq!(c.total(), 5);
        let delta = c.since(&before);
        assert_eq!(delta.total(), 2);
        assert_eq!(delta.to_string(), "apply 200: 1, delete 404: 1");
    }
}
