//! The daemon's remote source over Git's smart HTTP protocol, end to end on loopback: a real
//! `git http-backend` (run as CGI behind a small server that demands HTTP basic auth, as
//! GitHub and GitLab do) serves a bare repository, and `Remote::sync` fetches it with the
//! configured credentials. TLS is not part of it (libgit2 verifies certificates against the
//! system roots, which no loopback server can join); the credential exchange is.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine as _;
use pbsync::source::remote::GitAuth;
use pbsync::source::remote::Remote;
use pbsync::target::Secret;

use pbsync_devkit::testkit::ScratchRepo;

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

/// Serves `root` with `git http-backend`, to clients presenting `user:password` only.
pub(crate) fn serve(root: PathBuf, user: &'static str, password: &'static str) -> String {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            let app = axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let (root, expected) = (root.clone(), expected.clone());
                    async move {
                        let authorized = headers
                            .get(header::AUTHORIZATION)
                            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                        if !authorized {
                            return Response::builder()
                                .status(StatusCode::UNAUTHORIZED)
                                .header(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")
                                .body(Body::empty())
                                .expect("response");
                        }
                        cgi(&root, &method, &uri, &headers, &body, user)
                    }
                },
            );
            axum::serve(listener, app).await.expect("serve");
        });
    });
    let addr = rx.recv().expect("address");
    format!("http://{addr}/bundles.git")
}

/// One request through `git http-backend` (CGI/1.1).
fn cgi(
    root: &Path,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    user: &str,
) -> Response {
    let header_value = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header_value(header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header_value(header::CONTENT_ENCODING),
        )
        .env(
            "GIT_PROTOCOL",
            headers
                .get("git-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        )
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("request body");
    let out = child.wait_with_output().expect("http-backend output");
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .expect("CGI headers");
    let mut response = Response::builder();
    let head = String::from_utf8_lossy(&out.stdout[..split.0]).to_string();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value[..3].parse().expect("status code");
            response = response.status(code);
        } else {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from(out.stdout[split.1..].to_vec()))
        .expect("response")
}

#[test]
fn basic_auth_and_tokens_fetch_over_smart_http_and_wrong_ones_are_refused() {
    let served = tempfile::tempdir().unwrap();
    let commit = bare_repo(served.path());
    let basic = serve(served.path().to_path_buf(), "deploy", "s3cret");
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
    let token = serve(served.path().to_path_buf(), "x-access-token", "tok3n");
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
