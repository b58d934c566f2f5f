//! Arbitrary bytes as a PaletteAI Studio archive: the reader behind `pbsync import`
//! (`import::archive::read`), then, for an archive it accepts, the rest of the import as a
//! dry run (`import::import` with `dry_run`, into a directory that does not exist), which
//! classifies, converts and re-parses every member.
//!
//! Input that is not gzip (no `1f 8b` magic) is also gzip-compressed here and read again, so
//! the fuzzer can work on the tar structure itself instead of on deflate bits; the seeds
//! include the uncompressed tar of the example archive for that.
//!
//! Checked, besides "never panics, never overflows the stack, never hangs" (refusals are
//! fine):
//! - an accepted archive respects its limits (members, member size, total size) and every
//!   member path is relative, normalised, without `..` and unique, in sorted order;
//! - an import that succeeds names only files inside the target directory (relative,
//!   no `..`, `.yaml`), and with `dry_run` writes nothing.
#![no_main]

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pbsync_studio::{self as import, archive};

/// Small limits, so the size refusals are reachable from small inputs: the checks are the
/// same at any size.
const LIMITS: archive::Limits = archive::Limits {
    max_member_bytes: 16 * 1024,
    max_total_bytes: 64 * 1024,
    max_members: 32,
};

/// A directory that does not exist: the import scans nothing and (dry run) writes nothing.
fn absent_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pbsync-fuzz-absent-{}", std::process::id()));
        assert!(
            !dir.exists(),
            "{} exists; the dry run needs an absent directory",
            dir.display()
        );
        dir
    })
}

fn check(input: &[u8]) {
    let Ok(members) = archive::read(input, &LIMITS) else {
        return;
    };
    assert!(
        members.len() <= LIMITS.max_members,
        "{} members",
        members.len()
    );
    let mut total = 0u64;
    for (i, m) in members.iter().enumerate() {
        let size = m.bytes.len() as u64;
        assert!(
            size <= LIMITS.max_member_bytes,
            "member {:?} is {size} bytes",
            m.path
        );
        total += size;
        let p = &m.path;
        assert!(
            !p.starts_with('/')
                && !p.contains('\\')
                && p.split('/').all(|c| !matches!(c, ".." | ".")),
            "unsafe member path accepted: {p:?}"
        );
        assert!(
            !p.split('/').any(str::is_empty) || p.is_empty(),
            "member path not normalised: {p:?}"
        );
        if i > 0 {
            assert!(
                members[i - 1].path < *p,
                "members unsorted or repeated at {p:?}"
            );
        }
    }
    assert!(
        total <= LIMITS.max_total_bytes,
        "the archive unpacked to {total} bytes"
    );

    let opts = import::Options {
        namespace: "fuzz".into(),
        scope: "project".into(),
        limits: LIMITS,
        dry_run: true,
    };
    let dir = absent_dir();
    if let Ok(report) = import::import(&members, "fuzz.tar.gz", dir, &opts) {
        for e in &report.entries {
            let p = &e.path;
            assert!(
                !p.starts_with('/')
                    && !p.contains('\\')
                    && p.split('/').all(|c| !matches!(c, "" | "." | ".."))
                    && p.ends_with(".yaml"),
                "the import would write outside its directory: {p:?} (for {})",
                e.key
            );
        }
    }
    assert!(!dir.exists(), "a dry-run import created {}", dir.display());
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if !data.starts_with(&[0x1f, 0x8b]) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).expect("writing to a Vec");
        check(&gz.finish().expect("writing to a Vec"));
    }
});
