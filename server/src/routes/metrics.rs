//! `GET /metrics`: the Prometheus text of SPEC §12, refreshed at each scrape (process CPU/RSS, per-provider load and in-flight gauges).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::telemetry;

/// The Prometheus text exposition.
pub async fn render(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are unavailable: another metrics recorder is installed in this process\n",
        )
            .into_response();
    };
    telemetry::update_process_metrics();
    // Refreshes switchyard_provider_load and switchyard_provider_inflight.
    let _ = state.manager.get_provider_load_stats();
    metrics::gauge!(telemetry::QUEUE_DEPTH).set(state.manager.queue_depth() as f64);
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
