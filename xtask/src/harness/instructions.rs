//! `cargo xtask bench --instructions`: user-space instructions per request under callgrind, nginx vs the hyper floor vs Switchyard.
//!
//! Wall-clock CPU time on these machines drifts by tens of percent from
//! one run to the next; an instruction count does not. Each proxy runs
//! under `valgrind --tool=callgrind` with instrumentation off; after a
//! warm-up of sequential keep-alive requests (connections open, pools and
//! caches filled) it is switched on for a fixed number of requests, the
//! counts are dumped, and the dump's total is divided by the requests.
//! Plain requests first, then streamed ones, from the same process. The
//! count covers the proxy's own code and libraries, not the kernel, and
//! one request at a time, so it says nothing about contention: it
//! complements the wall-clock table rather than replacing it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::bench::{
    Proxy, install_missing, mock_upstream, request_body, start_hyper_floor, start_nginx,
    start_switchyard,
};

/// Requests before counting starts.
const WARM_UP: u32 = 300;
/// Requests counted.
const COUNTED: u32 = 2000;

/// Installs valgrind (callgrind and `callgrind_control`) and nginx when missing.
fn ensure_tools() -> Result<(), String> {
    install_missing(&[("callgrind_control", "valgrind"), ("nginx", "nginx")])
}

/// The callgrind command prefix writing dumps to `out`.
fn callgrind(out: &Path) -> Vec<String> {
    vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        "--instr-atstart=no".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
    ]
}

async fn control(pid: u32, flag: &str) -> Result<(), String> {
    let status = tokio::process::Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| format!("cannot run callgrind_control: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("callgrind_control {flag} {pid} failed: {status}"))
    }
}

/// Sends `count` requests one after another on one kept-alive connection.
async fn send(client: &reqwest::Client, url: &str, stream: bool, count: u32) -> Result<(), String> {
    for _ in 0..count {
        let response = client
            .post(format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(request_body(stream))
            .send()
            .await
            .map_err(|e| format!("request to {url} failed: {e}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading an answer from {url} failed: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    Ok(())
}

/// The count of one callgrind dump, once written: its `totals:` line (the
/// `summary:` line of a dump after the first is not this part's count).
async fn dump_total(path: &Path) -> Result<u64, String> {
    for _ in 0..300 {
        let total = std::fs::read_to_string(path).ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("totals:"))
                .and_then(|v| v.trim().parse().ok())
        });
        if let Some(total) = total {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no callgrind dump at {}", path.display()))
}

/// Instructions per plain and per streamed request of `proxy`, whose
/// dumps go to `out.1` and `out.2`.
async fn count(proxy: &Proxy, out: &Path) -> Result<(f64, f64), String> {
    let pid = proxy
        .child
        .id()
        .ok_or("the proxy under callgrind exited early")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| e.to_string())?;
    let mut per_request = [0.0; 2];
    for (part, stream) in [false, true].into_iter().enumerate() {
        send(&client, &proxy.url, stream, WARM_UP).await?;
        control(pid, "--instr=on").await?;
        send(&client, &proxy.url, stream, COUNTED).await?;
        control(pid, "--dump").await?;
        control(pid, "--instr=off").await?;
        let dump = PathBuf::from(format!("{}.{}", out.display(), part + 1));
        per_request[part] = dump_total(&dump).await? as f64 / f64::from(COUNTED);
    }
    Ok((per_request[0], per_request[1]))
}

/// Counts the three proxies and prints the table.
pub async fn run(root: &Path, server: &Path, providers: usize) -> Result<(), String> {
    ensure_tools()?;
    let dir = root.join("target").join("harness").join("callgrind");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let upstream_port = mock_upstream()
        .await
        .map_err(|e| format!("mock upstream: {e}"))?;
    let mut rows = Vec::new();
    for target in ["nginx", "hyper", "switchyard"] {
        let out = dir.join(format!("callgrind.{target}"));
        let wrapper = callgrind(&out);
        let proxy = match target {
            "nginx" => start_nginx(&dir, upstream_port, &wrapper).await?,
            "hyper" => start_hyper_floor(upstream_port, &wrapper).await?,
            _ => start_switchyard(&dir, server, upstream_port, providers, &wrapper).await?,
        };
        eprintln!("counting {target} ...");
        rows.push((target, count(&proxy, &out).await?));
    }
    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n## Instructions per request (callgrind; {COUNTED} sequential requests after {WARM_UP}; {providers} providers for the model)\n"
    );
    let _ = writeln!(
        report,
        "| target | plain | × nginx | × hyper | stream | × nginx | × hyper |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|");
    let of = |name: &str| {
        rows.iter()
            .find(|(target, _)| *target == name)
            .map_or((f64::NAN, f64::NAN), |(_, counts)| *counts)
    };
    let (nginx, hyper) = (of("nginx"), of("hyper"));
    for (target, (plain, stream)) in &rows {
        let _ = writeln!(
            report,
            "| {target} | {:.1}k | {:.2}× | {:.2}× | {:.1}k | {:.2}× | {:.2}× |",
            plain / 1000.0,
            plain / nginx.0,
            plain / hyper.0,
            stream / 1000.0,
            stream / nginx.1,
            stream / hyper.1,
        );
    }
    print!("{report}");
    let path = root.join("target").join("harness").join("instructions.md");
    std::fs::write(&path, &report).map_err(|e| e.to_string())?;
    println!("\n(written to {})", path.display());
    Ok(())
}
