//! Bad input. Every invalid repository under `tests/fixtures/invalid/<case>/` is committed to
//! a real git repository and validated; its violations are snapshotted exactly as
//! `pbsync validate` prints them (`path:line: rule: message`), and `apply` of it must leave
//! the target empty. Hostile input (not UTF-8, 50 MB, deep nesting, alias bombs) is generated
//! here rather than committed. Review snapshot changes with `cargo insta review`.

use std::fmt::Write as _;

use pbsync::engine::{self, Error, Goal, Input};
use pbsync::model::{Kind, Rule, Violation};
use pbsync::source::Content;
use pbsync::target::RunOptions;
use pbsync::target::local_dir::LocalDir;

use pbsync_devkit::testkit::repo::signature;
use pbsync_devkit::testkit::{ScratchRepo, block_on, list_files};

use crate::support::{context, fixture, load_snapshot};

/// How a fixture is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// `validate` without a target: the repository alone.
    Repo,
    /// References that may live outside the repository (cluster profiles, definitions) are
    /// only warnings without a target; they become violations when planned against one, here
    /// an empty local directory.
    Live,
}

fn commit_fixture(name: &str) -> ScratchRepo {
    let mut repo = ScratchRepo::new();
    repo.replace_tree_with(&fixture(&format!("invalid/{name}")));
    repo.commit(name);
    repo
}

/// Renders violations and warnings the way `pbsync validate` prints them.
fn render(violations: &[Violation], warnings: &[String]) -> String {
    let mut out = String::new();
    for v in violations {
        let _ = writeln!(out, "{v}");
    }
    for w in warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

fn assert_sorted_by_file_and_line(name: &str, violations: &[Violation]) {
    let places: Vec<(&str, u32)> = violations.iter().map(|v| (&*v.path, v.line)).collect();
    let mut sorted = places.clone();
    sorted.sort_unstable();
    assert_eq!(
        places, sorted,
        "{name}: violations not sorted by file and line"
    );
    assert!(
        violations.iter().all(|v| v.line > 0),
        "{name}: every violation has a line"
    );
}

/// Validates the fixture and returns the text to snapshot.
fn violations_of(name: &str, check: Check) -> String {
    let repo = commit_fixture(name);
    let ctx = context(&repo);
    let snapshot = ctx.fetch().expect("fetch");
    let mut out = String::new();
    let result = match check {
        Check::Repo => load_snapshot(&snapshot).map(|_| ()),
        Check::Live => {
            // Without a target the commit is valid; what it cannot know yet is a warning.
            let loaded = load_snapshot(&snapshot)
                .unwrap_or_else(|e| panic!("{name}: {}", pbsync::error_chain(&e)));
            assert!(
                !loaded.warnings.is_empty(),
                "{name}: an undeclared external reference must at least be a warning"
            );
            out.push_str("# validate without a target: valid, with warnings\n");
            out.push_str(&render(&[], &loaded.warnings));
            out.push_str("# plan against an empty dir: target\n");
            let state = tempfile::tempdir().expect("state dir");
            let target = LocalDir::new(state.path().join("state"), "default");
            block_on(engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&target))).map(|_| ())
        }
    };
    match result {
        Err(Error::Invalid {
            violations,
            warnings,
            ..
        }) => {
            assert!(
                !violations.0.is_empty(),
                "{name}: invalid without violations"
            );
            assert_sorted_by_file_and_line(name, &violations.0);
            out.push_str(&render(&violations.0, &warnings));
            out
        }
        Err(e) => panic!(
            "{name}: failed, but not as invalid: {}",
            pbsync::error_chain(&e)
        ),
        Ok(()) => panic!("{name}: the fixture is valid"),
    }
}

/// `apply` refuses the commit and writes nothing at all: no object, no inventory, not even
/// the target directory's own state.
fn apply_writes_nothing(name: &str) {
    let repo = commit_fixture(name);
    let ctx = context(&repo);
    let snapshot = ctx.fetch().expect("fetch");
    let state = tempfile::tempdir().expect("state dir");
    let target = LocalDir::new(state.path(), "default");
    let result = block_on(engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(&target, RunOptions::default()),
    ));
    assert!(
        matches!(result, Err(Error::Invalid { .. })),
        "{name}: apply must refuse an invalid commit, got {:?}",
        result
            .as_ref()
            .map(|_| ())
            .map_err(|e| pbsync::error_chain(e))
    );
    // Only the lock an applying pass takes before it reads the live state may exist.
    let files = list_files(state.path());
    assert!(
        files.iter().all(|f| f == ".pbsync/lock"),
        "{name}: apply of an invalid commit wrote {files:?}"
    );
}

macro_rules! invalid_repositories {
    ($($check:ident $name:ident => $dir:literal,)*) => {
        $(
            #[test]
            fn $name() {
                let text = violations_of($dir, Check::$check);
                insta::assert_snapshot!($dir, text);
                apply_writes_nothing($dir);
            }
        )*

        #[test]
        fn every_invalid_fixture_directory_has_a_test() {
            let listed = [$($dir),*];
            let mut missing = Vec::new();
            for e in std::fs::read_dir(fixture("invalid")).expect("fixtures/invalid") {
                let name = e.expect("entry").file_name().to_string_lossy().to_string();
                if !listed.contains(&name.as_str()) {
                    missing.push(name);
                }
            }
            missing.sort();
            assert!(missing.is_empty(), "fixtures without a test: {missing:?}");
        }
    };
}

invalid_repositories! {
    // YAML syntax.
    Repo bad_indentation_is_a_yaml_error => "yaml-bad-indentation",
    Repo an_unclosed_flow_sequence_is_a_yaml_error => "yaml-unclosed-flow-sequence",
    Repo an_unclosed_flow_mapping_is_a_yaml_error => "yaml-unclosed-flow-mapping",
    Repo tab_indentation_is_a_yaml_error => "yaml-tab-indentation",
    Repo a_duplicate_key_is_a_yaml_error_at_the_second_key => "yaml-duplicate-key",
    Repo an_unterminated_quoted_string_is_a_yaml_error => "yaml-unterminated-quoted-string",
    // Shapes.
    Repo a_bundle_without_spec_is_a_shape_error => "shape-spec-missing",
    Repo a_string_where_a_list_belongs_is_a_shape_error => "shape-wrong-field-type",
    Repo a_version_written_as_a_number_is_a_shape_error => "shape-version-written-as-a-number",
    Repo an_unknown_field_in_a_bundle_spec_is_reported_at_its_key => "shape-unknown-field-in-bundle-spec",
    Repo a_document_that_is_a_list_is_a_shape_error => "shape-document-is-a-list",
    Repo a_document_without_api_version_is_a_shape_error => "shape-api-version-missing",
    Repo a_document_without_kind_is_a_shape_error => "shape-kind-missing",
    Repo an_api_version_of_another_kind_is_a_shape_error => "shape-wrong-api-version-for-kind",
    Repo an_unknown_bundle_type_is_a_shape_error => "shape-bad-bundle-type",
    Repo an_unknown_deletion_policy_is_a_shape_error => "shape-bad-deletion-policy",
    Repo an_unknown_cluster_profile_type_is_a_shape_error => "shape-bad-cluster-profile-type",
    Repo a_lower_case_workload_profile_type_is_a_shape_error => "shape-bad-workload-profile-type",
    Repo a_kind_pbsync_does_not_manage_is_an_error => "unknown-kind",
    // Rules 1-5 of domain.md §3.
    Repo an_application_bundle_cannot_hold_a_cluster_profile => "r1-application-bundle-with-cluster-profile",
    Repo an_application_bundle_cannot_hold_an_infrastructure_workload_profile => "r1-application-bundle-with-infrastructure-workload-profile",
    Repo an_application_bundle_needs_an_application_or_model_profile => "r1-application-bundle-without-application-or-model-profile",
    Repo an_infrastructure_bundle_needs_an_infrastructure_cluster_profile => "r2-infrastructure-bundle-without-infrastructure-cluster-profile",
    Repo an_infrastructure_bundle_cannot_hold_an_application_workload_profile => "r2-infrastructure-bundle-with-application-workload-profile",
    Repo a_fullstack_bundle_needs_an_infrastructure_cluster_profile => "r3-fullstack-bundle-without-infrastructure-cluster-profile",
    Repo a_fullstack_bundle_needs_an_application_or_model_profile => "r3-fullstack-bundle-without-application-or-model-profile",
    Repo a_bundle_never_holds_application_and_model_profiles => "r4-application-and-model-profiles-together",
    Repo a_bundle_holds_at_most_one_infrastructure_or_full_cluster_profile => "r5-two-infrastructure-or-full-cluster-profiles",
    // Rule 6: every name resolves.
    Repo a_dangling_workload_profile_is_reported_once => "r6-dangling-workload-profile",
    Repo a_dangling_helm_repository_is_an_error => "r6-dangling-helm-repository",
    Repo a_dangling_oci_repository_is_an_error => "r6-dangling-oci-repository",
    Live a_dangling_compute_pool_bundle_ref_is_an_error => "r6-dangling-compute-pool-bundle-ref",
    Live an_ai_workload_names_a_missing_bundle_and_pool => "r6-dangling-ai-workload-refs",
    Live a_cluster_profile_found_nowhere_is_an_error_at_plan_time => "r6-dangling-cluster-profile",
    Live a_component_type_found_nowhere_is_an_error_at_plan_time => "r6-dangling-component-definition",
    Live a_trait_type_found_nowhere_is_an_error_at_plan_time => "r6-dangling-trait-definition",
    Live a_policy_type_found_nowhere_is_an_error_at_plan_time => "r6-dangling-policy-definition",
    // Rules 7 and 8: inference engines and the seeds' workflow tables.
    Repo a_model_on_another_inference_engine_than_its_pool_names_both => "r7-model-on-another-inference-engine-than-its-pool",
    Repo a_compute_pool_needs_an_infrastructure_or_fullstack_bundle => "r8-compute-pool-from-an-application-bundle",
    Repo a_deployment_onto_an_existing_pool_needs_a_shared_pool => "r8-deployment-onto-a-dedicated-pool",
    Repo a_dedicated_deployment_needs_infrastructure_beside_its_application => "r8-dedicated-deployment-without-infrastructure",
    Repo a_deployment_onto_a_shared_pool_brings_no_infrastructure_bundle => "r8-infrastructure-bundle-onto-a-shared-pool",
    Repo an_app_deployment_cannot_deploy_a_model_bundle => "r8-app-deployment-of-a-model-bundle",
    // Rule 9: names, versions, explicit namespaces.
    Repo an_upper_case_name_is_not_rfc_1123 => "r9-name-upper-case",
    Repo an_underscore_in_a_name_is_not_rfc_1123 => "r9-name-with-underscore",
    Repo a_name_over_253_characters_is_not_rfc_1123 => "r9-name-too-long",
    Repo a_missing_namespace_is_never_guessed => "r9-namespace-missing",
    Repo a_namespace_with_a_dot_is_not_an_rfc_1123_label => "r9-namespace-invalid",
    Repo an_empty_cluster_profile_version_is_an_error_where_declared_and_referenced => "r9-cluster-profile-version-empty",
    Repo a_cluster_profile_scope_is_project_or_tenant => "r9-cluster-profile-bad-scope",
    Repo a_bundle_reference_scope_is_project_or_tenant => "r9-bundle-cluster-profile-ref-bad-scope",
    // Graph: cycles and duplicates.
    Repo a_cycle_of_two_names_both_members => "cycle-between-two-workload-profiles",
    Repo a_cycle_of_three_across_kinds_names_every_member => "cycle-through-three-kinds",
    Repo an_object_depending_on_itself_is_a_cycle => "cycle-object-depends-on-itself",
    Repo a_duplicate_declared_differently_names_both_files => "duplicate-declared-differently",
    // Several at once.
    Repo every_violation_of_a_commit_is_reported_together => "many-violations-at-once",
    Repo one_bad_document_does_not_hide_the_others_of_its_file => "multi-document-file-with-one-bad-document",
    Repo ignored_files_are_skipped_and_the_rest_is_checked => "pbsyncignore-skips-only-ignored-files",
}

const BUNDLE_WITH_CHARTS: &str = "\
apiVersion: spectrocloud.com/v1beta1
kind: ProfileBundle
metadata:
  name: web
  namespace: team-a
spec:
  type: Application
  workloadProfiles:
    - name: web
  workloadProfileDependencies:
    helmRepositories:
      - name: charts
---
apiVersion: spectrocloud.com/v1beta1
kind: WorkloadProfile
metadata:
  name: web
  namespace: team-a
spec:
  type: Application
  workload:
    components: []
";

#[test]
fn identical_duplicates_are_merged_with_a_warning_not_an_error() {
    let mut repo = ScratchRepo::new();
    repo.write("bundle.yaml", BUNDLE_WITH_CHARTS);
    repo.write(
        "team-a/charts.yaml",
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata:\n  name: charts\n  namespace: team-a\nspec:\n  url: https://charts.example.com\n",
    );
    // The same object, written differently: a comment and flow style change nothing.
    repo.write(
        "team-b/charts.yaml",
        "# Copied from team-a.\napiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata: {name: charts, namespace: team-a}\nspec: {url: 'https://charts.example.com'}\n",
    );
    repo.commit("identical duplicate");
    let ctx = context(&repo);
    let snapshot = ctx.fetch().expect("fetch");
    let loaded = load_snapshot(&snapshot).unwrap_or_else(|e| panic!("{}", pbsync::error_chain(&e)));
    let repos: Vec<_> = loaded
        .graph
        .desired_state()
        .objects
        .iter()
        .filter(|o| o.key.kind == Kind::HelmRepository)
        .collect();
    assert_eq!(repos.len(), 1, "merged into one object");
    assert_eq!(
        loaded.warnings,
        vec![
            "HelmRepository team-a/charts is declared identically in team-a/charts.yaml:1 and team-b/charts.yaml:2; merged"
                .to_string()
        ]
    );

    let state = tempfile::tempdir().expect("state dir");
    let target = LocalDir::new(state.path(), "default");
    block_on(engine::run(
        &ctx,
        Input::of(&snapshot),
        Goal::Apply(&target, RunOptions::default()),
    ))
    .unwrap_or_else(|e| panic!("{}", pbsync::error_chain(&e)));
    assert!(
        list_files(state.path()).contains(&"team-a/helmrepository/charts.yaml".to_string()),
        "{:?}",
        list_files(state.path())
    );
}

/// Commits `files` (path, bytes) on top of HEAD straight through git2, without the work tree.
fn commit_blobs(repo: &ScratchRepo, files: &[(&str, &[u8])]) -> git2::Oid {
    let git = repo.git();
    let parent = git.head().ok().and_then(|h| h.peel_to_commit().ok());
    let base = parent.as_ref().map(|c| c.tree().expect("tree"));
    let mut builder = git.treebuilder(base.as_ref()).expect("treebuilder");
    for (path, bytes) in files {
        let blob = git.blob(bytes).expect("blob");
        builder.insert(path, blob, 0o100_644).expect("insert");
    }
    let tree = git.find_tree(builder.write().expect("tree")).expect("tree");
    // The kit's author, at its epoch (tick 0) whatever was committed before.
    let sig = signature(0);
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    git.commit(Some("HEAD"), &sig, &sig, "blobs", &tree, &parents)
        .expect("commit")
}

/// The violations of HEAD of a repository holding only `files`.
fn violations_of_files(files: &[(&str, &[u8])]) -> Vec<Violation> {
    let repo = ScratchRepo::new();
    commit_blobs(&repo, files);
    let ctx = context(&repo);
    let snapshot = ctx.fetch().expect("fetch");
    match load_snapshot(&snapshot) {
        Err(Error::Invalid { violations, .. }) => violations.0,
        Err(e) => panic!("failed, but not as invalid: {}", pbsync::error_chain(&e)),
        Ok(_) => panic!("the repository is valid"),
    }
}

fn only(violations: &[Violation]) -> &Violation {
    assert_eq!(violations.len(), 1, "{violations:#?}");
    &violations[0]
}

#[test]
fn a_file_that_is_not_utf8_is_an_encoding_error_at_the_line_of_the_bad_byte() {
    // Latin-1 "é", as an editor set to the wrong encoding writes it.
    let latin1 = b"apiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata:\n  name: caf\xe9\n  namespace: team-a\nspec:\n  url: https://charts.example.com\n";
    let offset = latin1.iter().position(|&b| b == 0xe9).expect("the é");
    let v = violations_of_files(&[("latin1.yaml", latin1)]);
    assert_eq!(
        only(&v).to_string(),
        format!(
            "latin1.yaml:4: encoding: file is not valid UTF-8 (invalid byte at offset {offset})"
        )
    );
}

#[test]
fn a_50_mb_file_is_refused_by_size_without_being_read() {
    const SIZE: usize = 50 * 1024 * 1024;
    let line = b"# padding padding padding padding padding padding padding padding\n";
    let big: Vec<u8> = line.iter().copied().cycle().take(SIZE).collect();
    let repo = ScratchRepo::new();
    commit_blobs(
        &repo,
        &[
            ("big.yaml", &big),
            ("bundle.yaml", BUNDLE_WITH_CHARTS.as_bytes()),
        ],
    );
    drop(big);
    let ctx = context(&repo);
    let snapshot = ctx.fetch().expect("fetch");
    let file = snapshot
        .files
        .iter()
        .find(|f| &*f.path == "big.yaml")
        .expect("big.yaml is listed");
    // Only its size was read (from the object header), never its content.
    assert_eq!(file.content, Content::TooLarge(SIZE as u64));
    let violations = match load_snapshot(&snapshot) {
        Err(Error::Invalid { violations, .. }) => violations.0,
        other => panic!(
            "expected invalid, got {:?}",
            other.map(|_| ()).map_err(|e| pbsync::error_chain(&e))
        ),
    };
    let rendered: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered,
        vec![
            format!(
                "big.yaml:1: file-size: file is {SIZE} bytes, over the {} byte limit; split it or add it to .pbsyncignore",
                ctx.limits.max_file_bytes
            ),
            // The other files are still checked.
            "bundle.yaml:12: R6-unresolved-reference: Helm repository HelmRepository team-a/charts is not declared in the repository".to_string(),
        ]
    );
}

#[test]
fn deep_block_nesting_is_refused_at_the_line_it_gets_too_deep() {
    let mut text = String::from("apiVersion: v1\nkind: ConfigMap\ndata:\n");
    for depth in 0..500 {
        let _ = writeln!(text, "{}k{depth}:", "  ".repeat(depth + 1));
    }
    let v = violations_of_files(&[("deep.yaml", text.as_bytes())]);
    // The root mapping is level 1; the mapping that starts with k{d} (line 4 + d) is level
    // d + 2, so level 65, one past the limit, starts with k63 on line 67.
    assert_eq!(
        only(&v).to_string(),
        "deep.yaml:67: yaml: document nests deeper than 64 levels"
    );
}

#[test]
fn deep_compact_sequences_are_refused_on_their_line() {
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\ndata:\n  deep:\n    {}x\n",
        "- ".repeat(100_000)
    );
    let v = violations_of_files(&[("deep.yaml", text.as_bytes())]);
    assert_eq!(
        only(&v).to_string(),
        "deep.yaml:5: yaml: document nests deeper than 64 levels"
    );
}

#[test]
fn deep_flow_nesting_is_refused_on_its_line() {
    for depth in [100, 1_000_000] {
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\ndata:\n  deep: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let v = violations_of_files(&[("deep.yaml", text.as_bytes())]);
        let v = only(&v);
        assert_eq!(
            (&*v.path, v.line, v.rule),
            ("deep.yaml", 4, Rule::Yaml),
            "{v}"
        );
        assert!(
            v.message.contains("deeper than"),
            "depth {depth}: {}",
            v.message
        );
    }
}

#[test]
fn an_alias_bomb_stops_at_the_node_budget_on_the_line_that_crosses_it() {
    // "Billion laughs": each line holds ten aliases of the line before, 10^9 nodes in all.
    let mut text = String::from(
        "apiVersion: v1\nkind: ConfigMap\nlol0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        let _ = writeln!(text, "lol{i}: &a{i} [{}]", vec![prev; 10].join(", "));
    }
    let v = violations_of_files(&[("bomb.yaml", text.as_bytes())]);
    // lol5 (line 8) is the first to expand past a million nodes.
    assert_eq!(
        only(&v).to_string(),
        "bomb.yaml:8: yaml: file expands to more than 1000000 YAML nodes (an alias bomb?); refusing to read further"
    );
}

#[test]
fn an_alias_bomb_through_merge_keys_stops_at_the_node_budget() {
    // Each mapping merges the one before and holds it twice more: the size doubles per level.
    let mut text = String::from("apiVersion: v1\nkind: ConfigMap\nm0: &m0 {a: 1, b: 2}\n");
    for i in 1..40 {
        let p = i - 1;
        let _ = writeln!(text, "m{i}: &m{i}\n  <<: *m{p}\n  x{i}: [*m{p}, *m{p}]");
    }
    let v = violations_of_files(&[("bomb.yaml", text.as_bytes())]);
    let v = only(&v);
    assert_eq!((&*v.path, v.rule), ("bomb.yaml", Rule::Yaml), "{v}");
    assert!(v.message.contains("alias bomb"), "{v}");
    assert!(v.line > 3 && v.line < 3 + 3 * 40, "{v}");
}
