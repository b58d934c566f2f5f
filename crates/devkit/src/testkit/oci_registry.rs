//! A real OCI distribution registry on loopback, and pushing Flux artifacts to it.
//!
//! The registry is go-containerregistry's `pkg/registry` (the in-memory registry Flux's own
//! tests use), built by `scripts/testcluster build` as the `ociregistry` binary (source in
//! `tools/testcluster/flux/ociregistry`). [`OciRegistry::start`] runs one of its own on a
//! free loopback port; it is killed when the handle is dropped. [`OciRegistry::push_artifact`]
//! pushes what `flux push artifact` pushes, with plain HTTP requests of the distribution API:
//! an OCI image manifest whose config has Flux's media type and whose one layer is a
//! tar+gzip of the files, which a Flux OCIRepository (with `spec.insecure: true`, the
//! registry speaks plain HTTP) extracts by default.
//!
//! ```no_run
//! use pbsync_devkit::testkit::oci_registry::OciRegistry;
//! let registry = OciRegistry::start();
//! let pushed = registry.push_artifact("manifests/app", "v1", &[("app.yaml", b"kind: x\n")]);
//! // OCIRepository spec.url: registry.url("manifests/app"), spec.ref.tag: "v1";
//! // its status.artifact.revision becomes pushed.revision ("v1@sha256:...").
//! ```

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use super::archive;

/// The OCI image manifest media type (what `flux push artifact` writes).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Flux's config media type (`CanonicalConfigMediaType` of fluxcd/pkg/oci).
pub const FLUX_CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.flux.config.v1+json";
/// Flux's content layer media type (`CanonicalContentMediaType`): a tar+gzip of the files.
/// A source-controller OCIRepository without `spec.layerSelector` takes the first layer and
/// extracts it as tar+gzip; with `layerSelector.mediaType` set to this, it picks this one.
pub const FLUX_CONTENT_MEDIA_TYPE: &str = "application/vnd.cncf.flux.content.v1.tar+gzip";
/// The fixed creation time of pushed artifacts (annotation and config), so the same files
/// always give the same digests.
pub const CREATED: &str = "2024-01-01T00:00:00Z";

/// A running registry of the test's own, killed when dropped.
#[derive(Debug)]
pub struct OciRegistry {
    child: Child,
    addr: SocketAddr,
    // Kept open: the registry may not find its stdout closed.
    _stdout: BufReader<ChildStdout>,
}

/// What [`OciRegistry::push_artifact`] pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest's digest, `sha256:<hex>`.
    pub manifest_digest: String,
    /// The layer's digest (the tar+gzip of the files).
    pub layer_digest: String,
    /// The revision a Flux OCIRepository on this tag reports: `<tag>@<manifest digest>`.
    pub revision: String,
}

impl OciRegistry {
    /// Starts the registry on a free loopback port. Panics if the binary is not built (it is
    /// built by `scripts/testcluster build` and `up`) or does not start.
    pub fn start() -> Self {
        let binary = binary();
        let mut child = Command::new(&binary)
            .args(["-addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let addr: SocketAddr = match read {
            Ok(n) if n > 0 => line.trim().parse().unwrap_or_else(|e| {
                let _ = child.kill();
                panic!("{} printed {line:?}, not an address: {e}", binary.display())
            }),
            _ => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "{} exited before printing its address ({status:?})",
                    binary.display()
                )
            }
        };
        Self {
            child,
            addr,
            _stdout: stdout,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `oci://` URL of `repository` in this registry (an OCIRepository's `spec.url`).
    pub fn url(&self, repository: &str) -> String {
        format!("oci://{}/{repository}", self.addr)
    }

    /// Pushes `files` (path, content) as a Flux artifact to `repository:tag`, with the
    /// annotations `flux push artifact` writes (created, source, revision = `tag`). The same
    /// files always give the same digests.
    pub fn push_artifact(&self, repository: &str, tag: &str, files: &[(&str, &[u8])]) -> Pushed {
        let tar = archive::tar(files);
        let layer = archive::gzip(&tar);
        // The config go-containerregistry writes for Flux's artifacts (an empty image's, with
        // the creation time and the layer's uncompressed digest).
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "",
            "created": CREATED,
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [archive::oci_digest(&tar)]},
            "config": {},
        }))
        .expect("config");
        let config_digest = self.push_blob(repository, &config);
        let layer_digest = self.push_blob(repository, &layer);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": FLUX_CONFIG_MEDIA_TYPE,
                "size": config.len(),
                "digest": config_digest,
            },
            "layers": [{
                "mediaType": FLUX_CONTENT_MEDIA_TYPE,
                "size": layer.len(),
                "digest": layer_digest,
            }],
            "annotations": {
                "org.opencontainers.image.created": CREATED,
                "org.opencontainers.image.source": "pbsync-testkit",
                "org.opencontainers.image.revision": tag,
            },
        }))
        .expect("manifest");
        let manifest_digest = archive::oci_digest(&manifest);
        let put = self.request(
            "PUT",
            &format!("/v2/{repository}/manifests/{tag}"),
            Some(MANIFEST_MEDIA_TYPE),
            &manifest,
        );
        assert_eq!(put.status, 201, "PUT manifest {repository}:{tag}: {put}");
        if let Some(digest) = put.header("docker-content-digest") {
            assert_eq!(
                digest, manifest_digest,
                "the registry's digest of the manifest"
            );
        }
        Pushed {
            revision: format!("{tag}@{manifest_digest}"),
            manifest_digest,
            layer_digest,
        }
    }

    /// Uploads `blob` to `repository` (POST an upload, PUT its content with the digest, the
    /// distribution spec's monolithic upload); returns its digest.
    pub fn push_blob(&self, repository: &str, blob: &[u8]) -> String {
        let digest = archive::oci_digest(blob);
        let started = self.request(
            "POST",
            &format!("/v2/{repository}/blobs/uploads/"),
            None,
            &[],
        );
        assert_eq!(started.status, 202, "POST blob upload: {started}");
        let location = started
            .header("location")
            .unwrap_or_else(|| panic!("POST blob upload: no Location: {started}"))
            .to_string();
        // A Location may be absolute; the request goes to the same registry either way.
        let path = match location.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]).to_string(),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let put = self.request(
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            Some("application/octet-stream"),
            blob,
        );
        assert_eq!(put.status, 201, "PUT blob {digest}: {put}");
        digest
    }

    /// The manifest of `repository:reference` as the registry serves it (status, body), e.g.
    /// to check a push: 404 for an unknown tag.
    pub fn get_manifest(&self, repository: &str, reference: &str) -> (u16, Vec<u8>) {
        let r = self.request(
            "GET",
            &format!("/v2/{repository}/manifests/{reference}"),
            None,
            &[],
        );
        (r.status, r.body)
    }

    /// One HTTP/1.1 request on a connection of its own.
    fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> HttpResponse {
        http(self.addr, method, path, content_type, body)
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `ociregistry` binary: `scripts/testcluster bin-path ociregistry`.
fn binary() -> std::path::PathBuf {
    let out = Command::new(super::cluster::script())
        .args(["bin-path", "ociregistry"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/testcluster bin-path ociregistry");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "the OCI registry is not built ({path}): run `scripts/testcluster build` (or `up`)"
    );
    path.into()
}

/// A response of [`http`].
#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    /// The first header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Display for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} {}",
            self.status,
            String::from_utf8_lossy(&self.body).trim()
        )
    }
}

/// A minimal HTTP/1.1 client for the loopback registry: one request per connection
/// (`Connection: close`), the response read to its end; chunked bodies are decoded.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let what = format!("{method} http://{addr}{path}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pbsync-testkit\r\n\
         Accept: */*\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no complete response head"));
    let text = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: bad status line in {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// The content of a chunked body (RFC 9112 §7.1; trailers ignored).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let Some(chunk) = raw.get(start..start + size) else {
            break;
        };
        out.extend_from_slice(chunk);
        raw = raw.get(start + size + 2..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
