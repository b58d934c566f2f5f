//! Keys made in the test and commits signed by the real `git`: an OpenPGP key in a throwaway
//! GnuPG home (`gpg`), an SSH key (`ssh-keygen`) with its allowed-signers file, commits
//! signed with either (or not at all), and a signed commit tampered with after signing.
//!
//! Git runs with the user's and the system's configuration shut out, so a developer's
//! `commit.gpgsign` or signing key never leaks into a test.

use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{ObjectType, Oid};

use super::ScratchRepo;

/// An OpenPGP key pair in a GnuPG home of its own (removed, and its agent stopped, on drop).
pub struct GpgKey {
    home: tempfile::TempDir,
    /// The primary key's fingerprint (upper-case hex).
    pub fingerprint: String,
    /// The key that signs: the primary key, or the signing subkey ([`Self::with_subkey`]).
    signing: String,
    public: PathBuf,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl GpgKey {
    /// A new ed25519 key for `uid` (`Name <email>`) that signs with its primary key.
    pub fn generate(uid: &str) -> Self {
        Self::make(uid, "sign", false)
    }

    /// A new ed25519 key for `uid` whose primary key only certifies and whose signing key is
    /// a subkey (the usual shape of a real key).
    pub fn with_subkey(uid: &str) -> Self {
        Self::make(uid, "cert", true)
    }

    fn make(uid: &str, usage: &str, subkey: bool) -> Self {
        let home = tempfile::tempdir().expect("GNUPGHOME");
        let gpg = |args: &[&str]| {
            run(Command::new("gpg")
                .env("GNUPGHOME", home.path())
                .args(["--batch", "--quiet", "--pinentry-mode", "loopback"])
                .args(["--passphrase", ""])
                .args(args))
        };
        gpg(&["--quick-gen-key", uid, "ed25519", usage, "never"]);
        let fingerprints = |listing: &str, record: &str| -> Vec<String> {
            // `--with-colons`: a `fpr` line follows each `pub`/`sub` line.
            let mut out = Vec::new();
            let mut wanted = false;
            for line in listing.lines() {
                let fields: Vec<&str> = line.split(':').collect();
                if fields[0] == "fpr" && wanted {
                    out.push(fields[9].to_string());
                }
                wanted = fields[0] == record;
            }
            out
        };
        let listing = gpg(&["--with-colons", "--list-keys", uid]);
        let fingerprint = fingerprints(&listing, "pub")
            .pop()
            .expect("the new key's fingerprint");
        let signing = if subkey {
            gpg(&["--quick-add-key", &fingerprint, "ed25519", "sign", "never"]);
            let listing = gpg(&["--with-colons", "--list-keys", uid]);
            format!(
                "{}!",
                fingerprints(&listing, "sub").pop().expect("the subkey")
            )
        } else {
            fingerprint.clone()
        };
        let public = home.path().join("public.asc");
        let armored = gpg(&["--armor", "--export", &fingerprint]);
        std::fs::write(&public, armored).expect("write public key");
        Self {
            home,
            fingerprint,
            signing,
            public,
        }
    }

    /// The armored public key (`gpg --export --armor`).
    pub fn public_key_file(&self) -> &Path {
        &self.public
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        // The agent gpg started for this home would outlive the test otherwise.
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// An ed25519 SSH key pair and an allowed-signers file naming it (removed on drop).
pub struct SshKey {
    dir: tempfile::TempDir,
    key: PathBuf,
    /// The principal it is allowed for.
    pub principal: String,
}

impl SshKey {
    /// A new key for `principal` (an email address).
    pub fn generate(principal: &str) -> Self {
        let dir = tempfile::tempdir().expect("ssh key dir");
        let key = dir.path().join("id_ed25519");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", principal, "-f"])
            .arg(&key));
        Self {
            dir,
            key,
            principal: principal.to_string(),
        }
    }

    /// The public key line (`ssh-ed25519 AAAA... comment`).
    pub fn public_key(&self) -> String {
        std::fs::read_to_string(self.key.with_extension("pub")).expect("public key")
    }

    /// An allowed-signers file with this key for its principal, allowed the `git` namespace
    /// (what `gpg.ssh.allowedSignersFile` holds).
    pub fn allowed_signers_file(&self) -> PathBuf {
        let path = self.dir.path().join("allowed_signers");
        let line = format!(
            "{} namespaces=\"git\" {}",
            self.principal,
            self.public_key()
        );
        std::fs::write(&path, line).expect("write allowed signers");
        path
    }
}

/// How a commit is signed.
#[derive(Clone, Copy)]
pub enum Signing<'a> {
    /// Not at all.
    Unsigned,
    /// With an OpenPGP key (`git commit -S`).
    Gpg(&'a GpgKey),
    /// With an SSH key (`git -c gpg.format=ssh commit -S`).
    Ssh(&'a SshKey),
}

/// Commits the whole work tree of `repo` with the real `git`, signed as `signing` says;
/// returns the commit id.
pub fn commit(repo: &ScratchRepo, message: &str, signing: Signing<'_>) -> Oid {
    let git = || {
        let mut cmd = Command::new("git");
        cmd.current_dir(repo.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(["-c", "user.name=pbsync tests"])
            .args(["-c", "user.email=tests@pbsync.invalid"]);
        cmd
    };
    run(git().args(["add", "--all"]));
    let mut cmd = git();
    match signing {
        Signing::Unsigned => {
            cmd.args(["-c", "commit.gpgsign=false"]);
        }
        Signing::Gpg(key) => {
            cmd.env("GNUPGHOME", key.home.path())
                .args(["-c", "gpg.format=openpgp"])
                .arg("-c")
                .arg(format!("user.signingkey={}", key.signing))
                .arg("-c")
                .arg("commit.gpgsign=true");
        }
        Signing::Ssh(key) => {
            cmd.args(["-c", "gpg.format=ssh"])
                .arg("-c")
                .arg(format!("user.signingkey={}", key.key.display()))
                .arg("-c")
                .arg("commit.gpgsign=true");
        }
    }
    run(cmd.args(["commit", "--allow-empty", "--quiet", "-m", message]));
    repo.head()
}

/// Writes a copy of commit `commit` whose raw text `edit` changed (its signature header kept
/// as it was) and points the current branch at it; returns the new commit's id. What an
/// attacker with push access but without the key could do.
pub fn tamper(repo: &ScratchRepo, commit: Oid, edit: impl FnOnce(&str) -> String) -> Oid {
    let git = repo.git();
    let odb = git.odb().expect("odb");
    let raw = odb.read(commit).expect("commit object");
    let text = std::str::from_utf8(raw.data()).expect("commit text");
    let changed = edit(text);
    assert_ne!(changed, text, "the edit changed nothing");
    assert!(
        changed.contains("\ngpgsig "),
        "the signature header is kept"
    );
    let forged = odb
        .write(ObjectType::Commit, changed.as_bytes())
        .expect("write commit");
    let head = git.head().expect("HEAD");
    let branch = head.name().expect("branch name").to_string();
    git.reference(&branch, forged, true, "tamper")
        .expect("move branch");
    forged
}

/// The tree of commit `commit`.
pub fn tree_of(repo: &ScratchRepo, commit: Oid) -> Oid {
    repo.git().find_commit(commit).expect("commit").tree_id()
}
