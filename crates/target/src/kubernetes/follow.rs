//! Following objects' health on the hub with watches (kube-runtime's watcher: a list, then a
//! watch from its resourceVersion with bookmarks, listed again only when the server says the
//! watch expired, `410 Gone`; failures are retried with kube-runtime's default backoff).
//!
//! One watch per kind and namespace the followed keys are in: a namespace with one followed
//! object of a kind watches it by name (a field selector); a kind in more than
//! [`MAX_NAMESPACE_WATCHES`] namespaces is watched across all namespaces. Events for objects
//! not followed are dropped here. The object's health is judged by
//! [`pbsync_core::health::of_object`] from the whole object, status included.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::StreamExt as _;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};

use super::KubeTarget;
use crate::{Error, Follow, Reading};
use pbsync_core::graph::ResourceGraph;
use pbsync_core::health;
use pbsync_core::model::{Kind, ObjectKey};

/// Above this many namespaces of one kind, one watch across all namespaces.
const MAX_NAMESPACE_WATCHES: usize = 8;

/// The keys one watch serves, and what it has said about them.
struct Watched {
    kind: Kind,
    /// Followed objects, by (namespace, name).
    keys: HashMap<(String, String), ObjectKey>,
    /// Present during the current (re-)list, to report the rest gone at its end.
    listed: BTreeSet<ObjectKey>,
}

impl Watched {
    fn key_of(&self, obj: &DynamicObject) -> Option<&ObjectKey> {
        let ns = obj.metadata.namespace.clone().unwrap_or_default();
        let name = obj.metadata.name.clone().unwrap_or_default();
        self.keys.get(&(ns, name))
    }

    fn reading(&self, obj: &DynamicObject) -> Option<(ObjectKey, Reading)> {
        let key = self.key_of(obj)?.clone();
        let value = serde_json::to_value(obj).unwrap_or_default();
        Some((key, Reading::Present(health::of_object(self.kind, &value))))
    }

    /// What one watcher event says about the followed keys.
    fn on_event(&mut self, event: Event<DynamicObject>) -> Vec<(ObjectKey, Reading)> {
        match event {
            Event::Init => {
                self.listed.clear();
                Vec::new()
            }
            Event::InitApply(obj) => {
                let Some(r) = self.reading(&obj) else {
                    return Vec::new();
                };
                self.listed.insert(r.0.clone());
                vec![r]
            }
            Event::InitDone => self
                .keys
                .values()
                .filter(|k| !self.listed.contains(*k))
                .map(|k| (k.clone(), Reading::Gone))
                .collect(),
            Event::Apply(obj) => self.reading(&obj).into_iter().collect(),
            Event::Delete(obj) => self
                .key_of(&obj)
                .map(|k| (k.clone(), Reading::Gone))
                .into_iter()
                .collect(),
        }
    }
}

impl KubeTarget {
    /// See [`crate::Target::follow`].
    pub(super) fn follow_hub<'a>(
        &'a self,
        _graph: &'a ResourceGraph,
        keys: Vec<ObjectKey>,
    ) -> Follow<'a> {
        let setup = async move {
            let keys: Vec<ObjectKey> = keys.into_iter().filter(|k| !k.kind.is_palette()).collect();
            let api = self.api().await?;
            let needed: BTreeSet<Kind> = keys.iter().map(|k| k.kind).collect();
            let resources = self.discover(api, &needed).await?;
            let client = api.client();
            let mut by_kind: BTreeMap<Kind, BTreeMap<String, Vec<ObjectKey>>> = BTreeMap::new();
            for key in keys {
                by_kind
                    .entry(key.kind)
                    .or_default()
                    .entry(key.namespace.to_string())
                    .or_default()
                    .push(key);
            }
            let mut streams = Vec::new();
            for (kind, namespaces) in by_kind {
                let resource = resources
                    .get(kind)
                    .ok_or_else(|| Error::Config(format!("the API server serves no {kind}")))?;
                let (group, version) = (resource.group.clone(), resource.versions[0].clone());
                let ar = ApiResource {
                    api_version: format!("{group}/{version}"),
                    group,
                    version,
                    kind: kind.as_str().to_string(),
                    plural: resource.plural.clone(),
                };
                let mut watches: Vec<(Option<String>, Vec<ObjectKey>)> = Vec::new();
                if namespaces.len() > MAX_NAMESPACE_WATCHES {
                    watches.push((None, namespaces.into_values().flatten().collect()));
                } else {
                    watches.extend(namespaces.into_iter().map(|(ns, k)| (Some(ns), k)));
                }
                for (namespace, keys) in watches {
                    let api: Api<DynamicObject> = match &namespace {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                        None => Api::all_with(client.clone(), &ar),
                    };
                    let config = match keys.as_slice() {
                        [one] if namespace.is_some() => watcher::Config::default()
                            .fields(&format!("metadata.name={}", one.name)),
                        _ => watcher::Config::default(),
                    };
                    let mut watched = Watched {
                        kind,
                        keys: keys
                            .into_iter()
                            .map(|k| ((k.namespace.to_string(), k.name.to_string()), k))
                            .collect(),
                        listed: BTreeSet::new(),
                    };
                    let what = format!(
                        "{} {}",
                        ar.plural,
                        namespace
                            .as_deref()
                            .map_or("in all namespaces".into(), |n| format!("in {n}"))
                    );
                    let stream = watcher::watcher(api, config)
                        .default_backoff()
                        .map(move |event| match event {
                            Ok(e) => watched.on_event(e).into_iter().map(Ok).collect(),
                            Err(e) => vec![Err(Error::ObserveFailed {
                                what: format!("the health of {what} (watching)"),
                                source: Box::new(e),
                            })],
                        })
                        .flat_map(futures::stream::iter);
                    streams.push(stream.boxed());
                }
            }
            Ok::<_, Error>(streams)
        };
        Box::pin(futures::stream::once(setup).flat_map(|setup| {
            match setup {
                Ok(streams) if streams.is_empty() => futures::stream::pending().boxed(),
                Ok(streams) => futures::stream::select_all(streams).boxed(),
                Err(e) => futures::stream::once(async { Err(e) })
                    .chain(futures::stream::pending())
                    .boxed(),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(name: &str, status: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
            "metadata": {"name": name, "namespace": "a", "generation": 1},
            "status": status,
        }))
        .expect("object")
    }

    fn watched() -> Watched {
        let keys = ["charts", "extra"]
            .map(|n| ObjectKey::new(Kind::HelmRepository, "a", n))
            .into_iter()
            .map(|k| ((k.namespace.to_string(), k.name.to_string()), k))
            .collect();
        Watched {
            kind: Kind::HelmRepository,
            keys,
            listed: BTreeSet::new(),
        }
    }

    #[test]
    fn a_list_reports_what_it_found_and_the_followed_rest_as_gone() {
        let mut w = watched();
        assert!(w.on_event(Event::Init).is_empty());
        let found = w.on_event(Event::InitApply(object(
            "charts",
            json!({"observedGeneration": 1}),
        )));
        assert_eq!(found.len(), 1);
        assert!(matches!(&found[0].1, Reading::Present(h) if h.state == health::State::Current));
        // Not followed: dropped.
        assert!(
            w.on_event(Event::InitApply(object("other", json!({}))))
                .is_empty()
        );
        let rest = w.on_event(Event::InitDone);
        assert_eq!(
            rest,
            vec![(
                ObjectKey::new(Kind::HelmRepository, "a", "extra"),
                Reading::Gone
            )]
        );
        // A re-list starts over: what is gone since is reported gone.
        w.on_event(Event::Init);
        let rest = w.on_event(Event::InitDone);
        assert_eq!(rest.len(), 2);
    }

    #[test]
    fn a_delete_event_reads_as_gone_and_an_update_as_its_new_health() {
        let mut w = watched();
        let failed = json!({"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "False", "reason": "FailedToFetch", "message": "404"}]});
        let r = w.on_event(Event::Apply(object("charts", failed)));
        assert!(matches!(&r[0].1, Reading::Present(h) if h.state == health::State::Failed));
        let r = w.on_event(Event::Delete(object("charts", json!({}))));
        assert_eq!(r[0].1, Reading::Gone);
    }
}
