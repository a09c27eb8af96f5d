//! The `switchyard` binary: parses the command line and hands over to the library (`switchyard_server::cli`).

use std::process::ExitCode;

use clap::Parser;

// The proxy path allocates per request (bodies, headers, futures); mimalloc
// serves those small, short-lived blocks from thread-local pages, far
// cheaper than glibc malloc under load. `no_thp` keeps its arenas off
// transparent huge pages, which would add ~9 MB of resident memory.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    switchyard_server::cli::main(switchyard_server::cli::Cli::parse())
}
