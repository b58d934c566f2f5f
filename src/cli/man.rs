//! `pbsync man --out-dir DIR` (hidden): man pages for pbsync and each subcommand, generated
//! from the clap definitions; `scripts/package` ships them.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory as _};

use super::{Cli, Status};

/// Arguments of `pbsync man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Directory to write `pbsync.1` and `pbsync-SUBCOMMAND.1` into (created if missing)
    #[arg(long)]
    out_dir: PathBuf,
}

/// The man pages could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the man pages to {dir}")]
struct WriteFailed {
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

pub(super) fn run(args: &ManArgs) -> Result<Status, Box<dyn std::error::Error>> {
    write_pages(&args.out_dir).map_err(|source| WriteFailed {
        dir: args.out_dir.clone(),
        source,
    })?;
    Ok(Status::Success)
}

/// Writes one page per visible command: `pbsync.1`, `pbsync-run.1`, …
fn write_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_page_per_visible_subcommand_and_the_run_page_renders() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        write_pages(dir.path()).expect("pages written");
        let run = std::fs::read_to_string(dir.path().join("pbsync-run.1")).expect("pbsync-run.1");
        assert!(run.contains(".TH pbsync-run 1"), "{run}");
        assert!(run.contains("\\-\\-config"), "{run}");
        let top = std::fs::read_to_string(dir.path().join("pbsync.1")).expect("pbsync.1");
        assert!(top.contains("pbsync\\-completions(1)"), "{top}");
        for name in ["validate", "plan", "apply", "status", "completions"] {
            assert!(
                dir.path().join(format!("pbsync-{name}.1")).is_file(),
                "{name}"
            );
        }
        assert!(
            !dir.path().join("pbsync-man.1").exists(),
            "the hidden command has a page"
        );
    }
}
