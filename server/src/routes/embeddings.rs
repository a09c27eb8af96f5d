//! `POST /v1/embeddings`: one failover run; the response's `model` names the client-facing model that answered.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use switchyard_core::{EmbeddingsRequest, RequestType};
use tracing::Instrument;

use super::{
    InAttempt, Recorder, RequestMeta, attempt_span, fail, options, parse_request, priced,
    request_span, respond, with_request_id,
};
use crate::app::AppState;

/// The handler.
pub async fn handle(
    State(state): State<AppState>,
    meta: RequestMeta,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = request_span("embeddings", &meta);
    let response = run(state, &meta, body).instrument(span).await;
    with_request_id(response, &meta)
}

async fn run(state: AppState, meta: &RequestMeta, body: Result<Bytes, BytesRejection>) -> Response {
    let mut recorder = Recorder::start(&state);
    let request: EmbeddingsRequest =
        match parse_request(&state, body, |r: &EmbeddingsRequest| &r.model) {
            Ok(request) => request,
            Err(error) => return fail(recorder, error),
        };
    recorder.set_request(&request.model, false);
    let estimated = u32::try_from(request.input.to_string().len() / 4 + 1).unwrap_or(u32::MAX);
    let options = options(
        &request.model,
        RequestType::Embeddings,
        meta,
        None,
        estimated,
        None,
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
                let response = attempt.provider.embeddings(request, &attempt.ctx).await?;
                priced(&attempt, response, pricing)
            }
            .in_attempt(span)
        })
        .await;
    respond(&state, recorder, outcome)
}
