//! Leader election on the instance's `coordination.k8s.io/v1` Lease (the Lease itself, and
//! its rules, are `pbsync_target::kubernetes::lease`'s), so two hosts can run pbsync for the
//! same repository and exactly one applies. Every applying pass takes the same Lease, so a
//! one-shot `pbsync apply` never runs beside the leading daemon.
//!
//! client-go's rules: the holder renews every `duration / 3`; another candidate takes the
//! lease only when its record has not changed for a whole `duration` by the candidate's own
//! clock (no clock comparison between hosts); a holder that could not renew for
//! `2/3 duration` stops applying before anyone may take over; a holder that stops gracefully
//! releases the lease so the other takes over at its next try. Writes carry the
//! resourceVersion read, so two candidates can never both win.
//!
//! A standby reads the lease every `duration / 6` (so it sees the last renewal soon after
//! it happened) and wakes exactly when the record it saw expires: a holder that dies is
//! replaced about `duration` after its last renewal, at worst `duration / 6` later.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::scheduler::{Trigger, send};
use pbsync_target::kubernetes::lease::Candidate;

/// Runs the election until `stop`; the receiver says whether this daemon leads. Becoming
/// leader sends a [`Trigger::Start`], so the new leader applies at once.
pub fn spawn(
    mut c: Candidate,
    triggers: mpsc::Sender<Trigger>,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let duration = c.config().duration;
    let retry = (duration / 3).max(Duration::from_millis(500));
    let standby_poll = (duration / 6).max(Duration::from_millis(250));
    let deadline = duration * 2 / 3;
    let task = tokio::spawn(async move {
        let mut renewed: Option<Instant> = None;
        loop {
            let was = *tx.borrow();
            let now_leader = match c.try_lead().await {
                Ok(true) => {
                    renewed = Some(Instant::now());
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(error = %pbsync_core::error_chain(&e), "leader election");
                    // Keep leading only while the last renewal is recent enough that nobody
                    // else may have taken over.
                    was && renewed.is_some_and(|r| r.elapsed() < deadline)
                }
            };
            if now_leader != was {
                tracing::info!(identity = %c.config().identity, leader = now_leader, "leadership changed");
                let _ = tx.send(now_leader);
                if now_leader {
                    send(&triggers, Trigger::Start);
                }
            }
            // A standby wakes when the record it saw expires, or to look again.
            let wait = if now_leader {
                retry
            } else {
                let poll = Instant::now() + standby_poll;
                let at = c.expiry().map_or(poll, |e| e.min(poll));
                at.saturating_duration_since(Instant::now())
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {
                    if *tx.borrow() {
                        let _ = tx.send(false);
                        c.release().await;
                    }
                    return;
                }
            }
        }
    });
    (rx, task)
}
