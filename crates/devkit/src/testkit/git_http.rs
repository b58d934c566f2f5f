//! A real Git server over smart HTTP on loopback: `git http-backend` run as CGI behind a
//! small axum server that demands HTTP basic auth, as GitHub and GitLab do. The remote of
//! the daemon's tests (shallow fetches need a transport other than `file://`, which libgit2
//! cannot fetch shallow from).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine as _;

/// Serves the bare repositories under `root` with `git http-backend`, to clients presenting
/// `user:password` only; returns the base URL (`http://127.0.0.1:PORT/`), to which a
/// repository's directory name is appended.
pub fn serve(root: PathBuf, user: &'static str, password: &'static str) -> String {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
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
    let (addr, _thread) = super::serve_loopback(app, std::future::pending());
    format!("http://{addr}/")
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
