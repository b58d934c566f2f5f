//! Parsed files cached by (path, blob id): a commit that changes one file of a 10,000-bundle
//! repository parses one file. The path is part of the key because violations and objects
//! carry it. Entries of files no longer in the snapshot are dropped after each pass, so the
//! cache holds one commit's worth of parsed objects.
//!
//! A fresh process (a pull-request plan in CI) can start from a store on disk
//! ([`ParseCache::load_store`], [`ParseCache::save_store`], format in `model::stored`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::FileParser;
use pbsync_core::model::stored::{self, StoredFile};
use pbsync_core::model::{Limits, Object, ObjectKey, ParsedFile, Violation, parse_file_detailed};
use pbsync_core::snapshot::{Snapshot, SourceFile};

type Entries = HashMap<(Arc<str>, String), Arc<Parsed>>;

#[derive(Debug)]
struct Parsed {
    objects: Vec<Object>,
    violations: Vec<Violation>,
    rejected: Vec<ObjectKey>,
}

/// The cache.
#[derive(Debug, Default)]
pub struct ParseCache {
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ParseCache {
    /// Keeps only the files of `snapshot`.
    pub fn retain(&self, snapshot: &Snapshot) {
        let keep: std::collections::HashSet<(&str, &str)> = snapshot
            .files
            .iter()
            .map(|f| (&*f.path, f.blob.as_str()))
            .collect();
        self.lock()
            .retain(|(p, b), _| keep.contains(&(&**p, b.as_str())));
    }

    /// Adds the files of the store at `path` (written by [`Self::save_store`]); returns how
    /// many. A store that is missing, damaged or from another version adds nothing.
    pub(crate) fn load_store(&self, path: &Path, limits: &Limits) -> usize {
        let Ok(bytes) = std::fs::read(path) else {
            return 0;
        };
        let files = stored::decode(&bytes, limits, build());
        let n = files.len();
        let mut entries = self.lock();
        for f in files {
            entries.insert(
                (f.path, f.blob),
                Arc::new(Parsed {
                    objects: f.objects,
                    violations: Vec::new(),
                    rejected: Vec::new(),
                }),
            );
        }
        n
    }

    /// Writes the files of `snapshots` that parsed without a violation to the store at
    /// `path`, atomically (a temporary file, then a rename), so concurrent runs never read a
    /// torn store.
    pub(crate) fn save_store(
        &self,
        path: &Path,
        limits: &Limits,
        snapshots: &[&Snapshot],
    ) -> std::io::Result<()> {
        let files: Vec<StoredFile> = {
            let entries = self.lock();
            let mut seen = std::collections::HashSet::new();
            snapshots
                .iter()
                .flat_map(|s| s.files.iter())
                .filter(|f| seen.insert((&*f.path, f.blob.as_str())))
                .filter_map(|f| {
                    let hit = entries.get(&(f.path.clone(), f.blob.clone()))?;
                    (hit.violations.is_empty() && hit.rejected.is_empty()).then(|| StoredFile {
                        path: f.path.clone(),
                        blob: f.blob.clone(),
                        objects: hit.objects.clone(),
                    })
                })
                .collect()
        };
        let bytes = stored::encode(&files, limits, build());
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("store path has no parent"))?;
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, &bytes)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// `(hits, misses)` so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// This build of pbsync: its version and the size and modification time of the running
/// executable, so a store written by another build (whose parser may judge files otherwise)
/// is never trusted. When the executable cannot be looked at, a value of this process alone.
fn build() -> &'static str {
    static BUILD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILD.get_or_init(|| {
        let exe = std::env::current_exe()
            .and_then(std::fs::metadata)
            .ok()
            .and_then(|m| {
                let mtime = m
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?;
                Some(format!("{}-{}", m.len(), mtime.as_nanos()))
            })
            .unwrap_or_else(|| format!("process-{}-{}", std::process::id(), fastrand::u64(..)));
        format!("{}+{exe}", env!("CARGO_PKG_VERSION"))
    })
}

impl FileParser for ParseCache {
    fn parse_file(&self, file: &SourceFile, limits: &Limits) -> ParsedFile {
        // A file without a blob id (history look-ups) cannot be cached.
        let key = (!file.blob.is_empty()).then(|| (file.path.clone(), file.blob.clone()));
        if let Some(k) = &key
            && let Some(hit) = self.lock().get(k).cloned()
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return ParsedFile {
                objects: hit.objects.clone(),
                violations: hit.violations.clone(),
                rejected: hit.rejected.clone(),
            };
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let parsed = parse_file_detailed(file, limits);
        if let Some(k) = key {
            self.lock().insert(
                k,
                Arc::new(Parsed {
                    objects: parsed.objects.clone(),
                    violations: parsed.violations.clone(),
                    rejected: parsed.rejected.clone(),
                }),
            );
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbsync_core::snapshot::Content;

    fn file(path: &str, blob: &str, text: &str) -> SourceFile {
        SourceFile {
            path: Arc::from(path),
            blob: blob.into(),
            content: Content::Bytes(text.as_bytes().to_vec()),
        }
    }

    const REPO: &str = "apiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata: {name: r, namespace: ns}\nspec: {url: https://charts.example}\n";

    #[test]
    fn an_unchanged_blob_is_parsed_once() {
        let cache = ParseCache::default();
        let limits = Limits::default();
        let a = cache.parse_file(&file("a.yaml", "b1", REPO), &limits);
        let b = cache.parse_file(&file("a.yaml", "b1", REPO), &limits);
        assert_eq!(a.objects, b.objects);
        assert_eq!(cache.stats(), (1, 1));
        // Same content at another path is another entry (objects carry their path).
        cache.parse_file(&file("b.yaml", "b1", REPO), &limits);
        assert_eq!(cache.stats(), (1, 2));
    }

    #[test]
    fn a_store_on_disk_carries_clean_files_to_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("sub/parsed.bin");
        let limits = Limits::default();
        let bad = "kind: [unclosed\n";
        let snapshot = Snapshot {
            revision: "r".into(),
            files: vec![file("a.yaml", "b1", REPO), file("bad.yaml", "b2", bad)],
        };
        let first = ParseCache::default();
        for f in &snapshot.files {
            first.parse_file(f, &limits);
        }
        first.save_store(&store, &limits, &[&snapshot]).unwrap();

        // Another process: the clean file comes from the store, the one with a violation
        // is parsed again (its messages come from the parser).
        let second = ParseCache::default();
        assert_eq!(second.load_store(&store, &limits), 1);
        let a = second.parse_file(&snapshot.files[0], &limits);
        let b = second.parse_file(&snapshot.files[1], &limits);
        assert_eq!(second.stats(), (1, 1));
        assert_eq!(
            a.objects,
            first.parse_file(&snapshot.files[0], &limits).objects
        );
        assert_eq!(b.violations.len(), 1);
        // A damaged store is a miss, not an error.
        std::fs::write(&store, b"garbage").unwrap();
        assert_eq!(ParseCache::default().load_store(&store, &limits), 0);
    }

    #[test]
    fn files_that_left_the_commit_are_dropped() {
        let cache = ParseCache::default();
        let limits = Limits::default();
        cache.parse_file(&file("a.yaml", "b1", REPO), &limits);
        cache.parse_file(&file("b.yaml", "b2", REPO), &limits);
        let snapshot = Snapshot {
            revision: "r".into(),
            files: vec![file("a.yaml", "b1", REPO)],
        };
        cache.retain(&snapshot);
        assert_eq!(cache.len(), 1);
    }
}
