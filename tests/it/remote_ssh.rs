//! The daemon's remote source over SSH, end to end on loopback: a real OpenSSH server
//! (`sshd`, started by the test on a free port with its own host key and authorized key)
//! serves a bare repository, and `Remote::sync` fetches it with a private key file while
//! checking the host key against a `known_hosts` file strictly.
//!
//! Without `sshd` (package openssh-server; `.ci/run` installs it) the test says so and
//! passes; under CI (`CI` set) it fails instead.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pbsync::source::remote::GitAuth;
use pbsync::source::remote::Remote;

use pbsync_devkit::testkit::ScratchRepo;

const SSHD: &str = "/usr/sbin/sshd";

struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-b", "256", "-N", ""])
        .arg("-f")
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts `sshd` in `dir` accepting `dir/client_key` for the current user.
fn start_sshd(dir: &Path) -> Option<Sshd> {
    if !Path::new(SSHD).exists() {
        assert!(
            std::env::var_os("PBSYNC_TEST_SKIP_SSHD").is_some_and(|v| v == "1"),
            "{SSHD} is missing (install openssh-server, or set PBSYNC_TEST_SKIP_SSHD=1 to skip on purpose)"
        );
        eprintln!("SKIPPED: {SSHD} is missing (PBSYNC_TEST_SKIP_SSHD=1)");
        return None;
    }
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).expect("copy");
    let port = free_port();
    let config = format!(
        "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
         PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).expect("sshd_config");
    // Privilege separation directory (sshd refuses to start without it when run as root).
    let _ = std::fs::create_dir_all("/run/sshd");
    let mut child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sshd");
    // sshd says when it listens; its log goes on to sshd.log (read on failure).
    let stderr = child.stderr.take().expect("stderr");
    let log = dir.join("sshd.log");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = std::fs::File::create(log).expect("log");
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(out, "{line}");
            if line.contains("Server listening") {
                let _ = tx.send(());
            }
        }
    });
    let sshd = Sshd {
        child,
        port,
        dir: dir.to_path_buf(),
    };
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "sshd did not listen: {}",
        std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
    );
    Some(sshd)
}

/// `known_hosts` naming `key_pub` (an OpenSSH public key file) for the server's port.
fn known_hosts(sshd: &Sshd, key_pub: &Path, name: &str) -> PathBuf {
    let key = std::fs::read_to_string(key_pub).expect("public key");
    let mut fields = key.split_whitespace();
    let (kind, b64) = (fields.next().expect("type"), fields.next().expect("key"));
    let path = sshd.dir.join(name);
    std::fs::write(&path, format!("[127.0.0.1]:{} {kind} {b64}\n", sshd.port)).expect("write");
    path
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_key_file_fetches_over_ssh_and_an_unknown_host_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sshd) = start_sshd(dir.path()) else {
        return;
    };
    let mut repo = ScratchRepo::new();
    repo.write("bundles/a.yaml", "kind: Placeholder\n");
    let commit = repo.commit("one");
    let bare = dir.path().join("bundles.git");
    let status = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(repo.path())
        .arg(&bare)
        .status()
        .expect("git clone --bare");
    assert!(status.success());
    let url = format!("ssh://{}@127.0.0.1:{}{}", user(), sshd.port, bare.display());
    let state = tempfile::tempdir().unwrap();
    let sync = |key: &Path, known: &Path| {
        Remote::new(
            &url,
            None,
            GitAuth::SshKey {
                key: key.to_path_buf(),
                known_hosts: known.to_path_buf(),
            },
            false,
            state.path(),
        )
        .sync()
    };
    let client_key = dir.path().join("client_key");
    let known = known_hosts(&sshd, &dir.path().join("host_key.pub"), "known_hosts");
    let fetched = sync(&client_key, &known).unwrap_or_else(|e| {
        panic!(
            "ssh fetch: {}\nsshd log:\n{}",
            pbsync::error_chain(&e),
            std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default()
        )
    });
    assert_eq!(fetched, commit);

    // Another host key in known_hosts: strict checking refuses the server.
    keygen(&dir.path().join("other_key"));
    let wrong = known_hosts(&sshd, &dir.path().join("other_key.pub"), "wrong_hosts");
    let err = sync(&client_key, &wrong).expect_err("an unknown host key is refused");
    // libgit2 reports the refusal of its certificate callback in its own words.
    let msg = pbsync::error_chain(&err).to_lowercase();
    assert!(msg.contains("hostkey") || msg.contains("host key"), "{msg}");
    // A key the server does not authorize: refused.
    let err = sync(&dir.path().join("other_key"), &known).expect_err("unauthorized key");
    let msg = pbsync::error_chain(&err).to_lowercase();
    eprintln!("unauthorized key: {msg}");
    assert!(msg.contains("auth") || msg.contains("credentials"), "{msg}");
}
