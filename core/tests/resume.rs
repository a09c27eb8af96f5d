//! Stream resumption after content was sent: prefill, replay, auto, off (SPEC §5).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{chat, config, drain};
use futures_util::StreamExt;
use switchyard_core::StreamOptions;
use switchyard_core::testing::{ScriptedProvider, Step, StreamShape};
use switchyard_core::{
    EventKind, FailoverOptions, ProviderConfig, ProviderError, ProviderManager, RequestType,
    RouteConfig, StreamResume, Usage,
};
use tokio::time::Instant;

const ANSWER: &str = "one two three four five six seven eight";

struct Outcome {
    text: String,
    error: Option<ProviderError>,
    usage: Option<Usage>,
    provider: String,
    /// Chunks received, and how many of them still unparsed.
    chunks: usize,
    unparsed: usize,
}

async fn stream(manager: &ProviderManager, include_usage: bool) -> Outcome {
    let mut opts = FailoverOptions::new("m", RequestType::Chat);
    opts.estimated_input_tokens = 3;
    let mut result = manager
        .execute_stream_with_failover(opts, move |attempt| {
            let mut request = chat(&attempt.upstream_model);
            request.stream = true;
            if include_usage {
                request.stream_options = Some(StreamOptions {
                    include_usage: true,
                    ..StreamOptions::default()
                });
            }
            attempt.apply_resume(&mut request);
            async move { attempt.provider.chat_stream(request, &attempt.ctx).await }
        })
        .await
        .unwrap();
    let mut outcome = Outcome {
        text: String::new(),
        error: None,
        usage: None,
        provider: result.provider_id.to_string(),
        chunks: 0,
        unparsed: 0,
    };
    while let Some(item) = result.result.next().await {
        match item {
            Ok(chunk) => {
                outcome.chunks += 1;
                outcome.unparsed += usize::from(chunk.is_unparsed());
                outcome.text.push_str(&chunk.text());
                if chunk.usage.is_some() {
                    outcome.usage = chunk.usage.clone();
                }
            }
            Err(error) => {
                outcome.error = Some(error);
                assert!(
                    result.result.next().await.is_none(),
                    "nothing after an error"
                );
                break;
            }
        }
    }
    outcome
}

fn prefill(id: &str) -> ProviderConfig {
    let mut c = config(id, &["m"]);
    c.models.get_mut("m").unwrap().supports_prefill = true;
    c
}

fn build(
    providers: Vec<(ProviderConfig, Arc<ScriptedProvider>)>,
    mode: StreamResume,
) -> ProviderManager {
    let mut builder = ProviderManager::builder().route(
        "m",
        RouteConfig {
            stream_resume: mode,
            ..RouteConfig::default()
        },
    );
    for (c, p) in providers {
        builder = builder.provider_instance(c, p);
    }
    builder.build().unwrap()
}

fn cut_primary(shape: StreamShape) -> Arc<ScriptedProvider> {
    let p = ScriptedProvider::shared(ANSWER);
    p.always(Step::stream(shape));
    p
}

#[tokio::test(start_paused = true)]
async fn a_cut_stream_is_replayed_and_delivered_exactly_once() {
    let p = cut_primary(StreamShape::CutAfter(3));
    let q = ScriptedProvider::shared(ANSWER);
    let manager = build(
        vec![(config("p", &["m"]), p), (config("q", &["m"]), q.clone())],
        StreamResume::Auto,
    );
    let mut events = manager.events().subscribe();
    let outcome = stream(&manager, false).await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.text, ANSWER);
    assert_eq!(outcome.provider, "p", "the stream started on p");
    let resumed: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::StreamResumed {
                provider_id,
                mode,
                resumed_after_chars,
                ..
            } => Some((provider_id, mode, resumed_after_chars)),
            _ => None,
        })
        .collect();
    assert_eq!(
        resumed,
        [(
            "q".to_owned(),
            "replay".to_owned(),
            "one two three ".len() as u64
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn prefill_continues_where_the_cut_left_off() {
    let p = cut_primary(StreamShape::CutAfter(3));
    let q = ScriptedProvider::shared(ANSWER);
    let manager = build(
        vec![(config("p", &["m"]), p), (prefill("q"), q.clone())],
        StreamResume::Auto,
    );
    let mut events = manager.events().subscribe();
    let outcome = stream(&manager, false).await;
    assert_eq!((outcome.text.as_str(), outcome.error), (ANSWER, None));
    assert!(common::has(
        &drain(&mut events),
        |k| matches!(k, EventKind::StreamResumed { mode, .. } if mode == "prefill")
    ));
    assert_eq!(q.generation_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_prefill_rejection_falls_back_to_replay_and_is_never_the_final_error() {
    let p = cut_primary(StreamShape::CutAfter(4));
    let q = Arc::new(ScriptedProvider::new(ANSWER).rejecting_prefill());
    let manager = build(
        vec![(config("p", &["m"]), p), (prefill("q"), q.clone())],
        StreamResume::Auto,
    );
    let mut events = manager.events().subscribe();
    let outcome = stream(&manager, false).await;
    assert_eq!((outcome.text.as_str(), outcome.error), (ANSWER, None));
    assert_eq!(q.generation_calls(), 2, "one rejected prefill, one replay");
    assert!(common::has(
        &drain(&mut events),
        |k| matches!(k, EventKind::StreamResumed { mode, .. } if mode == "replay")
    ));
}

#[tokio::test(start_paused = true)]
async fn when_no_resumption_works_the_error_names_the_cut() {
    let p = cut_primary(StreamShape::CutAfter(4));
    let q = Arc::new(ScriptedProvider::new(ANSWER).rejecting_prefill());
    let manager = build(
        vec![(config("p", &["m"]), p), (prefill("q"), q)],
        StreamResume::Prefill,
    );
    let outcome = stream(&manager, false).await;
    assert_eq!(outcome.text, "one two three four ");
    assert_eq!(outcome.error, Some(ProviderError::StreamCut { chunks: 5 }));
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_content_is_detected_and_resumed() {
    let p = cut_primary(StreamShape::StallAfter(2));
    let q = ScriptedProvider::shared(ANSWER);
    let manager = build(
        vec![(config("p", &["m"]), p), (config("q", &["m"]), q)],
        StreamResume::Auto,
    );
    let started = Instant::now();
    let outcome = stream(&manager, false).await;
    assert_eq!((outcome.text.as_str(), outcome.error), (ANSWER, None));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(10),
        "the idle timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn off_ends_a_cut_stream_with_an_explicit_error() {
    let p = cut_primary(StreamShape::CutAfter(3));
    let q = ScriptedProvider::shared(ANSWER);
    let manager = build(
        vec![(config("p", &["m"]), p), (config("q", &["m"]), q.clone())],
        StreamResume::Off,
    );
    let outcome = stream(&manager, false).await;
    assert_eq!(outcome.text, "one two three ");
    assert!(matches!(
        outcome.error,
        Some(ProviderError::StreamCut { .. })
    ));
    assert_eq!(q.generation_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_replay_that_diverges_ends_with_an_error_not_a_seam() {
    let p = cut_primary(StreamShape::CutAfter(3));
    let q = ScriptedProvider::shared("one two THREE four five");
    let manager = build(
        vec![(config("p", &["m"]), p), (config("q", &["m"]), q)],
        StreamResume::Replay,
    );
    let outcome = stream(&manager, false).await;
    assert_eq!(outcome.text, "one two three ");
    match outcome.error {
        Some(ProviderError::Protocol { message }) => {
            assert!(message.contains("replay diverged"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn chunks_of_the_usual_shape_pass_the_managers_layers_unparsed() {
    let p = ScriptedProvider::shared(ANSWER);
    let manager = build(vec![(config("p", &["m"]), p)], StreamResume::Auto);
    let outcome = stream(&manager, true).await;
    assert_eq!(outcome.text, ANSWER);
    assert_eq!(outcome.usage.map(|u| u.completion_tokens), Some(8));
    // The role chunk, eight words, the finish and the usage chunk: none
    // was parsed on its way through timing, the call guard and resumption.
    assert_eq!((outcome.chunks, outcome.unparsed), (11, 11));
}

#[tokio::test(start_paused = true)]
async fn a_resumed_streams_usage_is_the_sum_of_its_attempts() {
    let p = cut_primary(StreamShape::CutAfter(3));
    let q = ScriptedProvider::shared(ANSWER);
    let manager = build(
        vec![(config("p", &["m"]), p), (config("q", &["m"]), q)],
        StreamResume::Replay,
    );
    let outcome = stream(&manager, true).await;
    assert_eq!(outcome.text, ANSWER);
    let usage = outcome.usage.unwrap();
    // Cut attempt: 3 prompt (estimate) + 3 content chunks; replay: its own report.
    let replay_prompt = u64::from(chat("m").estimated_prompt_tokens());
    assert_eq!(usage.completion_tokens, 3 + 8);
    assert_eq!(usage.prompt_tokens, 3 + replay_prompt);
}

#[tokio::test(start_paused = true)]
async fn an_in_band_error_after_content_is_resumed_too() {
    let p = cut_primary(StreamShape::ErrorAfter(
        2,
        ProviderError::InBand(Box::new(switchyard_core::UpstreamError::from_status(
            529,
            "overloaded",
            Some("overloaded_error".into()),
            None,
        ))),
    ));
    let q = ScriptedProvider::shared(ANSWER);
    let manager = build(
        vec![(config("p", &["m"]), p), (config("q", &["m"]), q)],
        StreamResume::Auto,
    );
    let outcome = stream(&manager, false).await;
    assert_eq!((outcome.text.as_str(), outcome.error), (ANSWER, None));
}
