//! `pbsync import`: unpack a PaletteAI Studio archive into the repository layout.

use std::path::PathBuf;

use clap::Args;

use super::Status;
use pbsync_studio::{self as import, Outcome, archive};

/// Arguments of `pbsync import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The Studio archive (.tar.gz)
    archive: PathBuf,
    /// Namespace (PaletteAI project) every imported hub object is put in
    #[arg(long)]
    namespace: String,
    /// Repository directory to import into (created if missing)
    #[arg(long, default_value = ".")]
    into: PathBuf,
    /// Palette scope of the imported cluster profiles
    #[arg(long, default_value = "project", value_parser = ["project", "tenant"])]
    scope: String,
    /// Show what would be written; write nothing
    #[arg(long)]
    dry_run: bool,
}

pub(super) fn run(args: &ImportArgs) -> Result<Status, Box<dyn std::error::Error>> {
    let opts = import::Options {
        namespace: args.namespace.clone(),
        scope: args.scope.clone(),
        limits: archive::Limits::default(),
        dry_run: args.dry_run,
    };
    let report = import::import_file(&args.archive, &args.into, &opts)?;
    let verb = if args.dry_run { "would write" } else { "wrote" };
    for e in &report.entries {
        let what = match e.outcome {
            Outcome::Written => verb,
            Outcome::Reused => "reused",
        };
        println!("{what:<11} {}  {}  (from {})", e.path, e.key, e.member);
    }
    for s in &report.skipped {
        println!("skipped     {s}");
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    let written = report
        .entries
        .iter()
        .filter(|e| e.outcome == Outcome::Written)
        .count();
    println!(
        "\n{} object(s) imported into {}: {written} {verb}, {} reused",
        report.entries.len(),
        args.into.display(),
        report.entries.len() - written
    );
    Ok(Status::Success)
}
