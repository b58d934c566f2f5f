//! Webhook deliveries: who sent them and whether to trust them. GitHub signs the body with
//! HMAC-SHA256 in `X-Hub-Signature-256: sha256=<hex>`, Gitea in `X-Gitea-Signature: <hex>`,
//! and a generic sender in a configured header (with or without `sha256=`); GitLab sends
//! the shared secret itself in `X-Gitlab-Token`. Pure: no I/O. Every comparison is
//! constant-time (`Mac::verify_slice`, and an HMAC of both sides for GitLab's token).

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// GitHub's signature header.
pub const GITHUB_HEADER: &str = "x-hub-signature-256";
/// Gitea's signature header.
pub const GITEA_HEADER: &str = "x-gitea-signature";
/// GitLab's secret-token header.
pub const GITLAB_HEADER: &str = "x-gitlab-token";

/// The verdict on one delivery; its `as_str` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The signature matches: fetch now.
    Accepted,
    /// Authentic, but not a push (GitHub's `ping`, a pull-request event): nothing to do.
    Ignored,
    /// No signature header.
    MissingSignature,
    /// A signature that does not match (or is not hex).
    BadSignature,
    /// No secret is configured, so no delivery can be trusted.
    Disabled,
}

impl Verdict {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Ignored => "ignored",
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::Disabled => "disabled",
        }
    }
}

/// The headers of one delivery that matter (values as sent, `None` when absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivery<'a> {
    /// `X-Hub-Signature-256`.
    pub github: Option<&'a str>,
    /// `X-Gitea-Signature`.
    pub gitea: Option<&'a str>,
    /// `X-Gitlab-Token`.
    pub gitlab: Option<&'a str>,
    /// The configured generic header.
    pub generic: Option<&'a str>,
    /// The event name: `X-GitHub-Event`, `X-Gitea-Event` or `X-Gitlab-Event`.
    pub event: Option<&'a str>,
}

/// Checks `signature` (a header value) over `body` with `secret`.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let hex_sig = signature.trim();
    let hex_sig = hex_sig.strip_prefix("sha256=").unwrap_or(hex_sig);
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Compares GitLab's token with the secret in constant time: both are put through the same
/// HMAC and the digests compared by `verify_slice`.
fn same_token(secret: &[u8], token: &str) -> bool {
    let digest = |v: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"pbsync-gitlab-token")
            .expect("invariant: HMAC takes any key");
        mac.update(v);
        mac
    };
    let expected = digest(secret).finalize().into_bytes();
    digest(token.as_bytes()).verify_slice(&expected).is_ok()
}

#[cfg(test)]
/// `sha256=<hex>` of `body`: what a sender puts in the header.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("invariant: HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Events that are not pushes: authentic, nothing to fetch.
fn is_not_a_push(event: Option<&str>) -> bool {
    match event {
        None => false,
        Some(e) => {
            let e = e.to_ascii_lowercase();
            !(e == "push"
                || e == "push hook"
                || e == "tag_push"
                || e == "tag push hook"
                || e == "create")
        }
    }
}

/// Judges one delivery of `body` with `secret`.
pub fn judge(secret: Option<&str>, body: &[u8], d: &Delivery<'_>) -> Verdict {
    let Some(secret) = secret else {
        return Verdict::Disabled;
    };
    let authentic = if let Some(sig) = d.github.or(d.gitea).or(d.generic) {
        verify(secret.as_bytes(), body, sig)
    } else if let Some(token) = d.gitlab {
        same_token(secret.as_bytes(), token)
    } else {
        return Verdict::MissingSignature;
    };
    if !authentic {
        return Verdict::BadSignature;
    }
    if is_not_a_push(d.event) {
        Verdict::Ignored
    } else {
        Verdict::Accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_delivery_is_accepted() {
        let sig = sign(b"s3cr3t", b"{}");
        assert_eq!(
            judge(
                Some("s3cr3t"),
                b"{}",
                &Delivery {
                    github: Some(&sig),
                    event: Some("push"),
                    ..Delivery::default()
                }
            ),
            Verdict::Accepted
        );
        // The generic header takes the bare hex too.
        let bare = sig.trim_start_matches("sha256=");
        assert_eq!(
            judge(
                Some("s3cr3t"),
                b"{}",
                &Delivery {
                    generic: Some(bare),
                    ..Delivery::default()
                }
            ),
            Verdict::Accepted
        );
    }

    #[test]
    fn forged_and_unsigned_deliveries_are_rejected() {
        let forged = sign(b"guess", b"{}");
        assert_eq!(
            judge(
                Some("s3cr3t"),
                b"{}",
                &Delivery {
                    github: Some(&forged),
                    ..Delivery::default()
                }
            ),
            Verdict::BadSignature
        );
        assert_eq!(
            judge(
                Some("s3cr3t"),
                b"{}",
                &Delivery {
                    github: Some("sha256=zz"),
                    ..Delivery::default()
                }
            ),
            Verdict::BadSignature
        );
        assert_eq!(
            judge(Some("s3cr3t"), b"{}", &Delivery::default()),
            Verdict::MissingSignature
        );
        let sig = sign(b"s3cr3t", b"{}");
        assert_eq!(
            judge(
                None,
                b"{}",
                &Delivery {
                    github: Some(&sig),
                    ..Delivery::default()
                }
            ),
            Verdict::Disabled
        );
    }

    #[test]
    fn a_changed_body_breaks_the_signature() {
        let sig = sign(b"s3cr3t", b"{\"ref\":\"main\"}");
        assert!(!verify(b"s3cr3t", b"{\"ref\":\"evil\"}", &sig));
    }

    #[test]
    fn github_ping_is_ignored() {
        let sig = sign(b"k", b"{}");
        assert_eq!(
            judge(
                Some("k"),
                b"{}",
                &Delivery {
                    github: Some(&sig),
                    event: Some("ping"),
                    ..Delivery::default()
                }
            ),
            Verdict::Ignored
        );
    }

    #[test]
    fn gitea_signs_with_bare_hex_in_its_own_header() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let bare = sign(b"k", body).trim_start_matches("sha256=").to_string();
        let ok = Delivery {
            gitea: Some(&bare),
            event: Some("push"),
            ..Delivery::default()
        };
        assert_eq!(judge(Some("k"), body, &ok), Verdict::Accepted);
        let forged = sign(b"other", body)
            .trim_start_matches("sha256=")
            .to_string();
        let bad = Delivery {
            gitea: Some(&forged),
            ..Delivery::default()
        };
        assert_eq!(judge(Some("k"), body, &bad), Verdict::BadSignature);
    }

    #[test]
    fn gitlab_sends_the_secret_itself() {
        let ok = Delivery {
            gitlab: Some("s3cr3t"),
            event: Some("Push Hook"),
            ..Delivery::default()
        };
        assert_eq!(judge(Some("s3cr3t"), b"{}", &ok), Verdict::Accepted);
        let wrong = Delivery {
            gitlab: Some("s3cr3"),
            ..Delivery::default()
        };
        assert_eq!(judge(Some("s3cr3t"), b"{}", &wrong), Verdict::BadSignature);
        let mr = Delivery {
            gitlab: Some("s3cr3t"),
            event: Some("Merge Request Hook"),
            ..Delivery::default()
        };
        assert_eq!(judge(Some("s3cr3t"), b"{}", &mr), Verdict::Ignored);
    }
}
