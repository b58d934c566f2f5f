//! The merge of a pull request's head into its base, computed in memory with git2 (no
//! checkout, no work tree, no new refs), as Atlantis's merge checkout does: a plan of the
//! head branch alone would show a stale branch deleting everything base gained since.
//!
//! The merged tree is written into an in-memory object database (a libgit2 mempack laid
//! over the repository's own), so planning a pull request leaves the repository untouched.

use git2::{MergeOptions, Oid, Repository};

use super::{Snapshot, read_tree_reusing};

/// Errors of merging head into base.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Both sides changed the same lines of the same files.
    #[error(
        "merging {head} into {base} conflicts in {}: rebase the branch or resolve the conflicts",
        paths.join(", ")
    )]
    Conflict {
        /// Base commit.
        base: String,
        /// Head commit.
        head: String,
        /// Conflicting paths, sorted.
        paths: Vec<String>,
    },
    /// libgit2 could not compute the merge.
    #[error("cannot merge {head} into {base}")]
    MergeFailed {
        /// Base commit.
        base: String,
        /// Head commit.
        head: String,
        /// Cause.
        #[source]
        source: git2::Error,
    },
    /// The merged tree could not be read.
    #[error("cannot read the merged tree")]
    ReadFailed(#[source] super::Error),
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The merge of head into base, read like a commit.
#[derive(Debug, Clone)]
pub(crate) struct Merged {
    /// Base commit.
    pub base: Oid,
    /// Head commit.
    pub head: Oid,
    /// The merged tree's YAML files; its revision is [`label`].
    pub snapshot: Snapshot,
}

/// The revision label of a merge: `merge of <head> into <base>` (12-character ids).
pub fn label(base: Oid, head: Oid) -> String {
    let short = |o: Oid| {
        let s = o.to_string();
        s.get(..12).unwrap_or(&s).to_string()
    };
    format!("merge of {} into {}", short(head), short(base))
}

/// Merges `head` into `base` in memory and reads the merged tree's YAML files under `subpath`,
/// taking the content of blobs `earlier` (base's snapshot, say) holds from there.
pub(crate) fn read_merge(
    repo: &Repository,
    base: Oid,
    head: Oid,
    subpath: &str,
    max_file_bytes: u64,
    earlier: Option<&Snapshot>,
) -> Result<Merged> {
    let failed = |source| Error::MergeFailed {
        base: base.to_string(),
        head: head.to_string(),
        source,
    };
    // Writes go to the highest-priority backend that accepts them: the mempack, so the
    // merged tree never reaches the repository's object directory.
    let odb = repo.odb().map_err(failed)?;
    let _mempack = odb.add_new_mempack_backend(1000).map_err(failed)?;
    let ours = repo.find_commit(base).map_err(failed)?;
    let theirs = repo.find_commit(head).map_err(failed)?;
    let merge_base = repo.merge_base(base, head).ok();
    // A branch that contains base merges by fast-forward: the merge is head's own tree, and
    // a three-way merge of a large tree would only rebuild it. Likewise a head already in base.
    let fast = if merge_base == Some(base) {
        Some(theirs.tree_id())
    } else if merge_base == Some(head) {
        Some(ours.tree_id())
    } else {
        None
    };
    let tree = match fast {
        Some(tree) => tree,
        None => merge_tree(repo, &ours, &theirs)?,
    };
    let snapshot = read_tree_reusing(
        repo,
        tree,
        subpath,
        max_file_bytes,
        &label(base, head),
        earlier,
    )
    .map_err(Error::ReadFailed)?;
    Ok(Merged {
        base,
        head,
        snapshot,
    })
}

/// The three-way merge of `theirs` into `ours`, written (to the mempack) as a tree.
fn merge_tree(
    repo: &Repository,
    ours: &git2::Commit<'_>,
    theirs: &git2::Commit<'_>,
) -> Result<Oid> {
    let (base, head) = (ours.id(), theirs.id());
    let failed = |source| Error::MergeFailed {
        base: base.to_string(),
        head: head.to_string(),
        source,
    };
    let mut index = repo
        .merge_commits(ours, theirs, Some(&MergeOptions::new()))
        .map_err(failed)?;
    if index.has_conflicts() {
        let mut paths: Vec<String> = index
            .conflicts()
            .map_err(failed)?
            .filter_map(std::result::Result::ok)
            .filter_map(|c| c.our.or(c.their).or(c.ancestor))
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        paths.sort();
        paths.dedup();
        return Err(Error::Conflict {
            base: base.to_string(),
            head: head.to_string(),
            paths,
        });
    }
    index.write_tree_to(repo).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{Signature, Time};

    fn commit(repo: &Repository, files: &[(&str, &str)], parent: Option<Oid>, t: i64) -> Oid {
        let mut builder = repo.treebuilder(None).expect("treebuilder");
        for (name, content) in files {
            let blob = repo.blob(content.as_bytes()).expect("blob");
            builder.insert(name, blob, 0o100_644).expect("insert");
        }
        let tree = repo
            .find_tree(builder.write().expect("tree"))
            .expect("tree");
        let sig = Signature::new("t", "t@t.invalid", &Time::new(t, 0)).expect("sig");
        let parents: Vec<git2::Commit<'_>> = parent
            .map(|p| repo.find_commit(p).expect("parent"))
            .into_iter()
            .collect();
        let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(None, &sig, &sig, "c", &tree, &refs)
            .expect("commit")
    }

    fn objects_on_disk(dir: &std::path::Path) -> usize {
        walk(&dir.join(".git/objects"))
    }

    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }

    #[test]
    fn merge_keeps_what_both_sides_added_and_writes_nothing_to_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        let root = commit(&repo, &[("a.yaml", "a: 1\n")], None, 1);
        let base = commit(
            &repo,
            &[("a.yaml", "a: 1\n"), ("b.yaml", "b: 1\n")],
            Some(root),
            2,
        );
        let head = commit(
            &repo,
            &[("a.yaml", "a: 1\n"), ("c.yaml", "c: 1\n")],
            Some(root),
            3,
        );
        let before = objects_on_disk(dir.path());
        let merged = read_merge(&repo, base, head, "", 1 << 20, None).expect("merge");
        let paths: Vec<&str> = merged.snapshot.files.iter().map(|f| &*f.path).collect();
        assert_eq!(paths, ["a.yaml", "b.yaml", "c.yaml"]);
        assert_eq!(
            repo.merge_base(base, head).ok(),
            Some(root),
            "a three-way merge"
        );
        assert!(merged.snapshot.revision.starts_with("merge of "));
        assert_eq!(
            objects_on_disk(dir.path()),
            before,
            "merged tree stays in memory"
        );
    }

    #[test]
    fn a_branch_that_contains_base_merges_to_its_own_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        let base = commit(&repo, &[("a.yaml", "a: 1\n")], None, 1);
        let head = commit(&repo, &[("a.yaml", "a: 2\n")], Some(base), 2);
        let merged = read_merge(&repo, base, head, "", 1 << 20, None).expect("merge");
        let head_tree = repo.find_commit(head).expect("head").tree_id().to_string();
        let base_read = crate::source::read_tree(
            &repo,
            repo.find_commit(head).expect("c").tree_id(),
            "",
            1 << 20,
            "x",
        )
        .expect("read");
        assert_eq!(merged.snapshot.files, base_read.files, "{head_tree}");
        let back = read_merge(&repo, head, base, "", 1 << 20, None).expect("already merged");
        assert_eq!(
            back.snapshot.files, base_read.files,
            "head already in base: base's tree"
        );
    }

    #[test]
    fn conflicting_merge_names_the_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        let root = commit(&repo, &[("a.yaml", "a: 1\n")], None, 1);
        let base = commit(&repo, &[("a.yaml", "a: 2\n")], Some(root), 2);
        let head = commit(&repo, &[("a.yaml", "a: 3\n")], Some(root), 3);
        let err = read_merge(&repo, base, head, "", 1 << 20, None).expect_err("conflict");
        match &err {
            Error::Conflict { paths, .. } => assert_eq!(paths, &["a.yaml"]),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("conflicts in a.yaml"), "{err}");
    }
}
