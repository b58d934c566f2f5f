//! The health board: after each applied revision the daemon keeps following the health of
//! every object of the revision's graph (the target's watches, [`Target::follow`]), traces it
//! through the graph ([`health::trace`]) and shows it: the `health` section of `/status`, the
//! web page, the metrics, an Event on each bundle whose health changes, and the revision that
//! became fully healthy in the target's status record ([`Target::record_health`]).
//!
//! Nothing is shown for a revision before every one of its objects has been read once, so a
//! first burst of readings never reads as healthy (or as broken).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::http::Shared;
use super::report::Event;
use pbsync_core::graph::ResourceGraph;
use pbsync_core::health::{self, Health, Report, State};
use pbsync_core::model::ObjectKey;
use pbsync_core::plan::Plan;
use pbsync_target::{HealthChange, HealthRecord, Target, now_rfc3339};

/// What the board shows: the last traced report of the followed revision, and the last
/// revision that became fully healthy.
#[derive(Debug, Default)]
pub struct Board {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    picture: Option<Picture>,
    /// The last revision that became fully healthy, when (RFC 3339 and Unix seconds).
    healthy: Option<(String, String)>,
    /// The plan of the last pass that ran the pipeline (secrets masked).
    plan: Option<Plan>,
}

/// One traced reading of a revision's health.
#[derive(Debug, Clone)]
pub struct Picture {
    /// The graph followed.
    pub graph: Arc<ResourceGraph>,
    /// Its health.
    pub report: Report,
    /// When it was traced (RFC 3339).
    pub at: String,
}

impl Board {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last picture, if any revision has been read whole yet.
    pub fn picture(&self) -> Option<Picture> {
        self.inner().picture.clone()
    }

    /// The last revision that became fully healthy, and when (RFC 3339).
    pub fn healthy(&self) -> Option<(String, String)> {
        self.inner().healthy.clone()
    }

    /// Keeps the plan of the last pass, for the page.
    pub fn set_plan(&self, plan: Plan) {
        self.inner().plan = Some(plan);
    }

    /// The plan of the last pass.
    pub fn plan(&self) -> Option<Plan> {
        self.inner().plan.clone()
    }

    /// Shows `report` of `graph` and says what changed: the roots whose health changed since
    /// the last picture of any revision (none on the first), and the revision when it just
    /// became fully healthy.
    pub fn publish(&self, graph: Arc<ResourceGraph>, report: Report) -> HealthRecord {
        let now = jiff::Timestamp::now();
        let mut inner = self.inner();
        let mut record = HealthRecord::default();
        if let Some(before) = &inner.picture {
            for root in &report.roots {
                let from = before.report.root(&root.key).map(|r| r.state);
                if let Some(from) = from
                    && from != root.state
                {
                    record.changes.push(HealthChange {
                        key: root.key.clone(),
                        from,
                        to: root.state,
                        message: describe_root(&report, &root.key, now),
                    });
                }
            }
        }
        if report.healthy()
            && inner.healthy.as_ref().map(|h| h.0.as_str()) != Some(report.revision.as_str())
        {
            let at = now_rfc3339();
            record.healthy = Some((report.revision.clone(), at.clone()));
            inner.healthy = Some((report.revision.clone(), at));
        }
        inner.picture = Some(Picture {
            graph,
            report,
            at: now_rfc3339(),
        });
        record
    }

    /// The `health` section of `/status`: the report (per root, its state, own health and
    /// cause chains; each culprit once with the roots it holds back), the revision that
    /// became fully healthy last. `null` before the first picture.
    pub fn to_json(&self) -> Value {
        let inner = self.inner();
        let healthy = inner.healthy.as_ref();
        let Some(picture) = &inner.picture else {
            return json!({
                "state": null,
                "healthyRevision": healthy.map(|h| &h.0),
                "healthyAt": healthy.map(|h| &h.1),
            });
        };
        let now = jiff::Timestamp::now();
        let report = &picture.report;
        let mut doc = serde_json::to_value(report).unwrap_or_default();
        if let Some(roots) = doc.get_mut("roots").and_then(Value::as_array_mut) {
            for (view, root) in roots.iter_mut().zip(&report.roots) {
                view["id"] = json!(root.key.to_string());
                view["chains"] = json!(root.chains(now));
            }
        }
        // Each object's key as one string, and what it needs: enough for `pbsync status` to
        // draw each root's tree.
        if let Some(objects) = doc.get_mut("objects").and_then(Value::as_array_mut) {
            for (view, key) in objects.iter_mut().zip(report.objects.keys()) {
                view["id"] = json!(key.to_string());
                let needs: Vec<String> = picture
                    .graph
                    .needs(key)
                    .into_iter()
                    .map(ToString::to_string)
                    .collect();
                view["needs"] = json!(needs);
            }
        }
        if let Some(culprits) = doc.get_mut("culprits").and_then(Value::as_array_mut) {
            let lines = report.culprit_lines(now);
            for (view, line) in culprits.iter_mut().zip(lines) {
                view["line"] = json!(line);
            }
        }
        doc["readAt"] = json!(picture.at);
        doc["healthyRevision"] = json!(healthy.map(|h| &h.0));
        doc["healthyAt"] = json!(healthy.map(|h| &h.1));
        doc
    }
}

/// A root's health in one line: `current`, or its first cause chain.
fn describe_root(report: &Report, key: &ObjectKey, now: jiff::Timestamp) -> String {
    match report.root(key) {
        Some(root) if root.state == State::Current => format!("{key} is current"),
        Some(root) => root
            .chains(now)
            .into_iter()
            .next()
            .unwrap_or_else(|| format!("{key} {}", root.state)),
        None => format!("{key} {}", report.combined(key)),
    }
}

/// Follows the graphs the reconciler sends until `stop`: each new graph replaces the one
/// followed. Every change of the traced health is published on `shared`'s board, counted
/// in its metrics, and recorded on the target (Events, the healthy revision); a record the
/// target could not take is tried again with the next change.
pub async fn follow<T: Target>(
    target: Arc<T>,
    mut graphs: watch::Receiver<Option<Arc<ResourceGraph>>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut unrecorded: Option<(String, String)> = None;
    // The last health reported, so a reading that changes nothing is not reported again.
    let mut reported: Option<Event> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(graph) = graphs.borrow_and_update().clone() else {
            tokio::select! {
                r = graphs.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
            continue;
        };
        let keys: Vec<ObjectKey> = graph
            .nodes()
            .iter()
            .filter(|n| n.desired)
            .map(|n| n.key.clone())
            .collect();
        let mut stream = target.follow(&graph, keys.clone());
        let mut objects: BTreeMap<ObjectKey, Health> = BTreeMap::new();
        loop {
            let first = tokio::select! {
                r = graphs.changed() => {
                    if r.is_err() { return }
                    break;
                }
                _ = stop.changed() => return,
                next = stream.next() => next,
            };
            let Some(first) = first else {
                // The target stopped following (it cannot watch): wait for the next graph.
                tracing::warn!(
                    "the target stopped following health; waiting for the next revision"
                );
                tokio::select! {
                    r = graphs.changed() => if r.is_err() { return },
                    _ = stop.changed() => return,
                }
                break;
            };
            let changed = crate::engine::wait::take_burst(&mut objects, first, &mut stream);
            if !changed || !keys.iter().all(|k| objects.contains_key(k)) {
                continue;
            }
            let report = health::trace(&graph, &objects);
            shared.metrics.set_health(&report);
            let event = Event::Health {
                revision: report.revision.clone(),
                state: report.state,
                line: report
                    .culprit_lines(jiff::Timestamp::now())
                    .first()
                    .and_then(|l| l.lines().next())
                    .unwrap_or_default()
                    .to_string(),
            };
            if reported.as_ref() != Some(&event) {
                shared.reporter.send(&event);
                reported = Some(event);
            }
            let mut record = shared.board.publish(Arc::clone(&graph), report);
            for change in &record.changes {
                tracing::info!(root = %change.key, from = %change.from, to = %change.to, why = %change.message, "health changed");
            }
            if let Some(h) = &record.healthy {
                tracing::info!(revision = %h.0, "revision healthy");
                shared.metrics.healthy(jiff::Timestamp::now().as_second());
                unrecorded = None;
            }
            if record.healthy.is_none() {
                record.healthy = unrecorded.take();
            }
            if record.changes.is_empty() && record.healthy.is_none() {
                continue;
            }
            if let Err(e) = target.record_health(&record).await {
                tracing::warn!(error = %pbsync_core::error_chain(&e), "cannot record health; trying again with the next change");
                unrecorded = record.healthy;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
