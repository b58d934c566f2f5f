//! End-to-end tests of the built binary against real git repositories: the flags, output
//! formats and exit codes that scripts rely on (issue 2, point 6). Text output is
//! snapshotted; commit ids are stable because `ScratchRepo` commits deterministically.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use pbsync_devkit::testkit::{ScratchRepo, list_files};

use crate::support::fixture;

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `pbsync args...` from an empty directory, so that nothing relies on (or writes to)
/// the working directory, with the colour and instance environment cleared.
fn pbsync(args: &[&str]) -> Run {
    let cwd = tempfile::tempdir().expect("cwd");
    let out = Command::new(env!("CARGO_BIN_EXE_pbsync"))
        .args(args)
        .current_dir(cwd.path())
        .env_remove("NO_COLOR")
        .env_remove("PBSYNC_INSTANCE")
        .output()
        .expect("run pbsync");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: not JSON:\n{text}"))
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn head(repo: &ScratchRepo) -> String {
    repo.head().to_string()
}

/// A small valid repository: an Application bundle (orphan policy) and an Infrastructure
/// bundle with a project and a tenant cluster profile; a draft that is not valid yet, kept
/// out by `.pbsyncignore`.
fn write_valid_repo(repo: &ScratchRepo, under: &str) {
    let at = |rel: &str| format!("{under}{rel}");
    repo.write(
        &at("bundles/web.yaml"),
        "apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata:
  name: web
  namespace: team-a
spec:
  type: Application
  deletionPolicy: orphan
  workloadProfiles:
    - name: web
  workloadProfileDependencies:
    helmRepositories:
      - name: charts
",
    );
    repo.write(
        &at("bundles/edge.yaml"),
        "apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata:
  name: edge
  namespace: team-a
spec:
  type: Infrastructure
  clusterProfiles:
    - {name: edge-infra, version: 1.0.0}
    - {name: monitoring, version: 2.1.0, scope: tenant}
",
    );
    repo.write(
        &at("shared/profiles.yaml"),
        "apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata:
  name: web
  namespace: team-a
spec:
  type: Application
  workload:
    components:
      - name: frontend
        type: helm-release
---
apiVersion: pbsync.dev/v1
kind: ClusterProfile
metadata:
  name: edge-infra
spec:
  version: 1.0.0
  template:
    type: infra
    cloudType: edge-native
---
apiVersion: pbsync.dev/v1
kind: ClusterProfile
metadata:
  name: monitoring
  scope: tenant
spec:
  version: 2.1.0
  template:
    type: add-on
    cloudType: all
",
    );
    repo.write(
        &at("shared/sources.yaml"),
        "apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata:
  name: charts
  namespace: team-a
spec:
  url: https://charts.example.com
---
apiVersion: core.oam.dev/v1beta1
kind: ComponentDefinition
metadata:
  name: helm-release
  namespace: vela-system
spec:
  workload:
    definition: {apiVersion: helm.toolkit.fluxcd.io/v2, kind: HelmRelease}
",
    );
    repo.write(&at(".pbsyncignore"), "# not ready yet\ndrafts/\n");
    repo.write(&at("drafts/wip.yaml"), "kind: NotYet\n");
}

fn valid_repo() -> ScratchRepo {
    let mut repo = ScratchRepo::new();
    write_valid_repo(&repo, "");
    repo.commit("valid");
    repo
}

fn invalid_repo() -> ScratchRepo {
    let mut repo = ScratchRepo::new();
    repo.replace_tree_with(&fixture("invalid/many-violations-at-once"));
    repo.commit("invalid");
    repo
}

/// Every file under `dir` with its bytes, modification time and inode: an atomic rewrite
/// (temp file + rename) changes the inode even when the bytes are the same.
fn file_states(dir: &Path) -> BTreeMap<String, (Vec<u8>, i64, i64, u64)> {
    list_files(dir)
        .into_iter()
        .map(|rel| {
            let path = dir.join(&rel);
            let meta = std::fs::metadata(&path).expect("metadata");
            let bytes = std::fs::read(&path).expect("read");
            (rel, (bytes, meta.mtime(), meta.mtime_nsec(), meta.ino()))
        })
        .collect()
}

#[test]
fn validate_exits_0_on_a_valid_repository() {
    let repo = valid_repo();
    let run = pbsync(&["validate", "--repo", path_str(repo.path())]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stderr, "");
    insta::assert_snapshot!("cli-validate-valid", run.stdout);
}

#[test]
fn validate_exits_1_listing_every_violation() {
    let repo = invalid_repo();
    let run = pbsync(&["validate", "--repo", path_str(repo.path())]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr, "", "violations are the output, not an error");
    insta::assert_snapshot!("cli-validate-invalid", run.stdout);

    let listed = run
        .stdout
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("warning:"))
        .count()
        - 1;
    let as_json = pbsync(&[
        "validate",
        "--repo",
        path_str(repo.path()),
        "--format",
        "json",
    ]);
    assert_eq!(as_json.code, 1);
    let doc = json(&as_json.stdout);
    assert_eq!(
        doc["violations"].as_array().expect("violations").len(),
        listed
    );
    assert!(
        run.stdout
            .contains(&format!("\n{listed} violation(s) in revision ")),
        "{}",
        run.stdout
    );
}

#[test]
fn validate_json_has_revision_violations_and_warnings() {
    let valid = valid_repo();
    let run = pbsync(&[
        "validate",
        "--repo",
        path_str(valid.path()),
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = json(&run.stdout);
    assert_eq!(
        keys(&doc),
        BTreeSet::from(["revision", "violations", "warnings"])
    );
    assert_eq!(doc["revision"], head(&valid));
    assert_eq!(doc["violations"], serde_json::json!([]));
    assert!(doc["warnings"].is_array());

    let invalid = invalid_repo();
    let run = pbsync(&[
        "validate",
        "--repo",
        path_str(invalid.path()),
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    let doc = json(&run.stdout);
    assert_eq!(
        keys(&doc),
        BTreeSet::from(["revision", "violations", "warnings"])
    );
    assert_eq!(doc["revision"], head(&invalid));
    let violations = doc["violations"].as_array().expect("violations");
    assert!(violations.len() > 5, "{violations:?}");
    for v in violations {
        assert_eq!(keys(v), BTreeSet::from(["path", "line", "rule", "message"]));
        assert!(v["path"].is_string() && v["rule"].is_string() && v["message"].is_string());
        assert!(v["line"].as_u64().is_some_and(|l| l >= 1), "{v}");
    }
    let rules: BTreeSet<&str> = violations
        .iter()
        .filter_map(|v| v["rule"].as_str())
        .collect();
    assert!(rules.contains("R1-application-bundle") && rules.contains("yaml"));
    assert!(
        doc["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .all(Value::is_string)
    );
}

#[test]
fn graph_renders_text_dot_and_json() {
    let repo = valid_repo();
    let r = path_str(repo.path());
    let text = pbsync(&["graph", "--repo", r, "--format", "text"]);
    assert_eq!(text.code, 0, "{text:?}");
    insta::assert_snapshot!("cli-graph-text", text.stdout);

    let as_json = pbsync(&["graph", "--repo", r, "--format", "json"]);
    assert_eq!(as_json.code, 0, "{as_json:?}");
    let doc = json(&as_json.stdout);
    assert_eq!(doc["revision"], head(&repo));
    let nodes = doc["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 7);
    for n in nodes {
        assert_eq!(
            keys(n),
            BTreeSet::from([
                "kind",
                "namespace",
                "name",
                "version",
                "references",
                "desired",
                "external",
                "source",
                "needs",
            ])
        );
    }
    let edges: usize = nodes
        .iter()
        .map(|n| n["needs"].as_array().expect("needs").len())
        .sum();

    let dot = pbsync(&["graph", "--repo", r, "--format", "dot"]);
    assert_eq!(dot.code, 0, "{dot:?}");
    assert!(dot.stdout.starts_with("digraph "), "{}", dot.stdout);
    assert!(dot.stdout.trim_end().ends_with('}'), "{}", dot.stdout);
    assert_eq!(dot.stdout.matches(" -> ").count(), edges, "{}", dot.stdout);
    assert_eq!(dot.stdout.matches("[label=").count(), nodes.len());

    match Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("note: graphviz `dot` is not installed; not rendering the dot output");
        }
        Err(e) => panic!("dot: {e}"),
        Ok(mut child) => {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(dot.stdout.as_bytes())
                .expect("write to dot");
            let out = child.wait_with_output().expect("dot");
            assert!(out.status.success(), "dot rejected the graph");
            assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
        }
    }
}

#[test]
fn plan_detailed_exitcode_is_2_with_changes_0_without_and_1_on_error() {
    let mut repo = valid_repo();
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", path_str(state.path()));
    let r = path_str(repo.path()).to_string();
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "--repo", &r, "--target", &target];
        args.extend_from_slice(extra);
        pbsync(&args)
    };

    let run = plan(&["--detailed-exitcode"]);
    assert_eq!(run.code, 2, "changes present: {run:?}");
    insta::assert_snapshot!("cli-plan-text", run.stdout);
    assert_eq!(plan(&[]).code, 0, "without the flag, changes are success");
    let md = plan(&["--format", "markdown", "--detailed-exitcode"]);
    assert_eq!(md.code, 2);
    insta::assert_snapshot!("cli-plan-markdown", md.stdout);

    let apply = pbsync(&["apply", "--repo", &r, "--target", &target]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let run = plan(&["--detailed-exitcode"]);
    assert_eq!(run.code, 0, "no changes after apply: {run:?}");
    assert!(run.stdout.contains("7 unchanged"), "{}", run.stdout);

    let missing_ref = plan(&["--detailed-exitcode", "--ref", "no-such-branch"]);
    assert_eq!(missing_ref.code, 1, "{missing_ref:?}");

    repo.write("bundles/broken.yaml", "kind: [\n");
    repo.commit("break");
    let invalid = plan(&["--detailed-exitcode"]);
    assert_eq!(invalid.code, 1, "{invalid:?}");
    assert!(
        invalid.stdout.starts_with("bundles/broken.yaml:"),
        "{}",
        invalid.stdout
    );
}

#[test]
fn plan_json_has_the_schema_of_the_issue() {
    let repo = valid_repo();
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", path_str(state.path()));
    let run = pbsync(&[
        "plan",
        "--repo",
        path_str(repo.path()),
        "--target",
        &target,
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = json(&run.stdout);
    for k in ["revision", "changes", "summary", "warnings"] {
        assert!(doc.get(k).is_some(), "missing {k}: {doc}");
    }
    assert_eq!(doc["revision"], head(&repo));
    assert!(doc["warnings"].is_array());
    let summary = &doc["summary"];
    assert_eq!(
        keys(summary),
        BTreeSet::from([
            "create",
            "update",
            "delete",
            "orphan",
            "unchanged",
            "blocked",
            "unknown"
        ])
    );
    let changes = doc["changes"].as_array().expect("changes");
    let counted: u64 = keys(summary)
        .iter()
        .map(|k| summary[k].as_u64().expect("a count"))
        .sum();
    assert_eq!(counted, changes.len() as u64);
    assert_eq!(summary["create"], 7);

    let actions = [
        "create",
        "update",
        "delete",
        "orphan",
        "unchanged",
        "blocked",
        "unknown",
    ];
    let mut seen_kinds = BTreeSet::new();
    for c in changes {
        for k in [
            "action",
            "kind",
            "namespace",
            "scope",
            "name",
            "version",
            "references",
            "reasons",
        ] {
            assert!(c.get(k).is_some(), "change without {k}: {c}");
        }
        assert!(
            actions.contains(&c["action"].as_str().expect("action")),
            "{c}"
        );
        assert!(c["name"].is_string(), "{c}");
        let kind = c["kind"].as_str().expect("kind");
        seen_kinds.insert(kind.to_string());
        if kind == "ClusterProfile" {
            // Palette objects: a scope and a version, no namespace.
            assert!(c["namespace"].is_null(), "{c}");
            assert!(
                matches!(c["scope"].as_str(), Some("project" | "tenant")),
                "{c}"
            );
            assert!(c["version"].is_string(), "{c}");
        } else {
            // Hub objects: a namespace, no scope, no version.
            assert!(c["namespace"].is_string(), "{c}");
            assert!(c["scope"].is_null(), "{c}");
            assert!(c["version"].is_null(), "{c}");
        }
        if kind == "ProfileBundle" {
            assert!(c["references"].is_null(), "bundles have no count: {c}");
        } else {
            assert!(c["references"].as_u64().is_some(), "{c}");
        }
        let reasons = c["reasons"].as_array().expect("reasons");
        assert!(
            !reasons.is_empty() && reasons.iter().all(Value::is_string),
            "{c}"
        );
    }
    assert!(seen_kinds.contains("ClusterProfile") && seen_kinds.contains("ProfileBundle"));
    let scopes: BTreeSet<&str> = changes.iter().filter_map(|c| c["scope"].as_str()).collect();
    assert_eq!(scopes, BTreeSet::from(["project", "tenant"]));
}

#[test]
fn apply_prints_fluxs_words_and_a_second_apply_writes_nothing() {
    let mut repo = valid_repo();
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", path_str(state.path()));
    let r = path_str(repo.path()).to_string();
    let apply = || pbsync(&["apply", "--repo", &r, "--target", &target]);

    let first = apply();
    assert_eq!(first.code, 0, "{first:?}");
    insta::assert_snapshot!("cli-apply-create", first.stdout);
    // The draft kept out by .pbsyncignore never reaches the target.
    assert!(
        list_files(state.path()).iter().all(|f| !f.contains("wip")),
        "{:?}",
        list_files(state.path())
    );

    let before = file_states(state.path());
    let second = apply();
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(second.stdout, "7 unchanged\n");
    let after = file_states(state.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, was) in &before {
        assert!(
            after[path] == *was,
            "{path} was rewritten by an apply with nothing to do"
        );
    }

    // Drop the Application bundle (orphan policy), one profile of the other, and change
    // the one it keeps.
    repo.remove("bundles/web.yaml");
    repo.write(
        "bundles/edge.yaml",
        "apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata:
  name: edge
  namespace: team-a
spec:
  type: Infrastructure
  clusterProfiles:
    - {name: edge-infra, version: 1.0.0}
",
    );
    let profiles = std::fs::read_to_string(repo.path().join("shared/profiles.yaml"))
        .expect("profiles")
        .replace(
            "cloudType: edge-native",
            "cloudType: edge-native\n    packs: []",
        );
    repo.write("shared/profiles.yaml", profiles);
    repo.commit("remove web");
    let third = apply();
    assert_eq!(third.code, 0, "{third:?}");
    insta::assert_snapshot!("cli-apply-update-delete-orphan", third.stdout);
    assert!(
        third.stderr.lines().all(|l| l.starts_with("warning: ")),
        "only warnings on stderr: {}",
        third.stderr
    );
}

#[test]
fn apply_refuses_a_mass_deletion_unless_allowed() {
    let mut repo = valid_repo();
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", path_str(state.path()));
    let r = path_str(repo.path()).to_string();
    assert_eq!(
        pbsync(&["apply", "--repo", &r, "--target", &target]).code,
        0
    );
    repo.remove("bundles/web.yaml");
    repo.remove("bundles/edge.yaml");
    repo.commit("remove every bundle");
    let before = file_states(state.path());

    let refused = pbsync(&["apply", "--repo", &r, "--target", &target]);
    assert_eq!(refused.code, 3, "a refusal exits 3: {refused:?}");
    let errors: Vec<&str> = refused
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", refused.stderr);
    assert!(errors[0].contains("--allow-mass-deletion"), "{}", errors[0]);
    let after = file_states(state.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "a refused apply deletes nothing"
    );

    let allowed = pbsync(&[
        "apply",
        "--repo",
        &r,
        "--target",
        &target,
        "--allow-mass-deletion",
    ]);
    assert_eq!(allowed.code, 0, "{allowed:?}");
    assert!(allowed.stdout.contains(" deleted"), "{}", allowed.stdout);
}

#[test]
fn errors_print_once_as_a_chain_on_stderr() {
    let repo = valid_repo();
    let r = path_str(repo.path());

    let run = pbsync(&["validate", "--repo", r, "--ref", "no-such-branch"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", run.stderr);
    assert!(
        lines[0].starts_with(
            "error: fetch failed: revision \"no-such-branch\" does not name a commit: "
        ),
        "{}",
        lines[0]
    );
    assert_eq!(run.stderr.matches("does not name a commit").count(), 1);

    let run = pbsync(&["graph", "--repo", r, "--path", "no/such/dir"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "error: fetch failed: path \"no/such/dir\" is not a directory at commit {}\n",
            head(&repo)
        )
    );

    let missing = tempfile::tempdir().expect("dir");
    let nowhere = missing.path().join("nowhere");
    let run = pbsync(&["validate", "--repo", path_str(&nowhere)]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "error: fetch failed: cannot open git repository {}: ",
            nowhere.display()
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    let repo = valid_repo();
    let r = path_str(repo.path());
    for cmd in ["plan", "apply"] {
        let run = pbsync(&[cmd, "--repo", r, "--target", "nonsense"]);
        assert_eq!(run.code, 2, "{cmd}: {run:?}");
        assert!(
            run.stderr.starts_with("error: unknown target \"nonsense\""),
            "{cmd}: {}",
            run.stderr
        );
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    for args in [
        &["validate", "--format", "yaml"][..],
        &["plan", "--format", "dot"][..],
        &["frobnicate"][..],
        &["apply", "--no-such-flag"][..],
    ] {
        let run = pbsync(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(
            run.stderr.starts_with("error: "),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(run.stdout, "", "{args:?}");
    }
    let bare = pbsync(&[]);
    assert_eq!(bare.code, 2, "no command: {bare:?}");
    assert!(
        bare.stderr.contains("Usage: pbsync <COMMAND>"),
        "{}",
        bare.stderr
    );
}

#[test]
fn output_has_no_ansi_colour_when_piped() {
    let repo = valid_repo();
    let invalid = invalid_repo();
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", path_str(state.path()));
    let r = path_str(repo.path());
    let runs = [
        pbsync(&["plan", "--repo", r, "--target", &target]),
        pbsync(&["apply", "--repo", r, "--target", &target]),
        pbsync(&["graph", "--repo", r]),
        pbsync(&["validate", "--repo", path_str(invalid.path())]),
        pbsync(&["validate", "--repo", r, "--ref", "nope"]),
    ];
    for run in runs {
        assert!(!run.stdout.is_empty() || !run.stderr.is_empty());
        assert!(
            !run.stdout.contains('\x1b') && !run.stderr.contains('\x1b'),
            "escape codes in piped output: {run:?}"
        );
    }
}

#[test]
fn path_reads_only_that_subdirectory() {
    let mut repo = ScratchRepo::new();
    write_valid_repo(&repo, "deploy/");
    // Outside the configured path: never read.
    repo.write("ci/pipeline.yaml", "stages: [build, test\n");
    repo.commit("deploy/ and other things");
    let r = path_str(repo.path()).to_string();

    for path in ["deploy", "./deploy/"] {
        let run = pbsync(&["validate", "--repo", &r, "--path", path]);
        assert_eq!(run.code, 0, "--path {path}: {run:?}");
    }
    let whole = pbsync(&["validate", "--repo", &r]);
    assert_eq!(whole.code, 1, "the root holds ci/: {whole:?}");

    repo.write("deploy/bundles/bad.yaml", "kind: Nope\n");
    repo.commit("bad file under deploy/");
    let run = pbsync(&["validate", "--repo", &r, "--path", "deploy"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.starts_with("deploy/bundles/bad.yaml:1: shape: "),
        "paths stay repository-relative: {}",
        run.stdout
    );
    assert!(!run.stdout.contains("ci/pipeline.yaml"), "{}", run.stdout);
}

#[test]
fn ref_reads_a_commit_other_than_head() {
    let mut repo = valid_repo();
    let good = head(&repo);
    repo.write("bundles/bad.yaml", "kind: Nope\n");
    repo.commit("bad");
    let r = path_str(repo.path()).to_string();

    assert_eq!(pbsync(&["validate", "--repo", &r]).code, 1);
    for reference in [good.as_str(), "HEAD~1", &good[..8]] {
        let run = pbsync(&[
            "validate", "--repo", &r, "--ref", reference, "--format", "json",
        ]);
        assert_eq!(run.code, 0, "--ref {reference}: {run:?}");
        assert_eq!(json(&run.stdout)["revision"], good.as_str());
    }
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", path_str(state.path()));
    let run = pbsync(&[
        "plan", "--repo", &r, "--ref", "HEAD~1", "--target", &target, "--format", "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(json(&run.stdout)["revision"], good.as_str());
}

#[test]
fn pbsyncignore_keeps_files_out_of_every_command() {
    let mut repo = valid_repo();
    let r = path_str(repo.path()).to_string();
    // With the ignore file the draft is not read at all (valid_repo's draft is invalid).
    assert_eq!(pbsync(&["validate", "--repo", &r]).code, 0);
    let graph = pbsync(&["graph", "--repo", &r, "--format", "json"]);
    assert!(!graph.stdout.contains("drafts/"), "{}", graph.stdout);

    repo.remove(".pbsyncignore");
    repo.commit("no ignore file");
    let run = pbsync(&["validate", "--repo", &r]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.starts_with("drafts/wip.yaml:1: shape: "),
        "{}",
        run.stdout
    );
}

/// A second Application bundle of its own, added to the valid repository.
const EXTRA_BUNDLE: &str = "apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata:
  name: extra
  namespace: team-a
spec:
  type: Application
  workloadProfiles:
    - name: web
";

#[test]
fn apply_refuses_an_older_revision_unless_a_rollback_is_allowed() {
    let mut repo = valid_repo();
    let older = head(&repo);
    repo.write("bundles/extra.yaml", EXTRA_BUNDLE);
    repo.commit("add extra");
    let newer = head(&repo);
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", path_str(state.path()));
    let r = path_str(repo.path()).to_string();
    assert_eq!(
        pbsync(&["apply", "--repo", &r, "--target", &target]).code,
        0
    );
    let extra = state.path().join("team-a/profilebundle/extra.yaml");
    assert!(extra.exists());

    // A re-run of an old pipeline: the older commit would silently delete `extra`.
    let refused = pbsync(&["apply", "--repo", &r, "--ref", &older, "--target", &target]);
    assert_eq!(refused.code, 3, "a refusal exits 3: {refused:?}");
    let error = refused
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error line: {}", refused.stderr));
    assert!(
        error.contains(&older) && error.contains(&newer) && error.contains("older than"),
        "{error}"
    );
    assert!(error.contains("--allow-rollback"), "{error}");
    assert!(extra.exists(), "nothing was deleted");

    let allowed = pbsync(&[
        "apply",
        "--repo",
        &r,
        "--ref",
        &older,
        "--target",
        &target,
        "--allow-rollback",
    ]);
    assert_eq!(allowed.code, 0, "{allowed:?}");
    assert!(
        allowed.stderr.contains("moves the target back"),
        "{}",
        allowed.stderr
    );
    assert!(
        !extra.exists(),
        "the rollback removed what the newer commit added"
    );

    // A commit of another history is refused as unrelated.
    let mut other = ScratchRepo::new();
    write_valid_repo(&other, "");
    other.write("bundles/extra.yaml", EXTRA_BUNDLE);
    other.commit("another history");
    let o = path_str(other.path()).to_string();
    let unrelated = pbsync(&["apply", "--repo", &o, "--target", &target]);
    assert_eq!(unrelated.code, 3, "{unrelated:?}");
    assert!(
        unrelated.stderr.contains("unrelated to")
            || unrelated.stderr.contains("not in this repository"),
        "{}",
        unrelated.stderr
    );
}

#[test]
fn an_apply_waits_for_the_lock_of_another_pass_and_fails_clearly() {
    use pbsync::target::Target as _;
    let repo = valid_repo();
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", path_str(state.path()));
    let r = path_str(repo.path()).to_string();
    // Another pass (here: this test) holds the directory's lock.
    let dir = pbsync::target::local_dir::LocalDir::new(state.path(), "default");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let lock = rt
        .block_on(dir.lock("the-other-pass", std::time::Duration::ZERO))
        .expect("lock");
    let started = std::time::Instant::now();
    let blocked = pbsync(&[
        "apply",
        "--repo",
        &r,
        "--target",
        &target,
        "--lock-wait",
        "1s",
    ]);
    assert_eq!(blocked.code, 1, "{blocked:?}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "it waited"
    );
    assert!(
        blocked
            .stderr
            .contains("another pass of this instance is running")
            && blocked.stderr.contains(".pbsync/lock"),
        "{}",
        blocked.stderr
    );
    assert!(
        !state.path().join("team-a").exists(),
        "nothing was written while the lock was held"
    );
    rt.block_on(lock.release());
    let after = pbsync(&["apply", "--repo", &r, "--target", &target]);
    assert_eq!(after.code, 0, "{after:?}");
    // `pbsync plan` takes no lock.
    let lock = rt
        .block_on(dir.lock("the-other-pass", std::time::Duration::ZERO))
        .expect("lock");
    let plan = pbsync(&["plan", "--repo", &r, "--target", &target]);
    assert_eq!(plan.code, 0, "{plan:?}");
    rt.block_on(lock.release());
}

#[test]
fn apply_wait_on_the_directory_target_reports_healthy_in_plain_lines_when_piped() {
    let repo = valid_repo();
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", path_str(state.path()));
    let args = [
        "apply",
        "--repo",
        path_str(repo.path()),
        "--target",
        &target,
        "--wait",
        "--timeout",
        "30s",
    ];
    let run = pbsync(&args);
    assert_eq!(run.code, 0, "{run:?}");
    let created = run
        .stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("  created"))
        .count();
    assert!(created > 0, "{run:?}");
    // Everything created is waited on: each object is current once its file exists.
    assert!(
        run.stdout
            .contains(&format!("healthy: {created} object(s) current after")),
        "{run:?}"
    );
    // Piped: progress as plain lines on stderr, no terminal control sequences anywhere.
    assert!(
        run.stderr
            .contains(&format!("] {created}/{created} current")),
        "{run:?}"
    );
    // No escape sequences.
    assert!(
        !run.stderr.contains('\u{1b}') && !run.stdout.contains('\u{1b}'),
        "{run:?}"
    );
    // Again: nothing created or changed, nothing to wait for.
    let again = pbsync(&args);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again
            .stdout
            .contains("nothing created or changed: nothing to wait for"),
        "{again:?}"
    );
}

#[test]
fn apply_with_verify_keys_applies_signed_commits_and_refuses_the_rest_with_exit_3() {
    use pbsync_devkit::testkit::signing::{self, GpgKey, Signing, SshKey};

    let gpg = GpgKey::generate("Deploy <deploy@example.com>");
    let ssh = SshKey::generate("ci@example.com");
    let stranger = GpgKey::generate("Mallory <mallory@example.com>");
    let repo = ScratchRepo::new();
    write_valid_repo(&repo, "");
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", path_str(state.path()));
    let r = path_str(repo.path()).to_string();
    let signers = ssh.allowed_signers_file();
    let keys = [
        "--verify-keys",
        path_str(gpg.public_key_file()),
        "--verify-keys",
        path_str(&signers),
    ];
    let run = |cmd: &str| {
        let mut args = vec![cmd, "--repo", &r];
        args.extend(keys);
        if cmd != "validate" {
            args.extend(["--target", &target]);
        }
        pbsync(&args)
    };
    let refused = |cmd: &str, commit: git2::Oid, why: &str| {
        let out = run(cmd);
        assert_eq!(out.code, 3, "{cmd} of {commit}: {out:?}");
        assert_eq!(
            out.stdout, "",
            "{cmd}: nothing is read from a refused commit"
        );
        assert_eq!(
            out.stderr,
            format!("error: commit {commit} is refused: its signature is not trusted: {why}\n"),
            "{cmd}"
        );
    };

    // A good gpg signature: applied.
    let signed = signing::commit(&repo, "signed by deploy", Signing::Gpg(&gpg));
    let first = run("apply");
    assert_eq!(first.code, 0, "{first:?}");
    let applied = file_states(state.path());
    assert!(
        applied.keys().any(|f| f.contains("web")),
        "{:?}",
        applied.keys()
    );

    // Unsigned, removing a bundle: refused by every command, nothing written or deleted.
    repo.remove("bundles/web.yaml");
    let unsigned = signing::commit(&repo, "unsigned removal", Signing::Unsigned);
    for cmd in ["validate", "plan", "apply"] {
        refused(cmd, unsigned, "the commit is not signed");
    }
    assert!(file_states(state.path()) == applied, "nothing written");
    // A pull request whose head is unsigned: its plan is refused too.
    let (base, head) = (signed.to_string(), unsigned.to_string());
    let mut args = vec![
        "plan",
        "--repo",
        &r,
        "--base",
        &base,
        "--head",
        &head,
        "--offline",
    ];
    args.extend(keys);
    let pr = pbsync(&args);
    assert_eq!(pr.code, 3, "{pr:?}");
    assert!(
        pr.stderr.contains("the commit is not signed"),
        "{}",
        pr.stderr
    );

    // Signed by a key that is not configured: refused, naming the key.
    let unknown = signing::commit(&repo, "removal by mallory", Signing::Gpg(&stranger));
    refused(
        "apply",
        unknown,
        &format!(
            "the commit is signed by OpenPGP key {}, which is not among the configured keys",
            stranger.fingerprint
        ),
    );
    assert!(file_states(state.path()) == applied, "nothing written");

    // A good ssh signature: applied (the removal goes through).
    let by_ssh = signing::commit(&repo, "removal signed by ci", Signing::Ssh(&ssh));
    let second = run("apply");
    assert_eq!(second.code, 0, "{second:?}");
    let removed = file_states(state.path());
    assert!(removed != applied, "the signed removal was applied");

    // That signed commit with another tree put under its signature: refused.
    let old_tree = signing::tree_of(&repo, signed);
    let new_tree = signing::tree_of(&repo, by_ssh);
    let forged = signing::tamper(&repo, by_ssh, |text| {
        text.replace(&format!("tree {new_tree}"), &format!("tree {old_tree}"))
    });
    let out = run("apply");
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.starts_with(&format!(
            "error: commit {forged} is refused: its signature is not trusted: the SSH signature by key SHA256:"
        )) && out.stderr.contains("does not verify: the commit was changed after it was signed"),
        "{}",
        out.stderr
    );
    assert!(file_states(state.path()) == removed, "nothing written");
}

#[test]
fn a_verify_keys_file_that_is_not_a_key_is_a_configuration_error() {
    let repo = valid_repo();
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("keys");
    std::fs::write(&bad, "ci@example.com ssh-ed25519 garbage\n").expect("write");
    let out = pbsync(&[
        "apply",
        "--repo",
        path_str(repo.path()),
        "--target",
        &format!("dir:{}", path_str(dir.path())),
        "--verify-keys",
        path_str(&bad),
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.starts_with(&format!(
            "error: --verify-keys: {}:1: not an SSH public key",
            bad.display()
        )),
        "{}",
        out.stderr
    );
}
