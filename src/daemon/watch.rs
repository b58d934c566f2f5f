//! Watching a local repository's refs (`notify`), so a commit is seen at once instead of at
//! the next poll. The callback runs on notify's own thread and forwards with `try_send`: a
//! full channel already means a pass is pending, so dropping the event coalesces it.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::scheduler::{Trigger, send};

/// Errors of setting up the watch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path is not a Git repository.
    #[error("cannot watch {path}: not a git repository")]
    NotARepository {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: git2::Error,
    },
    /// The watcher could not be created.
    #[error("cannot watch {path}")]
    WatchFailed {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: notify::Error,
    },
}

/// A running watch; dropping it stops watching.
pub struct RefWatch {
    _watcher: notify::RecommendedWatcher,
    git_dir: PathBuf,
}

impl std::fmt::Debug for RefWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefWatch")
            .field("git_dir", &self.git_dir)
            .finish()
    }
}

impl RefWatch {
    /// Watches the refs, `HEAD` and `packed-refs` of the repository at `repo`.
    pub fn start(repo: &Path, tx: mpsc::Sender<Trigger>) -> Result<Self, Error> {
        let git_dir = git2::Repository::discover(repo)
            .map_err(|source| Error::NotARepository {
                path: repo.to_path_buf(),
                source,
            })?
            .path()
            .to_path_buf();
        let failed = |source| Error::WatchFailed {
            path: git_dir.clone(),
            source,
        };
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let Ok(ev) = ev else { return };
            if ev.kind.is_access() {
                return;
            }
            // Lock files come and go while git works; the rename onto the ref is what counts.
            let relevant = ev.paths.iter().any(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.ends_with(".lock")
                    && (p.components().any(|c| c.as_os_str() == "refs")
                        || name == "HEAD"
                        || name == "packed-refs")
            });
            if relevant {
                send(&tx, Trigger::Watch);
            }
        })
        .map_err(failed)?;
        watcher
            .watch(&git_dir.join("refs"), RecursiveMode::Recursive)
            .map_err(failed)?;
        watcher
            .watch(&git_dir, RecursiveMode::NonRecursive)
            .map_err(failed)?;
        Ok(Self {
            _watcher: watcher,
            git_dir,
        })
    }
}
