//! The test Gitea (`scripts/gitea`) end to end, through the test kit's helpers
//! (`pbsync_devkit::testkit::gitea`): a repository of the test's own, branches pushed with
//! the real `git push`, a pull request, a commit status and a comment set through the raw API
//! and read back, a webhook delivered to a receiver on loopback with its HMAC signature, the
//! merge, and pbsync's own remote source fetching the merge over smart HTTP with the token.
//! Without a running Gitea the test fails, unless `PBSYNC_TEST_SKIP_GITEA=1`.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit as _, Mac as _};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

use pbsync::source::remote::{GitAuth, Remote};
use pbsync::target::Secret;
use pbsync_devkit::testkit::gitea::{self, ADMIN_USER};
use pbsync_devkit::testkit::{ScratchRepo, serve_loopback};

/// One webhook delivery as the loopback receiver got it: its headers and body.
type Delivery = (HeaderMap, Bytes);

/// A webhook receiver on loopback that sends every POST to `/hook` down a channel and
/// answers 200; returns its URL and the channel's end.
fn receiver() -> (String, Receiver<Delivery>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let _ = tx.send((headers, body));
            async { "ok" }
        }),
    );
    let (addr, _thread) = serve_loopback(app, std::future::pending());
    (format!("http://{addr}/hook"), rx)
}

/// Waits up to 30 seconds for a delivery of `event` whose JSON payload satisfies `matches`,
/// passing over the others; returns its headers, body and payload. (Gitea handles a push in
/// the background, so the receiver may also get events of pushes made before the webhook was
/// added.)
fn delivery(
    received: &Receiver<Delivery>,
    event: &str,
    matches: impl Fn(&Value) -> bool,
    explain: impl Fn() -> String,
) -> (HeaderMap, Bytes, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut passed = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((headers, body)) = received.recv_timeout(left) else {
            panic!(
                "no matching {event} webhook delivery in 30s (got: {passed:?}); {}",
                explain()
            );
        };
        let name = headers.get("x-gitea-event").and_then(|v| v.to_str().ok());
        let payload: Value = serde_json::from_slice(&body).unwrap_or_default();
        if name == Some(event) && matches(&payload) {
            return (headers, body, payload);
        }
        passed.push(format!("{name:?}"));
    }
}

#[test]
fn gitea_serves_pushes_pull_requests_statuses_comments_and_webhooks() {
    let test = "gitea_serves_pushes_pull_requests_statuses_comments_and_webhooks";
    let Some(gitea) = gitea::require(test) else {
        return;
    };
    let repo = gitea.create_repo(test);
    assert_eq!(repo.owner, ADMIN_USER);

    let mut local = ScratchRepo::new();
    let base = local.commit_on("main", None, &[("bundles/a.yaml", Some("kind: A\n"))]);
    let head = local.commit_on(
        "feature",
        Some("main"),
        &[("bundles/b.yaml", Some("kind: B\n"))],
    );
    let (base, head) = (base.to_string(), head.to_string());
    assert_eq!(gitea.push(&repo, local.path(), "main"), base);
    assert_eq!(gitea.push(&repo, local.path(), "feature"), head);
    let info = gitea.call_ok(Method::GET, &repo.api_path, None);
    assert_eq!(info["default_branch"], "main", "{info}");
    assert_eq!(info["empty"], false, "{info}");

    // A webhook to a receiver on loopback (Gitea refuses loopback unless configured to).
    let (receiver_url, received) = receiver();
    let secret = "webhook-s3cret";
    let hook = gitea.add_webhook(&repo, &receiver_url, secret, &["push", "pull_request"]);

    let number = gitea.create_pull_request(&repo, "feature", "main", "Add bundle b");
    let pulls = gitea.pull_requests(&repo);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0]["number"], number);
    assert_eq!(pulls[0]["state"], "open");
    assert_eq!(pulls[0]["head"]["sha"], head.as_str());
    assert_eq!(pulls[0]["base"]["ref"], "main");

    // A commit status, set the way a provider client sets it: the raw API with the token.
    let (status, created) = gitea.call(
        Method::POST,
        &format!("{}/statuses/{head}", repo.api_path),
        Some(json!({
            "state": "success",
            "context": "pbsync/test",
            "description": "applied 1 change",
            "target_url": "http://127.0.0.1:9/status",
        })),
    );
    assert_eq!(status, 201, "{created}");
    let statuses = gitea.commit_statuses(&repo, &head);
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0]["status"], "success");
    assert_eq!(statuses[0]["context"], "pbsync/test");
    assert_eq!(statuses[0]["description"], "applied 1 change");
    assert_eq!(statuses[0]["creator"]["login"], ADMIN_USER);
    assert!(gitea.commit_statuses(&repo, &base).is_empty());

    // A comment on the pull request (pull requests are issues to the comments API).
    let (status, comment) = gitea.call(
        Method::POST,
        &format!("{}/issues/{number}/comments", repo.api_path),
        Some(json!({"body": "plan: 1 to create"})),
    );
    assert_eq!(status, 201, "{comment}");
    let comments = gitea.issue_comments(&repo, number);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(comments[0]["body"], "plan: 1 to create");

    // The pull request's opening was delivered, signed: X-Gitea-Signature is the hex
    // HMAC-SHA256 of the body with the hook's secret.
    let explain = || {
        format!(
            "deliveries: {:?}\n{}",
            gitea.hook_deliveries(&repo, hook),
            gitea.log_tail(20)
        )
    };
    let (headers, body, payload) = delivery(
        &received,
        "pull_request",
        |p| p["action"] == "opened",
        explain,
    );
    let signature = headers
        .get("x-gitea-signature")
        .and_then(|v| v.to_str().ok())
        .expect("X-Gitea-Signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(&body);
    assert_eq!(signature, hex::encode(mac.finalize().into_bytes()));
    assert_eq!(payload["number"], number);
    assert_eq!(payload["pull_request"]["head"]["sha"], head.as_str());

    // The merge is a push to main, delivered too.
    let merge = gitea.merge_pull_request(&repo, number);
    let merged = gitea.pull_requests(&repo);
    assert_eq!(merged[0]["merged"], true, "{merged:?}");
    let (_, _, payload) = delivery(
        &received,
        "push",
        |p| p["ref"] == "refs/heads/main" && p["after"] == merge.as_str(),
        explain,
    );
    assert_eq!(payload["before"], base.as_str());
    let deliveries = gitea.hook_deliveries(&repo, hook);
    assert!(
        deliveries
            .iter()
            .any(|d| d["event_type"] == "push" && d["is_succeed"] == 1),
        "{deliveries:?}"
    );

    // pbsync's own remote source fetches the merge over smart HTTP with the token.
    let state = tempfile::tempdir().unwrap();
    let fetched = Remote::new(
        &repo.url,
        Some("main".into()),
        GitAuth::Token(Secret::new(gitea.token())),
        false,
        state.path(),
    )
    .sync()
    .expect("fetch from gitea");
    assert_eq!(fetched.to_string(), merge);
}
