//! Pull-request plans at scale: a synthetic repository of 10,000 bundles (about 50,000
//! objects) on `main`, a branch that edits one file (a shared WorkloadProfile used by many
//! bundles), and the offline plan of the merge: in-memory merge, read of both trees, parse +
//! validate + graph of both, plan, impact, masking and the Markdown comments; once cold (every
//! file parsed, as in a fresh CI job) and once with the parse store of an earlier run in
//! `--cache-dir` (a CI job that caches that directory). Run with
//! `cargo bench --bench pr_plan`; results go into BENCHMARKS.md ("Pull-request plans").

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pbsync::engine::{Context, NoTarget};
use pbsync::plan::comment::render_comments;
use pbsync::review::{self, Request};
use pbsync_devkit::synthetic::{Params, bench_sizes, commit_all, write_repo};

// The allocator the binary uses, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@pbsync.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@pbsync.invalid")
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pr-plan");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    for &bundles in bench_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_repo(
            dir.path(),
            &Params {
                bundles,
                ..Params::default()
            },
        )
        .expect("generate");
        commit_all(dir.path(), "synthetic").expect("commit");
        git(dir.path(), &["branch", "-f", "main", "HEAD"]);
        git(dir.path(), &["checkout", "-q", "-b", "pr"]);
        // One file: the shared profiles of the first namespace, one image changed.
        let path = dir.path().join("shared/team-000.yaml");
        let text = std::fs::read_to_string(&path).expect("shared file");
        std::fs::write(
            &path,
            text.replacen("type: shared-comp-0,", "type: shared-comp-1,", 1),
        )
        .expect("edit");
        git(dir.path(), &["commit", "-q", "-am", "one file"]);

        let ctx = Context::new(dir.path(), "HEAD", "");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let plan_offline = |req: &Request| rt.block_on(review::plan::<NoTarget>(&ctx, req, None));
        let req = Request {
            cache_dir: None,
            base: "main".into(),
            head: "pr".into(),
        };
        let review = plan_offline(&req).expect("plan");
        assert!(review.plan.has_changes(), "the edit shows");
        group.bench_function(format!("{bundles}-bundles-one-file-offline"), |b| {
            b.iter(|| {
                let review = plan_offline(&req).expect("plan");
                let comments = render_comments(&review.plan, &review.comment_context());
                black_box((review, comments))
            });
        });
        let store = tempfile::tempdir().expect("cache dir");
        let cached = Request {
            cache_dir: Some(store.path().to_path_buf()),
            ..req.clone()
        };
        plan_offline(&cached).expect("a first run writes the store");
        group.bench_function(format!("{bundles}-bundles-one-file-offline-cached"), |b| {
            b.iter(|| {
                let review = plan_offline(&cached).expect("plan");
                let comments = render_comments(&review.plan, &review.comment_context());
                black_box((review, comments))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
