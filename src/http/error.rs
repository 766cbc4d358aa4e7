//! `ApiError`: every failure a request can meet, rendered as
//! `application/problem+json` (RFC 9457). Its status, code and title come from
//! the one table in [`crate::error::Code`].
//!
//! Server-side failures are logged with their details and answered with a
//! generic message; client errors say exactly what was wrong.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Code, Error};

/// An RFC 9457 problem document with gregor's stable `code` and context fields.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:gregor:problem:offset_out_of_range",
    "title": "Offset out of range",
    "status": 416,
    "detail": "offset 99 is outside the partition's range [0, 42]",
    "code": "offset_out_of_range",
    "beginning_offset": 0,
    "end_offset": 42
}))]
pub struct Problem {
    /// `urn:gregor:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable, machine-readable error code.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// The request field or parameter at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The index of the record at fault in a produce request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beginning_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_offset: Option<u64>,
    /// A size limit that was exceeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The member's current generation, when a commit named another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The permission a `forbidden` request lacked (`read`, `write`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'static str>,
    /// The resource a `forbidden` request was about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Where a `schema_violation` is: the JSON pointer of the first error in the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// The schema a `schema_violation` was checked against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<u32>,
    /// The registry subject a `schema_not_found` looked in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// Everything a handler can fail with: the core's errors, and the few that only
/// HTTP has.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] Error),
    #[error("the request body is larger than the server's limit of {limit} bytes")]
    RequestTooLarge { limit: u64 },
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// A stream route was requested without a WebSocket upgrade.
    #[error("this route speaks WebSocket: {0}")]
    UpgradeRequired(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    OriginNotAllowed(String),
    #[error("{0}")]
    HostNotAllowed(String),
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            ApiError::Core(e) => e.code(),
            ApiError::RequestTooLarge { .. } => Code::RequestTooLarge,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::MethodNotAllowed => Code::MethodNotAllowed,
            ApiError::UpgradeRequired(_) => Code::WebsocketRequired,
            ApiError::UnsupportedMediaType(_) => Code::UnsupportedMediaType,
            ApiError::OriginNotAllowed(_) => Code::OriginNotAllowed,
            ApiError::HostNotAllowed(_) => Code::HostNotAllowed,
        }
    }

    pub fn problem(&self) -> Problem {
        let code = self.code();
        let info = code.describe();
        let detail = match self {
            ApiError::Core(e) => e.public_detail(),
            other => other.to_string(),
        };
        let mut p = Problem {
            kind: format!("urn:gregor:problem:{}", info.code),
            title: info.title,
            status: info.status,
            detail,
            code: info.code,
            topic: None,
            partition: None,
            field: None,
            index: None,
            beginning_offset: None,
            end_offset: None,
            limit: None,
            generation: None,
            operation: None,
            resource: None,
            pointer: None,
            schema_id: None,
            subject: None,
        };
        let ApiError::Core(e) = self else {
            if let ApiError::RequestTooLarge { limit } = self {
                p.limit = Some(*limit);
            }
            return p;
        };
        match e {
            Error::UnknownTopic(t) | Error::TopicExists(t) => p.topic = Some(t.clone()),
            Error::UnknownPartition { topic, partition } | Error::NotOwner { topic, partition } => {
                p.topic = Some(topic.clone());
                p.partition = Some(*partition);
            }
            Error::InvalidTopicName(_) => p.field = Some("name".into()),
            Error::InvalidPartitions(_) => p.field = Some("partitions".into()),
            Error::InvalidConfig(e) => p.field = Some(format!("config.{}", e.field)),
            Error::InvalidRecord { index, field, .. } => {
                p.index = Some(*index);
                p.field = Some((*field).to_owned());
            }
            Error::SchemaViolation { index, field, schema_id, pointer, .. } => {
                p.index = Some(*index);
                p.field = Some((*field).to_owned());
                p.schema_id = Some(*schema_id);
                p.pointer = Some(pointer.clone());
            }
            Error::SchemaNotFound { subject, .. } => p.subject = Some(subject.clone()),
            Error::RecordTooLarge { index, max, .. } => {
                p.index = Some(*index);
                p.limit = Some(u64::from(*max));
            }
            Error::OffsetOutOfRange { beginning, end, .. } => {
                p.beginning_offset = Some(*beginning);
                p.end_offset = Some(*end);
            }
            Error::IllegalGeneration { current, .. } => p.generation = Some(*current),
            Error::InvalidArgument { field, .. } => p.field = Some((*field).to_owned()),
            Error::InvalidParameter { field, .. } => p.field = field.clone(),
            Error::InvalidGroupId(_) => p.field = Some("group".into()),
            Error::InvalidCursor(_) => p.field = Some("cursor".into()),
            Error::IdempotencyKeyReused(_) => p.field = Some("Idempotency-Key".into()),
            // No context beyond the code and detail.
            Error::InvalidJson(_)
            | Error::InvalidRequest(_)
            | Error::UnknownGroup(_)
            | Error::UnknownMember { .. }
            | Error::GenerationMoved { .. }
            | Error::GroupNotEmpty(_)
            | Error::GroupProtocolConflict(_)
            | Error::InconsistentAssignor { .. }
            | Error::WriteQueueFull
            | Error::Backend(_)
            | Error::Unsupported(_)
            | Error::ShuttingDown
            | Error::Storage(_)
            | Error::Corrupt(_)
            | Error::Internal(_)
            | Error::Unauthenticated(_) => {}
            Error::QuotaExceeded { what, .. } => p.field = Some((*what).to_owned()),
            Error::Forbidden { operation, resource, .. } => {
                p.operation = Some(operation);
                p.resource = Some(resource.clone());
            }
        }
        p
    }
}

/// A problem+json response for `code`, built without serde (for answers written
/// before any handler runs, such as a refused connection).
pub fn problem_body(code: Code, detail: &str) -> String {
    let info = code.describe();
    let detail = serde_json::to_string(detail).unwrap_or_else(|_| "\"\"".to_owned());
    format!(
        "{{\"type\":\"urn:gregor:problem:{c}\",\"title\":\"{t}\",\"status\":{s},\"detail\":{detail},\"code\":\"{c}\"}}",
        c = info.code,
        t = info.title,
        s = info.status
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let info = self.code().describe();
        let status = StatusCode::from_u16(info.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = problem.code, error = %self, "request failed");
        }
        let body = match serde_json::to_vec(&problem) {
            Ok(body) => body,
            // Cannot happen (strings and numbers only); still answer a valid document.
            Err(_) => problem_body(self.code(), &problem.detail).into_bytes(),
        };
        let mut res = (status, body).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if info.retry {
            let secs = match &self {
                ApiError::Core(Error::QuotaExceeded { retry_after, .. }) => {
                    retry_after.as_secs_f64().ceil().max(1.0) as u64
                }
                _ => 1,
            };
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            // Bearer only: a Basic challenge would make browsers (the console) pop up
            // a login dialog. Basic clients (curl -u) send credentials unasked.
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gregor\""));
        }
        res
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::Core(Error::InvalidParameter { field: None, reason: r.body_text() })
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::Core(Error::InvalidParameter { field: None, reason: r.body_text() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_built_problems_are_problem_documents() {
        for code in Code::ALL {
            let v: serde_json::Value = serde_json::from_str(&problem_body(*code, "a \"quoted\" detail")).unwrap();
            assert_eq!(v["code"], code.as_str());
            assert_eq!(v["status"], code.status());
            assert_eq!(v["detail"], "a \"quoted\" detail");
        }
    }

    #[test]
    fn server_faults_hide_their_details() {
        let p = ApiError::Core(Error::Storage("disk on fire at /secret/path".into())).problem();
        assert_eq!((p.status, p.code), (503, "storage_error"));
        assert!(!p.detail.contains("secret"), "{}", p.detail);
        let p = ApiError::Core(Error::Internal("bug".into())).problem();
        assert_eq!((p.status, p.code), (500, "internal_error"));
    }
}
