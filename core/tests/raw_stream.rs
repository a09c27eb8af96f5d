//! Failover for native pass-through event streams (Anthropic Messages).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use common::config;
use futures_util::StreamExt;
use parking_lot::Mutex;
use switchyard_core::{
    CallContext, Capabilities, ChatRequest, ChatResponse, ChatStream, FailoverOptions, ModelInfo,
    Provider, ProviderError, ProviderManager, RawEvent, RawEventStream, RequestType,
};

/// What one native stream call does.
#[derive(Clone)]
enum Native {
    /// Fails before any event.
    Refuse(ProviderError),
    /// Sends these events, then ends or fails.
    Events(Vec<&'static str>, Option<ProviderError>),
}

struct NativeProvider {
    script: Mutex<VecDeque<Native>>,
}

fn event(name: &str) -> RawEvent {
    RawEvent {
        event: Some(name.to_owned()),
        data: format!("{{\"type\":\"{name}\"}}").into(),
    }
}

#[async_trait]
impl Provider for NativeProvider {
    fn kind(&self) -> &str {
        "anthropic"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            anthropic_native: true,
            ..Capabilities::ALL_OPENAI
        }
    }

    async fn chat(&self, _: ChatRequest, _: &CallContext) -> Result<ChatResponse, ProviderError> {
        Err(ProviderError::Unsupported { operation: "chat" })
    }

    async fn chat_stream(
        &self,
        _: ChatRequest,
        _: &CallContext,
    ) -> Result<ChatStream, ProviderError> {
        Err(ProviderError::Unsupported { operation: "chat" })
    }

    async fn messages_stream(
        &self,
        _: serde_json::Value,
        _: &CallContext,
    ) -> Result<RawEventStream, ProviderError> {
        let step = self
            .script
            .lock()
            .pop_front()
            .unwrap_or(Native::Events(vec!["message_start"], None));
        match step {
            Native::Refuse(error) => Err(error),
            Native::Events(names, end) => {
                let mut items: Vec<Result<RawEvent, ProviderError>> =
                    names.into_iter().map(|n| Ok(event(n))).collect();
                if let Some(error) = end {
                    items.push(Err(error));
                }
                Ok(Box::pin(futures_util::stream::iter(items)))
            }
        }
    }

    async fn list_models(&self, _: &CallContext) -> Result<Vec<ModelInfo>, ProviderError> {
        Ok(Vec::new())
    }

    async fn health_check(&self, _: &CallContext) -> Result<(), ProviderError> {
        Ok(())
    }
}

fn native(steps: Vec<Native>) -> Arc<NativeProvider> {
    Arc::new(NativeProvider {
        script: Mutex::new(steps.into()),
    })
}

fn starts_content(event: &RawEvent) -> bool {
    event.event.as_deref() == Some("content_block_delta")
}

async fn run(manager: &ProviderManager) -> (String, Vec<Result<String, ProviderError>>) {
    let result = manager
        .execute_raw_stream_with_failover(
            FailoverOptions::new("claude", RequestType::Chat),
            |attempt| async move {
                attempt
                    .provider
                    .messages_stream(serde_json::json!({}), &attempt.ctx)
                    .await
            },
            starts_content,
        )
        .await
        .unwrap();
    let items = result
        .result
        .map(|item| item.map(|e| e.event.unwrap_or_default()))
        .collect()
        .await;
    (result.provider_id.to_string(), items)
}

const OK: [&str; 5] = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "message_delta",
    "message_stop",
];

#[tokio::test(start_paused = true)]
async fn failures_before_content_fail_over_and_the_events_pass_through() {
    let failures = [
        Native::Refuse(ProviderError::upstream(
            529,
            "overloaded",
            Some("overloaded_error".into()),
            None,
        )),
        Native::Events(
            vec!["message_start", "ping"],
            Some(ProviderError::StreamCut { chunks: 2 }),
        ),
    ];
    for failure in failures {
        let a = native(vec![failure]);
        let b = native(vec![Native::Events(OK.to_vec(), None)]);
        let manager = ProviderManager::builder()
            .provider_instance(config("a", &["claude"]), a)
            .provider_instance(config("b", &["claude"]), b)
            .build()
            .unwrap();
        let (provider, events) = run(&manager).await;
        assert_eq!(provider, "b");
        let names: Vec<String> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(names, OK, "the failed attempt left no trace");
        let state = manager.deployment_state("a", "claude").unwrap();
        assert_eq!((state.consecutive_failures(), state.in_flight()), (1, 0));
    }
}

#[tokio::test(start_paused = true)]
async fn a_cut_after_content_reaches_the_caller_and_counts_against_the_deployment() {
    let a = native(vec![Native::Events(
        vec![
            "message_start",
            "content_block_start",
            "content_block_delta",
        ],
        Some(ProviderError::StreamCut { chunks: 3 }),
    )]);
    let manager = ProviderManager::builder()
        .provider_instance(config("a", &["claude"]), a)
        .build()
        .unwrap();
    let (_, events) = run(&manager).await;
    assert_eq!(events.len(), 4);
    assert_eq!(events[3], Err(ProviderError::StreamCut { chunks: 3 }));
    let state = manager.deployment_state("a", "claude").unwrap();
    assert_eq!((state.consecutive_failures(), state.in_flight()), (1, 0));
}
