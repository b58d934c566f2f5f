//! The Palette target: cluster profiles created, updated, published, released and deleted in
//! Palette through its REST API (domain contract §6), for `ClusterProfile` keys only (`Split`
//! routes them here).
//!
//! Observe lists every profile (paged summary list), keeps those the graph names and those
//! carrying this instance's ownership labels, and reads each in full: its **published**
//! template, variables and pack manifests, converted to the shape `ownership::render` gives
//! the desired profile. Create is `POST` then publish; update is `PUT` (the draft) then
//! publish; ownership lives in the profile's labels, written with the create itself. A create
//! that failed ambiguously (timeout, dropped connection, 5xx) is looked up by name + version
//! before it is tried again, so a retry never makes a duplicate. The target re-checks the
//! ownership it observed before every change: a profile without this instance's labels is
//! never changed or deleted (unless adoption made the plan say so).

mod client;
mod config;
mod convert;
mod profiles;
mod throttle;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub use config::{ApiKey, PaletteConfig, parse_timeout};

use futures::StreamExt as _;
use serde_json::{Value, json};

use super::{Reading, Result as ApplyResult, Status, Target};
use pbsync_core::graph::ResourceGraph;
use pbsync_core::guard::{self, DeletePermit, Now, ReleasePermit};
use pbsync_core::health::{self, Health, Publication};
use pbsync_core::live::{LiveObject, Observed};
use pbsync_core::model::{Kind, ObjectKey, ProfileType};
use pbsync_core::ownership::{self, Ownership, Stamp};
use pbsync_core::plan::Change;

use client::{Call, Client, Verb, encode_segment};
use profiles::{Listed, PROFILES_PATH};

/// How often [`Target::follow`] reads followed profiles again (Palette has no watch).
const FOLLOW_INTERVAL: Duration = Duration::from_secs(5);

/// Errors of the Palette target.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Palette answered with an error status.
    #[error("palette answered {method} {path} with {status} {code}: {message}")]
    Api {
        /// Method.
        method: String,
        /// Path.
        path: String,
        /// HTTP status.
        status: u16,
        /// `v1Error.code`.
        code: String,
        /// `v1Error.message`.
        message: String,
        /// `v1Error.ref`.
        reference: Option<String>,
    },
    /// The request failed without an answer (connection, timeout).
    #[error("{method} {path} got no answer")]
    Request {
        /// Method.
        method: String,
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not the JSON expected.
    #[error("cannot decode the answer to {method} {path}")]
    Decode {
        /// Method.
        method: String,
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The answer lacked something it must carry.
    #[error("unexpected answer from palette: {0}")]
    Unexpected(String),
    /// Retries ran out.
    #[error("still failing after {attempts} attempts")]
    Retried {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: Box<Error>,
    },
    /// The target refuses a change (ownership, profiles in use, immutable fields).
    #[error("{0}")]
    Refused(String),
    /// The HTTP client could not be built.
    #[error("cannot build the palette http client")]
    Client(#[source] reqwest::Error),
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// Palette's own message (`v1Error.message`) when it answered with one, else this
    /// error's text.
    fn palette_message(&self) -> String {
        match self {
            Self::Api { message, .. } if !message.is_empty() => message.clone(),
            Self::Retried { source, .. } => source.palette_message(),
            other => pbsync_core::error_chain(other),
        }
    }

    /// 429: refused before it was carried out.
    fn is_throttled(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status == 429,
            Self::Retried { source, .. } => source.is_throttled(),
            _ => false,
        }
    }

    /// Worth sending again: 429, 5xx, no answer.
    fn is_transient(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status == 429 || *status >= 500,
            Self::Request { .. } => true,
            Self::Retried { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// Failed in a way that leaves open whether the server carried the request out: no
    /// answer, a 5xx, or a success answer that could not be read.
    fn is_ambiguous(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status >= 500,
            Self::Request { .. } | Self::Decode { .. } => true,
            Self::Retried { source, .. } => source.is_ambiguous(),
            _ => false,
        }
    }

    fn is_conflict(&self) -> bool {
        matches!(self, Self::Api { status: 409, .. })
    }

    fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
    }

    /// Whether the same commit may succeed later (network, timeout, 5xx, 429, conflict).
    pub fn is_retryable(&self) -> bool {
        self.is_transient() || self.is_conflict() || self.is_ambiguous()
    }
}

/// What observe learned about one live profile, for the changes that follow.
#[derive(Debug, Clone)]
struct Known {
    uid: String,
    ownership: Ownership,
}

/// The Palette target.
#[derive(Debug)]
pub struct PaletteTarget {
    client: Client,
    instance: String,
    page_size: u32,
    known: Mutex<HashMap<ObjectKey, Known>>,
    /// Palette's message for the last publish of a profile (by uid) that failed; removed
    /// when a publish succeeds. A profile's health names it.
    publish_failures: Mutex<HashMap<String, String>>,
}

fn write_error(verb: &'static str, change: &Change, e: Error) -> super::Error {
    super::Error::WriteFailed {
        verb,
        key: change.key.clone(),
        at: change
            .source
            .as_ref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default(),
        retryable: e.is_retryable(),
        source: Box::new(e),
    }
}

impl PaletteTarget {
    /// A target for `config`, acting as pbsync instance `instance`.
    pub fn new(config: PaletteConfig, instance: impl Into<String>) -> Result<Self, Error> {
        Ok(Self {
            client: Client::new(&config)?,
            instance: instance.into(),
            page_size: config.page_size.clamp(1, 50),
            known: Mutex::new(HashMap::new()),
            publish_failures: Mutex::new(HashMap::new()),
        })
    }

    fn publish_failures(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.publish_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One reading of the health of `keys`: the profiles read as `observe` reads them (so
    /// the published version is compared with the commit's exactly as a plan compares it).
    /// A profile the commit only names, not declares, is current once it is published.
    async fn read_health(
        &self,
        graph: &ResourceGraph,
        keys: &[ObjectKey],
    ) -> Vec<ApplyResult<(ObjectKey, Reading)>> {
        let stamp = Stamp {
            instance: &self.instance,
            revision: graph.revision(),
            adopted: false,
        };
        let observed = match self.observe(graph, &stamp).await {
            Ok(o) => o,
            Err(e) => return vec![Err(e)],
        };
        let plan = pbsync_core::plan::plan(
            graph,
            &observed,
            &pbsync_core::plan::History::default(),
            &pbsync_core::plan::Options {
                instance: self.instance.clone(),
                ..pbsync_core::plan::Options::default()
            },
        );
        let unchanged: BTreeSet<&ObjectKey> = plan
            .changes
            .iter()
            .filter(|c| c.action == pbsync_core::plan::Action::Unchanged)
            .map(|c| &c.key)
            .collect();
        // Declared but someone else's (the plan blocks every write to it): this instance
        // publishes nothing there, so only whether a published version exists says anything.
        let foreign: BTreeSet<&ObjectKey> = plan
            .changes
            .iter()
            .filter(|c| c.action == pbsync_core::plan::Action::Blocked)
            .map(|c| &c.key)
            .collect();
        keys.iter()
            .map(|key| {
                let Some(live) = observed.objects.get(key) else {
                    return Ok((key.clone(), Reading::Gone));
                };
                if let Some(error) = &live.error {
                    return Ok((
                        key.clone(),
                        Reading::Present(Health::unknown(error.clone())),
                    ));
                }
                let failure = self
                    .known()
                    .get(key)
                    .and_then(|k| self.publish_failures().get(&k.uid).cloned());
                let published = live
                    .manifest
                    .as_ref()
                    .and_then(|m| m.pointer("/spec/template"))
                    .is_some_and(|t| !t.is_null());
                // A profile the bundles name but the commit does not declare (it must exist
                // in Palette, domain §1) has no version of the commit to differ from: the
                // plan never lists it, so "not unchanged" says nothing about it.
                let declared = graph.node(key).is_some_and(|n| n.object.is_some());
                let publication = if unchanged.contains(key)
                    || (published && (!declared || foreign.contains(key)))
                {
                    Publication::Matches
                } else if !published {
                    Publication::DraftOnly
                } else {
                    Publication::Differs
                };
                Ok((
                    key.clone(),
                    Reading::Present(health::of_profile(publication, failure.as_deref())),
                ))
            })
            .collect()
    }

    /// Requests sent so far, by operation and answer.
    pub fn requests(&self) -> crate::requests::RequestCounts {
        self.client.counts()
    }

    fn known(&self) -> MutexGuard<'_, HashMap<ObjectKey, Known>> {
        // Entries are replaced whole, so a panic elsewhere cannot leave one half-written.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether requests about a profile of this scope carry `ProjectUid`.
    fn project_scoped(&self, key: &ObjectKey) -> Result<bool, Error> {
        match &*key.namespace {
            "project" if self.client.project_uid().is_some() => Ok(true),
            "project" => Err(Error::Config(format!(
                "{key} has scope project, but no --palette-project-uid is configured"
            ))),
            _ => Ok(false),
        }
    }

    /// The observed facts about `change`'s profile.
    fn known_profile(&self, change: &Change, verb: &'static str) -> ApplyResult<Known> {
        self.known().get(&change.key).cloned().ok_or_else(|| {
            write_error(
                verb,
                change,
                Error::Refused(format!(
                    "{} was not observed in Palette (or is not unique there)",
                    change.key
                )),
            )
        })
    }
}

impl Target for PaletteTarget {
    async fn observe(&self, graph: &ResourceGraph, _stamp: &Stamp<'_>) -> ApplyResult<Observed> {
        let observe_error = |e: Error| super::Error::ObserveFailed {
            what: format!("cluster profiles in Palette at {}", self.client.base()),
            source: Box::new(e),
        };
        let named: BTreeSet<&ObjectKey> = graph
            .nodes()
            .iter()
            .filter(|n| n.key.kind == Kind::ClusterProfile)
            .map(|n| &n.key)
            .collect();
        let items = self.list(&json!({})).await.map_err(observe_error)?;
        let mut groups: BTreeMap<ObjectKey, Vec<Listed>> = BTreeMap::new();
        for listed in items.iter().filter_map(|i| self.listed(i)) {
            if named.contains(&listed.key) || listed.ownership.is_managed() {
                groups.entry(listed.key.clone()).or_default().push(listed);
            }
        }
        let mut observed = Observed::default();
        let mut known = HashMap::new();
        let mut unique = Vec::new();
        for (key, list) in groups {
            if let [one] = list.as_slice() {
                unique.push((key, one.uid.clone(), one.ownership.clone()));
                continue;
            }
            let uids: Vec<&str> = list.iter().map(|l| l.uid.as_str()).collect();
            let ownership = list
                .iter()
                .map(|l| l.ownership.clone())
                .find(Ownership::is_managed)
                .unwrap_or(Ownership::Foreign { owner: None });
            let live = LiveObject::unreadable(
                format!(
                    "{} profiles named {} version {} exist in Palette (uids {}); remove the duplicates by hand",
                    list.len(),
                    key.name,
                    key.version.as_deref().unwrap_or_default(),
                    uids.join(", ")
                ),
                ownership,
            );
            observed.objects.insert(key, live);
        }
        let reads: Vec<_> = futures::stream::iter(unique)
            .map(|(key, uid, own)| async move {
                let read = self.read_profile(&key, &uid).await;
                (key, uid, own, read)
            })
            .buffered(4)
            .collect()
            .await;
        for (key, uid, own, read) in reads {
            let Some((profile, mut entity)) = read.map_err(observe_error)? else {
                continue;
            };
            if let Some(obj) = graph.node(&key).and_then(|n| graph.object(n)) {
                let declared = ownership::render(
                    obj,
                    &Stamp {
                        instance: &self.instance,
                        revision: graph.revision(),
                        adopted: false,
                    },
                );
                convert::project_onto(&mut entity, &declared);
            }
            let in_use = convert::in_use_by(&profile);
            let profile_type = ["/spec/published/type", "/spec/draft/type"]
                .iter()
                .find_map(|p| profile.pointer(p).and_then(Value::as_str))
                .and_then(ProfileType::from_api);
            let mut live = LiveObject::new(entity, own.clone());
            live.in_use_by = in_use;
            live.profile_type = profile_type;
            observed.objects.insert(key.clone(), live);
            known.insert(
                key,
                Known {
                    uid,
                    ownership: own,
                },
            );
        }
        if self.client.project_uid().is_none() {
            for node in graph.nodes() {
                if node.key.kind == Kind::ClusterProfile
                    && &*node.key.namespace == "project"
                    && node.object.is_some()
                    && !observed.objects.contains_key(&node.key)
                {
                    observed.rejected.insert(
                        node.key.clone(),
                        "it has scope project, but no --palette-project-uid is configured (tenant scope only)".into(),
                    );
                }
            }
        }
        observed.read_at = Some(crate::now_rfc3339());
        *self.known() = known;
        Ok(observed)
    }

    /// Nothing to record ahead: ownership labels travel in the create request itself.
    async fn prepare(&self, _changes: &[&Change]) -> ApplyResult<()> {
        Ok(())
    }

    async fn write(&self, change: &Change, desired: &Value) -> ApplyResult<()> {
        let project = self
            .project_scoped(&change.key)
            .map_err(|e| write_error("write", change, e))?;
        let exists = self.known().contains_key(&change.key);
        let adopted = change.adopt;
        let now_owned = if adopted {
            Ownership::Adopted
        } else {
            Ownership::Managed
        };
        if !exists {
            let uid = self
                .create(&change.key, desired, project)
                .await
                .map_err(|e| write_error("create", change, e))?;
            self.known().insert(
                change.key.clone(),
                Known {
                    uid: uid.clone(),
                    ownership: now_owned,
                },
            );
            return self
                .publish(&uid, project)
                .await
                .map_err(|e| write_error("publish", change, e));
        }
        // The one adoption rule: managed and adopted profiles are ours, released ones are
        // taken back, nobody's only when the plan adopts them, another instance's never.
        let known = self.known_profile(change, "update")?;
        guard::may_write(change, &known.ownership)?;
        self.update(change, desired, &known.uid, project)
            .await
            .map_err(|e| write_error("update", change, e))?;
        self.known().insert(
            change.key.clone(),
            Known {
                ownership: now_owned,
                ..known
            },
        );
        Ok(())
    }

    /// Reads the profile again (`GET /v1/clusterprofiles/{uid}`): its ownership labels and
    /// the clusters using it now.
    async fn recheck(&self, change: &Change) -> ApplyResult<Option<Now>> {
        let known = self.known_profile(change, "read")?;
        let project = self
            .project_scoped(&change.key)
            .map_err(|e| write_error("read", change, e))?;
        let path = format!("{PROFILES_PATH}/{}", encode_segment(&known.uid));
        let profile = match self
            .client
            .send(&Call::new(Verb::Get, &path, project))
            .await
        {
            Ok(p) => p,
            Err(e) if e.is_not_found() => {
                self.known().remove(&change.key);
                return Ok(None);
            }
            Err(e) => return Err(write_error("read", change, e)),
        };
        let meta = |k: &str| {
            profile
                .pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_object)
        };
        let now = Now {
            ownership: ownership::read(meta("labels"), meta("annotations"), &self.instance),
            in_use_by: convert::in_use_by(&profile),
        };
        self.known().insert(
            change.key.clone(),
            Known {
                ownership: now.ownership.clone(),
                ..known
            },
        );
        Ok(Some(now))
    }

    async fn release(&self, change: &Change, permit: ReleasePermit) -> ApplyResult<()> {
        let known = self.known_profile(change, "release")?;
        let project = self
            .project_scoped(permit.key())
            .map_err(|e| write_error("release", change, e))?;
        let path = format!("{PROFILES_PATH}/{}", encode_segment(&known.uid));
        let profile = self
            .client
            .send(&Call::new(Verb::Get, &path, project))
            .await
            .map_err(|e| write_error("release", change, e))?;
        let mut entity = json!({
            "metadata": {
                "name": profile.pointer("/metadata/name").cloned().unwrap_or_default(),
                "labels": profile.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({})),
                "annotations": profile.pointer("/metadata/annotations").cloned().unwrap_or_else(|| json!({})),
            },
            "spec": {"version": profile.pointer("/spec/version").cloned().unwrap_or_default()},
        });
        ownership::release(&mut entity, &self.instance);
        let body = convert::metadata_entity(&entity);
        self.client
            .send(&Call::new(Verb::Patch, format!("{path}/metadata"), project).body(&body))
            .await
            .map_err(|e| write_error("release", change, e))?;
        self.known().insert(
            change.key.clone(),
            Known {
                ownership: Ownership::Released,
                ..known
            },
        );
        Ok(())
    }

    /// Deletes the profile the permit names (the guard checked it was this instance's and
    /// in use by no cluster, as read just before).
    async fn delete(&self, change: &Change, permit: DeletePermit) -> ApplyResult<()> {
        let known = self.known_profile(change, "delete")?;
        let project = self
            .project_scoped(permit.key())
            .map_err(|e| write_error("delete", change, e))?;
        match self
            .client
            .send(&Call::delete(&permit, &known.uid, project))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(write_error("delete", change, e)),
        }
        self.known().remove(&change.key);
        Ok(())
    }

    /// Nothing to record: the pass's status lives with the hub-side target, which `Split`
    /// asks first.
    async fn record(&self, _status: &Status) -> ApplyResult<()> {
        Ok(())
    }

    fn concurrency(&self) -> usize {
        4
    }

    fn request_counts(&self) -> Vec<(&'static str, crate::RequestCounts)> {
        vec![("palette", self.requests())]
    }

    /// Nothing recorded here: the hub-side target records the pass.
    async fn record_pending(
        &self,
        _removals: &[(ObjectKey, pbsync_core::live::Removal)],
    ) -> ApplyResult<()> {
        Ok(())
    }

    /// Nothing recorded here: the hub-side target records the pass.
    async fn recorded(&self) -> ApplyResult<Option<super::Recorded>> {
        Ok(None)
    }

    /// No lock of its own: Palette is always paired with a hub side, whose lock covers the
    /// pass.
    async fn lock(
        &self,
        _holder: &str,
        _wait: std::time::Duration,
    ) -> ApplyResult<super::PassLock> {
        Ok(super::PassLock::None)
    }

    /// Palette has no watch: the profiles are read again every [`FOLLOW_INTERVAL`].
    fn follow<'a>(&'a self, graph: &'a ResourceGraph, keys: Vec<ObjectKey>) -> crate::Follow<'a> {
        let keys: Vec<ObjectKey> = keys
            .into_iter()
            .filter(|k| k.kind == Kind::ClusterProfile)
            .collect();
        if keys.is_empty() {
            return Box::pin(futures::stream::pending());
        }
        let state = (graph, keys, true);
        Box::pin(
            futures::stream::unfold(state, move |(graph, keys, first)| async move {
                if !first {
                    tokio::time::sleep(FOLLOW_INTERVAL).await;
                }
                let readings = self.read_health(graph, &keys).await;
                Some((futures::stream::iter(readings), (graph, keys, false)))
            })
            .flatten(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let mut config = PaletteConfig::new("http://127.0.0.1:1", ApiKey::new("s3cr3t-key\n"));
        config.project_uid = Some("p1".into());
        assert_eq!(config.api_key.expose(), "s3cr3t-key");
        let target = PaletteTarget::new(config.clone(), "blue").expect("target");
        for text in [
            format!("{config:?}"),
            format!("{target:?}"),
            format!("{target:#?}"),
        ] {
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(text.contains("redacted"), "{text}");
        }
    }

    #[test]
    fn configuration_errors_are_reported() {
        let bad = PaletteConfig::new("api.spectrocloud.com", ApiKey::new("k"));
        assert!(matches!(
            PaletteTarget::new(bad, "x"),
            Err(Error::Config(_))
        ));
        let empty = PaletteConfig::new("https://api.spectrocloud.com", ApiKey::new("  "));
        assert!(matches!(
            PaletteTarget::new(empty, "x"),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn errors_classify_for_retries() {
        let api = |status| Error::Api {
            method: "POST".into(),
            path: "/".into(),
            status,
            code: "X".into(),
            message: "m".into(),
            reference: None,
        };
        assert!(api(429).is_throttled() && api(429).is_transient() && !api(429).is_ambiguous());
        assert!(api(503).is_transient() && api(503).is_ambiguous());
        assert!(!api(400).is_retryable());
        assert!(api(409).is_retryable() && !api(409).is_transient());
        let wrapped = Error::Retried {
            attempts: 3,
            source: Box::new(api(429)),
        };
        assert!(wrapped.is_throttled() && !wrapped.is_ambiguous());
    }

    #[test]
    fn read_at_is_rfc3339() {
        let t = crate::now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
