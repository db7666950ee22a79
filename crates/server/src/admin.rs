//! The admin listener (`--admin-addr`, plain HTTP): liveness (`/healthz`), readiness (`/readyz`: ready
//! once the inventory is loaded, not ready once shutdown begins), Prometheus metrics (`/metrics`) and the
//! REST shim's OpenAPI 3 description (`/openapi.json`). It exists with or without `--no-rest`, so
//! probes and scraping never depend on the REST shim, and it keeps metrics off the public port.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use crate::core::Core;
use crate::error::ErrorKind;
use crate::rest::plain_error;

/// The REST shim's OpenAPI 3 description (kept true by a test against the router).
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
struct AdminState {
    core: Arc<Core>,
    ready: watch::Receiver<bool>,
}

/// The admin router. `ready` turns false when shutdown begins.
pub fn router(core: Arc<Core>, ready: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { plain_error(ErrorKind::NotFound, "no such path") })
        .method_not_allowed_fallback(|| async {
            plain_error(
                ErrorKind::MethodNotAllowed,
                "only GET is served on this path",
            )
        })
        .with_state(AdminState { core, ready })
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if *state.ready.borrow() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let body = state.core.metrics().render(&state.core.cache_stats());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        body,
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}
