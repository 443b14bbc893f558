//! `completions SHELL` and `man [COMMAND]`: generated from the command line's own
//! definition (`args::Args`), so they cannot drift from it.

use clap::CommandFactory;

use crate::args::Args;
use crate::error::CliError;
use crate::output::Out;

/// The name the scripts and pages give the program.
const NAME: &str = "backchannel";

/// `completions SHELL`: the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell, out: &Out) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), NAME, &mut script);
    out.line(String::from_utf8_lossy(&script).trim_end());
    Ok(())
}

/// `man [COMMAND...]`: the roff manual page of backchannel, or of one of its commands
/// (`man drop send`), on stdout.
pub fn man(path: &[String], out: &Out) -> Result<(), CliError> {
    let mut cmd = Args::command().name(NAME);
    cmd.build();
    let mut name = NAME.to_string();
    for (i, word) in path.iter().enumerate() {
        let Some(sub) = cmd.find_subcommand(word).filter(|c| !c.is_hide_set()).cloned() else {
            return Err(CliError::NoSuchCommand(path[..=i].join(" ")));
        };
        name = format!("{name}-{}", sub.get_name());
        cmd = sub.display_name(name.clone()).version(env!("CARGO_PKG_VERSION"));
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut page)
        .map_err(|source| CliError::Write {
            path: "stdout".into(),
            source,
        })?;
    out.line(String::from_utf8_lossy(&page).trim_end());
    Ok(())
}
