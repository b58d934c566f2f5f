//! Test support: git repositories built in temp dirs, fixture loading, running the pipeline.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Signature, Time};

/// A git repository in a temporary directory, with deterministic commits (fixed author and
/// time), so commit ids, and therefore snapshots, are stable.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
    tick: i64,
}

impl TestRepo {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("git init");
        Self { dir, repo, tick: 0 }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file into the work tree (creating directories).
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }

    /// Removes a file from the work tree.
    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.dir.path().join(rel)).expect("remove");
    }

    /// Replaces the whole work tree (but .git) with the files under `src`.
    pub fn replace_tree_with(&self, src: &Path) {
        for entry in std::fs::read_dir(self.dir.path()).expect("read_dir") {
            let entry = entry.expect("entry");
            if entry.file_name() == ".git" {
                continue;
            }
            let p = entry.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p).expect("rm -r");
            } else {
                std::fs::remove_file(p).expect("rm");
            }
        }
        copy_dir(src, self.dir.path());
    }

    /// Commits every file of the work tree; returns the commit id.
    pub fn commit(&mut self, message: &str) -> Oid {
        let mut index = self.repo.index().expect("index");
        index
            .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
            .expect("add");
        index.update_all(["*"].iter(), None).expect("update");
        index.write().expect("index write");
        let tree_id = index.write_tree().expect("write tree");
        let tree = self.repo.find_tree(tree_id).expect("tree");
        self.tick += 1;
        let sig = Signature::new(
            "pbsync tests",
            "tests@pbsync.invalid",
            &Time::new(1_700_000_000 + self.tick * 60, 0),
        )
        .expect("signature");
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        self.repo
            .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .expect("commit")
    }
}

/// Copies a directory tree.
pub fn copy_dir(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).expect("read_dir") {
        let entry = entry.expect("entry");
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&to).expect("mkdir");
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).expect("copy");
        }
    }
}

/// Path of a fixture directory.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Lists every file under `dir` (relative paths, sorted).
pub fn list_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).expect("prefix").display().to_string());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A pipeline context reading HEAD of `repo`.
pub fn context(repo: &TestRepo) -> pbsync::engine::Context {
    pbsync::engine::Context::new(repo.path(), "HEAD", "")
}

/// Builds a single-threaded runtime for tests that drive async targets.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Parses, validates and graphs a commit without live state: the engine's validate goal.
pub fn load_snapshot(
    snapshot: &pbsync::source::Snapshot,
) -> pbsync::engine::Result<pbsync::engine::Report> {
    let ctx = pbsync::engine::Context::new(".", "HEAD", "");
    block_on(pbsync::engine::run::<pbsync::engine::NoTarget>(
        &ctx,
        pbsync::engine::Input::of(snapshot),
        pbsync::engine::Goal::Validate(None),
    ))
}
