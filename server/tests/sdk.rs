//! The official OpenAI and Anthropic Python SDKs against the real server (scripts in `tests/sdk/`).
//!
//! The Python interpreter comes from `SWITCHYARD_SDK_PYTHON`, which
//! `cargo xtask ci` sets after creating `target/sdk-venv` with `openai` and
//! `anthropic` installed. Outside CI (no `CI` variable) a missing variable
//! skips these tests with a message; in CI it fails them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const CLIENT_KEY: &str = "sdk-client-key-123456";
const UPSTREAM_KEY: &str = "sk-upstream-secret-123456";
const ANTHROPIC_KEY: &str = "sk-ant-upstream-secret-123456";

/// The SDK venv's python, or `None` (skip) outside CI.
fn python() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SWITCHYARD_SDK_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(
        !in_ci,
        "SWITCHYARD_SDK_PYTHON is not set: in CI, `cargo xtask ci` must create the SDK venv and set it"
    );
    eprintln!(
        "skipping the Python SDK tests: SWITCHYARD_SDK_PYTHON is not set \
         (run `cargo xtask ci`, or create a venv with `pip install openai anthropic` and point SWITCHYARD_SDK_PYTHON at its python)"
    );
    None
}

async fn sdk_gateway() -> (TestGateway, Upstream, Upstream) {
    let openai = openai_upstream_with_key("alpha", Some(UPSTREAM_KEY)).await;
    let anth = anthropic_upstream("claude", ANTHROPIC_KEY).await;
    let toml = format!(
        "{FAST_MANAGER}\n[server]\napi_keys_env = \"SDK_CLIENT_KEYS\"\n\n\
         [[providers]]\nid = \"alpha\"\ntype = \"openai_compatible\"\nbase_url = \"{}\"\napi_key_env = \"SDK_OPENAI_KEY\"\nhealth_check = \"none\"\n\
         [providers.models.\"gpt-x\"]\n\
         [providers.models.\"tool-model\"]\nupstream_name = \"tools\"\n\
         [providers.models.\"emb\"]\nrequest_types = [\"embeddings\"]\n\
         [providers.models.\"bad\"]\nupstream_name = \"bad-request\"\n\n\
         [[providers]]\nid = \"anth\"\ntype = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"SDK_ANTHROPIC_KEY\"\nhealth_check = \"none\"\n\
         [providers.models.\"claude-x\"]\nupstream_name = \"claude-upstream\"\n",
        openai.base_url(),
        anth.base_url()
    );
    let gw = gateway_with_env(
        &toml,
        &[
            ("SDK_CLIENT_KEYS", CLIENT_KEY),
            ("SDK_OPENAI_KEY", UPSTREAM_KEY),
            ("SDK_ANTHROPIC_KEY", ANTHROPIC_KEY),
        ],
    )
    .await;
    (gw, openai, anth)
}

/// Runs `tests/sdk/<script>` against `gw`; panics with its output on failure.
async fn run_script(python: PathBuf, script: &str, gw: &TestGateway) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sdk")
        .join(script);
    let base = gw.url("");
    let run = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&path)
            .env("SWITCHYARD_BASE_URL", base)
            .env("SWITCHYARD_CLIENT_KEY", CLIENT_KEY)
            .env("PYTHONUNBUFFERED", "1")
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the SDK script took more than 120 s")
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run the SDK python: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_against_the_gateway() {
    let Some(python) = python() else { return };
    let (gw, openai, _anth) = sdk_gateway().await;
    run_script(python, "openai_sdk.py", &gw).await;
    // The SDK's key never reached the upstream.
    for seen in openai.seen() {
        let auth = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        assert_eq!(auth, Some(format!("Bearer {UPSTREAM_KEY}").as_str()));
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_python_sdk_works_against_messages() {
    let Some(python) = python() else { return };
    let (gw, openai, anth) = sdk_gateway().await;
    run_script(python, "anthropic_sdk.py", &gw).await;
    assert!(
        anth.generations() >= 3,
        "native calls reached the Anthropic upstream"
    );
    assert!(
        openai.generations() >= 3,
        "translated calls reached the OpenAI upstream"
    );
    for seen in anth.seen() {
        assert_eq!(
            seen.headers.get("x-api-key").and_then(|v| v.to_str().ok()),
            Some(ANTHROPIC_KEY)
        );
    }
    gw.stop().await;
}
