//! Times each stage of one pass on a repository (a development aid; the benchmark is
//! benches/pipeline.rs): `cargo run --release --example profile_stages -- /tmp/big10000
//! [STATE_DIR]`. With a `dir:` target's directory (one `pbsync apply --target dir:STATE_DIR`
//! made), the live state is observed from it; without, the plan is made against the state the
//! commit itself produces (every object applied). The stages are the engine's own timings.
use std::time::Instant;

use pbsync::engine::{self, Context, Goal, Input, NoTarget, Timings};
use pbsync::target::local_dir::LocalDir;

fn rss_mb() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096 / 1_000_000
}

fn main() {
    let repo = std::env::args().nth(1).expect("repository path");
    let ctx = Context::new(&repo, "HEAD", "");
    let t = Instant::now();
    let snapshot = ctx.fetch().expect("fetch");
    println!(
        "fetch   {:?} ({} files) rss {} MB",
        t.elapsed(),
        snapshot.files.len(),
        rss_mb()
    );
    let timings = Timings::default();
    let input = Input {
        timings: Some(&timings),
        ..Input::of(&snapshot)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let report = match std::env::args().nth(2) {
        Some(dir) => {
            let target = LocalDir::new(dir, "default");
            rt.block_on(engine::run(&ctx, input, Goal::Plan(&target)))
        }
        None => rt.block_on(engine::run::<NoTarget>(
            &ctx,
            Input {
                base: Some(&snapshot),
                ..input
            },
            Goal::PlanOffline,
        )),
    }
    .expect("plan");
    for (stage, took) in timings.take() {
        println!("{stage:<7} {took:?}");
    }
    println!(
        "{} objects, {} live, {} changes; rss {} MB",
        report.graph.desired_state().objects.len(),
        report.observed().objects.len(),
        report.plan().changes.len(),
        rss_mb()
    );
}
