//! The `switchyard` command line: `serve` (the default) and `check-config`.
//!
//! ```text
//! switchyard [serve] [--config PATH] [--listen ADDR]
//! switchyard check-config [PATH | --config PATH]
//! ```
//!
//! `check-config` loads the config exactly as `serve` would (file, then
//! `SWITCHYARD_<SECTION>__<KEY>` overrides), validates it and builds every
//! provider (so `api_key_env` variables must be set), then prints the
//! resolved config as JSON with secrets redacted (inline keys and
//! sensitive header values as `"[redacted]"`) and exits 0. Otherwise it
//! prints every problem on its own line, each with its path
//! (`providers[0].base_url: ...`), and exits 2.
//!
//! Without `--config` (and without `SWITCHYARD_CONFIG`) the embedded
//! default config runs: two mock providers, offline. `--listen` overrides
//! `server.listen` after the file and the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, ConfigSource};
use crate::{Gateway, StartError, telemetry};

/// Switchyard: one OpenAI-compatible endpoint in front of many LLM providers.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the default `serve` command.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve(ServeArgs),
    /// Load and validate the config (provider keys included), then print it as JSON with secrets redacted.
    CheckConfig(ConfigArgs),
}

/// Options of `serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (default: $SWITCHYARD_CONFIG, else the embedded default).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on, overriding `server.listen` (e.g. 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Options of `check-config`.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML config file (default: $SWITCHYARD_CONFIG, else the embedded default).
    #[arg(value_name = "PATH", conflicts_with = "config")]
    pub path: Option<PathBuf>,
    /// The same, as an option.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Runs the parsed command line; the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::CheckConfig(args)) => check_config(&args),
        Some(Command::Serve(args)) => serve(&ServeArgs {
            config: args.config.or(cli.serve.config),
            listen: args.listen.or(cli.serve.listen),
        }),
        None => serve(&cli.serve),
    }
}

fn source(path: Option<&std::path::Path>) -> ConfigSource {
    ConfigSource::resolve(path, |name| std::env::var(name).ok())
}

fn check_config(args: &ConfigArgs) -> ExitCode {
    let source = source(args.path.as_deref().or(args.config.as_deref()));
    let checked = config::load(&source)
        .map_err(StartError::from)
        .and_then(|config| {
            // Building the gateway also checks what loading cannot: provider
            // keys in the environment and every adapter's construction.
            Gateway::new(config.clone()).map(|_| config)
        });
    match checked {
        Ok(config) => {
            eprintln!("{source}: ok ({} providers)", config.providers.len());
            match serde_json::to_string_pretty(&redacted_config(&config)) {
                Ok(json) => println!("{json}"),
                Err(error) => eprintln!("cannot print the config: {error}"),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            let problems = problems(&error);
            eprintln!(
                "error: {source}: {} problem{}:",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            for problem in problems {
                eprintln!("  {problem}");
            }
            ExitCode::from(2)
        }
    }
}

/// The config as JSON with every secret redacted: inline keys (core's
/// `Secret` already serializes as `"[redacted]"`) and sensitive header values.
pub fn redacted_config(config: &config::Config) -> serde_json::Value {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if let Some(serde_json::Value::Array(providers)) = value.get_mut("providers") {
        *providers = config
            .providers
            .iter()
            .map(crate::admin::handlers::redacted_provider)
            .collect();
    }
    value
}

/// Every problem of a failed start, one per entry, each led by its path.
pub fn problems(error: &StartError) -> Vec<String> {
    let issues = |issues: &[switchyard_core::ConfigIssue]| -> Vec<String> {
        issues.iter().map(ToString::to_string).collect()
    };
    match error {
        StartError::Config(config::ConfigLoadError::Invalid(list)) => issues(list),
        StartError::Config(config::ConfigLoadError::Parse(list)) => list.clone(),
        StartError::Manager(error) => issues(&error.issues),
        other => vec![other.to_string()],
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let logs = telemetry::init_tracing();
    let outcome = start_and_run(args);
    // Queued log lines go out before the final error line, in order.
    drop(logs);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

/// Loads the config and serves until shutdown; on failure, the message
/// and the exit code (2 for a bad config).
fn start_and_run(args: &ServeArgs) -> Result<(), (String, ExitCode)> {
    let source = source(args.config.as_deref());
    let mut config =
        config::load(&source).map_err(|error| (format!("{source}: {error}"), ExitCode::from(2)))?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    let runtime = runtime(config.server.worker_threads()).map_err(|error| {
        (
            format!("cannot start the async runtime: {error}"),
            ExitCode::FAILURE,
        )
    })?;
    tracing::info!(config = %source, "starting switchyard");
    runtime
        .block_on(run(config, source, args.listen))
        .map_err(|error| (error.to_string(), ExitCode::FAILURE))
}

/// The async runtime for `workers` threads. One worker runs the
/// single-thread scheduler: the multi-thread one would still pass every
/// wake-up through its shared queues and cost about a fifth more CPU per
/// request (measured with the gateway pinned to one core).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build()
}

async fn run(
    config: config::Config,
    source: ConfigSource,
    listen_override: Option<SocketAddr>,
) -> Result<(), StartError> {
    let listen = config.server.listen;
    let mut gateway = Gateway::new(config)?.with_config_source(source);
    if let Some(addr) = listen_override {
        gateway = gateway.with_listen_override(addr);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| {
            StartError::Io(std::io::Error::new(
                error.kind(),
                format!("cannot listen on {listen}: {error}"),
            ))
        })?;
    gateway.serve(listener, crate::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn one_worker_runs_the_single_thread_scheduler() {
        use tokio::runtime::RuntimeFlavor;
        let single = runtime(1).unwrap();
        assert_eq!(
            single.handle().runtime_flavor(),
            RuntimeFlavor::CurrentThread
        );
        let multi = runtime(3).unwrap();
        assert_eq!(multi.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(multi.metrics().num_workers(), 3);
        // Both drive timers and sockets.
        single.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        });
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default_command() {
        let cli = Cli::try_parse_from(["switchyard", "--listen", "127.0.0.1:9"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen, Some("127.0.0.1:9".parse().unwrap()));
        let cli = Cli::try_parse_from(["switchyard", "serve", "--config", "a.toml"]).unwrap();
        match cli.command {
            Some(Command::Serve(args)) => assert_eq!(args.config, Some(PathBuf::from("a.toml"))),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["switchyard", "check-config"]).is_ok());
        match Cli::try_parse_from(["switchyard", "check-config", "a.toml"])
            .unwrap()
            .command
        {
            Some(Command::CheckConfig(args)) => {
                assert_eq!(args.path, Some(PathBuf::from("a.toml")))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["switchyard", "check-config", "a.toml", "--config", "b.toml"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["switchyard", "--listen", "nope"]).is_err());
    }
}
