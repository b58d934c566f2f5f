use serde_json::json;

use super::*;

fn id(namespace: Option<&str>, selector: Option<&str>, metadata_only: bool) -> ListId {
    ListId {
        kind: Kind::HelmRepository,
        group: "source.toolkit.fluxcd.io".into(),
        version: "v1".into(),
        plural: "helmrepositories".into(),
        namespace: namespace.map(str::to_string),
        selector: selector.map(str::to_string),
        metadata_only,
    }
}

fn obj(name: &str, rv: &str, url: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "a", "resourceVersion": rv,
                        "labels": {"pbsync.dev/instance": "blue"}},
           "spec": {"url": url}})
}

fn mirror() -> Mirror {
    let (sync, _) = watch::channel(Sync::Pending);
    Mirror {
        id: id(None, None, false),
        store: Mutex::new(Store::default()),
        sync,
        task: Mutex::new(None),
    }
}

fn url(m: &Mirror, name: &str) -> Option<String> {
    lock(&m.store)
        .objects
        .get(&("a".to_string(), name.to_string()))
        .and_then(|v| v.pointer("/spec/url"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[test]
fn a_list_holds_what_its_namespace_and_selector_select() {
    let labels = json!({"pbsync.dev/instance": "blue"});
    let labels = labels.as_object();
    assert!(id(None, Some("pbsync.dev/instance=blue"), false).holds("a", labels));
    assert!(!id(None, Some("pbsync.dev/instance!=blue"), false).holds("a", labels));
    assert!(id(None, Some("pbsync.dev/instance!=red"), false).holds("a", labels));
    assert!(id(None, Some("pbsync.dev/instance!=blue"), false).holds("a", None));
    assert!(!id(Some("b"), None, false).holds("a", labels));
    assert!(id(Some("a"), None, false).holds("a", labels));
    // A selector it cannot evaluate claims nothing.
    assert!(!id(None, Some("pbsync.dev/instance in (blue)"), false).holds("a", labels));
}

#[test]
fn an_older_version_never_replaces_a_newer_one() {
    let m = mirror();
    m.on_event(Event::Init);
    m.on_event(Event::InitApply(obj("x", "10", "https://one")));
    m.on_event(Event::InitDone);
    assert_eq!(*m.sync.borrow(), Sync::Live);
    // Written by this target at 12, then a late event of 11 arrives.
    Mirror::put(&mut lock(&m.store), false, obj("x", "12", "https://ours"));
    m.on_event(Event::Apply(obj("x", "11", "https://late")));
    assert_eq!(url(&m, "x").as_deref(), Some("https://ours"));
    // The watch's own event at 12 (the whole object) replaces the reconstruction.
    m.on_event(Event::Apply(obj("x", "12", "https://server")));
    assert_eq!(url(&m, "x").as_deref(), Some("https://server"));
}

#[test]
fn a_deletion_leaves_a_tombstone_that_older_events_cannot_cross() {
    let m = mirror();
    m.on_event(Event::Init);
    m.on_event(Event::InitApply(obj("x", "10", "https://one")));
    m.on_event(Event::InitDone);
    {
        let mut store = lock(&m.store);
        store.objects.remove(&("a".to_string(), "x".to_string()));
        store
            .tombstones
            .insert(("a".to_string(), "x".to_string()), 10);
    }
    m.on_event(Event::Apply(obj("x", "10", "https://stale")));
    assert_eq!(url(&m, "x"), None, "the deleted object does not come back");
    // Created again later: a newer version is a new object.
    m.on_event(Event::Apply(obj("x", "15", "https://again")));
    assert_eq!(url(&m, "x").as_deref(), Some("https://again"));
}

#[test]
fn a_relist_replaces_the_store_but_keeps_newer_writes() {
    let m = mirror();
    m.on_event(Event::Init);
    m.on_event(Event::InitApply(obj("x", "10", "https://x")));
    m.on_event(Event::InitApply(obj("gone", "10", "https://gone")));
    m.on_event(Event::InitDone);
    // The watch expired (410): listed again while this target wrote x at 30.
    m.on_event(Event::Init);
    m.on_event(Event::InitApply(obj("x", "20", "https://listed")));
    Mirror::put(
        &mut lock(&m.store),
        false,
        obj("x", "30", "https://written"),
    );
    m.on_event(Event::InitDone);
    assert_eq!(url(&m, "x").as_deref(), Some("https://written"));
    assert_eq!(url(&m, "gone"), None, "what the new list lacks is gone");
}

#[test]
fn a_failed_watch_is_not_read_until_the_server_is_heard_again() {
    let m = mirror();
    m.on_event(Event::Init);
    m.on_event(Event::InitDone);
    m.sync.send_replace(Sync::Broken);
    assert_eq!(*m.sync.borrow(), Sync::Broken);
    m.on_event(Event::Apply(obj("x", "5", "https://x")));
    assert_eq!(*m.sync.borrow(), Sync::Live);
}

#[test]
fn a_metadata_only_list_keeps_metadata_only() {
    let kept = as_kept(&id(None, None, true), &obj("x", "1", "https://x"));
    assert!(kept.get("spec").is_none());
    assert_eq!(kept.pointer("/metadata/name"), Some(&json!("x")));
}
