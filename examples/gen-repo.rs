//! Writes a synthetic bundle repository for scale tests:
//! `cargo run --release --example gen-repo -- --bundles 10000 --shared 50 --out /tmp/big`.
//! The directory becomes a git repository with one commit (reproducible commit id).

use std::path::PathBuf;

use clap::Parser;
use pbsync_devkit::synthetic::{Params, commit_all, write_repo};

/// Write a synthetic repository of N bundles sharing M objects
#[derive(Debug, Parser)]
struct Args {
    /// Number of ProfileBundles (each brings four objects of its own)
    #[arg(long, default_value_t = 1000)]
    bundles: usize,
    /// Shared objects of each shared kind that bundles draw from
    #[arg(long, default_value_t = 50)]
    shared: usize,
    /// Bundles per namespace
    #[arg(long, default_value_t = 500)]
    per_namespace: usize,
    /// Output directory (created; made a git repository)
    #[arg(long)]
    out: PathBuf,
    /// Write the files but do not commit them
    #[arg(long)]
    no_commit: bool,
    /// No cluster profiles (and only Application bundles): a repository for the hub alone
    #[arg(long)]
    hub_only: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let params = Params {
        bundles: args.bundles,
        shared: args.shared,
        per_namespace: args.per_namespace,
        cluster_profiles: !args.hub_only,
    };
    std::fs::create_dir_all(&args.out)?;
    write_repo(&args.out, &params)?;
    if !args.no_commit {
        let commit = commit_all(&args.out, "synthetic repository")?;
        println!(
            "{} ({} objects) at commit {commit}",
            args.out.display(),
            params.object_count()
        );
    } else {
        println!("{} ({} objects)", args.out.display(), params.object_count());
    }
    Ok(())
}
