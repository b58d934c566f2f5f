//! Pacing requests to Palette: a token bucket per endpoint prefix within Palette's documented
//! per-IP limits, and exponential backoff with jitter for 429 and 5xx answers. Time comes from
//! tokio, so tests run on paused time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One bucket: `rate` tokens a second, at most `burst` saved up. Callers that find it empty
/// take a token on credit and sleep until it would have arrived, so waiters queue fairly.
#[derive(Debug)]
pub(super) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Option<Instant>)>,
}

impl TokenBucket {
    /// A full bucket.
    pub(super) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate: rate.max(f64::MIN_POSITIVE),
            burst: burst.max(1.0),
            state: Mutex::new((burst.max(1.0), None)),
        }
    }

    /// How long the caller must wait for its token (taken now).
    fn reserve(&self) -> Duration {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last) = &mut *state;
        if let Some(last) = last {
            *tokens =
                (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        }
        *last = Some(now);
        *tokens -= 1.0;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }

    /// Waits for a token.
    pub(super) async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

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
            ("/v1/clusterprofiles".into(), 50.0, 5.0),
            ("/v1/dashboard".into(), 10.0, 5.0),
            ("/".into(), 10.0, 5.0),
        ])
    }

    /// Buckets from `(prefix, rate, burst)` rules.
    pub(super) fn new(mut rules: Vec<(String, f64, f64)>) -> Self {
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

/// Exponential backoff with jitter: attempt `n` waits `base·2ⁿ` (at most `cap`) plus up to
/// half of that again at random, like Palette's own SDK (2 s, then doubling, plus jitter).
#[derive(Debug)]
pub(super) struct Backoff {
    base: Duration,
    cap: Duration,
    rng: Mutex<fastrand::Rng>,
}

impl Backoff {
    /// Backoff from `base`, never longer than `cap` before jitter.
    pub(super) fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Self {
            base,
            cap,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// The wait before retry number `attempt` (0 = the first retry).
    pub(super) fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(30)))
            .min(self.cap);
        let jitter = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .f64()
            * 0.5;
        exp + exp.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_lets_a_burst_through_then_paces_at_the_rate() {
        let bucket = TokenBucket::new(10.0, 5.0);
        let start = Instant::now();
        for _ in 0..5 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst goes at once");
        bucket.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        for _ in 0..10 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(1100));
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_while_idle_but_never_beyond_its_burst() {
        let bucket = TokenBucket::new(10.0, 5.0);
        for _ in 0..5 {
            bucket.acquire().await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        for _ in 0..5 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        bucket.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_queue_behind_each_other() {
        let bucket = std::sync::Arc::new(TokenBucket::new(50.0, 5.0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..15)
            .map(|_| {
                let b = bucket.clone();
                tokio::spawn(async move { b.acquire().await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        // 5 at once, 10 more at 50/s.
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

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

    #[test]
    fn backoff_doubles_from_its_base_with_up_to_half_again_of_jitter() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(60), 7);
        for (attempt, exp) in [(0, 2), (1, 4), (2, 8), (3, 16), (4, 32), (5, 60), (9, 60)] {
            let d = b.delay(attempt);
            let exp = Duration::from_secs(exp);
            assert!(d >= exp && d <= exp + exp / 2, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn backoff_jitter_spreads_retries() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(60), 1);
        let delays: std::collections::BTreeSet<Duration> = (0..20).map(|_| b.delay(0)).collect();
        assert!(delays.len() > 10, "jitter should vary: {delays:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_sleeps_on_tokio_time() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(60), 3);
        let start = Instant::now();
        let mut total = Duration::ZERO;
        for attempt in 0..3 {
            let d = b.delay(attempt);
            total += d;
            tokio::time::sleep(d).await;
        }
        // Tokio's timer has millisecond resolution and rounds sleeps up.
        let elapsed = start.elapsed();
        assert!(elapsed >= total && elapsed - total < Duration::from_millis(5));
        assert!(total >= Duration::from_secs(14) && total <= Duration::from_secs(21));
    }
}
