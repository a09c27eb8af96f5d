//! Shared fixtures for core's integration tests: managers over scripted providers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use switchyard_core::testing::ScriptedProvider;
use switchyard_core::{
    ChatMessage, ChatRequest, EventKind, ManagerBuilder, ProviderConfig, ProviderEvent,
    ProviderManager, Received, Subscription,
};

/// A provider config of type `mock` serving `models`.
pub fn config(id: &str, models: &[&str]) -> ProviderConfig {
    ProviderConfig::new(id, "mock", models.iter().copied())
}

/// A builder with `providers` (id, models) as scripted providers replying `from <id>`.
pub fn builder_with(providers: &[(&str, &[&str])]) -> (ManagerBuilder, Vec<Arc<ScriptedProvider>>) {
    let mut builder = ProviderManager::builder();
    let mut scripts = Vec::new();
    for (id, models) in providers {
        let script = ScriptedProvider::shared(format!("from {id}"));
        builder = builder.provider_instance(config(id, models), script.clone());
        scripts.push(script);
    }
    (builder, scripts)
}

/// A chat request for `model`.
pub fn chat(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.to_owned(),
        messages: vec![ChatMessage::text("user", "hello")],
        ..ChatRequest::default()
    }
}

/// Every event waiting on `sub`, as event names.
pub fn names(sub: &mut Subscription<ProviderEvent>) -> Vec<&'static str> {
    drain(sub).iter().map(|e| e.kind.name()).collect()
}

/// Every event waiting on `sub`.
pub fn drain(sub: &mut Subscription<ProviderEvent>) -> Vec<ProviderEvent> {
    sub.drain()
        .into_iter()
        .map(|r| match r {
            Received::Event(e) => e,
            Received::Lagged(n) => panic!("lost {n} events"),
        })
        .collect()
}

/// Whether `events` contain one of `kind`'s name.
pub fn has(events: &[ProviderEvent], pred: impl Fn(&EventKind) -> bool) -> bool {
    events.iter().any(|e| pred(&e.kind))
}
