//! Reading the last committed version of each bundle that is leaving, so "set orphan, then
//! delete" works even when both commits land in one pass. History that cannot be read far
//! enough (a shallow clone, the history-depth limit, a git error) is reported as such, with
//! the cause and the fix, and never read as `delete`. A shallow clone the daemon keeps is
//! deepened until the version is found, the limit is reached, or deepening fails.

use std::path::Path;

use git2::{Oid, Repository};

use crate::source::{self, Walk};
use pbsync_core::model::{self, DeletionPolicy, Kind, Limits, ObjectKey};
use pbsync_core::plan::{History, LastVersion};
use pbsync_core::snapshot::{Content, SourceFile};

/// Fetches more history into a shallow clone: the daemon's remote implements it.
pub trait Deepen: Sync {
    /// Makes the history of the clone at least `depth` commits deep.
    fn deepen(&self, depth: u32) -> Result<(), String>;
}

/// Where the last versions of leaving bundles are looked up.
#[derive(Clone, Copy)]
pub struct Lookup<'a> {
    /// The repository.
    pub repo: &'a Path,
    /// The commits to walk back from, in order (a pull request: head, then base).
    pub tips: &'a [Oid],
    /// How many commits back to look at most.
    pub max_commits: usize,
    /// A shallow clone that can fetch more history.
    pub deepen: Option<&'a dyn Deepen>,
}

impl std::fmt::Debug for Lookup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup")
            .field("repo", &self.repo)
            .field("tips", &self.tips)
            .field("max_commits", &self.max_commits)
            .field("deepen", &self.deepen.is_some())
            .finish()
    }
}

/// The first depth a shallow clone is deepened to; each further try doubles it.
const FIRST_DEEPEN: u32 = 64;

/// The last committed version of every leaving bundle (`key`, and the file it was applied
/// from as the live object records it).
pub fn lookup(at: &Lookup<'_>, leaving: &[(&ObjectKey, Option<&str>)], limits: &Limits) -> History {
    let mut history = History::default();
    if leaving.is_empty() {
        return history;
    }
    let unreadable = |why: String| LastVersion::Unreadable(why);
    let repo = match source::open(at.repo) {
        Ok(r) => r,
        Err(e) => {
            let why = format!(
                "the repository could not be opened to read its history: {}",
                pbsync_core::error_chain(&e)
            );
            for (key, _) in leaving {
                history
                    .versions
                    .insert((*key).clone(), unreadable(why.clone()));
            }
            return history;
        }
    };
    for (key, path) in leaving {
        let version = match path {
            None => unreadable(format!(
                "the live object does not record the file it was applied from (annotation {}), so its last version in Git cannot be looked up; set spec.deletionPolicy on the live object to decide",
                pbsync_core::ownership::SOURCE_ANNOTATION
            )),
            Some(path) => last_version(&repo, at, key, path, limits),
        };
        history.versions.insert((*key).clone(), version);
    }
    history
}

/// The last version of one bundle: walked back from each tip in turn; a shallow boundary
/// deepens the clone (when it can) and walks again.
fn last_version(
    opened: &Repository,
    at: &Lookup<'_>,
    key: &ObjectKey,
    path: &str,
    limits: &Limits,
) -> LastVersion {
    let mut depth = FIRST_DEEPEN;
    // After a deepening, the repository is opened again: an open one keeps the shallow
    // boundary it read at first.
    let mut reopened: Option<Repository> = None;
    let mut asked = 0;
    loop {
        let repo = reopened.as_ref().unwrap_or(opened);
        let mut truncated = None;
        for tip in at.tips {
            match walk(repo, *tip, key, path, at.max_commits, limits) {
                Ok(Walk::Found(policy)) => return LastVersion::Policy(policy),
                Ok(Walk::Complete) => {}
                Ok(cut @ (Walk::Shallow { .. } | Walk::DepthLimit(_))) => {
                    truncated.get_or_insert(cut);
                }
                Err(e) => {
                    return LastVersion::Unreadable(format!(
                        "reading the history of {path} failed: {}",
                        pbsync_core::error_chain(&e)
                    ));
                }
            }
        }
        match truncated {
            None => return LastVersion::Absent,
            Some(Walk::DepthLimit(n)) => {
                return LastVersion::Unreadable(format!(
                    "the newest {n} commits do not declare it in {path} (the history-depth limit); raise history_depth, or set spec.deletionPolicy on the live object"
                ));
            }
            Some(Walk::Shallow { at: boundary, read }) => {
                let limit = u32::try_from(at.max_commits).unwrap_or(u32::MAX);
                match at.deepen {
                    Some(_) if asked >= limit => {
                        return LastVersion::Unreadable(format!(
                            "the clone is still shallow (history ends at {boundary}) after fetching {asked} commits of history; fetch the whole history, or set spec.deletionPolicy on the live object"
                        ));
                    }
                    Some(d) if read < at.max_commits => {
                        // Each try asks for more than the last, so this ends.
                        let want = depth
                            .min(limit)
                            .max(u32::try_from(read + 1).unwrap_or(u32::MAX))
                            .max(asked.saturating_add(1));
                        asked = want;
                        tracing::info!(bundle = %key, depth = want, "deepening the shallow clone to find the last version of a leaving bundle");
                        if let Err(e) = d.deepen(want) {
                            return LastVersion::Unreadable(format!(
                                "the clone is shallow (history ends at {boundary}) and fetching more history failed: {e}"
                            ));
                        }
                        depth = depth.saturating_mul(2);
                        match source::open(at.repo) {
                            Ok(r) => reopened = Some(r),
                            Err(e) => {
                                return LastVersion::Unreadable(format!(
                                    "the repository could not be opened again after fetching more history: {}",
                                    pbsync_core::error_chain(&e)
                                ));
                            }
                        }
                    }
                    Some(_) => {
                        return LastVersion::Unreadable(format!(
                            "the newest {read} commits do not declare it in {path} (the history-depth limit); raise history_depth, or set spec.deletionPolicy on the live object"
                        ));
                    }
                    None => {
                        return LastVersion::Unreadable(format!(
                            "the repository is a shallow clone and its history ends at {boundary} before {path} last declared it; fetch the whole history (git fetch --unshallow; in CI, a checkout with full history such as fetch-depth: 0), or set spec.deletionPolicy on the live object"
                        ));
                    }
                }
            }
            Some(Walk::Found(_) | Walk::Complete) => unreachable!("invariant: only cuts are kept"),
        }
    }
}

fn walk(
    repo: &Repository,
    from: Oid,
    key: &ObjectKey,
    path: &str,
    max_commits: usize,
    limits: &Limits,
) -> source::Result<Walk<DeletionPolicy>> {
    source::find_in_history(repo, from, path, max_commits, |bytes| {
        let file = SourceFile {
            path: path.into(),
            blob: String::new(),
            content: Content::Bytes(bytes.to_vec()),
        };
        let (objs, _) = model::parse_file(&file, limits);
        objs.into_iter()
            .find(|o| &o.key == key && o.key.kind == Kind::ProfileBundle)
            .and_then(|o| o.as_bundle().map(|b| b.deletion_policy))
    })
}

impl Deepen for source::remote::Remote {
    fn deepen(&self, depth: u32) -> Result<(), String> {
        source::remote::Remote::deepen(self, depth).map_err(|e| pbsync_core::error_chain(&e))
    }
}
