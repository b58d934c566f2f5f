//! [`ScratchRepo`]: a git repository in a temporary directory with deterministic commits.

use std::path::Path;

use git2::{Oid, Repository, Signature, Time};

/// The author and committer of every commit of a [`ScratchRepo`].
pub const AUTHOR_NAME: &str = "pbsync tests";
/// Their email.
pub const AUTHOR_EMAIL: &str = "tests@pbsync.invalid";
/// The time of commit number 0; commit `n` is made `n` minutes later.
pub const EPOCH: i64 = 1_700_000_000;

/// The signature of the `tick`th commit: [`AUTHOR_NAME`], [`AUTHOR_EMAIL`], at [`EPOCH`]
/// plus `tick` minutes (UTC). A [`ScratchRepo`]'s first commit is tick 1.
pub fn signature(tick: i64) -> Signature<'static> {
    Signature::new(AUTHOR_NAME, AUTHOR_EMAIL, &Time::new(EPOCH + tick * 60, 0)).expect("signature")
}

/// A git repository in a temporary directory (removed on drop), with deterministic commits:
/// a fixed author, and a time that advances one minute per commit. The same files committed
/// with the same messages in the same order give the same commit ids on every run, so
/// snapshots that show commit ids are stable.
pub struct ScratchRepo {
    dir: tempfile::TempDir,
    repo: Repository,
    tick: i64,
}

impl Default for ScratchRepo {
    fn default() -> Self {
        Self::new()
    }
}

impl ScratchRepo {
    /// An empty repository (`git init`, nothing committed).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("git init");
        Self { dir, repo, tick: 0 }
    }

    /// The work tree (which holds `.git`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The repository itself, for what the helpers here do not cover (tags, history walks).
    pub fn git(&self) -> &Repository {
        &self.repo
    }

    /// The commit HEAD points at.
    pub fn head(&self) -> Oid {
        self.repo
            .head()
            .and_then(|h| h.peel_to_commit())
            .expect("HEAD")
            .id()
    }

    /// Writes a file into the work tree (creating its directories); returns `self` so writes
    /// chain.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
        self
    }

    /// Removes a file from the work tree; returns `self` so removals chain.
    pub fn remove(&self, rel: &str) -> &Self {
        std::fs::remove_file(self.dir.path().join(rel)).expect("remove");
        self
    }

    /// Replaces the whole work tree (but `.git`) with the files under `src`.
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
        super::copy_dir(src, self.dir.path());
    }

    /// Commits the whole work tree (additions, changes and removals) on HEAD; returns the
    /// commit id.
    pub fn commit(&mut self, message: &str) -> Oid {
        let sig = self.next_signature();
        let mut index = self.repo.index().expect("index");
        index
            .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
            .expect("add");
        index.update_all(["*"].iter(), None).expect("update");
        index.write().expect("index write");
        let tree_id = index.write_tree().expect("write tree");
        let tree = self.repo.find_tree(tree_id).expect("tree");
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        self.repo
            .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .expect("commit")
    }

    /// Commits `changes` (path → `Some(content)` to write, `None` to remove) on the tip of
    /// `branch`, straight into the object database: neither the work tree nor the index is
    /// touched, and only `refs/heads/<branch>` moves. A branch that does not exist yet starts
    /// at `from` (a branch name), or as a root commit when `from` is `None`. The commit
    /// message is the branch's name. Returns the commit id.
    pub fn commit_on(
        &mut self,
        branch: &str,
        from: Option<&str>,
        changes: &[(&str, Option<&str>)],
    ) -> Oid {
        let sig = self.next_signature();
        let repo = &self.repo;
        let refname = format!("refs/heads/{branch}");
        let parent = repo
            .revparse_single(&refname)
            .or_else(|_| repo.revparse_single(&format!("refs/heads/{}", from.unwrap_or(branch))))
            .ok()
            .and_then(|o| o.peel_to_commit().ok());
        let mut index = git2::Index::new().expect("index");
        if let Some(p) = &parent {
            index
                .read_tree(&p.tree().expect("tree"))
                .expect("read tree");
        }
        for (path, content) in changes {
            match content {
                Some(text) => {
                    let blob = repo.blob(text.as_bytes()).expect("blob");
                    let entry = git2::IndexEntry {
                        ctime: git2::IndexTime::new(0, 0),
                        mtime: git2::IndexTime::new(0, 0),
                        dev: 0,
                        ino: 0,
                        mode: 0o100_644,
                        uid: 0,
                        gid: 0,
                        file_size: 0,
                        id: blob,
                        flags: 0,
                        flags_extended: 0,
                        path: path.as_bytes().to_vec(),
                    };
                    index.add(&entry).expect("add");
                }
                None => index.remove_path(Path::new(path)).expect("remove"),
            }
        }
        let tree = repo
            .find_tree(index.write_tree_to(repo).expect("write tree"))
            .expect("tree");
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(Some(&refname), &sig, &sig, branch, &tree, &parents)
            .expect("commit")
    }

    /// The signature of the next commit (each commit, on any branch, is one minute later).
    fn next_signature(&mut self) -> Signature<'static> {
        self.tick += 1;
        signature(self.tick)
    }
}
