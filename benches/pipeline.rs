//! The pipeline at scale, on a synthetic repository of 1,000 and 10,000 bundles (about 5,000
//! and 50,000 objects) in the steady state a daemon sees (everything applied before):
//! - `git-read`: the commit's YAML from the Git tree;
//! - `validate+graph+plan`: the pure middle (parse, validate, graph, plan) against a live
//!   state held in memory;
//! - `plan-dir-target`: what `pbsync plan --target dir:` does after the git read: parse,
//!   validate, graph, observe the local directory (every object read back), plan.
//!
//! Run with `cargo bench --bench pipeline`; results go into BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pbsync::engine::{self, Context, Goal, Input, NoTarget};
use pbsync::plan::{self, History};
use pbsync::target::RunOptions;
use pbsync::target::local_dir::LocalDir;
use pbsync_devkit::synthetic::{Params, bench_sizes, commit_all, write_repo};

// The allocator the binary uses, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    for &bundles in bench_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let params = Params {
            bundles,
            ..Params::default()
        };
        write_repo(dir.path(), &params).expect("generate");
        commit_all(dir.path(), "synthetic").expect("commit");
        let ctx = Context::new(dir.path(), "HEAD", "");
        let snapshot = ctx.fetch().expect("fetch");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let load_snapshot = |snapshot| {
            rt.block_on(engine::run::<NoTarget>(
                &ctx,
                Input::of(snapshot),
                Goal::Validate(None),
            ))
        };
        let loaded = load_snapshot(&snapshot).expect("valid");
        let observed = pbsync::live::Observed::as_applied(&loaded.graph, "default");
        let _catalog = observed.catalog(loaded.graph.desired_state());
        let state = tempfile::tempdir().expect("tempdir");
        let target = LocalDir::new(state.path(), "default");
        rt.block_on(engine::run(
            &ctx,
            Input::of(&snapshot),
            Goal::Apply(&target, RunOptions::default()),
        ))
        .expect("first apply");

        let mut group = c.benchmark_group(format!("{bundles}-bundles"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(if bundles > 1_000 { 30 } else { 10 }));
        group.bench_function("git-read", |b| {
            b.iter(|| black_box(ctx.fetch().expect("fetch")));
        });
        group.bench_function("validate+graph+plan", |b| {
            b.iter(|| {
                let loaded = load_snapshot(&snapshot).expect("valid");
                let plan = plan::plan(&loaded.graph, &observed, &History::default(), &ctx.plan);
                assert!(!plan.has_changes());
                black_box(plan)
            });
        });
        group.bench_function("plan-dir-target", |b| {
            b.iter(|| {
                let planned = rt
                    .block_on(engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&target)))
                    .expect("plan");
                assert!(!planned.plan().has_changes());
                black_box(planned)
            });
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
