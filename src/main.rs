//! The `jwtgate` binary: command line and logging; everything else is in the
//! library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.log_format());
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("jwtgate: {message}");
            ExitCode::FAILURE
        }
    }
}
