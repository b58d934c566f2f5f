//! The daemon's Prometheus metrics (`/metrics`, via `prometheus-client`): reconcile duration
//! per stage, reconciles by result, the last applied revision and when, objects by kind and
//! action, API requests by target, verb and status, webhook deliveries by result, and the
//! revision lag. Label values come from bounded sets (stages, outcome words, kinds, verbs),
//! never from error text.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use pbsync_target::ChangeSet;

type Labels = Vec<(&'static str, String)>;

/// Every metric of the daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    stage_seconds: Family<Labels, Histogram>,
    reconciles: Family<Labels, Counter>,
    applied_revision: Family<Labels, Gauge>,
    applied_timestamp: Gauge,
    objects: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    webhooks: Family<Labels, Counter>,
    reports: Family<Labels, Counter>,
    lag_commits: Gauge,
    leader: Gauge,
    health_objects: Family<Labels, Gauge>,
    healthy_timestamp: Gauge,
    healthy_age: Gauge,
    /// Request counts already added, per (target, verb, code).
    seen_requests: Mutex<std::collections::BTreeMap<(String, String, u16), u64>>,
    last_revision: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pbsync");
        let stage_seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 16))
        });
        let reconciles = Family::<Labels, Counter>::default();
        let applied_revision = Family::<Labels, Gauge>::default();
        let applied_timestamp = Gauge::default();
        let objects = Family::<Labels, Counter>::default();
        let requests = Family::<Labels, Counter>::default();
        let webhooks = Family::<Labels, Counter>::default();
        let reports = Family::<Labels, Counter>::default();
        let lag_commits = Gauge::default();
        let leader = Gauge::default();
        let health_objects = Family::<Labels, Gauge>::default();
        let healthy_timestamp = Gauge::default();
        let healthy_age = Gauge::default();
        registry.register(
            "reconcile_duration_seconds",
            "Duration of each stage of a reconcile (fetch, parse, observe, plan, apply) and of the whole pass (total)",
            stage_seconds.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by result (applied, unchanged, failed, skipped) and failed stage",
            reconciles.clone(),
        );
        registry.register(
            "last_applied_revision_info",
            "The revision applied completely last (value 1)",
            applied_revision.clone(),
        );
        registry.register(
            "last_applied_timestamp_seconds",
            "When the last revision was applied completely (Unix time)",
            applied_timestamp.clone(),
        );
        registry.register(
            "objects",
            "Objects handled by kind and action (created, configured, deleted, orphaned, failed, ...)",
            objects.clone(),
        );
        registry.register(
            "api_requests",
            "Requests to the targets by target, verb and HTTP status (0: no answer)",
            requests.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by result (accepted, ignored, bad_signature, missing_signature, disabled)",
            webhooks.clone(),
        );
        registry.register(
            "reports",
            "Reports sent back by sink (commit-status, pull-request, webhook, slack) and result (sent, failed, suppressed)",
            reports.clone(),
        );
        registry.register(
            "revision_lag_commits",
            "Commits between the last applied revision and the current tip (0: up to date)",
            lag_commits.clone(),
        );
        registry.register(
            "leader",
            "1 when this daemon may apply (leader, or leader election off), else 0",
            leader.clone(),
        );
        registry.register(
            "health_objects",
            "Objects of the followed revision by kind and health (current, in-progress, unknown, failed)",
            health_objects.clone(),
        );
        registry.register(
            "last_healthy_timestamp_seconds",
            "When a revision last became fully healthy (Unix time; 0: not yet)",
            healthy_timestamp.clone(),
        );
        registry.register(
            "last_healthy_age_seconds",
            "Seconds since a revision last became fully healthy (-1: not yet)",
            healthy_age.clone(),
        );
        healthy_age.set(-1);
        Self {
            registry,
            health_objects,
            healthy_timestamp,
            healthy_age,
            stage_seconds,
            reconciles,
            applied_revision,
            applied_timestamp,
            objects,
            requests,
            webhooks,
            reports,
            lag_commits,
            leader,
            seen_requests: Mutex::default(),
            last_revision: Mutex::default(),
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let healthy = self.healthy_timestamp.get();
        if healthy > 0 {
            let now = jiff::Timestamp::now().as_second();
            self.healthy_age.set((now - healthy).max(0));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Records how long a stage took.
    pub fn observe_stage(&self, stage: &str, seconds: f64) {
        self.stage_seconds
            .get_or_create(&vec![("stage", stage.to_string())])
            .observe(seconds);
    }

    /// Counts a reconcile.
    pub fn count_reconcile(&self, result: &str, stage: Option<&str>) {
        self.reconciles
            .get_or_create(&vec![
                ("result", result.to_string()),
                ("stage", stage.unwrap_or("").to_string()),
            ])
            .inc();
    }

    /// Records a revision applied completely at `unix_seconds`.
    pub fn applied(&self, revision: &str, unix_seconds: i64) {
        let mut last = self
            .last_revision
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = last.replace(revision.to_string()) {
            self.applied_revision.remove(&vec![("revision", old)]);
        }
        self.applied_revision
            .get_or_create(&vec![("revision", revision.to_string())])
            .set(1);
        self.applied_timestamp.set(unix_seconds);
    }

    /// Counts the objects of a ChangeSet by kind and outcome.
    pub fn count_changes(&self, changes: &ChangeSet) {
        for e in &changes.entries {
            self.objects
                .get_or_create(&vec![
                    ("kind", e.key.kind.to_string()),
                    ("action", e.outcome.to_string()),
                ])
                .inc();
        }
    }

    /// Sets the objects by kind and health from `report` (labels: the kinds and the four
    /// states, a bounded set; kinds without objects drop out).
    pub fn set_health(&self, report: &pbsync_core::health::Report) {
        let mut counts: std::collections::BTreeMap<(String, pbsync_core::health::State), i64> =
            std::collections::BTreeMap::new();
        for (key, h) in &report.objects {
            *counts.entry((key.kind.to_string(), h.state)).or_default() += 1;
        }
        self.health_objects.clear();
        let kinds: std::collections::BTreeSet<&String> = counts.keys().map(|k| &k.0).collect();
        for kind in kinds {
            for state in pbsync_core::health::State::ALL {
                let n = counts.get(&(kind.clone(), state)).copied().unwrap_or(0);
                self.health_objects
                    .get_or_create(&vec![("kind", kind.clone()), ("health", state.to_string())])
                    .set(n);
            }
        }
    }

    /// Records that a revision became fully healthy at `unix_seconds`.
    pub fn healthy(&self, unix_seconds: i64) {
        self.healthy_timestamp.set(unix_seconds);
    }

    /// Counts one webhook delivery.
    pub fn count_webhook(&self, result: &str) {
        self.webhooks
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Counts one report of `sink` (commit-status, pull-request, webhook, slack) by result.
    pub fn count_report(&self, sink: &str, result: &str) {
        self.reports
            .get_or_create(&vec![
                ("sink", sink.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    /// Sets the revision lag.
    pub fn set_lag(&self, commits: i64) {
        self.lag_commits.set(commits);
    }

    /// Sets whether this daemon may apply.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Adds what a target counted since the last call.
    pub fn count_requests(&self, target: &impl pbsync_target::Target) {
        let mut totals = Vec::new();
        for (name, counts) in target.request_counts() {
            for (verb, code, n) in counts.iter() {
                totals.push((name, verb.to_string(), code, n));
            }
        }
        let mut seen = self
            .seen_requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, verb, code, total) in totals {
            let key = (name.to_string(), verb.clone(), code);
            let before = seen.get(&key).copied().unwrap_or(0);
            if total > before {
                self.requests
                    .get_or_create(&vec![
                        ("target", name.to_string()),
                        ("verb", verb),
                        ("code", code.to_string()),
                    ])
                    .inc_by(total - before);
            }
            seen.insert(key, total.max(before));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let m = Metrics::new();
        m.observe_stage("fetch", 0.01);
        m.count_reconcile("applied", None);
        m.applied("abc", 1);
        m.applied("def", 2);
        m.count_webhook("bad_signature");
        let text = m.render();
        for name in [
            "pbsync_reconcile_duration_seconds_bucket",
            "pbsync_reconciles_total{result=\"applied\"",
            "pbsync_last_applied_revision_info{revision=\"def\"} 1",
            "pbsync_last_applied_timestamp_seconds 2",
            "pbsync_webhook_deliveries_total{result=\"bad_signature\"} 1",
            "pbsync_revision_lag_commits 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(!text.contains("revision=\"abc\""), "{text}");
    }
}
