//! `backchannel`: the command line. It parses arguments, picks the command, and
//! prints the error once; all behaviour lives in the libraries.
//!
//! `args` is the command line; `commands` has a module per command family; `output`
//! prints; `ipc` is the daemon's socket protocol and `daemon` its server; `error`
//! turns a failure into the sentence the user reads.
#![forbid(unsafe_code)]

mod args;
mod bench;
mod commands;
mod daemon;
mod demo;
mod error;
mod ipc;
mod output;
mod relay_config;
mod snapshot;
mod ui;

use std::process::ExitCode;

use args::{Args, Global, LocalCommand, Route};
use commands::{identity, Context};
use error::{report, CliError};
use output::Out;

fn main() -> ExitCode {
    let args = match relay_config::parse(std::env::args_os().collect()) {
        Ok(relay_config::Parsed::Run(args)) => *args,
        Ok(relay_config::Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {}", report(&e));
            return ExitCode::FAILURE;
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs one command: here, or in the home's daemon if one runs and the command is
/// forwardable.
async fn run(args: Args) -> Result<(), CliError> {
    let Args { global, command } = args;
    let out = Out::local();
    let command = match command.forwardable() {
        Route::Local(local) => return run_local(&global, local, &out).await,
        Route::Forwardable(command) => command,
    };
    // A running daemon for this home does the work on its connections.
    let home = identity::home(&global)?;
    if let ipc::Forwarded::Done = ipc::forward(&home, global.proxy.as_ref(), &command).await? {
        return Ok(());
    }
    let mut engine = identity::open(&global)?;
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut cx = Context {
        engine: &mut engine,
        out: &out,
        cwd: &cwd,
    };
    let result = commands::run(&command, &mut cx).await;
    out.warnings(engine.take_warnings());
    result
}

/// Runs a command that never goes to a daemon.
async fn run_local(global: &Global, command: LocalCommand, out: &Out) -> Result<(), CliError> {
    match command {
        LocalCommand::Relay(a) => commands::relay::run(&a, out).await,
        LocalCommand::Init(a) => identity::init(global, &a, out).await,
        LocalCommand::Demo => demo::run().await.map_err(CliError::Demo),
        LocalCommand::Bench(what) => commands::bench::run(&what, out).await,
        LocalCommand::Daemon(a) => daemon::serve(global, &a, out).await,
        LocalCommand::Ui(a) => ui::run(global, &a).await,
        LocalCommand::DropSend(a) => commands::drop::send(global, &a, out).await,
        LocalCommand::DropCheck(a) => commands::drop::check(global, &a, out).await,
        LocalCommand::Completions(shell) => commands::manual::completions(shell, out),
        LocalCommand::Man(command) => commands::manual::man(&command, out),
    }
}
