//! The systemd notify protocol (`sd_notify(3)`): `READY=1`, `STATUS=`, `WATCHDOG=1`,
//! `STOPPING=1` as datagrams to `$NOTIFY_SOCKET`. A no-op when the socket is not set, so the
//! daemon runs the same way outside systemd.
//!
//! The notifier takes the socket path instead of reading the environment on every call, so
//! tests can point it at a socket of their own.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Sends notifications to systemd.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd configured (`NOTIFY_SOCKET`, `WATCHDOG_USEC` for this pid).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// A notifier sending to `socket`.
    pub fn to_socket(socket: impl Into<PathBuf>, watchdog: Option<Duration>) -> Self {
        Self {
            socket: Some(socket.into()),
            watchdog,
        }
    }

    /// The watchdog timeout systemd expects pings within, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1`: configuration loaded and the listener bound.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
    }

    /// `STATUS=`: the last outcome, for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}\n", one_line(status)));
    }

    /// `WATCHDOG=1`: the loop is alive.
    pub fn ping(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1\n");
        }
    }

    /// `RELOADING=1`.
    pub fn reloading(&self) {
        self.send("RELOADING=1\n");
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\n");
    }

    fn send(&self, message: &str) {
        let Some(path) = &self.socket else { return };
        // Best effort, as sd_notify(3) is: a lost notification must not stop the daemon.
        let Ok(sock) = UnixDatagram::unbound() else {
            return;
        };
        let text = path.to_string_lossy();
        let sent = if let Some(name) = text.strip_prefix('@') {
            abstract_addr(name).and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
        } else {
            sock.send_to(message.as_bytes(), path)
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "cannot notify systemd");
        }
    }
}

fn abstract_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_arrive_as_datagrams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::to_socket(&path, Some(Duration::from_secs(10)));
        n.ready("loaded");
        n.ping();
        n.status("applied abc\nmore");
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = server.recv(&mut buf).expect("recv");
            got.push(String::from_utf8_lossy(&buf[..len]).to_string());
        }
        assert_eq!(
            got,
            [
                "READY=1\nSTATUS=loaded\n",
                "WATCHDOG=1\n",
                "STATUS=applied abc more\n"
            ]
        );
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        Notifier::default().ready("x");
    }
}
