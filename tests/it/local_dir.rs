//! The local-directory target on a real temp directory: the layout another tool can apply,
//! atomic writes, and a second run with nothing to do writing nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use pbsync::engine::{self, Goal, Input};
use pbsync::target::RunOptions;
use pbsync::target::local_dir::LocalDir;

use pbsync_devkit::testkit::{ScratchRepo, block_on, copy_dir, list_files};

use crate::support::load_snapshot;

fn example_repo() -> ScratchRepo {
    let mut repo = ScratchRepo::new();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout"),
        repo.path(),
    );
    repo.commit("example");
    repo
}

fn mtimes(dir: &Path) -> BTreeMap<String, SystemTime> {
    list_files(dir)
        .into_iter()
        .map(|f| {
            let t = std::fs::metadata(dir.join(&f)).unwrap().modified().unwrap();
            (f, t)
        })
        .collect()
}

/// Applies the example repository to a fresh directory; returns the repository (kept alive),
/// the directory and the commit applied.
fn apply_example() -> (ScratchRepo, tempfile::TempDir, pbsync::source::Snapshot) {
    let repo = example_repo();
    let state = tempfile::tempdir().unwrap();
    let target = LocalDir::new(state.path(), "default");
    let ctx = engine::Context::new(repo.path(), "HEAD", "");
    let snapshot = ctx.fetch().unwrap();
    block_on(engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(&target, RunOptions::default()),
    ))
    .expect("apply");
    (repo, state, snapshot)
}

#[test]
fn objects_land_where_the_layout_says() {
    let (_repo, state, snapshot) = apply_example();
    let files = list_files(state.path());
    for expected in [
        ".pbsync/inventory.json",
        "project-melbourne/profilebundle/llama-fullstack.yaml",
        "project-melbourne/workloadprofile/vllm-llama.yaml",
        "project-melbourne/helmrepository/vllm-charts.yaml",
        "vela-system/componentdefinition/helm-release.yaml",
        "palette/project/edge-gpu-infra@1.2.0.json",
        "palette/tenant/prometheus-agent@1.0.0.json",
    ] {
        assert!(
            files.contains(&expected.to_string()),
            "{expected} missing from {files:?}"
        );
    }
    assert!(
        !files
            .iter()
            .any(|f| f.contains("drafts") || f.contains("not-valid")),
        "{files:?}"
    );
    // A rendered hub object is a complete manifest another tool can apply.
    let text = std::fs::read_to_string(
        state
            .path()
            .join("project-melbourne/profilebundle/llama-fullstack.yaml"),
    )
    .unwrap();
    let doc = pbsync::model::yaml::load_all(&text, Default::default()).unwrap()[0]
        .root
        .to_json();
    assert_eq!(doc["kind"], "ProfileBundle");
    assert_eq!(
        doc["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "pbsync"
    );
    assert_eq!(doc["spec"]["type"], "Fullstack");
    // A cluster profile is Palette's create entity.
    let cp: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            state
                .path()
                .join("palette/project/edge-gpu-infra@1.2.0.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(cp["metadata"]["name"], "edge-gpu-infra");
    assert_eq!(cp["spec"]["version"], "1.2.0");
    assert_eq!(cp["spec"]["template"]["type"], "infra");
    let inv: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.path().join(".pbsync/inventory.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        inv["instances"]["default"]["lastAppliedRevision"],
        snapshot.revision.as_str()
    );
}

#[test]
fn a_second_run_with_no_change_writes_nothing() {
    let mut repo = example_repo();
    let state = tempfile::tempdir().unwrap();
    let target = LocalDir::new(state.path(), "default");
    let ctx = engine::Context::new(repo.path(), "HEAD", "");
    let run = |ctx: &engine::Context| {
        let snapshot = ctx.fetch().unwrap();
        block_on(engine::run(
            ctx,
            Input::of(&snapshot),
            Goal::Apply(&target, RunOptions::default()),
        ))
        .expect("apply")
    };
    run(&ctx);
    let before = mtimes(state.path());
    let report = run(&ctx);
    assert!(!report.plan().has_changes());
    assert_eq!(
        mtimes(state.path()),
        before,
        "the same commit again wrote files"
    );
    // A new commit that changes one file rewrites exactly the objects it changes (and the
    // inventory's revision).
    let path = repo.path().join("examples-unrelated.md");
    std::fs::write(path, "docs only").unwrap();
    repo.write(
        "shared/repositories/flux-sources.yaml",
        std::fs::read_to_string(repo.path().join("shared/repositories/flux-sources.yaml"))
            .unwrap()
            .replace("interval: 6h", "interval: 12h"),
    );
    repo.commit("change one repository");
    let report = run(&ctx);
    let changed: Vec<String> = report
        .changes()
        .entries
        .iter()
        .filter(|e| e.outcome != pbsync::target::Outcome::Unchanged)
        .map(|e| e.key.to_string())
        .collect();
    assert_eq!(changed, ["HelmRepository project-melbourne/nvidia"]);
    let after = mtimes(state.path());
    let rewritten: Vec<&String> = after
        .iter()
        .filter(|(f, t)| before.get(*f) != Some(t))
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        rewritten,
        [
            ".pbsync/inventory.json",
            "project-melbourne/helmrepository/nvidia.yaml"
        ]
    );
}

#[test]
fn unchanged_files_are_recognised_by_their_bytes_and_hand_edits_are_parsed_and_diffed() {
    let (mut repo, state, _) = apply_example();
    let target = LocalDir::new(state.path(), "default");
    let ctx = engine::Context::new(repo.path(), "HEAD", "");

    // A later commit: every file still records the first revision, yet holds exactly what
    // pbsync would write, so none is parsed or kept (cluster profiles, JSON, always are).
    repo.write("README-extra.md", "unrelated");
    repo.commit("unrelated");
    // By hand: a field of one object changed, another rewritten with the same content in
    // another layout (comments, flow style): both must be parsed and compared in full.
    let edited = state
        .path()
        .join("project-melbourne/helmrepository/nvidia.yaml");
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, text.replace("interval: 6h", "interval: 1m")).unwrap();
    let reformatted = state
        .path()
        .join("project-melbourne/workloadprofile/vllm-llama.yaml");
    let text = std::fs::read_to_string(&reformatted).unwrap();
    std::fs::write(&reformatted, format!("# reformatted by hand\n{text}")).unwrap();

    let snapshot = ctx.fetch().unwrap();
    let planned = block_on(engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&target))).unwrap();
    let live = |name: &str| {
        planned
            .observed()
            .objects
            .iter()
            .find(|(k, _)| k.to_string() == name)
            .map(|(_, o)| o)
            .unwrap_or_else(|| panic!("{name} not observed"))
    };
    let bundle = live("ProfileBundle project-melbourne/llama-fullstack");
    assert!(bundle.matches_desired && bundle.manifest.is_none());
    for name in [
        "HelmRepository project-melbourne/nvidia",
        "WorkloadProfile project-melbourne/vllm-llama",
    ] {
        let o = live(name);
        assert!(!o.matches_desired && o.manifest.is_some(), "{name}");
    }
    let changed: Vec<(String, pbsync::plan::Action, Vec<String>)> = planned
        .plan()
        .changes
        .iter()
        .filter(|c| c.action != pbsync::plan::Action::Unchanged)
        .map(|c| {
            let fields = c.diff.iter().map(|d| d.path.clone()).collect();
            (c.key.to_string(), c.action, fields)
        })
        .collect();
    assert_eq!(
        changed,
        [(
            "HelmRepository project-melbourne/nvidia".to_string(),
            pbsync::plan::Action::Update,
            vec!["spec.interval".to_string()]
        )],
        "only the real edit is a change; the reformatted file holds the same object"
    );
}

#[test]
fn a_repeated_observe_reads_only_files_that_changed() {
    use pbsync::target::Target as _;
    let (repo, state, snapshot) = apply_example();
    // Files written just now are not remembered (see below): make them a minute old.
    let a_minute_ago = SystemTime::now() - std::time::Duration::from_secs(60);
    for f in list_files(state.path()) {
        let file = std::fs::File::options()
            .write(true)
            .open(state.path().join(f))
            .unwrap();
        file.set_modified(a_minute_ago).unwrap();
    }
    let target = LocalDir::new(state.path(), "default");
    let _ctx = engine::Context::new(repo.path(), "HEAD", "");
    // One parse, as a daemon's cache gives every pass the same documents.
    let loaded = load_snapshot(&snapshot).unwrap();
    let stamp = pbsync::ownership::Stamp {
        instance: "default",
        revision: &snapshot.revision,
        adopted: false,
    };
    let observe = || block_on(target.observe(&loaded.graph, &stamp)).unwrap();
    let objects = list_files(state.path())
        .iter()
        .filter(|f| !f.starts_with(".pbsync"))
        .count();
    let profiles = list_files(&state.path().join("palette")).len();
    assert!(profiles > 0 && objects > profiles);

    let first = observe();
    assert_eq!(first.objects.len(), objects);
    assert_eq!(
        target.files_read(),
        objects,
        "a first observe reads every file"
    );
    let second = observe();
    assert_eq!(
        target.files_read(),
        profiles,
        "only cluster profiles (compared as JSON) are read again"
    );
    assert!(
        second
            .objects
            .iter()
            .filter(|(k, _)| k.kind != pbsync::model::Kind::ClusterProfile)
            .all(|(_, o)| o.matches_desired)
    );

    // A hand edit is seen: that file is read, parsed and no longer matches (and, modified
    // just now, it is read on every observe until its time has settled).
    let edited = state
        .path()
        .join("project-melbourne/helmrepository/nvidia.yaml");
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, text.replace("interval: 6h", "interval: 1m")).unwrap();
    let third = observe();
    assert_eq!(target.files_read(), profiles + 1);
    std::fs::write(&edited, text).unwrap();
    observe();
    assert_eq!(target.files_read(), profiles + 1, "restored, but racy");
    observe();
    assert_eq!(
        target.files_read(),
        profiles + 1,
        "still racy: not remembered"
    );
    let nvidia = third
        .objects
        .iter()
        .find(|(k, _)| k.to_string() == "HelmRepository project-melbourne/nvidia")
        .map(|(_, o)| o)
        .unwrap();
    assert!(!nvidia.matches_desired);
    assert_eq!(nvidia.manifest.as_ref().unwrap()["spec"]["interval"], "1m");

    // Another parse of the same commit: new documents, so every file is read again (and
    // still recognised by its bytes).
    let reparsed = load_snapshot(&snapshot).unwrap();
    let fourth = block_on(target.observe(&reparsed.graph, &stamp)).unwrap();
    assert_eq!(target.files_read(), objects);
    assert_eq!(
        fourth
            .objects
            .values()
            .filter(|o| o.matches_desired)
            .count(),
        objects - profiles,
        "the restored file matches again"
    );
}

#[test]
fn writes_are_atomic_renames_leaving_no_temporary_files() {
    let (_repo, state, _) = apply_example();
    for f in list_files(state.path()) {
        assert!(
            f.ends_with(".yaml") || f.ends_with(".json") || f == ".pbsync/lock",
            "stray file {f}"
        );
    }
}

#[test]
fn two_instances_share_a_directory_without_touching_each_others_objects() {
    let repo = example_repo();
    let state = tempfile::tempdir().unwrap();
    let blue = LocalDir::new(state.path(), "blue");
    let ctx = engine::Context::new(repo.path(), "HEAD", "");
    let snapshot = ctx.fetch().unwrap();
    let mut blue_ctx = ctx.clone();
    blue_ctx.plan.instance = "blue".into();
    block_on(engine::run(
        &blue_ctx,
        Input::of(&snapshot),
        Goal::Apply(&blue, RunOptions::default()),
    ))
    .expect("blue applies");
    let green = LocalDir::new(state.path(), "green");
    let mut green_ctx = ctx.clone();
    green_ctx.plan.instance = "green".into();
    let planned = block_on(engine::run(
        &green_ctx,
        Input::of(&snapshot),
        Goal::Plan(&green),
    ))
    .expect("green plans");
    let summary = planned.plan().summary();
    assert_eq!(
        summary.blocked,
        planned.plan().changes.len(),
        "every object is blue's: {summary:?}"
    );
    assert!(
        planned
            .plan()
            .changes
            .iter()
            .all(|c| c.reasons[0].contains("managed by pbsync instance \"blue\""))
    );
}
