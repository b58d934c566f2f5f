//! Signed commits: which keys may sign the commits pbsync applies (`verify:` in the daemon's
//! configuration, `--verify-keys` of the one-shot commands), and whether a commit's signature
//! verifies against them. OpenPGP signatures are checked with rPGP (`pgp`), SSH signatures
//! with `ssh-key`; none of the cryptography is written here.
//!
//! Key files are read once, when the configuration is loaded: an armored (or binary) OpenPGP
//! public key or keyring, or an OpenSSH allowed-signers file (`principals [options] keytype
//! base64 [comment]`, as `gpg.ssh.allowedSignersFile`), told apart by their content. Deciding
//! a commit ([`Verifier::verify`]) is pure; [`Verifier::verify_commit`] only adds reading the
//! signature out of the commit object with git2.
//!
//! The policy is strict where Git's tools would only warn: a revoked OpenPGP key, a key that
//! had expired when it signed, a key whose flags do not allow signing, an SSH signature made
//! for another namespace than `git`, and an allowed-signers entry restricted to other
//! namespaces all refuse the commit. Allowed-signers options pbsync cannot honour
//! (`cert-authority`, `valid-after`, `valid-before`) are configuration errors rather than
//! silently ignored restrictions.

use std::fmt;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};
use pgp::composed::{Deserializable as _, DetachedSignature, SignedPublicKey};
use pgp::packet::{self, SignatureType, SubpacketData};
use pgp::types::{KeyDetails as _, Tag};

/// The namespace Git signs commits in with SSH keys (`ssh-keygen -Y sign -n git`).
const SSH_NAMESPACE: &str = "git";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The kind of a signature or key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OpenPGP (`gpg`).
    OpenPgp,
    /// SSH signatures (`gpg.format=ssh`).
    Ssh,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenPgp => "OpenPGP",
            Self::Ssh => "SSH",
        })
    }
}

/// A key file that cannot be used; a configuration error.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}")]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An OpenPGP file that does not parse as public keys.
    #[error("{path}: not an OpenPGP public key")]
    InvalidOpenPgp {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// An OpenPGP private key where a public one belongs.
    #[error("{path}: holds a private key; give the public key (gpg --export --armor)")]
    PrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// An OpenPGP key none of whose self-signatures verify: nothing says the key is its
    /// owner's.
    #[error("{path}: OpenPGP key {fingerprint} has no valid self-signature")]
    NoSelfSignature {
        /// The file.
        path: PathBuf,
        /// The primary key.
        fingerprint: String,
    },
    /// A line of an allowed-signers file that cannot be used.
    #[error("{path}:{line}: {message}")]
    InvalidAllowedSigner {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A file without a single key.
    #[error("{path}: holds no key")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Why a commit is refused: it is not signed by one of the configured keys.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No signature.
    #[error("the commit is not signed")]
    Unsigned,
    /// A signature of a kind pbsync does not verify (X.509, or garbage).
    #[error("the commit's signature is neither OpenPGP nor SSH")]
    UnknownFormat,
    /// The signature does not parse.
    #[error("the commit's {kind} signature cannot be read")]
    Unreadable {
        /// Its kind.
        kind: Kind,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// Signed by a key that is not configured.
    #[error("the commit is signed by {kind} key {key}, which is not among the configured keys")]
    UnknownKey {
        /// Its kind.
        kind: Kind,
        /// The signing key: an OpenPGP fingerprint or key id, an SSH fingerprint.
        key: String,
    },
    /// Signed by a configured key, but the signature does not match the commit.
    #[error(
        "the {kind} signature by key {key} does not verify: the commit was changed after it \
         was signed, or the signature is corrupt"
    )]
    BadSignature {
        /// Its kind.
        kind: Kind,
        /// The key.
        key: String,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// The OpenPGP key (or its primary key) is revoked.
    #[error("OpenPGP key {key} is revoked")]
    Revoked {
        /// The key.
        key: String,
    },
    /// The OpenPGP key had expired when the signature was made.
    #[error("OpenPGP key {key} had expired when it signed")]
    Expired {
        /// The key.
        key: String,
    },
    /// The OpenPGP key's flags do not allow signing.
    #[error("OpenPGP key {key} is not a signing key")]
    NotForSigning {
        /// The key.
        key: String,
    },
    /// An SSH signature made for another purpose than a Git object.
    #[error("the SSH signature is for namespace {namespace:?}, not {SSH_NAMESPACE:?}")]
    WrongNamespace {
        /// The namespace it was made in.
        namespace: String,
    },
    /// An allowed signer whose `namespaces=` option does not include `git`.
    #[error("SSH key {key} of {principals} may not sign git commits (namespaces=\"{namespaces}\")")]
    NamespaceNotAllowed {
        /// The key.
        key: String,
        /// Its principals.
        principals: String,
        /// The namespaces it is allowed.
        namespaces: String,
    },
    /// The commit object could not be read.
    #[error("cannot read the commit's signature")]
    ReadFailed(#[source] git2::Error),
}

/// Who signed a commit that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The kind of signature.
    pub kind: Kind,
    /// The key that signed: OpenPGP fingerprint (of the subkey when a subkey signed), or the
    /// SSH key's SHA-256 fingerprint.
    pub key: String,
    /// Whose key it is: the OpenPGP key's first user id, or the allowed signer's principals.
    pub identity: String,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key {} ({})", self.kind, self.key, self.identity)
    }
}

/// One OpenPGP key (a primary key or a subkey) that may have made a signature.
struct PgpKey {
    key: PgpComponent,
    /// Hex fingerprint.
    fingerprint: String,
    /// The first user id of its certificate.
    identity: String,
    /// Its flags (or their absence) allow signing.
    signs: bool,
    /// It, or its primary key, is revoked.
    revoked: bool,
    /// Seconds since the epoch after which it may no longer sign.
    expires: Option<u64>,
}

enum PgpComponent {
    Primary(packet::PublicKey),
    Sub(packet::PublicSubkey),
}

impl PgpKey {
    fn matches(&self, sig: &packet::Signature) -> bool {
        let (fp, id) = match &self.key {
            PgpComponent::Primary(k) => (k.fingerprint(), k.legacy_key_id()),
            PgpComponent::Sub(k) => (k.fingerprint(), k.legacy_key_id()),
        };
        sig.issuer_fingerprint().contains(&&fp) || sig.issuer_key_id().contains(&&id)
    }

    fn verify(&self, sig: &DetachedSignature, data: &[u8]) -> pgp::errors::Result<()> {
        match &self.key {
            PgpComponent::Primary(k) => sig.verify(k, data),
            PgpComponent::Sub(k) => sig.verify(k, data),
        }
    }
}

/// One line of an allowed-signers file.
struct AllowedSigner {
    principals: String,
    /// `namespaces=` (comma-separated), when the line restricts them.
    namespaces: Option<String>,
    key: ssh_key::PublicKey,
}

/// The keys commits must be signed with.
#[derive(Default)]
pub struct Verifier {
    openpgp: Vec<PgpKey>,
    ssh: Vec<AllowedSigner>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pgp: Vec<&str> = self
            .openpgp
            .iter()
            .map(|k| k.fingerprint.as_str())
            .collect();
        let ssh: Vec<&str> = self.ssh.iter().map(|s| s.principals.as_str()).collect();
        f.debug_struct("Verifier")
            .field("openpgp", &pgp)
            .field("ssh", &ssh)
            .finish()
    }
}

impl Verifier {
    /// The keys of every file in `paths`.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let mut v = Self::default();
        for p in paths {
            v.add_file(p)?;
        }
        Ok(v)
    }

    /// Adds the keys of `path`: an OpenPGP public key or keyring (armored or binary), or an
    /// allowed-signers file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::ReadFailed {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let added = if text.contains("-----BEGIN PGP PRIVATE KEY BLOCK-----") {
            return Err(KeyError::PrivateKey {
                path: path.to_path_buf(),
            });
        } else if text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
            self.add_openpgp(path, read_armored_certs(&text))?
        } else if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            // Binary OpenPGP packets always start with the tag's high bit set; text never does.
            self.add_openpgp(path, read_binary_certs(&bytes))?
        } else {
            self.add_allowed_signers(path, &text)?
        };
        if added == 0 {
            return Err(KeyError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// True when no key is configured (nothing could verify).
    pub fn is_empty(&self) -> bool {
        self.openpgp.is_empty() && self.ssh.is_empty()
    }

    fn add_openpgp(
        &mut self,
        path: &Path,
        certs: Result<Vec<SignedPublicKey>, BoxError>,
    ) -> Result<usize, KeyError> {
        let certs = certs.map_err(|source| KeyError::InvalidOpenPgp {
            path: path.to_path_buf(),
            source,
        })?;
        let count = certs.len();
        for cert in certs {
            let keys = signing_keys(&cert).ok_or_else(|| KeyError::NoSelfSignature {
                path: path.to_path_buf(),
                fingerprint: format!("{:X}", cert.primary_key.fingerprint()),
            })?;
            self.openpgp.extend(keys);
        }
        Ok(count)
    }

    fn add_allowed_signers(&mut self, path: &Path, text: &str) -> Result<usize, KeyError> {
        let mut count = 0;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let signer =
                parse_allowed_signer(line).map_err(|message| KeyError::InvalidAllowedSigner {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message,
                })?;
            self.ssh.push(signer);
            count += 1;
        }
        Ok(count)
    }

    /// Reads the signature of `commit` and decides it (see [`Self::verify`]).
    pub fn verify_commit(&self, repo: &Repository, commit: Oid) -> Result<Signer, Refusal> {
        match repo.extract_signature(&commit, None) {
            Ok((signature, signed)) => self.verify(Some((&signature, &signed))),
            Err(e) if e.code() == git2::ErrorCode::NotFound => self.verify(None),
            Err(e) => Err(Refusal::ReadFailed(e)),
        }
    }

    /// Decides a commit from its signature and the bytes it signs (the commit object without
    /// its signature header): who signed it, or why it is refused. Pure.
    pub fn verify(&self, signed: Option<(&[u8], &[u8])>) -> Result<Signer, Refusal> {
        let Some((signature, data)) = signed else {
            return Err(Refusal::Unsigned);
        };
        let head = signature.trim_ascii_start();
        if head.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
            self.verify_openpgp(signature, data)
        } else if head.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
            self.verify_ssh(signature, data)
        } else {
            Err(Refusal::UnknownFormat)
        }
    }

    fn verify_openpgp(&self, signature: &[u8], data: &[u8]) -> Result<Signer, Refusal> {
        let unreadable = |source: BoxError| Refusal::Unreadable {
            kind: Kind::OpenPgp,
            source,
        };
        let (sig, _) =
            DetachedSignature::from_armor_single(signature).map_err(|e| unreadable(e.into()))?;
        if !matches!(
            sig.signature.typ(),
            Some(SignatureType::Binary | SignatureType::Text)
        ) {
            return Err(unreadable(
                format!("not a data signature ({:?})", sig.signature.typ()).into(),
            ));
        }
        let issuer = || {
            sig.signature
                .issuer_fingerprint()
                .first()
                .map(|f| format!("{f:X}"))
                .or_else(|| {
                    sig.signature
                        .issuer_key_id()
                        .first()
                        .map(ToString::to_string)
                })
                .unwrap_or_else(|| "(no issuer)".into())
        };
        let Some(key) = self.openpgp.iter().find(|k| k.matches(&sig.signature)) else {
            return Err(Refusal::UnknownKey {
                kind: Kind::OpenPgp,
                key: issuer(),
            });
        };
        key.verify(&sig, data).map_err(|e| Refusal::BadSignature {
            kind: Kind::OpenPgp,
            key: key.fingerprint.clone(),
            source: e.into(),
        })?;
        // The key made it; now whether it was allowed to.
        if key.revoked {
            return Err(Refusal::Revoked {
                key: key.fingerprint.clone(),
            });
        }
        if !key.signs {
            return Err(Refusal::NotForSigning {
                key: key.fingerprint.clone(),
            });
        }
        let made = sig
            .signature
            .created()
            .map(|t| u64::from(t.as_secs()))
            .ok_or_else(|| unreadable("the signature has no creation time".into()))?;
        if key.expires.is_some_and(|at| made > at) {
            return Err(Refusal::Expired {
                key: key.fingerprint.clone(),
            });
        }
        Ok(Signer {
            kind: Kind::OpenPgp,
            key: key.fingerprint.clone(),
            identity: key.identity.clone(),
        })
    }

    fn verify_ssh(&self, signature: &[u8], data: &[u8]) -> Result<Signer, Refusal> {
        let sig = ssh_key::SshSig::from_pem(signature).map_err(|e| Refusal::Unreadable {
            kind: Kind::Ssh,
            source: e.into(),
        })?;
        if sig.namespace() != SSH_NAMESPACE {
            return Err(Refusal::WrongNamespace {
                namespace: sig.namespace().to_string(),
            });
        }
        let fingerprint = sig.public_key().fingerprint(ssh_key::HashAlg::Sha256);
        let Some(signer) = self
            .ssh
            .iter()
            .find(|s| s.key.key_data() == sig.public_key())
        else {
            return Err(Refusal::UnknownKey {
                kind: Kind::Ssh,
                key: fingerprint.to_string(),
            });
        };
        signer
            .key
            .verify(SSH_NAMESPACE, data, &sig)
            .map_err(|e| Refusal::BadSignature {
                kind: Kind::Ssh,
                key: fingerprint.to_string(),
                source: e.into(),
            })?;
        if let Some(namespaces) = &signer.namespaces
            && !namespaces.split(',').any(|n| n.trim() == SSH_NAMESPACE)
        {
            return Err(Refusal::NamespaceNotAllowed {
                key: fingerprint.to_string(),
                principals: signer.principals.clone(),
                namespaces: namespaces.clone(),
            });
        }
        Ok(Signer {
            kind: Kind::Ssh,
            key: fingerprint.to_string(),
            identity: signer.principals.clone(),
        })
    }
}

/// Every public key in armored text (one or more armored blocks, each possibly a keyring).
fn read_armored_certs(text: &str) -> Result<Vec<SignedPublicKey>, BoxError> {
    const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
    let mut certs = Vec::new();
    for (start, _) in text.match_indices(BEGIN) {
        let (iter, _) = SignedPublicKey::from_armor_many(&text.as_bytes()[start..])?;
        for cert in iter {
            certs.push(cert?);
        }
    }
    Ok(certs)
}

/// Every public key in binary OpenPGP data (`gpg --export`).
fn read_binary_certs(bytes: &[u8]) -> Result<Vec<SignedPublicKey>, BoxError> {
    let mut certs = Vec::new();
    for cert in SignedPublicKey::from_bytes_many(bytes)? {
        certs.push(cert?);
    }
    Ok(certs)
}

/// True when `sig` was made by the primary key `primary` itself (not a third party's
/// certification).
fn by_primary(sig: &packet::Signature, primary: &packet::PublicKey) -> bool {
    sig.issuer_fingerprint().contains(&&primary.fingerprint())
        || sig.issuer_key_id().contains(&&primary.legacy_key_id())
}

/// True when a self-signature allows signing: its key flags say so, or it has none (keys
/// from before key flags).
fn allows_signing(sig: &packet::Signature) -> bool {
    let has_flags = sig.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    });
    !has_flags || sig.key_flags().sign()
}

/// When a key stops being valid: creation plus the expiration a self-signature sets.
fn expiry(created: pgp::types::Timestamp, sig: &packet::Signature) -> Option<u64> {
    sig.key_expiration_time()
        .map(|d| u64::from(d.as_secs()))
        .filter(|&d| d > 0)
        .map(|d| u64::from(created.as_secs()) + d)
}

fn newest<'a>(sigs: impl Iterator<Item = &'a packet::Signature>) -> Option<&'a packet::Signature> {
    sigs.max_by_key(|s| s.created().map_or(0, pgp::types::Timestamp::as_secs))
}

/// The keys of a certificate that may sign, judged by their verified self-signatures; `None`
/// when the primary key has no valid self-signature at all.
fn signing_keys(cert: &SignedPublicKey) -> Option<Vec<PgpKey>> {
    let primary = &cert.primary_key;
    let primary_fp = format!("{:X}", primary.fingerprint());
    let mut self_sigs: Vec<&packet::Signature> = Vec::new();
    let mut identity = None;
    for user in &cert.details.users {
        let valid: Vec<&packet::Signature> = user
            .signatures
            .iter()
            .filter(|s| by_primary(s, primary))
            .filter(|s| s.typ() != Some(SignatureType::CertRevocation))
            .filter(|s| {
                s.verify_certification(primary, Tag::UserId, &user.id)
                    .is_ok()
            })
            .collect();
        if !valid.is_empty() && identity.is_none() {
            identity = Some(String::from_utf8_lossy(user.id.id()).into_owned());
        }
        self_sigs.extend(valid);
    }
    self_sigs.extend(
        cert.details
            .direct_signatures
            .iter()
            .filter(|s| by_primary(s, primary) && s.verify_key(primary).is_ok()),
    );
    let current = newest(self_sigs.iter().copied())?;
    let revoked = cert
        .details
        .revocation_signatures
        .iter()
        .any(|s| s.verify_key(primary).is_ok());
    let identity = identity.unwrap_or_else(|| primary_fp.clone());
    let mut keys = vec![PgpKey {
        key: PgpComponent::Primary(primary.clone()),
        fingerprint: primary_fp,
        identity: identity.clone(),
        signs: allows_signing(current),
        revoked,
        expires: expiry(primary.created_at(), current),
    }];
    for sub in &cert.public_subkeys {
        let bound = |s: &&packet::Signature| s.verify_subkey_binding(primary, &sub.key).is_ok();
        let binding = newest(
            sub.signatures
                .iter()
                .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
                .filter(bound),
        );
        let Some(binding) = binding else { continue };
        // A signing subkey must sign back (the embedded primary key binding), or anyone
        // could bind someone else's signing key to their certificate.
        let backed = binding
            .embedded_signature()
            .is_some_and(|back| back.verify_primary_key_binding(&sub.key, primary).is_ok());
        let sub_revoked = sub
            .signatures
            .iter()
            .filter(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
            .any(|s| bound(&s));
        keys.push(PgpKey {
            key: PgpComponent::Sub(sub.key.clone()),
            fingerprint: format!("{:X}", sub.key.fingerprint()),
            identity: identity.clone(),
            signs: binding.key_flags().sign() && backed,
            revoked: revoked || sub_revoked,
            expires: expiry(sub.key.created_at(), binding)
                .into_iter()
                .chain(keys[0].expires)
                .min(),
        });
    }
    Some(keys)
}

/// Parses one allowed-signers line: `principals [options] keytype base64 [comment]`.
fn parse_allowed_signer(line: &str) -> Result<AllowedSigner, String> {
    let (principals, rest) = take_field(line);
    if principals.is_empty() || rest.is_empty() {
        return Err("expected `principals [options] keytype base64 [comment]`".into());
    }
    let first = take_field(rest).0;
    let (options, key) = if first.parse::<ssh_key::Algorithm>().is_ok() {
        ("", rest)
    } else {
        take_field(rest)
    };
    let mut namespaces = None;
    for option in split_options(options) {
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        match name.to_ascii_lowercase().as_str() {
            "namespaces" => namespaces = Some(value.trim_matches('"').to_string()),
            "cert-authority" | "valid-after" | "valid-before" => {
                return Err(format!(
                    "option {name:?} is not supported (pbsync would not honour it)"
                ));
            }
            _ => return Err(format!("unknown option {name:?}")),
        }
    }
    let key =
        ssh_key::PublicKey::from_openssh(key).map_err(|e| format!("not an SSH public key: {e}"))?;
    Ok(AllowedSigner {
        principals: principals.trim_matches('"').to_string(),
        namespaces,
        key,
    })
}

/// The first whitespace-separated field of `s` (double quotes keep spaces inside it), and
/// the rest with leading whitespace removed.
fn take_field(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&s[..i], s[i..].trim_start()),
            _ => {}
        }
    }
    (s, "")
}

/// The comma-separated options of an allowed-signers line (commas inside quotes kept).
fn split_options(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    fn signers(text: &str) -> Result<Verifier, KeyError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("allowed_signers");
        std::fs::write(&path, text).expect("write");
        Verifier::from_files(&[path])
    }

    #[test]
    fn an_allowed_signers_line_reads_principals_options_key_and_comment() {
        let s = parse_allowed_signer(&format!(
            "\"a@example.com,b@example.com\" namespaces=\"git,file\" {KEY} laptop"
        ))
        .expect("valid");
        assert_eq!(s.principals, "a@example.com,b@example.com");
        assert_eq!(s.namespaces.as_deref(), Some("git,file"));
        assert_eq!(s.key.comment(), "laptop");
        let s = parse_allowed_signer(&format!("ci@example.com {KEY}")).expect("valid");
        assert_eq!(s.principals, "ci@example.com");
        assert_eq!(s.namespaces, None);
    }

    #[test]
    fn restrictions_pbsync_cannot_honour_are_configuration_errors_at_their_line() {
        let err = signers(&format!(
            "# deploy keys\nci@example.com {KEY}\nold@example.com valid-before=20240101 {KEY}\n"
        ))
        .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("allowed_signers:3: option \"valid-before\" is not supported"),
            "{text}"
        );
        let err = signers(&format!("ca@example.com cert-authority {KEY}\n")).expect_err("ca");
        assert!(
            err.to_string().contains(":1: option \"cert-authority\""),
            "{err}"
        );
    }

    #[test]
    fn a_line_without_a_key_is_a_configuration_error() {
        let err = signers("ci@example.com ssh-ed25519 not-base64\n").expect_err("refused");
        assert!(
            err.to_string().contains(":1: not an SSH public key"),
            "{err}"
        );
        let err = signers("# nothing\n").expect_err("empty");
        assert!(matches!(err, KeyError::Empty { .. }), "{err}");
    }

    #[test]
    fn a_private_key_file_is_refused() {
        let err = signers("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxx\n").expect_err("private");
        assert!(matches!(err, KeyError::PrivateKey { .. }), "{err}");
    }

    #[test]
    fn an_unsigned_commit_and_an_unknown_signature_format_are_refused() {
        let v = signers(&format!("ci@example.com {KEY}\n")).expect("valid");
        assert!(matches!(v.verify(None), Err(Refusal::Unsigned)));
        let x509 = b"-----BEGIN SIGNED MESSAGE-----\nMII\n-----END SIGNED MESSAGE-----\n";
        assert!(matches!(
            v.verify(Some((x509, b"tree 0\n"))),
            Err(Refusal::UnknownFormat)
        ));
    }

    #[test]
    fn an_ssh_signature_made_for_another_namespace_is_refused() {
        // The signature of "testing" in namespace "example" from ssh-key's documentation,
        // made by KEY, an allowed signer: a signature for another purpose is not a commit's.
        let sig = "-----BEGIN SSH SIGNATURE-----
U1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAgsz6u836i33yqAQ3v3qNOJB9l8b
UppPQ+0UMn9cVKq2IAAAAHZXhhbXBsZQAAAAAAAAAGc2hhNTEyAAAAUwAAAAtzc2gtZWQy
NTUxOQAAAEBPEav+tMGNnox4MuzM7rlHyVBajCn8B0kAyiOWwPKprNsG3i6X+voz/WCSik
/FowYwqhgCABUJSvRX3AERVBUP
-----END SSH SIGNATURE-----
";
        let v = signers(&format!("ci@example.com {KEY}\n")).expect("valid");
        let refusal = v
            .verify(Some((sig.as_bytes(), b"testing")))
            .expect_err("refused");
        assert!(
            matches!(&refusal, Refusal::WrongNamespace { namespace } if namespace == "example"),
            "{refusal}"
        );
    }
}
