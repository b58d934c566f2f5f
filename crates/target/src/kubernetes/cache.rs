//! The daemon's watch-fed view of the hub ([`KubeOptions::watch_cache`]). Each list a plan
//! reads ([`super::observe`]: this instance's objects, every bundle and pool, other owners'
//! objects near the desired state) is served from a mirror that kube-runtime's watcher keeps:
//! a list the first time that list is needed, then a watch from its resourceVersion with
//! bookmarks, listed again only when the server says the watch expired (`410 Gone`), with
//! kube-runtime's backoff after failures. A pass that finds nothing to do then reads nothing
//! from the API server.
//!
//! Correctness is not traded:
//! - A mirror that has not finished its first list, or whose watch failed, serves nothing:
//!   the pass lists afresh ([`Mirrors::list`] answers `None`), so a broken watch never reads
//!   as "no objects" (never as "delete"); the failed mirror is started again (a new list)
//!   the next time its list is needed.
//! - Every write of this target goes into the mirrors at once (write-through), ordered by
//!   resourceVersion against the watch's events, so the next pass plans against what it
//!   wrote even before the watch delivers it; a deletion leaves a tombstone so a late event
//!   of the deleted object does not bring it back.
//! - Writes still carry the resourceVersion they were planned against (and deletions the
//!   guard's fresh read), so a mirror that lags can only cause a conflict, never an
//!   overwrite.
//!
//! [`KubeOptions::watch_cache`]: super::KubeOptions::watch_cache

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::discovery::ApiResource;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::sync::watch;

use super::budget::Verb;
use super::client::ApiClient;
use pbsync_core::model::Kind;

/// How long a pass waits for a new mirror's first list before it lists itself.
const FIRST_SYNC: Duration = Duration::from_secs(60);

/// One list a plan reads, as a mirror is kept of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ListId {
    /// The kind.
    pub kind: Kind,
    /// Its API group, version and plural (`ApiResource`).
    pub group: String,
    /// Version served.
    pub version: String,
    /// Plural.
    pub plural: String,
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    /// `INSTANCE_LABEL=x`, `INSTANCE_LABEL!=x`, or none.
    pub selector: Option<String>,
    /// Metadata only (`PartialObjectMetadata`).
    pub metadata_only: bool,
}

impl ListId {
    fn resource(&self) -> ApiResource {
        ApiResource {
            api_version: if self.group.is_empty() {
                self.version.clone()
            } else {
                format!("{}/{}", self.group, self.version)
            },
            group: self.group.clone(),
            version: self.version.clone(),
            kind: self.kind.as_str().to_string(),
            plural: self.plural.clone(),
        }
    }

    /// Whether an object with `namespace` and `labels` belongs to this list.
    fn holds(&self, namespace: &str, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        let Some(selector) = &self.selector else {
            return true;
        };
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        if let Some((key, value)) = selector.split_once("!=") {
            label(key) != Some(value)
        } else if let Some((key, value)) = selector.split_once('=') {
            label(key) == Some(value)
        } else {
            // A selector this cache does not evaluate: never claims an object.
            false
        }
    }
}

/// Whether a mirror may be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Its first list has not completed.
    Pending,
    /// Listed, and the watch is live.
    Live,
    /// The watch failed and has not heard from the server since.
    Broken,
}

/// What a mirror holds.
#[derive(Debug, Default)]
struct Store {
    /// By (namespace, name).
    objects: HashMap<(String, String), Value>,
    /// A (re-)list in progress: replaces `objects` when done.
    relisting: Option<HashMap<(String, String), Value>>,
    /// Deleted by this target, at this resourceVersion: older events are ignored.
    tombstones: HashMap<(String, String), u64>,
}

/// One mirrored list and its watch task (stopped when the mirror is dropped).
#[derive(Debug)]
struct Mirror {
    id: ListId,
    store: Mutex<Store>,
    sync: watch::Sender<Sync>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn name_of(v: &Value) -> Option<(String, String)> {
    let ns = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = v.pointer("/metadata/name").and_then(Value::as_str)?;
    Some((ns.to_string(), name.to_string()))
}

/// A resourceVersion as a number (etcd's revision): how two versions of one object are
/// ordered. Not a number: unordered (the newer arrival wins).
fn version(v: &Value) -> Option<u64> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
}

impl Mirror {
    /// Puts `value` in unless what is there (or a tombstone) is newer.
    fn put(store: &mut Store, map_is_relist: bool, value: Value) {
        let Some(key) = name_of(&value) else { return };
        let new = version(&value);
        if let (Some(dead), Some(new)) = (store.tombstones.get(&key), new)
            && new <= *dead
        {
            return;
        }
        let map = if map_is_relist {
            store.relisting.get_or_insert_with(HashMap::new)
        } else {
            &mut store.objects
        };
        if let Some(old) = map.get(&key).and_then(version)
            && new.is_some_and(|n| n < old)
        {
            return;
        }
        map.insert(key, value);
    }

    fn on_event(&self, event: Event<Value>) {
        let mut store = lock(&self.store);
        match event {
            Event::Init => store.relisting = Some(HashMap::new()),
            Event::InitApply(v) => Self::put(&mut store, true, v),
            Event::InitDone => {
                let fresh = store.relisting.take().unwrap_or_default();
                // Writes made while the list ran are newer than it: keep them.
                let mut merged = fresh;
                for (key, v) in std::mem::take(&mut store.objects) {
                    let newer = match (merged.get(&key).and_then(version), version(&v)) {
                        (Some(listed), Some(ours)) => ours > listed,
                        _ => false,
                    };
                    if newer {
                        merged.insert(key, v);
                    }
                }
                store.objects = merged;
                drop(store);
                self.sync.send_replace(Sync::Live);
                return;
            }
            Event::Apply(v) => Self::put(&mut store, false, v),
            Event::Delete(v) => {
                if let Some(key) = name_of(&v) {
                    store.objects.remove(&key);
                }
            }
        }
        drop(store);
        // Any word from the server after a failure: the watch is live again.
        if *self.sync.borrow() == Sync::Broken {
            self.sync.send_replace(Sync::Live);
        }
    }
}

/// Every mirror of a target.
#[derive(Debug, Default)]
pub(super) struct Mirrors {
    lists: tokio::sync::Mutex<HashMap<ListId, Arc<Mirror>>>,
}

/// The object as a mirror keeps it: metadata-only mirrors keep the metadata.
fn as_kept(id: &ListId, v: &Value) -> Value {
    if id.metadata_only {
        serde_json::json!({"metadata": v.get("metadata").cloned().unwrap_or(Value::Null)})
    } else {
        v.clone()
    }
}

impl Mirrors {
    /// The items of list `id` from its mirror (started on first use), or `None` when the
    /// mirror cannot be trusted now: the caller lists afresh.
    pub(super) async fn list(&self, api: &ApiClient, id: &ListId) -> Option<Vec<Value>> {
        let mirror = {
            let mut lists = self.lists.lock().await;
            // A mirror whose watch failed is started again: a new list (one per list after
            // an outage) rather than waiting for an event a quiet resource may never send.
            if lists
                .get(id)
                .is_some_and(|m| *m.sync.borrow() == Sync::Broken)
            {
                lists.remove(id);
            }
            Arc::clone(
                lists
                    .entry(id.clone())
                    .or_insert_with(|| start(api, id.clone())),
            )
        };
        let mut sync = mirror.sync.subscribe();
        let state = tokio::time::timeout(FIRST_SYNC, async {
            loop {
                let now = *sync.borrow_and_update();
                if now != Sync::Pending {
                    return now;
                }
                if sync.changed().await.is_err() {
                    return Sync::Broken;
                }
            }
        })
        .await
        .unwrap_or(Sync::Pending);
        if state != Sync::Live {
            tracing::debug!(list = ?id, ?state, "watch cache not live; listing afresh");
            return None;
        }
        let store = lock(&mirror.store);
        Some(store.objects.values().cloned().collect())
    }

    /// What this target wrote (the whole object as stored, not a metadata-only answer): into
    /// every mirror of its kind that holds it, out of every one that no longer does (a
    /// release moves an object out of "ours").
    pub(super) async fn wrote(&self, kind: Kind, value: &Value) {
        let Some(key) = name_of(value) else { return };
        let labels = value.pointer("/metadata/labels").and_then(Value::as_object);
        for mirror in self.lists.lock().await.values() {
            if mirror.id.kind != kind {
                continue;
            }
            let mut store = lock(&mirror.store);
            if mirror.id.holds(&key.0, labels) {
                Mirror::put(&mut store, false, as_kept(&mirror.id, value));
            } else {
                store.objects.remove(&key);
            }
        }
    }

    /// What this target deleted, last seen at `resource_version`.
    pub(super) async fn deleted(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
    ) {
        let key = (namespace.to_string(), name.to_string());
        let rv = resource_version.and_then(|rv| rv.parse::<u64>().ok());
        for mirror in self.lists.lock().await.values() {
            if mirror.id.kind != kind {
                continue;
            }
            let mut store = lock(&mirror.store);
            store.objects.remove(&key);
            if let Some(rv) = rv {
                store.tombstones.insert(key.clone(), rv);
            }
        }
    }
}

/// A watcher event with its objects as JSON.
fn as_values<K: serde::Serialize>(event: Event<K>) -> Event<Value> {
    let v = |k: K| serde_json::to_value(k).unwrap_or_default();
    match event {
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(v(k)),
        Event::InitDone => Event::InitDone,
        Event::Apply(k) => Event::Apply(v(k)),
        Event::Delete(k) => Event::Delete(v(k)),
    }
}

/// Starts the mirror of `id`: a watcher task feeding its store.
fn start(api: &ApiClient, id: ListId) -> Arc<Mirror> {
    let (sync, _) = watch::channel(Sync::Pending);
    let mirror = Arc::new(Mirror {
        id: id.clone(),
        store: Mutex::new(Store::default()),
        sync,
        task: Mutex::new(None),
    });
    let client = api.client();
    let counts = api.counter();
    let ar = id.resource();
    let mut config = watcher::Config::default();
    if let Some(selector) = &id.selector {
        config = config.labels(selector);
    }
    let events = if id.metadata_only {
        // `PartialObjectMeta`: the watch and its lists ask for metadata only.
        let api: Api<PartialObjectMeta<DynamicObject>> = match &id.namespace {
            Some(ns) => Api::namespaced_with(client, ns, &ar),
            None => Api::all_with(client, &ar),
        };
        watcher::watcher(api, config)
            .default_backoff()
            .map(|e| e.map(as_values))
            .boxed()
    } else {
        let api: Api<DynamicObject> = match &id.namespace {
            Some(ns) => Api::namespaced_with(client, ns, &ar),
            None => Api::all_with(client, &ar),
        };
        watcher::watcher(api, config)
            .default_backoff()
            .map(|e| e.map(as_values))
            .boxed()
    };
    let weak = Arc::downgrade(&mirror);
    let task = tokio::spawn(async move {
        let mut events = events;
        while let Some(event) = events.next().await {
            let Some(mirror) = weak.upgrade() else { return };
            match event {
                Ok(e) => {
                    if matches!(e, Event::Init) {
                        counts(Verb::Watch, 200);
                    }
                    mirror.on_event(e);
                }
                Err(e) => {
                    tracing::warn!(list = ?mirror.id, error = %e, "watch failed; the next pass lists afresh");
                    mirror.sync.send_replace(Sync::Broken);
                }
            }
        }
    });
    *lock(&mirror.task) = Some(task);
    mirror
}

#[cfg(test)]
mod tests;
