//! `cargo xtask pgo`: a profile-guided release build of `switchyard`, trained on the harness's traffic.
//!
//! The proxy path's code is spread over many large async state machines;
//! under callgrind's cache model it missed the instruction cache about
//! 2,800 times per plain request, against 120 for a bare hyper proxy. A
//! profile lets LLVM lay the hot blocks out together and inline along
//! the paths actually taken. The steps, all under `target/pgo/`:
//!
//! 1. an instrumented release build (`-Cprofile-generate`) in its own
//!    target directory;
//! 2. `xtask-harness pgo-train` runs it on the training mix (the
//!    harness's `train.rs`: not the bench's traffic) and stops it, so it
//!    writes its profile;
//! 3. `llvm-profdata merge` (from rustup's `llvm-tools` component, added
//!    when missing);
//! 4. a release build with `-Cprofile-use`, in a second target directory:
//!    `target/pgo/optimized/release/switchyard`.
//!
//! Both builds are full release builds with fat LTO: expect several
//! minutes each on two cores.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::harness::{run_against, server_build, succeeded};

/// Seconds of training traffic.
const TRAINING_SECONDS: u64 = 20;

/// `cargo xtask pgo`: builds the profile-guided binary and prints its path.
pub fn run(root: &Path, args: &[String]) -> ExitCode {
    if let Some(arg) = args.first() {
        eprintln!("error: `pgo` takes no arguments, got `{arg}`");
        return ExitCode::from(2);
    }
    match build(root) {
        Ok(server) => {
            println!("{}", server.display());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the four steps; returns the optimised binary.
pub fn build(root: &Path) -> Result<PathBuf, String> {
    let profdata_tool = llvm_profdata()?;
    let pgo = root.join("target").join("pgo");
    let profiles = pgo.join("profiles");
    if profiles.exists() {
        std::fs::remove_dir_all(&profiles)
            .map_err(|e| format!("cannot clear {}: {e}", profiles.display()))?;
    }
    std::fs::create_dir_all(&profiles)
        .map_err(|e| format!("cannot create {}: {e}", profiles.display()))?;

    eprintln!("pgo 1/4: instrumented release build");
    // Build scripts and proc macros are instrumented too and write their
    // own profiles while compiling: they go to a directory nobody reads.
    let build_profiles = pgo.join("build-profiles");
    let instrumented = release_build(
        root,
        &pgo.join("instrumented"),
        &format!("-Cprofile-generate={}", build_profiles.display()),
    )?;

    eprintln!("pgo 2/4: training run ({TRAINING_SECONDS} s)");
    // `%p` keeps one file per process; `%m` one per binary signature.
    let pattern = profiles.join("switchyard-%p-%m.profraw");
    let trained = run_against(
        root,
        &instrumented,
        "pgo-train",
        &["--seconds".to_owned(), TRAINING_SECONDS.to_string()],
        true,
        &[("LLVM_PROFILE_FILE", &pattern)],
    );
    if !trained {
        return Err("the training run failed".to_owned());
    }
    let raw: Vec<PathBuf> = std::fs::read_dir(&profiles)
        .map_err(|e| format!("cannot read {}: {e}", profiles.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "profraw"))
        .collect();
    if raw.is_empty() {
        return Err(format!(
            "the instrumented server wrote no profile to {}",
            profiles.display()
        ));
    }

    eprintln!("pgo 3/4: merging {} profile(s)", raw.len());
    let merged = pgo.join("switchyard.profdata");
    let mut merge = Command::new(&profdata_tool);
    merge.arg("merge").arg("-o").arg(&merged).args(&raw);
    if !succeeded(&mut merge) {
        return Err(format!("{} merge failed", profdata_tool.display()));
    }

    eprintln!("pgo 4/4: profile-guided release build");
    release_build(
        root,
        &pgo.join("optimized"),
        &format!("-Cprofile-use={}", merged.display()),
    )
}

/// `cargo build --release` of the server into `target_dir` with `flag`
/// added to any `RUSTFLAGS` already set; returns the binary.
fn release_build(root: &Path, target_dir: &Path, flag: &str) -> Result<PathBuf, String> {
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(existing) if !existing.trim().is_empty() => format!("{existing} {flag}"),
        _ => flag.to_owned(),
    };
    let mut build = server_build(root, true);
    build
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", rustflags);
    if !succeeded(&mut build) {
        return Err(format!("the release build with `{flag}` failed"));
    }
    Ok(target_dir.join("release").join("switchyard"))
}

/// The `llvm-profdata` matching this rustc's LLVM, from rustup's
/// `llvm-tools` component; adds the component when it is missing.
fn llvm_profdata() -> Result<PathBuf, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let sysroot = output(Command::new(&rustc).args(["--print", "sysroot"]))?;
    let version = output(Command::new(&rustc).arg("-vV"))?;
    let host = version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .ok_or("`rustc -vV` printed no host")?;
    let tool = Path::new(sysroot.trim())
        .join("lib")
        .join("rustlib")
        .join(host.trim())
        .join("bin")
        .join("llvm-profdata");
    if tool.exists() {
        return Ok(tool);
    }
    eprintln!("pgo: adding rustup's llvm-tools component (for llvm-profdata)");
    let mut add = Command::new("rustup");
    add.args(["component", "add", "llvm-tools"]);
    if !succeeded(&mut add) || !tool.exists() {
        return Err(format!(
            "{} is missing; install it with `rustup component add llvm-tools`",
            tool.display()
        ));
    }
    Ok(tool)
}

fn output(command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{command:?} failed"));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("{command:?} printed non-UTF-8"))
}
