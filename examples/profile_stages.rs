//! Times each stage once on a repository (a development aid; the benchmark is benches/pipeline.rs):
//! `cargo run --release --example profile_stages -- /tmp/big10000 [STATE_DIR]`: with a
//! `dir:` target's directory (one `pbsync apply --target dir:STATE_DIR` made), the live state
//! is observed from it; without, it is built in memory as if every object had been applied.
use std::time::Instant;

use pbsync::model::Catalog;
use pbsync::plan::{self, History};
use pbsync::reconcile::{self, Context};

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
    let snapshot = reconcile::fetch(&ctx).expect("fetch");
    println!(
        "fetch   {:?} ({} files) rss {} MB",
        t.elapsed(),
        snapshot.files.len(),
        rss_mb()
    );
    let t = Instant::now();
    let (desired, v) = reconcile::parse(&snapshot, &ctx.limits);
    println!(
        "parse   {:?} ({} objects, {} violations)",
        t.elapsed(),
        desired.objects.len(),
        v.len()
    );
    let t = Instant::now();
    let (v, _) = pbsync::model::validate(&desired, &Catalog::default());
    println!("validate {:?} ({} violations)", t.elapsed(), v.len());
    let t = Instant::now();
    let (graph, _) = pbsync::graph::ResourceGraph::build(desired, &Catalog::default());
    println!("graph   {:?} rss {} MB", t.elapsed(), rss_mb());
    let t = Instant::now();
    let observed = match std::env::args().nth(2) {
        Some(dir) => {
            use pbsync::target::Target as _;
            let target = pbsync::target::local_dir::LocalDir::new(dir, "default");
            let stamp = pbsync::ownership::Stamp {
                instance: "default",
                revision: graph.revision(),
                adopted: false,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(target.observe(&graph, &stamp))
                .expect("observe")
        }
        None => pbsync::review::state_of(&graph, "default"),
    };
    println!(
        "observe {:?} ({} live objects, {} parsed) rss {} MB",
        t.elapsed(),
        observed.objects.len(),
        observed
            .objects
            .values()
            .filter(|o| o.manifest.is_some())
            .count(),
        rss_mb()
    );
    let t = Instant::now();
    let p = plan::plan(&graph, &observed, &History::default(), &ctx.plan);
    println!(
        "plan    {:?} ({} changes) rss {} MB",
        t.elapsed(),
        p.changes.len(),
        rss_mb()
    );
}
