//! The `switchyard` binary: parses the command line and hands over to the library (`switchyard_server::cli`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    switchyard_server::cli::main(switchyard_server::cli::Cli::parse())
}
