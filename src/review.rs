//! Pull-request plans: the merge of head into base (computed in memory, as Atlantis's merge
//! checkout does), planned by the engine against the live state of a target or, offline,
//! against the state base would produce; with the impact section and secrets masked. Only
//! where the commit comes from is this module's: the stages are the engine's.

use git2::Oid;

use crate::engine::{self, Context, Goal, Input, NoTarget, ParseCache, history};
use crate::source::{self, merge};
use pbsync_core::plan::{self, Plan, comment};
use pbsync_target::Target;

/// Errors of planning a pull request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository or a revision could not be read.
    #[error("cannot read the {what} commit")]
    ReadFailed {
        /// `base` or `head`.
        what: &'static str,
        /// Cause.
        #[source]
        source: source::Error,
    },
    /// Head does not merge cleanly into base.
    #[error("cannot plan the merge")]
    Merge(#[source] merge::Error),
    /// The plan could not be made (an offline base that does not build, live state that
    /// could not be read).
    #[error(transparent)]
    Plan(engine::Error),
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to plan.
#[derive(Debug, Clone)]
pub struct Request {
    /// Base revision (the branch the pull request merges into).
    pub base: String,
    /// Head revision (the pull request).
    pub head: String,
    /// Where parsed files are kept between runs (`--cache-dir`): with the store of an earlier
    /// run there, only files that run did not see are parsed.
    pub cache_dir: Option<std::path::PathBuf>,
}

/// The store of parsed files for this repository and path in `dir`.
fn store_path(dir: &std::path::Path, ctx: &Context) -> std::path::PathBuf {
    use sha2::Digest as _;
    let repo = std::fs::canonicalize(&ctx.git.repo).unwrap_or_else(|_| ctx.git.repo.clone());
    let mut h = sha2::Sha256::new();
    h.update(repo.to_string_lossy().as_bytes());
    h.update(b"\n");
    h.update(ctx.git.path.as_bytes());
    let id: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join(format!("parsed-{id}.bin"))
}

/// A pull request's plan.
#[derive(Debug, Clone)]
pub struct Review {
    /// The plan of the merge (with `impact`, and `violations` when the merge is invalid).
    pub plan: Plan,
    /// Base commit.
    pub base: Oid,
    /// Head commit.
    pub head: Oid,
    /// Planned against the state base would produce.
    pub offline: bool,
}

impl Review {
    /// Title and footer context for the Markdown comments.
    pub fn comment_context(&self) -> comment::Context {
        comment::Context {
            base: Some(self.base.to_string()),
            head: Some(self.head.to_string()),
            offline: self.offline,
        }
    }

    /// The JSON document: the plan's (README schema, with `impact` and `violations`) plus
    /// `base`, `head` and `offline`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = plan::render_json(&self.plan);
        if let Some(map) = doc.as_object_mut() {
            map.insert("base".into(), self.base.to_string().into());
            map.insert("head".into(), self.head.to_string().into());
            map.insert("offline".into(), self.offline.into());
        }
        doc
    }
}

/// Plans the merge of `req.head` into `req.base`: against the live state of `live`, or,
/// without one, against the state base would produce (no target is read, for CI jobs that
/// cannot reach the hub).
pub async fn plan<T: Target>(ctx: &Context, req: &Request, live: Option<&T>) -> Result<Review> {
    let read = |what| move |source| Error::ReadFailed { what, source };
    let repo = source::open(&ctx.git.repo).map_err(read("base"))?;
    let base = source::resolve(&repo, &req.base).map_err(read("base"))?;
    let head = source::resolve(&repo, &req.head).map_err(read("head"))?;
    // With keys configured, the pull request's head must be signed: what is planned is what
    // its author signed. (The base was verified when it was applied.)
    ctx.verify(&repo, head).map_err(Error::Plan)?;
    let base_snapshot = source::read_commit(&repo, base, &ctx.git.path, ctx.git.max_file_bytes)
        .map_err(read("base"))?;
    let merged = merge::read_merge(
        &repo,
        base,
        head,
        &ctx.git.path,
        ctx.git.max_file_bytes,
        Some(&base_snapshot),
    )
    .map_err(Error::Merge)?;
    let cache = ParseCache::default();
    let store = req.cache_dir.as_deref().map(|d| store_path(d, ctx));
    if let Some(store) = &store {
        cache.load_store(store, &ctx.limits);
    }
    // The pull request may have set `orphan` before removing a bundle: its own history
    // first, then base's.
    let tips = [merged.head, merged.base];
    let input = Input {
        snapshot: &merged.snapshot,
        history: Some(history::Lookup {
            repo: &ctx.git.repo,
            tips: &tips,
            max_commits: ctx.history_depth,
            deepen: None,
        }),
        base: Some(&base_snapshot),
        parser: &cache,
        timings: None,
    };
    let offline = live.is_none();
    let result = match live {
        Some(t) => engine::run(ctx, input, Goal::Plan(t)).await,
        None => engine::run::<NoTarget>(ctx, input, Goal::PlanOffline).await,
    };
    // Rewrite the store when this run parsed more than 1% of the files afresh: a pull
    // request's own few files are cheap to parse again, and a store is not rewritten on
    // every run for them.
    if let Some(store) = &store {
        let (_, parsed) = cache.stats();
        let files = base_snapshot.files.len().max(merged.snapshot.files.len()) as u64;
        if parsed * 100 > files {
            // A store that cannot be written only costs the next run a parse.
            let _ = cache.save_store(store, &ctx.limits, &[&base_snapshot, &merged.snapshot]);
        }
    }
    let plan = match result {
        Ok(outcome) => outcome.plan.expect("invariant: plan goals produce a plan"),
        Err(engine::Error::Invalid {
            violations,
            warnings,
            ..
        }) => Plan::invalid(merged.snapshot.revision.clone(), violations.0, warnings),
        Err(e) => return Err(Error::Plan(e)),
    };
    Ok(Review {
        plan,
        base: merged.base,
        head: merged.head,
        offline,
    })
}
