//! Carrying out one planned change on the hub: server-side apply, release (a merge patch),
//! delete. Each carries the preconditions of the object the plan was made against; a 409
//! Conflict re-reads the object, checks it is still this instance's, and tries again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::client::{self, ApiClient};
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
        let precondition = if change.action == Action::Create {
            None
        } else {
            self.seen(&change.key).and_then(|s| s.resource_version)
        };
        let key = &change.key;
        // A note of an earlier release on the object as observed (a take-back cut short).
        let noted = self.seen(key).is_some_and(|s| s.released_note);
        let precondition = Mutex::new(precondition);
        let (collection, desired_ref, precondition) = (&collection, &desired, &precondition);
        let answer = retry_on_conflict(
            key,
            || {
                let mut body = desired_ref.clone();
                if let (Some(rv), Some(meta)) = (
                    shared(precondition).clone(),
                    body.get_mut("metadata").and_then(Value::as_object_mut),
                ) {
                    meta.insert("resourceVersion".into(), Value::String(rv));
                }
                Box::pin(async move {
                    match api.apply(collection, &key.name, &body).await {
                        Ok(answer) => Ok(Try::Done(answer)),
                        Err(e) if e.is_conflict() => Ok(Try::Conflict(e)),
                        Err(e) => Err(Error::Request(e)),
                    }
                })
            },
            || {
                Box::pin(async move {
                    let live = self
                        .reread(api, collection, key, |own| guard::may_write(change, own))
                        .await?;
                    *shared(precondition) =
                        live.as_ref().and_then(|l| Seen::of(l).resource_version);
                    Ok(None)
                })
            },
        )
        .await
        .map_err(|e| write_failed(verb, change, e))?;
        // The answer is the object's metadata (`as=PartialObjectMetadata`): what the server
        // stored is the applied body under that metadata, until the watch brings the whole
        // object (server defaults included) at the same resourceVersion.
        let mut stored = desired.clone();
        if let (Some(meta), Some(obj)) = (answer.get("metadata"), stored.as_object_mut()) {
            obj.insert("metadata".into(), meta.clone());
        }
        self.mirror_wrote(key, &stored).await;
        let seen = Seen::written(&desired, &answer);
        // The object at this resourceVersion is what applying `desired` gives: the next pass
        // needs no dry-run while neither changes.
        lock(&self.compared).insert(
            key.clone(),
            Compared {
                fingerprint,
                resource_version: seen.resource_version.clone(),
                answer: Answer::Live,
            },
        );
        let uid = seen.uid.clone();
        lock(&self.seen).insert(key.clone(), seen);
        if change.observed == Some(Ownership::Released) || noted {
            // Taken back: the release's note was set with a merge patch, which server-side
            // apply never removes (another operation owns it).
            self.forget_release(api, collection, change).await?;
        }
        let reason = if change.action == Action::Create {
            "Created"
        } else {
            "Updated"
        };
        self.bundle_changed(api, key, reason, uid).await;
        Ok(())
    }

    /// Removes the `released-by` note of an object this instance took back.
    async fn forget_release(
        &self,
        api: &ApiClient,
        collection: &str,
        change: &Change,
    ) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {ownership::RELEASED_BY_ANNOTATION: null}}});
        match api.merge_patch(collection, &change.key.name, &patch).await {
            Ok(answer) => {
                // The write's cache entry is for the object before this patch: drop it, so
                // the next pass compares afresh.
                lock(&self.compared).remove(&change.key);
                self.remember(&change.key, &answer);
                self.mirror_wrote(&change.key, &answer).await;
                Ok(())
            }
            Err(e) => Err(write_failed("take back", change, Error::Request(e))),
        }
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
            self.mirror_gone(&change.key, None).await;
            return Ok(None);
        };
        self.remember(&change.key, &live);
        self.mirror_wrote(&change.key, &live).await;
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
        let rv = Mutex::new(seen.and_then(|s| s.resource_version));
        let instance = &self.options.instance;
        let key = &change.key;
        let answer: Mutex<Option<Value>> = Mutex::new(None);
        let (collection, rv, answer_ref) = (&collection, &rv, &answer);
        // Done(true): released now; Done(false): gone, or released already.
        let released = retry_on_conflict(
            key,
            || {
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
                if let Some(rv) = shared(rv).clone() {
                    patch["metadata"]["resourceVersion"] = Value::String(rv);
                }
                Box::pin(async move {
                    match api.merge_patch(collection, &key.name, &patch).await {
                        Ok(released) => {
                            *shared(answer_ref) = Some(released);
                            Ok(Try::Done(true))
                        }
                        Err(e) if e.code() == Some(404) => Ok(Try::Done(false)),
                        Err(e) if e.is_conflict() => Ok(Try::Conflict(e)),
                        Err(e) => Err(Error::Request(e)),
                    }
                })
            },
            || {
                Box::pin(async move {
                    let live = self
                        .reread(api, collection, key, |own| guard::may_release(key, own))
                        .await?;
                    match live {
                        None => Ok(Some(false)),
                        Some(l)
                            if ownership::read_manifest(&l, instance) == Ownership::Released =>
                        {
                            Ok(Some(false))
                        }
                        Some(l) => {
                            *shared(rv) = Seen::of(&l).resource_version;
                            Ok(None)
                        }
                    }
                })
            },
        )
        .await
        .map_err(|e| write_failed("release", change, e))?;
        let uid = self.seen(key).and_then(|s| s.uid);
        self.forget(key);
        let released_object = shared(&answer).take();
        if let Some(released_object) = released_object {
            // No longer this instance's: out of the mirror of "ours", into "other owners'".
            self.mirror_wrote(key, &released_object).await;
        }
        if released {
            self.bundle_changed(api, key, "Orphaned", uid).await;
        }
        Ok(())
    }

    /// Deletes one object (background propagation) with the observed uid and
    /// resourceVersion as preconditions; bundles leaving with policy orphan are first patched
    /// to say so.
    pub(super) async fn delete_change(&self, change: &Change, permit: DeletePermit) -> Result<()> {
        let key = permit.key();
        let resource = self.resource(change)?;
        let api = self.api().await?;
        let seen = self.seen(key).unwrap_or_default();
        let collection = resource.collection(
            seen.api_version.rsplit_once('/').map(|(_, v)| v),
            Some(&key.namespace),
        );
        let permit = &permit;
        let seen = Mutex::new(seen);
        let (collection, state) = (&collection, &seen);
        // Done(true): deleted now; Done(false): already gone.
        let deleted = retry_on_conflict(
            key,
            || {
                Box::pin(async move {
                    let seen = shared(state).clone();
                    // A server-side cascade (PaletteAI's controller) reads the live policy: make
                    // it say what pbsync decided before the bundle goes.
                    if key.kind == Kind::ProfileBundle
                        && change.effective_policy == Some(DeletionPolicy::Orphan)
                        && seen.deletion_policy != Some(DeletionPolicy::Orphan)
                    {
                        let mut patch = json!({"spec": {"deletionPolicy": "orphan"}});
                        if let Some(rv) = &seen.resource_version {
                            patch["metadata"] = json!({"resourceVersion": rv});
                        }
                        let seen = match api.merge_patch(collection, &key.name, &patch).await {
                            Ok(patched) => {
                                let now = Seen::of(&patched);
                                *shared(state) = now.clone();
                                now
                            }
                            Err(e) if e.code() == Some(404) => return Ok(Try::Done(false)),
                            Err(e) if e.is_conflict() => return Ok(Try::Conflict(e)),
                            Err(e) => return Err(Error::Request(e)),
                        };
                        return delete_with(api, permit, collection, &seen).await;
                    }
                    delete_with(api, permit, collection, &seen).await
                })
            },
            || {
                Box::pin(async move {
                    let live = self
                        .reread(api, collection, key, |own| guard::may_delete(key, own))
                        .await?;
                    let Some(live) = live else {
                        return Ok(Some(false));
                    };
                    let now = Seen::of(&live);
                    let mut seen = shared(state);
                    // Deleted and created again since: not the object the guard permitted.
                    if seen.uid.is_some() && now.uid != seen.uid {
                        return Err(Error::Replaced { key: key.clone() });
                    }
                    *seen = now;
                    Ok(None)
                })
            },
        )
        .await
        .map_err(|e| write_failed("delete", change, e))?;
        let last = shared(&seen).resource_version.clone();
        self.mirror_gone(key, last.as_deref()).await;
        self.forget(key);
        if deleted {
            let uid = shared(&seen).uid.clone();
            self.bundle_changed(api, key, "Deleted", uid).await;
        }
        Ok(())
    }

    /// Writes what the server answered into the watch cache's mirrors, if any.
    async fn mirror_wrote(&self, key: &ObjectKey, answer: &Value) {
        if let Some(mirrors) = &self.mirrors {
            mirrors.wrote(key.kind, answer).await;
        }
    }

    /// Takes an object this target deleted (or found gone) out of the mirrors, if any.
    async fn mirror_gone(&self, key: &ObjectKey, resource_version: Option<&str>) {
        if let Some(mirrors) = &self.mirrors {
            mirrors
                .deleted(key.kind, &key.namespace, &key.name, resource_version)
                .await;
        }
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
        match &live {
            Some(live) => {
                self.mirror_wrote(key, live).await;
                allowed(&ownership::read_manifest(live, &self.options.instance))?;
                self.remember(key, live);
            }
            None => self.mirror_gone(key, None).await,
        }
        Ok(live)
    }
}

/// The preconditions the attempts of one change share: set by each re-read.
fn shared<S>(state: &Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The raw delete with the preconditions last seen: done, or a conflict.
async fn delete_with(
    api: &ApiClient,
    permit: &DeletePermit,
    collection: &str,
    seen: &Seen,
) -> std::result::Result<Try<bool>, Error> {
    let uid = seen.uid.as_deref();
    let rv = seen.resource_version.as_deref();
    match api.delete(permit, collection, uid, rv).await {
        Ok(()) => Ok(Try::Done(true)),
        Err(e) if e.is_conflict() => Ok(Try::Conflict(e)),
        Err(e) => Err(Error::Request(e)),
    }
}

/// What one attempt of a change came to.
enum Try<T> {
    /// It is done (with what the server answered, or whether there was anything to do).
    Done(T),
    /// The object changed since it was read: 409.
    Conflict(client::Error),
}

/// One attempt (or re-read) of a change.
type Attempt<'a, T> = Pin<Box<dyn Future<Output = std::result::Result<T, Error>> + Send + 'a>>;

/// The one conflict-retry loop of the target (client-go's `retry.RetryOnConflict`): runs
/// `attempt` until it is done, fails with anything but a 409, or met `CONFLICT_RETRIES`
/// conflicts. After each conflict `reread` reads the object again, checks with the guard it
/// is still this instance's to change, and either finishes (`Some`: the object went, or
/// already is what the change wanted) or updates the preconditions the attempts share for
/// the next one (`None`).
async fn retry_on_conflict<'a, T>(
    key: &ObjectKey,
    mut attempt: impl FnMut() -> Attempt<'a, Try<T>>,
    mut reread: impl FnMut() -> Attempt<'a, Option<T>>,
) -> std::result::Result<T, Error> {
    let mut conflicts = 0;
    loop {
        match attempt().await? {
            Try::Done(done) => return Ok(done),
            Try::Conflict(source) => {
                conflicts += 1;
                if conflicts > CONFLICT_RETRIES {
                    return Err(Error::Conflicts {
                        key: key.clone(),
                        attempts: conflicts,
                        source,
                    });
                }
                tracing::debug!(%key, "conflict; re-reading");
                if let Some(done) = reread().await? {
                    return Ok(done);
                }
            }
        }
    }
}
