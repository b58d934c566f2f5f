//! `pbsync graph`: the reference graph of a commit as text, Graphviz dot, or JSON.

use clap::{Args, ValueEnum};

use super::{SourceArgs, Status, print_invalid};
use crate::engine::{self, Error, Goal, Input, NoTarget};

/// Arguments of `pbsync graph`.
#[derive(Debug, Args)]
pub(crate) struct GraphArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Output format (dot renders with Graphviz: `pbsync graph --format dot | dot -Tsvg`)
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Dot,
    Json,
}

pub(super) async fn run(args: &GraphArgs) -> Result<Status, Box<dyn std::error::Error>> {
    let ctx = args.source.context(None)?;
    let snapshot = super::fetch(&ctx)?;
    let loaded =
        match engine::run::<NoTarget>(&ctx, Input::of(&snapshot), Goal::Validate(None)).await {
            Ok(l) => l,
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
    match args.format {
        Format::Text => {
            print!("{}", loaded.graph.to_text());
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
        }
        Format::Dot => print!("{}", loaded.graph.to_dot()),
        Format::Json => {
            let doc = serde_json::json!({
                "revision": snapshot.revision,
                "nodes": loaded.graph.views(),
                "warnings": loaded.warnings,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(Status::Success)
}
