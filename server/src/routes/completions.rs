//! `POST /v1/completions` (legacy, non-streaming): one failover run; `stream: true` is refused with a 400 naming the field.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use switchyard_core::{CompletionRequest, RequestType};
use tracing::Instrument;

use super::{
    InAttempt, Recorder, RequestMeta, attempt_span, fail, options, parse_request, priced,
    request_span, respond, with_request_id,
};
use crate::app::AppState;
use crate::error::ApiError;

/// The handler.
pub async fn handle(
    State(state): State<AppState>,
    meta: RequestMeta,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = request_span("completions", &meta);
    let response = run(state, &meta, body).instrument(span).await;
    with_request_id(response, &meta)
}

async fn run(state: AppState, meta: &RequestMeta, body: Result<Bytes, BytesRejection>) -> Response {
    let mut recorder = Recorder::start(&state);
    let request: CompletionRequest =
        match parse_request(&state, body, |r: &CompletionRequest| &r.model) {
            Ok(request) => request,
            Err(error) => return fail(recorder, error),
        };
    if request.stream {
        return fail(
            recorder,
            ApiError::invalid_request(
                "Streaming is not supported on /v1/completions; use /v1/chat/completions to stream.",
            )
            .with_param("stream"),
        );
    }
    recorder.set_request(&request.model, false);
    let estimated = u32::try_from(request.prompt.to_string().len() / 4 + 1).unwrap_or(u32::MAX);
    let options = options(
        &request.model,
        RequestType::Completions,
        meta,
        None,
        estimated,
        request.max_tokens,
    );
    let upstream = recorder.upstream();
    let outcome = state
        .manager
        .execute_with_failover(options, |mut attempt| {
            let mut request = request.clone();
            request.model.clear();
            request.model.push_str(&attempt.upstream_model);
            let span = attempt_span(&mut attempt);
            async move {
                let _timing = upstream.span();
                let pricing = attempt.deployment.pricing();
                let response = attempt.provider.completions(request, &attempt.ctx).await?;
                priced(&attempt, response, pricing)
            }
            .in_attempt(span)
        })
        .await;
    respond(&state, recorder, outcome)
}
