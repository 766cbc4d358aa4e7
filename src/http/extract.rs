//! Extractors whose rejections are `ApiError`s, so that a bad path segment, query
//! string or body gets a problem+json answer like every other error.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;

use super::error::ApiError;
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

/// Who is asking: the request's context for the service layer. With
/// authentication off (today), every request is `User:ANONYMOUS`.
#[derive(Debug)]
pub struct Caller(pub RequestCtx);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller(RequestCtx::anonymous()))
    }
}
