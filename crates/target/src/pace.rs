//! Pacing: the one token bucket and the one backoff of every client pbsync has (the
//! Kubernetes target, the Palette target, the daemon's retries of a failed pass). Time is
//! tokio's, so tests run on paused time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Each request takes one;
/// a request that finds none takes one on credit and waits until it would have arrived, so
/// waiters queue in order. A rate of 0 (or less) means no limit.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// How long the caller must wait for its token (taken now).
    fn reserve(&self) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        // A panic while holding the lock leaves consistent numbers behind: recover them.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, at) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.burst);
        *at = now;
        *tokens -= 1.0;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }

    /// Waits for a token.
    pub(crate) async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The wait before retry number `retry` (0: the first retry): the step `base·2^retry`, at
/// most `cap`, with "equal jitter" (half of the step fixed, half random), so that requests
/// (or daemons) that failed together do not retry together.
pub fn backoff(retry: u32, base: Duration, cap: Duration, rng: &mut fastrand::Rng) -> Duration {
    let step = base.saturating_mul(1u32 << retry.min(20)).min(cap);
    let half = step / 2;
    half + half.mul_f64(rng.f64())
}

/// [`backoff`] with its parameters and a random source of its own, for a client shared by
/// concurrent requests.
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    rng: Mutex<fastrand::Rng>,
}

impl Backoff {
    /// Backoff from `base`, never longer than `cap`; the jitter seeded with `seed`.
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Self {
            base,
            cap,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// The wait before retry number `retry` (0: the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        backoff(retry, self.base, self.cap, &mut rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_spends_its_burst_then_paces_at_its_rate() {
        let bucket = TokenBucket::new(10.0, 5);
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
    async fn a_bucket_refills_while_idle_but_never_beyond_its_burst() {
        let bucket = TokenBucket::new(100.0, 3);
        for _ in 0..3 {
            bucket.acquire().await;
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        let start = Instant::now();
        for _ in 0..3 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        bucket.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_queue_behind_each_other() {
        let bucket = std::sync::Arc::new(TokenBucket::new(50.0, 5));
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
    async fn a_zero_rate_means_no_limit() {
        let bucket = TokenBucket::new(0.0, 1);
        let start = Instant::now();
        for _ in 0..1000 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_from_its_base_up_to_its_cap_with_equal_jitter() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(60), 7);
        for (retry, step) in [(0, 2), (1, 4), (2, 8), (3, 16), (4, 32), (5, 60), (30, 60)] {
            let d = b.delay(retry);
            let step = Duration::from_secs(step);
            assert!(d >= step / 2 && d <= step, "retry {retry}: {d:?}");
        }
    }

    #[test]
    fn backoff_jitter_spreads_retries() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(60), 1);
        let delays: std::collections::BTreeSet<Duration> = (0..20).map(|_| b.delay(0)).collect();
        assert!(delays.len() > 10, "jitter should vary: {delays:?}");
    }
}
