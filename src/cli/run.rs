//! `pbsync run`: the daemon. Reads the configuration file and flags once (exit 2 on any
//! problem), then runs until SIGTERM (exit 0), rebuilding the target on a SIGHUP reload.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use clap::Args;

use super::target::with_target;
use super::target::{KubeArgs, PaletteArgs};
use super::{ConfigError, Status, TargetArgs};
use crate::config::{Config, LogFormat, Settings};
use crate::daemon::{Daemon, Exit};

/// Arguments of `pbsync run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Configuration file (YAML); every key is also a flag of the same name, and flags win
    #[arg(long, env = "PBSYNC_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) settings: Settings,
}

impl TargetArgs {
    /// The target arguments the daemon's settings describe (defaults as for `apply`).
    pub(crate) fn from_settings(s: &Settings) -> Self {
        let kube_defaults = KubeArgs::default();
        Self {
            target: s
                .target
                .clone()
                .unwrap_or_else(|| "dir:./pbsync-state".into()),
            instance: s
                .instance
                .clone()
                .unwrap_or_else(|| pbsync_core::ownership::DEFAULT_INSTANCE.into()),
            adopt: s.adopt.unwrap_or(false),
            cascade: s.cascade.unwrap_or_default(),
            guard_percent: s.guard_percent.unwrap_or(50),
            guard_min: s.guard_min.unwrap_or(10),
            kube: KubeArgs {
                kubeconfig: s.kubeconfig.clone(),
                context: s.context.clone(),
                status_namespace: s
                    .status_namespace
                    .clone()
                    .unwrap_or(kube_defaults.status_namespace),
                kube_qps: s.kube_qps.unwrap_or(kube_defaults.kube_qps),
                kube_burst: s.kube_burst.unwrap_or(kube_defaults.kube_burst),
                kube_concurrency: s.kube_concurrency.unwrap_or(kube_defaults.kube_concurrency),
                preflight: s.preflight.unwrap_or(kube_defaults.preflight),
                // Watch-fed mirrors of the hub (see the kube target's `cache`): a pass with
                // nothing to do reads nothing; at 10,000 bundles commits apply twice as fast
                // for a quarter more memory (BENCHMARKS.md). `watch-cache: false` turns it off.
                watch_cache: s.watch_cache.unwrap_or(true),
            },
            palette: PaletteArgs {
                palette_url: s.palette_url.clone(),
                palette_api_key_file: s.palette_api_key_file.clone(),
                palette_project_uid: s.palette_project_uid.clone(),
                palette_timeout: s
                    .palette_timeout
                    .as_deref()
                    .and_then(|t| pbsync_target::palette::parse_timeout(t).ok()),
            },
        }
    }
}

/// Plain lines for journald (no colour, no timestamp: journald adds one) when stderr is not
/// a terminal; JSON with `--log-format json`.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let tty = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    // A second initialisation (tests in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text if tty => builder.try_init(),
        LogFormat::Text => builder.with_ansi(false).without_time().try_init(),
    };
}

pub(super) async fn run(args: &RunArgs) -> Result<Status, Box<dyn std::error::Error>> {
    let config = Config::load(args.config.as_deref(), &args.settings)
        .map_err(|e| ConfigError(pbsync_core::error_chain(&e)))?;
    init_logging(config.log_format);
    // Build the target before anything else, so a bad target is a config error (exit 2).
    let mut built = TargetArgs::from_settings(&config.settings).build()?;
    let mut daemon = Daemon::start(&config, args.settings.clone(), |c| {
        TargetArgs::from_settings(&c.settings)
            .build()
            .map(drop)
            .map_err(|e| e.to_string())
    })?;
    let mut config = config;
    loop {
        let exit = with_target!(built, t => daemon.serve(t, &config).await)?;
        match exit {
            Exit::Stop => {
                tracing::info!("stopped");
                return Ok(Status::Success);
            }
            Exit::Reload(new) => {
                config = *new;
                built = TargetArgs::from_settings(&config.settings).build()?;
            }
        }
    }
}
