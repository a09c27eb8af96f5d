//! `cargo xtask bench`: gateway overhead against a do-nothing upstream, direct vs nginx vs Switchyard.
//!
//! The same load (wrk, fixed connections, warm-up, fixed duration) runs
//! four ways in one go: straight at a mock upstream that answers fixed
//! bytes, through an nginx `proxy_pass` with upstream keepalive (the floor
//! of a plain reverse proxy), through a bare hyper proxy (the floor of a
//! Rust one: [`crate::floor`]), and through the release `switchyard`
//! binary with 100 providers configured for the model. Each cell runs on
//! the four back to back, so ratios compare runs seconds apart. The targets are
//! judged against nginx; the hyper row shows how much of the gap is the
//! HTTP stack itself. The proxy under test is
//! pinned to CPU 0 and wrk to CPU 1 (when `taskset` exists); the mock
//! upstream runs inside this harness process, left to the scheduler
//! (pinning it beside wrk made the direct run a same-core loop, and every
//! proxy's added p50 mostly cross-core wake-ups).
//! Reported: requests/s, p50/p99 as wrk measures them (raw, not corrected
//! for coordinated omission), p50 added over direct, the proxy's CPU time
//! per request (from `/proc/PID/stat`) and its peak RSS (`VmHWM`).
//! At one connection the four targets take turns in one-second rounds
//! instead: a proxy adds a few microseconds there, less than the machine
//! drifts between runs seconds apart, so each round's p50s are compared
//! with that round's direct one and the medians are reported.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::gateway::free_port;

/// Bench settings.
pub struct Options {
    /// Seconds of measured load per cell.
    pub seconds: u64,
    /// Providers configured for the model.
    pub providers: usize,
    /// The name of the switchyard row (`switchyard-pgo` for the
    /// profile-guided build).
    pub label: &'static str,
}

const CHAT_BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}"#;

fn sse_body() -> String {
    let mut body = String::new();
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    body.push_str(&chunk(r#"{"role":"assistant","content":""}"#, "null"));
    for word in ["Hello ", "from ", "the ", "bench ", "upstream."] {
        body.push_str(&chunk(&format!("{{\"content\":\"{word}\"}}"), "null"));
    }
    body.push_str(&chunk("{}", "\"stop\""));
    body.push_str("data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":6,\"total_tokens\":15}}\n\n");
    body.push_str("data: [DONE]\n\n");
    body
}

/// The do-nothing upstream: fixed bytes, keep-alive, no parsing beyond framing.
pub(crate) async fn mock_upstream() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let plain = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT_BODY}",
        CHAT_BODY.len()
    )
    .into_bytes();
    let sse = sse_body();
    let streamed = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{sse}",
        sse.len()
    )
    .into_bytes();
    let models = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 26\r\n\r\n{\"object\":\"list\",\"data\":[]}".to_vec();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (plain, streamed, models) = (plain.clone(), streamed.clone(), models.clone());
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let mut buffer = Vec::with_capacity(16 * 1024);
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buffer.len() < end + 4 + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = &buffer[end + 4..end + 4 + length];
                    let stream = body.windows(13).any(|w| w == b"\"stream\":true");
                    let answer = if head.starts_with("get ") {
                        &models
                    } else if stream {
                        &streamed
                    } else {
                        &plain
                    };
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                    buffer.drain(..end + 4 + length);
                }
            });
        }
    });
    Ok(port)
}

pub(crate) fn run_quiet(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn have(program: &str) -> bool {
    run_quiet("sh", &["-c", &format!("command -v {program}")])
}

/// Installs wrk and nginx with apt-get when they are missing.
fn ensure_tools() -> Result<(), String> {
    install_missing(&[("wrk", "wrk"), ("nginx", "nginx")])
}

/// Installs with apt-get the package of each `(program, package)` whose
/// program is missing.
pub(crate) fn install_missing(tools: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {} with apt-get ...", missing.join(", "));
    let mut args = vec!["install", "-y", "-q"];
    args.extend(&missing);
    if !(run_quiet("apt-get", &["update", "-q"]) && run_quiet("apt-get", &args)) {
        return Err(format!(
            "could not install {} (apt-get failed)",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// `program args` pinned to `cpu`, or run under `wrapper` (a command
/// prefix such as callgrind's) when one is given.
pub(crate) fn launch(cpu: &str, wrapper: &[String], program: &Path, args: &[String]) -> Command {
    match wrapper.split_first() {
        Some((tool, tool_args)) => {
            let mut command = Command::new(tool);
            command.args(tool_args).arg(program).args(args);
            command
        }
        None => pinned(cpu, program, args),
    }
}

fn pinned(cpu: &str, program: &Path, args: &[String]) -> Command {
    if have("taskset") {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(cpu).arg(program).args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Processes whose CPU counts for a target: the pid and its children (nginx workers).
fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    pids
}

fn family_ticks(pid: u32) -> u64 {
    family(pid).into_iter().filter_map(cpu_ticks).sum()
}

fn family_rss(pid: u32) -> u64 {
    family(pid)
        .into_iter()
        .filter_map(peak_rss_kib)
        .max()
        .unwrap_or(0)
}

struct Cell {
    target: &'static str,
    connections: u32,
    stream: bool,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_request: Option<f64>,
    rss_mib: Option<f64>,
    errors: u64,
    /// The median over rounds of this target's p50 less direct's in the
    /// same round (one-connection cells).
    paired_added_p50_us: Option<f64>,
}

impl Cell {
    /// p50 added over `direct`: paired by rounds when measured so.
    fn added_p50_us(&self, direct: &Cell) -> f64 {
        self.paired_added_p50_us
            .unwrap_or(self.p50_us - direct.p50_us)
    }
}

/// The median of `values` (NaN when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn parse_latency(value: &str) -> Option<f64> {
    let value = value.trim();
    let (number, unit) = value.split_at(value.find(|c: char| c.is_ascii_alphabetic())?);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number,
        "ms" => number * 1_000.0,
        "s" => number * 1_000_000.0,
        _ => return None,
    })
}

async fn wrk(
    url: &str,
    script: &Path,
    connections: u32,
    seconds: u64,
) -> Result<(f64, f64, f64, u64), String> {
    let threads = if connections > 1 { "2" } else { "1" };
    let args: Vec<String> = [
        "-t",
        threads,
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
        "--latency",
        "-s",
        &script.display().to_string(),
        url,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let output = pinned("1", Path::new("wrk"), &args)
        .output()
        .await
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("wrk printed no rate:\n{text}"))?;
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).and_then(parse_latency))
            .unwrap_or(f64::NAN)
    };
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((rps, percentile("50%"), percentile("99%"), errors))
}

/// The chat request every bench client sends.
pub(crate) fn request_body(stream: bool) -> &'static str {
    if stream {
        r#"{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
    } else {
        r#"{"model":"bench","messages":[{"role":"user","content":"hi"}]}"#
    }
}

fn lua_script(dir: &Path, stream: bool) -> Result<PathBuf, String> {
    let body = request_body(stream);
    let path = dir.join(if stream { "stream.lua" } else { "plain.lua" });
    let script = format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{body}'\n"
    );
    std::fs::write(&path, script).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// A proxy under test, stopped when dropped.
pub(crate) struct Proxy {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn wait_ready(url: &str) -> Result<(), String> {
    let client = reqwest::Client::new();
    // A minute: under callgrind a proxy starts some fifty times slower.
    for _ in 0..600 {
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{url} did not come up"))
}

pub(crate) async fn start_nginx(
    dir: &Path,
    upstream_port: u16,
    wrapper: &[String],
) -> Result<Proxy, String> {
    let port = free_port()?;
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).map_err(|e| e.to_string())?;
    // One process, no master: killing the child on drop then stops nginx
    // (a killed master left its worker running after the bench).
    let conf = format!(
        "master_process off;\ndaemon off;\nuser root;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
           fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
           upstream mock {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://mock;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
        p = prefix.display()
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        PathBuf::from("/usr/sbin/nginx")
    } else {
        PathBuf::from("nginx")
    };
    let args = vec![
        "-p".to_owned(),
        prefix.display().to_string(),
        "-c".to_owned(),
        conf_path.display().to_string(),
    ];
    let child = launch("0", wrapper, &nginx, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url).await?;
    Ok(Proxy { child, url })
}

pub(crate) async fn start_hyper_floor(
    upstream_port: u16,
    wrapper: &[String],
) -> Result<Proxy, String> {
    let port = free_port()?;
    let harness =
        std::env::current_exe().map_err(|e| format!("cannot find the harness binary: {e}"))?;
    let args = vec![
        "floor-proxy".to_owned(),
        port.to_string(),
        upstream_port.to_string(),
    ];
    let child = launch("0", wrapper, &harness, &args)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the hyper floor proxy: {e}"))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url).await?;
    Ok(Proxy { child, url })
}

pub(crate) async fn start_switchyard(
    dir: &Path,
    server: &Path,
    upstream_port: u16,
    providers: usize,
    wrapper: &[String],
) -> Result<Proxy, String> {
    let port = free_port()?;
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[manager]\nstrategy = \"round_robin\"\n"
    );
    for i in 0..providers {
        let _ = write!(
            config,
            "\n[[providers]]\nid = \"p{i}\"\ntype = \"openai_compatible\"\nbase_url = \"http://127.0.0.1:{upstream_port}/v1\"\nhealth_check = \"none\"\n[providers.models.bench]\n"
        );
    }
    let path = dir.join("bench-switchyard.toml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let args = vec![
        "serve".to_owned(),
        "--config".to_owned(),
        path.display().to_string(),
    ];
    let log = std::fs::File::create(dir.join("bench-switchyard.log")).map_err(|e| e.to_string())?;
    let child = launch("0", wrapper, server, &args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start switchyard: {e}"))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{url}/readyz")).await?;
    Ok(Proxy { child, url })
}

/// One cell: warm-up, then `options.seconds` of load at `connections`.
async fn measure(
    target: &'static str,
    url: &str,
    pid: Option<u32>,
    dir: &Path,
    options: &Options,
    (stream, connections): (bool, u32),
) -> Result<Cell, String> {
    let ticks_per_second = 100.0;
    let script = lua_script(dir, stream)?;
    let endpoint = format!("{url}/v1/chat/completions");
    // Warm-up: connections open, pools fill, caches warm.
    wrk(&endpoint, &script, connections, 2).await?;
    let before = pid.map(family_ticks);
    let (rps, p50, p99, errors) = wrk(&endpoint, &script, connections, options.seconds).await?;
    let after = pid.map(family_ticks);
    let requests = rps * options.seconds as f64;
    let cpu = match (before, after) {
        (Some(b), Some(a)) if requests > 0.0 => {
            Some((a - b) as f64 / ticks_per_second * 1e6 / requests)
        }
        _ => None,
    };
    Ok(Cell {
        target,
        connections,
        stream,
        rps,
        p50_us: p50,
        p99_us: p99,
        cpu_us_per_request: cpu,
        rss_mib: pid.map(|p| family_rss(p) as f64 / 1024.0),
        errors,
        paired_added_p50_us: None,
    })
}

/// What one wrk run of a round gave, and the CPU ticks the target used.
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    ticks: Option<u64>,
}

/// One connection, `options.seconds` rounds: in each, every target gets
/// one second of load in turn (`targets[0]` is direct). A cell's p50 and
/// p99 are the medians of its rounds', its added p50 the median of its
/// per-round differences from direct, its rate and CPU per request
/// those of all its rounds together.
async fn measure_in_rounds(
    targets: &[(&'static str, &str, Option<u32>)],
    dir: &Path,
    options: &Options,
    stream: bool,
) -> Result<Vec<Cell>, String> {
    let script = lua_script(dir, stream)?;
    let endpoints: Vec<String> = targets
        .iter()
        .map(|(_, url, _)| format!("{url}/v1/chat/completions"))
        .collect();
    for endpoint in &endpoints {
        wrk(endpoint, &script, 1, 2).await?;
    }
    let mut samples: Vec<Vec<Sample>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..options.seconds.max(1) {
        for ((_, _, pid), (endpoint, runs)) in
            targets.iter().zip(endpoints.iter().zip(&mut samples))
        {
            let before = pid.map(family_ticks);
            let (rps, p50_us, p99_us, errors) = wrk(endpoint, &script, 1, 1).await?;
            let ticks = pid
                .map(family_ticks)
                .zip(before)
                .map(|(a, b)| a.saturating_sub(b));
            runs.push(Sample {
                rps,
                p50_us,
                p99_us,
                errors,
                ticks,
            });
        }
    }
    let direct_p50s: Vec<f64> = samples
        .first()
        .map(|runs| runs.iter().map(|s| s.p50_us).collect())
        .unwrap_or_default();
    let cells = targets
        .iter()
        .zip(&samples)
        .enumerate()
        .map(|(at, ((target, _, pid), runs))| {
            let requests: f64 = runs.iter().map(|s| s.rps).sum();
            let ticks: Option<u64> = runs.iter().map(|s| s.ticks).sum();
            Cell {
                target,
                connections: 1,
                stream,
                rps: requests / runs.len().max(1) as f64,
                p50_us: median(runs.iter().map(|s| s.p50_us).collect()),
                p99_us: median(runs.iter().map(|s| s.p99_us).collect()),
                cpu_us_per_request: ticks
                    .filter(|_| requests > 0.0)
                    .map(|t| t as f64 / 100.0 * 1e6 / requests),
                rss_mib: pid.map(|p| family_rss(p) as f64 / 1024.0),
                errors: runs.iter().map(|s| s.errors).sum(),
                paired_added_p50_us: (at > 0).then(|| {
                    median(
                        runs.iter()
                            .zip(&direct_p50s)
                            .map(|(s, direct)| s.p50_us - direct)
                            .collect(),
                    )
                }),
            }
        })
        .collect();
    Ok(cells)
}

fn find<'a>(cells: &'a [Cell], target: &str, connections: u32, stream: bool) -> Option<&'a Cell> {
    cells
        .iter()
        .find(|c| c.target == target && c.connections == connections && c.stream == stream)
}

/// Runs the whole matrix and prints the table; `Ok(false)` when a target missed.
pub async fn run(root: &Path, server: &Path, options: Options) -> Result<bool, String> {
    ensure_tools()?;
    let dir = root.join("target").join("harness");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let upstream_port = mock_upstream()
        .await
        .map_err(|e| format!("mock upstream: {e}"))?;
    let direct_url = format!("http://127.0.0.1:{upstream_port}");
    let nginx = start_nginx(&dir, upstream_port, &[]).await?;
    let floor = start_hyper_floor(upstream_port, &[]).await?;
    let gateway = start_switchyard(&dir, server, upstream_port, options.providers, &[]).await?;
    let targets: [(&'static str, &str, Option<u32>); 4] = [
        ("direct", &direct_url, None),
        ("nginx", &nginx.url, nginx.child.id()),
        ("hyper", &floor.url, floor.child.id()),
        (options.label, &gateway.url, gateway.child.id()),
    ];
    // Each cell runs on every target back to back, so the ratios compare
    // runs seconds apart: this machine's speed drifts over minutes. The
    // idle proxies wait on their sockets meanwhile and take no CPU.
    let mut cells = Vec::new();
    for stream in [false, true] {
        cells.extend(measure_in_rounds(&targets, &dir, &options, stream).await?);
        for (target, url, pid) in targets {
            cells.push(measure(target, url, pid, &dir, &options, (stream, 64)).await?);
        }
    }
    let order = |target: &str| targets.iter().position(|t| t.0 == target);
    cells.sort_by_key(|c| (order(c.target), c.stream, c.connections));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Switchyard bench ({} s per cell, {} providers for the model; one connection: {} one-second rounds per target, medians, added p50 paired by round)\n",
        options.seconds,
        options.providers,
        options.seconds.max(1)
    );
    let _ = writeln!(
        out,
        "| target | mode | conns | req/s | p50 | p99 | +p50 vs direct | CPU µs/req | peak RSS | errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for cell in &cells {
        let added = find(&cells, "direct", cell.connections, cell.stream)
            .map(|d| format!("{:.0} µs", cell.added_p50_us(d)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} µs | {:.0} µs | {} | {} | {} | {} |",
            cell.target,
            if cell.stream { "stream" } else { "plain" },
            cell.connections,
            cell.rps,
            cell.p50_us,
            cell.p99_us,
            if cell.target == "direct" {
                "-".to_owned()
            } else {
                added
            },
            cell.cpu_us_per_request
                .map_or("-".to_owned(), |c| format!("{c:.1}")),
            cell.rss_mib
                .map_or("-".to_owned(), |r| format!("{r:.1} MiB")),
            cell.errors,
        );
    }
    let mut ok = true;
    for stream in [false, true] {
        let mode = if stream { "stream" } else { "plain" };
        let (Some(sy64), Some(ng64), Some(sy1), Some(ng1), Some(d1)) = (
            find(&cells, options.label, 64, stream),
            find(&cells, "nginx", 64, stream),
            find(&cells, options.label, 1, stream),
            find(&cells, "nginx", 1, stream),
            find(&cells, "direct", 1, stream),
        ) else {
            continue;
        };
        let throughput = sy64.rps / ng64.rps;
        let added = sy1.added_p50_us(d1) / ng1.added_p50_us(d1).max(1.0);
        let cpu = match (sy64.cpu_us_per_request, ng64.cpu_us_per_request) {
            (Some(s), Some(n)) if n > 0.0 => s / n,
            _ => f64::NAN,
        };
        let rss = sy64.rss_mib.unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "\n{mode}: throughput vs nginx at 64 conns {throughput:.2}× (target ≥ 0.8); added p50 vs nginx's at 1 conn {added:.2}× (≤ 1.5); CPU per request vs nginx {cpu:.2}× (≤ 1.5); peak RSS {rss:.1} MiB (< 30)"
        );
        ok &= throughput >= 0.8 && added <= 1.5 && cpu <= 1.5 && rss < 30.0;
        if let (Some(hy64), Some(hy1)) = (
            find(&cells, "hyper", 64, stream),
            find(&cells, "hyper", 1, stream),
        ) {
            let floor_throughput = hy64.rps / ng64.rps;
            let floor_cpu = match (hy64.cpu_us_per_request, ng64.cpu_us_per_request) {
                (Some(h), Some(n)) if n > 0.0 => h / n,
                _ => f64::NAN,
            };
            let vs_hyper_throughput = sy64.rps / hy64.rps;
            let vs_hyper_added = sy1.added_p50_us(d1) / hy1.added_p50_us(d1).max(1.0);
            let vs_hyper_cpu = match (sy64.cpu_us_per_request, hy64.cpu_us_per_request) {
                (Some(s), Some(h)) if h > 0.0 => s / h,
                _ => f64::NAN,
            };
            let _ = writeln!(
                out,
                "{mode}, for scale: the bare hyper proxy does {floor_throughput:.2}× nginx's throughput at {floor_cpu:.2}× its CPU; switchyard against it: throughput {vs_hyper_throughput:.2}×, added p50 {vs_hyper_added:.2}×, CPU {vs_hyper_cpu:.2}×"
            );
        }
    }
    print!("{out}");
    let report = dir.join("bench.md");
    std::fs::write(&report, &out).map_err(|e| e.to_string())?;
    println!("\n(written to {})", report.display());
    Ok(ok)
}
