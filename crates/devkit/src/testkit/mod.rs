//! The test kit shared by every test binary: one scratch-repository helper, one set of YAML
//! builders, one way to find the test cluster and one namespace guard, and the test Gitea.
//!
//! - [`ScratchRepo`] ([`repo`]): a git repository in a temporary directory whose commits
//!   are deterministic (fixed author, time advancing one minute per commit), so commit ids,
//!   and the golden snapshots that show them, are stable.
//! - [`yaml`]: the documents tests write (ProfileBundle, WorkloadProfile,
//!   ComponentDefinition, HelmRepository, the ClusterProfile envelope, ComputePool).
//! - [`cluster`]: the test control plane (`KUBECONFIG`, else `scripts/testcluster env`), the
//!   rule for a test that needs it ([`cluster::require`]: no cluster fails the test unless
//!   `PBSYNC_TEST_SKIP_CLUSTER=1`), and [`cluster::Namespace`], a namespace of the test's own
//!   that is deleted when it is dropped, also when the test fails.
//! - [`gitea`]: the test Gitea server (`scripts/gitea`): the same rule ([`gitea::require`],
//!   `PBSYNC_TEST_SKIP_GITEA=1`), repositories of a test's own, pushes, pull requests,
//!   webhooks, commit statuses and comments through its API.
//! - Flux sources on loopback: [`helm_repo`] (a Helm chart repository served from memory),
//!   [`oci_registry`] (a real OCI registry, and pushing Flux artifacts to it), [`flux`] (the
//!   test cluster's source-controller: its label, its kinds, waiting for `Ready`), [`archive`]
//!   (tar.gz and SHA-256 for them).
//! - [`signing`]: OpenPGP and SSH keys made in the test, commits signed by the real `git`,
//!   and signed commits tampered with.
//! - [`block_on`], [`copy_dir`], [`list_files`]: small helpers every binary needs;
//!   [`serve_loopback`]: an axum app on a loopback port (the Git and Helm servers).
//!
//! Everything here panics on failure with a message naming what failed: it is test code.

pub mod archive;
pub mod cluster;
pub mod flux;
pub mod git_http;
pub mod gitea;
pub mod gitlab;
pub mod helm_repo;
pub mod oci_registry;
pub mod repo;
pub mod signing;
pub mod yaml;

use std::path::Path;

pub use repo::ScratchRepo;

/// Runs `f` to completion on a single-threaded runtime of its own (for tests that are not
/// async themselves). Not from inside a runtime: there, `.await` instead.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Runs `fut` on a thread of its own with a runtime of its own, and waits for it: usable
/// where [`block_on`] is not (inside a runtime). A panic in `fut` is the caller's panic.
pub(crate) fn on_own_runtime<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let thread = std::thread::spawn(move || block_on(fut));
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Copies the directory tree `src` into `dst` (which must exist).
pub fn copy_dir(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).expect("read_dir") {
        let entry = entry.expect("entry");
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&to).expect("mkdir");
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).expect("copy");
        }
    }
}

/// Every file under `dir`, as paths relative to it, sorted (none when `dir` does not exist).
pub fn list_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).expect("prefix").display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Serves `app` on a free loopback port from a thread and current-thread runtime of its own
/// until `stop` completes (`std::future::pending()`: for the test process's life). Returns
/// the address (bound before this returns) and the thread.
pub fn serve_loopback(
    app: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
                .expect("serve");
        });
    });
    (rx.recv().expect("address of the loopback server"), thread)
}
