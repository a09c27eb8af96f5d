//! Builds the server and runs the socket-level harness binary (`xtask-harness`).
//!
//! The harness needs tokio and reqwest; keeping it a separate binary behind
//! the `harness` feature means `cargo xtask ci` starts without building them.

use std::path::Path;
use std::process::{Command, ExitCode};

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

pub(crate) fn succeeded(command: &mut Command) -> bool {
    command.status().is_ok_and(|s| s.success())
}

/// `cargo build` of the `switchyard` binary, release or debug.
pub(crate) fn server_build(root: &Path, release: bool) -> Command {
    let mut build = Command::new(cargo());
    build.current_dir(root).args([
        "build",
        "--quiet",
        "-p",
        "switchyard-server",
        "--bin",
        "switchyard",
    ]);
    if release {
        build.arg("--release");
    }
    build
}

/// Builds `switchyard`, then runs `xtask-harness <command> <args>` against it.
fn run(root: &Path, command: &str, args: &[String], release: bool) -> ExitCode {
    if !succeeded(&mut server_build(root, release)) {
        eprintln!("error: building the switchyard binary failed");
        return ExitCode::FAILURE;
    }
    let profile = if release { "release" } else { "debug" };
    let server = root.join("target").join(profile).join("switchyard");
    if run_against(root, &server, command, args, release, &[]) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `xtask-harness <command> <args>` against the `server` binary, with
/// `env` set for it (and so for the servers it starts); `true` on success.
pub(crate) fn run_against(
    root: &Path,
    server: &Path,
    command: &str,
    args: &[String],
    release: bool,
    env: &[(&str, &Path)],
) -> bool {
    let mut harness = Command::new(cargo());
    harness.current_dir(root).args(["run", "--quiet"]);
    if release {
        // The bench's mock upstream runs inside the harness: build it optimised too.
        harness.arg("--release");
    }
    harness
        .args([
            "-p",
            "xtask",
            "--features",
            "harness",
            "--bin",
            "xtask-harness",
            "--",
        ])
        .arg(command)
        .args(args)
        .arg("--server")
        .arg(server)
        .arg("--root")
        .arg(root);
    for (name, value) in env {
        harness.env(name, value);
    }
    succeeded(&mut harness)
}

fn check_flags(args: &[String], flags: &[&str], valued: &[&str]) -> Result<(), String> {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if valued.contains(&arg.as_str()) {
            if rest.next().is_none() {
                return Err(format!("`{arg}` needs a value"));
            }
        } else if !flags.contains(&arg.as_str()) {
            return Err(format!("unknown flag `{arg}`"));
        }
    }
    Ok(())
}

/// `cargo xtask chaos [--quick] [--only N,N]`.
pub fn chaos(root: &Path, args: &[String]) -> ExitCode {
    if let Err(message) = check_flags(args, &["--quick"], &["--only"]) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    run(root, "chaos", args, false)
}

/// `cargo xtask demo`.
pub fn demo(root: &Path, args: &[String]) -> ExitCode {
    if let Err(message) = check_flags(args, &[], &[]) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    run(root, "demo", args, false)
}

/// `cargo xtask bench [--micro | --instructions | --pgo] [--seconds N] [--providers N]`.
pub fn bench(root: &Path, args: &[String]) -> ExitCode {
    if let Err(message) = check_flags(
        args,
        &["--micro", "--instructions", "--pgo"],
        &["--seconds", "--providers"],
    ) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    if args.iter().any(|a| a == "--micro") {
        let micro = [
            ("switchyard-strategies", "selection"),
            ("switchyard-core", "wire"),
        ];
        for (package, bench) in micro {
            let mut command = Command::new(cargo());
            command
                .current_dir(root)
                .args(["bench", "-p", package, "--bench", bench]);
            if !succeeded(&mut command) {
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--pgo") {
        let server = match crate::pgo::build(root) {
            Ok(server) => server,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        };
        return if run_against(root, &server, "bench", args, true, &[]) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    run(root, "bench", args, true)
}
