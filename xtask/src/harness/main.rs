//! `xtask-harness`: the workflows that drive the real server over sockets (chaos, bench, demo).
//!
//! `cargo xtask chaos` builds and runs this binary (feature `harness`), so
//! its dependencies (tokio, reqwest) never slow down `cargo xtask ci`'s
//! start-up. Arguments: `chaos [--quick] [--only N,N] --server PATH --root PATH`;
//! the bench also starts it as `floor-proxy LISTEN_PORT UPSTREAM_PORT`.

mod bench;
mod chaos;
mod demo;
mod floor;
mod gateway;
mod instructions;
mod train;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("usage: xtask-harness chaos [--quick] [--only N,N] --server PATH --root PATH");
        return ExitCode::from(2);
    };
    // Started by the bench itself: `floor-proxy LISTEN_PORT UPSTREAM_PORT`.
    if command == "floor-proxy" {
        let ports: Vec<u16> = rest.iter().filter_map(|p| p.parse().ok()).collect();
        let [listen, upstream] = ports[..] else {
            eprintln!("usage: xtask-harness floor-proxy LISTEN_PORT UPSTREAM_PORT");
            return ExitCode::from(2);
        };
        return match floor::run(listen, upstream) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("floor-proxy: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let mut quick = false;
    let mut instructions = false;
    let mut label = "switchyard";
    let mut seconds = 10;
    let mut providers = 100;
    let mut only = None;
    let mut server = None;
    let mut root = None;
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--instructions" => instructions = true,
            // The server under test is the profile-guided build.
            "--pgo" => label = "switchyard-pgo",
            "--only" => {
                only = rest.next().map(|list| {
                    list.split(',')
                        .filter_map(|n| n.trim().parse().ok())
                        .collect()
                })
            }
            "--server" => server = rest.next().map(PathBuf::from),
            "--root" => root = rest.next().map(PathBuf::from),
            "--seconds" => seconds = rest.next().and_then(|s| s.parse().ok()).unwrap_or(seconds),
            "--providers" => {
                providers = rest
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(providers)
            }
            other => {
                eprintln!("unknown argument `{other}`");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(server), Some(root)) = (server, root) else {
        eprintln!("--server and --root are required");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command.as_str() {
        "chaos" => {
            let options = chaos::Options { quick, only };
            match runtime.block_on(chaos::run(&root, &server, options)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(message) => {
                    eprintln!("chaos: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        "demo" => match runtime.block_on(demo::run(&server)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("demo: the scripted failover and recovery did not both appear");
                ExitCode::FAILURE
            }
            Err(message) => {
                eprintln!("demo: {message}");
                ExitCode::FAILURE
            }
        },
        "bench" if instructions => {
            match runtime.block_on(instructions::run(&root, &server, providers)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("bench --instructions: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        "pgo-train" => match runtime.block_on(train::run(&root, &server, seconds)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("pgo-train: {message}");
                ExitCode::FAILURE
            }
        },
        "bench" => {
            let options = bench::Options {
                seconds,
                providers,
                label,
            };
            match runtime.block_on(bench::run(&root, &server, options)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("bench: a target was missed (see the ratios above)");
                    ExitCode::FAILURE
                }
                Err(message) => {
                    eprintln!("bench: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        other => {
            eprintln!("unknown harness command `{other}`");
            ExitCode::from(2)
        }
    }
}
