//! `pbsync apply`: apply a commit and print what was done, in Flux's words.

use clap::{Args, ValueEnum};

use super::target::{request_stats, with_target};
use super::{SourceArgs, Status, TargetArgs, print_invalid};
use crate::engine::{self, Error, Goal, Input};
use pbsync_target::{ChangeSet, Outcome, RunOptions};

/// Arguments of `pbsync apply`.
#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Apply even when the plan exceeds the mass-deletion guard
    #[arg(long)]
    allow_mass_deletion: bool,
    /// Apply a revision older than (or not descending from) the last one applied to this
    /// target and instance: a rollback
    #[arg(long)]
    allow_rollback: bool,
    /// How long to wait for another pass of this instance (the daemon, another apply) to
    /// release the target's lock (e.g. 30s, 2m; 0: fail at once)
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_duration)]
    lock_wait: std::time::Duration,
    /// After the writes, wait until everything the commit created or changed is current
    /// (exit 0), or something failed (exit 1, with its causes), or --timeout passed (exit 1)
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (e.g. 90s, 5m)
    #[arg(long, default_value = "5m", value_parser = crate::config::parse_duration, requires = "wait")]
    timeout: std::time::Duration,
    /// How long to wait for one deletion wave's objects to be gone (their finalizers done)
    /// before the next wave; past it the apply stops, and the next one continues
    #[arg(long, default_value = "2m", value_parser = crate::config::parse_duration)]
    deletion_timeout: std::time::Duration,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Print the requests sent to the target (by verb and status code) to stderr
    #[arg(long)]
    stats: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn print_changes(set: &ChangeSet, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(set).unwrap_or_default());
        return;
    }
    let width = set
        .entries
        .iter()
        .map(|e| e.key.to_string().len())
        .max()
        .unwrap_or(0);
    for e in &set.entries {
        if e.outcome == Outcome::Unchanged {
            continue;
        }
        let note = e
            .note
            .as_deref()
            .map(|n| format!("  ({n})"))
            .unwrap_or_default();
        println!("{:<width$}  {}{note}", e.key.to_string(), e.outcome);
    }
    let counts = set.counts();
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "{}",
        if summary.is_empty() {
            "nothing to do".to_string()
        } else {
            summary.join(", ")
        }
    );
}

pub(super) async fn run(args: &ApplyArgs) -> Result<Status, Box<dyn std::error::Error>> {
    let mut ctx = args.source.context(Some(&args.target))?;
    ctx.lock_wait = args.lock_wait;
    let snapshot = super::fetch(&ctx)?;
    let json = args.format == Format::Json;
    let opts = RunOptions {
        allow_mass_deletion: args.allow_mass_deletion,
        allow_rollback: args.allow_rollback,
        deletion_timeout: args.deletion_timeout,
    };
    let (outcome, waited) = with_target!(args.target.build()?, t => {
        let outcome = engine::run(&ctx, Input::of(&snapshot), Goal::Apply(&t, opts)).await;
        let waited = match (&outcome, args.wait) {
            (Ok(report), true) => {
                let changes = report.changes.as_ref().expect("invariant: apply reports changes");
                // The changes first, so the wait's progress follows what was done (JSON: one
                // document at the end).
                if !json {
                    print_changes(changes, json);
                }
                let mut display = super::progress::WaitDisplay::new();
                let waited = engine::wait::wait(&t, &report.graph, changes, args.timeout, |p| {
                    display.update(p);
                })
                .await;
                display.finish();
                Some(waited)
            }
            _ => None,
        };
        if let Some(stats) = args.stats.then(|| request_stats(&t)).flatten() {
            eprintln!("requests: {stats}");
        }
        (outcome, waited)
    });
    match outcome {
        Ok(outcome) => {
            for w in &outcome.plan().warnings {
                eprintln!("warning: {w}");
            }
            let Some(waited) = waited else {
                print_changes(
                    outcome
                        .changes
                        .as_ref()
                        .expect("invariant: apply reports changes"),
                    json,
                );
                return Ok(Status::Success);
            };
            let changes = outcome
                .changes
                .as_ref()
                .expect("invariant: apply reports changes");
            Ok(super::progress::print_waited(
                &waited,
                changes,
                args.timeout,
                json,
            ))
        }
        Err(Error::Invalid {
            revision,
            violations,
            warnings,
        }) => {
            print_invalid(&revision, &violations, &warnings, json);
            Ok(Status::Failure)
        }
        Err(Error::Apply {
            changes,
            source,
            plan,
            ..
        }) => {
            for w in &plan.warnings {
                eprintln!("warning: {w}");
            }
            print_changes(&changes, json);
            if source.refusal().is_some() {
                Err(super::Refused(source).into())
            } else {
                Err(source)
            }
        }
        Err(e) if e.refusal().is_some() => Err(super::Refused(Box::new(e)).into()),
        Err(e) => Err(e.into()),
    }
}
