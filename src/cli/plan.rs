//! `pbsync plan`: what applying a commit would change, and why.

use clap::{Args, ValueEnum};

use super::target::with_target;
use super::{SourceArgs, Status, TargetArgs, color, print_invalid};
use crate::plan::{render_json, render_markdown, render_text};
use crate::reconcile::{self, Error};

/// Arguments of `pbsync plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error (or unknown results)
    #[arg(long)]
    detailed_exitcode: bool,
    /// List unchanged objects too
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
    Markdown,
}

pub(super) async fn run(args: &PlanArgs) -> Result<Status, Box<dyn std::error::Error>> {
    let ctx = args.source.context(Some(&args.target));
    let snapshot = reconcile::fetch(&ctx)?;
    let planned =
        with_target!(args.target.build()?, t => reconcile::plan_commit(&ctx, &snapshot, &t).await);
    let planned = match planned {
        Ok(p) => p,
        Err(Error::Invalid {
            revision,
            violations,
            warnings,
        }) => {
            print_invalid(
                &revision,
                &violations,
                &warnings,
                args.format == Format::Json,
            );
            return Ok(Status::Failure);
        }
        Err(e) => return Err(e.into()),
    };
    let plan = &planned.plan;
    match args.format {
        Format::Text => print!("{}", render_text(plan, color(), args.verbose)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&render_json(plan))?),
        Format::Markdown => print!("{}", render_markdown(plan)),
    }
    if plan.has_unknown() {
        return Ok(Status::Failure);
    }
    Ok(if args.detailed_exitcode && plan.has_changes() {
        Status::Changes
    } else {
        Status::Success
    })
}
