//! Carrying out one planned change on the hub: server-side apply, release (a merge patch),
//! delete. Each carries the preconditions of the object the plan was made against; a 409
//! Conflict re-reads the object, checks it is still this instance's, and tries again.

use serde_json::{Value, json};

use super::client::ApiClient;
use super::{
    Answer, CONFLICT_RETRIES, Compared, Error, KubeTarget, Seen, lock, observe, version_of,
    with_api_version,
};
use crate::Result;
use pbsync_core::guard::{self, DeletePermit, Now, ReleasePermit};
use pbsync_core::model::{DeletionPolicy, Kind, ObjectKey};
use pbsync_core::ownership::{self, Ownership};
use pbsync_core::plan::{Action, Change};

/// `" (path:line)"` of a change's declaration, for error messages.
fn at(change: &Change) -> String {
    change
        .source
        .as_ref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default()
}

fn write_failed(verb: &'static str, change: &Change, e: Error) -> crate::Error {
    if let Error::Refused(refusal) = e {
        return crate::Error::from(refusal);
    }
    crate::Error::WriteFailed {
        verb,
        key: change.key.clone(),
        at: at(change),
        retryable: e.is_retryable(),
        source: Box::new(e),
    }
}

impl KubeTarget {
    /// Server-side apply of one desired object, with the observed resourceVersion as a
    /// precondition for updates.
    pub(super) async fn write_change(&self, change: &Change, desired: &Value) -> Result<()> {
        let verb = if change.action == Action::Create {
            "create"
        } else {
            "update"
        };
        let resource = self.resource(change)?;
        let api = self.api().await?;
        let desired =
            with_api_version(desired.clone(), change.key.kind, &self.options.api_versions);
        let collection = resource.collection(version_of(&desired), Some(&change.key.namespace));
        let fingerprint = observe::fingerprint(&desired);
        // Optimistic concurrency for updates: the object must still be the one planned
        // against, so a change made since (by a person, or another owner) is not overwritten
        // blindly; a conflict re-reads it and checks it is still ours.
        let mut precondition = if change.action == Action::Create {
            None
        } else {
            self.seen(&change.key).and_then(|s| s.resource_version)
        };
        let allowed = |own: &Ownership| guard::may_write(change, own);
        for attempt in 0..=CONFLICT_RETRIES {
            let mut body = desired.clone();
            if let (Some(rv), Some(meta)) = (
                &precondition,
                body.get_mut("metadata").and_then(Value::as_object_mut),
            ) {
                meta.insert("resourceVersion".into(), Value::String(rv.clone()));
            }
            match api.apply(&collection, &change.key.name, &body).await {
                Ok(answer) => {
                    let seen = Seen::written(&desired, &answer);
                    // The object at this resourceVersion is what applying `desired` gives:
                    // the next pass needs no dry-run while neither changes.
                    lock(&self.compared).insert(
                        change.key.clone(),
                        Compared {
                            fingerprint,
                            resource_version: seen.resource_version.clone(),
                            answer: Answer::Live,
                        },
                    );
                    let uid = seen.uid.clone();
                    lock(&self.seen).insert(change.key.clone(), seen);
                    let reason = if change.action == Action::Create {
                        "Created"
                    } else {
                        "Updated"
                    };
                    self.bundle_changed(api, &change.key, reason, uid).await;
                    return Ok(());
                }
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => {
                    tracing::debug!(key = %change.key, "conflict; re-reading");
                    let live = self
                        .reread(api, &collection, &change.key, allowed)
                        .await
                        .map_err(|e| write_failed(verb, change, e))?;
                    precondition = live.as_ref().and_then(|l| Seen::of(l).resource_version);
                }
                Err(e) if e.is_conflict() => {
                    return Err(write_failed(
                        verb,
                        change,
                        Error::Conflicts {
                            key: change.key.clone(),
                            attempts: attempt + 1,
                            source: e,
                        },
                    ));
                }
                Err(e) => return Err(write_failed(verb, change, Error::Request(e))),
            }
        }
        unreachable!("invariant: the loop returns on its last attempt")
    }

    /// Reads the object as it is now; its uid and resourceVersion become the preconditions
    /// of the delete or release that follows, so nothing that changed after this read is
    /// deleted (the server answers 409, and the object is read and checked again).
    pub(super) async fn recheck_change(&self, change: &Change) -> Result<Option<Now>> {
        let resource = self.resource(change)?;
        let api = self.api().await?;
        let api_version = self.seen(&change.key).map(|s| s.api_version);
        let collection = resource.collection(
            api_version
                .as_deref()
                .and_then(|v| v.rsplit_once('/'))
                .map(|(_, v)| v),
            Some(&change.key.namespace),
        );
        let live = api
            .get(&collection, &change.key.name)
            .await
            .map_err(|e| write_failed("read", change, Error::Request(e)))?;
        let Some(live) = live else {
            self.forget(&change.key);
            return Ok(None);
        };
        self.remember(&change.key, &live);
        Ok(Some(Now::owned(ownership::read_manifest(
            &live,
            &self.options.instance,
        ))))
    }

    /// Removes the ownership marks of one object (`ownership::release` as a merge patch).
    pub(super) async fn release_change(
        &self,
        change: &Change,
        _permit: ReleasePermit,
    ) -> Result<()> {
        let resource = self.resource(change)?;
        let api = self.api().await?;
        let seen = self.seen(&change.key);
        let collection = resource.collection(
            seen.as_ref()
                .and_then(|s| s.api_version.rsplit_once('/'))
                .map(|(_, v)| v),
            Some(&change.key.namespace),
        );
        let mut rv = seen.and_then(|s| s.resource_version);
        let instance = &self.options.instance;
        for attempt in 0..=CONFLICT_RETRIES {
            // ownership::release as a merge patch: null removes a label.
            let mut patch = json!({"metadata": {
                "labels": {
                    ownership::MANAGED_BY_LABEL: null,
                    ownership::INSTANCE_LABEL: null,
                    ownership::ADOPTED_LABEL: null,
                },
                "annotations": {
                    ownership::REVISION_ANNOTATION: null,
                    ownership::RELEASED_BY_ANNOTATION: instance,
                },
            }});
            if let Some(rv) = &rv {
                patch["metadata"]["resourceVersion"] = Value::String(rv.clone());
            }
            match api.merge_patch(&collection, &change.key.name, &patch).await {
                Ok(_) => {
                    let uid = self.seen(&change.key).and_then(|s| s.uid);
                    self.forget(&change.key);
                    self.bundle_changed(api, &change.key, "Orphaned", uid).await;
                    return Ok(());
                }
                Err(e) if e.code() == Some(404) => {
                    self.forget(&change.key);
                    return Ok(());
                }
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => {
                    let live = self
                        .reread(api, &collection, &change.key, |own| {
                            guard::may_release(&change.key, own)
                        })
                        .await
                        .map_err(|e| write_failed("release", change, e))?;
                    let Some(live) = live else {
                        self.forget(&change.key);
                        return Ok(());
                    };
                    if ownership::read_manifest(&live, instance) == Ownership::Released {
                        self.forget(&change.key);
                        return Ok(());
                    }
                    rv = Seen::of(&live).resource_version;
                }
                Err(e) if e.is_conflict() => {
                    return Err(write_failed(
                        "release",
                        change,
                        Error::Conflicts {
                            key: change.key.clone(),
                            attempts: attempt + 1,
                            source: e,
                        },
                    ));
                }
                Err(e) => return Err(write_failed("release", change, Error::Request(e))),
            }
        }
        unreachable!("invariant: the loop returns on its last attempt")
    }

    /// Deletes one object (background propagation) with the observed uid and
    /// resourceVersion as preconditions; bundles leaving with policy orphan are first patched
    /// to say so.
    pub(super) async fn delete_change(&self, change: &Change, permit: DeletePermit) -> Result<()> {
        let key = permit.key();
        let resource = self.resource(change)?;
        let api = self.api().await?;
        let mut seen = self.seen(key).unwrap_or_default();
        let collection = resource.collection(
            seen.api_version.rsplit_once('/').map(|(_, v)| v),
            Some(&key.namespace),
        );
        let only_managed = |own: &Ownership| guard::may_delete(key, own);
        for attempt in 0..=CONFLICT_RETRIES {
            // A server-side cascade (PaletteAI's controller) reads the live policy: make it
            // say what pbsync decided before the bundle goes.
            if key.kind == Kind::ProfileBundle
                && change.effective_policy == Some(DeletionPolicy::Orphan)
                && seen.deletion_policy != Some(DeletionPolicy::Orphan)
            {
                let mut patch = json!({"spec": {"deletionPolicy": "orphan"}});
                if let Some(rv) = &seen.resource_version {
                    patch["metadata"] = json!({"resourceVersion": rv});
                }
                match api.merge_patch(&collection, &key.name, &patch).await {
                    Ok(patched) => seen = Seen::of(&patched),
                    Err(e) if e.code() == Some(404) => {
                        self.forget(key);
                        return Ok(());
                    }
                    Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => {
                        match self
                            .reread(api, &collection, key, only_managed)
                            .await
                            .map_err(|e| write_failed("delete", change, e))?
                        {
                            Some(live) => seen = Seen::of(&live),
                            None => {
                                self.forget(key);
                                return Ok(());
                            }
                        }
                        continue;
                    }
                    Err(e) => return Err(write_failed("delete", change, Error::Request(e))),
                }
            }
            match api
                .delete(
                    &permit,
                    &collection,
                    seen.uid.as_deref(),
                    seen.resource_version.as_deref(),
                )
                .await
            {
                Ok(()) => {
                    self.forget(key);
                    self.bundle_changed(api, key, "Deleted", seen.uid.clone())
                        .await;
                    return Ok(());
                }
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => {
                    let uid = seen.uid.clone();
                    match self
                        .reread(api, &collection, key, only_managed)
                        .await
                        .map_err(|e| write_failed("delete", change, e))?
                    {
                        Some(live) => {
                            seen = Seen::of(&live);
                            if uid.is_some() && seen.uid != uid {
                                return Err(write_failed(
                                    "delete",
                                    change,
                                    Error::Replaced { key: key.clone() },
                                ));
                            }
                        }
                        None => {
                            self.forget(key);
                            return Ok(());
                        }
                    }
                }
                Err(e) if e.is_conflict() => {
                    return Err(write_failed(
                        "delete",
                        change,
                        Error::Conflicts {
                            key: key.clone(),
                            attempts: attempt + 1,
                            source: e,
                        },
                    ));
                }
                Err(e) => return Err(write_failed("delete", change, Error::Request(e))),
            }
        }
        unreachable!("invariant: the loop returns on its last attempt")
    }

    /// Re-reads an object after a conflict; checks it is still this instance's to change.
    async fn reread(
        &self,
        api: &ApiClient,
        collection: &str,
        key: &ObjectKey,
        allowed: impl Fn(&Ownership) -> Result<(), guard::Refusal>,
    ) -> std::result::Result<Option<Value>, Error> {
        let live = api
            .get(collection, &key.name)
            .await
            .map_err(Error::Request)?;
        if let Some(live) = &live {
            allowed(&ownership::read_manifest(live, &self.options.instance))?;
            self.remember(key, live);
        }
        Ok(live)
    }
}
