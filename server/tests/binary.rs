//! Tests of the built `switchyard` binary: the embedded default answers at once, config errors name their path, SIGTERM drains a stream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A command for the binary with no `SWITCHYARD_*` variables from the outside.
fn switchyard() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHYARD_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "warn");
    command
}

/// `contents` written to `name` in a fresh directory, which is removed
/// when the returned guard drops.
fn temp_file(name: &str, contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("switchyard-test-")
        .tempdir()
        .unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, whatever happened.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let http = reqwest::Client::new();
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("switchyard exited early: {status}");
        }
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await {
            if response.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("switchyard did not become ready");
}

async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "switchyard did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_embedded_default_answers_offline_at_once() {
    let port = free_port();
    let mut child = switchyard()
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base, &mut child).await;
    let child = Running(child);
    let http = client();
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with("Hello from mock-"), "{text}");
    let models: Value = http
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"gpt-4o-mini") && ids.contains(&"mock-chat"),
        "{ids:?}"
    );
    let embedding = http
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"model": "text-embedding-3-small", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(embedding.status(), 200);
    drop(child);
}

fn check_config(path: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let mut command = switchyard();
    command.args(["check-config", "--config"]).arg(path);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn config_errors_name_their_path_and_env_overrides_apply() {
    let (_bad_dir, bad) = temp_file(
        "bad.toml",
        "[[providers]]\nid = \"p\"\ntype = \"mock\"\nwieght = 2\nmodels = { \"m\" = {} }\n",
    );
    let output = check_config(&bad, &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("providers[0].wieght"), "{stderr}");

    let (_good_dir, good) = temp_file(
        "good.toml",
        "[[providers]]\nid = \"p\"\ntype = \"mock\"\napi_key = \"sk-inline-secret-1234\"\nmodels = { \"m\" = {} }\n",
    );
    let output = check_config(
        &good,
        &[
            ("SWITCHYARD_SERVER__LISTEN", "127.0.0.1:9911"),
            ("SWITCHYARD_MANAGER__MAX_RETRIES", "5"),
            ("SWITCHYARD_API_KEYS", "not-a-config-key"),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["server"]["listen"], "127.0.0.1:9911");
    assert_eq!(printed["manager"]["max_retries"], 5);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("sk-inline-secret-1234"), "{stdout}");

    let output = check_config(&good, &[("SWITCHYARD_SERVER__LISEN", "x")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.lisen"));

    let missing = switchyard()
        .args(["check-config", "--config", "/nonexistent/switchyard.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[tokio::test]
async fn default_logging_writes_one_access_line_per_request_and_flushes_at_exit() {
    let up = openai_upstream("alpha").await;
    let port = free_port();
    let (dir, config) = temp_file(
        "logs.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{FAST_MANAGER}\n\
             [[providers]]\nid = \"alpha\"\ntype = \"openai_compatible\"\nbase_url = \"{}\"\nhealth_check = \"none\"\n\
             [providers.models.\"gpt-x\"]\n",
            up.base_url()
        ),
    );
    let log_path = dir.path().join("stderr.log");
    let mut child = switchyard()
        .env("RUST_LOG", "info")
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base, &mut child).await;
    let mut child = Running(child);
    let http = client();
    let send = |request_id: &'static str, body: Value| {
        http.post(format!("{base}/v1/chat/completions"))
            .header("x-request-id", request_id)
            .json(&body)
            .send()
    };
    assert_eq!(
        send("req-log-plain", chat("gpt-x")).await.unwrap().status(),
        200
    );
    let mut streamed = chat("gpt-x");
    streamed["stream"] = json!(true);
    let stream = send("req-log-stream", streamed).await.unwrap();
    assert_eq!(stream.status(), 200);
    let text = stream.text().await.unwrap();
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]", "{text}");
    let unknown = send("req-log-unknown", chat("no-such-model"))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut child.0, Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let access = |id: &str| -> Vec<&str> {
        log.lines()
            .filter(|l| l.contains("request finished") && l.contains(id))
            .collect()
    };
    // Each line carries its request span, a stream's too (it ends after
    // the handler has returned).
    let plain_lines = access("request_id=req-log-plain");
    assert_eq!(plain_lines.len(), 1, "{log}");
    assert!(
        plain_lines[0].contains(
            "request finished model=gpt-x stream=false provider=alpha status=\"200\" prompt_tokens="
        ),
        "{log}"
    );
    assert_eq!(
        plain_lines[0].matches("prompt_tokens=").count(),
        1,
        "fields are not repeated: {log}"
    );
    let stream_lines = access("request_id=req-log-stream");
    assert_eq!(stream_lines.len(), 1, "{log}");
    assert!(
        stream_lines[0].contains("stream=true provider=alpha status=\"200\""),
        "{log}"
    );
    let unknown_lines = access("request_id=req-log-unknown");
    assert_eq!(unknown_lines.len(), 1, "{log}");
    assert!(
        unknown_lines[0].contains("model=other requested_model=\"no-such-model\" stream=false provider=none status=\"404\""),
        "{log}"
    );
    assert!(!plain_lines[0].contains("requested_model"), "{log}");
    // Written by the log thread, yet nothing is lost at exit.
    assert!(
        log.lines().last().unwrap().contains("switchyard stopped"),
        "{log}"
    );
}

#[tokio::test]
async fn sigterm_during_a_stream_lets_the_stream_complete() {
    // One worker runs the single-thread scheduler, two the multi-thread one.
    for workers in [1, 2] {
        sigterm_during_a_stream(workers).await;
    }
}

async fn sigterm_during_a_stream(workers: usize) {
    let up = openai_upstream("alpha").await;
    let port = free_port();
    let (_config_dir, config) = temp_file(
        "sigterm.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = {workers}\nshutdown_timeout = \"10s\"\n{FAST_MANAGER}\n\
             [[providers]]\nid = \"alpha\"\ntype = \"openai_compatible\"\nbase_url = \"{}\"\nhealth_check = \"none\"\n\
             [providers.models.\"gpt-x\"]\nupstream_name = \"paced-stream\"\n",
            up.base_url()
        ),
    );
    let mut child = switchyard()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base, &mut child).await;
    let mut child = Running(child);

    let mut request = chat("gpt-x");
    request["stream"] = json!(true);
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("t1 ") {
        text.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    while let Some(bytes) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
    }
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]", "{text}");
    assert!(text.contains("t14 "), "{text}");
    let status = wait_exit(&mut child.0, Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
}
