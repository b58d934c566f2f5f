//! The built daemon (`pbsync run`) end to end: against local Git repositories with the
//! directory target, and against the test control plane (`scripts/testcluster`) with the
//! Kubernetes target: commits applied, ref-counted deletions, invalid commits reported with
//! nothing deleted, webhooks signed and forged, the systemd notify protocol on a real socket,
//! signals, leader election failover, and an API server outage.
//!
//! Repositories, YAML, the cluster and the namespace guard come from the test kit
//! (`pbsync_devkit::testkit`): a cluster test without a cluster fails unless
//! `PBSYNC_TEST_SKIP_CLUSTER=1`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pbsync_devkit::synthetic::{Params, write_repo};
use pbsync_devkit::testkit::cluster::{self, Namespace};
use pbsync_devkit::testkit::signing::{self, GpgKey, Signing, SshKey};
use pbsync_devkit::testkit::yaml::{app, shared};
use pbsync_devkit::testkit::{ScratchRepo, block_on, list_files};

// ---------------------------------------------------------------------------------------
// Running the daemon
// ---------------------------------------------------------------------------------------

struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `pbsync run ARGS --listen 127.0.0.1:0` and waits for its address.
    fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbsync"));
        cmd.arg("run")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn pbsync run");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening addr=").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut l = sink.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("daemon did not start: {}", log.lock().expect("log")));
        Self {
            child,
            addr: addr.parse().expect("address"),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, &[], b"")
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/status").1).unwrap_or_default()
    }

    /// Waits until `/status` satisfies `ok`; panics with the log after `timeout`.
    fn wait_status(
        &self,
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = self.status();
            if ok(&s) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "status never matched; last {s}\nlog:\n{}",
                self.log()
            );
            wait(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no exit after SIGTERM"
            );
            wait(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Blocks the test thread (not an async runtime) for `d`.
fn wait(d: Duration) {
    // A channel receive with a timeout: std::thread::sleep is banned crate-wide.
    let (_tx, rx) = std::sync::mpsc::channel::<()>();
    let _ = rx.recv_timeout(d);
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let _ = s.write_all(req.as_bytes());
    let _ = s.write_all(body);
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

fn metric(d: &Daemon, prefix: &str) -> f64 {
    d.get("/metrics")
        .1
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn revision(s: &serde_json::Value) -> &str {
    s["revision"].as_str().unwrap_or("")
}

/// A synthetic repository of four bundles, committed; and the commit's id.
fn small_repo() -> (ScratchRepo, String) {
    let mut repo = ScratchRepo::new();
    let p = Params {
        bundles: 4,
        shared: 2,
        per_namespace: 4,
        ..Params::default()
    };
    write_repo(repo.path(), &p).expect("generate");
    let oid = repo.commit("four bundles");
    (repo, oid.to_string())
}

/// How many files under `dir` are called `name`.
fn count_files(dir: &Path, name: &str) -> usize {
    list_files(dir)
        .iter()
        .filter(|p| Path::new(p).file_name().is_some_and(|f| f == name))
        .count()
}

// ---------------------------------------------------------------------------------------
// Directory target
// ---------------------------------------------------------------------------------------

#[test]
fn commits_are_applied_removals_delete_by_reference_count_and_invalid_commits_delete_nothing() {
    let (mut repo, first) = small_repo();
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", state.path().display());
    let repo_arg = repo.path().display().to_string();
    // Polling off: only the watch on the repository's refs can notice commits.
    let d = Daemon::start(
        &["--repo", &repo_arg, "--target", &target, "--interval", "0"],
        &[],
    );
    let s = d.wait_status(Duration::from_secs(30), |s| s["result"] == "applied");
    assert_eq!(revision(&s), first);
    assert_eq!(d.get("/readyz").0, 200);
    assert_eq!(count_files(state.path(), "bundle-3.yaml"), 1);

    // Remove a bundle: it goes, with the objects only it referenced; shared ones stay.
    repo.remove("bundles/team-000/bundle-3.yaml");
    let second = repo.commit("remove bundle-3").to_string();
    let s = d.wait_status(Duration::from_secs(20), |s| {
        revision(s) == second && s["result"] == "applied"
    });
    let message = s["message"].as_str().unwrap_or("");
    assert!(message.contains("deleted"), "{s}");
    assert_eq!(count_files(state.path(), "bundle-3.yaml"), 0);
    assert_eq!(count_files(state.path(), "bundle-2.yaml"), 1);

    // An invalid commit that also removes a bundle: reported, nothing deleted.
    repo.remove("bundles/team-000/bundle-2.yaml");
    repo.write("bundles/broken.yaml", "kind: [unclosed\n");
    let third = repo.commit("broken").to_string();
    let s = d.wait_status(Duration::from_secs(20), |s| revision(s) == third);
    assert_eq!(s["result"], "failed", "{s}");
    assert_eq!(s["stage"], "parse", "{s}");
    assert_eq!(s["retryable"], false, "{s}");
    assert!(
        s["message"].as_str().unwrap_or("").contains("broken.yaml"),
        "{s}"
    );
    assert_eq!(s["appliedRevision"].as_str(), Some(second.as_str()));
    assert_eq!(
        count_files(state.path(), "bundle-2.yaml"),
        1,
        "nothing deleted"
    );
    assert!(
        metric(
            &d,
            "pbsync_reconciles_total{result=\"failed\",stage=\"parse\"}"
        ) >= 1.0
    );

    // `pbsync status` shows the same, from the daemon and from the target's inventory.
    let out = Command::new(env!("CARGO_BIN_EXE_pbsync"))
        .args([
            "status",
            "--listen",
            &d.addr.to_string(),
            "--target",
            &target,
        ])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("result: failed") && text.contains(&second),
        "{text}"
    );

    // The fix applies.
    repo.remove("bundles/broken.yaml");
    let fourth = repo.commit("fixed").to_string();
    d.wait_status(Duration::from_secs(20), |s| {
        revision(s) == fourth && s["result"] == "applied"
    });
    assert_eq!(count_files(state.path(), "bundle-2.yaml"), 0);
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn signed_webhooks_trigger_a_fetch_and_forged_ones_are_rejected_and_counted() {
    let (mut repo, first) = small_repo();
    let state = tempfile::tempdir().expect("state");
    let secret = state.path().join("webhook-secret");
    std::fs::write(&secret, "s3cr3t\n").expect("secret");
    let d = Daemon::start(
        &[
            "--repo",
            &repo.path().display().to_string(),
            "--target",
            &format!("dir:{}", state.path().join("out").display()),
            "--interval",
            "0",
            "--watch=false",
            "--webhook-secret-file",
            &secret.display().to_string(),
        ],
        &[],
    );
    d.wait_status(Duration::from_secs(30), |s| revision(s) == first);
    repo.remove("bundles/team-000/bundle-0.yaml");
    let second = repo.commit("remove").to_string();

    let body = br#"{"ref":"refs/heads/main"}"#;
    let forged = sign(b"guess", body);
    let (code, _) = http(
        d.addr,
        "POST",
        "/webhook",
        &[("X-Hub-Signature-256", &forged), ("X-GitHub-Event", "push")],
        body,
    );
    assert_eq!(code, 401);
    let (code, _) = http(d.addr, "POST", "/webhook", &[], body);
    assert_eq!(code, 401);
    wait(Duration::from_millis(500));
    assert_eq!(
        revision(&d.status()),
        first,
        "a rejected delivery triggers nothing"
    );
    assert_eq!(
        metric(
            &d,
            "pbsync_webhook_deliveries_total{result=\"bad_signature\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &d,
            "pbsync_webhook_deliveries_total{result=\"missing_signature\"}"
        ),
        1.0
    );

    let signed = sign(b"s3cr3t", body);
    let (code, _) = http(
        d.addr,
        "POST",
        "/webhook",
        &[("X-Hub-Signature-256", &signed), ("X-GitHub-Event", "push")],
        body,
    );
    assert_eq!(code, 202);
    d.wait_status(Duration::from_secs(20), |s| {
        revision(s) == second && s["result"] == "applied"
    });
    // The generic header works too.
    let generic = sign(b"s3cr3t", b"x");
    let (code, _) = http(
        d.addr,
        "POST",
        "/webhook",
        &[("X-Pbsync-Signature", &generic)],
        b"x",
    );
    assert_eq!(code, 202);
    assert_eq!(
        metric(&d, "pbsync_webhook_deliveries_total{result=\"accepted\"}"),
        2.0
    );

    // `pbsync reconcile-now` asks for a full pass.
    let out = Command::new(env!("CARGO_BIN_EXE_pbsync"))
        .args(["reconcile-now", "--listen", &d.addr.to_string()])
        .output()
        .expect("reconcile-now");
    assert!(out.status.success());
    d.wait_status(Duration::from_secs(10), |_| {
        d.log().matches("trigger=manual").count() >= 1
    });
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn the_notify_protocol_reports_ready_status_watchdog_and_stopping_on_a_real_socket() {
    let (repo, first) = small_repo();
    let state = tempfile::tempdir().expect("state");
    let sock_path = state.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let d = Daemon::start(
        &[
            "--repo",
            &repo.path().display().to_string(),
            "--target",
            &format!("dir:{}", state.path().join("out").display()),
        ],
        &[
            ("NOTIFY_SOCKET", &sock_path.display().to_string()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let n = sock.recv(&mut buf).expect("notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
        let all = seen.join("");
        if all.contains("READY=1")
            && all.contains(&format!("STATUS=applied {}", &first[..12]))
            && all.matches("WATCHDOG=1").count() >= 2
        {
            break;
        }
    }
    let all = seen.join("");
    assert!(seen[0].starts_with("READY=1\n"), "{seen:?}");
    assert!(
        all.contains(&format!("STATUS=applied {}", &first[..12])),
        "{seen:?}"
    );
    assert!(all.matches("WATCHDOG=1").count() >= 2, "{seen:?}");
    let code = d.stop();
    let mut rest = String::new();
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
        if rest.contains("STOPPING=1") {
            break;
        }
    }
    assert!(rest.contains("STOPPING=1"), "{rest}");
    assert_eq!(code, Some(0));
}

#[test]
fn sighup_reloads_a_valid_config_and_keeps_the_old_one_when_the_new_is_invalid() {
    let (repo, first) = small_repo();
    let state = tempfile::tempdir().expect("state");
    let config = state.path().join("config.yaml");
    let base = format!(
        "repo: {}\ntarget: dir:{}\ninterval: 0\n",
        repo.path().display(),
        state.path().join("out").display()
    );
    std::fs::write(&config, &base).expect("config");
    let d = Daemon::start(&["--config", &config.display().to_string()], &[]);
    d.wait_status(Duration::from_secs(30), |s| revision(s) == first);

    std::fs::write(&config, base.replace("interval: 0", "interval: often")).expect("config");
    d.signal("HUP");
    let start = Instant::now();
    while !d.log().contains("new configuration rejected") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", d.log());
        wait(Duration::from_millis(50));
    }
    assert!(d.log().contains(":3: interval"), "{}", d.log());
    assert_eq!(d.get("/healthz").0, 200, "still running");

    std::fs::write(&config, base.replace("interval: 0", "interval: 1s")).expect("config");
    d.signal("HUP");
    let start = Instant::now();
    while !d.log().contains("configuration reloaded") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", d.log());
        wait(Duration::from_millis(50));
    }
    // SIGUSR1 reconciles now.
    d.signal("USR1");
    d.wait_status(Duration::from_secs(10), |_| {
        d.log().contains("trigger=manual")
    });
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn a_bad_config_file_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "repo: /nowhere\nlisten: everywhere\nresync-interval: weekly\n",
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_pbsync"))
        .args(["run", "--config", &config.display().to_string()])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let p = config.display();
    assert!(err.contains(&format!("{p}:2: listen")), "{err}");
    assert!(err.contains(&format!("{p}:3: resync-interval")), "{err}");
}

#[test]
fn a_daemon_that_verifies_signatures_applies_signed_commits_and_refuses_the_rest_deleting_nothing()
{
    let gpg = GpgKey::generate("Deploy <deploy@example.com>");
    let ssh = SshKey::generate("ci@example.com");
    let repo = ScratchRepo::new();
    let p = Params {
        bundles: 4,
        shared: 2,
        per_namespace: 4,
        ..Params::default()
    };
    write_repo(repo.path(), &p).expect("generate");
    let first = signing::commit(&repo, "four bundles, signed", Signing::Gpg(&gpg));
    let state = tempfile::tempdir().expect("state");
    let out = state.path().join("out");
    let config = state.path().join("config.yaml");
    // Its commit statuses go to GitLab (the test kit's simulator).
    let gitlab =
        pbsync_devkit::testkit::gitlab::GitlabSim::start("glpat-verify", "platform/bundles");
    let token = state.path().join("forge-token");
    std::fs::write(&token, "glpat-verify\n").expect("token");
    std::fs::write(
        &config,
        format!(
            "repo: {}\ntarget: dir:{}\ninterval: 0\nverify:\n  mode: head\n  keys:\n    - {}\n    - {}\n\
             forge:\n  provider: gitlab\n  api-url: {}\n  repository: platform/bundles\n  token-file: {}\n",
            repo.path().display(),
            out.display(),
            gpg.public_key_file().display(),
            ssh.allowed_signers_file().display(),
            gitlab.api_url,
            token.display()
        ),
    )
    .expect("config");
    let d = Daemon::start(&["--config", &config.display().to_string()], &[]);
    let s = d.wait_status(Duration::from_secs(30), |s| s["result"] == "applied");
    assert_eq!(revision(&s), first.to_string());
    assert_eq!(count_files(&out, "bundle-3.yaml"), 1);

    // An unsigned commit that removes a bundle: a failed pass saying why, nothing deleted.
    repo.remove("bundles/team-000/bundle-3.yaml");
    let unsigned = signing::commit(&repo, "unsigned removal", Signing::Unsigned);
    let s = d.wait_status(Duration::from_secs(20), |s| {
        revision(s) == unsigned.to_string()
    });
    assert_eq!(s["result"], "failed", "{s}");
    assert_eq!(s["stage"], "verify", "{s}");
    assert_eq!(s["retryable"], false, "{s}");
    assert_eq!(
        s["message"],
        format!(
            "commit {unsigned} is refused: its signature is not trusted: the commit is not signed"
        ),
        "{s}"
    );
    assert_eq!(
        s["appliedRevision"].as_str(),
        Some(first.to_string().as_str())
    );
    assert_eq!(count_files(&out, "bundle-3.yaml"), 1, "nothing deleted");
    assert!(
        metric(
            &d,
            "pbsync_reconciles_total{result=\"failed\",stage=\"verify\"}"
        ) >= 1.0
    );
    // Its commit status says so.
    let unsigned_sha = unsigned.to_string();
    let status = wait_for(
        &d,
        Duration::from_secs(20),
        "a failed status on the unsigned commit",
        || {
            gitlab
                .statuses()
                .into_iter()
                .find(|s| s["sha"] == unsigned_sha.as_str() && s["status"] == "failed")
        },
    );
    let description = status["description"].as_str().unwrap_or("");
    assert!(
        description.starts_with("refused, nothing applied:") && description.contains("not signed"),
        "{description}"
    );

    // The signed first commit with the removal's tree put under its signature: refused.
    let (signed_tree, removal_tree) = (
        signing::tree_of(&repo, first),
        signing::tree_of(&repo, unsigned),
    );
    let forged = signing::tamper(&repo, first, |text| {
        text.replace(
            &format!("tree {signed_tree}"),
            &format!("tree {removal_tree}"),
        )
    });
    let s = d.wait_status(Duration::from_secs(20), |s| {
        revision(s) == forged.to_string()
    });
    assert_eq!(s["stage"], "verify", "{s}");
    let message = s["message"].as_str().unwrap_or("");
    assert!(
        message.contains("the OpenPGP signature by key")
            && message.contains("does not verify: the commit was changed after it was signed"),
        "{s}"
    );
    assert_eq!(count_files(&out, "bundle-3.yaml"), 1, "nothing deleted");

    // The same removal signed with an allowed SSH key: applied.
    let good = signing::commit(&repo, "removal, signed", Signing::Ssh(&ssh));
    d.wait_status(Duration::from_secs(20), |s| {
        revision(s) == good.to_string() && s["result"] == "applied"
    });
    assert_eq!(count_files(&out, "bundle-3.yaml"), 0);
    assert_eq!(d.stop(), Some(0));
}

/// What a notification receiver on loopback got: path, headers and body of each POST, and
/// the status it answered.
#[derive(Clone, Default)]
struct Inbox {
    received: Arc<Mutex<Vec<Delivery>>>,
    /// Deliveries to the Slack path still to be answered 503 (a flaky endpoint).
    flaky: Arc<Mutex<usize>>,
}

#[derive(Clone, Debug)]
struct Delivery {
    path: String,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
    answered: u16,
}

impl Delivery {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl Inbox {
    /// Serves `/events` (CloudEvents) and `/services/T0/B0/s3cr3tpath` (Slack) on a loopback
    /// port; the first `flaky` Slack deliveries are answered 503.
    fn start(flaky: usize) -> (Self, SocketAddr) {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode, Uri};
        let inbox = Self {
            flaky: Arc::new(Mutex::new(flaky)),
            ..Self::default()
        };
        async fn record(
            State(inbox): State<Inbox>,
            uri: Uri,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> StatusCode {
            let path = uri.path().to_string();
            let mut flaky = inbox.flaky.lock().expect("flaky");
            let status = if path.starts_with("/services/") && *flaky > 0 {
                *flaky -= 1;
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            inbox.received.lock().expect("inbox").push(Delivery {
                path,
                headers,
                body: body.to_vec(),
                answered: status.as_u16(),
            });
            status
        }
        let app = axum::Router::new()
            .route("/events", axum::routing::post(record))
            .route("/services/T0/B0/s3cr3tpath", axum::routing::post(record))
            .with_state(inbox.clone());
        let (addr, _thread) = pbsync_devkit::testkit::serve_loopback(app, std::future::pending());
        (inbox, addr)
    }

    /// The deliveries to `path` answered 200, once `ok` holds for them; panics after 30 s.
    fn wait(&self, path: &str, ok: impl Fn(&[Delivery]) -> bool, d: &Daemon) -> Vec<Delivery> {
        let start = Instant::now();
        loop {
            let got: Vec<Delivery> = self
                .all()
                .into_iter()
                .filter(|r| r.path == path && r.answered == 200)
                .collect();
            if ok(&got) {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{path} never got what was expected; got {:?}\nlog:\n{}",
                got.iter()
                    .map(|r| String::from_utf8_lossy(&r.body).to_string())
                    .collect::<Vec<_>>(),
                d.log()
            );
            wait(Duration::from_millis(50));
        }
    }

    fn all(&self) -> Vec<Delivery> {
        self.received.lock().expect("inbox").clone()
    }
}

fn slack_texts(got: &[Delivery]) -> Vec<String> {
    got.iter()
        .map(|r| r.json()["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A bad commit failing pass after pass is told once, its fix as a recovery: a CloudEvents
/// receiver (failures only, signed) and a Slack receiver (every change, answering 503 at
/// first) on loopback; neither the Slack URL nor the signing key shows in the log.
#[test]
fn notifications_tell_a_failure_once_across_passes_and_then_its_recovery() {
    let (mut repo, first) = small_repo();
    let state = tempfile::tempdir().expect("state");
    let (inbox, addr) = Inbox::start(1);
    let url_file = state.path().join("slack-url");
    std::fs::write(
        &url_file,
        format!("http://{addr}/services/T0/B0/s3cr3tpath\n"),
    )
    .expect("url");
    let key_file = state.path().join("hmac-key");
    std::fs::write(&key_file, "hm4ck3y\n").expect("key");
    let config = state.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "repo: {}\ntarget: dir:{}\ninterval: 0\ninstance: notify-test\nnotifications:\n  \
             - name: events\n    kind: cloudevents\n    url: http://{addr}/events\n    \
             secret-file: {}\n    on: failures\n    min-interval: 0\n  \
             - name: chat\n    kind: slack\n    url-file: {}\n    on: changes\n    min-interval: 0\n",
            repo.path().display(),
            state.path().join("out").display(),
            key_file.display(),
            url_file.display(),
        ),
    )
    .expect("config");
    let d = Daemon::start(
        &["--config", &config.display().to_string()],
        &[("RUST_LOG", "info,pbsync=debug")],
    );
    d.wait_status(Duration::from_secs(30), |s| revision(s) == first);
    let short = |rev: &str| rev[..12].to_string();

    // Slack hears of the first commit applied, though its first delivery was refused.
    let chat = "/services/T0/B0/s3cr3tpath";
    inbox.wait(
        chat,
        |got| {
            slack_texts(got)
                .iter()
                .any(|t| t.contains(&format!("applied {}", short(&first))))
        },
        &d,
    );
    let refused = inbox.all().into_iter().find(|r| r.answered == 503);
    let refused = refused.expect("the first Slack delivery was answered 503");
    assert!(
        inbox
            .all()
            .iter()
            .any(|r| r.answered == 200 && r.body == refused.body),
        "the refused message was sent again"
    );

    // A broken commit, and two more passes of it: one failure told.
    repo.write("bundles/broken.yaml", "kind: [unclosed\n");
    let broken = repo.commit("broken").to_string();
    d.wait_status(Duration::from_secs(20), |s| {
        revision(s) == broken && s["result"] == "failed"
    });
    let failed = "pbsync_reconciles_total{result=\"failed\",stage=\"parse\"}";
    for passes in [2.0, 3.0] {
        assert_eq!(http(d.addr, "POST", "/reconcile", &[], b"").0, 202);
        let start = Instant::now();
        while metric(&d, failed) < passes {
            assert!(start.elapsed() < Duration::from_secs(20), "{}", d.log());
            wait(Duration::from_millis(50));
        }
    }

    // The fix: a recovery. Sinks take events in order, so once the recovery is in, every
    // failed pass before it was seen.
    repo.remove("bundles/broken.yaml");
    let fixed = repo.commit("fixed").to_string();
    let events = inbox.wait("/events", |got| got.len() >= 2, &d);
    let bodies: Vec<serde_json::Value> = events.iter().map(Delivery::json).collect();
    assert_eq!(
        bodies
            .iter()
            .map(|b| b["type"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        [
            "ai.palette.pbsync.pass.failed",
            "ai.palette.pbsync.pass.recovered"
        ],
        "{bodies:?}"
    );
    for (r, b) in events.iter().zip(&bodies) {
        let header = |name: &str| {
            r.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            header("content-type").starts_with("application/cloudevents+json"),
            "{:?}",
            r.headers
        );
        assert_eq!(header("x-pbsync-signature"), sign(b"hm4ck3y", &r.body));
        assert_eq!(b["specversion"], "1.0");
        assert_eq!(b["source"], "pbsync/notify-test");
        assert_eq!(b["datacontenttype"], "application/json");
        assert!(
            b["time"]
                .as_str()
                .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
            "{b}"
        );
        assert!(b["id"].as_str().is_some_and(|id| !id.is_empty()), "{b}");
    }
    assert_ne!(bodies[0]["id"], bodies[1]["id"]);
    assert_eq!(bodies[0]["subject"], broken.as_str());
    assert_eq!(bodies[0]["data"]["stage"], "parse");
    assert!(
        bodies[0]["data"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("broken.yaml"),
        "{}",
        bodies[0]
    );
    assert_eq!(bodies[1]["subject"], fixed.as_str());
    assert_eq!(bodies[1]["data"]["recoveredFrom"], "parse");
    assert!(metric(&d, failed) >= 3.0);

    // Slack heard the same, once each, in words.
    let texts = slack_texts(&inbox.wait(
        chat,
        |got| {
            slack_texts(got)
                .iter()
                .any(|t| t.contains(&format!("applied {}", short(&fixed))))
        },
        &d,
    ));
    let told = |what: &str| texts.iter().filter(|t| t.contains(what)).count();
    assert_eq!(
        told(&format!("failed at parse {}", short(&broken))),
        1,
        "{texts:?}"
    );
    assert_eq!(told("recovered (after failing at parse)"), 1, "{texts:?}");
    assert!(
        texts.iter().all(|t| t.starts_with("*pbsync notify-test* ")),
        "{texts:?}"
    );

    assert_eq!(
        metric(&d, "pbsync_reports_total{sink=\"webhook\",result=\"sent\"}"),
        2.0
    );
    assert!(metric(&d, "pbsync_reports_total{sink=\"slack\",result=\"failed\"}") >= 1.0);
    let log = d.log();
    assert!(
        log.contains("cannot send the notification; retrying"),
        "{log}"
    );
    assert!(
        !log.contains("s3cr3tpath") && !log.contains("hm4ck3y"),
        "a secret in the log:\n{log}"
    );
    assert_eq!(d.stop(), Some(0));
}

// ---------------------------------------------------------------------------------------
// Remote repositories (file://, no network)
// ---------------------------------------------------------------------------------------

#[test]
fn a_remote_clone_follows_new_commits_force_pushes_tags_and_pinned_commits() {
    use pbsync::source::remote::GitAuth;
    use pbsync::source::remote::Remote;
    let (mut repo, first) = small_repo();
    let state = tempfile::tempdir().expect("state");
    let url = format!("file://{}", repo.path().display());
    let remote = Remote::new(&url, None, GitAuth::None, true, state.path());
    assert_eq!(remote.sync().expect("sync").to_string(), first);
    assert!(remote.dir().starts_with(state.path()));

    repo.remove("bundles/team-000/bundle-0.yaml");
    let second = repo.commit("second");
    assert_eq!(remote.sync().expect("sync"), second);

    // Rewrite history: the branch now points at a new root commit.
    let r = git2::Repository::open(repo.path()).expect("open");
    let tree = r.find_commit(second).expect("commit").tree().expect("tree");
    let sig = git2::Signature::now("x", "x@x").expect("sig");
    let rewritten = r
        .commit(None, &sig, &sig, "rewritten", &tree, &[])
        .expect("commit");
    let head = r.head().expect("head").name().expect("name").to_string();
    r.reference(&head, rewritten, true, "force push")
        .expect("force");
    assert_eq!(remote.sync().expect("sync"), rewritten);

    // A tag and a pinned commit.
    r.tag_lightweight("v1", &r.find_object(second, None).expect("obj"), false)
        .expect("tag");
    let tagged = Remote::new(&url, Some("v1".into()), GitAuth::None, false, state.path());
    assert_eq!(tagged.sync().expect("sync"), second);
    let pinned = Remote::new(
        &url,
        Some(first.clone()),
        GitAuth::None,
        false,
        state.path(),
    );
    assert_eq!(pinned.sync().expect("sync").to_string(), first);
    let missing = Remote::new(
        &url,
        Some("no-such-branch".into()),
        GitAuth::None,
        false,
        state.path(),
    );
    assert!(missing.sync().is_err());
}

#[test]
fn the_daemon_reads_a_file_url_through_its_persistent_clone() {
    let (mut repo, first) = small_repo();
    let state = tempfile::tempdir().expect("state");
    let d = Daemon::start(
        &[
            "--repo",
            &format!("file://{}", repo.path().display()),
            "--state-dir",
            &state.path().join("var").display().to_string(),
            "--target",
            &format!("dir:{}", state.path().join("out").display()),
            "--interval",
            "1s",
        ],
        &[],
    );
    d.wait_status(Duration::from_secs(30), |s| {
        revision(s) == first && s["result"] == "applied"
    });
    assert!(state.path().join("var/repos").is_dir());
    repo.remove("bundles/team-000/bundle-0.yaml");
    let second = repo.commit("second").to_string();
    d.wait_status(Duration::from_secs(20), |s| {
        revision(s) == second && s["result"] == "applied"
    });
    assert_eq!(d.stop(), Some(0));
}

// ---------------------------------------------------------------------------------------
// Kubernetes target
// ---------------------------------------------------------------------------------------

fn lease_holder(kubeconfig: &Path, ns: &str, name: &str) -> Option<String> {
    block_on(async {
        let client = cluster::connect(kubeconfig).await.ok()?;
        let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client, ns);
        api.get(name).await.ok()?.spec?.holder_identity
    })
}

fn count_bundles(kubeconfig: &Path, ns: &str) -> usize {
    block_on(async {
        let Ok(client) = cluster::connect(kubeconfig).await else {
            return 0;
        };
        let gvk = kube::api::GroupVersionKind::gvk("spectrocloud.com", "v1beta1", "ProfileBundle");
        let ar = kube::api::ApiResource::from_gvk(&gvk);
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(client, ns, &ar);
        api.list(&kube::api::ListParams::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(0)
    })
}

/// A repository of `ns` with the definition `web` and an Application bundle (with a
/// WorkloadProfile of its own) for each of `bundles`, committed.
fn kube_repo(ns: &str, bundles: &[&str]) -> ScratchRepo {
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared(ns, &[]));
    for b in bundles {
        repo.write(&format!("bundles/{b}.yaml"), app(ns, b, "delete", &[]));
    }
    repo.commit("bundles");
    repo
}

fn kube_args<'a>(repo: &'a str, kubeconfig: &'a str, ns: &'a str) -> Vec<&'a str> {
    vec![
        "--repo",
        repo,
        "--target",
        "kube",
        "--kubeconfig",
        kubeconfig,
        "--instance",
        ns,
        "--status-namespace",
        ns,
        "--interval",
        "1s",
        "--backoff-min",
        "200ms",
        "--backoff-max",
        "2s",
    ]
}

#[test]
fn two_daemons_elect_one_leader_and_the_other_takes_over_when_it_dies() {
    let test = "two_daemons_elect_one_leader";
    let Some(kc) = cluster::require(test) else {
        return;
    };
    let namespace = Namespace::create_blocking(&kc, test);
    let ns = namespace.name().to_string();
    let mut repo = kube_repo(&ns, &["a"]);
    let repo_arg = repo.path().display().to_string();
    let kc_arg = kc.display().to_string();
    let mut args = kube_args(&repo_arg, &kc_arg, &ns);
    args.extend([
        "--leader-elect",
        "--lease-duration",
        "3s",
        "--lease-namespace",
        &ns,
    ]);
    let mut a_args = args.clone();
    a_args.extend(["--leader-id", "a"]);
    let a = Daemon::start(&a_args, &[]);
    let first = a.wait_status(Duration::from_secs(60), |s| s["result"] == "applied");
    let mut b_args = args.clone();
    b_args.extend(["--leader-id", "b"]);
    let b = Daemon::start(&b_args, &[]);
    b.wait_status(Duration::from_secs(20), |s| s["result"] == "standby");
    assert_eq!(metric(&b, "pbsync_leader "), 0.0);
    assert_eq!(
        lease_holder(&kc, &ns, &format!("pbsync-{ns}")).as_deref(),
        Some("a")
    );

    // Kill the leader without a chance to release the lease, then commit.
    drop(a);
    let killed = Instant::now();
    repo.write("bundles/b.yaml", app(&ns, "b", "delete", &[]));
    let second = repo.commit("b").to_string();
    let s = b.wait_status(Duration::from_secs(30), |s| {
        revision(s) == second && s["result"] == "applied"
    });
    let took = killed.elapsed();
    assert!(
        s["message"].as_str().unwrap_or("").contains("created"),
        "{s}"
    );
    // The lease lasts 3 s; the standby looks every 0.5 s and wakes at expiry, then applies
    // (a generous bound: this is not a timing benchmark).
    assert!(took < Duration::from_secs(8), "failover took {took:?}");
    assert_ne!(revision(&first), second);
    assert_eq!(b.stop(), Some(0));
}

/// The test cluster's process of `name` (pid file and command line), in `dir`.
fn process(dir: &Path, name: &str) -> (u32, Vec<String>) {
    let pid: u32 = std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let args = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).to_string())
        .collect();
    (pid, args)
}

#[test]
fn an_api_server_killed_mid_reconcile_is_retried_until_the_daemon_converges() {
    let test = "api_server_outage";
    if cluster::require(test).is_none() {
        return;
    }
    // A private control plane: killing the shared one would disturb other tests.
    let cluster = tempfile::tempdir().expect("cluster dir");
    let script = cluster::script();
    let up = Command::new(&script)
        .arg("up")
        .env("PBSYNC_TESTCLUSTER_DIR", cluster.path())
        .stderr(Stdio::null())
        .output()
        .expect("testcluster up");
    assert!(up.status.success(), "private cluster did not start");
    struct Down<'a>(&'a Path, &'a Path);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = Command::new(self.0)
                .arg("down")
                .env("PBSYNC_TESTCLUSTER_DIR", self.1)
                .stderr(Stdio::null())
                .status();
        }
    }
    let _down = Down(&script, cluster.path());
    let kc = cluster.path().join("kubeconfig");
    let namespace = Namespace::create_blocking(&kc, test);
    let ns = namespace.name().to_string();
    let mut repo = kube_repo(&ns, &["a"]);
    let repo_arg = repo.path().display().to_string();
    let kc_arg = kc.display().to_string();
    let d = Daemon::start(&kube_args(&repo_arg, &kc_arg, &ns), &[]);
    d.wait_status(Duration::from_secs(60), |s| s["result"] == "applied");

    // Commit, and kill the API server as the watch starts the reconcile.
    let (pid, args) = process(cluster.path(), "kube-apiserver");
    for b in ["b", "c", "d"] {
        repo.write(&format!("bundles/{b}.yaml"), app(&ns, b, "delete", &[]));
    }
    let second = repo.commit("three more").to_string();
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    let s = d.wait_status(Duration::from_secs(30), |s| {
        s["result"] == "failed" && s["retryable"] == true
    });
    assert_eq!(d.get("/healthz").0, 200, "{s}");

    // Restart it with the same command line (same port, same etcd).
    let log =
        std::fs::File::create(cluster.path().join("kube-apiserver.restarted.log")).expect("log");
    // `scripts/testcluster down` stops it through the pid file, like the original.
    #[allow(clippy::zombie_processes)]
    let child = Command::new("setsid")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("restart kube-apiserver");
    std::fs::write(
        cluster.path().join("kube-apiserver.pid"),
        child.id().to_string(),
    )
    .expect("pid");
    let s = d.wait_status(Duration::from_secs(90), |s| {
        revision(s) == second && s["result"] == "applied"
    });
    assert!(
        s["message"].as_str().unwrap_or("").contains("created"),
        "{s}"
    );
    assert_eq!(count_bundles(&kc, &ns), 4);
    assert_eq!(d.stop(), Some(0));
}

/// What a forge sends: `sha256=<hex HMAC-SHA256 of the body>` (GitHub's `X-Hub-Signature-256`).
fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit as _, Mac as _};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The scenario of the shallow-history issue, end to end: commit 1 applies bundle app-a
/// (deletionPolicy delete) through a daemon whose clone is shallow; commit 2 sets orphan on
/// it and commit 3 removes it, both fetched in one pass. The shallow clone cannot see commit
/// 2, so the daemon deepens it until it finds that last version, and app-a's exclusive
/// dependents are orphaned (released), as a full clone would decide, never deleted.
#[test]
fn a_shallow_daemon_clone_deepens_itself_to_find_a_leaving_bundles_last_version() {
    use pbsync_devkit::testkit::git_http::serve;
    let keep = "apiVersion: core.oam.dev/v1beta1\nkind: ComponentDefinition\nmetadata: {name: web, namespace: ns}\nspec: {workload: {type: autodetects.core.oam.dev}}\n---\napiVersion: spectrocloud.com/v1beta1\nkind: WorkloadProfile\nmetadata: {name: keep-wp, namespace: ns}\nspec: {type: Application, workload: {components: [{name: m, type: web}]}}\n---\napiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata: {name: keep, namespace: ns}\nspec: {type: Application, workloadProfiles: [{name: keep-wp}]}\n";
    let app_a = |policy: &str| {
        format!(
            "apiVersion: spectrocloud.com/v1beta1\nkind: ProfileBundle\nmetadata: {{name: app-a, namespace: ns}}\nspec: {{type: Application, deletionPolicy: {policy}, workloadProfiles: [{{name: a-wp}}], workloadProfileDependencies: {{helmRepositories: [{{name: charts-a}}]}}}}\n"
        )
    };
    let deps = "apiVersion: spectrocloud.com/v1beta1\nkind: WorkloadProfile\nmetadata: {name: a-wp, namespace: ns}\nspec: {type: Application, workload: {components: [{name: m, type: web}]}}\n---\napiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata: {name: charts-a, namespace: ns}\nspec: {url: https://charts-a.example.com, interval: 1h}\n";
    let mut repo = ScratchRepo::new();
    repo.write("keep.yaml", keep);
    repo.write("app-a.yaml", app_a("delete"));
    repo.write("a-deps.yaml", deps);
    let first = repo.commit("1: app-a, policy delete").to_string();
    let served = tempfile::tempdir().expect("served");
    let bare = served.path().join("bundles.git");
    let git = |args: &[&str]| {
        let status = Command::new("git").args(args).status().expect("git");
        assert!(status.success(), "git {args:?}");
    };
    git(&[
        "clone",
        "-q",
        "--bare",
        &repo.path().display().to_string(),
        &bare.display().to_string(),
    ]);
    let work = repo.path().display().to_string();
    let publish = || {
        git(&[
            "-C",
            &bare.display().to_string(),
            "fetch",
            "-q",
            &work,
            "+refs/heads/*:refs/heads/*",
        ]);
    };
    let url = format!(
        "{}bundles.git",
        serve(served.path().to_path_buf(), "deploy", "s3cret")
    );
    let state = tempfile::tempdir().expect("state");
    let password = state.path().join("password");
    std::fs::write(&password, "s3cret\n").expect("password file");
    let out = state.path().join("out");
    let d = Daemon::start(
        &[
            "--repo",
            &url,
            "--git-username",
            "deploy",
            "--git-password-file",
            &password.display().to_string(),
            "--git-shallow",
            "true",
            "--state-dir",
            &state.path().join("var").display().to_string(),
            "--target",
            &format!("dir:{}", out.display()),
            "--interval",
            "1s",
        ],
        &[],
    );
    let s = d.wait_status(Duration::from_secs(30), |s| {
        revision(s) == first && s["result"] == "applied"
    });
    assert_eq!(revision(&s), first);
    let charts = out.join("ns/helmrepository/charts-a.yaml");
    assert!(charts.exists());

    repo.write("app-a.yaml", app_a("orphan"));
    repo.commit("2: app-a says orphan");
    repo.remove("app-a.yaml");
    repo.remove("a-deps.yaml");
    let third = repo.commit("3: app-a removed").to_string();
    publish();
    let s = d.wait_status(Duration::from_secs(30), |s| {
        revision(s) == third && s["result"] == "applied"
    });
    assert!(
        s["message"].as_str().unwrap_or("").contains("orphaned"),
        "{s}"
    );
    assert!(charts.exists(), "orphaned, not deleted");
    let text = std::fs::read_to_string(&charts).expect("charts-a");
    assert!(text.contains("pbsync.dev/released-by"), "{text}");
    assert!(!out.join("ns/profilebundle/app-a.yaml").exists());
    let log = d.log();
    assert!(log.contains("deepening the shallow clone"), "{log}");
    assert_eq!(d.stop(), Some(0));
}

// ---------------------------------------------------------------------------------------
// Health: the daemon follows what it applied (PaletteAI's controllers are played by the
// test, writing conditions through the status subresource)
// ---------------------------------------------------------------------------------------

/// The API of ProfileBundles in `ns`.
async fn bundles_api(kubeconfig: &Path, ns: &str) -> kube::Api<kube::api::DynamicObject> {
    let client = cluster::connect(kubeconfig).await.expect("client");
    let gvk = kube::api::GroupVersionKind::gvk("spectrocloud.com", "v1beta1", "ProfileBundle");
    kube::Api::namespaced_with(client, ns, &kube::api::ApiResource::from_gvk(&gvk))
}

/// Writes `conditions` on bundle `name` as its controller would.
fn set_bundle_conditions(kubeconfig: &Path, ns: &str, name: &str, conditions: serde_json::Value) {
    block_on(async {
        let api = bundles_api(kubeconfig, ns).await;
        let pp = kube::api::PatchParams {
            field_manager: Some("paletteai-controller".into()),
            ..Default::default()
        };
        api.patch_status(
            name,
            &pp,
            &kube::api::Patch::Merge(serde_json::json!({"status": {"conditions": conditions}})),
        )
        .await
        .expect("write status");
    });
}

/// The Events on bundle `name`: (type, reason, message), oldest first.
fn bundle_events(kubeconfig: &Path, ns: &str, name: &str) -> Vec<(String, String, String)> {
    block_on(async {
        let client = cluster::connect(kubeconfig).await.expect("client");
        let api: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::namespaced(client, ns);
        let lp = kube::api::ListParams::default().fields(&format!(
            "involvedObject.name={name},involvedObject.kind=ProfileBundle"
        ));
        let mut events = api.list(&lp).await.expect("events").items;
        events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
        events
            .into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                )
            })
            .collect()
    })
}

/// The status ConfigMap's data of instance `ns` (its namespace is `ns` too).
fn status_data(kubeconfig: &Path, ns: &str) -> std::collections::BTreeMap<String, String> {
    block_on(async {
        let client = cluster::connect(kubeconfig).await.expect("client");
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client, ns);
        api.get(&format!("pbsync-status-{ns}"))
            .await
            .expect("status configmap")
            .data
            .unwrap_or_default()
    })
}

/// Runs Debian's Chromium headless (scripts/deps installs it) with `args`; its stdout.
fn chromium(args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("run chromium (scripts/deps installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM Chromium builds from the page at `url`.
fn rendered_dom(url: &str) -> String {
    chromium(&["--dump-dom", url])
}

fn root<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["health"]["roots"]
        .as_array()
        .and_then(|roots| {
            roots
                .iter()
                .find(|r| r["key"]["kind"] == "ProfileBundle" && r["key"]["name"] == name)
        })
        .unwrap_or(&serde_json::Value::Null)
}

#[test]
fn status_metrics_events_the_page_and_the_configmap_follow_a_bundles_health() {
    let test = "daemon_follows_health";
    let Some(kc) = cluster::require(test) else {
        return;
    };
    let namespace = Namespace::create_blocking(&kc, test);
    let ns = namespace.name().to_string();
    let repo = kube_repo(&ns, &["a", "b"]);
    let repo_arg = repo.path().display().to_string();
    let kc_arg = kc.display().to_string();
    let mut args = kube_args(&repo_arg, &kc_arg, &ns);
    args.push("--ui");
    let d = Daemon::start(&args, &[]);

    // Applied, then followed: no controller has written anything, so every object is current
    // (kstatus: no conditions) and the revision is recorded as healthy.
    let s = d.wait_status(Duration::from_secs(60), |s| {
        s["result"] == "applied" && s["health"]["state"] == "current"
    });
    let applied = revision(&s).to_string();
    assert_eq!(s["health"]["healthyRevision"], applied.as_str(), "{s}");
    assert_eq!(
        status_data(&kc, &ns).get("lastHealthyRevision"),
        Some(&applied),
        "the status ConfigMap records the revision that became fully healthy"
    );

    // The controller stalls on bundle a.
    set_bundle_conditions(
        &kc,
        &ns,
        "a",
        serde_json::json!([{"type": "Stalled", "status": "True", "reason": "RenderFailed",
            "message": "component main: chart chat not found",
            "lastTransitionTime": "2026-12-07T10:00:00Z"}]),
    );
    let s = d.wait_status(Duration::from_secs(30), |s| {
        root(s, "a")["state"] == "failed"
    });
    assert_eq!(s["health"]["state"], "failed");
    assert_eq!(root(&s, "b")["state"], "current", "b is not held back: {s}");
    let chains = root(&s, "a")["chains"].to_string();
    assert!(
        chains.contains(&format!(
            "ProfileBundle {ns}/a failed: component main: chart chat not found (since "
        )),
        "{chains}"
    );
    let metrics = d.get("/metrics").1;
    for line in [
        "pbsync_health_objects{kind=\"ProfileBundle\",health=\"failed\"} 1",
        "pbsync_health_objects{kind=\"ProfileBundle\",health=\"current\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(
        metrics.contains("pbsync_last_healthy_age_seconds ")
            && !metrics.contains("pbsync_last_healthy_age_seconds -1"),
        "{metrics}"
    );
    let (code, page) = d.get("/");
    assert_eq!(code, 200);
    assert!(
        page.contains(&format!(
            r#"data-key="ProfileBundle {ns}/a" data-state="failed""#
        )),
        "{page}"
    );
    assert!(
        page.contains("component main: chart chat not found"),
        "{page}"
    );
    // As a browser builds it: a's tree is open and red, b's open (a handful of roots) and
    // green.
    let dom = rendered_dom(&format!("http://{}/", d.addr));
    assert!(
        dom.contains(&format!(
            r#"<li class="root node state-failed" data-key="ProfileBundle {ns}/a" data-state="failed"><details open="">"#
        )),
        "{dom}"
    );
    assert!(
        dom.contains(&format!(
            r#"<li class="root node state-current" data-key="ProfileBundle {ns}/b" data-state="current"><details open="">"#
        )),
        "{dom}"
    );
    // One Warning Event on a saying why; none on b.
    let events = || bundle_events(&kc, &ns, "a");
    let start = Instant::now();
    while !events().iter().any(|e| e.1 == "Unhealthy") {
        assert!(start.elapsed() < Duration::from_secs(20), "{:?}", events());
        wait(Duration::from_millis(100));
    }
    let unhealthy: Vec<_> = events()
        .into_iter()
        .filter(|e| e.1 == "Unhealthy")
        .collect();
    assert_eq!(unhealthy.len(), 1, "{unhealthy:?}");
    assert_eq!(unhealthy[0].0, "Warning");
    assert!(
        unhealthy[0].2.contains("chart chat not found")
            && unhealthy[0].2.ends_with("(was current)"),
        "{unhealthy:?}"
    );
    assert!(
        !bundle_events(&kc, &ns, "b")
            .iter()
            .any(|e| e.1 == "Unhealthy"),
        "b's health did not change"
    );

    // The controller recovers: current again, a Normal Event says so.
    set_bundle_conditions(
        &kc,
        &ns,
        "a",
        serde_json::json!([{"type": "Ready", "status": "True", "reason": "Ready", "message": "deployed",
            "lastTransitionTime": "2026-12-07T10:05:00Z"}]),
    );
    d.wait_status(Duration::from_secs(30), |s| {
        s["health"]["state"] == "current"
    });
    let start = Instant::now();
    while !events().iter().any(|e| e.1 == "Healthy") {
        assert!(start.elapsed() < Duration::from_secs(20), "{:?}", events());
        wait(Duration::from_millis(100));
    }
    assert!(events().iter().any(|e| e.0 == "Normal" && e.1 == "Healthy"));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn the_health_page_of_the_example_repository_renders_in_a_real_browser() {
    // The example repository on the directory target: every object current once written.
    let mut repo = ScratchRepo::new();
    pbsync_devkit::testkit::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout"),
        repo.path(),
    );
    let revision = repo.commit("the example").to_string();
    let state = tempfile::tempdir().expect("state");
    let target = format!("dir:{}", state.path().display());
    let repo_arg = repo.path().display().to_string();
    let d = Daemon::start(&["--repo", &repo_arg, "--target", &target, "--ui"], &[]);
    let s = d.wait_status(Duration::from_secs(60), |s| {
        s["health"]["healthyRevision"] == revision.as_str()
    });
    let roots: Vec<String> = s["health"]["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(roots.len(), 7, "{roots:?}");

    let url = format!("http://{}/", d.addr);
    let dom = rendered_dom(&url);
    // Every root is there, current and open, each node of its tree coloured.
    for id in &roots {
        assert!(
            dom.contains(&format!(
                r#"<li class="root node state-current" data-key="{id}" data-state="current"><details open="">"#
            )),
            "{id} missing from {dom}"
        );
    }
    assert!(!dom.contains("data-state=\"failed\""), "{dom}");
    assert!(
        dom.contains(&format!(
            r#"<dd id="healthy"><code>{}</code> since "#,
            &revision[..12]
        )),
        "{dom}"
    );
    // The plan of the pass, with its reasons.
    assert!(
        dom.contains("declared in bundles/chat-apps.yaml:3"),
        "{dom}"
    );
    // A screenshot, as the README's was taken: a PNG of the requested width.
    let shot = state.path().join("page.png");
    chromium(&[
        "--window-size=1280,1400",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    let png = std::fs::read(&shot).expect("screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(
        u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
        1280
    );
    assert_eq!(d.stop(), Some(0));
}

// ---------------------------------------------------------------------------------------
// Talking back to Git (GitLab's API from the test kit's simulator; Gitea's real one below)
// ---------------------------------------------------------------------------------------

/// Polls `f` until it returns `Some`; panics with `what` and the daemon's log after `timeout`.
fn wait_for<T>(d: &Daemon, timeout: Duration, what: &str, f: impl Fn() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: never happened\nlog:\n{}",
            d.log()
        );
        wait(Duration::from_millis(50));
    }
}

/// The plan of `repo`'s HEAD for `instance` against the directory target `state`, as the
/// note a posted plan carries.
fn change_note(
    repo: &ScratchRepo,
    state: &Path,
    instance: &str,
) -> pbsync::plan::comment::ChangeNote {
    use pbsync::engine::{self, Context, Goal, Input};
    let mut ctx = Context::new(repo.path(), "HEAD", "");
    ctx.plan.instance = instance.into();
    let snapshot = ctx.fetch().expect("read the commit");
    let target = pbsync::target::local_dir::LocalDir::new(state, instance);
    let mut report =
        block_on(engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&target))).expect("plan");
    pbsync::plan::comment::ChangeNote::of(&report.plan.take().expect("a plan"))
}

#[test]
fn commit_statuses_and_answers_on_merged_merge_requests_reach_gitlab() {
    use pbsync::plan::comment::{ChangeNote, MARKER};
    use pbsync_devkit::testkit::gitlab::GitlabSim;

    const TOKEN: &str = "glpat-daemon-test";
    let sim = GitlabSim::start(TOKEN, "platform/bundles");
    let mut repo = ScratchRepo::new();
    repo.write("shared.yaml", shared("team-a", &["charts"]));
    repo.write("a.yaml", app("team-a", "a", "delete", &["charts"]));
    let first = repo.commit("app a").to_string();
    // Merge request 1 was reviewed with a plan that showed something else.
    let stale = ChangeNote {
        count: 1,
        sha256: "0".repeat(64),
        changes: vec!["create ConfigMap team-a/ghost".into()],
    };
    sim.add_note(1, &format!("{MARKER}\n{}### pbsync plan\n", stale.render()));
    sim.add_merged(1, &first);

    let state = tempfile::tempdir().expect("state");
    let dir = tempfile::tempdir().expect("config dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "repo: {}\ntarget: dir:{}\ninterval: 0\nwatch: false\ninstance: platform\n\
             forge:\n  provider: gitlab\n  api-url: {}\n  repository: platform/bundles\n  \
             token-file: {}\n  status-url: http://127.0.0.1:9/status\n",
            repo.path().display(),
            state.path().display(),
            sim.api_url,
            token_file.display()
        ),
    )
    .expect("config");
    let d = Daemon::start(&["--config", config.to_str().expect("path")], &[]);
    d.wait_status(Duration::from_secs(30), |s| {
        revision(s) == first && s["result"] == "applied"
    });

    // pending while applying, then success once the objects are healthy.
    let states = |sha: &str| -> Vec<String> {
        sim.statuses()
            .iter()
            .filter(|s| s["sha"] == sha)
            .map(|s| s["status"].as_str().unwrap_or("").to_string())
            .collect()
    };
    wait_for(
        &d,
        Duration::from_secs(30),
        "success on the first commit",
        || {
            states(&first)
                .contains(&"success".to_string())
                .then_some(())
        },
    );
    let first_states = states(&first);
    assert_eq!(
        first_states.first().map(String::as_str),
        Some("running"),
        "{first_states:?}"
    );
    let last = sim
        .statuses()
        .into_iter()
        .rfind(|s| s["sha"] == first.as_str())
        .expect("a status");
    assert_eq!(last["name"], "pbsync/platform");
    assert_eq!(last["target_url"], "http://127.0.0.1:9/status");

    // The answer on merge request 1 says loudly that the reviewed plan differs.
    let answer = wait_for(&d, Duration::from_secs(30), "an answer on MR 1", || {
        sim.notes(1).into_iter().find(|n| {
            n["body"]
                .as_str()
                .is_some_and(|b| b.contains("pbsync-applied"))
        })
    });
    let body = answer["body"].as_str().expect("body");
    assert!(body.contains("differs from the last plan posted"), "{body}");
    assert!(body.contains("create ConfigMap team-a/ghost"), "{body}");

    // Merge request 2 was reviewed with the very plan the daemon will apply.
    repo.write("b.yaml", app("team-a", "b", "delete", &["charts"]));
    let second = repo.commit("app b").to_string();
    let note = change_note(&repo, state.path(), "platform");
    assert!(note.count >= 2, "b and its profile are created: {note:?}");
    sim.add_note(2, &format!("{MARKER}\n{}### pbsync plan\n", note.render()));
    sim.add_merged(2, &second);
    assert_eq!(http(d.addr, "POST", "/reconcile", &[], b"").0, 202);
    let answer = wait_for(&d, Duration::from_secs(30), "an answer on MR 2", || {
        sim.notes(2).into_iter().find(|n| {
            n["body"]
                .as_str()
                .is_some_and(|b| b.contains("pbsync-applied"))
        })
    });
    let body = answer["body"].as_str().expect("body");
    assert!(body.contains("matches the last plan posted"), "{body}");
    assert!(!body.contains("WARNING"), "{body}");

    // An invalid commit: failure, naming the file, line and rule; nothing applied.
    repo.write("z.yaml", app("team-a", "z", "delete", &["nope"]));
    let third = repo
        .commit("app z needs a repository nobody declares")
        .to_string();
    assert_eq!(http(d.addr, "POST", "/reconcile", &[], b"").0, 202);
    let failure = wait_for(
        &d,
        Duration::from_secs(30),
        "failure on the invalid commit",
        || {
            sim.statuses()
                .into_iter()
                .find(|s| s["sha"] == third.as_str() && s["status"] == "failed")
        },
    );
    let description = failure["description"].as_str().expect("description");
    assert!(
        description.starts_with("invalid, nothing applied: z.yaml:"),
        "{description}"
    );
    assert!(description.contains("R6"), "{description}");
    assert_eq!(count_files(state.path(), "z.yaml"), 0);

    // One answer per merge request however many passes ran, nothing refused, no token in
    // the log.
    assert_eq!(
        sim.notes(1)
            .iter()
            .filter(|n| n["body"]
                .as_str()
                .is_some_and(|b| b.contains("pbsync-applied")))
            .count(),
        1
    );
    assert_eq!(sim.refused(), Vec::<String>::new());
    assert!(!d.log().contains(TOKEN));
    assert!(
        metric(
            &d,
            "pbsync_reports_total{sink=\"commit-status\",result=\"sent\"}"
        ) >= 4.0
    );
    assert_eq!(d.stop(), Some(0));
}

/// The whole loop against a real Gitea: a daemon follows a Gitea repository with polling off;
/// the pull request's plan is posted by `pbsync plan --post gitea` (one sticky comment however
/// often it runs); the merge makes Gitea deliver a signed push webhook; the daemon fetches,
/// applies, sets its commit status on the merge commit, and answers on the merged pull request
/// that what it applied is what the plan showed. All of it observed through Gitea's API.
#[test]
fn a_merge_on_gitea_is_delivered_applied_and_reported_on_the_commit_and_the_pull_request() {
    use pbsync_devkit::testkit::gitea;
    let test = "a_merge_on_gitea_is_delivered_applied_and_reported";
    let Some(gitea) = gitea::require(test) else {
        return;
    };
    let remote = gitea.create_repo(test);
    let mut local = ScratchRepo::new();
    let first = local
        .commit_on(
            "main",
            None,
            &[
                ("shared.yaml", Some(&shared("team-a", &["charts"]))),
                ("a.yaml", Some(&app("team-a", "a", "delete", &["charts"]))),
            ],
        )
        .to_string();
    gitea.push(&remote, local.path(), "main");

    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("out");
    let token = dir.path().join("gitea-token");
    std::fs::write(&token, format!("{}\n", gitea.token())).expect("token");
    let secret = dir.path().join("webhook-secret");
    std::fs::write(&secret, "hook-s3cr3t\n").expect("secret");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "repo: {}\nref: main\ngit-token-file: {tok}\nstate-dir: {}\ntarget: dir:{}\n\
             interval: 0\nresync-interval: 0\ninstance: platform\nwebhook-secret-file: {}\n\
             forge:\n  provider: gitea\n  token-file: {tok}\n  status-url: http://127.0.0.1:9/\n",
            remote.url,
            dir.path().join("state").display(),
            out.display(),
            secret.display(),
            tok = token.display(),
        ),
    )
    .expect("config");
    let d = Daemon::start(&["--config", config.to_str().expect("path")], &[]);
    d.wait_status(Duration::from_secs(60), |s| {
        revision(s) == first && s["result"] == "applied"
    });
    // The latest status of pbsync's context (Gitea numbers a commit's statuses in order).
    let status_of = |sha: &str| -> Option<serde_json::Value> {
        gitea
            .commit_statuses(&remote, sha)
            .into_iter()
            .filter(|s| s["context"] == "pbsync/platform")
            .max_by_key(|s| s["id"].as_u64())
    };
    let s = wait_for(
        &d,
        Duration::from_secs(30),
        "success on the first commit",
        || status_of(&first).filter(|s| s["status"] == "success"),
    );
    assert_eq!(s["description"], "applied and healthy");
    assert_eq!(s["target_url"], "http://127.0.0.1:9/");
    gitea.add_webhook(
        &remote,
        &format!("http://{}/webhook", d.addr),
        "hook-s3cr3t",
        &["push"],
    );

    // A pull request adding app b, planned and posted by pbsync (twice: one comment).
    local.commit_on(
        "feature",
        Some("main"),
        &[("b.yaml", Some(&app("team-a", "b", "delete", &["charts"])))],
    );
    gitea.push(&remote, local.path(), "feature");
    let number = gitea.create_pull_request(&remote, "feature", "main", "app b");
    let post = || {
        let out = Command::new(env!("CARGO_BIN_EXE_pbsync"))
            .args([
                "plan",
                "--repo",
                local.path().to_str().expect("path"),
                "--base",
                "refs/heads/main",
                "--head",
                "refs/heads/feature",
                "--offline",
                "--post",
                "gitea",
                "--post-pr",
                &number.to_string(),
                "--post-repo",
                &format!("{}/{}", remote.owner, remote.name),
                "--post-api-url",
                &format!("{}/api/v1", gitea.url),
                "--post-token-file",
                token.to_str().expect("path"),
            ])
            .output()
            .expect("pbsync plan --post");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    post();
    post();
    let plans: Vec<serde_json::Value> = gitea
        .issue_comments(&remote, number)
        .into_iter()
        .filter(|c| {
            c["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("<!-- pbsync-plan -->"))
        })
        .collect();
    assert_eq!(plans.len(), 1, "one sticky plan comment: {plans:#?}");
    assert!(plans[0]["body"].as_str().unwrap_or("").contains("team-a/b"));

    // The merge: Gitea delivers the push, the daemon (which does not poll) applies it.
    let merge = gitea.merge_pull_request(&remote, number);
    d.wait_status(Duration::from_secs(60), |s| {
        revision(s) == merge && s["result"] == "applied"
    });
    assert_eq!(count_files(&out, "b.yaml"), 1, "{}", d.log());
    assert!(
        metric(&d, "pbsync_webhook_deliveries_total{result=\"accepted\"}") >= 1.0,
        "the push came by webhook"
    );
    let s = wait_for(
        &d,
        Duration::from_secs(30),
        "success on the merge commit",
        || status_of(&merge).filter(|s| s["status"] == "success"),
    );
    assert_eq!(s["description"], "applied and healthy");
    let answer = wait_for(
        &d,
        Duration::from_secs(30),
        "the answer on the pull request",
        || {
            gitea.issue_comments(&remote, number).into_iter().find(|c| {
                c["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("pbsync-applied"))
            })
        },
    );
    let body = answer["body"].as_str().unwrap_or("");
    assert!(body.contains("matches the last plan posted"), "{body}");
    assert!(
        !d.log().contains(gitea.token()),
        "the token leaked into the log"
    );
    assert_eq!(d.stop(), Some(0));
}
