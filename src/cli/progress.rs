//! What `apply --wait` shows: a live line on a terminal (objects current / total, what is
//! still waited on), plain lines when stderr is piped (one each time the picture changes),
//! then the ending with its causes on stdout.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::Status;
use crate::engine::wait::{Ending, Progress, Waited};
use pbsync_core::health::State;

/// The live display of a wait.
pub(super) struct WaitDisplay {
    bar: Option<ProgressBar>,
    last: String,
    /// When the last plain line was printed (piped output: at most one a second).
    printed: Option<std::time::Instant>,
}

/// One line: `3/5 current; waiting on HelmRepository a/charts (in-progress: ...), +1 more`.
fn summary(p: &Progress<'_>) -> String {
    let mut line = format!("{}/{} current", p.current, p.total);
    if let Some((key, state, why)) = p.waiting.first() {
        line.push_str(&format!("; waiting on {key} ({state}: {why})"));
        if p.waiting.len() > 1 {
            line.push_str(&format!(", +{} more", p.waiting.len() - 1));
        }
    }
    line
}

impl WaitDisplay {
    pub(super) fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {wide_msg}")
                    .expect("invariant: the template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message("waiting for the first readings");
            bar
        });
        Self {
            bar,
            last: String::new(),
            printed: None,
        }
    }

    pub(super) fn update(&mut self, p: &Progress<'_>) {
        let line = summary(p);
        if line == self.last {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(line.clone()),
            None => {
                let done = p.current == p.total || p.waiting.iter().any(|w| w.1 == State::Failed);
                if !done
                    && self
                        .printed
                        .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
                {
                    return;
                }
                eprintln!("wait: [{:.1}s] {line}", p.elapsed.as_secs_f64());
                self.printed = Some(std::time::Instant::now());
            }
        }
        self.last = line;
    }

    pub(super) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Prints how the wait ended and why; the exit status: success only when healthy.
pub(super) fn print_waited(
    waited: &Waited,
    changes: &pbsync_target::ChangeSet,
    timeout: Duration,
    json: bool,
) -> Status {
    let now = jiff::Timestamp::now();
    let status = if waited.ending == Ending::Healthy {
        Status::Success
    } else {
        Status::Failure
    };
    if json {
        let doc = serde_json::json!({
            "changes": changes,
            "ending": match waited.ending {
                Ending::Healthy => "healthy",
                Ending::Failed => "failed",
                Ending::TimedOut => "timed-out",
            },
            "elapsedSeconds": waited.elapsed.as_secs_f64(),
            "waitedOn": waited.waited_on.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "health": &waited.report,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return status;
    }
    let n = waited.waited_on.len();
    match waited.ending {
        Ending::Healthy if n == 0 => println!("nothing created or changed: nothing to wait for"),
        Ending::Healthy => println!(
            "healthy: {n} object(s) current after {:.1}s",
            waited.elapsed.as_secs_f64()
        ),
        Ending::Failed => println!("failed after {:.1}s:", waited.elapsed.as_secs_f64()),
        Ending::TimedOut => println!("timed out after {timeout:?}; not current yet:"),
    }
    if waited.ending != Ending::Healthy {
        for line in waited.causes(now) {
            println!("  {line}");
        }
    }
    status
}
