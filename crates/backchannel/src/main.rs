//! `backchannel`: the command line. It parses arguments and calls the client
//! engine or the relay; all behaviour lives in the libraries.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod daemon;
mod demo;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        // The daemon already printed the error.
        Err(e) if e.downcast_ref::<cli::Forwarded>().is_some() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
