//! Builds the server and runs the socket-level harness binary (`xtask-harness`).
//!
//! The harness needs tokio and reqwest; keeping it a separate binary behind
//! the `harness` feature means `cargo xtask ci` starts without building them.

use std::path::Path;
use std::process::{Command, ExitCode};

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// `cargo xtask chaos [--quick] [--only N,N]`.
pub fn chaos(root: &Path, args: &[String]) -> ExitCode {
    for arg in args {
        if !matches!(arg.as_str(), "--quick" | "--only")
            && !arg.chars().all(|c| c.is_ascii_digit() || c == ',')
        {
            eprintln!("error: unknown chaos flag `{arg}` (expected --quick, --only N,N)");
            return ExitCode::from(2);
        }
    }
    let built = Command::new(cargo())
        .current_dir(root)
        .args([
            "build",
            "--quiet",
            "-p",
            "switchyard-server",
            "--bin",
            "switchyard",
        ])
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!("error: building the switchyard binary failed");
        return ExitCode::FAILURE;
    }
    let server = root.join("target").join("debug").join("switchyard");
    let status = Command::new(cargo())
        .current_dir(root)
        .args([
            "run",
            "--quiet",
            "-p",
            "xtask",
            "--features",
            "harness",
            "--bin",
            "xtask-harness",
            "--",
            "chaos",
        ])
        .args(args)
        .arg("--server")
        .arg(&server)
        .arg("--root")
        .arg(root)
        .status();
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: cannot run the harness: {e}");
            ExitCode::FAILURE
        }
    }
}
