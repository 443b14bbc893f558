//! `relay --config FILE` and `relay --print-config` (issue 21, point 3).
//!
//! A config file is TOML whose keys are the relay's flags, by the same names. It is read
//! by turning it into the flags it stands for, added after the command line's, for every
//! key whose flag the command line does not give: so a flag wins over the file, a value
//! from the file is parsed and checked exactly as the flag would be, and no flag's default
//! can hide a value from the file. `--print-config` prints every setting the relay would
//! run with (defaults included, from the relay library's through clap), as a config file;
//! `deploy/relay.toml` is that output with no flags, so the shipped file cannot drift.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use crate::args::Args;
use crate::error::CliError;

/// Flags that are not settings.
const NOT_SETTINGS: [&str; 3] = ["config", "print_config", "help"];

/// What the command line asks for, with a relay's config file applied.
pub enum Parsed {
    /// Run this.
    Run(Box<Args>),
    /// `relay --print-config`: print this and exit.
    Print(String),
}

/// Parses `argv` (clap's own errors exit as clap does), applying `relay --config FILE`.
pub fn parse(argv: Vec<OsString>) -> Result<Parsed, CliError> {
    let matches = Args::command().get_matches_from(argv.clone());
    let Some(("relay", relay)) = matches.subcommand() else {
        return Ok(Parsed::Run(Box::new(from(&matches))));
    };
    let mut full = argv;
    if let Some(path) = relay.get_one::<PathBuf>("config") {
        full.extend(flags_from(path, relay)?);
    }
    let matches = Args::command()
        .try_get_matches_from(full)
        // The command line parsed alone: what fails now is a value from the file.
        .map_err(|e| CliError::Config {
            path: relay.get_one::<PathBuf>("config").cloned().unwrap_or_default(),
            why: e
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_string(),
        })?;
    match matches.subcommand() {
        Some(("relay", relay)) if relay.get_flag("print_config") => Ok(Parsed::Print(print(relay))),
        _ => Ok(Parsed::Run(Box::new(from(&matches)))),
    }
}

fn from(matches: &ArgMatches) -> Args {
    // The matches come from `Args::command()`: they always convert.
    Args::from_arg_matches(matches).unwrap_or_else(|e| e.exit())
}

/// The relay command's settings: (id, long name, whether it is a flag, whether it repeats).
fn settings() -> Vec<(String, String, bool, bool)> {
    let cmd = Args::command();
    let Some(relay) = cmd.find_subcommand("relay") else {
        return Vec::new();
    };
    relay
        .get_arguments()
        .filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str()))
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            let flag = matches!(a.get_action(), ArgAction::SetTrue);
            let repeats = matches!(a.get_action(), ArgAction::Append);
            Some((a.get_id().to_string(), long, flag, repeats))
        })
        .collect()
}

/// The flags `path` stands for, leaving out those the command line gives.
fn flags_from(path: &Path, given: &ArgMatches) -> Result<Vec<OsString>, CliError> {
    let bad = |why: String| CliError::Config {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
    let known = settings();
    let mut out = Vec::new();
    for (key, value) in &table {
        let Some((id, long, flag, repeats)) = known.iter().find(|(_, long, ..)| long == key) else {
            return Err(bad(format!(
                "unknown key `{key}` (the keys are the flags of `backchannel relay --help`)"
            )));
        };
        if given.value_source(id) == Some(ValueSource::CommandLine) {
            continue;
        }
        let wrong = |what: &str| bad(format!("`{key}` must be {what}"));
        match (value, flag, repeats) {
            (toml::Value::Boolean(b), true, _) => {
                if *b {
                    out.push(format!("--{long}").into());
                }
            }
            (_, true, _) => return Err(wrong("true or false")),
            (toml::Value::Array(items), _, true) => {
                for item in items {
                    let toml::Value::String(s) = item else {
                        return Err(wrong("a list of strings"));
                    };
                    out.push(format!("--{long}={s}").into());
                }
            }
            (_, _, true) => return Err(wrong("a list of strings")),
            (toml::Value::String(s), ..) => out.push(format!("--{long}={s}").into()),
            (toml::Value::Integer(i), ..) => out.push(format!("--{long}={i}").into()),
            _ => return Err(wrong("a string or a whole number")),
        }
    }
    Ok(out)
}

/// Every setting the relay would run with, as a config file.
fn print(relay: &ArgMatches) -> String {
    let mut out = String::from("# backchannel relay settings (`backchannel relay --print-config`)\n");
    for (id, long, flag, repeats) in settings() {
        let raw: Vec<String> = relay
            .get_raw(&id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let value = if flag {
            relay.get_flag(&id).to_string()
        } else if repeats {
            let items: Vec<String> = raw.iter().map(|s| toml::Value::String(s.clone()).to_string()).collect();
            format!("[{}]", items.join(", "))
        } else if let Some(v) = raw.first() {
            match v.parse::<i64>() {
                Ok(n) => n.to_string(),
                Err(_) => toml::Value::String(v.clone()).to_string(),
            }
        } else {
            out.push_str(&format!("# {long} =\n"));
            continue;
        };
        out.push_str(&format!("{long} = {value}\n"));
    }
    out
}
