//! How to reach Palette: the base URL, the API key (never shown in debug output), the
//! project, timeouts and retry pacing.

use std::time::Duration;

/// The Palette API key: the one secret type, sent only as the `ApiKey` header.
pub type ApiKey = crate::Secret;

/// How to reach Palette.
#[derive(Debug, Clone)]
pub struct PaletteConfig {
    /// Base URL, e.g. `https://api.spectrocloud.com`.
    pub url: String,
    /// The API key.
    pub api_key: ApiKey,
    /// Project uid (`ProjectUid` header); tenant scope only without it.
    pub project_uid: Option<String>,
    /// Timeout of one request.
    pub timeout: Duration,
    /// First wait after a 429 or 5xx; doubles per retry, with jitter (Palette: about 2 s).
    pub retry_base: Duration,
    /// Retries of one request before giving up.
    pub max_retries: u32,
    /// Pace requests within Palette's documented per-IP limits.
    pub rate_limits: bool,
    /// Page size of the summary list (Palette allows at most 50).
    pub page_size: u32,
    /// Seed of the backoff jitter.
    pub jitter_seed: u64,
}

impl PaletteConfig {
    /// Palette's documented defaults: 30 s timeout, retries from 2 s, 5 retries, rate
    /// limits on, pages of 50.
    pub fn new(url: impl Into<String>, api_key: ApiKey) -> Self {
        Self {
            url: url.into(),
            // Surrounding whitespace (a key pasted with its newline) is never part of it.
            api_key: ApiKey::new(api_key.expose().trim()),
            project_uid: None,
            timeout: Duration::from_secs(30),
            retry_base: Duration::from_secs(2),
            max_retries: 5,
            rate_limits: true,
            page_size: 50,
            jitter_seed: fastrand::u64(..),
        }
    }
}

/// Parses a timeout: `30`, `30s`, `500ms`, `2m`.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms or 2m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{s:?} is not a duration like 30s, 500ms or 2m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_with_units() {
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("3h").is_err());
    }
}
