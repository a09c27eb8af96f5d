//! `cargo xtask chaos`: the 16 real-world faults of issue 7 against the real server, scored.
//!
//! One fault-injecting upstream ([`crate::upstream`]) plays two providers:
//! `faulty` (the primary: one model per fault) and `backup` (the fallback
//! model every route names). Each fault sends one streaming request with
//! `stream_options.include_usage`, records what the caller received
//! (status, headers, text, `[DONE]`, error events, usage, time) and what the
//! upstream saw (attempts and their times), and scores it:
//! - *pass*: the ideal outcome (the canonical answer exactly once, or for
//!   fault 13 the clean error) with every conduct check clean;
//! - *safe*: a clean, explicit error instead of the answer;
//! - *fail*: anything else (a truncated stream that looks complete, text
//!   twice, a hang, a wrong attempt count ...).
//!
//! Faults 8, 9 and 14 also run with `stream_resume = off`, where *safe* is
//! the expected score. `--quick` shortens every wait; its time bounds keep
//! at least 2× slack over the configured timeouts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::gateway::{Gateway, free_port};
use crate::upstream::{Timings, Upstream, canonical_text, openai_provider};

/// What to run.
pub struct Options {
    /// Shortened waits for CI.
    pub quick: bool,
    /// Only these faults.
    pub only: Option<Vec<u32>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Pass,
    Safe,
    Fail,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Safe => "safe",
            Self::Fail => "FAIL",
        }
    }
}

struct Score {
    id: String,
    name: &'static str,
    verdict: Verdict,
    expected: Verdict,
    elapsed: Duration,
    reason: String,
}

/// Timeouts configured on the gateway, per mode.
#[derive(Clone, Copy)]
struct Limits {
    first_token: Duration,
    idle: Duration,
    request_every: Duration,
    recovery_bound: Duration,
    run_for: Duration,
}

/// What the caller received.
#[derive(Debug, Default)]
struct Observed {
    status: u16,
    provider: Option<String>,
    model_header: Option<String>,
    attempts: Option<u32>,
    text: String,
    done: bool,
    error_event: Option<Value>,
    error_body: Option<Value>,
    usage: Option<Value>,
    chunk_models: Vec<String>,
    garbage: Vec<String>,
    elapsed: Duration,
}

async fn stream_request(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    prompt: &str,
) -> Observed {
    let started = Instant::now();
    let mut seen = Observed::default();
    let body = json!({
        "model": model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": prompt}],
    });
    let response = match client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => {
            seen.garbage.push(format!("request failed: {e}"));
            seen.elapsed = started.elapsed();
            return seen;
        }
    };
    seen.status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    seen.provider = header("x-switchyard-provider");
    seen.model_header = header("x-switchyard-model");
    seen.attempts = header("x-switchyard-attempts").and_then(|a| a.parse().ok());
    if seen.status != 200 {
        seen.error_body = response.json().await.ok();
        seen.elapsed = started.elapsed();
        return seen;
    }
    let mut bytes = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(piece) = bytes.next().await {
        let Ok(piece) = piece else {
            seen.garbage.push("the response body broke off".to_owned());
            break;
        };
        buffer.push_str(&String::from_utf8_lossy(&piece));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim_start();
                if data == "[DONE]" {
                    seen.done = true;
                    continue;
                }
                match serde_json::from_str::<Value>(data) {
                    Ok(value) if value.get("error").is_some() => seen.error_event = Some(value),
                    Ok(value) => {
                        if let Some(model) = value["model"].as_str() {
                            seen.chunk_models.push(model.to_owned());
                        }
                        if let Some(choices) = value["choices"].as_array() {
                            for choice in choices {
                                if let Some(text) = choice["delta"]["content"].as_str() {
                                    seen.text.push_str(text);
                                }
                            }
                        }
                        if !value["usage"].is_null() {
                            seen.usage = Some(value["usage"].clone());
                        }
                    }
                    Err(_) => seen.garbage.push(data.chars().take(60).collect()),
                }
            }
        }
    }
    seen.elapsed = started.elapsed();
    seen
}

fn config(gateway_port: u16, upstream_port: u16, limits: Limits) -> String {
    let mut toml = format!(
        r#"[server]
listen = "127.0.0.1:{gateway_port}"

[manager]
first_token_timeout = "{ft}ms"
stream_idle_timeout = "{idle}ms"
max_retries = 3
"#,
        ft = limits.first_token.as_millis(),
        idle = limits.idle.as_millis(),
    );
    let primaries: Vec<String> = (1..=16)
        .map(|n| format!("fault-{n}"))
        .chain(["fault-8-off", "fault-9-off", "fault-14-off"].map(str::to_owned))
        .collect();
    toml.push_str(&openai_provider("faulty", upstream_port, &primaries));
    toml.push_str(&openai_provider(
        "backup",
        upstream_port,
        &["backup", "healthy", "backup-prefill"],
    ));
    // Belongs to the last model table: `backup-prefill`.
    toml.push_str("supports_prefill = true\n");
    for model in &primaries {
        let fallback = if model.starts_with("fault-14") {
            "backup-prefill"
        } else {
            "backup"
        };
        toml.push_str(&format!(
            "\n[routes.\"{model}\"]\nfallbacks = [\"{fallback}\"]\n"
        ));
        if model == "fault-12" {
            toml.push_str("context_window_fallbacks = [\"backup\"]\n");
        }
        if model.ends_with("-off") {
            toml.push_str("stream_resume = \"off\"\n");
        }
    }
    toml
}

struct Ctx {
    client: reqwest::Client,
    base: String,
    upstream: Arc<Upstream>,
    limits: Limits,
    timings: Timings,
    quick: bool,
}

impl Ctx {
    fn prompt(&self, id: &str) -> String {
        format!("chaos fault {id} run {}", self.upstream.now().as_nanos())
    }
}

/// Checks that fail a fault, collected with their reasons.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn expect(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    fn clean(&self) -> bool {
        self.0.is_empty()
    }

    fn reason(&self) -> String {
        self.0.join("; ")
    }
}

fn answered(checks: &mut Checks, seen: &Observed, canonical: &str, by: &[&str]) {
    checks.expect(seen.status == 200, format!("status {}", seen.status));
    checks.expect(
        seen.provider.as_deref().is_some_and(|p| by.contains(&p)),
        format!("served by {:?}, expected one of {by:?}", seen.provider),
    );
    checks.expect(seen.text == canonical, describe_text(&seen.text, canonical));
    checks.expect(seen.done, "no [DONE]");
    checks.expect(
        seen.error_event.is_none(),
        format!("error event {:?}", seen.error_event),
    );
    checks.expect(
        seen.garbage.is_empty(),
        format!("garbled data {:?}", seen.garbage),
    );
}

fn describe_text(text: &str, canonical: &str) -> String {
    if text.len() > canonical.len() {
        format!(
            "text repeated or extended ({} of {} bytes)",
            text.len(),
            canonical.len()
        )
    } else if canonical.starts_with(text) {
        format!("partial text ({} of {} bytes)", text.len(), canonical.len())
    } else {
        "text differs from the canonical answer".to_owned()
    }
}

fn score(
    id: &str,
    name: &'static str,
    checks: &Checks,
    seen: &Observed,
    expected: Verdict,
) -> Score {
    Score {
        id: id.to_owned(),
        name,
        verdict: if checks.clean() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        expected,
        elapsed: seen.elapsed,
        reason: if checks.clean() {
            "ok".to_owned()
        } else {
            checks.reason()
        },
    }
}

/// Scores a stream that may be resumed: pass (whole answer once), safe
/// (explicit error, partial text that is a prefix, no [DONE]) or fail.
fn score_resumable(
    id: &str,
    name: &'static str,
    seen: &Observed,
    canonical: &str,
    extra: Checks,
    expected: Verdict,
) -> Score {
    let mut verdict = Verdict::Fail;
    let mut reason = String::new();
    if seen.status == 200
        && seen.text == canonical
        && seen.done
        && seen.error_event.is_none()
        && seen.garbage.is_empty()
    {
        verdict = Verdict::Pass;
        reason.push_str("whole answer, exactly once");
    } else if seen.error_event.is_some() && !seen.done && canonical.starts_with(seen.text.as_str())
    {
        verdict = Verdict::Safe;
        let message = seen
            .error_event
            .as_ref()
            .map(|e| e["error"]["message"].to_string())
            .unwrap_or_default();
        reason = format!("explicit error after {} bytes: {message}", seen.text.len());
    } else {
        reason = format!(
            "{}; done={} error={:?}",
            describe_text(&seen.text, canonical),
            seen.done,
            seen.error_event
        );
    }
    if !extra.clean() {
        verdict = Verdict::Fail;
        reason = format!("{reason}; {}", extra.reason());
    }
    Score {
        id: id.to_owned(),
        name,
        verdict,
        expected,
        elapsed: seen.elapsed,
        reason,
    }
}

async fn fault(ctx: &Ctx, n: u32) -> Score {
    let id = n.to_string();
    let model = format!("fault-{n}");
    let prompt = ctx.prompt(&id);
    let canonical = canonical_text(&prompt);
    let run = prompt.rsplit(' ').next().unwrap_or_default().to_owned();
    let max_attempts = 4;
    let mut checks = Checks::default();
    let two_x = |d: Duration| d * 2 + Duration::from_secs(1);
    match n {
        1 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            answered(&mut checks, &seen, &canonical, &["faulty"]);
            let tries = ctx.upstream.seen(&model, &run);
            checks.expect(
                tries.len() == 2,
                format!("{} primary attempts, expected 2", tries.len()),
            );
            if let [first, second, ..] = tries.as_slice() {
                let gap = second.at - first.at;
                checks.expect(
                    gap >= Duration::from_millis(1_800),
                    format!("retried after {gap:?}, before Retry-After"),
                );
            }
            score(
                &id,
                "429 Retry-After: 2 once",
                &checks,
                &seen,
                Verdict::Pass,
            )
        }
        2 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            answered(&mut checks, &seen, &canonical, &["backup"]);
            let tries = ctx.upstream.seen(&model, &run);
            checks.expect(
                tries.len() <= max_attempts,
                format!("{} primary attempts", tries.len()),
            );
            if let Some(first) = tries.first() {
                let early = tries
                    .iter()
                    .filter(|t| t.at - first.at <= Duration::from_secs(3))
                    .count();
                checks.expect(early <= 4, format!("{early} attempts in the first 3 s"));
            }
            score(
                &id,
                "429 without Retry-After, always",
                &checks,
                &seen,
                Verdict::Pass,
            )
        }
        3 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            answered(&mut checks, &seen, &canonical, &["faulty"]);
            let tries = ctx.upstream.seen(&model, &run).len();
            checks.expect(tries == 2, format!("{tries} primary attempts, expected 2"));
            score(&id, "500 once", &checks, &seen, Verdict::Pass)
        }
        4 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            answered(&mut checks, &seen, &canonical, &["backup"]);
            let tries = ctx.upstream.seen(&model, &run).len();
            checks.expect(
                (1..=max_attempts).contains(&tries),
                format!("{tries} primary attempts"),
            );
            score(&id, "503 always", &checks, &seen, Verdict::Pass)
        }
        5 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            answered(&mut checks, &seen, &canonical, &["faulty", "backup"]);
            let tries = ctx.upstream.seen(&model, &run).len();
            checks.expect(tries <= 2, format!("{tries} primary attempts"));
            score(
                &id,
                "reset before any byte, once",
                &checks,
                &seen,
                Verdict::Pass,
            )
        }
        6 | 7 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            answered(&mut checks, &seen, &canonical, &["backup"]);
            let tries = ctx.upstream.seen(&model, &run).len();
            checks.expect(
                tries == 1,
                format!("{tries} primary attempts: a silent provider was retried"),
            );
            let bound = if ctx.quick {
                two_x(ctx.limits.first_token)
            } else {
                Duration::from_secs(15)
            };
            checks.expect(
                seen.elapsed <= bound,
                format!("answered after {:?} (bound {bound:?})", seen.elapsed),
            );
            let name = if n == 6 {
                "accepted, never answered"
            } else {
                "first token after 20 s"
            };
            score(&id, name, &checks, &seen, Verdict::Pass)
        }
        8 | 14 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            let mut extra = Checks::default();
            extra.expect(seen.status == 200, format!("status {}", seen.status));
            if let Some(error) = &seen.error_event {
                let message = error["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_lowercase();
                extra.expect(
                    !message.contains("prefill"),
                    "the prefill rejection became the final error",
                );
            }
            let name = if n == 8 {
                "stream cut at 40 of 60"
            } else {
                "cut, fallback rejects prefill"
            };
            score_resumable(&id, name, &seen, &canonical, extra, Verdict::Pass)
        }
        9 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            let mut extra = Checks::default();
            let bound = if ctx.quick {
                two_x(ctx.limits.idle) + Duration::from_secs(2)
            } else {
                Duration::from_secs(45)
            };
            extra.expect(
                seen.elapsed <= bound,
                format!("took {:?} (bound {bound:?})", seen.elapsed),
            );
            let after =
                stream_request(&ctx.client, &ctx.base, "healthy", &ctx.prompt("9-after")).await;
            extra.expect(
                after.status == 200 && after.done,
                "the gateway was not healthy afterwards",
            );
            score_resumable(
                &id,
                "stall after 20 tokens",
                &seen,
                &canonical,
                extra,
                Verdict::Pass,
            )
        }
        10 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            answered(&mut checks, &seen, &canonical, &["faulty"]);
            score(&id, "one malformed event", &checks, &seen, Verdict::Pass)
        }
        11 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            answered(&mut checks, &seen, &canonical, &["faulty"]);
            checks.expect(seen.usage.is_some(), "usage not forwarded");
            checks.expect(
                seen.elapsed < Duration::from_secs(8),
                format!("finalised after {:?}", seen.elapsed),
            );
            score(&id, "complete, no [DONE]", &checks, &seen, Verdict::Pass)
        }
        12 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            answered(&mut checks, &seen, &canonical, &["backup"]);
            let tries = ctx.upstream.seen(&model, &run).len();
            checks.expect(tries == 1, format!("{tries} primary attempts, expected 1"));
            score(
                &id,
                "400 context_length_exceeded",
                &checks,
                &seen,
                Verdict::Pass,
            )
        }
        13 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            checks.expect(seen.status == 400, format!("status {}", seen.status));
            let message = seen
                .error_body
                .as_ref()
                .and_then(|b| b["error"]["message"].as_str())
                .unwrap_or_default()
                .to_owned();
            checks.expect(
                message.contains("safety system"),
                format!("message {message:?}"),
            );
            let tries = ctx.upstream.seen(&model, &run).len();
            checks.expect(tries == 1, format!("{tries} primary attempts, expected 1"));
            let fallback = ctx.upstream.seen("backup", &run).len();
            checks.expect(fallback == 0, "fell back after a content-policy rejection");
            score(&id, "400 content policy", &checks, &seen, Verdict::Pass)
        }
        15 => flapping_primary(ctx, &id).await,
        16 => {
            let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
            answered(&mut checks, &seen, &canonical, &["backup"]);
            checks.expect(
                seen.model_header.as_deref() == Some("backup"),
                format!("x-switchyard-model {:?}", seen.model_header),
            );
            checks.expect(
                !seen.chunk_models.is_empty() && seen.chunk_models.iter().all(|m| m == "backup"),
                format!("chunk models {:?}", seen.chunk_models.first()),
            );
            let completion = seen
                .usage
                .as_ref()
                .and_then(|u| u["completion_tokens"].as_u64());
            checks.expect(completion == Some(60), format!("usage {:?}", seen.usage));
            let metrics = ctx
                .client
                .get(format!("{}/metrics", ctx.base))
                .send()
                .await
                .ok();
            let metrics = match metrics {
                Some(r) => r.text().await.unwrap_or_default(),
                None => String::new(),
            };
            let billed = metrics.lines().any(|l| {
                l.starts_with("switchyard_tokens_total")
                    && l.contains("provider=\"faulty\"")
                    && l.contains("fault-16")
                    && !l.trim_end().ends_with(" 0")
            });
            checks.expect(!metrics.is_empty(), "no /metrics");
            checks.expect(!billed, "failed attempts were billed");
            score(
                &id,
                "503 always: response names the fallback",
                &checks,
                &seen,
                Verdict::Pass,
            )
        }
        _ => Score {
            id,
            name: "unknown",
            verdict: Verdict::Fail,
            expected: Verdict::Pass,
            elapsed: Duration::ZERO,
            reason: "no such fault".to_owned(),
        },
    }
}

async fn off_variant(ctx: &Ctx, n: u32) -> Score {
    let id = format!("{n}-off");
    let model = format!("fault-{n}-off");
    let prompt = ctx.prompt(&id);
    let canonical = canonical_text(&prompt);
    let seen = stream_request(&ctx.client, &ctx.base, &model, &prompt).await;
    let name = match n {
        8 => "cut, stream_resume = off",
        9 => "stall, stream_resume = off",
        _ => "cut + prefill, stream_resume = off",
    };
    score_resumable(
        &id,
        name,
        &seen,
        &canonical,
        Checks::default(),
        Verdict::Safe,
    )
}

/// Fault 15: the primary answers 503 for a while, then recovers.
async fn flapping_primary(ctx: &Ctx, id: &str) -> Score {
    let model = "fault-15";
    let started = Instant::now();
    let outage = ctx.timings.outage;
    let mut checks = Checks::default();
    let mut timeline = Vec::new();
    let run = format!("flap-{}", ctx.upstream.now().as_nanos());
    let mut i = 0;
    while started.elapsed() < ctx.limits.run_for {
        let prompt = format!("chaos fault 15 {run} request {i}");
        let at = started.elapsed();
        let seen = stream_request(&ctx.client, &ctx.base, model, &prompt).await;
        checks.expect(
            seen.status == 200 && seen.text == canonical_text(&prompt) && seen.done,
            format!(
                "request {i} at {at:?} failed: status {} done {}",
                seen.status, seen.done
            ),
        );
        timeline.push((at, seen.provider.clone().unwrap_or_default(), seen.elapsed));
        i += 1;
        tokio::time::sleep(ctx.limits.request_every.saturating_sub(seen.elapsed)).await;
    }
    let attempts = ctx.upstream.seen(model, &run);
    // The outage starts at the first request to the primary.
    let first = attempts.first().map(|s| s.at).unwrap_or_default();
    let recovered_at = first + outage;
    let during: Vec<_> = attempts.iter().filter(|s| s.at < recovered_at).collect();
    let ejection_probes = outage.as_secs() / 5 + 1;
    checks.expect(
        during.len() as u64 <= 3 + ejection_probes,
        format!(
            "{} primary attempts during the outage: not backing off",
            during.len()
        ),
    );
    let slow = timeline
        .iter()
        .filter(|(at, _, took)| {
            *at + started_offset(&started, first, ctx) < recovered_at
                && *took > Duration::from_secs(2)
        })
        .count();
    checks.expect(
        slow == 0,
        format!("{slow} requests waited on the primary during the outage"),
    );
    let back = timeline
        .iter()
        .find(|(at, provider, _)| *at >= outage && provider == "faulty")
        .map(|(at, _, _)| *at);
    match back {
        Some(at) => {
            let after = at.saturating_sub(outage);
            checks.expect(
                after <= ctx.limits.recovery_bound,
                format!(
                    "traffic returned {after:?} after recovery (bound {:?})",
                    ctx.limits.recovery_bound
                ),
            );
        }
        None => checks.expect(false, "traffic never returned to the primary"),
    }
    let probed = attempts
        .iter()
        .any(|s| s.at > first + Duration::from_secs(4) && s.at < recovered_at);
    checks.expect(probed, "the primary was never probed during the outage");
    let seen = Observed {
        elapsed: started.elapsed(),
        ..Observed::default()
    };
    let mut result = score(
        id,
        "503 for a while, then recovers",
        &checks,
        &seen,
        Verdict::Pass,
    );
    if checks.clean() {
        result.reason = format!(
            "{} requests; {} primary attempts in the outage; back on the primary {:?} after recovery",
            timeline.len(),
            during.len(),
            back.map(|b| b.saturating_sub(outage)).unwrap_or_default()
        );
    }
    result
}

/// The fault-15 client clock starts with the harness; the upstream's clock
/// started earlier. Both only need to agree on order, so no offset is used.
fn started_offset(_started: &Instant, _first: Duration, _ctx: &Ctx) -> Duration {
    Duration::ZERO
}

/// Runs the faults and prints the scorecard; `Ok(true)` when every fault scored as required.
pub async fn run(root: &Path, server: &Path, options: Options) -> Result<bool, String> {
    let quick = options.quick;
    let timings = if quick {
        Timings {
            slow_first_token: Duration::from_secs(6),
            stall: Duration::from_secs(8),
            outage: Duration::from_secs(12),
            word_gap: Duration::from_millis(2),
        }
    } else {
        Timings {
            slow_first_token: Duration::from_secs(20),
            stall: Duration::from_secs(30),
            outage: Duration::from_secs(60),
            word_gap: Duration::from_millis(2),
        }
    };
    let limits = if quick {
        Limits {
            first_token: Duration::from_secs(2),
            idle: Duration::from_secs(2),
            request_every: Duration::from_secs(1),
            recovery_bound: Duration::from_secs(20),
            run_for: Duration::from_secs(32),
        }
    } else {
        Limits {
            first_token: Duration::from_secs(10),
            idle: Duration::from_secs(10),
            request_every: Duration::from_secs(4),
            recovery_bound: Duration::from_secs(30),
            run_for: Duration::from_secs(100),
        }
    };
    let total = Instant::now();
    let (upstream, upstream_port) = Upstream::start(timings)
        .await
        .map_err(|e| format!("cannot start the fault upstream: {e}"))?;
    let port = free_port()?;
    let gateway = Gateway::start(
        root,
        server,
        "chaos",
        port,
        &config(port, upstream_port, limits),
    )
    .await?;
    let ctx = Arc::new(Ctx {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| format!("cannot build the client: {e}"))?,
        base: gateway.base.clone(),
        upstream,
        limits,
        timings,
        quick,
    });
    let wanted = |n: u32| options.only.as_ref().is_none_or(|only| only.contains(&n));
    let mut tasks = Vec::new();
    for n in (1..=16).filter(|n| wanted(*n)) {
        let ctx = Arc::clone(&ctx);
        tasks.push(tokio::spawn(async move { fault(&ctx, n).await }));
    }
    for n in [8, 9, 14].into_iter().filter(|n| wanted(*n)) {
        let ctx = Arc::clone(&ctx);
        tasks.push(tokio::spawn(async move { off_variant(&ctx, n).await }));
    }
    let mut scores = Vec::new();
    for task in tasks {
        scores.push(task.await.map_err(|e| format!("a fault task died: {e}"))?);
    }
    drop(gateway);
    let mode = if quick { "quick" } else { "full" };
    println!("\n## Switchyard chaos scorecard ({mode} mode)\n");
    println!("| fault | scenario | score | expected | time | detail |");
    println!("|---|---|---|---|---|---|");
    let mut ok = true;
    for s in &scores {
        let good = s.verdict == s.expected;
        ok &= good;
        println!(
            "| {} | {} | {} | {} | {:.1} s | {} |",
            s.id,
            s.name,
            s.verdict.as_str(),
            s.expected.as_str(),
            s.elapsed.as_secs_f64(),
            s.reason.replace('|', "/")
        );
    }
    let passed = scores.iter().filter(|s| s.verdict == s.expected).count();
    println!(
        "\n{passed} of {} scored as required; total run time {:.1} s",
        scores.len(),
        total.elapsed().as_secs_f64()
    );
    Ok(ok)
}
