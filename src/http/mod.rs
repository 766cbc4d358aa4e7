//! The HTTP transport: one router per resource, merged here, with the OpenAPI
//! document generated from the same registrations (utoipa-axum), Swagger UI at
//! `/docs` and the console at `/`. Handlers call the service layer only.
//!
//! - `serve`: the accept loop and the serving limits (header timeout, connection cap).
//! - `guard`: browser safety (Origin, Host, JSON bodies) and, around it, CORS.
//! - `topics`, `records`, `groups`, `streams` (WebSocket upgrades), `health`: the routes.
//! - `error`: `ApiError` → problem+json; `extract`: extractors whose rejections are problems.

pub mod error;
pub(crate) mod extract;
mod groups;
pub mod guard;
pub(crate) mod health;
mod history;
mod records;
mod registry;
pub mod serve;
mod streams;
pub mod tls;
mod topics;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, Uri, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::codec;
use crate::service::Service;
use error::ApiError;
use extract::BodyLimit;
use guard::BrowserGuard;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub service: Service,
    /// Browser safety, checked on every request (`health::edge`).
    pub guard: Arc<BrowserGuard>,
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
    components(schemas(codec::Encoding, crate::service::Acks)),
    tags(
        (name = "topics", description = "Topics, partitions and their offsets"),
        (name = "records", description = "Produce and read records"),
        (name = "groups", description = "Consumer groups: members, polls, committed offsets"),
        (name = "streams", description = "WebSocket streams of a topic or of a group member"),
        (name = "health", description = "Liveness and readiness"),
        (name = "history", description = "The recent past the console charts: sampled in memory every 2 s for 10 minutes, lost on restart"),
        (name = "schema registry", description = "A Schema Registry compatible with Confluent's (point its clients at `http://HOST:PORT/registry`). Answers are `application/vnd.schemaregistry.v1+json`, errors Confluent's `{\"error_code\", \"message\"}`. Subjects `<topic>-value` and `<topic>-key` follow the topic's ACLs."),
    )
)]
struct ApiDoc;

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(topics::router())
        .merge(records::router())
        .merge(groups::router())
        .merge(streams::router())
        .merge(health::router())
        .merge(registry::router())
        .merge(history::router())
}

/// The OpenAPI document, as generated from the routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api().split_for_parts().1;
    document_guard(&mut doc);
    doc
}

/// Routes anyone may call, with or without credentials.
const PUBLIC_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Adds what is answered before any handler runs to every operation it applies
/// to: the security schemes (so that Swagger UI's "Authorize" works) with 401 for
/// missing or wrong credentials; 403 for a foreign Host (any request) or Origin
/// (state-changing requests and upgrades), or a missing permission; 415 for a
/// body that is not JSON.
fn document_guard(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API key ([[auth.api_keys]]) or a JWT"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "basic",
        SecurityScheme::Http(
            HttpBuilder::new().scheme(HttpAuthScheme::Basic).description(Some("A user of [[auth.users]]")).build(),
        ),
    );
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
            )
            .build()
    };
    // The registry's handlers refuse in Confluent's body; the guard (Host, Origin, media type)
    // answers problem+json before any handler runs.
    let confluent = |description: &str, guard_too: bool| {
        let mut response = ResponseBuilder::new().description(description).content(
            "application/vnd.schemaregistry.v1+json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("RegistryFailure"))).build(),
        );
        if guard_too {
            response = response.content(
                "application/problem+json",
                ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
            );
        }
        response.build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = PUBLIC_PATHS.contains(&path.as_str());
        let registry = path.starts_with("/registry");
        let refusal = |description: &str, guard_too: bool| {
            if registry { confluent(description, guard_too) } else { problem(description) }
        };
        let ops = [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.patch, true),
            (&mut item.delete, true),
            (&mut item.put, true),
        ];
        for (op, changes_state) in ops {
            let Some(op) = op.as_mut() else { continue };
            if !public {
                op.security = Some(vec![
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                    SecurityRequirement::new("basic", Vec::<String>::new()),
                ]);
            }
            let responses = &mut op.responses.responses;
            if !public {
                responses.entry("401".into()).or_insert_with(|| {
                    refusal("Authentication is on and the credentials are missing or wrong (unauthenticated)", false)
                        .into()
                });
                responses.entry("429".into()).or_insert_with(|| {
                    refusal("The principal is over a quota (quota_exceeded); see Retry-After", false).into()
                });
            }
            let forbidden = match (public, changes_state) {
                (true, _) => "Refused before the handler: on a loopback address, a foreign Host (host_not_allowed)",
                (false, false) => {
                    "The principal lacks a permission (forbidden), or, on a loopback address, a foreign Host (host_not_allowed)"
                }
                (false, true) => {
                    "The principal lacks a permission (forbidden), or a foreign Origin (origin_not_allowed) or, on a loopback address, Host (host_not_allowed)"
                }
            };
            responses.entry("403".into()).or_insert_with(|| refusal(forbidden, true).into());
            if changes_state && op.request_body.is_some() {
                responses
                    .entry("415".into())
                    .or_insert_with(|| problem("The body is not JSON (unsupported_media_type)").into());
            }
        }
    }
}

/// The OpenAPI document as the pretty JSON committed in `openapi/openapi.json`.
pub fn openapi_json() -> Result<String, serde_json::Error> {
    let mut s = openapi().to_pretty_json()?;
    s.push('\n');
    Ok(s)
}

/// The whole application router. Layers, outermost first: CORS (answers for
/// the guard's allowed origins only), the browser guard with latency tracking
/// (`health::edge`), the body limit.
pub fn router(state: AppState, max_request_bytes: usize) -> Router {
    let (api_router, mut doc) = api().split_for_parts();
    document_guard(&mut doc);
    let origins = state.guard.cors_origins();
    let app = api_router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .merge(registry::undocumented())
        .route("/", get(console))
        .route("/console.js", get(console_js))
        .route("/console.css", get(console_css))
        .route("/chart.js", get(chart_js))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(axum::Extension(BodyLimit(max_request_bytes as u64)))
        .layer(axum::middleware::from_fn_with_state(state.clone(), health::edge))
        // Credentials are marked sensitive, so that no logging or tracing layer
        // (ours or a future one) prints them.
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, header::SEC_WEBSOCKET_PROTOCOL]))
        .with_state(state);
    if origins.is_empty() {
        return app;
    }
    app.layer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, HeaderName::from_static("idempotency-key")])
            .expose_headers([header::LOCATION, header::RETRY_AFTER, header::WWW_AUTHENTICATE])
            .max_age(Duration::from_secs(600)),
    )
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

async fn chart_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        include_str!("../../static/chart.js"),
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
