//! The HTTP transport: one router per resource, merged here, with the OpenAPI
//! document generated from the same registrations (utoipa-axum), Swagger UI at
//! `/docs` and the console at `/`.

pub(crate) mod codec;
pub mod error;
pub(crate) mod extract;
mod groups;
pub(crate) mod health;
mod records;
mod topics;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Uri, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::group::Groups;
use crate::log::Log;
use crate::metrics::Metrics;
use error::ApiError;
use extract::BodyLimit;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub log: Arc<Log>,
    pub groups: Arc<Groups>,
    pub metrics: Arc<Metrics>,
    /// Open WebSocket connections, so that shutdown can wait for them to close.
    pub connections: TaskTracker,
    pub ws_ping_interval: Duration,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gregor",
        description = "A Kafka-style commit log over HTTP and WebSocket. Errors are \
            `application/problem+json` (RFC 9457) with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(codec::Encoding, records::AcksParam)),
    tags(
        (name = "topics", description = "Topics, partitions and their offsets"),
        (name = "records", description = "Produce and read records"),
        (name = "groups", description = "Consumer groups: members, polls, committed offsets"),
        (name = "streams", description = "WebSocket streams of a topic or of a group member"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct ApiDoc;

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(topics::router())
        .merge(records::router())
        .merge(groups::router())
        .merge(crate::ws::router())
        .merge(health::router())
}

/// The OpenAPI document, as generated from the routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().split_for_parts().1
}

/// The OpenAPI document as the pretty JSON committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let mut s = openapi().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

/// The whole application router.
pub fn router(state: AppState, max_request_bytes: usize) -> Router {
    let (api_router, doc) = api().split_for_parts();
    api_router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .route("/", get(console))
        .route("/console.js", get(console_js))
        .route("/console.css", get(console_css))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), health::track_latency))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(axum::Extension(BodyLimit(max_request_bytes as u64)))
        .with_state(state)
}

// The console is compiled into the binary, so the server needs no files beside it.
async fn console() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(include_str!("../../static/index.html")))
}

async fn console_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        include_str!("../../static/console.js"),
    )
}

async fn console_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        include_str!("../../static/console.css"),
    )
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
