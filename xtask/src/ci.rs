//! `cargo xtask ci`: the whole check suite, in the order CI runs it.
//!
//! Steps, stopping at the first failure:
//!
//! 1. `fmt`: `cargo fmt --all -- --check`
//! 2. `tidy`: the checks of [`crate::tidy`], run in-process
//! 3. `clippy`: `cargo clippy --workspace --all-targets -- -D warnings`
//! 4. `sdk-venv`: the Python venv of the SDK compatibility tests:
//!    `python3 -m venv target/sdk-venv`, then
//!    `target/sdk-venv/bin/pip install --quiet openai anthropic`, unless both
//!    packages are already importable there. The tests step gets
//!    `SWITCHYARD_SDK_PYTHON=<absolute path of the venv's python>`. When the
//!    venv cannot be made, CI fails; a local run warns and the SDK tests skip.
//! 5. `tests`: `cargo nextest run --workspace --no-fail-fast` when
//!    `cargo nextest --version` works, else `cargo test --workspace`
//! 6. `chaos`: `cargo xtask chaos --quick`, the 16 failover faults against
//!    the real server with shortened waits (about 40 s)
//! 7. `doctests`: `cargo test --workspace --doc` (nextest does not run doc tests)
//! 8. `doc`: `cargo doc --workspace --no-deps` with `RUSTDOCFLAGS=-D warnings`
//!
//! Clippy runs with `--all-features`, so the harness behind xtask's
//! `harness` feature is linted too.
//!
//! `--skip-fmt`, `--skip-clippy`, `--skip-chaos` and `--skip-doc` drop steps 1, 3, 6 and 8 for
//! local iteration. Every step prints its name and duration. When the `CI`
//! environment variable is set (and not empty), cargo steps run with
//! `CARGO_INCREMENTAL=0`: incremental caches only cost time on a fresh clone.
//! Everything else in the environment, `CARGO_TERM_COLOR` included, is passed
//! through untouched.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Command-line flags of `cargo xtask ci`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    /// `--skip-fmt`: do not run `cargo fmt --check`.
    pub skip_fmt: bool,
    /// `--skip-clippy`: do not run clippy.
    pub skip_clippy: bool,
    /// `--skip-doc`: do not build the docs (doc tests still run).
    pub skip_doc: bool,
    /// `--skip-chaos`: do not run the quick chaos scorecard.
    pub skip_chaos: bool,
}

impl Flags {
    /// Parses the arguments after `ci`. `Err` names the argument not understood.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut flags = Self::default();
        for arg in args {
            match arg.as_str() {
                "--skip-fmt" => flags.skip_fmt = true,
                "--skip-clippy" => flags.skip_clippy = true,
                "--skip-doc" => flags.skip_doc = true,
                "--skip-chaos" => flags.skip_chaos = true,
                other => return Err(format!("`ci` does not understand `{other}`")),
            }
        }
        Ok(flags)
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Run `cargo` with these arguments and extra environment variables.
    Cargo {
        args: Vec<&'static str>,
        env: Vec<(&'static str, &'static str)>,
    },
    /// Run the tidy checks in-process.
    Tidy,
    /// Create the Python SDK venv (see [`SDK_VENV`]).
    SdkVenv,
}

/// The SDK venv, relative to the workspace root.
const SDK_VENV: &str = "target/sdk-venv";

/// The packages the SDK compatibility tests import.
const SDK_PACKAGES: [&str; 2] = ["openai", "anthropic"];

/// The variable that tells the SDK tests which python to run.
const SDK_PYTHON_ENV: &str = "SWITCHYARD_SDK_PYTHON";

/// One step of the suite.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    name: &'static str,
    action: Action,
    /// The flag that skips this step, if it was given.
    skipped_by: Option<&'static str>,
}

impl Step {
    fn cargo(name: &'static str, args: &[&'static str]) -> Self {
        Self {
            name,
            action: Action::Cargo {
                args: args.to_vec(),
                env: Vec::new(),
            },
            skipped_by: None,
        }
    }

    fn with_env(mut self, key: &'static str, value: &'static str) -> Self {
        if let Action::Cargo { env, .. } = &mut self.action {
            env.push((key, value));
        }
        self
    }

    fn skipped_if(mut self, skip: bool, flag: &'static str) -> Self {
        if skip {
            self.skipped_by = Some(flag);
        }
        self
    }

    /// The step's command as a user would type it.
    fn describe(&self) -> String {
        match &self.action {
            Action::Tidy => "cargo xtask tidy (in-process)".to_owned(),
            Action::SdkVenv => format!(
                "python3 -m venv {SDK_VENV} && {SDK_VENV}/bin/pip install --quiet {} (unless already importable)",
                SDK_PACKAGES.join(" ")
            ),
            Action::Cargo { args, env } => {
                let env: Vec<String> = env
                    .iter()
                    .map(|(key, value)| format!("{key}={}", shell_quote(value)))
                    .collect();
                let mut words = env;
                words.push("cargo".to_owned());
                words.extend(args.iter().map(|arg| (*arg).to_owned()));
                words.join(" ")
            }
        }
    }
}

/// Quotes `value` for display if it contains a space.
fn shell_quote(value: &str) -> String {
    if value.contains(' ') {
        format!("\"{value}\"")
    } else {
        value.to_owned()
    }
}

/// The steps to run, in order. `nextest` says whether `cargo nextest` is available.
fn plan(flags: Flags, nextest: bool) -> Vec<Step> {
    let tests = if nextest {
        Step::cargo(
            "tests",
            &["nextest", "run", "--workspace", "--no-fail-fast"],
        )
    } else {
        Step::cargo("tests", &["test", "--workspace"])
    };
    vec![
        Step::cargo("fmt", &["fmt", "--all", "--", "--check"])
            .skipped_if(flags.skip_fmt, "--skip-fmt"),
        Step {
            name: "tidy",
            action: Action::Tidy,
            skipped_by: None,
        },
        Step::cargo(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
        )
        .skipped_if(flags.skip_clippy, "--skip-clippy"),
        Step {
            name: "sdk-venv",
            action: Action::SdkVenv,
            skipped_by: None,
        },
        tests,
        Step::cargo("chaos", &["xtask", "chaos", "--quick"])
            .skipped_if(flags.skip_chaos, "--skip-chaos"),
        Step::cargo("doctests", &["test", "--workspace", "--doc"]),
        Step::cargo("doc", &["doc", "--workspace", "--no-deps"])
            .with_env("RUSTDOCFLAGS", "-D warnings")
            .skipped_if(flags.skip_doc, "--skip-doc"),
    ]
}

/// Whether the `CI` environment variable counts as set.
fn is_ci(value: Option<OsString>) -> bool {
    value.is_some_and(|value| !value.is_empty())
}

/// The cargo to run: the one that started us (`$CARGO`), else `cargo` on `PATH`.
fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// Whether `cargo nextest --version` succeeds.
fn nextest_available(root: &Path) -> bool {
    Command::new(cargo_program())
        .args(["nextest", "--version"])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether `python` can import every SDK package.
fn sdk_importable(python: &Path) -> bool {
    let imports = format!("import {}", SDK_PACKAGES.join(", "));
    python.is_file()
        && Command::new(python)
            .args(["-c", &imports])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

/// Runs `command`; `Err` describes a failure to start or a non-zero exit.
fn run_command(command: &mut Command, what: &str) -> Result<(), String> {
    match command.stdin(Stdio::null()).status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`{what}` failed: {status}")),
        Err(err) => Err(format!("could not start `{what}`: {err}")),
    }
}

/// Creates the SDK venv under `root` unless it already has the packages;
/// returns the absolute path of its python.
fn sdk_venv(root: &Path) -> Result<PathBuf, String> {
    let venv = std::path::absolute(root.join(SDK_VENV))
        .map_err(|err| format!("cannot resolve {SDK_VENV}: {err}"))?;
    let python = venv.join("bin").join("python");
    if sdk_importable(&python) {
        println!("    {SDK_VENV} already has {}", SDK_PACKAGES.join(", "));
        return Ok(python);
    }
    run_command(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        &format!("python3 -m venv {SDK_VENV}"),
    )?;
    run_command(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(SDK_PACKAGES),
        &format!("{SDK_VENV}/bin/pip install {}", SDK_PACKAGES.join(" ")),
    )?;
    if sdk_importable(&python) {
        Ok(python)
    } else {
        Err(format!(
            "{} still cannot import {}",
            python.display(),
            SDK_PACKAGES.join(", ")
        ))
    }
}

/// Runs one step from `root`. `Err` says why it failed. `extra_env` goes to
/// cargo steps; the SDK step adds `SWITCHYARD_SDK_PYTHON` to it.
fn run_step(
    root: &Path,
    step: &Step,
    ci: bool,
    extra_env: &mut Vec<(&'static str, OsString)>,
) -> Result<(), String> {
    match &step.action {
        Action::Tidy => crate::tidy::check_and_report(root),
        Action::SdkVenv => match sdk_venv(root) {
            Ok(python) => {
                println!("    {SDK_PYTHON_ENV}={}", python.display());
                extra_env.push((SDK_PYTHON_ENV, python.into_os_string()));
                Ok(())
            }
            Err(reason) if ci => Err(reason),
            Err(reason) => {
                eprintln!("warning: {reason}; the Python SDK tests will be skipped");
                Ok(())
            }
        },
        Action::Cargo { args, env } => {
            let mut command = Command::new(cargo_program());
            command
                .args(args)
                .current_dir(root)
                .envs(env.iter().copied())
                .envs(extra_env.iter().map(|(key, value)| (*key, value)));
            if ci {
                command.env("CARGO_INCREMENTAL", "0");
            }
            match command.status() {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("`{}` failed: {status}", step.describe())),
                Err(err) => Err(format!("could not start `{}`: {err}", step.describe())),
            }
        }
    }
}

/// Formats a duration as seconds with one decimal, e.g. `12.3s`.
fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// Runs `cargo xtask ci` from the workspace at `root`.
pub fn run(root: &Path, flags: Flags) -> ExitCode {
    let started = Instant::now();
    let ci = is_ci(std::env::var_os("CI"));
    let steps = plan(flags, nextest_available(root));
    let total = steps.len();
    let mut timings: Vec<(&str, Option<Duration>)> = Vec::new();
    let mut extra_env: Vec<(&'static str, OsString)> = Vec::new();

    for (index, step) in steps.iter().enumerate() {
        let number = index + 1;
        if let Some(flag) = step.skipped_by {
            println!("==> [{number}/{total}] {}: skipped ({flag})", step.name);
            timings.push((step.name, None));
            continue;
        }
        println!("==> [{number}/{total}] {}: {}", step.name, step.describe());
        let step_started = Instant::now();
        let outcome = run_step(root, step, ci, &mut extra_env);
        let took = step_started.elapsed();
        if let Err(reason) = outcome {
            let not_run: Vec<&str> = steps[number..].iter().map(|step| step.name).collect();
            eprintln!(
                "\nerror: ci step `{}` failed after {}: {reason}",
                step.name,
                seconds(took)
            );
            if !not_run.is_empty() {
                eprintln!("       not run: {}", not_run.join(", "));
            }
            return ExitCode::FAILURE;
        }
        println!("<== {} ok in {}", step.name, seconds(took));
        timings.push((step.name, Some(took)));
    }

    println!("\nci passed in {}", seconds(started.elapsed()));
    for (name, took) in timings {
        let took = took.map_or_else(|| "skipped".to_owned(), seconds);
        println!("  {name:<10} {took}");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| (*arg).to_owned()).collect()
    }

    fn names(steps: &[Step]) -> Vec<&'static str> {
        steps.iter().map(|step| step.name).collect()
    }

    fn skipped(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .filter(|step| step.skipped_by.is_some())
            .map(|step| step.name)
            .collect()
    }

    #[test]
    fn no_flags_parse_to_default() {
        assert_eq!(Flags::parse(&[]), Ok(Flags::default()));
    }

    #[test]
    fn skip_flags_parse() {
        let flags = Flags::parse(&args(&["--skip-doc", "--skip-fmt", "--skip-clippy"]));
        assert_eq!(
            flags,
            Ok(Flags {
                skip_fmt: true,
                skip_clippy: true,
                skip_doc: true,
                skip_chaos: false,
            })
        );
    }

    #[test]
    fn unknown_flag_is_an_error_naming_it() {
        let err = Flags::parse(&args(&["--skip-fmt", "--fast"])).expect_err("unknown flag");
        assert!(err.contains("--fast"), "{err}");
    }

    #[test]
    fn steps_run_in_the_documented_order() {
        let steps = plan(Flags::default(), true);
        assert_eq!(
            names(&steps),
            vec![
                "fmt", "tidy", "clippy", "sdk-venv", "tests", "chaos", "doctests", "doc"
            ]
        );
        assert!(skipped(&steps).is_empty());
    }

    #[test]
    fn tests_use_nextest_when_available_else_cargo_test() {
        let with = plan(Flags::default(), true);
        assert_eq!(
            with[4].describe(),
            "cargo nextest run --workspace --no-fail-fast"
        );
        let without = plan(Flags::default(), false);
        assert_eq!(without[4].describe(), "cargo test --workspace");
    }

    #[test]
    fn commands_are_the_documented_ones() {
        let steps = plan(Flags::default(), true);
        let described: Vec<String> = steps.iter().map(Step::describe).collect();
        assert_eq!(
            described,
            vec![
                "cargo fmt --all -- --check",
                "cargo xtask tidy (in-process)",
                "cargo clippy --workspace --all-targets --all-features -- -D warnings",
                "python3 -m venv target/sdk-venv && target/sdk-venv/bin/pip install --quiet openai anthropic (unless already importable)",
                "cargo nextest run --workspace --no-fail-fast",
                "cargo xtask chaos --quick",
                "cargo test --workspace --doc",
                "RUSTDOCFLAGS=\"-D warnings\" cargo doc --workspace --no-deps",
            ]
        );
    }

    #[test]
    fn skip_flags_skip_only_their_step() {
        let flags = |fmt, clippy, doc| Flags {
            skip_fmt: fmt,
            skip_clippy: clippy,
            skip_doc: doc,
            skip_chaos: false,
        };
        assert_eq!(skipped(&plan(flags(true, false, false), true)), vec!["fmt"]);
        assert_eq!(
            skipped(&plan(flags(false, true, false), true)),
            vec!["clippy"]
        );
        assert_eq!(skipped(&plan(flags(false, false, true), true)), vec!["doc"]);
        assert_eq!(
            skipped(&plan(flags(true, true, true), false)),
            vec!["fmt", "clippy", "doc"]
        );
    }

    #[test]
    fn ci_variable_counts_when_set_and_not_empty() {
        assert!(is_ci(Some(OsString::from("true"))));
        assert!(is_ci(Some(OsString::from("1"))));
        assert!(!is_ci(Some(OsString::new())));
        assert!(!is_ci(None));
    }

    #[test]
    fn a_missing_python_has_no_sdk() {
        assert!(!sdk_importable(Path::new(
            "/nonexistent/sdk-venv/bin/python"
        )));
    }

    #[test]
    fn seconds_have_one_decimal() {
        assert_eq!(seconds(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(seconds(Duration::ZERO), "0.0s");
    }
}
