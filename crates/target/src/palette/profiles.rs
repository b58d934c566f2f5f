//! The cluster-profile operations the target is built from: the paged summary list (with
//! `continue` tokens), reading one profile in full, lookup by name + version, create with a
//! look-up before any retry, publish, and update as draft then publish.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::client::{Call, Verb, encode_segment};
use super::{Error, PaletteTarget, convert};
use pbsync_core::model::ObjectKey;
use pbsync_core::ownership::{self, Ownership};
use pbsync_core::plan::Change;

pub(super) const LIST_PATH: &str = "/v1/dashboard/clusterprofiles";
pub(super) const PROFILES_PATH: &str = "/v1/clusterprofiles";

/// One entry of the summary list, as far as observe needs it.
#[derive(Debug)]
pub(super) struct Listed {
    pub(super) key: ObjectKey,
    pub(super) uid: String,
    pub(super) ownership: Ownership,
}

impl PaletteTarget {
    /// Every page of the summary list matching `filter`.
    pub(super) async fn list(&self, filter: &Value) -> Result<Vec<Value>, Error> {
        let project = self.client.project_uid().is_some();
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = BTreeSet::new();
        loop {
            let mut call = Call::new(Verb::Post, LIST_PATH, project)
                .body(filter)
                .query("limit", self.page_size.to_string());
            if let Some(t) = &token {
                call = call.query("continue", t.clone());
            }
            let page = self.client.send(&call).await?;
            items.extend(
                page.get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
            match page
                .pointer("/listmeta/continue")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                Some(next) if !seen.insert(next.to_string()) => {
                    return Err(Error::Unexpected(format!(
                        "the profile list returned continue token {next:?} twice"
                    )));
                }
                Some(next) => token = Some(next.to_string()),
                None => return Ok(items),
            }
        }
    }

    pub(super) fn listed(&self, item: &Value) -> Option<Listed> {
        let meta = item.get("metadata")?;
        let annotations = meta.get("annotations").and_then(Value::as_object);
        let scope = annotations
            .and_then(|a| a.get("scope"))
            .and_then(Value::as_str)
            .unwrap_or(if self.client.project_uid().is_some() {
                "project"
            } else {
                "tenant"
            });
        if scope != "project" && scope != "tenant" {
            return None;
        }
        let name = meta.get("name").and_then(Value::as_str)?;
        let uid = meta.get("uid").and_then(Value::as_str)?;
        let version = item
            .pointer("/specSummary/version")
            .and_then(Value::as_str)?;
        Some(Listed {
            key: ObjectKey::cluster_profile(scope, name, version),
            uid: uid.to_string(),
            ownership: ownership::read(
                meta.get("labels").and_then(Value::as_object),
                annotations,
                &self.instance,
            ),
        })
    }

    /// Reads one profile in full; `None` when it went away meanwhile.
    pub(super) async fn read_profile(
        &self,
        key: &ObjectKey,
        uid: &str,
    ) -> Result<Option<(Value, Value)>, Error> {
        let project = self.project_scoped(key)?;
        let path = format!("{PROFILES_PATH}/{}", encode_segment(uid));
        let profile = match self
            .client
            .send(&Call::new(Verb::Get, &path, project))
            .await
        {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let variables = self
            .client
            .send(&Call::new(Verb::Get, format!("{path}/variables"), project))
            .await?;
        let variables: Vec<Value> = variables
            .get("variables")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut manifests = BTreeMap::new();
        for pack in convert::packs_with_manifests(&profile) {
            let entities = self
                .client
                .send(&Call::new(
                    Verb::Get,
                    format!("{path}/packs/{}/manifests", encode_segment(&pack)),
                    project,
                ))
                .await?;
            manifests.insert(pack, convert::published_manifests(&entities));
        }
        let entity = convert::live_entity(&profile, &variables, &manifests);
        Ok(Some((profile, entity)))
    }

    /// Profiles of `key`'s scope with its name and version, with their ownership.
    pub(super) async fn lookup(&self, key: &ObjectKey) -> Result<Vec<(String, Ownership)>, Error> {
        let version = key.version.as_deref().unwrap_or_default();
        let filter = json!({"filter": {
            "profileName": {"eq": &*key.name, "ignoreCase": false},
            "version": {"eq": version},
            "scope": &*key.namespace,
        }});
        let items = self.list(&filter).await?;
        Ok(items
            .iter()
            .filter_map(|i| self.listed(i))
            .filter(|l| l.key == *key)
            .map(|l| (l.uid, l.ownership))
            .collect())
    }

    /// Creates the profile; returns its uid. After an ambiguous failure the profile is
    /// looked up before another attempt, so a retry never duplicates it.
    pub(super) async fn create(
        &self,
        key: &ObjectKey,
        desired: &Value,
        project: bool,
    ) -> Result<String, Error> {
        let mut attempt = 0;
        loop {
            let call = Call::new(Verb::Post, PROFILES_PATH, project)
                .body(desired)
                .not_idempotent();
            let err = match self.client.send(&call).await {
                Ok(answer) => {
                    return answer
                        .get("uid")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| Error::Unexpected("the create answer has no uid".into()));
                }
                Err(e) => e,
            };
            let retry = err.is_ambiguous() && attempt < self.client.max_retries();
            if !(retry || err.is_conflict()) {
                return Err(err);
            }
            if retry {
                tokio::time::sleep(self.client.backoff(attempt)).await;
                attempt += 1;
            }
            let found = self.lookup(key).await?;
            match found.as_slice() {
                [] if err.is_conflict() => return Err(err),
                [] => {
                    tracing::info!(profile = %key, "create failed before the profile existed; trying again");
                }
                [(uid, own)] if own.is_managed() => {
                    tracing::info!(profile = %key, uid, "create failed ambiguously but the profile exists; using it");
                    return Ok(uid.clone());
                }
                _ => {
                    return Err(Error::Refused(format!(
                        "{key} exists in Palette but was not created by this pbsync instance"
                    )));
                }
            }
        }
    }

    pub(super) async fn publish(&self, uid: &str, project: bool) -> Result<(), Error> {
        let path = format!("{PROFILES_PATH}/{}/publish", encode_segment(uid));
        let result = self
            .client
            .send(&Call::new(Verb::Patch, path, project))
            .await
            .map(drop);
        match &result {
            Ok(()) => {
                self.publish_failures().remove(uid);
            }
            Err(e) => {
                self.publish_failures()
                    .insert(uid.to_string(), e.palette_message());
            }
        }
        result
    }

    /// Brings an existing profile to `desired`, sending only the parts that differ.
    pub(super) async fn update(
        &self,
        change: &Change,
        desired: &Value,
        uid: &str,
        project: bool,
    ) -> Result<(), Error> {
        let paths: Vec<&str> = change.diff.iter().map(|d| d.path.as_str()).collect();
        let all = paths.is_empty();
        let touches = |p: &str| {
            all || paths.iter().any(|x| {
                x.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
        };
        if paths.contains(&"spec.template.cloudType") {
            return Err(Error::Refused(
                "the cloudType of an existing profile version cannot change; declare a new version"
                    .into(),
            ));
        }
        let path = format!("{PROFILES_PATH}/{}", encode_segment(uid));
        if touches("spec.variables") {
            let body = convert::variables_entity(desired);
            self.client
                .send(&Call::new(Verb::Put, format!("{path}/variables"), project).body(&body))
                .await?;
        }
        let template = touches("spec.template") || touches("spec.version");
        if template {
            let body = convert::update_entity(desired);
            self.client
                .send(&Call::new(Verb::Put, &path, project).body(&body))
                .await?;
        }
        if touches("metadata") {
            let body = convert::metadata_entity(desired);
            self.client
                .send(&Call::new(Verb::Patch, format!("{path}/metadata"), project).body(&body))
                .await?;
        }
        if template {
            self.publish(uid, project).await?;
        }
        Ok(())
    }
}
