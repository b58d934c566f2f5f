//! Building the target named on the command line (or in the configuration file), and the
//! one `with_target!` dispatch from a built target to code generic over `Target`.

use clap::Args;

use super::{CascadeArg, ConfigError};
use crate::apply::local_dir::LocalDir;

/// Where objects go and how pbsync decides.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Target: dir:PATH (a local directory)
    #[arg(long, default_value = "dir:./pbsync-state")]
    pub(crate) target: String,
    /// Name of this pbsync instance; several instances can share a target
    #[arg(long, default_value = "default", env = "PBSYNC_INSTANCE")]
    pub(crate) instance: String,
    /// Take over objects that exist but were not created by pbsync (released, never deleted)
    #[arg(long)]
    pub(crate) adopt: bool,
    /// Who performs reference-counted deletion of dependents
    #[arg(long, value_enum, default_value_t = CascadeArg::Client)]
    pub(crate) cascade: CascadeArg,
    /// Mass-deletion guard: refuse when more than this percentage of managed objects would go
    #[arg(long, default_value_t = 50)]
    pub(crate) guard_percent: u8,
    /// Mass-deletion guard: ... and that is more than this many objects
    #[arg(long, default_value_t = 10)]
    pub(crate) guard_min: usize,
}

/// A target built from the arguments. Each variant is one concrete combination, so code
/// generic over `Target` is monomorphised once per combination (see `with_target!`).
#[derive(Debug)]
pub enum Built {
    /// `dir:PATH`: hub objects and cluster profiles as files.
    Dir(LocalDir),
}

/// Runs `$body` with `$t` bound to the concrete target inside `$built`.
macro_rules! with_target {
    ($built:expr, $t:ident => $body:expr) => {
        match $built {
            $crate::cli::target::Built::Dir($t) => $body,
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
            cascade: CascadeArg::Client,
            guard_percent: 50,
            guard_min: 10,
        }
    }

    /// Builds the target these arguments name.
    pub fn build(&self) -> Result<Built, ConfigError> {
        match self.target.split_once(':') {
            Some(("dir", path)) if !path.is_empty() => {
                Ok(Built::Dir(LocalDir::new(path, self.instance.clone())))
            }
            _ => Err(ConfigError(format!(
                "unknown target {:?}: expected dir:PATH",
                self.target
            ))),
        }
    }
}
