//! The daemon's remote source over Git's smart HTTP protocol, end to end on loopback: a real
//! `git http-backend` (run as CGI behind a small server that demands HTTP basic auth, as
//! GitHub and GitLab do) serves a bare repository, and `Remote::sync` fetches it with the
//! configured credentials. TLS is not part of it (libgit2 verifies certificates against the
//! system roots, which no loopback server can join); the credential exchange is.

use std::path::Path;
use std::process::Command;

use pbsync::source::remote::GitAuth;
use pbsync::source::remote::Remote;
use pbsync::target::Secret;

use pbsync_devkit::testkit::ScratchRepo;
use pbsync_devkit::testkit::git_http::serve;

/// A bare copy of a one-commit repository under `root/bundles.git`; returns its commit.
fn bare_repo(root: &Path) -> git2::Oid {
    let mut repo = ScratchRepo::new();
    repo.write("bundles/a.yaml", "kind: Placeholder\n");
    let commit = repo.commit("one");
    let status = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(repo.path())
        .arg(root.join("bundles.git"))
        .status()
        .expect("git clone --bare");
    assert!(status.success());
    commit
}

#[test]
fn basic_auth_and_tokens_fetch_over_smart_http_and_wrong_ones_are_refused() {
    let served = tempfile::tempdir().unwrap();
    let commit = bare_repo(served.path());
    let basic = format!(
        "{}bundles.git",
        serve(served.path().to_path_buf(), "deploy", "s3cret")
    );
    let state = tempfile::tempdir().unwrap();
    let sync = |url: &str, auth: GitAuth| Remote::new(url, None, auth, false, state.path()).sync();

    let fetched = sync(
        &basic,
        GitAuth::Basic {
            username: "deploy".into(),
            password: Secret::new("s3cret"),
        },
    )
    .expect("basic auth fetch");
    assert_eq!(fetched, commit);

    // A token is sent as the password of user x-access-token (GitHub's convention).
    let token = format!(
        "{}bundles.git",
        serve(served.path().to_path_buf(), "x-access-token", "tok3n")
    );
    let fetched = sync(&token, GitAuth::Token(Secret::new("tok3n"))).expect("token fetch");
    assert_eq!(fetched, commit);

    let err = sync(
        &basic,
        GitAuth::Basic {
            username: "deploy".into(),
            password: Secret::new("wrong"),
        },
    )
    .expect_err("a wrong password is refused");
    let msg = pbsync::error_chain(&err);
    assert!(
        !msg.contains("wrong"),
        "the secret is not in the error: {msg}"
    );
    assert!(
        sync(&token, GitAuth::None).is_err(),
        "no credentials, no fetch"
    );
}
