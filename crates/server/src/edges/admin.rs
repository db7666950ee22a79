//! The admin listener (`--admin-addr`, plain HTTP): liveness (`/healthz`), readiness (`/readyz`: ready
//! once the inventory is loaded, not ready once shutdown begins; its text names token issuers never
//! reached), metrics (`/metrics`, in the Prometheus text format or OpenMetrics) and the
//! REST shim's OpenAPI 3 description (`/openapi.json`). It exists with or without `--no-rest`, so
//! probes and scraping never depend on the REST shim, and it keeps metrics off the public port.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use crate::edges::rest::plain_error;
use crate::metrics::Format;
use crate::service::core::Core;
use crate::service::error::ErrorKind;

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
                "only GET and HEAD are served on this path",
            )
        })
        .with_state(AdminState { core, ready })
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if *state.ready.borrow() {
        // Still ready with an issuer never reached: everything but its tokens is served. Said here
        // so that whoever looks at the probe sees it.
        let detail = state.core.issuers().readiness_detail();
        (StatusCode::OK, format!("ready\n{detail}")).into_response()
    } else if !state.core.snapshot().loaded {
        (StatusCode::SERVICE_UNAVAILABLE, "loading the inventory\n").into_response()
    } else {
        // Loaded and not ready: the moment between the first load going into service and readiness
        // turning on, or a shutdown.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting, or shutting down\n",
        )
            .into_response()
    }
}

/// Every metric, in OpenMetrics when the scraper's `Accept` asks for it, else in the Prometheus text
/// format (see [`crate::metrics::Format`]).
async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::from_accept(accept);
    match state.core.metrics().encode(format) {
        Ok(body) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(format.content_type()),
                ),
                (header::VARY, HeaderValue::from_static("accept")),
            ],
            body,
        )
            .into_response(),
        Err(_) => plain_error(ErrorKind::Internal, "the metrics could not be encoded"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document lists exactly the REST router's paths, each with GET, and every error code
    /// the edges can answer.
    #[test]
    fn the_openapi_document_matches_the_router() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).expect("JSON");
        assert_eq!(document["openapi"], "3.0.3");
        let mut documented: Vec<&str> = document["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        documented.sort_unstable();
        let mut routed = crate::edges::rest::ROUTES.to_vec();
        routed.sort_unstable();
        assert_eq!(documented, routed);
        for route in routed {
            assert!(document["paths"][route]["get"].is_object(), "{route}");
        }
        let codes: Vec<&str> =
            document["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
                .as_array()
                .expect("codes")
                .iter()
                .filter_map(|c| c.as_str())
                .collect();
        for kind in ErrorKind::ALL {
            assert!(codes.contains(&kind.palette_code()), "{kind:?}");
        }
    }
}
