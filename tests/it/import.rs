//! `pbsync import`: Studio archives built here with `tar::Builder`, unpacked into the
//! repository layout; every refusal (absolute paths, `..`, links, device files, size and count
//! limits), conflicts that write nothing, and the example archive under `examples/studio/`
//! (regenerated from `examples/studio/src/` with `PBSYNC_REGENERATE_STUDIO=1`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use pbsync::import::{self, Error, Outcome, archive};

use pbsync_devkit::testkit::{ScratchRepo, copy_dir, list_files};

use crate::support::{context, load_snapshot};

fn options(ns: &str) -> import::Options {
    import::Options {
        namespace: ns.into(),
        scope: "project".into(),
        limits: archive::Limits::default(),
        dry_run: false,
    }
}

/// A member to put in a test archive.
enum M<'a> {
    File(&'a str, &'a [u8]),
    /// A raw header name written byte for byte (the builder refuses `..` and absolute paths).
    RawName(&'a [u8], &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Special(&'a str, tar::EntryType),
}

fn targz(members: &[M<'_>]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for m in members {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(0);
        match m {
            M::File(path, data) => {
                h.set_size(data.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, path, *data).expect("append");
            }
            M::RawName(name, data) => {
                h.set_size(data.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                h.as_old_mut().name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, *data).expect("append raw");
            }
            M::Symlink(path, target) | M::HardLink(path, target) => {
                h.set_size(0);
                h.set_entry_type(if matches!(m, M::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                b.append_link(&mut h, path, target).expect("append link");
            }
            M::Special(path, t) => {
                h.set_size(0);
                h.set_entry_type(*t);
                h.set_device_major(1).expect("major");
                h.set_device_minor(3).expect("minor");
                b.append_data(&mut h, path, &[][..])
                    .expect("append special");
            }
        }
    }
    b.into_inner().expect("tar").finish().expect("gzip")
}

fn write_archive(dir: &Path, bytes: &[u8]) -> PathBuf {
    let p = dir.join("studio.tar.gz");
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write archive");
    p
}

/// Imports `bytes` into an empty directory; returns the result and the files written.
fn import_into_empty(
    bytes: &[u8],
    limits: archive::Limits,
) -> (Result<import::Report, Error>, Vec<String>) {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = write_archive(tmp.path(), bytes);
    let into = tmp.path().join("repo");
    let opts = import::Options {
        limits,
        ..options("team-a")
    };
    let result = import::import_file(&archive, &into, &opts);
    (result, list_files(&into))
}

const BUNDLE: &str = "apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata:
  name: chat
  namespace: studio
spec:
  type: Application
  workloadProfiles:
    - name: chat-ui
";

const PROFILE: &str = "apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata: {name: chat-ui, namespace: studio}
spec:
  type: Application
  workload:
    components: []
";

fn refused(members: &[M<'_>], limits: archive::Limits, expect: &str) {
    let (result, files) = import_into_empty(&targz(members), limits);
    let err = result.expect_err("the archive must be refused");
    let text = pbsync::error_chain(&err);
    assert!(text.contains(expect), "{expect:?} not in {text:?}");
    assert!(files.is_empty(), "a refused archive wrote {files:?}");
}

#[test]
fn an_absolute_member_path_is_refused() {
    refused(
        &[
            M::File("bundle.yaml", BUNDLE.as_bytes()),
            M::RawName(b"/etc/cron.d/x", b"x"),
        ],
        archive::Limits::default(),
        "member \"/etc/cron.d/x\": it has an absolute path",
    );
}

#[test]
fn a_parent_component_is_refused() {
    refused(
        &[M::RawName(b"bundles/../../escape.yaml", BUNDLE.as_bytes())],
        archive::Limits::default(),
        "its path has a `..` component",
    );
}

#[test]
fn a_symbolic_link_is_refused() {
    refused(
        &[M::Symlink("bundles/chat.yaml", "/etc/passwd")],
        archive::Limits::default(),
        "it is a symbolic link (to \"/etc/passwd\"); links are refused",
    );
}

#[test]
fn a_hard_link_is_refused() {
    refused(
        &[
            M::File("a.yaml", BUNDLE.as_bytes()),
            M::HardLink("b.yaml", "a.yaml"),
        ],
        archive::Limits::default(),
        "it is a hard link",
    );
}

#[test]
fn device_files_and_fifos_are_refused() {
    refused(
        &[M::Special("dev/null", tar::EntryType::Char)],
        archive::Limits::default(),
        "it is a device file",
    );
    refused(
        &[M::Special("dev/sda", tar::EntryType::Block)],
        archive::Limits::default(),
        "it is a device file",
    );
    refused(
        &[M::Special("pipe", tar::EntryType::Fifo)],
        archive::Limits::default(),
        "it is a special member",
    );
}

#[test]
fn an_over_large_member_is_refused_before_it_is_read() {
    let big = vec![b'a'; 4096];
    refused(
        &[M::File("big.yaml", &big)],
        archive::Limits {
            max_member_bytes: 1024,
            ..archive::Limits::default()
        },
        "member \"big.yaml\" is 4096 bytes, over the limit of 1024",
    );
}

#[test]
fn an_archive_unpacking_to_more_than_the_total_limit_is_refused() {
    let part = vec![b'#'; 600];
    refused(
        &[M::File("a.yaml", &part), M::File("b.yaml", &part)],
        archive::Limits {
            max_total_bytes: 1000,
            ..archive::Limits::default()
        },
        "it unpacks to more than 1000 bytes",
    );
}

#[test]
fn an_archive_with_too_many_members_is_refused() {
    let names: Vec<String> = (0..5).map(|i| format!("f{i}.txt")).collect();
    let members: Vec<M<'_>> = names.iter().map(|n| M::File(n, b"x")).collect();
    refused(
        &members,
        archive::Limits {
            max_members: 4,
            ..archive::Limits::default()
        },
        "it has more than 4 members",
    );
}

#[test]
fn a_file_that_is_not_a_tar_gz_is_refused() {
    let (result, files) =
        import_into_empty(b"PK\x03\x04 not a tarball", archive::Limits::default());
    let text = pbsync::error_chain(&result.expect_err("refused"));
    assert!(text.contains("not a readable .tar.gz archive"), "{text}");
    assert!(files.is_empty());
}

#[test]
fn a_valid_archive_is_written_in_the_repository_layout_with_the_namespace_set() {
    let bytes = targz(&[
        M::File("x/bundle.yaml", BUNDLE.as_bytes()),
        M::File("y/profile.yml", PROFILE.as_bytes()),
        M::File("notes.txt", b"just text"),
    ]);
    let (result, files) = import_into_empty(&bytes, archive::Limits::default());
    let report = result.expect("imported");
    assert_eq!(
        files,
        ["bundles/chat.yaml", "shared/workload-profiles/chat-ui.yaml"]
    );
    assert!(report.entries.iter().all(|e| e.outcome == Outcome::Written));
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert!(
        report.entries.iter().all(|e| &*e.key.namespace == "team-a"),
        "{:?}",
        report.entries
    );
}

#[test]
fn a_differing_object_already_in_the_directory_is_a_conflict_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let into = tmp.path().join("repo");
    std::fs::create_dir_all(into.join("mine")).expect("mkdir");
    // The same WorkloadProfile, but of type Model: a conflict.
    std::fs::write(
        into.join("mine/profiles.yaml"),
        PROFILE
            .replace("studio", "team-a")
            .replace("type: Application", "type: Model"),
    )
    .expect("write");
    let before = list_files(&into);
    let archive = write_archive(
        tmp.path(),
        &targz(&[
            M::File("bundle.yaml", BUNDLE.as_bytes()),
            M::File("profile.yaml", PROFILE.as_bytes()),
        ]),
    );
    let err = import::import_file(&archive, &into, &options("team-a")).expect_err("conflict");
    let text = err.to_string();
    assert!(
        text.contains("WorkloadProfile team-a/chat-ui (from profile.yaml) differs from the one in mine/profiles.yaml"),
        "{text}"
    );
    assert!(text.contains("nothing was written"), "{text}");
    assert_eq!(list_files(&into), before, "a conflict wrote files");
}

#[test]
fn an_identical_object_already_in_the_directory_is_reused_not_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let into = tmp.path().join("repo");
    std::fs::create_dir_all(&into).expect("mkdir");
    // Same object, other formatting and another file name: identical content is reused.
    std::fs::write(
        into.join("profiles.yaml"),
        "# ours\nkind: WorkloadProfile\napiVersion: spectrocloud.com/v1beta1\nmetadata:\n  namespace: team-a\n  name: chat-ui\nspec: {type: Application, workload: {components: []}}\n",
    )
    .expect("write");
    let archive = write_archive(
        tmp.path(),
        &targz(&[
            M::File("bundle.yaml", BUNDLE.as_bytes()),
            M::File("profile.yaml", PROFILE.as_bytes()),
        ]),
    );
    let report = import::import_file(&archive, &into, &options("team-a")).expect("imported");
    let outcomes: Vec<(String, Outcome)> = report
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("profiles.yaml".to_string(), Outcome::Reused),
            ("bundles/chat.yaml".to_string(), Outcome::Written),
        ]
    );
    assert_eq!(list_files(&into), ["bundles/chat.yaml", "profiles.yaml"]);
}

#[test]
fn a_dry_run_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let into = tmp.path().join("repo");
    let archive = write_archive(tmp.path(), &targz(&[M::File("b.yaml", BUNDLE.as_bytes())]));
    let opts = import::Options {
        dry_run: true,
        ..options("team-a")
    };
    let report = import::import_file(&archive, &into, &opts).expect("planned");
    assert_eq!(report.entries.len(), 1);
    assert!(list_files(&into).is_empty());
}

// The example archive.

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const EXAMPLE_ARCHIVE: &str = "examples/studio/qwen-fullstack.tar.gz";

/// The files of `examples/studio/src/`, as archive members (sorted, `/`-separated).
fn studio_sources() -> Vec<archive::Member> {
    let src = manifest_dir().join("examples/studio/src");
    list_files(&src)
        .into_iter()
        .map(|rel| archive::Member {
            bytes: std::fs::read(src.join(&rel)).expect("read source"),
            path: rel,
        })
        .collect()
}

#[test]
fn the_example_archive_is_built_from_its_source_directory() {
    let sources = studio_sources();
    let path = manifest_dir().join(EXAMPLE_ARCHIVE);
    if std::env::var_os("PBSYNC_REGENERATE_STUDIO").is_some() {
        // Deterministic: sorted members, fixed times, owners and modes, no gzip timestamp.
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        let mut b = tar::Builder::new(gz);
        b.mode(tar::HeaderMode::Deterministic);
        for m in &sources {
            let mut h = tar::Header::new_gnu();
            h.set_size(m.bytes.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, &m.path, &m.bytes[..])
                .expect("append");
        }
        let bytes = b.into_inner().expect("tar").finish().expect("gzip");
        std::fs::write(&path, bytes).expect("write example archive");
    }
    let file = std::fs::File::open(&path).expect("examples/studio archive");
    let members = archive::read(file, &archive::Limits::default()).expect("readable");
    assert_eq!(
        members, sources,
        "{EXAMPLE_ARCHIVE} is out of date: regenerate it with PBSYNC_REGENERATE_STUDIO=1 cargo test --test it studio"
    );
}

#[test]
fn the_example_studio_archive_imports_into_the_example_repository_and_validates() {
    let mut repo = ScratchRepo::new();
    copy_dir(&manifest_dir().join("examples/repo-layout"), repo.path());
    let report = import::import_file(
        &manifest_dir().join(EXAMPLE_ARCHIVE),
        repo.path(),
        &options("project-melbourne"),
    )
    .expect("imported");
    let lines: Vec<String> = report
        .entries
        .iter()
        .map(|e| format!("{:?} {} {}", e.outcome, e.path, e.key))
        .collect();
    assert_eq!(
        lines,
        [
            "Written shared/definitions/qwen-vllm-server.component.yaml ComponentDefinition project-melbourne/qwen-vllm-server",
            "Reused shared/repositories/flux-sources.yaml HelmRepository project-melbourne/vllm-charts",
            "Written shared/workload-profiles/qwen-model.yaml WorkloadProfile project-melbourne/qwen-model",
            "Written shared/cluster-profiles/edge-gpu-studio-1.0.0.yaml ClusterProfile project/edge-gpu-studio@1.0.0",
            "Written bundles/qwen-fullstack.yaml ProfileBundle project-melbourne/qwen-fullstack",
        ]
    );
    assert_eq!(report.skipped, ["README.md (document 1): not a mapping"]);
    // The variable set joined the profile whose pack uses it, after the export's own.
    let env = std::fs::read_to_string(
        repo.path()
            .join("shared/cluster-profiles/edge-gpu-studio-1.0.0.yaml"),
    )
    .expect("envelope");
    let doc = pbsync::model::yaml::load_all(&env, Default::default()).expect("yaml")[0]
        .root
        .to_json();
    let names: Vec<&str> = doc["spec"]["variables"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["vip", "gpu_driver"]);
    assert_eq!(
        doc["metadata"]["annotations"]["description"],
        "Edge GPU cluster for Studio model bundles"
    );
    // The result is a valid repository.
    repo.commit("import");
    let ctx = context(&repo);
    let snapshot = ctx.fetch().expect("fetch");
    let loaded = load_snapshot(&snapshot);
    assert!(
        loaded.is_ok(),
        "{}",
        loaded
            .err()
            .map(|e| pbsync::error_chain(&e))
            .unwrap_or_default()
    );
    // A second import reuses everything.
    let again = import::import_file(
        &manifest_dir().join(EXAMPLE_ARCHIVE),
        repo.path(),
        &options("project-melbourne"),
    )
    .expect("re-import");
    assert!(again.entries.iter().all(|e| e.outcome == Outcome::Reused));
}
