//! The source: one commit's YAML files read straight from a Git tree with git2, and the
//! history look-ups the deletion rules need. It never interprets file contents.
//!
//! Reading from the tree rather than a working directory makes each commit atomic: a
//! half-written checkout, an uncommitted edit or a file another process is writing can never
//! leak into what pbsync applies.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

pub mod merge;
pub mod remote;
pub mod verify;

pub use pbsync_core::snapshot::{Content, Snapshot, SourceFile};

/// Name of the ignore file honoured at the root of the configured path (gitignore syntax).
pub(crate) const IGNORE_FILE: &str = ".pbsyncignore";

/// Errors of the source stage; all of them are about reaching the commit, not its content.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository could not be opened.
    #[error("cannot open git repository {path}")]
    OpenFailed {
        /// Path given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: git2::Error,
    },
    /// The revision does not name a commit.
    #[error("revision {rev:?} does not name a commit")]
    RevisionNotFound {
        /// Revision given.
        rev: String,
        /// Cause.
        #[source]
        source: git2::Error,
    },
    /// The configured path is not a directory of that commit.
    #[error("path {path:?} is not a directory at commit {commit}")]
    PathNotFound {
        /// Path given.
        path: String,
        /// Commit.
        commit: String,
    },
    /// Reading an object of the repository failed.
    #[error("cannot read {what}")]
    ReadFailed {
        /// What was being read.
        what: String,
        /// Cause.
        #[source]
        source: git2::Error,
    },
    /// The ignore file is not valid.
    #[error("invalid {IGNORE_FILE}")]
    InvalidIgnoreFile {
        /// Cause.
        #[source]
        source: ignore::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where to read from.
#[derive(Debug, Clone)]
pub struct GitConfig {
    /// Repository path (a work tree or a bare repository).
    pub repo: PathBuf,
    /// Revision: branch, tag, commit, `HEAD`.
    pub reference: String,
    /// Subdirectory (repository-relative); empty for the root.
    pub path: String,
    /// Files larger than this are not loaded.
    pub max_file_bytes: u64,
}

/// Opens the repository at `path` (searching upwards like `git` does).
pub fn open(path: &Path) -> Result<Repository> {
    // libgit2 re-hashes every object it reads; git itself does not (that is fsck's job),
    // and for ten thousand blobs the SHA-1s showed in profiles.
    static NO_REHASH: std::sync::Once = std::sync::Once::new();
    NO_REHASH.call_once(|| git2::opts::strict_hash_verification(false));
    Repository::discover(path).map_err(|source| Error::OpenFailed {
        path: path.to_path_buf(),
        source,
    })
}

/// Resolves `rev` to a commit id.
pub fn resolve(repo: &Repository, rev: &str) -> Result<Oid> {
    let obj = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|source| Error::RevisionNotFound {
            rev: rev.to_string(),
            source,
        })?;
    Ok(obj.id())
}

/// Reads the YAML files of `cfg.reference` under `cfg.path`.
pub fn read(cfg: &GitConfig) -> Result<Snapshot> {
    let repo = open(&cfg.repo)?;
    let commit = resolve(&repo, &cfg.reference)?;
    read_commit(&repo, commit, &cfg.path, cfg.max_file_bytes)
}

/// Normalises a configured subdirectory: no leading `./`, no trailing `/`.
pub(crate) fn normalize_path(path: &str) -> String {
    let p = path.trim_start_matches("./").trim_matches('/');
    if p == "." {
        String::new()
    } else {
        p.to_string()
    }
}

/// Reads the YAML files of commit `commit` under `subpath`, honouring `.pbsyncignore`.
pub fn read_commit(
    repo: &Repository,
    commit: Oid,
    subpath: &str,
    max_file_bytes: u64,
) -> Result<Snapshot> {
    read_commit_reusing(repo, commit, subpath, max_file_bytes, None)
}

/// [`read_commit`], taking the content of every file whose blob `earlier` (a snapshot of the
/// same repository) holds from there instead of reading the blob again: a commit that
/// changes one file of ten thousand reads one blob.
pub fn read_commit_reusing(
    repo: &Repository,
    commit: Oid,
    subpath: &str,
    max_file_bytes: u64,
    earlier: Option<&Snapshot>,
) -> Result<Snapshot> {
    let tree = repo
        .find_commit(commit)
        .map(|c| c.tree_id())
        .map_err(|source| Error::ReadFailed {
            what: format!("tree of commit {commit}"),
            source,
        })?;
    read_tree_reusing(
        repo,
        tree,
        subpath,
        max_file_bytes,
        &commit.to_string(),
        earlier,
    )
}

/// Reads the YAML files of the tree `tree` under `subpath`, honouring `.pbsyncignore`; the
/// snapshot's revision is `revision`. For trees that are not a commit's, such as the merge of
/// a pull request computed in memory (see [`merge`]).
pub fn read_tree(
    repo: &Repository,
    tree: Oid,
    subpath: &str,
    max_file_bytes: u64,
    revision: &str,
) -> Result<Snapshot> {
    read_tree_reusing(repo, tree, subpath, max_file_bytes, revision, None)
}

/// [`read_tree`], reusing the content of blobs `earlier` holds (see [`read_commit_reusing`]).
pub(crate) fn read_tree_reusing(
    repo: &Repository,
    tree: Oid,
    subpath: &str,
    max_file_bytes: u64,
    revision: &str,
    earlier: Option<&Snapshot>,
) -> Result<Snapshot> {
    let read_failed = |what: String| move |source| Error::ReadFailed { what, source };
    let subpath = normalize_path(subpath);
    let tree = repo
        .find_tree(tree)
        .map_err(read_failed(format!("tree of commit {revision}")))?;
    let tree = if subpath.is_empty() {
        tree
    } else {
        let entry = tree
            .get_path(Path::new(&subpath))
            .map_err(|_| Error::PathNotFound {
                path: subpath.clone(),
                commit: revision.to_string(),
            })?;
        if entry.kind() != Some(ObjectType::Tree) {
            return Err(Error::PathNotFound {
                path: subpath,
                commit: revision.to_string(),
            });
        }
        repo.find_tree(entry.id())
            .map_err(read_failed(format!("tree {subpath}")))?
    };
    let ignore = load_ignore(repo, &tree)?;
    let odb = repo.odb().map_err(read_failed("object database".into()))?;
    let mut found: Vec<(String, Oid)> = Vec::new();
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        let Ok(name) = entry.name() else {
            return TreeWalkResult::Ok;
        };
        let rel = format!("{dir}{name}");
        match entry.kind() {
            Some(ObjectType::Tree) => {
                if ignore.matched(Path::new(&rel), true).is_ignore() {
                    TreeWalkResult::Skip
                } else {
                    TreeWalkResult::Ok
                }
            }
            // Symlinks (mode 120000) are blobs too; a link's target is not a manifest.
            Some(ObjectType::Blob) if entry.filemode() != 0o120_000 => {
                let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
                if yaml
                    && !ignore
                        .matched_path_or_any_parents(Path::new(&rel), false)
                        .is_ignore()
                {
                    found.push((rel, entry.id()));
                }
                TreeWalkResult::Ok
            }
            _ => TreeWalkResult::Ok,
        }
    })
    .map_err(read_failed(format!("tree of commit {revision}")))?;
    // A blob id names its content: what an earlier snapshot read under any path is this.
    let known: std::collections::HashMap<&str, &Content> = earlier
        .map(|s| {
            s.files
                .iter()
                .map(|f| (f.blob.as_str(), &f.content))
                .collect()
        })
        .unwrap_or_default();
    let mut files = Vec::with_capacity(found.len());
    for (rel, oid) in found {
        let path = if subpath.is_empty() {
            rel
        } else {
            format!("{subpath}/{rel}")
        };
        let blob = oid.to_string();
        if let Some(content) = known.get(blob.as_str()) {
            files.push(SourceFile {
                path: Arc::from(path),
                blob,
                content: (*content).clone(),
            });
            continue;
        }
        let (size, _) = odb
            .read_header(oid)
            .map_err(read_failed(format!("blob {path}")))?;
        let content = if size as u64 > max_file_bytes {
            Content::TooLarge(size as u64)
        } else {
            let blob = repo
                .find_blob(oid)
                .map_err(read_failed(format!("blob {path}")))?;
            Content::Bytes(blob.content().to_vec())
        };
        files.push(SourceFile {
            path: Arc::from(path),
            blob,
            content,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Snapshot {
        revision: revision.to_string(),
        files,
    })
}

fn load_ignore(repo: &Repository, tree: &git2::Tree<'_>) -> Result<Gitignore> {
    let mut builder = GitignoreBuilder::new("");
    if let Some(entry) = tree.get_name(IGNORE_FILE) {
        let blob = repo
            .find_blob(entry.id())
            .map_err(|source| Error::ReadFailed {
                what: IGNORE_FILE.to_string(),
                source,
            })?;
        for line in String::from_utf8_lossy(blob.content()).lines() {
            builder
                .add_line(None, line)
                .map_err(|source| Error::InvalidIgnoreFile { source })?;
        }
    }
    builder
        .build()
        .map_err(|source| Error::InvalidIgnoreFile { source })
}

/// How `requested` relates to `applied`, the last revision applied to a target: the same,
/// newer (a descendant), older (an ancestor), diverged, unrelated, or unknown when `applied`
/// is not in this repository (a shallow or partial clone cannot tell).
pub fn lineage(repo: &Repository, applied: &str, requested: Oid) -> pbsync_core::guard::Lineage {
    use pbsync_core::guard::Lineage;
    let Ok(applied) = Oid::from_str(applied) else {
        return Lineage::Unknown;
    };
    if applied == requested {
        return Lineage::Same;
    }
    if repo.find_commit(applied).is_err() {
        return Lineage::Unknown;
    }
    if repo
        .graph_descendant_of(requested, applied)
        .unwrap_or(false)
    {
        return Lineage::Forward;
    }
    if repo
        .graph_descendant_of(applied, requested)
        .unwrap_or(false)
    {
        return Lineage::Behind;
    }
    match repo.merge_base(applied, requested) {
        Ok(_) => Lineage::Diverged,
        // A shallow clone may cut the common history off: then it cannot tell.
        Err(_) if repo.is_shallow() => Lineage::Unknown,
        Err(_) => Lineage::Unrelated,
    }
}

/// How a walk back through history ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walk<T> {
    /// The probe found it.
    Found(T),
    /// The whole history (back to the root commit) was read; the probe found nothing.
    Complete,
    /// History ended at a shallow clone's boundary: commits before `at` are not here.
    Shallow {
        /// The oldest commit present.
        at: Oid,
        /// Commits read.
        read: usize,
    },
    /// `max_commits` were read without reaching the root.
    DepthLimit(usize),
}

/// Walks first-parent history from `from` (inclusive), newest first, at most `max_commits`
/// commits, and returns the first value `probe` finds in the blob at `path`, or why the walk
/// ended without one: the root was reached, a shallow clone's boundary, or the limit. This is
/// how a bundle that left the repository is looked up at its last committed version.
pub fn find_in_history<T>(
    repo: &Repository,
    from: Oid,
    path: &str,
    max_commits: usize,
    mut probe: impl FnMut(&[u8]) -> Option<T>,
) -> Result<Walk<T>> {
    let read_failed = |what: &str| {
        let what = what.to_string();
        move |source| Error::ReadFailed { what, source }
    };
    let mut walk = repo.revwalk().map_err(read_failed("history"))?;
    walk.simplify_first_parent()
        .map_err(read_failed("history"))?;
    walk.push(from).map_err(read_failed("history"))?;
    let mut last_blob = None;
    let mut read = 0;
    let mut oldest = from;
    for oid in walk {
        if read == max_commits {
            return Ok(Walk::DepthLimit(read));
        }
        let oid = oid.map_err(read_failed("history"))?;
        read += 1;
        oldest = oid;
        let commit = repo.find_commit(oid).map_err(read_failed("history"))?;
        let tree = commit.tree().map_err(read_failed("history"))?;
        let Ok(entry) = tree.get_path(Path::new(path)) else {
            continue;
        };
        // Consecutive commits usually share the blob; probe each distinct version once.
        if last_blob == Some(entry.id()) {
            continue;
        }
        last_blob = Some(entry.id());
        let blob = repo
            .find_blob(entry.id())
            .map_err(read_failed(&format!("{path} at {oid}")))?;
        if let Some(v) = probe(blob.content()) {
            return Ok(Walk::Found(v));
        }
    }
    // The walk ended. It reached the root only if the oldest commit really has no parent:
    // its object is read, not the repository's view of it, which hides the parents beyond a
    // shallow clone's boundary (and may be stale if the clone was deepened since it was
    // opened). A history that merely stopped is never taken for a complete one.
    let commit = repo.find_commit(oldest).map_err(read_failed("history"))?;
    let has_parent = commit
        .raw_header_bytes()
        .split(|&b| b == b'\n')
        .any(|line| line.starts_with(b"parent "));
    if has_parent {
        return Ok(Walk::Shallow { at: oldest, read });
    }
    Ok(Walk::Complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_paths_are_normalised() {
        assert_eq!(normalize_path("./examples/repo/"), "examples/repo");
        assert_eq!(normalize_path("."), "");
        assert_eq!(normalize_path(""), "");
    }
}
