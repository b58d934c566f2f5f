//! The git source on real repositories built in temp dirs: commits are read from the tree,
//! never the working directory; `.pbsyncignore`, subdirectories and refs are honoured; the
//! history look-up finds a removed bundle's last committed version.

use pbsync::source::Walk;
use pbsync::source::{self, Content, GitConfig};

use pbsync_devkit::testkit::ScratchRepo;

fn read(repo: &ScratchRepo, reference: &str, path: &str) -> source::Snapshot {
    source::read(&GitConfig {
        repo: repo.path().to_path_buf(),
        reference: reference.into(),
        path: path.into(),
        max_file_bytes: 1024,
    })
    .expect("read")
}

fn paths(s: &source::Snapshot) -> Vec<&str> {
    s.files.iter().map(|f| &*f.path).collect()
}

#[test]
fn reads_the_committed_tree_not_the_working_directory() {
    let mut repo = ScratchRepo::new();
    repo.write("a.yaml", "committed: true\n");
    let first = repo.commit("one");
    repo.write("a.yaml", "edited but not committed\n");
    repo.write("b.yaml", "untracked\n");
    let snap = read(&repo, "HEAD", "");
    assert_eq!(snap.revision, first.to_string());
    assert_eq!(paths(&snap), ["a.yaml"]);
    assert_eq!(
        snap.files[0].content,
        Content::Bytes(b"committed: true\n".to_vec())
    );
}

#[test]
fn only_yaml_files_under_the_path_count_and_pbsyncignore_is_honoured() {
    let mut repo = ScratchRepo::new();
    repo.write("outside.yaml", "x: 1\n");
    repo.write("deploy/.pbsyncignore", "drafts/\n*.wip.yaml\n");
    repo.write("deploy/a.yaml", "x: 1\n");
    repo.write("deploy/b.yml", "x: 1\n");
    repo.write("deploy/notes.md", "not yaml\n");
    repo.write("deploy/c.wip.yaml", "x: 1\n");
    repo.write("deploy/drafts/d.yaml", "x: 1\n");
    repo.write("deploy/nested/e.yaml", "x: 1\n");
    repo.commit("layout");
    let snap = read(&repo, "HEAD", "./deploy/");
    assert_eq!(
        paths(&snap),
        ["deploy/a.yaml", "deploy/b.yml", "deploy/nested/e.yaml"]
    );
}

#[test]
fn refs_name_branches_tags_and_commits() {
    let mut repo = ScratchRepo::new();
    repo.write("a.yaml", "v: 1\n");
    let first = repo.commit("one");
    repo.git()
        .tag_lightweight("v1", &repo.git().find_object(first, None).unwrap(), false)
        .unwrap();
    repo.write("b.yaml", "v: 2\n");
    repo.commit("two");
    assert_eq!(paths(&read(&repo, "v1", "")), ["a.yaml"]);
    assert_eq!(paths(&read(&repo, &first.to_string(), "")), ["a.yaml"]);
    assert_eq!(paths(&read(&repo, "HEAD", "")), ["a.yaml", "b.yaml"]);
    let err = source::read(&GitConfig {
        repo: repo.path().to_path_buf(),
        reference: "no-such-branch".into(),
        path: String::new(),
        max_file_bytes: 1024,
    })
    .unwrap_err();
    assert!(
        matches!(err, source::Error::RevisionNotFound { .. }),
        "{err}"
    );
}

#[test]
fn a_missing_path_is_an_error_not_an_empty_commit() {
    let mut repo = ScratchRepo::new();
    repo.write("a.yaml", "v: 1\n");
    repo.commit("one");
    let err = source::read(&GitConfig {
        repo: repo.path().to_path_buf(),
        reference: "HEAD".into(),
        path: "nope".into(),
        max_file_bytes: 1024,
    })
    .unwrap_err();
    assert!(matches!(err, source::Error::PathNotFound { .. }), "{err}");
}

#[test]
fn files_over_the_limit_are_not_loaded() {
    let mut repo = ScratchRepo::new();
    repo.write("big.yaml", "x".repeat(4096));
    repo.commit("big");
    let snap = read(&repo, "HEAD", "");
    assert_eq!(snap.files[0].content, Content::TooLarge(4096));
}

#[test]
fn history_finds_the_last_committed_version_of_a_removed_file() {
    let mut repo = ScratchRepo::new();
    repo.write("b.yaml", "policy: delete\n");
    repo.commit("one");
    repo.write("b.yaml", "policy: orphan\n");
    repo.commit("two");
    repo.remove("b.yaml");
    let head = repo.commit("three");
    let found = source::find_in_history(repo.git(), head, "b.yaml", 100, |bytes| {
        Some(String::from_utf8_lossy(bytes).trim().to_string())
    })
    .unwrap();
    assert_eq!(found, Walk::Found("policy: orphan".to_string()));
    let none = source::find_in_history(repo.git(), head, "never.yaml", 100, |_| Some(())).unwrap();
    assert_eq!(none, Walk::Complete);
    let cut = source::find_in_history(repo.git(), head, "never.yaml", 2, |_| Some(())).unwrap();
    assert_eq!(cut, Walk::DepthLimit(2));
}

#[test]
fn a_read_reusing_an_earlier_snapshot_equals_a_fresh_read() {
    let mut repo = ScratchRepo::new();
    repo.write("a.yaml", "a: 1\n");
    repo.write("b.yaml", "b: 1\n");
    repo.write("big.yaml", "x: 1\n".repeat(400));
    let first = repo.commit("one");
    repo.write("a.yaml", "a: 2\n");
    repo.write("c.yaml", "b: 1\n");
    repo.write("moved/b.yaml", "b: 1\n");
    std::fs::remove_file(repo.path().join("b.yaml")).unwrap();
    let second = repo.commit("two");
    let git = git2::Repository::open(repo.path()).unwrap();
    let earlier = source::read_commit(&git, first, "", 1024).unwrap();
    let fresh = source::read_commit(&git, second, "", 1024).unwrap();
    let reused = source::read_commit_reusing(&git, second, "", 1024, Some(&earlier)).unwrap();
    assert_eq!(reused.revision, fresh.revision);
    assert_eq!(reused.files, fresh.files, "same paths, blobs and contents");
    // The over-limit file stays refused by size when its content is taken over.
    let big = reused
        .files
        .iter()
        .find(|f| &*f.path == "big.yaml")
        .unwrap();
    assert_eq!(big.content, Content::TooLarge(2000));
}

#[test]
fn generated_repositories_are_valid_and_as_large_as_announced() {
    use crate::support::load_snapshot;
    use pbsync::engine;
    use pbsync_devkit::synthetic::{Params, commit_all, write_repo};
    let dir = tempfile::tempdir().unwrap();
    let p = Params {
        bundles: 30,
        shared: 4,
        per_namespace: 10,
        ..Params::default()
    };
    write_repo(dir.path(), &p).unwrap();
    commit_all(dir.path(), "gen").unwrap();
    let ctx = engine::Context::new(dir.path(), "HEAD", "");
    let snapshot = ctx.fetch().unwrap();
    let loaded = match load_snapshot(&snapshot) {
        Ok(l) => l,
        Err(e) => panic!("{}", pbsync::error_chain(&e)),
    };
    assert_eq!(loaded.graph.desired_state().objects.len(), p.object_count());
}
