//! Pull-request plans: the merge of head into base (computed in memory, as Atlantis's merge
//! checkout does), planned against the live state of a target or, offline, against the state
//! base would produce; with the impact section and secrets masked. Runs the same pure stages
//! as `reconcile`; only where the commit and the live state come from differ.

use git2::{Oid, Repository};

use crate::daemon::cache::ParseCache;
use crate::reconcile::{self, Context};
use crate::source::{self, merge};
use pbsync_core::graph::ResourceGraph;
use pbsync_core::live::{LiveObject, Observed};
use pbsync_core::model::{self, Catalog, Violations};
use pbsync_core::ownership::{self, Ownership, Stamp};
use pbsync_core::plan::{self, History, Plan, comment, impact, mask};
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
    /// Offline plans need the state base would produce, and base does not build.
    #[error("base {revision} is invalid, so the state it would produce is unknown: {violations}")]
    BaseInvalid {
        /// Base commit.
        revision: String,
        /// Its violations.
        violations: Violations,
    },
    /// The live state could not be read.
    #[error("cannot read the live state")]
    Observe(#[source] pbsync_target::Error),
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

/// Base, head, the merged tree, base's graph when base is valid, and the merge loaded.
struct Prepared {
    repo: Repository,
    merged: merge::Merged,
    base_graph: Option<ResourceGraph>,
    base_violations: Violations,
}

/// Reads base and the merge, and loads both (parsed, validated without live state, graphed).
/// The merge shares what it can with base: its files' contents where the blobs are the same
/// (read once), their parsed documents (parsed once), and the two checks run side by side.
fn prepare(
    ctx: &Context,
    req: &Request,
) -> Result<(Prepared, reconcile::Result<reconcile::Loaded>)> {
    let read = |what| move |source| Error::ReadFailed { what, source };
    let repo = source::open(&ctx.git.repo).map_err(read("base"))?;
    let base = source::resolve(&repo, &req.base).map_err(read("base"))?;
    let head = source::resolve(&repo, &req.head).map_err(read("head"))?;
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
    let (base_desired, base_parse_violations) =
        reconcile::parse_with(&base_snapshot, &ctx.limits, &cache);
    let (base_loaded, head_loaded) = rayon::join(
        || reconcile::check(base_desired, base_parse_violations, &Catalog::default()),
        || load(&merged.snapshot, ctx, &cache),
    );
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
    drop(base_snapshot);
    let (base_graph, base_violations) = match base_loaded {
        Ok(loaded) => (Some(loaded.graph), Violations::default()),
        Err(reconcile::Error::Invalid { violations, .. }) => (None, violations),
        Err(_) => (None, Violations::default()),
    };
    let prepared = Prepared {
        repo,
        merged,
        base_graph,
        base_violations,
    };
    Ok((prepared, head_loaded))
}

/// Parses (through `cache`), validates without live state, and graphs `snapshot`.
fn load(
    snapshot: &source::Snapshot,
    ctx: &Context,
    cache: &ParseCache,
) -> reconcile::Result<reconcile::Loaded> {
    let (desired, violations) = reconcile::parse_with(snapshot, &ctx.limits, cache);
    reconcile::check(desired, violations, &Catalog::default())
}

/// The state `graph` would leave on an empty target: every desired object, rendered and
/// managed by `instance`. Pure.
pub fn state_of(graph: &ResourceGraph, instance: &str) -> Observed {
    let stamp = Stamp {
        instance,
        revision: graph.revision(),
        adopted: false,
    };
    let mut observed = Observed::default();
    for node in graph.creation_order() {
        if let Some(obj) = graph.object(node) {
            observed.objects.insert(
                node.key.clone(),
                LiveObject::new(ownership::render(obj, &stamp), Ownership::Managed),
            );
        }
    }
    observed
}

/// [`state_of`] `base`, as seen by a plan of `head`: an object whose parsed document head
/// shares (the same document, by identity, from the same file: a file both commits hold
/// unchanged is parsed once) is marked as holding head's desired object instead of being
/// rendered, so a one-file change in a large repository renders one file's objects. Pure.
pub fn state_for(base: &ResourceGraph, head: &ResourceGraph, instance: &str) -> Observed {
    let stamp = Stamp {
        instance,
        revision: base.revision(),
        adopted: false,
    };
    let mut observed = Observed::default();
    for node in base.creation_order() {
        let Some(obj) = base.object(node) else {
            continue;
        };
        let shared = head
            .node(&node.key)
            .filter(|n| n.desired)
            .and_then(|n| head.object(n))
            .is_some_and(|h| {
                model::Manifest::same_document(&h.manifest, &obj.manifest)
                    && h.location.path == obj.location.path
            });
        let live = if shared {
            LiveObject::matching_desired(Ownership::Managed)
        } else {
            LiveObject::new(ownership::render(obj, &stamp), Ownership::Managed)
        };
        observed.objects.insert(node.key.clone(), live);
    }
    observed
}

/// Plans the merge of `req.head` into `req.base` against the state base would produce: no
/// target is read, for CI jobs that cannot reach the hub.
pub fn plan_offline(ctx: &Context, req: &Request) -> Result<Review> {
    let (prepared, loaded) = prepare(ctx, req)?;
    let Some(base_graph) = &prepared.base_graph else {
        return Err(Error::BaseInvalid {
            revision: prepared.merged.base.to_string(),
            violations: prepared.base_violations,
        });
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => return invalid(&prepared, e, true),
    };
    let observed = state_for(base_graph, &loaded.graph, &ctx.plan.instance);
    Ok(finish(ctx, &prepared, &loaded, &observed, true))
}

/// Plans the merge of `req.head` into `req.base` against the live state of `target`.
pub async fn plan_live<T: Target>(ctx: &Context, req: &Request, target: &T) -> Result<Review> {
    let (prepared, loaded) = prepare(ctx, req)?;
    let snapshot = &prepared.merged.snapshot;
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => return invalid(&prepared, e, false),
    };
    let stamp = Stamp {
        instance: &ctx.plan.instance,
        revision: &snapshot.revision,
        adopted: false,
    };
    let observed = target
        .observe(&loaded.graph, &stamp)
        .await
        .map_err(Error::Observe)?;
    let loaded = match reconcile::recheck(loaded, &observed) {
        Ok(l) => l,
        Err(e) => return invalid(&prepared, e, false),
    };
    Ok(finish(ctx, &prepared, &loaded, &observed, false))
}

/// The plan of an invalid merge: its violations, no changes.
fn invalid(prepared: &Prepared, err: reconcile::Error, offline: bool) -> Result<Review> {
    let (violations, warnings) = match err {
        reconcile::Error::Invalid {
            violations,
            warnings,
            ..
        } => (violations, warnings),
        // `load` fails only with violations; anything else is reported as one.
        other => (
            Violations(vec![model::Violation {
                path: "".into(),
                line: 0,
                rule: model::Rule::Shape,
                message: pbsync_core::error_chain(&other),
            }]),
            Vec::new(),
        ),
    };
    Ok(Review {
        plan: Plan::invalid(
            prepared.merged.snapshot.revision.clone(),
            violations.0,
            warnings,
        ),
        base: prepared.merged.base,
        head: prepared.merged.head,
        offline,
    })
}

fn finish(
    ctx: &Context,
    prepared: &Prepared,
    loaded: &reconcile::Loaded,
    observed: &Observed,
    offline: bool,
) -> Review {
    let history = history(ctx, prepared, &loaded.graph, observed);
    let mut plan = plan::plan(&loaded.graph, observed, &history, &ctx.plan);
    for w in &loaded.warnings {
        if !plan.warnings.contains(w) {
            plan.warnings.push(w.clone());
        }
    }
    plan.impact = impact::compute(&plan, &loaded.graph, prepared.base_graph.as_ref());
    mask::mask_plan(&mut plan);
    Review {
        plan,
        base: prepared.merged.base,
        head: prepared.merged.head,
        offline,
    }
}

/// The last committed deletionPolicy of every leaving bundle: looked up first in head's
/// history (the pull request may have set `orphan` before removing the bundle), then in base's.
fn history(
    ctx: &Context,
    prepared: &Prepared,
    graph: &ResourceGraph,
    observed: &Observed,
) -> History {
    let mut history = History::default();
    for (key, path) in plan::leaving_bundles(graph, observed) {
        let Some(path) = path else { continue };
        for from in [prepared.merged.head, prepared.merged.base] {
            if let Some(policy) =
                reconcile::last_committed_policy(&prepared.repo, from, key, path, ctx)
            {
                history.policies.insert(key.clone(), policy);
                break;
            }
        }
    }
    history
}
