//! `GET /admin/events`: the manager's events as server-sent events (SPEC §8, §11), with `?recent=N` replaying the ring first.
//!
//! One SSE message per event: `event: <name>` and `data: <JSON>`, the JSON
//! carrying `"type": "<name>"`, `timestamp`, ids and details. With
//! `?recent=N` the last N kept events are sent first, then live ones; the
//! replay and the subscription are taken atomically, so nothing is missed
//! or repeated. A subscriber too slow to keep up gets
//! `event: events_lost` with `{"type": "events_lost", "lost": <count>}`
//! and continues with the oldest event still kept. A `: keep-alive`
//! comment is sent every 15 seconds of silence. The stream ends when the
//! server starts draining, so it never holds up a graceful shutdown.
//! Events carry no secrets; their text still goes through the redactor.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use switchyard_core::{BusEvent, ProviderEvent, Received, Subscription};

use crate::app::AppState;
use crate::error::{ApiError, Redactor};
use crate::sse;

/// Silence after which a keep-alive comment is sent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

type Closed = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
type Live = (Subscription<ProviderEvent>, Redactor, Closed);

/// One event as an SSE message.
pub fn frame(event: &ProviderEvent, redactor: &Redactor) -> String {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    sse::event(Some(event.name()), &redactor.redact(&data))
}

fn lost(count: u64) -> String {
    sse::event(
        Some("events_lost"),
        &json!({"type": "events_lost", "lost": count}).to_string(),
    )
}

/// `GET /admin/events[?recent=N]`.
pub async fn stream(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let params = crate::admin::handlers::query_params(query.as_deref());
    let recent = match params.get("recent").map(|v| v.trim().parse::<usize>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return ApiError::invalid_request(
                "Query parameter `recent` must be a non-negative integer.",
            )
            .with_param("recent")
            .into_response();
        }
    };
    let bus = state.manager.events();
    let (replay, subscription) = match recent {
        Some(n) => bus.recent_and_subscribe(n),
        None => (Vec::new(), bus.subscribe()),
    };
    let redactor = state.redactor.clone();
    let closed: Closed = Box::pin(state.control.closed());
    let mut head = vec![": switchyard events\n\n".to_owned()];
    head.extend(replay.iter().map(|event| frame(event, &redactor)));
    let live = futures_util::stream::unfold(
        (subscription, redactor, closed),
        |(mut subscription, redactor, mut closed): Live| async move {
            let next = tokio::time::timeout(KEEP_ALIVE, subscription.recv());
            let text = tokio::select! {
                () = &mut closed => return None,
                next = next => match next {
                    Err(_) => ": keep-alive\n\n".to_owned(),
                    Ok(None) => return None,
                    Ok(Some(Received::Event(event))) => frame(&event, &redactor),
                    Ok(Some(Received::Lagged(count))) => lost(count),
                },
            };
            Some((text, (subscription, redactor, closed)))
        },
    );
    sse::response(futures_util::stream::iter(head).chain(live))
}
