//! Parsed files cached by (path, blob id): a commit that changes one file of a 10,000-bundle
//! repository parses one file. The path is part of the key because violations and objects
//! carry it. Entries of files no longer in the snapshot are dropped after each pass, so the
//! cache holds one commit's worth of parsed objects.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{Limits, Object, ObjectKey, ParsedFile, Violation, parse_file_detailed};
use crate::reconcile::FileParser;
use crate::source::{Snapshot, SourceFile};

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
    use crate::source::Content;

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
