//! End-to-end tests of config reload (SPEC §10): file changes (in place and rename-saves), SIGHUP, `POST /admin/reload`, the admin overlay, `check-config`, and that no secret leaks anywhere.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn base(gw: &TestGateway) -> String {
    format!("http://{}", gw.addr)
}

/// The `seq` of the last reload (0 before any).
async fn reload_seq(admin: &Admin) -> u64 {
    admin.get("/admin/reload").await.1["last"]["seq"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits for the reload after `seq` and returns its outcome.
async fn next_reload(admin: &Admin, seq: u64) -> Value {
    eventually(Duration::from_secs(10), "a reload", || {
        let admin = admin.clone();
        async move {
            let last = admin.get("/admin/reload").await.1["last"].clone();
            (last["seq"].as_u64().unwrap_or(0) > seq).then_some(last)
        }
    })
    .await
}

/// Writes `contents` to `path` in place, then returns the outcome of the reload it causes.
async fn write_and_wait(admin: &Admin, path: &Path, contents: &str) -> Value {
    let seq = reload_seq(admin).await;
    std::fs::write(path, contents).unwrap();
    next_reload(admin, seq).await
}

/// A gateway on `path`, written with provider "a" serving model "ma";
/// returns the file's contents and the gateway.
async fn gateway_serving_a(path: &Path, a: &Upstream) -> (String, TestGateway) {
    let v1 = format!(
        "{FAST_MANAGER}\n{}",
        toml_provider("a", &a.base_url(), &[("ma", "ma")], "")
    );
    std::fs::write(path, &v1).unwrap();
    (v1, gateway_from_file(path, &[]).await)
}

fn warnings(outcome: &Value) -> String {
    outcome["warnings"].to_string()
}

#[tokio::test]
async fn reload_follows_the_file_refuses_bad_ones_and_keeps_admin_added_providers() {
    let a = openai_upstream("a").await;
    let b = openai_upstream("b").await;
    let c = openai_upstream("c").await;
    let x = openai_upstream("x").await;
    let scratch = temp_dir();
    let dir = scratch.path();
    let path = dir.join("switchyard.toml");
    let (v1, gw) = gateway_serving_a(&path, &a).await;
    let admin = Admin::new(&gw);
    let http = client();
    let url = base(&gw);
    let events = EventLog::open(&gw.url("/admin/events"), None).await;
    assert_eq!(
        admin.get("/admin/reload").await.1["source"],
        path.display().to_string()
    );

    let (status, body) = admin
        .post(
            "/admin/providers",
            &json_provider("x", &x.base_url(), &[("mx", "mx")]),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // A valid change, written in place.
    let v2 = format!(
        "{v1}\n{}",
        toml_provider("b", &b.base_url(), &[("mb", "mb")], "")
    );
    let outcome = write_and_wait(&admin, &path, &v2).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(outcome["trigger"], "file");
    assert_eq!(outcome["added"], json!(["b"]));
    assert_eq!(outcome["removed"], json!([]));
    assert_eq!(warnings(&outcome), "[]");
    events
        .wait_for("config_reloaded", |d| d["added"] == json!(["b"]))
        .await;
    assert_eq!(admin.provider_ids().await, ["a", "b", "x"]);
    assert_eq!(ask(&http, &url, "mb").await, (200, "b".to_owned()));
    assert_eq!(
        ask(&http, &url, "mx").await,
        (200, "x".to_owned()),
        "the admin-added provider survived"
    );

    // An invalid file: refused, named, and the old config keeps serving.
    let invalid = format!(
        "{v2}\n[[providers]]\nid = \"bad\"\ntype = \"mock\"\nwieght = 2\nmodels = {{ \"z\" = {{}} }}\n"
    );
    let outcome = write_and_wait(&admin, &path, &invalid).await;
    assert_eq!(outcome["ok"], false, "{outcome}");
    assert!(
        outcome["error"]
            .as_str()
            .unwrap()
            .contains("providers[2].wieght"),
        "{outcome}"
    );
    let failed = events.wait_for("config_reload_failed", |_| true).await;
    assert!(
        failed["error"].as_str().unwrap().contains("wieght"),
        "{failed}"
    );
    assert_eq!(admin.provider_ids().await, ["a", "b", "x"]);
    assert_eq!(ask(&http, &url, "mb").await, (200, "b".to_owned()));
    let (status, body) = admin.post("/admin/reload", &json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");

    // A rename-save (what most editors do).
    let v3 = format!(
        "{v2}\n{}",
        toml_provider("c", &c.base_url(), &[("mc", "mc")], "")
    );
    let seq = reload_seq(&admin).await;
    let temp = dir.join(".switchyard.toml.swp");
    std::fs::write(&temp, &v3).unwrap();
    std::fs::rename(&temp, &path).unwrap();
    let outcome = next_reload(&admin, seq).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(outcome["added"], json!(["c"]));
    assert_eq!(admin.provider_ids().await, ["a", "b", "c", "x"]);
    assert_eq!(ask(&http, &url, "mc").await, (200, "c".to_owned()));
    assert_eq!(ask(&http, &url, "mx").await, (200, "x".to_owned()));

    // An explicit reload of an unchanged file changes nothing.
    let (status, body) = admin.post("/admin/reload", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"added": [], "changed": [], "removed": [], "routes_changed": false, "warnings": []})
    );

    // The file now defines the id an admin POST created: refused, unless override=true.
    let v4 = format!(
        "{v3}\n{}",
        toml_provider("x", &x.base_url(), &[("mx2", "mx2")], "")
    );
    let outcome = write_and_wait(&admin, &path, &v4).await;
    assert_eq!(outcome["ok"], false, "{outcome}");
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains("providers[3].id") && error.contains("override=true"),
        "{error}"
    );
    let (status, body) = admin.post("/admin/reload", &json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "reload_conflict");
    assert_eq!(admin.get("/admin/providers/x").await.1["origin"], "admin");
    assert_eq!(ask(&http, &url, "mx").await, (200, "x".to_owned()));
    let (status, body) = admin.post("/admin/reload?override=true", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], json!(["x"]));
    assert!(warnings(&body).contains("'x'"), "{body}");
    assert_eq!(admin.get("/admin/providers/x").await.1["origin"], "file");
    assert_eq!(admin.get("/admin/overlay").await.1["added"], json!([]));
    assert_eq!(ask(&http, &url, "mx2").await, (200, "x".to_owned()));
    assert_eq!(ask(&http, &url, "mx").await.0, 404);

    // listen and admin_token_env need a restart: applied nothing, warned, every time.
    let v5 =
        format!("[server]\nlisten = \"127.0.0.1:1\"\nadmin_token_env = \"SOME_OTHER_TOKEN\"\n{v4}");
    let outcome = write_and_wait(&admin, &path, &v5).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    for key in ["server.listen", "server.admin_token_env"] {
        assert!(warnings(&outcome).contains(key), "{outcome}");
    }
    let (status, body) = admin.post("/admin/reload", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(warnings(&body).contains("server.listen"), "{body}");
    assert_eq!(ask(&http, &url, "ma").await, (200, "a".to_owned()));
    gw.stop().await;
}

#[tokio::test]
async fn a_busy_log_file_beside_the_config_does_not_hold_back_reloads() {
    let a = openai_upstream("a").await;
    let b = openai_upstream("b").await;
    let scratch = temp_dir();
    let path = scratch.path().join("switchyard.toml");
    let (v1, gw) = gateway_serving_a(&path, &a).await;
    let admin = Admin::new(&gw);

    // A log appended to far more often than the debounce's quiet time,
    // for as long as the test runs.
    let log = scratch.path().join("switchyard.log");
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let writing = Arc::clone(&writing);
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = 0u32;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap();
                std::io::Write::write_all(&mut file, b"request finished\n").unwrap();
                lines += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            lines
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v2 = format!(
        "{v1}\n{}",
        toml_provider("b", &b.base_url(), &[("mb", "mb")], "")
    );
    // Before the fix, this wait ran out: the directory was never quiet.
    let outcome = write_and_wait(&admin, &path, &v2).await;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let lines = writer.await.unwrap();
    assert!(lines > 5, "the log was written throughout ({lines} lines)");
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(outcome["added"], json!(["b"]), "{outcome}");
    assert_eq!(admin.provider_ids().await, ["a", "b"]);
    gw.stop().await;
}

#[tokio::test]
async fn overrides_and_tombstones_survive_reloads_with_warnings_until_override() {
    let a = openai_upstream("a").await;
    let b = openai_upstream("b").await;
    let c = openai_upstream("c").await;
    let scratch = temp_dir();
    let dir = scratch.path();
    let path = dir.join("switchyard.toml");
    let file = |a_weight: u32, b_weight: u32, with_c: bool| {
        let mut text = format!(
            "{FAST_MANAGER}\n{}\n{}",
            toml_provider(
                "a",
                &a.base_url(),
                &[("m", "m")],
                &format!("weight = {a_weight}")
            ),
            toml_provider(
                "b",
                &b.base_url(),
                &[("m", "m")],
                &format!("weight = {b_weight}")
            ),
        );
        if with_c {
            text.push_str(&toml_provider("c", &c.base_url(), &[("mc", "mc")], ""));
        }
        text
    };
    std::fs::write(&path, file(1, 1, false)).unwrap();
    let gw = gateway_from_file(&path, &[]).await;
    let admin = Admin::new(&gw);

    assert_eq!(admin.delete("/admin/providers/b").await.0, 200);
    let (_, mut config) = admin.get("/admin/providers/a").await;
    config["weight"] = json!(5);
    assert_eq!(admin.put("/admin/providers/a", &config).await.0, 200);
    let weight_of_a = || async {
        admin.get("/admin/providers/a").await.1["weight"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        admin.get("/admin/overlay").await.1,
        json!({"added": [], "overrides": ["a"], "tombstones": ["b"], "route_overrides": [], "route_tombstones": []})
    );

    // b changed in the file, c added: b stays deleted (with a warning), a keeps its override.
    let outcome = write_and_wait(&admin, &path, &file(1, 3, true)).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(outcome["added"], json!(["c"]));
    assert!(warnings(&outcome).contains("provider 'b'"), "{outcome}");
    assert!(!warnings(&outcome).contains("provider 'a'"), "{outcome}");
    assert_eq!(admin.provider_ids().await, ["a", "c"]);
    assert_eq!(weight_of_a().await, 5);
    let (_, body) = admin.post("/admin/reload", &json!({})).await;
    assert!(
        warnings(&body).contains("provider 'b'"),
        "warned again: {body}"
    );

    // override=true: the file wins where it changed under the overlay.
    let (status, body) = admin.post("/admin/reload?override=true", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["added"], json!(["b"]));
    assert_eq!(admin.provider_ids().await, ["a", "b", "c"]);
    assert_eq!(admin.get("/admin/providers/b").await.1["weight"], 3);
    assert_eq!(weight_of_a().await, 5, "a's file entry did not change");

    let outcome = write_and_wait(&admin, &path, &file(7, 3, true)).await;
    assert!(warnings(&outcome).contains("provider 'a'"), "{outcome}");
    assert_eq!(weight_of_a().await, 5);
    let (status, body) = admin.post("/admin/reload?override=true", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], json!(["a"]));
    assert_eq!(weight_of_a().await, 7);
    assert_eq!(admin.get("/admin/providers/a").await.1["origin"], "file");
    assert_eq!(admin.get("/admin/overlay").await.1["overrides"], json!([]));
    gw.stop().await;
}

#[tokio::test]
async fn the_embedded_default_has_no_file_to_reload() {
    let a = openai_upstream("a").await;
    let gw = gateway(&format!(
        "{FAST_MANAGER}\n{}",
        toml_provider("a", &a.base_url(), &[("m", "m")], "")
    ))
    .await;
    let admin = Admin::new(&gw);
    let (status, body) = admin.post("/admin/reload", &json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "reload_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--config"),
        "{body}"
    );
    assert_eq!(admin.get("/admin/reload").await.1["last"], Value::Null);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// The binary: check-config, SIGHUP, and the secret grep
// ---------------------------------------------------------------------------

/// A command for the binary with no `SWITCHYARD_*` variables from the outside.
fn switchyard() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHYARD_") {
            command.env_remove(name);
        }
    }
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check_config(path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = switchyard();
    command.arg("check-config").arg(path);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_lists_every_error_with_its_path_and_redacts_secrets() {
    let scratch = temp_dir();
    let dir = scratch.path();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nmax_body_bytes = 0\n\
         [[providers]]\nid = \"p\"\ntype = \"openai_compatible\"\nbase_url = \"ftp://x\"\nmodels = { \"m\" = {} }\n\
         [routes.\"m\"]\nfallbacks = [\"nope\"]\n",
    )
    .unwrap();
    let (code, stdout, stderr) = check_config(&bad, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("3 problems"), "{stderr}");
    for path in [
        "server.max_body_bytes",
        "providers[0].base_url",
        "routes.\"m\".fallbacks",
    ] {
        assert!(
            stderr.lines().any(|l| l.trim_start().starts_with(path)),
            "{path} in {stderr}"
        );
    }

    let missing_key = dir.join("missing.toml");
    std::fs::write(
        &missing_key,
        "[[providers]]\nid = \"o\"\ntype = \"openai\"\napi_key_env = \"CHECK_UNSET_KEY\"\nmodels = { \"m\" = {} }\n",
    )
    .unwrap();
    let (code, _, stderr) = check_config(&missing_key, &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("CHECK_UNSET_KEY"), "{stderr}");

    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[[providers]]\nid = \"o\"\ntype = \"openai\"\napi_key_env = \"CHECK_KEY\"\nmodels = { \"m\" = {} }\n\
         headers = { \"x-api-key\" = \"hdr-check-secret-1234\", \"OpenAI-Organization\" = \"org-visible\" }\n\
         [[providers]]\nid = \"i\"\ntype = \"anthropic\"\napi_key = \"sk-ant-check-inline-1234\"\nmodels = { \"c\" = {} }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = check_config(&good, &[("CHECK_KEY", "sk-check-env-key-1234")]);
    assert_eq!(code, Some(0), "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        printed["providers"][0]["headers"]["x-api-key"],
        "[redacted]"
    );
    assert_eq!(
        printed["providers"][0]["headers"]["OpenAI-Organization"],
        "org-visible"
    );
    assert_eq!(printed["providers"][1]["api_key"], "[redacted]");
    assert_eq!(printed["providers"][0]["api_key_env"], "CHECK_KEY");
    for secret in [
        "hdr-check-secret-1234",
        "sk-ant-check-inline-1234",
        "sk-check-env-key-1234",
    ] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }
}

/// The binary's stdout and stderr, collected by background threads.
struct Logs(
    Arc<parking_lot::Mutex<String>>,
    Vec<std::thread::JoinHandle<()>>,
);

impl Logs {
    fn capture(child: &mut std::process::Child) -> Self {
        let text = Arc::new(parking_lot::Mutex::new(String::new()));
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        let mut readers = Vec::new();
        for pipe in [stdout, stderr] {
            let text = Arc::clone(&text);
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut text = text.lock();
                    text.push_str(&line);
                    text.push('\n');
                }
            }));
        }
        Self(text, readers)
    }

    /// Everything, once both pipes closed (the process exited).
    fn finish(self) -> String {
        for reader in self.1 {
            reader.join().unwrap();
        }
        self.0.lock().clone()
    }
}

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn no_secret_leaks_into_logs_events_admin_responses_metrics_or_check_config() {
    const UPSTREAM_KEY: &str = "sk-grep-upstream-key-5c1d9e";
    const ADMIN_TOKEN: &str = "adm-grep-token-77b2a0";
    const INLINE_KEY: &str = "sk-grep-inline-key-91f3aa";
    const HEADER_SECRET: &str = "hdr-grep-secret-3e8c1b";
    let secrets = [UPSTREAM_KEY, ADMIN_TOKEN, INLINE_KEY, HEADER_SECRET];

    let up = openai_upstream_with_key("up", Some(UPSTREAM_KEY)).await;
    let inline_up = openai_upstream_with_key("inl", Some(INLINE_KEY)).await;
    let port = free_port();
    let scratch = temp_dir();
    let dir = scratch.path();
    let path: PathBuf = dir.join("switchyard.toml");
    let main = toml_provider(
        "main",
        &up.base_url(),
        &[("gpt-x", "gpt-x"), ("leaky", "leaky-request")],
        &format!(
            "api_key_env = \"GREP_UPSTREAM_KEY\"\nheaders = {{ \"x-proxy-token\" = \"{HEADER_SECRET}\" }}"
        ),
    );
    let v1 = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_token_env = \"GREP_ADMIN_TOKEN\"\ndynamic_key_envs = [\"GREP_UPSTREAM_KEY\"]\n{FAST_MANAGER}\n{main}"
    );
    std::fs::write(&path, &v1).unwrap();
    let env = [
        ("GREP_UPSTREAM_KEY", UPSTREAM_KEY),
        ("GREP_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let mut command = switchyard();
    command
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let logs = Logs::capture(&mut child);
    let child = Running(child);
    let url = format!("http://127.0.0.1:{port}");
    let http = client();
    eventually(Duration::from_secs(20), "readiness", || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let ready = http.get(format!("{url}/readyz")).send().await;
            ready.ok().filter(|r| r.status() == 200).map(|_| ())
        }
    })
    .await;

    let admin = Admin::at(&url, Some(ADMIN_TOKEN));
    let events = EventLog::open(&format!("{url}/admin/events"), Some(ADMIN_TOKEN)).await;
    let mut seen = String::new();
    let mut call = async |method: reqwest::Method, path: &str, body: Option<Value>| {
        let (status, text) = admin.call_text(method, path, body.as_ref()).await;
        seen.push_str(&text);
        seen.push('\n');
        (
            status,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        )
    };
    use reqwest::Method as M;

    // Traffic, including an upstream error that echoes the key.
    let response = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat("gpt-x"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let response = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat("leaky"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let leaky = response.text().await.unwrap();
    assert!(leaky.contains("[redacted]"), "{leaky}");
    let mut errors = leaky;

    // Every admin route.
    for path in [
        "/admin/providers",
        "/admin/providers/main",
        "/admin/stats",
        "/admin/metrics",
        "/admin/routes",
        "/admin/overlay",
        "/admin/reload",
    ] {
        assert_eq!(call(M::GET, path, None).await.0, 200, "{path}");
    }
    let dynamic = {
        let mut body = json_provider("dyn", &up.base_url(), &[("dm", "dm")]);
        body["api_key_env"] = json!("GREP_UPSTREAM_KEY");
        body
    };
    assert_eq!(
        call(M::POST, "/admin/providers", Some(dynamic)).await.0,
        201
    );
    let inline = {
        let mut body = json_provider("inl", &inline_up.base_url(), &[("im", "im")]);
        body["api_key"] = json!(INLINE_KEY);
        body
    };
    assert_eq!(call(M::POST, "/admin/providers", Some(inline)).await.0, 201);
    let (status, mut got) = call(M::GET, "/admin/providers/inl", None).await;
    assert_eq!(status, 200);
    got["weight"] = json!(2);
    assert_eq!(call(M::PUT, "/admin/providers/inl", Some(got)).await.0, 200);
    let (_, mut got) = call(M::GET, "/admin/providers/main", None).await;
    assert_eq!(got["headers"]["x-proxy-token"], "[redacted]");
    got["weight"] = json!(2);
    assert_eq!(
        call(M::PUT, "/admin/providers/main", Some(got)).await.0,
        200
    );
    for model in ["gpt-x", "dm", "im"] {
        let (status, _) = ask(&http, &url, model).await;
        assert_eq!(status, 200, "{model}: the kept keys still work");
    }
    let mut sneaky = json_provider("sneaky", &up.base_url(), &[("s", "s")]);
    sneaky["api_key_env"] = json!("GREP_ADMIN_TOKEN");
    let (status, body) = call(M::POST, "/admin/providers", Some(sneaky)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        call(M::POST, "/admin/providers/main/reset", None).await.0,
        200
    );
    assert_eq!(
        call(
            M::PUT,
            "/admin/routes/gpt-x",
            Some(json!({"fallbacks": ["dm"]}))
        )
        .await
        .0,
        200
    );
    assert_eq!(call(M::POST, "/admin/reload", None).await.0, 200);
    assert_eq!(call(M::GET, "/admin/providers/nope", None).await.0, 404);

    // Reloads: a valid change, an invalid file, then SIGHUP.
    let second = toml_provider(
        "second",
        &up.base_url(),
        &[("sm", "sm")],
        "api_key_env = \"GREP_UPSTREAM_KEY\"",
    );
    let v2 = format!("{v1}\n{second}");
    let outcome = write_and_wait(&admin, &path, &v2).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    let outcome = write_and_wait(&admin, &path, &format!("{v2}\nbogus = 1\n")).await;
    assert_eq!(outcome["ok"], false, "{outcome}");
    let outcome = write_and_wait(&admin, &path, &v2).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    let seq = reload_seq(&admin).await;
    signal(&child.0, "HUP");
    let outcome = next_reload(&admin, seq).await;
    assert_eq!(outcome["trigger"], "signal", "{outcome}");
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(ask(&http, &url, "sm").await.0, 200);
    assert_eq!(call(M::GET, "/admin/reload", None).await.0, 200);
    let (status, body) = call(M::DELETE, "/admin/providers/dyn", None).await;
    assert_eq!(status, 409, "the route falls back to dyn's model: {body}");
    assert_eq!(call(M::DELETE, "/admin/routes/gpt-x", None).await.0, 200);
    assert_eq!(call(M::DELETE, "/admin/providers/dyn", None).await.0, 200);

    // Refused callers.
    for authorization in ["Bearer wrong-token-000000", "Basic abc"] {
        let response = http
            .get(format!("{url}/admin/providers"))
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        errors.push_str(&response.text().await.unwrap());
    }

    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("switchyard_requests_total"));
    let replay = EventLog::open(
        &format!("{url}/admin/events?recent=10000"),
        Some(ADMIN_TOKEN),
    )
    .await;
    replay
        .wait_for("provider_removed", |d| d["provider_id"] == "dyn")
        .await;
    events
        .wait_for("provider_removed", |d| d["provider_id"] == "dyn")
        .await;
    let event_text = format!("{}\n{}", events.text(), replay.text());
    for name in [
        "dynamic_provider_added",
        "provider_updated",
        "provider_reset",
        "config_reloaded",
        "config_reload_failed",
        "provider_removed",
    ] {
        assert!(event_text.contains(&format!("event: {name}")), "{name}");
    }

    let (_, check_out, check_err) = check_config(&path, &env);
    assert!(check_out.contains("\"main\""), "{check_err}");
    std::fs::write(dir.join("bad.toml"), format!("{v2}\nbogus = 1\n")).unwrap();
    let (code, bad_out, bad_err) = check_config(&dir.join("bad.toml"), &env);
    assert_eq!(code, Some(2));

    signal(&child.0, "TERM");
    let mut child = child;
    eventually(Duration::from_secs(10), "the exit", || {
        let exited = child.0.try_wait().unwrap().is_some();
        async move { exited.then_some(()) }
    })
    .await;
    drop(child);
    let logs = logs.finish();
    assert!(logs.contains("config reloaded"), "the logs were captured");
    assert!(logs.contains("SIGHUP"), "the logs were captured");

    for (what, text) in [
        ("logs", &logs),
        ("admin responses", &seen),
        ("error bodies", &errors),
        ("events", &event_text),
        ("/metrics", &metrics),
        (
            "check-config",
            &format!("{check_out}{check_err}{bad_out}{bad_err}"),
        ),
    ] {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{secret} leaked into the {what}: …{}…",
                text.find(secret)
                    .map(|at| &text[at.saturating_sub(200)..(at + 50).min(text.len())])
                    .unwrap_or_default()
            );
        }
    }
}
