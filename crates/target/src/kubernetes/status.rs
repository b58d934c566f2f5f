//! What a pass records on the hub: the status ConfigMap `pbsync-status-<instance>` (last
//! applied and attempted revision, outcome, counts), written only when its content changes,
//! and a Kubernetes Event on each ProfileBundle the pass created, updated, deleted or
//! released, emitted as each happens.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::client::ApiClient;
use super::{Error, KubeTarget, lock};
use crate::{Result, Status};
// Name prefix of the status ConfigMaps (the guard never deletes them); the instance follows.
use pbsync_core::guard::STATUS_CONFIGMAP_PREFIX as CONFIGMAP_PREFIX;
use pbsync_core::model::{Kind, ObjectKey};
use pbsync_core::ownership::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// The key of the removals a pass recorded before carrying them out (JSON).
const PENDING_KEY: &str = "pendingRemovals";
/// The keys of the last revision that became fully healthy, and when.
const HEALTHY_REVISION_KEY: &str = "lastHealthyRevision";
const HEALTHY_AT_KEY: &str = "lastHealthyAt";
/// Outcome words of a pass that changed (or tried to change) something.
const ACTED: [&str; 5] = ["created", "configured", "deleted", "orphaned", "failed"];

/// The ConfigMap's data after `status`, given what it held before.
///
/// `counts` are those of the last pass that acted: a pass that found nothing to do leaves
/// them, so a steady state (the same revision, nothing to change) writes nothing.
fn next_data(previous: &BTreeMap<String, String>, status: &Status) -> BTreeMap<String, String> {
    let mut data = previous.clone();
    data.insert("instance".into(), status.instance.clone());
    data.insert("lastAttemptedRevision".into(), status.attempted.clone());
    if let Some(applied) = &status.applied {
        data.insert("lastAppliedRevision".into(), applied.clone());
    }
    data.insert("outcome".into(), status.outcome.clone());
    if status.applied.is_some() {
        data.remove(PENDING_KEY);
    }
    let acted = ACTED
        .iter()
        .any(|w| status.counts.get(*w).is_some_and(|n| *n > 0));
    if acted || !data.contains_key("counts") {
        let counts = serde_json::to_string(&status.counts).expect("invariant: counts serialize");
        data.insert("counts".into(), counts);
    }
    data
}

impl KubeTarget {
    fn configmap_name(&self) -> String {
        format!("{CONFIGMAP_PREFIX}{}", self.options.instance)
    }

    fn configmaps(&self) -> String {
        format!(
            "/api/v1/namespaces/{}/configmaps",
            self.options.status_namespace
        )
    }

    /// The status ConfigMap's record (`None` when there is none yet, or no status namespace).
    /// A pass's status write reuses what this read found, so a pass reads it once.
    pub(super) async fn read_status(&self) -> Result<Option<crate::Recorded>> {
        let mut recorded = self.recorded.lock().await;
        let data = match recorded.as_ref() {
            Some(d) => Some(d.clone()),
            None => {
                let api = self.api().await?;
                let data: Option<BTreeMap<String, String>> = api
                    .get(&self.configmaps(), &self.configmap_name())
                    .await
                    .map_err(|e| crate::Error::ObserveFailed {
                        what: format!(
                            "status ConfigMap {}/{}",
                            self.options.status_namespace,
                            self.configmap_name()
                        ),
                        source: Box::new(Error::Request(e)),
                    })?
                    .and_then(|cm| cm.get("data").cloned())
                    .and_then(|d| serde_json::from_value(d).ok());
                *recorded = Some(data.clone().unwrap_or_default());
                data
            }
        };
        let data = data.filter(|d| !d.is_empty());
        Ok(data.map(|d| crate::Recorded {
            last_applied_revision: d.get("lastAppliedRevision").cloned(),
            last_attempted_revision: d.get("lastAttemptedRevision").cloned(),
            outcome: d.get("outcome").cloned(),
            last_healthy_revision: d.get(HEALTHY_REVISION_KEY).cloned(),
            last_healthy_at: d.get(HEALTHY_AT_KEY).cloned(),
        }))
    }

    /// The removals a pass recorded before carrying them out (`Observed::pending`).
    pub(super) async fn read_pending(
        &self,
    ) -> Result<std::collections::BTreeMap<ObjectKey, pbsync_core::live::Removal>> {
        self.read_status().await?;
        let recorded = self.recorded.lock().await;
        Ok(recorded
            .as_ref()
            .and_then(|d| d.get(PENDING_KEY))
            .and_then(|text| {
                serde_json::from_str::<Vec<(ObjectKey, pbsync_core::live::Removal)>>(text).ok()
            })
            .map(|v| v.into_iter().collect())
            .unwrap_or_default())
    }

    /// Records the removals a pass is about to carry out, in the status ConfigMap.
    pub(super) async fn record_pending(
        &self,
        removals: &[(ObjectKey, pbsync_core::live::Removal)],
    ) -> Result<()> {
        let api = self.api().await?;
        let failed = |e: Error| crate::Error::StatusFailed {
            source: Box::new(e),
        };
        let mut recorded = self.recorded.lock().await;
        let mut data = recorded.clone().unwrap_or_default();
        data.insert(
            PENDING_KEY.into(),
            serde_json::to_string(removals).expect("invariant: keys serialize"),
        );
        self.write_configmap(api, &data).await.map_err(failed)?;
        *recorded = Some(data);
        Ok(())
    }

    pub(super) async fn record_status(&self, status: &Status) -> Result<()> {
        let api = self.api().await?;
        let failed = |e: Error| crate::Error::StatusFailed {
            source: Box::new(e),
        };
        self.update_configmap(api, |previous| next_data(previous, status))
            .await
            .map_err(failed)
    }

    /// Writes the status ConfigMap's data as `next` makes it from what it held (read once per
    /// process, then remembered), only when that changes it.
    async fn update_configmap(
        &self,
        api: &ApiClient,
        next: impl FnOnce(&BTreeMap<String, String>) -> BTreeMap<String, String>,
    ) -> std::result::Result<(), Error> {
        let mut recorded = self.recorded.lock().await;
        let previous = match recorded.as_ref() {
            Some(d) => d.clone(),
            None => api
                .get(&self.configmaps(), &self.configmap_name())
                .await
                .map_err(Error::Request)?
                .and_then(|cm| cm.get("data").cloned())
                .and_then(|d| serde_json::from_value(d).ok())
                .unwrap_or_default(),
        };
        let data = next(&previous);
        if data != previous {
            self.write_configmap(api, &data).await?;
        }
        *recorded = Some(data);
        Ok(())
    }

    /// An Event on each bundle whose health changed (Warning when it failed), and the
    /// revision that became fully healthy in the status ConfigMap. Events are best effort,
    /// as the pass's are.
    pub(super) async fn record_health(&self, record: &crate::HealthRecord) -> Result<()> {
        let api = self.api().await?;
        for change in &record.changes {
            if change.key.kind != Kind::ProfileBundle {
                continue;
            }
            let body = health_event(change, &self.options.instance);
            let path = format!("/api/v1/namespaces/{}/events", change.key.namespace);
            if let Err(e) = api.create(&path, &body).await {
                tracing::warn!(bundle = %change.key, error = %pbsync_core::error_chain(&e), "cannot emit event");
            }
        }
        if let Some((revision, at)) = &record.healthy {
            self.update_configmap(api, |previous| {
                let mut data = previous.clone();
                data.insert(HEALTHY_REVISION_KEY.into(), revision.clone());
                data.insert(HEALTHY_AT_KEY.into(), at.clone());
                data
            })
            .await
            .map_err(|e| crate::Error::StatusFailed {
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Writes the status ConfigMap with `data` (server-side apply).
    async fn write_configmap(
        &self,
        api: &ApiClient,
        data: &BTreeMap<String, String>,
    ) -> std::result::Result<(), Error> {
        let body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.configmap_name(),
                "namespace": self.options.status_namespace,
                // Not the instance label: the status object is never one of the objects
                // this instance manages, so no deletion rule can ever reach it.
                "labels": {
                    MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                    "app.kubernetes.io/component": "status",
                },
            },
            "data": data,
        });
        api.apply(&self.configmaps(), &self.configmap_name(), &body)
            .await
            .map(drop)
            .map_err(|e| {
                if e.code() == Some(404) {
                    Error::StatusNamespaceMissing {
                        namespace: self.options.status_namespace.clone(),
                        source: e,
                    }
                } else {
                    Error::Request(e)
                }
            })
    }

    /// The Event of a bundle this pass created, updated, deleted or released, emitted as soon
    /// as that happened (so it carries the moment, and a pass cut short leaves the Events
    /// of what it did). Best effort: an Event that cannot be written is logged, never a
    /// failed pass.
    pub(super) async fn bundle_changed(
        &self,
        api: &ApiClient,
        key: &ObjectKey,
        reason: &str,
        uid: Option<String>,
    ) {
        if key.kind != Kind::ProfileBundle {
            return;
        }
        let revision = lock(&self.revision).clone();
        let short = &revision[..revision.len().min(12)];
        let body = event(key, reason, &self.options.instance, short, uid);
        let path = format!("/api/v1/namespaces/{}/events", key.namespace);
        if let Err(e) = api.create(&path, &body).await {
            tracing::warn!(bundle = %key, error = %pbsync_core::error_chain(&e), "cannot emit event");
        }
    }
}

fn event(
    key: &ObjectKey,
    reason: &str,
    instance: &str,
    revision: &str,
    uid: Option<String>,
) -> Value {
    let verb = match reason {
        "Created" => "created",
        "Updated" => "updated",
        "Deleted" => "deleted",
        "Orphaned" => "released",
        _ => "changed",
    };
    let message = format!("pbsync instance {instance} {verb} this bundle at revision {revision}");
    event_body(key, "Normal", reason, &message, instance, uid)
}

/// The Event of a bundle whose health changed: `Healthy` (Normal) when it became current,
/// `Unhealthy` (Warning) when it failed, `Progressing` or `HealthUnknown` (Normal) otherwise;
/// the message is the cause chain.
fn health_event(change: &crate::HealthChange, instance: &str) -> Value {
    use pbsync_core::health::State;
    let (type_, reason) = match change.to {
        State::Current => ("Normal", "Healthy"),
        State::Failed => ("Warning", "Unhealthy"),
        State::InProgress => ("Normal", "Progressing"),
        State::Unknown => ("Normal", "HealthUnknown"),
    };
    let message = format!("{} (was {})", change.message, change.from);
    // The API server refuses messages over 1 KiB in events.k8s.io; keep well under it.
    let message: String = message.chars().take(1000).collect();
    event_body(&change.key, type_, reason, &message, instance, None)
}

fn event_body(
    key: &ObjectKey,
    type_: &str,
    reason: &str,
    message: &str,
    instance: &str,
    uid: Option<String>,
) -> Value {
    let now = crate::now_rfc3339();
    let prefix: String = key.name.chars().take(200).collect();
    let mut involved = json!({
        "apiVersion": Kind::ProfileBundle.api_versions()[0],
        "kind": Kind::ProfileBundle.as_str(),
        "namespace": &*key.namespace,
        "name": &*key.name,
    });
    if let Some(uid) = uid {
        involved["uid"] = Value::String(uid);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": format!("{prefix}."),
            "namespace": &*key.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
        },
        "involvedObject": involved,
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": "pbsync"},
        "reportingComponent": "pbsync",
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(attempted: &str, applied: bool, counts: &[(&str, usize)]) -> Status {
        Status {
            instance: "blue".into(),
            applied: applied.then(|| attempted.to_string()),
            attempted: attempted.into(),
            outcome: if applied {
                "applied".into()
            } else {
                "failed: x".into()
            },
            counts: counts.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
        }
    }

    #[test]
    fn a_pass_with_nothing_to_do_leaves_the_status_as_it_was() {
        let first = next_data(&BTreeMap::new(), &status("r1", true, &[("created", 3)]));
        assert_eq!(first["counts"], r#"{"created":3}"#);
        let again = next_data(&first, &status("r1", true, &[("unchanged", 3)]));
        assert_eq!(again, first);
    }

    #[test]
    fn a_failed_pass_keeps_the_last_applied_revision() {
        let first = next_data(&BTreeMap::new(), &status("r1", true, &[("created", 1)]));
        let failed = next_data(&first, &status("r2", false, &[("failed", 1)]));
        assert_eq!(failed["lastAppliedRevision"], "r1");
        assert_eq!(failed["lastAttemptedRevision"], "r2");
        assert_eq!(failed["outcome"], "failed: x");
        assert_eq!(failed["counts"], r#"{"failed":1}"#);
    }

    #[test]
    fn events_name_the_bundle_and_the_revision() {
        let key = ObjectKey::new(Kind::ProfileBundle, "team-a", "llama");
        let e = event(&key, "Deleted", "blue", "abc123", Some("u1".into()));
        assert_eq!(e["involvedObject"]["uid"], "u1");
        assert_eq!(
            e["involvedObject"]["apiVersion"],
            "spectrocloud.com/v1beta1"
        );
        assert_eq!(e["metadata"]["generateName"], "llama.");
        assert_eq!(
            e["message"],
            "pbsync instance blue deleted this bundle at revision abc123"
        );
    }
}
