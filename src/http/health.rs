//! `/healthz` (the process answers) and `/readyz` (it accepts writes).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::Caller;
use crate::metrics::RouteLabels;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or why the server is not ready (`shutting_down_or_failed`).
    status: &'static str,
}

/// Liveness: the process is up and answering.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the store is open, writable, and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if state.service.is_ready() {
        (StatusCode::OK, Json(Health { status: "ok" }))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "shutting_down_or_failed" }))
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics(State(state): State<AppState>, Caller(ctx): Caller) -> Result<impl IntoResponse, ApiError> {
    let text = state.service.metrics_text(&ctx).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}

/// The one middleware every request passes: the browser guard (`guard`), then
/// the handler, with the request's latency recorded by method, route template and
/// status. One layer rather than two: each `from_fn` layer costs about a thousand
/// instructions per request (callgrind), a sixth of a one-record produce.
pub async fn edge(
    State(state): State<AppState>,
    matched: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let res = match state.guard.check(req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    };
    let labels = RouteLabels { method, route, status: res.status().as_u16() };
    state.service.metrics().http_requests.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    res
}
