//! `pbsync plan --base B --head H --post gitea|github|gitlab`: the pull-request plan posted
//! by pbsync itself as the pull request's one sticky comment (split over the provider's
//! limit, edited in place, never duplicated), carrying a hidden note of the changes shown so
//! the daemon can tell after the merge whether it applied what the reviewers saw.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::ConfigError;
use crate::config::FORGE_TOKEN_ENV as TOKEN_ENV;
use crate::forge::{self, Forge, Provider, sticky};
use pbsync_core::plan::Plan;
use pbsync_core::plan::comment::{self, ChangeNote, MARKER};
use pbsync_target::Secret;

/// Where `--post` posts.
#[derive(Debug, Args)]
pub(crate) struct PostArgs {
    /// With --base/--head: post the plan as the pull request's sticky comment on this
    /// provider (needs --post-pr and a token)
    #[arg(long, value_enum, value_name = "PROVIDER", requires_all = ["base", "post_pr"])]
    pub(crate) post: Option<Provider>,
    /// The pull request (GitLab: merge request iid) to post on
    #[arg(long, value_name = "N", requires = "post")]
    pub(crate) post_pr: Option<u64>,
    /// The repository: owner/name (GitLab: the project's path or id); default: read from
    /// the URL of the repository's `origin` remote
    #[arg(long, value_name = "OWNER/NAME", requires = "post")]
    pub(crate) post_repo: Option<String>,
    /// The provider's API root (default: https://api.github.com, https://gitlab.com/api/v4,
    /// or for Gitea /api/v1 on the host of the `origin` remote)
    #[arg(long, value_name = "URL", requires = "post")]
    pub(crate) post_api_url: Option<String>,
    /// File holding the provider's token (default: env PBSYNC_FORGE_TOKEN)
    #[arg(long, value_name = "FILE", requires = "post")]
    pub(crate) post_token_file: Option<PathBuf>,
}

/// The provider, repository and token `args` name, checked before anything is planned.
pub(crate) fn forge(args: &PostArgs, repo: &Path) -> Result<Option<(Forge, u64)>, ConfigError> {
    let Some(provider) = args.post else {
        return Ok(None);
    };
    let number = args
        .post_pr
        .ok_or_else(|| ConfigError("--post needs --post-pr".into()))?;
    let origin_url = origin_url(repo);
    let repository = match &args.post_repo {
        Some(r) => r.clone(),
        None => origin_url
            .as_deref()
            .and_then(forge::repository_of_url)
            .ok_or_else(|| {
                ConfigError(
                    "--post: no --post-repo, and the repository's origin remote does not name one"
                        .into(),
                )
            })?,
    };
    let api_url = match &args.post_api_url {
        Some(u) => u.clone(),
        None => provider
            .default_api_url(origin_url.as_deref())
            .ok_or_else(|| ConfigError(format!("--post {provider}: give --post-api-url")))?,
    };
    let token = match &args.post_token_file {
        Some(p) => Secret::read_file(p).map_err(|e| {
            ConfigError(format!(
                "--post-token-file: cannot read {}: {e}",
                p.display()
            ))
        })?,
        None => std::env::var(TOKEN_ENV).map(Secret::new).map_err(|_| {
            ConfigError(format!(
                "--post: no token (give --post-token-file or set {TOKEN_ENV})"
            ))
        })?,
    };
    let forge = Forge::new(&forge::Settings {
        provider,
        api_url,
        repository,
        token,
        timeout: Duration::from_secs(30),
    })
    .map_err(|e| ConfigError(format!("--post: {e}")))?;
    Ok(Some((forge, number)))
}

fn origin_url(repo: &Path) -> Option<String> {
    let r = git2::Repository::discover(repo).ok()?;
    let remote = r.find_remote("origin").ok()?;
    remote.url().ok().map(str::to_string)
}

/// The plan as the comments to post: rendered under the provider's limit, the first one
/// carrying the note of the changes it shows.
pub(crate) fn comments(plan: &Plan, ctx: &comment::Context, provider: Provider) -> Vec<String> {
    let note = ChangeNote::of(plan).render();
    let limit = provider
        .comment_limit()
        .saturating_sub(note.chars().count());
    let mut parts = comment::render_comments_within(plan, ctx, limit);
    if let Some(first) = parts.first_mut() {
        let at = MARKER.len() + 1;
        first.insert_str(at.min(first.len()), &note);
    }
    parts
}

/// A comment saying the plan could not be made (the error chain; no secrets are in it).
pub(crate) fn failure_comment(error: &str) -> Vec<String> {
    vec![format!(
        "{MARKER}\n### pbsync plan failed\n\n```\n{}\n```\n",
        forge::cut(error, 60_000)
    )]
}

/// Posts `parts` on the pull request and says so on stderr.
pub(crate) async fn post(forge: &Forge, number: u64, parts: &[String]) -> Result<(), forge::Error> {
    let synced = sticky::sync(forge, number, MARKER, parts).await?;
    eprintln!(
        "posted the plan on {} pull request {number}: {synced}",
        forge.provider()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    /// The `pbsync plan ...` invocation of a CI example, its variables replaced by
    /// placeholders, as arguments.
    fn invocation(example: &str) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
        let text = std::fs::read_to_string(&path).expect("example");
        let start = text
            .find("pbsync plan ")
            .expect("the example runs pbsync plan");
        let mut command = String::new();
        for line in text[start..].lines() {
            let line = line.trim();
            if line.starts_with("||") {
                break;
            }
            command.push_str(line.trim_end_matches('\\'));
            command.push(' ');
            if !(line.ends_with('\\') || text.contains("- >")) || line.starts_with("- ") {
                break;
            }
        }
        while let Some(a) = command.find("${{") {
            let b = command[a..].find("}}").map_or(command.len(), |b| a + b + 2);
            command.replace_range(a..b, "7");
        }
        command
            .split_whitespace()
            .take_while(|w| *w != "||")
            .map(|w| {
                let w = w.trim_matches('"');
                if w.contains('$') {
                    "7".to_string()
                } else {
                    w.to_string()
                }
            })
            .collect()
    }

    #[test]
    fn the_ci_examples_post_with_flags_pbsync_accepts() {
        for (example, provider) in [
            ("examples/ci/github-actions.yml", "github"),
            ("examples/ci/gitlab-ci.yml", "gitlab"),
        ] {
            let args = invocation(example);
            assert!(
                args.windows(2)
                    .any(|w| w[0] == "--post" && w[1] == provider),
                "{example}: {args:?}"
            );
            assert!(args.iter().any(|a| a == "--post-pr"), "{example}: {args:?}");
            if let Err(e) = super::super::Cli::try_parse_from(&args) {
                panic!("{example}: {args:?}: {e}");
            }
        }
    }
}
