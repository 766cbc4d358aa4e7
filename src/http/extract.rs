//! Extractors whose rejections are `ApiError`s, so that a bad path segment, query
//! string or body gets a problem+json answer like every other error.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;

use super::error::ApiError;
use crate::auth::Credentials;
use crate::error::Error;
use crate::service::RequestCtx;

/// `axum::extract::Path`, answering `400 invalid_parameter` when a segment does not parse.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query`, answering `400 invalid_parameter` when the query does not parse.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The raw request body, within the server's body limit (`413 request_too_large` beyond it).
/// Its media type was checked before (`guard`: JSON only); the handler parses it.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        Bytes::from_request(req, state).await.map(Body).map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::RequestTooLarge { limit }
            } else {
                ApiError::Core(Error::InvalidRequest(e.body_text()))
            }
        })
    }
}

/// The configured body limit, carried as a request extension so that the 413
/// answer can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);

/// Who is asking: the request's context for the service layer, from its
/// credentials (`Authorization: Bearer <key>` or `Basic`; on a WebSocket upgrade
/// also the `gregor.bearer.<base64url(token)>` subprotocol, which browsers can
/// send where they cannot send headers). Routes without it are public.
#[derive(Debug)]
pub struct Caller(pub RequestCtx);

impl FromRequestParts<super::AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &super::AppState,
    ) -> Result<Self, Self::Rejection> {
        let mut credentials = credentials(&parts.headers)?;
        // A client certificate identifies the client when it sends nothing else.
        if credentials == Credentials::None
            && let Some(cert) = parts.extensions.get::<super::serve::ClientCertificate>()
        {
            credentials = Credentials::Certificate(cert.0.clone());
        }
        match state.service.authenticate(&credentials).await {
            Ok(mut ctx) => {
                state.service.admit(&mut ctx)?;
                Ok(Caller(ctx))
            }
            Err(e) => {
                // `Credentials`' Debug never shows the secret, only the scheme (and a Basic user).
                tracing::debug!(?credentials, error = %e, path = parts.uri.path(), "authentication failed");
                Err(e.into())
            }
        }
    }
}

/// The subprotocol prefix that carries a bearer token on a WebSocket upgrade.
pub const BEARER_PROTOCOL: &str = "gregor.bearer.";

/// What the request presented. A malformed `Authorization` header is refused,
/// never taken as no credentials.
fn credentials(headers: &axum::http::HeaderMap) -> Result<Credentials, ApiError> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let bad = |why: &str| ApiError::Core(Error::Unauthenticated(why.to_owned()));
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| bad("the Authorization header is not text"))?;
        let (scheme, rest) =
            value.split_once(' ').ok_or_else(|| bad("Authorization is 'Bearer <token>' or 'Basic <base64>'"))?;
        // Compared in place: this runs on every request.
        return match scheme {
            s if s.eq_ignore_ascii_case("bearer") => Ok(Credentials::Bearer(rest.trim().to_owned())),
            s if s.eq_ignore_ascii_case("basic") => {
                let decoded = STANDARD.decode(rest.trim()).map_err(|_| bad("Basic credentials are not base64"))?;
                let text = String::from_utf8(decoded).map_err(|_| bad("Basic credentials are not UTF-8"))?;
                let (user, password) =
                    text.split_once(':').ok_or_else(|| bad("Basic credentials are user:password"))?;
                Ok(Credentials::Basic { user: user.to_owned(), password: password.to_owned() })
            }
            _ => Err(bad("Authorization is 'Bearer <token>' or 'Basic <base64>'")),
        };
    }
    for value in headers.get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(list) = value.to_str() else { continue };
        for offered in list.split(',').map(str::trim) {
            if let Some(encoded) = offered.strip_prefix(BEARER_PROTOCOL) {
                let token = URL_SAFE_NO_PAD
                    .decode(encoded.trim_end_matches('='))
                    .ok()
                    .and_then(|t| String::from_utf8(t).ok())
                    .ok_or_else(|| bad("the gregor.bearer subprotocol carries base64url(token)"))?;
                return Ok(Credentials::Bearer(token));
            }
        }
    }
    Ok(Credentials::None)
}
