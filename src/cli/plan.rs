//! `pbsync plan`: what applying a commit would change, and why; with `--base`/`--head`, what
//! merging a pull request would change (see `review`), as a PR comment or JSON for CI.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::post::{self, PostArgs};
use super::target::with_target;
use super::{ConfigError, SourceArgs, Status, TargetArgs, color, print_invalid};
use crate::engine::{self, Error, Goal, Input, NoTarget};
use crate::review::{self, Request};
use pbsync_core::plan::comment::{self, render_comments};
use pbsync_core::plan::{Plan, render_json, render_text};

/// Arguments of `pbsync plan`.
#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Output format (markdown: pull-request comments, split under GitHub's size limit)
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error (or unknown results)
    #[arg(long)]
    detailed_exitcode: bool,
    /// List unchanged objects too
    #[arg(long, short)]
    verbose: bool,
    /// Plan a pull request: the merge of --head into this base revision (instead of --ref)
    #[arg(long, requires = "head")]
    base: Option<String>,
    /// The pull request's head revision (with --base)
    #[arg(long, requires = "base")]
    head: Option<String>,
    /// With --base: plan against the state base would produce instead of the live target
    #[arg(long, requires = "base")]
    offline: bool,
    /// With --format markdown: write the comments to DIR/comment-1.md, comment-2.md, ...
    #[arg(long, value_name = "DIR")]
    comment_dir: Option<PathBuf>,
    /// With --base: keep parsed files in DIR between runs (CI: cache this directory), so a
    /// later plan parses only the files an earlier one did not see (ignored without --base)
    #[arg(long, value_name = "DIR", env = "PBSYNC_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    post: PostArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
    Markdown,
}

pub(super) async fn run(args: &PlanArgs) -> Result<Status, Box<dyn std::error::Error>> {
    if args.comment_dir.is_some() && args.format != Format::Markdown {
        return Err(ConfigError("--comment-dir needs --format markdown".into()).into());
    }
    if let (Some(base), Some(head)) = (&args.base, &args.head) {
        return run_review(args, base, head).await;
    }
    let ctx = args.source.context(Some(&args.target))?;
    let snapshot = super::fetch(&ctx)?;
    let planned = with_target!(
        args.target.for_plan().build()?,
        t => engine::run(&ctx, Input::of(&snapshot), Goal::Plan(&t)).await
    );
    let plan = match planned {
        Ok(mut p) => p.plan.take().expect("invariant: plan goals produce a plan"),
        Err(Error::Invalid {
            revision,
            violations,
            warnings,
        }) if args.format == Format::Markdown => Plan::invalid(revision, violations.0, warnings),
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
    let json = render_json(&plan);
    output(args, &plan, &comment::Context::default(), json)?;
    Ok(status(args, &plan))
}

async fn run_review(
    args: &PlanArgs,
    base: &str,
    head: &str,
) -> Result<Status, Box<dyn std::error::Error>> {
    let ctx = args.source.context(Some(&args.target))?;
    // Settings of --post are checked before anything is planned.
    let forge = post::forge(&args.post, &ctx.git.repo)?;
    let req = Request {
        cache_dir: args.cache_dir.clone(),
        base: base.to_string(),
        head: head.to_string(),
    };
    let planned: Result<review::Review, Box<dyn std::error::Error>> = if args.offline {
        review::plan::<NoTarget>(&ctx, &req, None)
            .await
            .map_err(review_error)
    } else {
        match args.target.for_plan().build() {
            Ok(target) => with_target!(target, t => review::plan(&ctx, &req, Some(&t)).await)
                .map_err(review_error),
            Err(e) => Err(e.into()),
        }
    };
    let mut review = match planned {
        Ok(r) => r,
        Err(e) => {
            if let Some((forge, number)) = &forge {
                let text = pbsync_core::error_chain(&*e);
                post::post(forge, *number, &post::failure_comment(&text)).await?;
            }
            return Err(e);
        }
    };
    if !review.offline && review.plan.read_at.is_none() && review.plan.violations.is_empty() {
        review.plan.read_at = Some(pbsync_target::now_rfc3339());
    }
    output(
        args,
        &review.plan,
        &review.comment_context(),
        review.to_json(),
    )?;
    if let Some((forge, number)) = &forge {
        let parts = post::comments(&review.plan, &review.comment_context(), forge.provider());
        post::post(forge, *number, &parts).await?;
    }
    Ok(status(args, &review.plan))
}

/// A safety refusal (exit 3) stays one; any other failure is an error.
fn review_error(e: review::Error) -> Box<dyn std::error::Error> {
    match e {
        review::Error::Plan(e) => super::refused(e),
        e => e.into(),
    }
}

fn output(
    args: &PlanArgs,
    plan: &Plan,
    ctx: &comment::Context,
    json: serde_json::Value,
) -> Result<(), Box<dyn std::error::Error>> {
    match args.format {
        Format::Text => {
            for v in &plan.violations {
                println!("{v}");
            }
            if !plan.violations.is_empty() {
                println!(
                    "\n{} violation(s); nothing is applied from it\n",
                    plan.violations.len()
                );
            }
            print!("{}", render_text(plan, color(), args.verbose));
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Format::Markdown => {
            let parts = render_comments(plan, ctx);
            match &args.comment_dir {
                Some(dir) => write_comments(dir, &parts)?,
                None => print!("{}", parts.join("\n")),
            }
        }
    }
    Ok(())
}

/// Writes `comment-1.md` ... `comment-n.md` into `dir` and removes higher-numbered ones left
/// by an earlier, longer plan (CI posts every file it finds).
fn write_comments(dir: &Path, parts: &[String]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, part) in parts.iter().enumerate() {
        std::fs::write(dir.join(format!("comment-{}.md", i + 1)), part)?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let stale = name
            .to_str()
            .and_then(|n| n.strip_prefix("comment-"))
            .and_then(|n| n.strip_suffix(".md"))
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|i| i > parts.len());
        if stale {
            std::fs::remove_file(entry.path())?;
        }
    }
    eprintln!(
        "wrote {} comment(s) to {}",
        parts.len(),
        dir.to_string_lossy()
    );
    Ok(())
}

/// 1 for violations or unknown results; with --detailed-exitcode 2 for changes; else 0.
fn status(args: &PlanArgs, plan: &Plan) -> Status {
    if !plan.violations.is_empty() || plan.has_unknown() {
        Status::Failure
    } else if args.detailed_exitcode && plan.has_changes() {
        Status::Changes
    } else {
        Status::Success
    }
}
