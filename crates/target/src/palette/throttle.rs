//! Pacing requests to Palette: one of `pace`'s token buckets per endpoint prefix, within
//! Palette's documented per-IP limits.

use crate::pace::TokenBucket;

/// The buckets of every endpoint prefix; the longest matching prefix wins.
#[derive(Debug)]
pub(super) struct Buckets {
    rules: Vec<(String, TokenBucket)>,
}

impl Buckets {
    /// Palette's documented per-IP limits (`/v1/clusterprofiles` 50 req/s, `/v1/dashboard`
    /// and the rest 10 req/s), each with a burst of 5: the client stays inside the limit
    /// even when the server counts the burst strictly.
    pub(super) fn documented() -> Self {
        Self::new(vec![
            ("/v1/clusterprofiles".into(), 50.0, 5),
            ("/v1/dashboard".into(), 10.0, 5),
            ("/".into(), 10.0, 5),
        ])
    }

    /// Buckets from `(prefix, rate, burst)` rules.
    pub(super) fn new(mut rules: Vec<(String, f64, u32)>) -> Self {
        rules.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.len()));
        Self {
            rules: rules
                .into_iter()
                .map(|(p, rate, burst)| (p, TokenBucket::new(rate, burst)))
                .collect(),
        }
    }

    /// Waits for a token of the bucket `path` falls in (none: no wait).
    pub(super) async fn acquire(&self, path: &str) {
        if let Some((_, b)) = self
            .rules
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
        {
            b.acquire().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn prefixes_have_their_own_buckets() {
        let buckets = Buckets::documented();
        let start = Instant::now();
        for _ in 0..5 {
            buckets.acquire("/v1/dashboard/clusterprofiles").await;
        }
        // The dashboard bucket is empty; cluster profiles still have theirs.
        for _ in 0..5 {
            buckets.acquire("/v1/clusterprofiles/abc").await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        buckets.acquire("/v1/dashboard/clusterprofiles").await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        buckets.acquire("/v1/clusterprofiles").await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}
