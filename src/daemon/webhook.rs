//! Webhook signature checks: GitHub's `X-Hub-Signature-256: sha256=<hex>` and a generic
//! header carrying the hex HMAC-SHA256 of the body (with or without `sha256=`). Pure: no I/O.
//! Comparison is constant-time (`Mac::verify_slice`).

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// GitHub's signature header.
pub const GITHUB_HEADER: &str = "x-hub-signature-256";

/// The verdict on one delivery; its `as_str` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The signature matches: fetch now.
    Accepted,
    /// Signed, but not a push (GitHub's `ping`): nothing to do.
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

#[cfg(test)]
/// `sha256=<hex>` of `body`: what a sender puts in the header.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("invariant: HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Judges one delivery. `github` and `generic` are the two header values, `event` GitHub's
/// `X-GitHub-Event`.
pub fn judge(
    secret: Option<&str>,
    body: &[u8],
    github: Option<&str>,
    generic: Option<&str>,
    event: Option<&str>,
) -> Verdict {
    let Some(secret) = secret else {
        return Verdict::Disabled;
    };
    let Some(sig) = github.or(generic) else {
        return Verdict::MissingSignature;
    };
    if !verify(secret.as_bytes(), body, sig) {
        return Verdict::BadSignature;
    }
    if event == Some("ping") {
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
            judge(Some("s3cr3t"), b"{}", Some(&sig), None, Some("push")),
            Verdict::Accepted
        );
        // The generic header takes the bare hex too.
        let bare = sig.trim_start_matches("sha256=");
        assert_eq!(
            judge(Some("s3cr3t"), b"{}", None, Some(bare), None),
            Verdict::Accepted
        );
    }

    #[test]
    fn forged_and_unsigned_deliveries_are_rejected() {
        let forged = sign(b"guess", b"{}");
        assert_eq!(
            judge(Some("s3cr3t"), b"{}", Some(&forged), None, None),
            Verdict::BadSignature
        );
        assert_eq!(
            judge(Some("s3cr3t"), b"{}", Some("sha256=zz"), None, None),
            Verdict::BadSignature
        );
        assert_eq!(
            judge(Some("s3cr3t"), b"{}", None, None, None),
            Verdict::MissingSignature
        );
        let sig = sign(b"s3cr3t", b"{}");
        assert_eq!(
            judge(None, b"{}", Some(&sig), None, None),
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
            judge(Some("k"), b"{}", Some(&sig), None, Some("ping")),
            Verdict::Ignored
        );
    }
}
