//! Building the target named on the command line (or in the configuration file), and the
//! one `with_target!` dispatch from a built target to code generic over `Target`.

use clap::Args;

use super::ConfigError;
use pbsync_core::ownership::DEFAULT_INSTANCE;
use pbsync_core::plan::Cascade;
use pbsync_target::Split;
use pbsync_target::kubernetes::{self, KubeOptions, KubeTarget};
use pbsync_target::local_dir::LocalDir;
use pbsync_target::palette::{self, ApiKey, PaletteConfig, PaletteTarget};

/// Where objects go and how pbsync decides.
#[derive(Debug, Clone, Args)]
pub(crate) struct TargetArgs {
    /// Target: dir:PATH (a local directory) or kube (the Kubernetes hub of the kubeconfig);
    /// cluster profiles go to Palette with --palette-url
    #[arg(long, default_value = "dir:./pbsync-state")]
    pub(crate) target: String,
    /// Name of this pbsync instance; several instances can share a target
    #[arg(long, default_value = DEFAULT_INSTANCE, env = "PBSYNC_INSTANCE")]
    pub(crate) instance: String,
    /// Take over objects that exist but were not created by pbsync (released, never deleted)
    #[arg(long)]
    pub(crate) adopt: bool,
    /// Who performs reference-counted deletion of dependents: client (pbsync) or server
    /// (PaletteAI's ProfileBundle controller; pbsync deletes only bundles)
    #[arg(long, default_value_t = Cascade::Client)]
    pub(crate) cascade: Cascade,
    /// Mass-deletion guard: refuse when more than this percentage of managed objects would go
    #[arg(long, default_value_t = 50)]
    pub(crate) guard_percent: u8,
    /// Mass-deletion guard: ... and that is more than this many objects
    #[arg(long, default_value_t = 10)]
    pub(crate) guard_min: usize,
    #[command(flatten)]
    pub(crate) kube: KubeArgs,
    #[command(flatten)]
    pub(crate) palette: PaletteArgs,
}

/// A target built from the arguments. Each variant is one concrete combination, so code
/// generic over `Target` is monomorphised once per combination (see `with_target!`).
#[derive(Debug)]
pub(crate) enum Built {
    /// `dir:PATH`: hub objects and cluster profiles as files.
    Dir(LocalDir),
    /// `kube`: hub objects on Kubernetes; a repository naming cluster profiles is refused.
    Kube(Box<KubeTarget>),
    /// `dir:PATH` with `--palette-url`: hub objects as files, cluster profiles in Palette.
    DirPalette(Box<Split<LocalDir, PaletteTarget>>),
    /// `kube` with `--palette-url`: hub objects on Kubernetes, cluster profiles in Palette.
    KubePalette(Box<Split<KubeTarget, PaletteTarget>>),
}

/// Runs `$body` with `$t` bound to the concrete target inside `$built`.
macro_rules! with_target {
    ($built:expr, $t:ident => $body:expr) => {
        match $built {
            $crate::cli::target::Built::Dir($t) => $body,
            $crate::cli::target::Built::Kube($t) => {
                let $t = *$t;
                $body
            }
            $crate::cli::target::Built::DirPalette($t) => {
                let $t = *$t;
                $body
            }
            $crate::cli::target::Built::KubePalette($t) => {
                let $t = *$t;
                $body
            }
        }
    };
}
pub(crate) use with_target;

impl TargetArgs {
    /// Defaults for commands that only read the target.
    pub(crate) fn for_validate(instance: &str) -> Self {
        Self {
            target: String::new(),
            instance: instance.to_string(),
            adopt: false,
            cascade: Cascade::Client,
            guard_percent: 50,
            guard_min: 10,
            kube: KubeArgs::default(),
            palette: PaletteArgs::default(),
        }
    }

    /// These arguments for a plan, which always dry-runs new objects (`--preflight`), so a
    /// create the server would reject shows as `unknown`.
    pub(crate) fn for_plan(&self) -> Self {
        let mut args = self.clone();
        args.kube.preflight = true;
        args
    }

    /// Builds the target these arguments name.
    pub fn build(&self) -> Result<Built, ConfigError> {
        match self.target.split_once(':') {
            Some(("dir", path)) if !path.is_empty() => {
                let dir = LocalDir::new(path, self.instance.clone());
                match self.palette.config()? {
                    None => Ok(Built::Dir(dir)),
                    Some(config) => Ok(Built::DirPalette(Box::new(Split {
                        hub: dir,
                        palette: self.palette.target(config, &self.instance)?,
                    }))),
                }
            }
            None if self.target == "kube" => {
                let mut options = self.kube.options(&self.instance)?;
                match self.palette.config()? {
                    None => Ok(Built::Kube(Box::new(KubeTarget::new(options)))),
                    Some(config) => {
                        options.cluster_profiles = kubernetes::ClusterProfiles::Elsewhere;
                        Ok(Built::KubePalette(Box::new(Split {
                            hub: KubeTarget::new(options),
                            palette: self.palette.target(config, &self.instance)?,
                        })))
                    }
                }
            }
            _ => Err(ConfigError(format!(
                "unknown target {:?}: expected dir:PATH or kube",
                self.target
            ))),
        }
    }
}

/// The requests a target sent, for `apply --stats`: `verb code: count, ... (total N, writes
/// M)`, per client when it has two (`kubernetes: ...; palette: ...`); `None` without any.
pub(crate) fn request_stats(target: &impl pbsync_target::Target) -> Option<String> {
    let counts = target.request_counts();
    let line = |r: &pbsync_target::RequestCounts| {
        format!("{r} (total {}, writes {})", r.total(), r.writes())
    };
    match counts.as_slice() {
        [] => None,
        [(_, one)] => Some(line(one)),
        many => Some(
            many.iter()
                .map(|(name, r)| format!("{name}: {}", line(r)))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// How to reach the Kubernetes hub (`--target kube`) and how hard to use it.
#[derive(Debug, Clone, Args)]
pub(crate) struct KubeArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster account)
    #[arg(long, env = "PBSYNC_KUBECONFIG")]
    pub(crate) kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context (default: the current context)
    #[arg(long)]
    pub(crate) context: Option<String>,
    /// Namespace of the status ConfigMap pbsync-status-<instance> (must exist)
    #[arg(long, default_value = kubernetes::DEFAULT_STATUS_NAMESPACE)]
    pub(crate) status_namespace: String,
    /// Requests per second to the API server (token bucket refill; 0: no limit)
    #[arg(long, default_value_t = KubeOptions::default().qps)]
    pub(crate) kube_qps: f64,
    /// Requests that may be sent at once after an idle period (token bucket size)
    #[arg(long, default_value_t = KubeOptions::default().burst)]
    pub(crate) kube_burst: u32,
    /// Requests in flight at once (dry-runs, lists, writes of one wave)
    #[arg(long, default_value_t = KubeOptions::default().concurrency)]
    pub(crate) kube_concurrency: usize,
    /// Dry-run every new object before the first write, so a commit with an object the
    /// server rejects writes nothing (plan always does; apply: one more request per create)
    #[arg(long)]
    pub(crate) preflight: bool,
    /// Keep the hub's lists in watch-fed mirrors (the daemon; not a flag).
    #[arg(skip)]
    pub(crate) watch_cache: bool,
}

impl Default for KubeArgs {
    fn default() -> Self {
        let d = KubeOptions::default();
        Self {
            kubeconfig: None,
            context: None,
            status_namespace: d.status_namespace,
            kube_qps: d.qps,
            kube_burst: d.burst,
            kube_concurrency: d.concurrency,
            preflight: d.preflight,
            watch_cache: d.watch_cache,
        }
    }
}

impl KubeArgs {
    /// The target options these flags describe.
    pub(crate) fn options(&self, instance: &str) -> Result<KubeOptions, ConfigError> {
        if !(self.kube_qps.is_finite() && self.kube_qps >= 0.0) {
            return Err(ConfigError(format!(
                "--kube-qps must be a number >= 0, not {}",
                self.kube_qps
            )));
        }
        if self.kube_concurrency == 0 || self.kube_burst == 0 {
            return Err(ConfigError(
                "--kube-burst and --kube-concurrency must be at least 1".into(),
            ));
        }
        Ok(KubeOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            instance: instance.to_string(),
            status_namespace: self.status_namespace.clone(),
            qps: self.kube_qps,
            burst: self.kube_burst,
            concurrency: self.kube_concurrency,
            preflight: self.preflight,
            watch_cache: self.watch_cache,
            ..KubeOptions::default()
        })
    }
}

/// Where Palette is (`--palette-url`): cluster profiles then go there, whatever the hub side.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct PaletteArgs {
    /// Palette API base URL (e.g. https://api.spectrocloud.com); cluster profiles go there
    #[arg(long)]
    pub(crate) palette_url: Option<String>,
    /// File holding the Palette API key (default: the PALETTE_API_KEY environment variable)
    #[arg(long)]
    pub(crate) palette_api_key_file: Option<std::path::PathBuf>,
    /// Palette project uid (ProjectUid header); without it, tenant scope only
    #[arg(long)]
    pub(crate) palette_project_uid: Option<String>,
    /// Timeout of one Palette request (e.g. 30s, 500ms, 2m)
    #[arg(long, value_parser = palette::parse_timeout)]
    pub(crate) palette_timeout: Option<std::time::Duration>,
}

impl PaletteArgs {
    /// The Palette configuration, or `None` without `--palette-url`.
    pub(crate) fn config(&self) -> Result<Option<PaletteConfig>, ConfigError> {
        let Some(url) = &self.palette_url else {
            return Ok(None);
        };
        let key = match &self.palette_api_key_file {
            Some(path) => ApiKey::read_file(path).map_err(|e| {
                ConfigError(format!(
                    "cannot read the palette api key from {}: {e}",
                    path.display()
                ))
            })?,
            None => ApiKey::new(std::env::var("PALETTE_API_KEY").map_err(|_| {
                ConfigError(
                    "--palette-url needs an API key: --palette-api-key-file or PALETTE_API_KEY"
                        .into(),
                )
            })?),
        };
        let mut config = PaletteConfig::new(url.clone(), key);
        config.project_uid.clone_from(&self.palette_project_uid);
        if let Some(t) = self.palette_timeout {
            config.timeout = t;
        }
        Ok(Some(config))
    }

    /// The Palette target for `config`.
    pub(crate) fn target(
        &self,
        config: PaletteConfig,
        instance: &str,
    ) -> Result<PaletteTarget, ConfigError> {
        PaletteTarget::new(config, instance).map_err(|e| ConfigError(pbsync_core::error_chain(&e)))
    }
}
