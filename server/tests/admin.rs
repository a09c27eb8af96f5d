//! End-to-end tests of the admin API (SPEC §11, §16): the real server in-process in front of fake upstreams, driven over HTTP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "adm-token-for-tests-7f3a";

fn base(gw: &TestGateway) -> String {
    format!("http://{}", gw.addr)
}

#[tokio::test]
async fn admin_routes_need_the_token_when_one_is_set() {
    let up = openai_upstream("alpha").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}",
        toml_provider("alpha", &up.base_url(), &[("m", "m")], "")
    );
    let gw = gateway_with_env(&toml, &[("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let routes = [
        (Method::GET, "/admin/providers"),
        (Method::POST, "/admin/providers"),
        (Method::GET, "/admin/providers/alpha"),
        (Method::PUT, "/admin/providers/alpha"),
        (Method::DELETE, "/admin/providers/alpha"),
        (Method::POST, "/admin/providers/alpha/reset"),
        (Method::GET, "/admin/stats"),
        (Method::GET, "/admin/metrics"),
        (Method::GET, "/admin/events"),
        (Method::GET, "/admin/routes"),
        (Method::GET, "/admin/routes/m"),
        (Method::PUT, "/admin/routes/m"),
        (Method::DELETE, "/admin/routes/m"),
        (Method::GET, "/admin/overlay"),
        (Method::GET, "/admin/reload"),
        (Method::POST, "/admin/reload"),
    ];
    let http = client();
    for (method, path) in &routes {
        for authorization in [
            None,
            Some("Bearer wrong-token-000000".to_owned()),
            Some(format!("Basic {ADMIN_TOKEN}")),
            Some(ADMIN_TOKEN.to_owned()),
            Some(format!("Bearer {ADMIN_TOKEN}x")),
        ] {
            let mut request = http.request(method.clone(), gw.url(path)).json(&json!({}));
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} {authorization:?}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "invalid_admin_token", "{body}");
            assert!(!body.to_string().contains(ADMIN_TOKEN));
        }
    }
    // Nothing was changed by the refused calls; the token opens every route.
    let admin = Admin::at(&base(&gw), Some(ADMIN_TOKEN));
    assert_eq!(admin.provider_ids().await, ["alpha"]);
    let response = admin
        .request(Method::GET, "/admin/stats")
        .header("host", "gateway.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the token works from any host");
    gw.stop().await;

    // Without a token: loopback hosts only.
    let gw = gateway(&toml).await;
    let admin = Admin::new(&gw);
    assert_eq!(admin.provider_ids().await, ["alpha"]);
    for path in ["/admin/providers", "/admin/events", "/admin/reload"] {
        let response = admin
            .request(Method::GET, path)
            .header("host", "gateway.example.com:8080")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "admin_loopback_only");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_dynamic_provider_takes_traffic_and_bad_ones_are_refused_naming_the_field() {
    let alpha = openai_upstream("alpha").await;
    let beta = openai_upstream("beta").await;
    let keyed = openai_upstream_with_key("keyed", Some("sk-inline-roundtrip-1234")).await;
    let toml = format!(
        "{FAST_MANAGER}\n{}",
        toml_provider("alpha", &alpha.base_url(), &[("m", "m")], "")
    );
    let gw = gateway(&toml).await;
    let admin = Admin::new(&gw);
    let http = client();

    let (status, body) = admin
        .post(
            "/admin/providers",
            &json_provider("beta", &beta.base_url(), &[("m2", "m2-up")]),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["provider_id"], "beta");
    assert_eq!(body["provider"]["origin"], "admin");
    let (status, provider) = ask(&http, &base(&gw), "m2").await;
    assert_eq!((status, provider.as_str()), (200, "beta"));
    assert_eq!(beta.generations(), 1);
    assert_eq!(beta.seen()[0].body["model"], "m2-up");
    let (_, list) = admin.get("/admin/providers").await;
    let origins: Vec<(&str, &str)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(origins, [("alpha", "file"), ("beta", "admin")]);

    // Duplicate ids: 409, whether admin-added or from the file.
    for id in ["beta", "alpha"] {
        let (status, body) = admin
            .post(
                "/admin/providers",
                &json_provider(id, &beta.base_url(), &[("x", "x")]),
            )
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "provider_exists");
        assert_eq!(body["error"]["param"], "id");
    }

    // Invalid configs: 400 naming the field.
    let mut missing_models = json_provider("x", &beta.base_url(), &[]);
    missing_models.as_object_mut().unwrap().remove("models");
    let mut typo = json_provider("x", &beta.base_url(), &[("x", "x")]);
    typo["wieght"] = json!(2);
    let mut wrong_type = json_provider("x", &beta.base_url(), &[("x", "x")]);
    wrong_type["weight"] = json!("heavy");
    let bad_id = json_provider("bad id!", &beta.base_url(), &[("x", "x")]);
    let mut bad_kind = json_provider("x", &beta.base_url(), &[("x", "x")]);
    bad_kind["type"] = json!("cohere");
    let bad_url = json_provider("x", "ftp://files.example.com", &[("x", "x")]);
    let mut bad_model = json_provider("x", &beta.base_url(), &[("x", "x")]);
    bad_model["models"]["x"]["max_concurrency"] = json!(0);
    for (body, field) in [
        (missing_models, "provider.models"),
        (typo, "provider.wieght"),
        (wrong_type, "provider.weight"),
        (bad_id, "provider.id"),
        (bad_kind, "provider.type"),
        (bad_url, "provider.base_url"),
        (bad_model, "provider.models.\"x\".max_concurrency"),
    ] {
        let (status, error) = admin.post("/admin/providers", &body).await;
        assert_eq!(status, 400, "{field}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{field}: {message}");
        assert_eq!(error["error"]["param"], field, "{error}");
    }
    let response = admin
        .request(Method::POST, "/admin/providers")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_json");
    assert_eq!(admin.provider_ids().await, ["alpha", "beta"]);

    // validate_only changes nothing.
    let (status, body) = admin
        .post(
            "/admin/providers?validate_only=true",
            &json_provider("gamma", &beta.base_url(), &[("g", "g")]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["message"].as_str().unwrap().contains("nothing"));
    assert_eq!(admin.get("/admin/providers/gamma").await.0, 404);

    // health_check=true refuses an unreachable upstream.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", listener.local_addr().unwrap())
    };
    let mut unreachable = json_provider("delta", &dead, &[("d", "d")]);
    unreachable["health_check"] = json!("models");
    let (status, body) = admin
        .post("/admin/providers?health_check=true", &unreachable)
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "health_check_failed");
    assert_eq!(admin.get("/admin/providers/delta").await.0, 404);

    // GET then PUT round-trips with the inline key redacted.
    let mut inline = json_provider("inline", &keyed.base_url(), &[("k", "k")]);
    inline["api_key"] = json!("sk-inline-roundtrip-1234");
    assert_eq!(admin.post("/admin/providers", &inline).await.0, 201);
    let (status, mut got) = admin.get("/admin/providers/inline").await;
    assert_eq!(status, 200);
    assert_eq!(got["api_key"], "[redacted]");
    assert!(!got.to_string().contains("sk-inline-roundtrip-1234"));
    got["weight"] = json!(3);
    let (status, body) = admin.put("/admin/providers/inline", &got).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state_kept"], true);
    assert_eq!(admin.get("/admin/providers/inline").await.1["weight"], 3);
    let (status, provider) = ask(&http, &base(&gw), "k").await;
    assert_eq!(
        (status, provider.as_str()),
        (200, "inline"),
        "the kept key works"
    );

    // PUT: the path names the provider.
    got["id"] = json!("other");
    let (status, body) = admin.put("/admin/providers/inline", &got).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "provider.id");
    let (status, body) = admin
        .put(
            "/admin/providers/nope",
            &json_provider("nope", &beta.base_url(), &[("x", "x")]),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "provider_not_found");
    assert_eq!(admin.delete("/admin/providers/nope").await.0, 404);
    assert_eq!(admin.get("/admin/providers/nope").await.0, 404);
    gw.stop().await;
}

#[tokio::test]
async fn admin_added_providers_are_restricted() {
    let alpha = openai_upstream("alpha").await;
    let keyed = openai_upstream_with_key("keyed", Some("sk-allowed-key-000000")).await;
    let toml = format!(
        "{FAST_MANAGER}\n[server]\ndynamic_key_envs = [\"ALLOWED_KEY\"]\n{}",
        toml_provider("alpha", &alpha.base_url(), &[("m", "m")], "")
    );
    let env = [
        ("ALLOWED_KEY", "sk-allowed-key-000000"),
        ("SECRET_ENV", "sk-must-stay-home-000000"),
    ];
    let gw = gateway_with_env(&toml, &env).await;
    let admin = Admin::new(&gw);

    let with = |field: &str, value: Value| {
        let mut body = json_provider("x", &keyed.base_url(), &[("x", "x")]);
        body[field] = value;
        body
    };
    let mut openai_secret =
        json!({"id": "x", "type": "openai", "api_key_env": "SECRET_ENV", "models": {"x": {}}});
    openai_secret["health_check"] = json!("none");
    let refused = [
        (
            with("api_key_env", json!("SECRET_ENV")),
            "provider.api_key_env",
        ),
        (openai_secret, "provider.api_key_env"),
        (
            with("base_url", json!("http://169.254.169.254/latest/meta-data")),
            "provider.base_url",
        ),
        (
            with("base_url", json!("https://169.254.169.254/v1")),
            "provider.base_url",
        ),
        (
            with("base_url", json!("http://169.254.10.20:8080/v1")),
            "provider.base_url",
        ),
        (
            with("base_url", json!("https://[fe80::1]/v1")),
            "provider.base_url",
        ),
        (
            with("base_url", json!("https://[fd00:ec2::254]/v1")),
            "provider.base_url",
        ),
        (
            with("base_url", json!("https://[::ffff:169.254.169.254]/v1")),
            "provider.base_url",
        ),
        (
            with("base_url", json!("http://2852039166/v1")),
            "provider.base_url",
        ),
        (
            with("base_url", json!("https://metadata.google.internal/v1")),
            "provider.base_url",
        ),
        (
            with("base_url", json!("http://example.com/v1")),
            "provider.base_url",
        ),
    ];
    for (body, field) in &refused {
        let (status, error) = admin.post("/admin/providers", body).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["param"], *field, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
        assert!(!message.contains("sk-must-stay-home"), "{message}");
    }
    let link_local = admin
        .post("/admin/providers", &refused[4].0)
        .await
        .1
        .to_string();
    assert!(link_local.contains("link-local"), "{link_local}");
    let metadata = admin
        .post("/admin/providers", &refused[2].0)
        .await
        .1
        .to_string();
    assert!(metadata.contains("metadata"), "{metadata}");
    assert_eq!(admin.provider_ids().await, ["alpha"]);

    // Allowed: a listed variable, http to loopback.
    let (status, body) = admin
        .post(
            "/admin/providers",
            &with("api_key_env", json!("ALLOWED_KEY")),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, provider) = ask(&client(), &base(&gw), "x").await;
    assert_eq!((status, provider.as_str()), (200, "x"));

    // A PUT may not point a provider somewhere forbidden either.
    let (_, mut alpha_config) = admin.get("/admin/providers/alpha").await;
    alpha_config["base_url"] = json!("http://169.254.169.254/v1");
    let (status, body) = admin.put("/admin/providers/alpha", &alpha_config).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "provider.base_url");
    gw.stop().await;

    // With an allowlist, only its hosts.
    let toml = format!(
        "{FAST_MANAGER}\n[server]\nupstream_allowlist = [\"127.0.0.1\", \"*.example.com\"]\n{}",
        toml_provider("alpha", &alpha.base_url(), &[("m", "m")], "")
    );
    let gw = gateway(&toml).await;
    let admin = Admin::new(&gw);
    let localhost = keyed.base_url().replace("127.0.0.1", "localhost");
    let (status, body) = admin
        .post(
            "/admin/providers",
            &json_provider("y", &localhost, &[("y", "y")]),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream_allowlist"),
        "{body}"
    );
    let mut anthropic = json!({"id": "z", "type": "anthropic", "api_key": "sk-ant-inline-0000", "models": {"c": {}}, "health_check": "none"});
    let (status, body) = admin.post("/admin/providers", &anthropic).await;
    assert_eq!(status, 400, "the type's default URL is checked too: {body}");
    assert_eq!(body["error"]["param"], "provider.type");
    anthropic["base_url"] = json!(keyed.base_url());
    assert_eq!(admin.post("/admin/providers", &anthropic).await.0, 201);
    gw.stop().await;
}

/// Sends chat requests to `model` until one is held at `gated`; returns its task.
async fn hold_one(
    gw: &TestGateway,
    gated: &GatedUpstream,
    model: &str,
) -> tokio::task::JoinHandle<(u16, String)> {
    for _ in 0..8 {
        let (http, url) = (client(), base(gw));
        let model = model.to_owned();
        let before = gated.in_flight();
        let task = tokio::spawn(async move { ask(&http, &url, &model).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if gated.in_flight() > before {
                return task;
            }
            if task.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (status, _) = task.await.unwrap();
        assert_eq!(status, 200);
    }
    panic!("no request reached the gated upstream");
}

#[tokio::test]
async fn disabling_a_provider_lets_its_slow_request_finish_and_sends_it_nothing_new() {
    let slow = gated_upstream("slow").await;
    let fast = openai_upstream("fast").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}\n{}",
        toml_provider("slow", &slow.base_url(), &[("m", "held")], ""),
        toml_provider("fast", &fast.base_url(), &[("m", "m")], "")
    );
    let gw = gateway(&toml).await;
    let admin = Admin::new(&gw);
    let held = hold_one(&gw, &slow, "m").await;

    let (_, mut config) = admin.get("/admin/providers/slow").await;
    config["enabled"] = json!(false);
    let (status, body) = admin.put("/admin/providers/slow", &config).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["provider"]["origin"], "override");
    let hits = slow.hits();
    let http = client();
    for _ in 0..20 {
        let (status, provider) = ask(&http, &base(&gw), "m").await;
        assert_eq!((status, provider.as_str()), (200, "fast"));
    }
    assert_eq!(
        slow.hits(),
        hits,
        "no new traffic reached the disabled provider"
    );
    assert_eq!(slow.in_flight(), 1, "the slow request is still running");

    slow.open();
    let (status, provider) = held.await.unwrap();
    assert_eq!((status, provider.as_str()), (200, "slow"));
    let (_, stats) = admin.get("/admin/stats").await;
    let row = stats["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["provider_id"] == "slow")
        .unwrap()
        .clone();
    assert_eq!(row["health"], "disabled");
    gw.stop().await;
}

#[tokio::test]
async fn removing_a_provider_under_traffic_from_8_clients_fails_no_request() {
    let one = openai_upstream("one").await;
    let two = openai_upstream("two").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}\n{}",
        toml_provider("one", &one.base_url(), &[("m", "m")], ""),
        toml_provider("two", &two.base_url(), &[("m", "m")], "")
    );
    let gw = gateway(&toml).await;
    let admin = Admin::new(&gw);
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, total, failures) = (stop.clone(), total.clone(), failures.clone());
        let (http, url) = (client(), base(&gw));
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (status, provider) = ask(&http, &url, "m").await;
                if status != 200 {
                    failures.lock().push(format!("{status} from {provider}"));
                }
                total.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let at_least = |n: usize| {
        let total = total.clone();
        move || {
            let done = total.load(Ordering::SeqCst) >= n;
            async move { done.then_some(()) }
        }
    };
    eventually(Duration::from_secs(20), "100 requests", at_least(100)).await;
    let (status, body) = admin.delete("/admin/providers/two").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"id": "two", "removed": true}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let two_after = two.generations();
    let removed_at = total.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(20),
        "400 more requests",
        at_least(removed_at + 400),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    assert!(failures.lock().is_empty(), "{:?}", failures.lock());
    assert!(two_after > 0);
    assert_eq!(
        two.generations(),
        two_after,
        "nothing reached the removed provider"
    );
    assert_eq!(admin.get("/admin/providers/two").await.0, 404);
    assert_eq!(admin.provider_ids().await, ["one"]);
    gw.stop().await;
}

#[tokio::test]
async fn reset_clears_an_open_circuit() {
    let flaky = openai_upstream("flaky").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}",
        toml_provider("flaky", &flaky.base_url(), &[("m", "status-503")], "")
    );
    let gw = gateway(&toml).await;
    let admin = Admin::new(&gw);
    let http = client();
    let health = |admin: Admin| async move {
        let (_, stats) = admin.get("/admin/stats").await;
        stats["data"][0]["health"].as_str().unwrap().to_owned()
    };
    for _ in 0..3 {
        let (status, _) = ask(&http, &base(&gw), "m").await;
        assert!(status >= 500, "{status}");
    }
    assert_eq!(health(admin.clone()).await, "unhealthy");
    let (status, body) = admin.post("/admin/providers/flaky/reset", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"provider_id": "flaky", "health": "healthy"}));
    assert_eq!(health(admin.clone()).await, "healthy");
    let (status, body) = admin.post("/admin/providers/nope/reset", &json!({})).await;
    assert_eq!(status, 404, "{body}");
    gw.stop().await;
}

const ADMIN_EVENTS: [&str; 5] = [
    "provider_added",
    "dynamic_provider_added",
    "provider_updated",
    "provider_reset",
    "provider_removed",
];

#[tokio::test]
async fn every_admin_action_is_an_event_in_order_and_recent_replays_them() {
    let alpha = openai_upstream("alpha").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}",
        toml_provider("alpha", &alpha.base_url(), &[("m", "m")], "")
    );
    let gw = gateway(&toml).await;
    let admin = Admin::new(&gw);
    let live = EventLog::open(&gw.url("/admin/events"), None).await;

    let beta = json_provider("beta", &alpha.base_url(), &[("b", "b")]);
    assert_eq!(admin.post("/admin/providers", &beta).await.0, 201);
    let mut changed = beta.clone();
    changed["weight"] = json!(2);
    assert_eq!(admin.put("/admin/providers/beta", &changed).await.0, 200);
    assert_eq!(
        admin
            .post("/admin/providers/beta/reset", &json!({}))
            .await
            .0,
        200
    );
    assert_eq!(admin.delete("/admin/providers/beta").await.0, 200);
    live.wait_for("provider_removed", |d| d["provider_id"] == "beta")
        .await;
    assert_eq!(live.names_among(&ADMIN_EVENTS), ADMIN_EVENTS);
    for (name, data) in live.events() {
        assert_eq!(data["type"], name.as_str(), "{data}");
        assert!(data["timestamp"].as_str().unwrap().ends_with('Z'), "{data}");
        if ADMIN_EVENTS.contains(&name.as_str()) {
            assert_eq!(data["provider_id"], "beta", "{data}");
        }
    }
    assert_eq!(
        live.events()
            .iter()
            .find(|(n, _)| n == "provider_updated")
            .unwrap()
            .1["state_kept"],
        true
    );

    // ?recent=N replays the ring first, then follows without repeating.
    let replay = EventLog::open(&gw.url("/admin/events?recent=1000"), None).await;
    let about_beta = |log: &EventLog| -> Vec<String> {
        log.events()
            .into_iter()
            .filter(|(n, d)| ADMIN_EVENTS.contains(&n.as_str()) && d["provider_id"] == "beta")
            .map(|(n, _)| n)
            .collect()
    };
    eventually(Duration::from_secs(5), "the replay", || {
        let done = about_beta(&replay).len() == ADMIN_EVENTS.len();
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(about_beta(&replay), ADMIN_EVENTS);
    let first = replay
        .events()
        .into_iter()
        .find(|(n, _)| n == "provider_added")
        .unwrap();
    assert_eq!(
        first.1["provider_id"], "alpha",
        "the file's providers came first"
    );
    let gamma = json_provider("gamma", &alpha.base_url(), &[("g", "g")]);
    assert_eq!(admin.post("/admin/providers", &gamma).await.0, 201);
    replay
        .wait_for("dynamic_provider_added", |d| d["provider_id"] == "gamma")
        .await;
    assert_eq!(about_beta(&replay), ADMIN_EVENTS, "nothing repeated");
    let short = EventLog::open(&gw.url("/admin/events?recent=1"), None).await;
    short
        .wait_for("dynamic_provider_added", |d| d["provider_id"] == "gamma")
        .await;
    assert_eq!(short.events().len(), 1);
    let (status, body) = admin.get("/admin/events?recent=lots").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "recent");
    gw.stop().await;
}

#[tokio::test]
async fn stats_rows_are_sorted_by_load_with_the_seed_fields_and_metrics_are_json() {
    let busy = gated_upstream("busy").await;
    let idle = openai_upstream("idle").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}\n{}",
        toml_provider(
            "busy",
            &busy.base_url(),
            &[("m", "held")],
            "max_concurrency = 2"
        ),
        toml_provider("idle", &idle.base_url(), &[("m2", "m2")], "")
    );
    let gw = gateway(&toml).await;
    let admin = Admin::new(&gw);
    let held = hold_one(&gw, &busy, "m").await;
    let (status, stats) = admin.get("/admin/stats").await;
    assert_eq!(status, 200);
    let rows = stats["data"].as_array().unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["provider_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["idle", "busy"], "least loaded first: {stats}");
    let loads: Vec<f64> = rows.iter().map(|r| r["load"].as_f64().unwrap()).collect();
    assert!(loads.windows(2).all(|w| w[0] <= w[1]), "{loads:?}");
    assert!(loads[0] < 5.0, "{loads:?}");
    assert!(loads[1] >= 35.0, "one of two slots in use: {loads:?}");
    assert_eq!(rows[1]["in_flight"], 1);
    for row in rows {
        for field in [
            "provider_id",
            "load",
            "health",
            "requests_per_minute",
            "average_response_time_ms",
            "in_flight",
            "success_rate",
        ] {
            assert!(row.get(field).is_some(), "{field} missing in {row}");
        }
    }
    busy.open();
    assert_eq!(held.await.unwrap().0, 200);

    let (status, metrics) = admin.get("/admin/metrics").await;
    assert_eq!(status, 200);
    for field in [
        "health_checks_run",
        "health_checks_failed",
        "provider_switches",
        "average_recovery_time_ms",
        "request_success_rate",
        "providers",
    ] {
        assert!(metrics.get(field).is_some(), "{field} missing in {metrics}");
    }
    assert_eq!(metrics["requests_succeeded"], 1, "{metrics}");
    gw.stop().await;
}

#[tokio::test]
async fn a_blue_green_split_of_90_10_holds_and_shifts_to_green_at_once() {
    let blue = openai_upstream("blue").await;
    let green = openai_upstream("green").await;
    let toml = format!(
        "{FAST_MANAGER}\n{}\n{}",
        toml_provider("blue", &blue.base_url(), &[("bg", "bg")], ""),
        toml_provider("green", &green.base_url(), &[("bg", "bg")], "")
    );
    let gw = gateway(&toml).await;
    let admin = Admin::new(&gw);
    assert_eq!(admin.get("/admin/routes/bg").await.0, 404);

    // Invalid routes are refused, naming the field.
    for (route, field) in [
        (
            json!({"sets": {"blue": ["blue"]}, "split": {"red": 1}}),
            "routes.\"bg\".split.red",
        ),
        (
            json!({"sets": {"blue": ["nope"]}, "split": {"blue": 1}}),
            "routes.\"bg\".sets.blue",
        ),
        (json!({"splitt": {}}), "routes.\"bg\".splitt"),
        (
            json!({"fallbacks": ["unknown-model"]}),
            "routes.\"bg\".fallbacks",
        ),
    ] {
        let (status, body) = admin.put("/admin/routes/bg", &route).await;
        assert_eq!(status, 400, "{route}: {body}");
        assert_eq!(body["error"]["param"], field, "{body}");
    }

    let split =
        json!({"sets": {"blue": ["blue"], "green": ["green"]}, "split": {"blue": 90, "green": 10}});
    let (status, body) = admin.put("/admin/routes/bg", &split).await;
    assert_eq!(status, 200, "{body}");
    let (_, route) = admin.get("/admin/routes/bg").await;
    assert_eq!(route["split"], split["split"]);
    assert_eq!(route["sets"], split["sets"]);
    let (_, list) = admin.get("/admin/routes").await;
    assert_eq!(list["data"][0]["model"], "bg");

    let counts = Arc::new(parking_lot::Mutex::new(HashMap::<String, usize>::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (counts, sent) = (counts.clone(), sent.clone());
        let (http, url) = (client(), base(&gw));
        workers.push(tokio::spawn(async move {
            while sent.fetch_add(1, Ordering::SeqCst) < 1000 {
                let (status, provider) = ask(&http, &url, "bg").await;
                assert_eq!(status, 200);
                *counts.lock().entry(provider).or_default() += 1;
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let counts = counts.lock().clone();
    let (b, g) = (counts["blue"], counts["green"]);
    assert_eq!(b + g, 1000, "{counts:?}");
    assert!((870..=930).contains(&b), "90/10 within ±3%: {counts:?}");

    // Shift everything to green under traffic.
    let stop = Arc::new(AtomicBool::new(false));
    let shifted = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicUsize::new(0));
    let after = Arc::new(parking_lot::Mutex::new(Vec::<(u16, String)>::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, shifted, total, after, failures) = (
            stop.clone(),
            shifted.clone(),
            total.clone(),
            after.clone(),
            failures.clone(),
        );
        let (http, url) = (client(), base(&gw));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let started_after_shift = shifted.load(Ordering::SeqCst);
                let (status, provider) = ask(&http, &url, "bg").await;
                if status != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                if started_after_shift {
                    after.lock().push((status, provider));
                }
                total.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let reached = |n: usize| {
        let total = total.clone();
        move || {
            let done = total.load(Ordering::SeqCst) >= n;
            async move { done.then_some(()) }
        }
    };
    eventually(Duration::from_secs(20), "traffic", reached(100)).await;
    let all_green =
        json!({"sets": {"blue": ["blue"], "green": ["green"]}, "split": {"blue": 0, "green": 100}});
    let (status, body) = admin.put("/admin/routes/bg", &all_green).await;
    assert_eq!(status, 200, "{body}");
    shifted.store(true, Ordering::SeqCst);
    let at_shift = total.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(20),
        "more traffic",
        reached(at_shift + 300),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no failed request");
    let after = after.lock().clone();
    assert!(after.len() >= 250, "{}", after.len());
    assert!(
        after.iter().all(|(s, p)| *s == 200 && p == "green"),
        "every request after the shift went to green"
    );
    assert_eq!(
        admin.get("/admin/overlay").await.1["route_overrides"],
        json!(["bg"])
    );

    // A provider in a set cannot be removed until the route lets it go.
    let (status, body) = admin.delete("/admin/providers/blue").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "provider_in_use");
    assert_eq!(admin.delete("/admin/routes/bg").await.0, 200);
    assert_eq!(admin.get("/admin/routes/bg").await.0, 404);
    assert_eq!(admin.delete("/admin/providers/blue").await.0, 200);
    gw.stop().await;
}
