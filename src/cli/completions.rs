//! `pbsync completions SHELL`: the shell completion script, generated from the clap
//! definitions so it can never fall behind the command line.

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::{Cli, Status};

/// Arguments of `pbsync completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for (the package installs bash, zsh and fish scripts)
    shell: Shell,
}

pub(super) fn run(args: &CompletionsArgs) -> Result<Status, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    script(args.shell, &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
    Ok(Status::Success)
}

/// Writes the completion script of `shell` for the whole command line.
fn script(shell: Shell, out: &mut Vec<u8>) {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_completion_offers_every_visible_subcommand() {
        let mut out = Vec::new();
        script(Shell::Bash, &mut out);
        let text = String::from_utf8(out).expect("invariant: clap writes UTF-8");
        let visible: Vec<String> = Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name().to_owned())
            .collect();
        assert!(visible.len() >= 9, "{visible:?}");
        for name in &visible {
            assert!(text.contains(name.as_str()), "no `{name}` in:\n{text}");
        }
        assert!(text.contains("complete -F _pbsync"), "{text}");
    }

    // The hidden `man` is left out of --help and the man pages, not out of the scripts:
    // clap_complete completes hidden subcommands.
    #[test]
    fn zsh_and_fish_completions_name_the_subcommands() {
        for shell in [Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            script(shell, &mut out);
            let text = String::from_utf8(out).expect("invariant: clap writes UTF-8");
            assert!(text.contains("reconcile-now"), "{shell}: {text}");
        }
    }
}
