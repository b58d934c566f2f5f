//! When to reconcile: one pass at a time, triggers that arrive during a pass coalesced into
//! one follow-up, a jittered poll, a periodic full resync, exponential backoff with jitter
//! after retryable failures (none after final ones), a bound on each pass, and the systemd
//! watchdog pinged from this loop, so a stuck loop (not only a stuck runtime) is restarted.
//!
//! The pass itself is behind [`Pass`], so this file is tested on paused tokio time with a fake.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::systemd::Notifier;

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trigger {
    /// The daemon started (or reloaded, or became leader).
    Start,
    /// The poll interval elapsed.
    Poll,
    /// A local repository's refs changed.
    Watch,
    /// A signed webhook delivery.
    Webhook,
    /// `pbsync reconcile-now` or SIGUSR1.
    Manual,
    /// The periodic full resync.
    Resync,
    /// A retry after a retryable failure.
    Retry,
}

impl Trigger {
    /// Lower-case name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Poll => "poll",
            Self::Watch => "watch",
            Self::Webhook => "webhook",
            Self::Manual => "manual",
            Self::Resync => "resync",
            Self::Retry => "retry",
        }
    }
}

/// One pass to run, with every trigger it stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The triggers coalesced into this pass.
    pub triggers: BTreeSet<Trigger>,
}

impl Request {
    fn add(&mut self, t: Trigger) {
        self.triggers.insert(t);
    }

    /// True when the pass must plan and apply even if the revision did not change (start,
    /// manual, resync, retry); otherwise an unchanged revision is a cheap no-op.
    pub fn is_full(&self) -> bool {
        self.triggers.iter().any(|t| {
            matches!(
                t,
                Trigger::Start | Trigger::Manual | Trigger::Resync | Trigger::Retry
            )
        })
    }

    /// True when an operator asked (a final failure is tried again).
    pub fn is_manual(&self) -> bool {
        self.triggers.contains(&Trigger::Manual)
    }

    /// `poll+watch`, for logs.
    pub fn describe(&self) -> String {
        let v: Vec<&str> = self.triggers.iter().map(|t| t.as_str()).collect();
        v.join("+")
    }
}

/// What a pass concluded, as far as timing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Applied, or nothing to do.
    Done,
    /// Failed; the same commit may pass later.
    Retryable,
    /// Failed for this commit; wait for a new one.
    Final,
    /// Not the leader: nothing was tried.
    Standby,
}

/// One reconcile pass.
pub trait Pass {
    /// Runs a pass.
    fn run(&mut self, request: &Request) -> impl Future<Output = Verdict>;
    /// Called when a pass was abandoned (timeout or shutdown).
    fn abandoned(&mut self, _why: &str) {}
}

/// Timing settings.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Poll interval.
    pub interval: Option<Duration>,
    /// Full resync interval.
    pub resync: Option<Duration>,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Bound on one pass.
    pub pass_timeout: Duration,
    /// Bound on finishing the current pass at shutdown.
    pub shutdown_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(30)),
            resync: Some(Duration::from_secs(600)),
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            pass_timeout: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(20),
        }
    }
}

/// `interval` with up to 10% added or removed at random.
pub fn jittered(interval: Duration, rng: &mut fastrand::Rng) -> Duration {
    interval.mul_f64(0.9 + 0.2 * rng.f64())
}

/// Why the loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The stop signal was raised.
    Stop,
}

/// The loop.
#[derive(Debug)]
pub struct Scheduler {
    timing: Timing,
    triggers: mpsc::Receiver<Trigger>,
    notifier: Notifier,
    rng: fastrand::Rng,
}

impl Scheduler {
    /// A scheduler reading `triggers`.
    pub fn new(timing: Timing, triggers: mpsc::Receiver<Trigger>, notifier: Notifier) -> Self {
        Self {
            timing,
            triggers,
            notifier,
            rng: fastrand::Rng::new(),
        }
    }

    #[cfg(test)]
    /// The same with a fixed random seed (tests).
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// Gives the trigger channel back (for the next configuration after a reload).
    pub fn into_triggers(self) -> mpsc::Receiver<Trigger> {
        self.triggers
    }

    /// Runs passes until `stop` turns true; the first pass runs at once.
    pub async fn run<P: Pass>(
        &mut self,
        pass: &mut P,
        stop: &mut watch::Receiver<bool>,
    ) -> Stopped {
        let t = self.timing.clone();
        let now = Instant::now();
        let mut pending = Some(Request {
            triggers: BTreeSet::from([Trigger::Start]),
        });
        let mut next_poll = t.interval.map(|i| now + jittered(i, &mut self.rng));
        let mut next_resync = t.resync.map(|r| now + r);
        let mut retry_at: Option<Instant> = None;
        let mut failures = 0u32;
        // Ping at half the watchdog timeout, as sd_watchdog_enabled(3) advises.
        let mut watchdog = self
            .notifier
            .watchdog()
            .map(|w| tokio::time::interval((w / 2).max(Duration::from_millis(10))));
        loop {
            if *stop.borrow() {
                return Stopped::Stop;
            }
            if let Some(request) = pending.take() {
                if request.triggers.contains(&Trigger::Resync) || request.is_full() {
                    next_resync = t.resync.map(|r| Instant::now() + r);
                }
                let mut follow_up = Request::default();
                let ended = {
                    let fut = tokio::time::timeout(t.pass_timeout, pass.run(&request));
                    tokio::pin!(fut);
                    loop {
                        tokio::select! {
                            r = &mut fut => break Ended::Finished(r.ok()),
                            _ = tick(&mut watchdog) => self.notifier.ping(),
                            Some(trigger) = self.triggers.recv() => follow_up.add(trigger),
                            _ = stop.changed() => {
                                // Finish the current step within the bound, or abandon it.
                                let left = tokio::time::timeout(t.shutdown_timeout, &mut fut).await;
                                break Ended::Stopped { completed: left.is_ok() };
                            }
                        }
                    }
                };
                let verdict = match ended {
                    Ended::Stopped { completed } => {
                        if !completed {
                            pass.abandoned("shutdown");
                        }
                        return Stopped::Stop;
                    }
                    Ended::Finished(Some(v)) => v,
                    Ended::Finished(None) => {
                        pass.abandoned("timeout");
                        Verdict::Retryable
                    }
                };
                match verdict {
                    Verdict::Done | Verdict::Standby => {
                        failures = 0;
                        retry_at = None;
                    }
                    Verdict::Retryable => {
                        failures = failures.saturating_add(1);
                        let d = pbsync_target::pace::backoff(
                            failures.saturating_sub(1),
                            t.backoff_min,
                            t.backoff_max,
                            &mut self.rng,
                        );
                        retry_at = Some(Instant::now() + d);
                        tracing::info!(attempt = failures, retry_in = ?d, "retry scheduled");
                    }
                    Verdict::Final => {
                        failures = 0;
                        retry_at = None;
                    }
                }
                if !follow_up.triggers.is_empty() {
                    pending = Some(follow_up);
                }
                continue;
            }
            let mut request = Request::default();
            tokio::select! {
                r = stop.changed() => {
                    if r.is_err() {
                        return Stopped::Stop;
                    }
                    continue;
                }
                Some(trigger) = self.triggers.recv() => request.add(trigger),
                _ = sleep_opt(next_poll) => {
                    request.add(Trigger::Poll);
                    next_poll = t.interval.map(|i| Instant::now() + jittered(i, &mut self.rng));
                }
                _ = sleep_opt(next_resync) => {
                    request.add(Trigger::Resync);
                    next_resync = t.resync.map(|r| Instant::now() + r);
                }
                _ = sleep_opt(retry_at) => {
                    request.add(Trigger::Retry);
                    retry_at = None;
                }
                _ = tick(&mut watchdog) => self.notifier.ping(),
            }
            // A burst of triggers becomes one pass.
            while let Ok(trigger) = self.triggers.try_recv() {
                request.add(trigger);
            }
            if !request.triggers.is_empty() {
                pending = Some(request);
            }
        }
    }
}

enum Ended {
    Finished(Option<Verdict>),
    Stopped { completed: bool },
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sends a trigger without waiting: a full channel already holds a pending pass, which this
/// trigger joins.
pub fn send(tx: &mpsc::Sender<Trigger>, trigger: Trigger) {
    let _ = tx.try_send(trigger);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A pass that takes `took` and answers from a script (then `Done`), recording when it
    /// started and for which triggers.
    #[derive(Clone)]
    struct Fake {
        took: Duration,
        script: Arc<Mutex<Vec<Verdict>>>,
        log: Arc<Mutex<Vec<(Duration, String)>>>,
        start: Instant,
    }

    impl Fake {
        fn new(took: Duration, script: Vec<Verdict>) -> Self {
            Self {
                took,
                script: Arc::new(Mutex::new(script)),
                log: Arc::default(),
                start: Instant::now(),
            }
        }
        fn log(&self) -> Vec<(Duration, String)> {
            self.log.lock().expect("lock").clone()
        }
    }

    impl Pass for Fake {
        fn run(&mut self, request: &Request) -> impl Future<Output = Verdict> {
            let at = self.start.elapsed();
            self.log
                .lock()
                .expect("lock")
                .push((at, request.describe()));
            let took = self.took;
            let verdict = {
                let mut s = self.script.lock().expect("lock");
                if s.is_empty() {
                    Verdict::Done
                } else {
                    s.remove(0)
                }
            };
            async move {
                tokio::time::sleep(took).await;
                verdict
            }
        }
    }

    fn timing() -> Timing {
        Timing {
            interval: None,
            resync: None,
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            pass_timeout: Duration::from_secs(100),
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    async fn run_for(
        timing: Timing,
        fake: &Fake,
        for_: Duration,
        feed: impl FnOnce(mpsc::Sender<Trigger>) + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel(1);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let mut s = Scheduler::new(timing, rx, Notifier::default()).with_seed(7);
        let mut pass = fake.clone();
        tokio::spawn(async move {
            feed(tx);
        });
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(for_).await;
            let _ = stop_tx.send(true);
            stop_tx
        });
        s.run(&mut pass, &mut stop_rx).await;
        drop(stopper.await);
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_during_a_pass_coalesce_into_one_follow_up() {
        let fake = Fake::new(Duration::from_secs(10), vec![]);
        run_for(timing(), &fake, Duration::from_secs(60), |tx| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for t in [
                    Trigger::Watch,
                    Trigger::Webhook,
                    Trigger::Watch,
                    Trigger::Manual,
                ] {
                    // A full channel already holds a pending pass.
                    send(&tx, t);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_secs(600)).await;
                drop(tx);
            });
        })
        .await;
        let log = fake.log();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(log[0], (Duration::ZERO, "start".into()));
        assert_eq!(log[1].0, Duration::from_secs(10));
        assert_eq!(log[1].1, "watch+webhook+manual");
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_back_off_exponentially_and_stop_on_success() {
        let fake = Fake::new(
            Duration::ZERO,
            vec![Verdict::Retryable, Verdict::Retryable, Verdict::Retryable],
        );
        run_for(timing(), &fake, Duration::from_secs(120), |_tx| {}).await;
        let log = fake.log();
        let at: Vec<f64> = log.iter().map(|(d, _)| d.as_secs_f64()).collect();
        assert_eq!(log.len(), 4, "three retries, then success: {log:?}");
        // Delays: [1, 2], [2, 4], [4, 8] seconds (equal jitter of 2, 4, 8).
        let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        for (gap, full) in gaps.iter().zip([2.0, 4.0, 8.0]) {
            assert!(*gap >= full / 2.0 && *gap <= full, "{gaps:?}");
        }
        assert!(log[1..].iter().all(|(_, t)| t == "retry"));
    }

    #[tokio::test(start_paused = true)]
    async fn final_failures_are_not_retried() {
        let fake = Fake::new(Duration::ZERO, vec![Verdict::Final]);
        run_for(timing(), &fake, Duration::from_secs(600), |_tx| {}).await;
        assert_eq!(fake.log().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn polls_are_jittered_and_resyncs_are_periodic() {
        let fake = Fake::new(Duration::ZERO, vec![]);
        let t = Timing {
            interval: Some(Duration::from_secs(30)),
            resync: Some(Duration::from_secs(100)),
            ..timing()
        };
        run_for(t, &fake, Duration::from_secs(301), |_tx| {}).await;
        let log = fake.log();
        let polls: Vec<f64> = log
            .iter()
            .filter(|(_, t)| t == "poll")
            .map(|(d, _)| d.as_secs_f64())
            .collect();
        assert!((8..=12).contains(&polls.len()), "{log:?}");
        for w in polls.windows(2) {
            assert!((27.0..=33.0).contains(&(w[1] - w[0])), "{polls:?}");
        }
        let resyncs: Vec<f64> = log
            .iter()
            .filter(|(_, t)| t.contains("resync"))
            .map(|(d, _)| d.as_secs_f64())
            .collect();
        assert_eq!(resyncs, [100.0, 200.0, 300.0], "{log:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_pass_is_abandoned_at_the_timeout_and_retried() {
        let fake = Fake::new(Duration::from_secs(1000), vec![]);
        let t = Timing {
            pass_timeout: Duration::from_secs(10),
            ..timing()
        };
        run_for(t, &fake, Duration::from_secs(20), |_tx| {}).await;
        let log = fake.log();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(log[1].1, "retry");
        assert!(log[1].0 >= Duration::from_secs(11) && log[1].0 <= Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_the_current_pass_within_the_bound() {
        let fake = Fake::new(Duration::from_secs(1000), vec![]);
        let (_tx, rx) = mpsc::channel(1);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let mut s = Scheduler::new(timing(), rx, Notifier::default());
        let mut pass = fake.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = stop_tx.send(true);
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        assert_eq!(s.run(&mut pass, &mut stop_rx).await, Stopped::Stop);
        // Stop at 1 s, then at most the 5 s shutdown bound.
        assert_eq!(started.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_pinged_from_the_loop_while_a_pass_runs() {
        let (notifier, sent) = Notifier::recording(Some(Duration::from_secs(10)));
        let fake = Fake::new(Duration::from_secs(30), vec![]);
        let (_tx, rx) = mpsc::channel(1);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let mut s = Scheduler::new(timing(), rx, notifier);
        let mut pass = fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(29)).await;
            let _ = stop_tx.send(true);
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        s.run(&mut pass, &mut stop_rx).await;
        let pings = sent
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == "WATCHDOG=1\n")
            .count();
        // Every 5 s during the first 29 s (a pass was running all along): 0, 5, ..., 25.
        assert!(pings >= 6, "{pings} pings");
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut rng = fastrand::Rng::with_seed(1);
        let min = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for attempt in 1..40 {
            let d = pbsync_target::pace::backoff(attempt - 1, min, max, &mut rng);
            assert!(d <= max && d >= min / 2, "{attempt}: {d:?}");
        }
    }
}
