//! `cargo xtask ci`: the whole check suite, in the order CI runs it.
//!
//! Steps, stopping at the first failure:
//!
//! 1. `fmt`: `cargo fmt --all -- --check`
//! 2. `tidy`: the checks of [`crate::tidy`], run in-process
//! 3. `clippy`: `cargo clippy --workspace --all-targets -- -D warnings`
//! 4. `tests`: `cargo nextest run --workspace --no-fail-fast` when
//!    `cargo nextest --version` works, else `cargo test --workspace`
//! 5. `doctests`: `cargo test --workspace --doc` (nextest does not run doc tests)
//! 6. `doc`: `cargo doc --workspace --no-deps` with `RUSTDOCFLAGS=-D warnings`
//!
//! `--skip-fmt`, `--skip-clippy` and `--skip-doc` drop steps 1, 3 and 6 for
//! local iteration. Every step prints its name and duration. When the `CI`
//! environment variable is set (and not empty), cargo steps run with
//! `CARGO_INCREMENTAL=0`: incremental caches only cost time on a fresh clone.
//! Everything else in the environment, `CARGO_TERM_COLOR` included, is passed
//! through untouched.

use std::ffi::OsString;
use std::path::Path;
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
}

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
                "--",
                "-D",
                "warnings",
            ],
        )
        .skipped_if(flags.skip_clippy, "--skip-clippy"),
        tests,
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

/// Runs one step from `root`. `Err` says why it failed.
fn run_step(root: &Path, step: &Step, ci: bool) -> Result<(), String> {
    match &step.action {
        Action::Tidy => crate::tidy::check_and_report(root),
        Action::Cargo { args, env } => {
            let mut command = Command::new(cargo_program());
            command
                .args(args)
                .current_dir(root)
                .envs(env.iter().copied());
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

    for (index, step) in steps.iter().enumerate() {
        let number = index + 1;
        if let Some(flag) = step.skipped_by {
            println!("==> [{number}/{total}] {}: skipped ({flag})", step.name);
            timings.push((step.name, None));
            continue;
        }
        println!("==> [{number}/{total}] {}: {}", step.name, step.describe());
        let step_started = Instant::now();
        let outcome = run_step(root, step, ci);
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
                skip_doc: true
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
            vec!["fmt", "tidy", "clippy", "tests", "doctests", "doc"]
        );
        assert!(skipped(&steps).is_empty());
    }

    #[test]
    fn tests_use_nextest_when_available_else_cargo_test() {
        let with = plan(Flags::default(), true);
        assert_eq!(
            with[3].describe(),
            "cargo nextest run --workspace --no-fail-fast"
        );
        let without = plan(Flags::default(), false);
        assert_eq!(without[3].describe(), "cargo test --workspace");
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
                "cargo clippy --workspace --all-targets -- -D warnings",
                "cargo nextest run --workspace --no-fail-fast",
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
    fn seconds_have_one_decimal() {
        assert_eq!(seconds(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(seconds(Duration::ZERO), "0.0s");
    }
}
