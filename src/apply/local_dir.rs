//! The local-directory target (the embedded default, `--target dir:PATH`): every hub object as
//! YAML under `PATH/<namespace>/<kind>/<name>.yaml`, every cluster profile as Palette's create
//! entity under `PATH/palette/<scope>/<name>@<version>.json`, and ownership plus status in
//! `PATH/.pbsync/inventory.json`.
//!
//! Writes are atomic (a temporary file in the same directory, then a rename), and a file is
//! written only when its bytes change, so a second run with nothing to do writes nothing.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DeletePermit, Error, Result, Status, Target};
use crate::graph::ResourceGraph;
use crate::live::{LiveObject, Observed};
use crate::model::{Kind, ObjectKey, ProfileType, yaml};
use crate::ownership::{self, Ownership, Stamp};
use crate::plan::Change;

const STATE_DIR: &str = ".pbsync";
const INVENTORY: &str = "inventory.json";
const PALETTE_DIR: &str = "palette";

/// What one instance owns and last did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    /// Last revision applied completely.
    pub last_applied_revision: Option<String>,
    /// Last revision attempted.
    pub last_attempted_revision: Option<String>,
    /// Outcome of the last attempt.
    pub last_outcome: Option<String>,
    /// Objects this instance manages (key string -> record).
    #[serde(default)]
    pub objects: BTreeMap<String, OwnedObject>,
}

/// One owned object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedObject {
    /// Adopted rather than created: released, never deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// `PATH/.pbsync/inventory.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
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
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an object lives.
    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
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
    pub fn read_inventory(&self) -> Result<Inventory> {
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
        let read: Vec<(ObjectKey, LiveObject)> = files
            .into_par_iter()
            .map(|(key, path)| {
                let ownership = self.ownership(inv, &key_string(&key));
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) => {
                        let why = format!("{}: {e}", path.display());
                        return (key, LiveObject::unreadable(why, ownership));
                    }
                };
                // The steady state: the file holds exactly what pbsync would write for the
                // desired object. Then it need not be parsed, nor kept.
                if holds_desired(&bytes, &key, &ownership, graph, stamp) {
                    return (key, LiveObject::matching_desired(ownership));
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
                (key, live)
            })
            .collect();
        observed.objects.extend(read);
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

/// True when `bytes` are exactly what [`LocalDir::write`] would write for the desired object
/// of `key` rendered for this instance, at the revision the file itself records (a file
/// whose revision annotation differs only there is the same object: no comparison looks at
/// it). Anything else (another owner, a hand edit, a renamed source file, a file written by
/// an older pbsync) answers false, and the caller parses and compares the file in full.
fn holds_desired(
    bytes: &[u8],
    key: &ObjectKey,
    ownership: &Ownership,
    graph: &ResourceGraph,
    stamp: &Stamp<'_>,
) -> bool {
    if key.kind == Kind::ClusterProfile
        || !matches!(ownership, Ownership::Managed | Ownership::Adopted)
    {
        return false;
    }
    let Some(obj) = graph
        .node(key)
        .filter(|n| n.desired)
        .and_then(|n| graph.object(n))
    else {
        return false;
    };
    let Some(revision) = recorded_revision(bytes) else {
        return false;
    };
    let rendered = ownership::render(
        obj,
        &Stamp {
            instance: stamp.instance,
            revision,
            adopted: matches!(ownership, Ownership::Adopted),
        },
    );
    yaml::to_string(&rendered).as_bytes() == bytes
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
    async fn observe(&self, graph: &ResourceGraph, stamp: &Stamp<'_>) -> Result<Observed> {
        let inv = self.read_inventory()?;
        let observed = self.scan(&inv, graph, stamp)?;
        *self.inventory() = inv;
        Ok(observed)
    }

    async fn prepare(&self, changes: &[&Change]) -> Result<()> {
        let mut inv = self.inventory();
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

    async fn release(&self, change: &Change) -> Result<()> {
        let path = self.path_of(&change.key);
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

    async fn delete(&self, change: &Change, _permit: DeletePermit) -> Result<()> {
        let path = self.path_of(&change.key);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_error("delete", change, e)),
        }
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
        if *inv == before {
            return Ok(());
        }
        self.save_inventory(&inv).map_err(|e| Error::StatusFailed {
            source: Box::new(e),
        })
    }
}
