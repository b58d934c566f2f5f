//! What only this binary needs beside the shared test kit (`pbsync_devkit::testkit`: the
//! scratch repositories, `block_on`, `copy_dir`, `list_files`): fixture paths, and running
//! the pipeline of the `pbsync` crate.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use pbsync_devkit::testkit::{ScratchRepo, block_on};

/// Path of a fixture directory.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A pipeline context reading HEAD of `repo`.
pub fn context(repo: &ScratchRepo) -> pbsync::engine::Context {
    pbsync::engine::Context::new(repo.path(), "HEAD", "")
}

/// Parses, validates and graphs a commit without live state: the engine's validate goal.
pub fn load_snapshot(
    snapshot: &pbsync::source::Snapshot,
) -> pbsync::engine::Result<pbsync::engine::Report> {
    let ctx = pbsync::engine::Context::new(".", "HEAD", "");
    block_on(pbsync::engine::run::<pbsync::engine::NoTarget>(
        &ctx,
        pbsync::engine::Input::of(snapshot),
        pbsync::engine::Goal::Validate(None),
    ))
}
