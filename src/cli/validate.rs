//! `pbsync validate`: every rule, every violation, exit 1 if any.

use clap::{Args, ValueEnum};

use super::target::with_target;
use super::{SourceArgs, Status, TargetArgs, print_invalid};
use crate::engine::{self, Error, Goal, Input, NoTarget};

/// Arguments of `pbsync validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Also check references to cluster profiles and definitions against this target's live
    /// state (without it they are warnings, checked at plan time)
    #[arg(long)]
    target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

pub(super) async fn run(args: &ValidateArgs) -> Result<Status, Box<dyn std::error::Error>> {
    let ctx = args.source.context(None)?;
    let snapshot = super::fetch(&ctx)?;
    let json = args.format == Format::Json;
    let input = Input::of(&snapshot);
    let outcome = match &args.target {
        None => engine::run::<NoTarget>(&ctx, input, Goal::Validate(None)).await,
        Some(target) => {
            let targets = TargetArgs {
                target: target.clone(),
                ..TargetArgs::for_validate(&ctx.plan.instance)
            };
            with_target!(targets.build()?, t => engine::run(&ctx, input, Goal::Validate(Some(&t))).await)
        }
    };
    match outcome {
        Ok(o) => {
            if json {
                let doc = serde_json::json!({
                    "revision": snapshot.revision,
                    "violations": [],
                    "warnings": o.warnings,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                for w in &o.warnings {
                    println!("warning: {w}");
                }
                println!(
                    "revision {} is valid: {} objects, {} in the desired set",
                    &snapshot.revision[..12],
                    o.graph.desired_state().objects.len(),
                    o.graph
                        .nodes()
                        .iter()
                        .filter(|n| n.desired && n.object.is_some())
                        .count()
                );
            }
            Ok(Status::Success)
        }
        Err(Error::Invalid {
            revision,
            violations,
            warnings,
        }) => {
            print_invalid(&revision, &violations, &warnings, json);
            Ok(Status::Failure)
        }
        Err(e) => Err(e.into()),
    }
}
