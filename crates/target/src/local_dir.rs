//! The local-directory target (the embedded default, `--target dir:PATH`): every hub object as
//! YAML under `PATH/<namespace>/<kind>/<name>.yaml`, every cluster profile as Palette's create
//! entity under `PATH/palette/<scope>/<name>@<version>.json`, and ownership plus status in
//! `PATH/.pbsync/inventory.json`.
//!
//! Writes are atomic (a temporary file in the same directory, then a rename), and a file is
//! written only when its bytes change, so a second run with nothing to do writes nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use futures::StreamExt as _;

use super::{Error, Reading, Result, Status, Target};
use pbsync_core::graph::ResourceGraph;
use pbsync_core::guard::{self, DeletePermit, Now, ReleasePermit};
use pbsync_core::health::Health;
use pbsync_core::live::{LiveObject, Observed, Removal};
use pbsync_core::model::{Kind, Manifest, Object, ObjectKey, ProfileType, yaml};
use pbsync_core::ownership::{self, Ownership, Stamp};
use pbsync_core::plan::Change;

const STATE_DIR: &str = ".pbsync";
const INVENTORY: &str = "inventory.json";
/// The lock file of applying passes (a `flock`, which the kernel drops if the process dies).
const LOCK: &str = "lock";
const PALETTE_DIR: &str = "palette";

/// What one instance owns and last did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceRecord {
    /// Last revision applied completely.
    pub last_applied_revision: Option<String>,
    /// Last revision attempted.
    pub last_attempted_revision: Option<String>,
    /// Outcome of the last attempt.
    pub last_outcome: Option<String>,
    /// The last revision whose objects all became current, and when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_healthy: Option<(String, String)>,
    /// Objects this instance manages (key string -> record).
    #[serde(default)]
    pub objects: BTreeMap<String, OwnedObject>,
    /// Removals a pass recorded before carrying them out, until a pass completes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_removals: Vec<(ObjectKey, Removal)>,
}

/// One owned object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OwnedObject {
    /// Adopted rather than created: released, never deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// `PATH/.pbsync/inventory.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Inventory {
    /// Per pbsync instance.
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceRecord>,
    /// Objects released (orphaned), and by which instance.
    #[serde(default)]
    pub released: BTreeMap<String, String>,
}

/// The local-directory target.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    instance: String,
    inventory: Mutex<Inventory>,
    /// What the last observe found each file to hold exactly (see [`Matched`]).
    matched: Mutex<HashMap<ObjectKey, Matched>>,
    /// Files the last observe read (the others it knew unchanged).
    files_read: std::sync::atomic::AtomicUsize,
}

/// A file the last observe found to hold exactly what pbsync would write for a desired
/// object. While the desired object is the same (the same shared document, by identity: a
/// daemon's parse cache hands unchanged files' documents to every pass) under the same
/// marks, and the file is untouched (same size, inode, modification and change times), the
/// next observe knows the answer without reading the file.
#[derive(Debug, Clone)]
struct Matched {
    manifest: Manifest,
    source: Arc<str>,
    instance: String,
    adopted: bool,
    stat: FileStat,
}

/// What tells a file changed without reading it (as Git's index does). As in Git, a file
/// modified shortly before it was read is "racy" (an edit right after, on a file system
/// with coarse timestamps, could leave all four unchanged) and is not remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStat {
    len: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStat {
    #[cfg(unix)]
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(Self {
            len: m.len(),
            ino: m.ino(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }

    /// Modified long enough before `scan_start_ns` that a later edit must show in the times.
    fn settled(&self, scan_start_ns: i128) -> bool {
        const COARSEST_TIMESTAMPS_NS: i128 = 2_000_000_000;
        self.mtime_ns < scan_start_ns - COARSEST_TIMESTAMPS_NS
    }

    /// Elsewhere nothing is cached: every observe reads every file.
    #[cfg(not(unix))]
    fn of(_path: &Path) -> Option<Self> {
        None
    }
}

impl Matched {
    fn still_holds(&self, obj: &Object, instance: &str, adopted: bool, path: &Path) -> bool {
        Manifest::same_document(&self.manifest, &obj.manifest)
            && self.source == obj.location.path
            && self.instance == instance
            && self.adopted == adopted
            && FileStat::of(path) == Some(self.stat)
    }
}

/// `Kind/namespace/name` or `ClusterProfile/scope/name@version`: the inventory's key form.
pub fn key_string(key: &ObjectKey) -> String {
    format!("{}/{}", key.kind, key.short())
}

fn io_error(what: impl Into<String>, e: std::io::Error) -> Error {
    Error::ObserveFailed {
        what: what.into(),
        source: Box::new(e),
    }
}

fn write_error(
    verb: &'static str,
    change: &Change,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::WriteFailed {
        verb,
        key: change.key.clone(),
        at: change
            .source
            .as_ref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default(),
        retryable: false,
        source: Box::new(e),
    }
}

impl LocalDir {
    /// A target rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>, instance: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            instance: instance.into(),
            inventory: Mutex::new(Inventory::default()),
            matched: Mutex::new(HashMap::new()),
            files_read: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// How many object files the last observe read; the others it knew to be unchanged
    /// without reading them (see [`Target::observe`] for this target).
    pub fn files_read(&self) -> usize {
        self.files_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an object lives.
    pub(crate) fn path_of(&self, key: &ObjectKey) -> PathBuf {
        if key.kind == Kind::ClusterProfile {
            let version = key.version.as_deref().unwrap_or("");
            self.root
                .join(PALETTE_DIR)
                .join(&*key.namespace)
                .join(format!("{}@{version}.json", key.name))
        } else {
            self.root
                .join(&*key.namespace)
                .join(key.kind.dir_name())
                .join(format!("{}.yaml", key.name))
        }
    }

    /// Reads the inventory (empty when the directory is new).
    pub(crate) fn read_inventory(&self) -> Result<Inventory> {
        let path = self.root.join(STATE_DIR).join(INVENTORY);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::ObserveFailed {
                what: path.display().to_string(),
                source: Box::new(e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Inventory::default()),
            Err(e) => Err(io_error(path.display().to_string(), e)),
        }
    }

    fn save_inventory(&self, inv: &Inventory) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(inv).map_err(std::io::Error::other)?;
        text.push('\n');
        write_atomic(&self.root.join(STATE_DIR).join(INVENTORY), text.as_bytes())
    }

    fn inventory(&self) -> std::sync::MutexGuard<'_, Inventory> {
        // A panic while holding the lock cannot leave the inventory half-updated in a way
        // that matters: it is saved whole, so recover the data.
        self.inventory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ownership(&self, inv: &Inventory, key: &str) -> Ownership {
        if let Some(rec) = inv
            .instances
            .get(&self.instance)
            .and_then(|i| i.objects.get(key))
        {
            return if rec.adopted {
                Ownership::Adopted
            } else {
                Ownership::Managed
            };
        }
        if inv.released.get(key) == Some(&self.instance) {
            return Ownership::Released;
        }
        let owner = inv
            .instances
            .iter()
            .find(|(_, r)| r.objects.contains_key(key))
            .map(|(n, _)| n.clone());
        Ownership::Foreign { owner }
    }

    fn scan(&self, inv: &Inventory, graph: &ResourceGraph, stamp: &Stamp<'_>) -> Result<Observed> {
        let mut observed = Observed::default();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(observed),
            Err(e) => return Err(io_error(self.root.display().to_string(), e)),
        };
        let mut files = Vec::new();
        for top in entries {
            let top = top.map_err(|e| io_error(self.root.display().to_string(), e))?;
            let name = top.file_name().to_string_lossy().to_string();
            if name == STATE_DIR || !top.path().is_dir() {
                continue;
            }
            files.append(&mut self.files_under(&name, &top.path())?);
        }
        // Reading tens of thousands of small files is the bulk of observing a large
        // directory: spread it over the cores.
        use rayon::prelude::*;
        let previous = std::mem::take(&mut *lock(&self.matched));
        let scan_start_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
        self.files_read
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let read: Vec<(ObjectKey, LiveObject, Option<Matched>)> = files
            .into_par_iter()
            .map(|(key, path)| {
                let ownership = self.ownership(inv, &key_string(&key));
                let desired = desired_of(&key, &ownership, graph);
                let adopted = matches!(ownership, Ownership::Adopted);
                if let Some(obj) = desired
                    && let Some(m) = previous.get(&key)
                    && m.still_holds(obj, stamp.instance, adopted, &path)
                {
                    return (
                        key,
                        LiveObject::matching_desired(ownership),
                        Some(m.clone()),
                    );
                }
                // Taken before reading: a write in between only makes the next observe
                // read the file again.
                let stat = FileStat::of(&path);
                self.files_read
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) => {
                        let why = format!("{}: {e}", path.display());
                        return (key, LiveObject::unreadable(why, ownership), None);
                    }
                };
                // The steady state: the file holds exactly what pbsync would write for the
                // desired object. Then it need not be parsed, nor kept.
                if let Some(obj) = desired
                    && holds(&bytes, obj, stamp.instance, adopted)
                {
                    let m = stat
                        .filter(|s| s.settled(scan_start_ns))
                        .map(|stat| Matched {
                            manifest: obj.manifest.clone(),
                            source: Arc::clone(&obj.location.path),
                            instance: stamp.instance.to_string(),
                            adopted,
                            stat,
                        });
                    return (key, LiveObject::matching_desired(ownership), m);
                }
                let live = match decode_object(&bytes, key.kind) {
                    Ok(manifest) => {
                        let mut live = LiveObject::new(manifest, ownership);
                        if key.kind == Kind::ClusterProfile {
                            live.profile_type = live
                                .manifest
                                .as_ref()
                                .and_then(|m| m.pointer("/spec/template/type"))
                                .and_then(Value::as_str)
                                .and_then(ProfileType::from_api);
                        }
                        live
                    }
                    Err(why) => {
                        LiveObject::unreadable(format!("{}: {why}", path.display()), ownership)
                    }
                };
                (key, live, None)
            })
            .collect();
        let mut matched = HashMap::new();
        for (key, live, m) in read {
            if let Some(m) = m {
                matched.insert(key.clone(), m);
            }
            observed.objects.insert(key, live);
        }
        *lock(&self.matched) = matched;
        Ok(observed)
    }

    fn files_under(&self, top: &str, dir: &Path) -> Result<Vec<(ObjectKey, PathBuf)>> {
        let mut out = Vec::new();
        let read =
            |d: &Path| std::fs::read_dir(d).map_err(|e| io_error(d.display().to_string(), e));
        for sub in read(dir)? {
            let sub = sub.map_err(|e| io_error(dir.display().to_string(), e))?;
            if !sub.path().is_dir() {
                continue;
            }
            let sub_name = sub.file_name().to_string_lossy().to_string();
            for file in read(&sub.path())? {
                let file = file.map_err(|e| io_error(sub.path().display().to_string(), e))?;
                let fname = file.file_name().to_string_lossy().to_string();
                let key = if top == PALETTE_DIR && (sub_name == "project" || sub_name == "tenant") {
                    fname
                        .strip_suffix(".json")
                        .and_then(|s| s.split_once('@'))
                        .map(|(n, v)| ObjectKey::cluster_profile(sub_name.as_str(), n, v))
                } else {
                    let kind = Kind::ALL
                        .into_iter()
                        .find(|k| k.dir_name() == sub_name && !k.is_palette());
                    kind.zip(fname.strip_suffix(".yaml"))
                        .map(|(k, n)| ObjectKey::new(k, top, n))
                };
                if let Some(key) = key {
                    out.push((key, file.path()));
                }
            }
        }
        Ok(out)
    }

    /// The raw delete: removes the file of the object the permit names (a missing file
    /// counts as removed) and returns its path. The only file removal of this target.
    fn remove_object(&self, permit: &DeletePermit) -> std::io::Result<PathBuf> {
        let path = self.path_of(permit.key());
        #[allow(clippy::disallowed_methods)] // the one raw delete, behind the guard's permit
        let removed = std::fs::remove_file(&path);
        match removed {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path),
            Err(e) => Err(e),
        }
    }

    fn serialize(key: &ObjectKey, value: &Value) -> Vec<u8> {
        if key.kind == Kind::ClusterProfile {
            let mut s =
                serde_json::to_string_pretty(value).expect("invariant: JSON values serialize");
            s.push('\n');
            s.into_bytes()
        } else {
            yaml::to_string(value).into_bytes()
        }
    }
}

/// The desired object a file of this instance may be checked against by its bytes: hub
/// objects (cluster profiles are few, and JSON) this instance manages or adopted.
fn desired_of<'g>(
    key: &ObjectKey,
    ownership: &Ownership,
    graph: &'g ResourceGraph,
) -> Option<&'g Object> {
    if key.kind == Kind::ClusterProfile
        || !matches!(ownership, Ownership::Managed | Ownership::Adopted)
    {
        return None;
    }
    graph
        .node(key)
        .filter(|n| n.desired)
        .and_then(|n| graph.object(n))
}

/// True when `bytes` are exactly what [`LocalDir::write`] would write for `obj` rendered for
/// `instance`, at the revision the file itself records (a file whose revision annotation
/// differs only there is the same object: no comparison looks at it). Anything else (a hand
/// edit, a renamed source file, a file written by an older pbsync) answers false, and the
/// caller parses and compares the file in full.
fn holds(bytes: &[u8], obj: &Object, instance: &str, adopted: bool) -> bool {
    let Some(revision) = recorded_revision(bytes) else {
        return false;
    };
    let rendered = ownership::render(
        obj,
        &Stamp {
            instance,
            revision,
            adopted,
        },
    );
    yaml::to_string(&rendered).as_bytes() == bytes
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The value of the revision annotation in a file pbsync wrote (`None` when there is none
/// that could have been written as a plain scalar, which sends the caller to the full path).
fn recorded_revision(bytes: &[u8]) -> Option<&str> {
    let needle = format!("{}: ", ownership::REVISION_ANNOTATION);
    let start = memchr::memmem::find(bytes, needle.as_bytes())? + needle.len();
    let len = bytes[start..].iter().position(|&b| b == b'\n')?;
    let value = std::str::from_utf8(&bytes[start..start + len]).ok()?;
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        .then_some(value)
        .filter(|v| !v.is_empty())
}

fn read_object(path: &Path, kind: Kind) -> std::result::Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    decode_object(&bytes, kind)
}

fn decode_object(bytes: &[u8], kind: Kind) -> std::result::Result<Value, String> {
    if kind == Kind::ClusterProfile {
        return serde_json::from_slice(bytes).map_err(|e| e.to_string());
    }
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let docs = yaml::load_all(text, yaml::Limits::default()).map_err(|e| e.to_string())?;
    docs.first()
        .map(|d| d.root.to_json())
        .ok_or_else(|| "empty file".to_string())
}

/// Writes `bytes` to `path` atomically, and only if the content differs.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl Target for LocalDir {
    /// A file has no status: an object is current once its file exists.
    fn follow<'a>(&'a self, _graph: &'a ResourceGraph, keys: Vec<ObjectKey>) -> crate::Follow<'a> {
        let readings: Vec<Result<(ObjectKey, Reading)>> = keys
            .into_iter()
            .map(|key| {
                let reading = if self.path_of(&key).is_file() {
                    Reading::Present(Health::current())
                } else {
                    Reading::Gone
                };
                Ok((key, reading))
            })
            .collect();
        Box::pin(futures::stream::iter(readings).chain(futures::stream::pending()))
    }

    /// Lists every object file. A file holding exactly what pbsync would write for its
    /// desired object is recognised by its bytes and neither parsed nor kept; one an earlier
    /// observe recognised is not even read again while it and its desired document are
    /// unchanged. Any other file is parsed, for a full comparison.
    async fn observe(&self, graph: &ResourceGraph, stamp: &Stamp<'_>) -> Result<Observed> {
        let inv = self.read_inventory()?;
        let mut observed = self.scan(&inv, graph, stamp)?;
        if let Some(rec) = inv.instances.get(&self.instance) {
            observed.pending = rec.pending_removals.iter().cloned().collect();
        }
        *self.inventory() = inv;
        Ok(observed)
    }

    /// Records ownership of what is about to be written, after the guard checked, against
    /// the inventory on disk, that none of it is another instance's (or, unadopted,
    /// nobody's) object.
    async fn prepare(&self, changes: &[&Change]) -> Result<()> {
        let on_disk = self.read_inventory()?;
        for c in changes {
            let exists = self.path_of(&c.key).exists();
            let now = self.ownership(&on_disk, &key_string(&c.key));
            if exists || matches!(now, Ownership::Foreign { owner: Some(_) }) {
                guard::may_write(c, &now)?;
            }
        }
        let mut inv = self.inventory();
        *inv = on_disk;
        let before = inv.clone();
        let rec = inv.instances.entry(self.instance.clone()).or_default();
        for c in changes {
            rec.objects
                .insert(key_string(&c.key), OwnedObject { adopted: c.adopt });
        }
        for c in changes {
            inv.released.remove(&key_string(&c.key));
        }
        if *inv != before {
            self.save_inventory(&inv)
                .map_err(|e| write_error("record ownership of", changes[0], e))?;
        }
        Ok(())
    }

    async fn write(&self, change: &Change, desired: &Value) -> Result<()> {
        let bytes = Self::serialize(&change.key, desired);
        write_atomic(&self.path_of(&change.key), &bytes)
            .map_err(|e| write_error("write", change, e))
    }

    /// The inventory on disk says who owns the object now (and becomes the one in memory).
    async fn recheck(&self, change: &Change) -> Result<Option<Now>> {
        let inv = self.read_inventory()?;
        let ks = key_string(&change.key);
        let now = self.ownership(&inv, &ks);
        let listed = inv.instances.values().any(|r| r.objects.contains_key(&ks))
            || inv.released.contains_key(&ks);
        *self.inventory() = inv;
        if !listed && !self.path_of(&change.key).exists() {
            return Ok(None);
        }
        Ok(Some(Now::owned(now)))
    }

    async fn release(&self, change: &Change, permit: ReleasePermit) -> Result<()> {
        let path = self.path_of(permit.key());
        let mut manifest = read_object(&path, change.key.kind)
            .map_err(|e| write_error("release", change, std::io::Error::other(e)))?;
        ownership::release(&mut manifest, &self.instance);
        let ks = key_string(&change.key);
        {
            let mut inv = self.inventory();
            if let Some(rec) = inv.instances.get_mut(&self.instance) {
                rec.objects.remove(&ks);
            }
            inv.released.insert(ks, self.instance.clone());
            self.save_inventory(&inv)
                .map_err(|e| write_error("release", change, e))?;
        }
        write_atomic(&path, &Self::serialize(&change.key, &manifest))
            .map_err(|e| write_error("release", change, e))
    }

    async fn delete(&self, change: &Change, permit: DeletePermit) -> Result<()> {
        let path = self
            .remove_object(&permit)
            .map_err(|e| write_error("delete", change, e))?;
        // Empty directories left behind are removed so the tree mirrors what exists.
        for dir in path.ancestors().skip(1).take(2) {
            if dir == self.root || std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
        let mut inv = self.inventory();
        if let Some(rec) = inv.instances.get_mut(&self.instance) {
            rec.objects.remove(&key_string(&change.key));
        }
        self.save_inventory(&inv)
            .map_err(|e| write_error("delete", change, e))
    }

    async fn record(&self, status: &Status) -> Result<()> {
        let mut inv = self.inventory();
        let before = inv.clone();
        let rec = inv.instances.entry(self.instance.clone()).or_default();
        if let Some(applied) = &status.applied {
            rec.last_applied_revision = Some(applied.clone());
        }
        rec.last_attempted_revision = Some(status.attempted.clone());
        rec.last_outcome = Some(status.outcome.clone());
        if status.applied.is_some() {
            rec.pending_removals.clear();
        }
        if *inv == before {
            return Ok(());
        }
        self.save_inventory(&inv).map_err(|e| Error::StatusFailed {
            source: Box::new(e),
        })
    }

    /// Read from disk, so what it writes back is only its own change.
    async fn record_pending(&self, removals: &[(ObjectKey, Removal)]) -> Result<()> {
        let on_disk = self.read_inventory()?;
        let mut inv = self.inventory();
        *inv = on_disk;
        let rec = inv.instances.entry(self.instance.clone()).or_default();
        rec.pending_removals = removals.to_vec();
        self.save_inventory(&inv).map_err(|e| Error::StatusFailed {
            source: Box::new(e),
        })
    }

    async fn recorded(&self) -> Result<Option<super::Recorded>> {
        let inv = self.read_inventory()?;
        Ok(inv.instances.get(&self.instance).map(|r| super::Recorded {
            last_applied_revision: r.last_applied_revision.clone(),
            last_attempted_revision: r.last_attempted_revision.clone(),
            outcome: r.last_outcome.clone(),
            last_healthy_revision: r.last_healthy.as_ref().map(|h| h.0.clone()),
            last_healthy_at: r.last_healthy.as_ref().map(|h| h.1.clone()),
        }))
    }

    /// The revision that became fully healthy, in the inventory. Under the directory's lock
    /// (no pass is half-way through the inventory then), read from disk first, so what it
    /// writes back is only its own change.
    async fn record_health(&self, record: &super::HealthRecord) -> Result<()> {
        let Some(healthy) = &record.healthy else {
            return Ok(());
        };
        let lock = self
            .lock("health", std::time::Duration::from_secs(30))
            .await?;
        let saved = (|| {
            let on_disk = self.read_inventory()?;
            let mut inv = self.inventory();
            *inv = on_disk;
            let rec = inv.instances.entry(self.instance.clone()).or_default();
            if rec.last_healthy.as_ref() == Some(healthy) {
                return Ok(());
            }
            rec.last_healthy = Some(healthy.clone());
            self.save_inventory(&inv).map_err(|e| Error::StatusFailed {
                source: Box::new(e),
            })
        })();
        lock.release().await;
        saved
    }

    /// A `flock` on `PATH/.pbsync/lock`, for every instance of the directory (they share its
    /// inventory). The file is never written, so a pass with nothing to do writes nothing.
    async fn lock(&self, _holder: &str, wait: std::time::Duration) -> Result<super::PassLock> {
        let dir = self.root.join(STATE_DIR);
        let path = dir.join(LOCK);
        let failed = |e: std::io::Error| io_error(path.display().to_string(), e);
        std::fs::create_dir_all(&dir).map_err(failed)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::Locked {
                            what: format!("the lock file {}", path.display()),
                            holder: "another pbsync process".into(),
                            waited: wait,
                        });
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
            }
        }
        Ok(super::PassLock::File(file))
    }
}
