//! Golden plans: each deletion rule of domain.md §4 (and the create/update paths) as one
//! fixture under `tests/fixtures/plans/<case>/case.yaml`, run through the real pipeline
//! (git repository in a temp dir -> plan -> apply to a local-directory target), with every
//! `plan` step's rendering snapshotted. Review changes with `cargo insta review`.
//!
//! A case is a list of steps:
//! - `commit: {files: {path: content}, remove: [path]}`: change the tree and commit;
//! - `apply: {allow-mass-deletion: bool, expect: ok|guard-refused|failed}`: apply HEAD;
//! - `live-remove: path` / `live-write: {path, content}` / `live-set: {path, pointer, value}`:
//!   change the target behind pbsync's back (out-of-band edits, foreign objects);
//! - `plan: {}`: plan HEAD and snapshot the plan;
//! - `validate: {}`: validate HEAD without a target (offline) and snapshot what it says.
//!
//! `options` sets `adopt`, `cascade` (client|server) and `instance`. `commit`, `apply`,
//! `plan` and `validate` take `as: <instance>` to act as another pbsync instance, with its own
//! repository, on the same directory (two teams, one hub).

use std::collections::BTreeMap;

use std::path::Path;

use pbsync::engine::{self, Error, Goal, Input};
use pbsync::plan::{Cascade, render_text};
use pbsync::target::RunOptions;
use pbsync::target::local_dir::LocalDir;
use serde_json::Value;

use pbsync_devkit::testkit::{ScratchRepo, block_on};

use crate::support::fixture;

fn load_case(name: &str) -> Value {
    let path = fixture(&format!("plans/{name}/case.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs = pbsync::model::yaml::load_all(&text, Default::default()).expect("case.yaml parses");
    docs[0].root.to_json()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} must be a string: {v}"))
}

/// One pbsync instance of a case: its repository, its view of the directory, its options.
struct Instance {
    repo: ScratchRepo,
    target: LocalDir,
    ctx: engine::Context,
}

impl Instance {
    fn new(state: &Path, instance: &str, opts: &Value) -> Self {
        let repo = ScratchRepo::new();
        let target = LocalDir::new(state, instance);
        let mut ctx = engine::Context::new(repo.path(), "HEAD", "");
        ctx.plan.instance = instance.to_string();
        ctx.plan.adopt = opts.get("adopt").and_then(Value::as_bool).unwrap_or(false);
        if opts.get("cascade").and_then(Value::as_str) == Some("server") {
            ctx.plan.cascade = Cascade::Server;
        }
        Self { repo, target, ctx }
    }
}

/// Runs one case and returns the text to snapshot.
fn run_case(name: &str) -> String {
    let case = load_case(name);
    let state = tempfile::tempdir().expect("state dir");
    let opts = case.get("options").cloned().unwrap_or(Value::Null);
    let default = opts
        .get("instance")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
    let mut out = String::new();
    if let Some(d) = case.get("description").and_then(Value::as_str) {
        out.push_str(&format!("# {}\n", d.trim()));
    }
    let steps = case["steps"].as_array().expect("steps: a list");
    for (i, step) in steps.iter().enumerate() {
        let (op, arg) = step
            .as_object()
            .and_then(|m| m.iter().next())
            .expect("a step is a one-key mapping");
        let who = arg
            .get("as")
            .and_then(Value::as_str)
            .unwrap_or(&default)
            .to_string();
        let Instance { repo, target, ctx } = instances
            .entry(who.clone())
            .or_insert_with(|| Instance::new(state.path(), &who, &opts));
        let target = &*target;
        let ctx = &*ctx;
        let by = if who == default {
            String::new()
        } else {
            format!(" (as {who})")
        };
        match op.as_str() {
            "commit" => {
                if let Some(files) = arg.get("files").and_then(Value::as_object) {
                    for (path, content) in files {
                        repo.write(path, str_of(content, "file content"));
                    }
                }
                for path in arg
                    .get("remove")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    repo.remove(str_of(path, "removed path"));
                }
                repo.commit(&format!("step {i}"));
            }
            "apply" => {
                let allow = arg
                    .get("allow-mass-deletion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let expect = arg.get("expect").and_then(Value::as_str).unwrap_or("ok");
                let snapshot = ctx.fetch().expect("fetch");
                let result = block_on(engine::run(
                    ctx,
                    Input::of(&snapshot),
                    Goal::Apply(
                        target,
                        RunOptions {
                            allow_mass_deletion: allow,
                            ..RunOptions::default()
                        },
                    ),
                ));
                let got = match &result {
                    Ok(_) => "ok",
                    Err(Error::Apply { source, .. })
                        if matches!(
                            source.refusal(),
                            Some(pbsync::guard::Refusal::MassDeletion(_))
                        ) =>
                    {
                        "guard-refused"
                    }
                    Err(_) => "failed",
                };
                assert_eq!(
                    got,
                    expect,
                    "step {i} apply: {:?}",
                    result.as_ref().err().map(|e| pbsync::error_chain(e))
                );
                let show = arg.get("show").and_then(Value::as_bool).unwrap_or(false);
                if let (Ok(report), true) = (&result, show) {
                    out.push_str(&format!("\n## step {i}: apply{by}\n"));
                    for e in &report.changes().entries {
                        out.push_str(&format!("{} {}\n", e.key, e.outcome));
                    }
                }
            }
            "live-remove" => {
                let rel = str_of(arg, "live-remove path");
                std::fs::remove_file(state.path().join(rel)).expect("live-remove");
                edit_inventory(state.path(), |inv| {
                    let key = inventory_key(rel);
                    for rec in inv["instances"]
                        .as_object_mut()
                        .into_iter()
                        .flatten()
                        .map(|(_, r)| r)
                    {
                        rec["objects"].as_object_mut().map(|o| o.remove(&key));
                    }
                });
            }
            "live-write" => {
                let path = state.path().join(str_of(&arg["path"], "path"));
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(path, str_of(&arg["content"], "content")).expect("live-write");
            }
            "live-set" => {
                let path = state.path().join(str_of(&arg["path"], "path"));
                let text = std::fs::read_to_string(&path).expect("live file");
                let mut v = pbsync::model::yaml::load_all(&text, Default::default()).expect("yaml")
                    [0]
                .root
                .to_json();
                *v.pointer_mut(str_of(&arg["pointer"], "pointer"))
                    .expect("pointer exists") = arg["value"].clone();
                std::fs::write(path, pbsync::model::yaml::to_string(&v)).expect("write");
            }
            "validate" => {
                let snapshot = ctx.fetch().expect("fetch");
                out.push_str(&format!("\n## step {i}: validate without a target{by}\n"));
                match block_on(engine::run::<engine::NoTarget>(
                    ctx,
                    Input::of(&snapshot),
                    Goal::Validate(None),
                )) {
                    Ok(report) => {
                        out.push_str("valid\n");
                        for w in &report.warnings {
                            out.push_str(&format!("warning: {w}\n"));
                        }
                    }
                    Err(Error::Invalid { violations, .. }) => {
                        for v in &violations.0 {
                            out.push_str(&format!("{v}\n"));
                        }
                    }
                    Err(e) => panic!("step {i}: {}", pbsync::error_chain(&e)),
                }
            }
            "plan" => {
                let snapshot = ctx.fetch().expect("fetch");
                out.push_str(&format!("\n## step {i}: plan{by}\n"));
                match block_on(engine::run(ctx, Input::of(&snapshot), Goal::Plan(target))) {
                    Ok(planned) => out.push_str(&render_text(planned.plan(), false, true)),
                    Err(Error::Invalid { violations, .. }) => {
                        for v in &violations.0 {
                            out.push_str(&format!("{v}\n"));
                        }
                    }
                    Err(e) => panic!("step {i}: {}", pbsync::error_chain(&e)),
                }
            }
            other => panic!("unknown step {other}"),
        }
    }
    out
}

fn inventory_key(rel: &str) -> String {
    let parts: Vec<&str> = rel.split('/').collect();
    let kind = pbsync::model::Kind::ALL
        .into_iter()
        .find(|k| k.dir_name() == parts[1])
        .expect("a kind directory");
    format!("{kind}/{}/{}", parts[0], parts[2].trim_end_matches(".yaml"))
}

fn edit_inventory(root: &Path, f: impl FnOnce(&mut Value)) {
    let path = root.join(".pbsync/inventory.json");
    let mut inv: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("inventory")).expect("json");
    f(&mut inv);
    std::fs::write(path, serde_json::to_vec_pretty(&inv).expect("json")).expect("write");
}

macro_rules! cases {
    ($($name:ident => $dir:literal,)*) => {
        $(
            #[test]
            fn $name() {
                let text = run_case($dir);
                insta::assert_snapshot!($dir, text);
            }
        )*

        #[test]
        fn every_fixture_directory_has_a_test() {
            let listed = [$($dir),*];
            let dir = fixture("plans");
            let mut missing = Vec::new();
            for e in std::fs::read_dir(&dir).expect("fixtures/plans") {
                let name = e.expect("entry").file_name().to_string_lossy().to_string();
                if !listed.contains(&name.as_str()) {
                    missing.push(name);
                }
            }
            assert!(missing.is_empty(), "fixtures without a test: {missing:?}");
        }
    };
}

cases! {
    create_from_scratch => "create-from-scratch",
    update_shows_changed_fields => "update-shows-changed-fields",
    second_plan_is_all_unchanged => "second-plan-is-all-unchanged",
    unused_objects_are_warned_not_created => "unused-objects-are-warned-not-created",
    shared_object_kept_while_referenced => "shared-object-kept-while-referenced",
    last_reference_deletes_shared_objects => "last-reference-deletes-shared-objects",
    orphan_policy_releases_dependents => "orphan-policy-releases-dependents",
    orphan_from_last_git_version => "orphan-from-last-git-version",
    orphan_from_live_object => "orphan-from-live-object",
    any_orphan_referrer_orphans => "any-orphan-referrer-orphans",
    dropped_reference_deletes_shared_object => "dropped-reference-deletes-shared-object",
    out_of_band_bundle_removal_orphans => "out-of-band-bundle-removal-orphans",
    compute_pool_blocks_bundle_deletion => "compute-pool-blocks-bundle-deletion",
    pool_removed_with_bundle_is_deleted_first => "pool-removed-with-bundle-is-deleted-first",
    mass_deletion_guard_refuses => "mass-deletion-guard-refuses",
    foreign_objects_are_never_touched => "foreign-objects-are-never-touched",
    adopted_objects_are_released_never_deleted => "adopted-objects-are-released-never-deleted",
    released_objects_are_taken_back => "released-objects-are-taken-back",
    cascade_server_reports_dependents => "cascade-server-reports-dependents",
    foreign_bundle_keeps_shared_object => "foreign-bundle-keeps-shared-object",
    deployments_come_and_go => "deployments-come-and-go",
    fullstack_bundle_parts_per_workflow => "fullstack-bundle-parts-per-workflow",
    desired_pool_keeps_its_bundle => "desired-pool-keeps-its-bundle",
    deploy_onto_another_instances_pool => "deploy-onto-another-instances-pool",
}
