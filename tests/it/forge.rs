//! Talking back to Git through GitLab's API, served by the test kit's simulator (GitLab is
//! not built here; every request is checked against GitLab's documented shapes and a refused
//! one fails the test). The same calls against a real Gitea are in `gitea.rs` and
//! `tests/daemon.rs`.

use std::process::Command;
use std::time::Duration;

use pbsync::forge::{self, CommitStatus, Forge, Provider};
use pbsync::plan::comment::MARKER;
use pbsync::target::Secret;
use pbsync_devkit::testkit::gitlab::GitlabSim;
use pbsync_devkit::testkit::{ScratchRepo, block_on, yaml};

const TOKEN: &str = "glpat-test-token";
const PROJECT: &str = "platform/bundles";

fn client(sim: &GitlabSim) -> Forge {
    Forge::new(&forge::Settings {
        provider: Provider::Gitlab,
        api_url: sim.api_url.clone(),
        repository: PROJECT.into(),
        token: Secret::new(TOKEN),
        timeout: Duration::from_secs(10),
    })
    .expect("client")
}

#[test]
fn gitlab_statuses_use_gitlab_s_states_and_names_and_fit_its_limit() {
    let sim = GitlabSim::start(TOKEN, PROJECT);
    let forge = client(&sim);
    let sha = "0123456789abcdef0123456789abcdef01234567";
    for (state, description) in [
        (forge::State::Pending, "applying".to_string()),
        (forge::State::Success, "applied and healthy".to_string()),
        (forge::State::Failure, "x".repeat(400)),
    ] {
        block_on(forge.set_status(
            sha,
            &CommitStatus {
                state,
                context: "pbsync/platform".into(),
                description,
                target_url: Some("http://127.0.0.1:9/".into()),
            },
        ))
        .expect("status set");
    }
    assert_eq!(sim.refused(), Vec::<String>::new());
    let statuses = sim.statuses();
    let states: Vec<&str> = statuses
        .iter()
        .map(|s| s["status"].as_str().expect("status"))
        .collect();
    assert_eq!(states, ["running", "success", "failed"]);
    assert!(statuses.iter().all(|s| s["name"] == "pbsync/platform"));
    let long = statuses[2]["description"].as_str().expect("description");
    assert_eq!(long.chars().count(), 255, "cut to GitLab's limit");
}

#[test]
fn a_wrong_token_is_an_error_that_names_the_call_but_not_the_token() {
    let sim = GitlabSim::start(TOKEN, PROJECT);
    let forge = Forge::new(&forge::Settings {
        provider: Provider::Gitlab,
        api_url: sim.api_url.clone(),
        repository: PROJECT.into(),
        token: Secret::new("wrong-token"),
        timeout: Duration::from_secs(10),
    })
    .expect("client");
    let err = block_on(forge.comments(3)).expect_err("refused");
    let text = pbsync::error_chain(&err);
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("merge_requests/3/notes"), "{text}");
    assert!(!text.contains("wrong-token"), "{text}");
    assert!(!err.is_transient());
}

/// A repository with `main` (one app) and a branch `feature` adding a second app; its origin
/// remote names the project, so `--post` finds it without `--post-repo`.
fn pull_request_repo() -> (ScratchRepo, String) {
    let mut repo = ScratchRepo::new();
    let shared = yaml::shared("team-a", &["charts"]);
    let a = yaml::app("team-a", "a", "delete", &["charts"]);
    let b = yaml::app("team-a", "b", "delete", &["charts"]);
    repo.commit_on(
        "main",
        None,
        &[("shared.yaml", Some(&shared)), ("a.yaml", Some(&a))],
    );
    repo.commit_on("feature", Some("main"), &[("b.yaml", Some(&b))]);
    repo.git()
        .remote(
            "origin",
            &format!("https://gitlab.example.com/{PROJECT}.git"),
        )
        .expect("origin");
    let token_dir = repo.path().join(".git/pbsync-test-token");
    std::fs::write(&token_dir, format!("{TOKEN}\n")).expect("token file");
    (repo, token_dir.display().to_string())
}

fn post(repo: &ScratchRepo, sim: &GitlabSim, token_file: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pbsync"))
        .args([
            "plan",
            "--repo",
            repo.path().to_str().expect("path"),
            "--base",
            "refs/heads/main",
            "--head",
            "refs/heads/feature",
            "--offline",
            "--post",
            "gitlab",
            "--post-pr",
            "7",
            "--post-api-url",
            &sim.api_url,
            "--post-token-file",
            token_file,
        ])
        .env_remove("PBSYNC_FORGE_TOKEN")
        .output()
        .expect("run pbsync")
}

#[test]
fn plan_post_keeps_one_sticky_comment_and_leaves_others_alone() {
    let sim = GitlabSim::start(TOKEN, PROJECT);
    let (mut repo, token_file) = pull_request_repo();
    sim.add_note(7, "Looks good to me");

    let first = post(&repo, &sim, &token_file);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let notes = sim.notes(7);
    assert_eq!(
        notes.len(),
        2,
        "the reviewer's note and one plan: {notes:#?}"
    );
    let plan = &notes[1];
    let body = plan["body"].as_str().expect("body");
    assert!(body.starts_with(MARKER), "{body}");
    assert!(
        body.contains("<!-- pbsync-plan-changes "),
        "the note of the changes"
    );
    assert!(body.contains("team-a/b"), "{body}");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("1 created"), "{stderr}");
    assert!(!stderr.contains(TOKEN) && !String::from_utf8_lossy(&first.stdout).contains(TOKEN));

    // The same plan again: nothing changes.
    let again = post(&repo, &sim, &token_file);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("1 unchanged"));
    assert_eq!(sim.notes(7).len(), 2);

    // A new push to the branch: the one plan comment is edited in place.
    let c = yaml::app("team-a", "c", "orphan", &["charts"]);
    repo.commit_on("feature", None, &[("c.yaml", Some(&c))]);
    let third = post(&repo, &sim, &token_file);
    assert!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    let notes = sim.notes(7);
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[1]["id"], plan["id"], "edited, not replaced");
    assert!(
        notes[1]["body"]
            .as_str()
            .expect("body")
            .contains("team-a/c")
    );
    assert_eq!(notes[0]["body"], "Looks good to me");
    assert_eq!(sim.refused(), Vec::<String>::new());
}

#[test]
fn plan_post_without_a_token_is_a_configuration_error_before_planning() {
    let sim = GitlabSim::start(TOKEN, PROJECT);
    let (repo, _) = pull_request_repo();
    let out = post(&repo, &sim, "/nonexistent/token");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--post-token-file"));
    assert!(sim.notes(7).is_empty());
}
