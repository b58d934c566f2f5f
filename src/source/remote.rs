//! Remote repositories: a persistent bare clone in the state directory, fetched incrementally
//! over HTTPS (token or basic auth), SSH (a private key; host keys checked strictly against
//! `known_hosts`) or `file://`, and the commit a branch, tag or pinned id names in it.
//!
//! Every fetch force-updates pbsync's own refs (`refs/pbsync/...`), so a force-push or a
//! rewritten history is simply a new tip: the commit the reference names now is what counts.
//! Blocking (git2): call it from `spawn_blocking`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, FetchPrune, Oid,
    RemoteCallbacks, Repository,
};
use sha2::{Digest as _, Sha256};

use pbsync_target::Secret;

/// Errors of reaching a remote repository; all of them may pass on a later try.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The clone in the state directory could not be opened or created.
    #[error("cannot open or create the clone in {dir}")]
    CloneDirFailed {
        /// The clone's directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: git2::Error,
    },
    /// Fetching failed (network, authentication, host key).
    #[error("cannot fetch {url}")]
    FetchFailed {
        /// The URL, without credentials.
        url: String,
        /// Cause.
        #[source]
        source: git2::Error,
    },
    /// The reference names nothing the remote has.
    #[error("{url} has no branch, tag or commit {reference:?}")]
    ReferenceNotFound {
        /// The URL, without credentials.
        url: String,
        /// The reference.
        reference: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the configured repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A repository on this host, read in place.
    Path(PathBuf),
    /// A URL (`file://`, `https://`, `ssh://`, `git@host:path`), mirrored into the state dir.
    Url(String),
}

impl Location {
    /// Classifies a configured repository.
    pub fn of(repo: &str) -> Self {
        if repo.contains("://") {
            return Self::Url(repo.to_string());
        }
        // scp-like syntax: user@host:path (a local path may hold ':' but not before any '/').
        if let Some((before, _)) = repo.split_once(':')
            && before.contains('@')
            && !before.contains('/')
        {
            return Self::Url(repo.to_string());
        }
        Self::Path(PathBuf::from(repo))
    }

    /// The local directory to watch for new commits, if the repository is on this host.
    pub fn local_dir(&self) -> Option<PathBuf> {
        match self {
            Self::Path(p) => Some(p.clone()),
            Self::Url(u) => u.strip_prefix("file://").map(PathBuf::from),
        }
    }
}

/// `url` without a password or token in its user part.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}/{path}"),
            // A lone user name is no secret over SSH; over HTTP(S) it is often a token
            // (`https://<token>@host/...`).
            None if scheme == "ssh" => url.to_string(),
            None => format!("{scheme}://***@{host}/{path}"),
        },
        None => url.to_string(),
    }
}

/// How the repository is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitAuth {
    /// No credentials (local paths, public repositories).
    None,
    /// HTTPS token (sent as the password of user `x-access-token`).
    Token(Secret),
    /// HTTPS basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// SSH with a private key; the host key must be in `known_hosts`.
    SshKey {
        /// Private key file.
        key: PathBuf,
        /// known_hosts file.
        known_hosts: PathBuf,
    },
}

/// What a fetch mirrors: HEAD, every branch and every tag, under `refs/pbsync/`.
const REFSPECS: [&str; 3] = [
    "+HEAD:refs/pbsync/HEAD",
    "+refs/heads/*:refs/pbsync/heads/*",
    "+refs/tags/*:refs/pbsync/tags/*",
];

/// Where a deepened shallow clone remembers its depth (inside the bare repository).
const DEPTH_FILE: &str = "pbsync-depth";

/// A remote repository and its persistent clone.
#[derive(Debug, Clone)]
pub struct Remote {
    url: String,
    reference: Option<String>,
    auth: GitAuth,
    shallow: bool,
    dir: PathBuf,
}

impl Remote {
    /// A remote mirrored under `state_dir/repos/`.
    pub fn new(
        url: &str,
        reference: Option<String>,
        auth: GitAuth,
        shallow: bool,
        state_dir: &Path,
    ) -> Self {
        let digest = hex::encode(Sha256::digest(url.as_bytes()));
        let name: String = url
            .rsplit(['/', ':'])
            .find(|s| !s.is_empty())
            .unwrap_or("repo")
            .trim_end_matches(".git")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        Self {
            url: url.to_string(),
            reference,
            auth,
            shallow,
            dir: state_dir
                .join("repos")
                .join(format!("{name}-{}", &digest[..12])),
        }
    }

    /// The clone's directory (a bare repository).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fetches what changed since the last fetch and returns the commit the reference names.
    pub fn sync(&self) -> Result<Oid> {
        let safe_url = redact(&self.url);
        let repo = self.open()?;
        // A pinned commit already fetched needs no network at all.
        if let Some(oid) = self.pinned()
            && repo.find_commit(oid).is_ok()
        {
            return Ok(oid);
        }
        let mut remote = repo
            .remote_anonymous(&self.url)
            .map_err(|source| Error::FetchFailed {
                url: safe_url.clone(),
                source,
            })?;
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks(&self.auth))
            .download_tags(AutotagOption::None)
            .prune(FetchPrune::On);
        // libgit2 cannot make shallow clones over the local transport. A clone deepened to
        // find a leaving bundle's last version keeps that depth.
        if self.is_shallow_fetch() {
            opts.depth(self.depth());
        }
        remote
            .fetch(&REFSPECS, Some(&mut opts), None)
            .map_err(|source| Error::FetchFailed {
                url: safe_url.clone(),
                source,
            })?;
        self.resolve(&repo).ok_or_else(|| Error::ReferenceNotFound {
            url: safe_url,
            reference: self.reference.clone().unwrap_or_else(|| "HEAD".into()),
        })
    }

    fn is_shallow_fetch(&self) -> bool {
        self.shallow && !self.url.starts_with("file://") && self.pinned().is_none()
    }

    /// The depth shallow fetches ask for: 1, or what the clone was deepened to.
    fn depth(&self) -> i32 {
        std::fs::read_to_string(self.dir.join(DEPTH_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1)
    }

    /// Fetches the history of the clone `depth` commits deep (a shallow clone whose walk
    /// back to a leaving bundle's last version reached its boundary), and keeps that depth
    /// for later fetches.
    pub fn deepen(&self, depth: u32) -> Result<()> {
        let safe_url = redact(&self.url);
        let repo = self.open()?;
        let mut remote = repo
            .remote_anonymous(&self.url)
            .map_err(|source| Error::FetchFailed {
                url: safe_url.clone(),
                source,
            })?;
        let depth = i32::try_from(depth).unwrap_or(i32::MAX);
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks(&self.auth))
            .download_tags(AutotagOption::None)
            .depth(depth);
        remote
            .fetch(&REFSPECS, Some(&mut opts), None)
            .map_err(|source| Error::FetchFailed {
                url: safe_url,
                source,
            })?;
        // Best effort: a depth that is not remembered only costs the next deepening again.
        let _ = std::fs::write(self.dir.join(DEPTH_FILE), depth.to_string());
        Ok(())
    }

    fn open(&self) -> Result<Repository> {
        let failed = |source| Error::CloneDirFailed {
            dir: self.dir.clone(),
            source,
        };
        match Repository::open_bare(&self.dir) {
            Ok(r) => Ok(r),
            Err(_) => {
                std::fs::create_dir_all(&self.dir)
                    .map_err(|e| failed(git2::Error::from_str(&e.to_string())))?;
                Repository::init_bare(&self.dir).map_err(failed)
            }
        }
    }

    fn pinned(&self) -> Option<Oid> {
        let r = self.reference.as_deref()?;
        (r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Oid::from_str(r).ok())
            .flatten()
    }

    fn resolve(&self, repo: &Repository) -> Option<Oid> {
        let peel = |name: &str| {
            repo.find_reference(name)
                .and_then(|r| r.peel_to_commit())
                .map(|c| c.id())
                .ok()
        };
        match self.reference.as_deref() {
            None | Some("HEAD") => peel("refs/pbsync/HEAD"),
            Some(r) => {
                if let Some(oid) = self.pinned() {
                    return repo.find_commit(oid).ok().map(|c| c.id());
                }
                let short = r
                    .strip_prefix("refs/heads/")
                    .or_else(|| r.strip_prefix("refs/tags/"))
                    .unwrap_or(r);
                peel(&format!("refs/pbsync/heads/{short}"))
                    .or_else(|| peel(&format!("refs/pbsync/tags/{short}")))
            }
        }
    }
}

/// Credentials and host-key checks for one fetch.
fn callbacks(auth: &GitAuth) -> RemoteCallbacks<'static> {
    let mut cb = RemoteCallbacks::new();
    let auth = auth.clone();
    let mut attempts = 0u32;
    let cred_auth = auth.clone();
    cb.credentials(move |_url, username, allowed| {
        // libgit2 asks again after a rejected credential; stop instead of looping.
        attempts += 1;
        if attempts > 3 {
            return Err(git2::Error::from_str("credentials rejected"));
        }
        match &cred_auth {
            GitAuth::Token(token) if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => {
                Cred::userpass_plaintext(username.unwrap_or("x-access-token"), token.expose())
            }
            GitAuth::Basic { username, password }
                if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
            {
                Cred::userpass_plaintext(username, password.expose())
            }
            GitAuth::SshKey { key, .. } if allowed.contains(CredentialType::USERNAME) => {
                Cred::username(username.unwrap_or("git"))
            }
            GitAuth::SshKey { key, .. } => {
                Cred::ssh_key(username.unwrap_or("git"), None, key, None)
            }
            _ => Err(git2::Error::from_str(
                "no credentials configured for this repository",
            )),
        }
    });
    cb.certificate_check(move |cert, host| {
        let Some(hostkey) = cert.as_hostkey() else {
            // X.509 (HTTPS): libgit2's own verification against the system roots stands.
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let GitAuth::SshKey { known_hosts, .. } = &auth else {
            return Err(git2::Error::from_str(
                "ssh needs --git-ssh-key-file and a known_hosts file",
            ));
        };
        let (Some(key), Some(kind)) = (hostkey.hostkey(), hostkey.hostkey_type()) else {
            return Err(git2::Error::from_str("the server sent no host key"));
        };
        let text = std::fs::read_to_string(known_hosts)
            .map_err(|e| git2::Error::from_str(&format!("cannot read known_hosts: {e}")))?;
        if host_key_known(&text, host, kind.name(), key) {
            Ok(CertificateCheckStatus::CertificateOk)
        } else {
            Err(git2::Error::from_str(&format!(
                "host key of {host} ({}) is not in {}",
                kind.name(),
                known_hosts.display()
            )))
        }
    });
    cb
}

/// True when `known_hosts` lists `key` of type `kind` for `host` (plain host patterns,
/// `[host]:port` and comma-separated lists; hashed entries are not matched, and
/// `@revoked` lines never match).
pub(crate) fn host_key_known(known_hosts: &str, host: &str, kind: &str, key: &[u8]) -> bool {
    for line in known_hosts.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(hosts), Some(k), Some(b64)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let host_matches = hosts.split(',').any(|h| {
            h == host
                || h.strip_prefix('[')
                    .and_then(|r| r.split_once("]:"))
                    .is_some_and(|(name, _)| name == host)
        });
        if host_matches
            && k == kind
            && base64::engine::general_purpose::STANDARD
                .decode(b64)
                .is_ok_and(|decoded| decoded == key)
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_scp_syntax_are_remote_and_paths_are_local() {
        assert_eq!(
            Location::of("/srv/repo"),
            Location::Path(PathBuf::from("/srv/repo"))
        );
        assert!(matches!(
            Location::of("git@github.com:org/repo.git"),
            Location::Url(_)
        ));
        assert!(matches!(Location::of("https://h/x.git"), Location::Url(_)));
        assert_eq!(
            Location::of("file:///srv/repo").local_dir(),
            Some(PathBuf::from("/srv/repo"))
        );
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact("https://bob:tok3n@example.com/org/repo.git"),
            "https://bob:***@example.com/org/repo.git"
        );
        assert_eq!(redact("https://example.com/x"), "https://example.com/x");
        assert_eq!(
            redact("https://ghp_tok3n@github.com/org/repo.git"),
            "https://***@github.com/org/repo.git",
            "a token given as the user name"
        );
        assert_eq!(
            redact("ssh://git@example.com:2222/org/repo.git"),
            "ssh://git@example.com:2222/org/repo.git"
        );
    }

    #[test]
    fn known_hosts_matches_host_type_and_key_only() {
        let key = b"\x00\x00\x00\x0bssh-ed25519key-bytes";
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let text = format!(
            "# comment\nother.example {kind} {b64}\ngit.example,10.0.0.1 ssh-ed25519 {b64}\n[port.example]:2222 ssh-ed25519 {b64}\n@revoked bad.example ssh-ed25519 {b64}\n",
            kind = "ssh-ed25519"
        );
        assert!(host_key_known(&text, "git.example", "ssh-ed25519", key));
        assert!(host_key_known(&text, "10.0.0.1", "ssh-ed25519", key));
        assert!(host_key_known(&text, "port.example", "ssh-ed25519", key));
        assert!(!host_key_known(&text, "git.example", "ssh-rsa", key));
        assert!(!host_key_known(
            &text,
            "git.example",
            "ssh-ed25519",
            b"other"
        ));
        assert!(!host_key_known(&text, "bad.example", "ssh-ed25519", key));
        assert!(!host_key_known(
            &text,
            "unknown.example",
            "ssh-ed25519",
            key
        ));
    }
}
