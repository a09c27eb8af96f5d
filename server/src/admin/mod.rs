//! The admin API of SPEC §11 (`/admin/*`): providers, routes, stats, metrics, events, reload — a thin HTTP layer over the manager and the overlay.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /admin/providers` | `{"data": [provider config, ...]}`, secrets redacted, each with its `origin` |
//! | `POST /admin/providers` | add one (`?validate_only=true`, `?health_check=true`) |
//! | `GET/PUT/DELETE /admin/providers/{id}` | read, replace (hot), remove |
//! | `POST /admin/providers/{id}/reset` | clear failures, cooldowns and circuits, then one check |
//! | `GET /admin/stats` | load per provider, least loaded first |
//! | `GET /admin/metrics` | the manager's metrics snapshot as JSON |
//! | `GET /admin/events` | the event stream as SSE; `?recent=N` replays the last N first |
//! | `GET /admin/routes`, `GET/PUT/DELETE /admin/routes/{model}` | routes: strategy, fallbacks, blue-green sets and split |
//! | `GET /admin/overlay` | what the admin API changed on top of the file |
//! | `POST /admin/reload` | reload the file now (`?override=true` lets the file win) |
//! | `GET /admin/reload` | the config source and the outcome of the last reload |
//!
//! Modules:
//! - [`auth`]: who may call these routes (SPEC §16).
//! - [`policy`]: what an admin-written provider may use (SPEC §16).
//! - [`overlay`]: admin changes kept on top of the file (SPEC §10).
//! - [`control`]: the file config, the overlay, and the lock that
//!   serialises admin writes and reloads.
//! - [`handlers`], [`events`]: the routes.

pub mod auth;
pub mod control;
pub mod events;
pub mod handlers;
pub mod overlay;
pub mod policy;

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};

pub use control::ConfigControl;
pub use overlay::{Origin, Overlay};
pub use policy::Policy;

use crate::app::AppState;

/// The `/admin/*` routes, behind the admin check of [`auth::require_admin`].
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/admin/providers",
            get(handlers::list_providers).post(handlers::add_provider),
        )
        .route(
            "/admin/providers/{id}",
            get(handlers::get_provider)
                .put(handlers::replace_provider)
                .delete(handlers::remove_provider),
        )
        .route(
            "/admin/providers/{id}/reset",
            post(handlers::reset_provider),
        )
        .route("/admin/stats", get(handlers::stats))
        .route("/admin/metrics", get(handlers::metrics))
        .route("/admin/events", get(events::stream))
        .route("/admin/routes", get(handlers::list_routes))
        .route(
            "/admin/routes/{*model}",
            get(handlers::get_route)
                .put(handlers::put_route)
                .delete(handlers::delete_route),
        )
        .route("/admin/overlay", get(handlers::overlay))
        .route(
            "/admin/reload",
            get(handlers::last_reload).post(handlers::reload),
        )
        .route_layer(middleware::from_fn_with_state(state, auth::require_admin))
}
