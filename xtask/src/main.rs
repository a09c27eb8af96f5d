//! `cargo xtask`: Switchyard's development workflows.
//!
//! Run it through the `xtask` alias in `.cargo/config.toml`, e.g. `cargo xtask ci`.
//! One module per command, in the style of rust-analyzer's xtask:
//!
//! - [`ci`]: the whole check suite (fmt, tidy, clippy, tests, quick chaos, doc tests, docs),
//!   the exact command `.ci/run` and the README ask for.
//! - [`pgo`]: a profile-guided release build of the server, trained by the harness.
//! - [`tidy`]: source conventions every `.rs` file in the workspace follows;
//!   also enforced by a test, so `cargo test` catches violations.
//!
//! Arguments are parsed by hand and the crate has no dependencies, so the tool
//! builds in seconds on a fresh clone. It depends on no product crate: it only
//! drives `cargo` and reads files.

mod ci;
mod harness;
mod pgo;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Help text printed by `cargo xtask help` and on usage errors.
const USAGE: &str = "\
Usage: cargo xtask <command> [flags]

Commands:
  ci      Run the whole check suite, stopping at the first failure:
          fmt, tidy, clippy, tests (nextest if installed), chaos --quick,
          doc tests, docs.
            --skip-fmt      skip `cargo fmt --all -- --check`
            --skip-clippy   skip `cargo clippy --workspace --all-targets --all-features`
            --skip-doc      skip `cargo doc --workspace --no-deps` (doc tests still run)
            --skip-chaos    skip `cargo xtask chaos --quick`
  bench   Measure gateway overhead against a do-nothing upstream: direct vs
          nginx (the floor) vs a bare hyper proxy (the Rust floor) vs
          switchyard, at 1 and 64 connections, plain and streaming; prints a
          markdown table (installs wrk and nginx if missing).
            --seconds N     measured seconds per cell (default 10)
            --providers N   providers configured for the model (default 100)
            --micro         run the criterion micro-benchmarks instead (selection
                            per strategy; wire parses per request and chunk)
            --instructions  count user-space instructions per request under
                            callgrind instead (nginx, hyper floor, switchyard;
                            plain and stream; installs valgrind if missing)
            --pgo           bench the profile-guided build (`cargo xtask pgo`)
                            instead of the plain release build
  pgo     Build switchyard profile-guided: an instrumented release build,
          20 s of training traffic (plain and streamed chats through
          OpenAI-compatible, Anthropic and mock providers, failovers,
          bad requests; half at RUST_LOG=info, half at warn; not the
          bench's), llvm-profdata (adds rustup's llvm-tools when
          missing), then the optimised release build at
          target/pgo/optimized/release/switchyard. Two full release
          builds.
  demo    Start the gateway on its embedded default, make one mock provider
          fail and recover through the admin API, and narrate the routing,
          failover, events and load stats (under a minute).
  chaos   Run the 16 failover faults against the real server and print the
          scorecard; exits non-zero unless every fault scores as required.
            --quick         shortened waits (what CI runs, under 3 minutes)
            --only N,N      only these faults
  tidy    Check every .rs file in the workspace (target/ and hidden directories
          excluded): a `//!` doc comment on the first non-empty line, no
          leftover todo/unimplemented/dbg macros, no tab characters.
  help    Print this text.
";

/// Exit code for a command line that could not be understood.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(USAGE_ERROR);
    };
    match command.as_str() {
        "ci" => match ci::Flags::parse(rest) {
            Ok(flags) => ci::run(&workspace_root(), flags),
            Err(message) => usage_error(&message),
        },
        "chaos" => harness::chaos(&workspace_root(), rest),
        "bench" => harness::bench(&workspace_root(), rest),
        "demo" => harness::demo(&workspace_root(), rest),
        "pgo" => pgo::run(&workspace_root(), rest),
        "tidy" => match rest.first() {
            None => tidy::run(&workspace_root()),
            Some(arg) => usage_error(&format!("`tidy` takes no arguments, got `{arg}`")),
        },
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => usage_error(&format!("unknown command `{other}`")),
    }
}

/// Prints `message` and the usage text to stderr; returns the usage-error exit code.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}\n");
    eprint!("{USAGE}");
    ExitCode::from(USAGE_ERROR)
}

/// The workspace root: the parent of this crate's directory, fixed at compile time
/// so the commands work from any current directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}
