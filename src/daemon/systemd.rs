//! The systemd notify protocol (`sd_notify(3)`), through the `sd-notify` crate: `READY=1`,
//! `STATUS=`, `WATCHDOG=1`, `RELOADING=1`, `STOPPING=1` as datagrams to `$NOTIFY_SOCKET`. A
//! no-op when the socket is not set, so the daemon runs the same way outside systemd.
//!
//! Tests record the notifications instead of sending them (the daemon's end-to-end test
//! checks the datagrams on a real socket).

#[cfg(test)]
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;

/// Where notifications go.
#[derive(Debug, Clone, Default)]
enum Sink {
    /// Nowhere: not started by systemd.
    #[default]
    Off,
    /// To systemd (`$NOTIFY_SOCKET`).
    Systemd,
    #[cfg(test)]
    /// Into a list, one message per notification (tests).
    Record(Arc<Mutex<Vec<String>>>),
}

/// Sends notifications to systemd.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    sink: Sink,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd configured (`NOTIFY_SOCKET`, and `WATCHDOG_USEC` when it is meant
    /// for this process).
    pub fn from_env() -> Self {
        let notify = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        Self {
            sink: if notify { Sink::Systemd } else { Sink::Off },
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
        }
    }

    #[cfg(test)]
    /// A notifier that records each message instead of sending it (tests).
    pub fn recording(watchdog: Option<Duration>) -> (Self, Arc<Mutex<Vec<String>>>) {
        let messages = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                sink: Sink::Record(Arc::clone(&messages)),
                watchdog,
            },
            messages,
        )
    }

    /// The watchdog timeout systemd expects pings within, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1`: configuration loaded and the listener bound.
    pub fn ready(&self, status: &str) {
        let status = one_line(status);
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// `STATUS=`: the last outcome, for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(&one_line(status))]);
    }

    /// `WATCHDOG=1`: the loop is alive.
    pub fn ping(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// `RELOADING=1`.
    pub fn reloading(&self) {
        self.send(&[NotifyState::Reloading]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        match &self.sink {
            Sink::Off => {}
            Sink::Systemd => {
                // Best effort, as sd_notify(3) is: a lost notification must not stop the
                // daemon.
                if let Err(e) = sd_notify::notify(states) {
                    tracing::debug!(error = %e, "cannot notify systemd");
                }
            }
            #[cfg(test)]
            Sink::Record(list) => {
                let text: String = states.iter().map(|s| format!("{s}\n")).collect();
                list.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(text);
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_the_protocols_lines() {
        let (n, sent) = Notifier::recording(Some(Duration::from_secs(10)));
        n.ready("loaded");
        n.ping();
        n.status("applied abc\nmore");
        n.stopping();
        assert_eq!(
            *sent.lock().unwrap(),
            [
                "READY=1\nSTATUS=loaded\n",
                "WATCHDOG=1\n",
                "STATUS=applied abc more\n",
                "STOPPING=1\n"
            ]
        );
    }

    #[test]
    fn without_a_watchdog_no_pings_are_sent() {
        let (n, sent) = Notifier::recording(None);
        n.ping();
        assert!(sent.lock().unwrap().is_empty());
        Notifier::default().ready("nothing happens without a socket");
    }
}
