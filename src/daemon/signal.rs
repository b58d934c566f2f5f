//! Signals as events: SIGTERM and SIGINT stop, SIGHUP reloads, SIGUSR1 reconciles now.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
    /// SIGUSR1.
    ReconcileNow,
}

/// Installs the handlers and forwards each signal as an [`Event`].
pub fn spawn() -> std::io::Result<mpsc::Receiver<Event>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = term.recv() => Event::Stop,
                _ = int.recv() => Event::Stop,
                _ = hup.recv() => Event::Reload,
                _ = usr1.recv() => Event::ReconcileNow,
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
