//! `ApiError`: every failure a request can meet, mapped exhaustively to an HTTP
//! status and a stable `code`, rendered as `application/problem+json` (RFC 9457).
//!
//! Server-side failures (5xx) are logged with their details and answered with a
//! generic message; client errors say exactly what was wrong.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Error;

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
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] Error),
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is JSON but not the expected shape.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{reason}")]
    InvalidParameter { name: Option<String>, reason: String },
    #[error("the request body is larger than the server's limit of {limit} bytes")]
    RequestTooLarge { limit: u64 },
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// A stream route was requested without a WebSocket upgrade.
    #[error("this route speaks WebSocket: {0}")]
    UpgradeRequired(String),
}

impl ApiError {
    pub fn parameter(name: &str, reason: impl Into<String>) -> Self {
        ApiError::InvalidParameter { name: Some(name.to_owned()), reason: reason.into() }
    }

    /// Status, code and title, in one exhaustive table.
    fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::Core(e) => match e {
                Error::UnknownTopic(_) => (S::NOT_FOUND, "unknown_topic", "Unknown topic"),
                Error::UnknownPartition { .. } => (S::NOT_FOUND, "unknown_partition", "Unknown partition"),
                Error::TopicExists(_) => (S::CONFLICT, "topic_exists", "Topic already exists"),
                Error::InvalidTopicName(_) => (S::BAD_REQUEST, "invalid_topic_name", "Invalid topic name"),
                Error::InvalidPartitions(_) => (S::BAD_REQUEST, "invalid_partitions", "Invalid partition count"),
                Error::InvalidConfig(_) => (S::BAD_REQUEST, "invalid_config", "Invalid topic configuration"),
                Error::InvalidRecord { .. } => (S::UNPROCESSABLE_ENTITY, "invalid_record", "Invalid record"),
                Error::RecordTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "record_too_large", "Record too large"),
                Error::OffsetOutOfRange { .. } => {
                    (S::RANGE_NOT_SATISFIABLE, "offset_out_of_range", "Offset out of range")
                }
                Error::InvalidGroupId(_) => (S::BAD_REQUEST, "invalid_group_id", "Invalid group id"),
                Error::UnknownGroup(_) => (S::NOT_FOUND, "unknown_group", "Unknown group"),
                Error::UnknownMember { .. } => (S::NOT_FOUND, "unknown_member", "Unknown member"),
                Error::IllegalGeneration { .. } => (S::CONFLICT, "illegal_generation", "Illegal generation"),
                Error::NotOwner { .. } => (S::CONFLICT, "not_owner", "Partition not owned by the member"),
                Error::GroupNotEmpty(_) => (S::CONFLICT, "group_not_empty", "Group not empty"),
                Error::InconsistentAssignor { .. } => {
                    (S::CONFLICT, "inconsistent_assignor", "Assignor differs from the group's")
                }
                Error::InvalidArgument { .. } => (S::BAD_REQUEST, "invalid_request", "Invalid request body"),
                Error::WriteQueueFull => (S::SERVICE_UNAVAILABLE, "write_queue_full", "Write queue full"),
                Error::ShuttingDown => (S::SERVICE_UNAVAILABLE, "shutting_down", "Shutting down"),
                Error::Storage(_) => (S::INTERNAL_SERVER_ERROR, "storage_error", "Storage failure"),
                Error::Corrupt(_) => (S::INTERNAL_SERVER_ERROR, "corrupt_data", "Corrupt stored data"),
            },
            ApiError::InvalidJson(_) => (S::BAD_REQUEST, "invalid_json", "Malformed JSON"),
            ApiError::InvalidRequest(_) => (S::BAD_REQUEST, "invalid_request", "Invalid request body"),
            ApiError::InvalidParameter { .. } => (S::BAD_REQUEST, "invalid_parameter", "Invalid parameter"),
            ApiError::RequestTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "request_too_large", "Request too large"),
            ApiError::NotFound(_) => (S::NOT_FOUND, "not_found", "Not found"),
            ApiError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed"),
            ApiError::UpgradeRequired(_) => (S::UPGRADE_REQUIRED, "websocket_required", "WebSocket upgrade required"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.classify();
        let detail = if status.is_server_error()
            && !matches!(self, ApiError::Core(Error::WriteQueueFull | Error::ShuttingDown))
        {
            "the server failed to complete the request; details are in its log".to_owned()
        } else {
            self.to_string()
        };
        let mut p = Problem {
            kind: format!("urn:gregor:problem:{code}"),
            title,
            status: status.as_u16(),
            detail,
            code,
            topic: None,
            partition: None,
            field: None,
            index: None,
            beginning_offset: None,
            end_offset: None,
            limit: None,
            generation: None,
        };
        match self {
            ApiError::Core(Error::UnknownTopic(t) | Error::TopicExists(t)) => p.topic = Some(t.clone()),
            ApiError::Core(Error::UnknownPartition { topic, partition }) => {
                p.topic = Some(topic.clone());
                p.partition = Some(*partition);
            }
            ApiError::Core(Error::InvalidTopicName(_)) => p.field = Some("name".into()),
            ApiError::Core(Error::InvalidPartitions(_)) => p.field = Some("partitions".into()),
            ApiError::Core(Error::InvalidConfig(e)) => p.field = Some(format!("config.{}", e.field)),
            ApiError::Core(Error::InvalidRecord { index, field, .. }) => {
                p.index = Some(*index);
                p.field = Some((*field).to_owned());
            }
            ApiError::Core(Error::RecordTooLarge { index, max, .. }) => {
                p.index = Some(*index);
                p.limit = Some(*max as u64);
            }
            ApiError::Core(Error::OffsetOutOfRange { beginning, end, .. }) => {
                p.beginning_offset = Some(*beginning);
                p.end_offset = Some(*end);
            }
            ApiError::Core(Error::NotOwner { topic, partition }) => {
                p.topic = Some(topic.clone());
                p.partition = Some(*partition);
            }
            ApiError::Core(Error::IllegalGeneration { current, .. }) => p.generation = Some(*current),
            ApiError::Core(Error::InvalidArgument { field, .. }) => p.field = Some((*field).to_owned()),
            ApiError::Core(Error::InvalidGroupId(_)) => p.field = Some("group".into()),
            ApiError::InvalidParameter { name, .. } => p.field = name.clone(),
            ApiError::RequestTooLarge { limit } => p.limit = Some(*limit),
            _ => {}
        }
        p
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = problem.code, error = %self, "request failed");
        }
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::InvalidParameter { name: None, reason: r.body_text() }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::InvalidParameter { name: None, reason: r.body_text() }
    }
}

/// Parses a JSON body, telling syntax errors (`invalid_json`) from shape errors (`invalid_request`).
pub fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::InvalidRequest(e.to_string()),
        _ => ApiError::InvalidJson(e.to_string()),
    })
}
