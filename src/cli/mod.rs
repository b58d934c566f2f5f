//! The command line: clap types, one file per subcommand, and the one place errors become
//! exit codes (0 success, 1 failure, 2 usage or configuration error, 3 refused by a safety
//! rule, a commit whose signature is not trusted among them).

mod apply;
mod completions;
mod graph;
mod import;
mod man;
mod plan;
mod post;
mod progress;
mod run;
mod status;
mod target;
mod validate;

pub(crate) use target::TargetArgs;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::engine::{self, Context};
use crate::source::{Snapshot, verify::Verifier};
use pbsync_core::guard::MassDeletion;

/// GitOps reconciliation for PaletteAI Profile Bundles and everything they reference
#[derive(Debug, Parser)]
#[command(name = "pbsync", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a commit against every rule; exit 1 listing every violation
    Validate(validate::ValidateArgs),
    /// Show the reference graph of a commit
    Graph(graph::GraphArgs),
    /// Show what applying a commit would change, and why
    Plan(plan::PlanArgs),
    /// Apply a commit to the target
    Apply(apply::ApplyArgs),
    /// Unpack a PaletteAI Studio archive (.tar.gz) into the repository layout
    Import(import::ImportArgs),
    /// Run the daemon: reconcile every new commit, on a poll, a watch, a webhook or a signal
    Run(Box<run::RunArgs>),
    /// Show what the running daemon last did
    Status(status::StatusArgs),
    /// Ask the running daemon to reconcile now (like SIGUSR1)
    ReconcileNow(status::ReconcileNowArgs),
    /// Print the shell completion script (bash, zsh, fish, …)
    Completions(completions::CompletionsArgs),
    /// Write the man pages (for packaging)
    #[command(hide = true)]
    Man(man::ManArgs),
}

/// Where the commit comes from.
#[derive(Debug, Clone, Args)]
pub(crate) struct SourceArgs {
    /// Git repository (a local path)
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Revision to read: branch, tag, commit
    #[arg(long = "ref", default_value = "HEAD")]
    reference: String,
    /// Subdirectory of the repository holding the manifests
    #[arg(long, default_value = "")]
    path: String,
    /// Refuse the commit (exit 3) unless it is signed by a key in FILE: an OpenPGP public key
    /// (armored or binary) or an SSH allowed-signers file; repeatable
    #[arg(long, value_name = "FILE")]
    verify_keys: Vec<PathBuf>,
}

/// A configuration error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(pub String);

/// A safety rule refused (the mass-deletion guard, a rollback, a deletion the guard did not
/// permit): exit code 3. An explicit flag overrides each where one exists.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Refused(pub Box<dyn std::error::Error>);

/// Exit status of a command that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 0.
    Success,
    /// 1.
    Failure,
    /// 2 (plan --detailed-exitcode: changes present).
    Changes,
}

impl SourceArgs {
    /// The pipeline's context; a key file of --verify-keys that cannot be used is a
    /// configuration error.
    fn context(&self, targets: Option<&TargetArgs>) -> Result<Context, ConfigError> {
        let mut ctx = Context::new(&self.repo, &self.reference, &self.path);
        if !self.verify_keys.is_empty() {
            let verifier = Verifier::from_files(&self.verify_keys).map_err(|e| {
                ConfigError(format!("--verify-keys: {}", pbsync_core::error_chain(&e)))
            })?;
            ctx.verify = Some(Arc::new(verifier));
        }
        if let Some(t) = targets {
            ctx.plan.instance.clone_from(&t.instance);
            ctx.plan.adopt = t.adopt;
            ctx.plan.cascade = t.cascade;
            ctx.plan.guard = MassDeletion {
                max_fraction: f64::from(t.guard_percent) / 100.0,
                min_objects: t.guard_min,
            };
        }
        Ok(ctx)
    }
}

/// Reads the commit `ctx` names; a commit whose signature is refused is refused (exit 3).
fn fetch(ctx: &Context) -> Result<Snapshot, Box<dyn std::error::Error>> {
    ctx.fetch().map_err(refused)
}

/// `e` as the command's error: a refused signature is a safety rule's refusal (exit 3).
fn refused(e: engine::Error) -> Box<dyn std::error::Error> {
    if matches!(e, engine::Error::SignatureRefused { .. }) {
        Refused(Box::new(e)).into()
    } else {
        e.into()
    }
}

/// True when colour should be used on stdout.
fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Logs of the one-shot commands to stderr: warnings (an Event that could not be written),
/// or what `RUST_LOG` asks for (`RUST_LOG=pbsync=debug` shows each phase and its duration).
/// The daemon sets up its own (journald lines or JSON).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        init_logging();
    }
    // A one-shot command is one task sending requests and waiting for answers: one thread
    // serves that without the cross-thread wake-ups of a work-stealing pool (measured: a
    // 1,000-object apply costs pbsync ~0.25 s of CPU instead of ~0.4 s, and 1.5k context
    // switches instead of 12k, CPU the API server on the same host then has). The daemon
    // keeps a pool: its watcher, webhook, leader lease and passes run side by side.
    let mut builder = if matches!(cli.command, Command::Run(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Validate(args) => validate::run(&args).await,
            Command::Graph(args) => graph::run(&args).await,
            Command::Plan(args) => plan::run(&args).await,
            Command::Apply(args) => apply::run(&args).await,
            Command::Import(args) => import::run(&args),
            Command::Run(args) => run::run(&args).await,
            Command::Status(args) => status::run(&args).await,
            Command::ReconcileNow(args) => status::reconcile_now(&args).await,
            Command::Completions(args) => completions::run(&args),
            Command::Man(args) => man::run(&args),
        }
    });
    exit_code(result)
}

/// Maps a command's outcome to the process exit code, printing the error chain once.
fn exit_code(result: Result<Status, Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(Status::Success) => ExitCode::SUCCESS,
        Ok(Status::Failure) => ExitCode::from(1),
        Ok(Status::Changes) => ExitCode::from(2),
        Err(err) => {
            eprintln!("error: {}", pbsync_core::error_chain(err.as_ref()));
            if err.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else if err.downcast_ref::<Refused>().is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Prints the violations of an invalid commit (text or JSON) to stdout.
fn print_invalid(
    revision: &str,
    violations: &pbsync_core::model::Violations,
    warnings: &[String],
    json: bool,
) {
    if json {
        let doc = serde_json::json!({
            "revision": revision,
            "violations": violations.0,
            "warnings": warnings,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    for v in &violations.0 {
        println!("{v}");
    }
    for w in warnings {
        println!("warning: {w}");
    }
    println!(
        "\n{} violation(s) in revision {}; nothing is applied from it",
        violations.0.len(),
        &revision[..revision.len().min(12)]
    );
}
