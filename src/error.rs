//! The core error type, and the one table of stable error codes.
//!
//! [`Error`] is what the log, the groups and the service layer fail with, in
//! terms a caller can act on. [`Code`] is every machine-readable code gregor
//! answers with, whatever the transport: a REST problem's `code`, a WebSocket
//! `error` frame's `code`, a poll's per-partition error. Its status and title
//! live in one exhaustive table ([`Code::describe`]), so a code cannot have two
//! statuses, and a new code without one does not compile.

use crate::topic::TopicConfigError;

/// Everything the domain core, the store and the service layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),

    #[error("topic '{topic}' has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },

    #[error("topic '{0}' already exists")]
    TopicExists(String),

    #[error("invalid topic name: {0}")]
    InvalidTopicName(String),

    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),

    #[error(transparent)]
    InvalidConfig(#[from] TopicConfigError),

    /// A request body (or WebSocket frame) that is not JSON at all.
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),

    /// JSON, but not the expected shape.
    #[error("{0}")]
    InvalidRequest(String),

    /// A named field of the request body is wrong.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// A query parameter (or stream option) is wrong.
    #[error("{reason}")]
    InvalidParameter { field: Option<String>, reason: String },

    #[error("invalid record at index {index}: {reason}")]
    InvalidRecord { index: usize, field: &'static str, reason: String },

    /// A value (or key) that does not match the schema its topic requires.
    #[error("record at index {index}: its {field} does not match schema {schema_id} at '{pointer}': {reason}")]
    SchemaViolation { index: usize, field: &'static str, schema_id: u32, pointer: String, reason: String },

    /// A produce that needs a schema the registry does not have for the topic's subject.
    #[error("{reason}")]
    SchemaNotFound { subject: String, reason: String },

    #[error("record at index {index} is {size} bytes, more than the topic's max_message_bytes ({max})")]
    RecordTooLarge { index: usize, size: usize, max: u32 },

    #[error("offset {offset} is outside the partition's range [{beginning}, {end}]")]
    OffsetOutOfRange { offset: u64, beginning: u64, end: u64 },

    #[error("invalid group id: {0}")]
    InvalidGroupId(String),

    #[error("group '{0}' does not exist")]
    UnknownGroup(String),

    #[error("member '{member}' is not in group '{group}' (it left, its session expired, or it never joined)")]
    UnknownMember { group: String, member: String },

    #[error("generation {given} is not the member's current generation {current} in group '{group}'; poll to learn it")]
    IllegalGeneration { group: String, current: u64, given: u64 },

    /// The Kafka cluster fenced a member's request: its group has moved to a newer
    /// generation (or is rebalancing to one) whose number the answer does not tell.
    #[error(
        "group '{group}' has moved on from the member's generation (the cluster answered {answer}); poll to learn the current one"
    )]
    GenerationMoved { group: String, answer: &'static str },

    #[error("the member does not own partition {partition} of topic '{topic}'")]
    NotOwner { topic: String, partition: u32 },

    /// An idempotency key sent again with a different request.
    #[error("idempotency key '{0}' was used for a different request; use a new key for a new request")]
    IdempotencyKeyReused(String),

    /// A poll cursor that this server did not issue to this member, or that does not decode.
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),

    #[error("group '{0}' has active members; it can be deleted only when empty")]
    GroupNotEmpty(String),

    /// The group id is in use by members of the other protocol (REST/WebSocket vs Kafka).
    #[error("group '{0}' is in use by Kafka consumers; use another group id or wait until they leave")]
    GroupProtocolConflict(String),

    #[error("group '{group}' uses the {current} assignor; a member cannot join with {requested}")]
    InconsistentAssignor { group: String, current: &'static str, requested: &'static str },

    /// No credentials where they are required, or wrong ones.
    #[error("authentication failed: {0}")]
    Unauthenticated(String),

    /// The principal lacks a permission the operation needs.
    #[error("{principal} may not {operation} {resource}")]
    Forbidden { principal: String, operation: &'static str, resource: String },

    /// The principal is over a quota; `retry_after` says when it will not be.
    #[error("{principal} is over its {what} quota; retry in {retry_after:?}")]
    QuotaExceeded { principal: String, what: &'static str, retry_after: std::time::Duration },

    #[error("the write queue is full; retry shortly")]
    WriteQueueFull,

    /// The Kafka cluster behind the gateway did not answer, or failed the request.
    #[error("the Kafka cluster failed the request: {0}")]
    Backend(String),

    /// Something this backend (or the cluster behind it) does not offer.
    #[error("not supported: {0}")]
    Unsupported(String),

    #[error("the server is shutting down")]
    ShuttingDown,

    /// A write to the store failed, or the writer was lost. The log stops
    /// accepting writes after this (it is "poisoned"): offsets already handed out
    /// could otherwise be reused.
    #[error("storage failure: {0}")]
    Storage(String),

    /// Bytes read back from the store do not decode: a bug or on-disk corruption.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),

    /// A bug: something that cannot happen did (an answer that does not serialize,
    /// a reply that does not match its request). Never a client's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable code of this error.
    pub fn code(&self) -> Code {
        match self {
            Error::UnknownTopic(_) => Code::UnknownTopic,
            Error::UnknownPartition { .. } => Code::UnknownPartition,
            Error::TopicExists(_) => Code::TopicExists,
            Error::InvalidTopicName(_) => Code::InvalidTopicName,
            Error::InvalidPartitions(_) => Code::InvalidPartitions,
            Error::InvalidConfig(_) => Code::InvalidConfig,
            Error::InvalidJson(_) => Code::InvalidJson,
            Error::InvalidRequest(_) | Error::InvalidArgument { .. } => Code::InvalidRequest,
            Error::InvalidParameter { .. } => Code::InvalidParameter,
            Error::InvalidRecord { .. } => Code::InvalidRecord,
            Error::RecordTooLarge { .. } => Code::RecordTooLarge,
            Error::SchemaViolation { .. } => Code::SchemaViolation,
            Error::SchemaNotFound { .. } => Code::SchemaNotFound,
            Error::OffsetOutOfRange { .. } => Code::OffsetOutOfRange,
            Error::InvalidGroupId(_) => Code::InvalidGroupId,
            Error::UnknownGroup(_) => Code::UnknownGroup,
            Error::UnknownMember { .. } => Code::UnknownMember,
            Error::IllegalGeneration { .. } | Error::GenerationMoved { .. } => Code::IllegalGeneration,
            Error::NotOwner { .. } => Code::NotOwner,
            Error::InvalidCursor(_) => Code::InvalidCursor,
            Error::IdempotencyKeyReused(_) => Code::IdempotencyKeyReused,
            Error::GroupNotEmpty(_) => Code::GroupNotEmpty,
            Error::GroupProtocolConflict(_) => Code::GroupProtocolConflict,
            Error::InconsistentAssignor { .. } => Code::InconsistentAssignor,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Forbidden { .. } => Code::Forbidden,
            Error::QuotaExceeded { .. } => Code::QuotaExceeded,
            Error::WriteQueueFull => Code::WriteQueueFull,
            Error::Backend(_) => Code::BackendUnavailable,
            Error::Unsupported(_) => Code::NotSupported,
            Error::ShuttingDown => Code::ShuttingDown,
            Error::Storage(_) => Code::StorageError,
            Error::Corrupt(_) => Code::CorruptData,
            Error::Internal(_) => Code::InternalError,
        }
    }

    /// A parameter error naming its parameter.
    pub fn parameter(field: &str, reason: impl Into<String>) -> Error {
        Error::InvalidParameter { field: Some(field.to_owned()), reason: reason.into() }
    }

    /// What a client may be told. Server-side failures say only that the server
    /// failed (their details go to the log); client errors say exactly what was wrong.
    pub fn public_detail(&self) -> String {
        if self.code().is_server_fault() { SERVER_FAULT_DETAIL.to_owned() } else { self.to_string() }
    }
}

/// The detail of a server-side failure as clients see it.
pub const SERVER_FAULT_DETAIL: &str = "the server failed to complete the request; details are in its log";

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Storage(e.into_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every stable, machine-readable error code gregor answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    // Requests that name something that is not there.
    UnknownTopic,
    UnknownPartition,
    UnknownGroup,
    UnknownMember,
    NotFound,
    // Requests that are malformed.
    InvalidJson,
    InvalidRequest,
    InvalidParameter,
    InvalidTopicName,
    InvalidPartitions,
    InvalidConfig,
    InvalidGroupId,
    InvalidCursor,
    InvalidRecord,
    SchemaViolation,
    SchemaNotFound,
    IdempotencyKeyReused,
    RecordTooLarge,
    RequestTooLarge,
    MethodNotAllowed,
    UnsupportedMediaType,
    WebsocketRequired,
    // Requests that conflict with the state.
    TopicExists,
    OffsetOutOfRange,
    IllegalGeneration,
    NotOwner,
    GroupNotEmpty,
    GroupProtocolConflict,
    InconsistentAssignor,
    // Security.
    Unauthenticated,
    Forbidden,
    // Browser safety.
    OriginNotAllowed,
    HostNotAllowed,
    // Polls and streams, per partition or per frame.
    NoCommittedOffset,
    InvalidFrame,
    NotAGroupStream,
    AckNotDelivered,
    BinaryFramesUnsupported,
    NotSupported,
    // The server cannot serve now.
    QuotaExceeded,
    WriteQueueFull,
    BackendUnavailable,
    ShuttingDown,
    TooManyConnections,
    StorageError,
    CorruptData,
    InternalError,
}

/// What a code means to a client: its HTTP status, title, and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo {
    pub code: &'static str,
    pub status: u16,
    pub title: &'static str,
    /// Worth retrying after a moment (`Retry-After` is sent with it).
    pub retry: bool,
}

impl Code {
    /// The table: every code's name, status, title and retry advice.
    pub const fn describe(self) -> CodeInfo {
        const fn info(code: &'static str, status: u16, title: &'static str) -> CodeInfo {
            CodeInfo { code, status, title, retry: false }
        }
        const fn retry(code: &'static str, status: u16, title: &'static str) -> CodeInfo {
            CodeInfo { code, status, title, retry: true }
        }
        match self {
            Code::UnknownTopic => info("unknown_topic", 404, "Unknown topic"),
            Code::UnknownPartition => info("unknown_partition", 404, "Unknown partition"),
            Code::UnknownGroup => info("unknown_group", 404, "Unknown group"),
            Code::UnknownMember => info("unknown_member", 404, "Unknown member"),
            Code::NotFound => info("not_found", 404, "Not found"),
            Code::InvalidJson => info("invalid_json", 400, "Malformed JSON"),
            Code::InvalidRequest => info("invalid_request", 400, "Invalid request body"),
            Code::InvalidParameter => info("invalid_parameter", 400, "Invalid parameter"),
            Code::InvalidTopicName => info("invalid_topic_name", 400, "Invalid topic name"),
            Code::InvalidPartitions => info("invalid_partitions", 400, "Invalid partition count"),
            Code::InvalidConfig => info("invalid_config", 400, "Invalid topic configuration"),
            Code::InvalidGroupId => info("invalid_group_id", 400, "Invalid group id"),
            Code::InvalidCursor => info("invalid_cursor", 400, "Invalid cursor"),
            Code::InvalidRecord => info("invalid_record", 422, "Invalid record"),
            Code::SchemaViolation => info("schema_violation", 422, "Record does not match its schema"),
            Code::SchemaNotFound => info("schema_not_found", 422, "No schema for the topic's subject"),
            Code::IdempotencyKeyReused => info("idempotency_key_reused", 422, "Idempotency key reused"),
            Code::RecordTooLarge => info("record_too_large", 413, "Record too large"),
            Code::RequestTooLarge => info("request_too_large", 413, "Request too large"),
            Code::MethodNotAllowed => info("method_not_allowed", 405, "Method not allowed"),
            Code::UnsupportedMediaType => info("unsupported_media_type", 415, "Unsupported media type"),
            Code::WebsocketRequired => info("websocket_required", 426, "WebSocket upgrade required"),
            Code::TopicExists => info("topic_exists", 409, "Topic already exists"),
            Code::OffsetOutOfRange => info("offset_out_of_range", 416, "Offset out of range"),
            Code::IllegalGeneration => info("illegal_generation", 409, "Illegal generation"),
            Code::NotOwner => info("not_owner", 409, "Partition not owned by the member"),
            Code::GroupNotEmpty => info("group_not_empty", 409, "Group not empty"),
            Code::GroupProtocolConflict => info("group_protocol_conflict", 409, "Group used by the other protocol"),
            Code::InconsistentAssignor => info("inconsistent_assignor", 409, "Assignor differs from the group's"),
            Code::Unauthenticated => info("unauthenticated", 401, "Authentication required"),
            Code::Forbidden => info("forbidden", 403, "Forbidden"),
            Code::OriginNotAllowed => info("origin_not_allowed", 403, "Origin not allowed"),
            Code::HostNotAllowed => info("host_not_allowed", 403, "Host not allowed"),
            Code::NoCommittedOffset => info("no_committed_offset", 409, "No committed offset"),
            Code::InvalidFrame => info("invalid_frame", 400, "Invalid frame"),
            Code::NotAGroupStream => info("not_a_group_stream", 400, "Not a group stream"),
            Code::AckNotDelivered => info("ack_not_delivered", 409, "Acknowledged record was not delivered"),
            Code::BinaryFramesUnsupported => info("binary_frames_unsupported", 400, "Binary frames unsupported"),
            Code::NotSupported => info("not_supported", 501, "Not supported by this backend"),
            Code::BackendUnavailable => retry("backend_unavailable", 503, "Kafka cluster unavailable"),
            Code::QuotaExceeded => retry("quota_exceeded", 429, "Quota exceeded"),
            Code::WriteQueueFull => retry("write_queue_full", 503, "Write queue full"),
            Code::ShuttingDown => retry("shutting_down", 503, "Shutting down"),
            Code::TooManyConnections => retry("too_many_connections", 503, "Too many connections"),
            Code::StorageError => info("storage_error", 503, "Storage failure"),
            Code::CorruptData => info("corrupt_data", 500, "Corrupt stored data"),
            Code::InternalError => info("internal_error", 500, "Internal error"),
        }
    }

    pub const fn as_str(self) -> &'static str {
        self.describe().code
    }

    pub const fn status(self) -> u16 {
        self.describe().status
    }

    /// A failure of the server rather than of the request: its details are logged,
    /// not sent (a Kafka cluster's failure names its brokers). (`write_queue_full`, `shutting_down` and `too_many_connections`
    /// are load, not faults: their messages are safe and useful to clients.)
    pub const fn is_server_fault(self) -> bool {
        matches!(self, Code::StorageError | Code::CorruptData | Code::InternalError | Code::BackendUnavailable)
    }

    /// Every code, for the tests that check the table.
    pub const ALL: &[Code] = &[
        Code::UnknownTopic,
        Code::UnknownPartition,
        Code::UnknownGroup,
        Code::UnknownMember,
        Code::NotFound,
        Code::InvalidJson,
        Code::InvalidRequest,
        Code::InvalidParameter,
        Code::InvalidTopicName,
        Code::InvalidPartitions,
        Code::InvalidConfig,
        Code::InvalidGroupId,
        Code::InvalidCursor,
        Code::InvalidRecord,
        Code::SchemaViolation,
        Code::SchemaNotFound,
        Code::IdempotencyKeyReused,
        Code::RecordTooLarge,
        Code::RequestTooLarge,
        Code::MethodNotAllowed,
        Code::UnsupportedMediaType,
        Code::WebsocketRequired,
        Code::TopicExists,
        Code::OffsetOutOfRange,
        Code::IllegalGeneration,
        Code::NotOwner,
        Code::GroupNotEmpty,
        Code::GroupProtocolConflict,
        Code::InconsistentAssignor,
        Code::Unauthenticated,
        Code::Forbidden,
        Code::OriginNotAllowed,
        Code::HostNotAllowed,
        Code::NoCommittedOffset,
        Code::InvalidFrame,
        Code::NotAGroupStream,
        Code::AckNotDelivered,
        Code::BinaryFramesUnsupported,
        Code::NotSupported,
        Code::QuotaExceeded,
        Code::WriteQueueFull,
        Code::BackendUnavailable,
        Code::ShuttingDown,
        Code::TooManyConnections,
        Code::StorageError,
        Code::CorruptData,
        Code::InternalError,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_statuses_are_errors() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Code::ALL {
            let info = c.describe();
            assert!(seen.insert(info.code), "{} twice", info.code);
            assert!(info.code.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'), "{}", info.code);
            assert!((400..600).contains(&info.status), "{}: {}", info.code, info.status);
            if c.is_server_fault() {
                assert!(info.status >= 500, "{}: a server fault is a 5xx", info.code);
            }
            if info.retry {
                assert!(matches!(info.status, 429 | 503), "{}: only 429s and 503s carry Retry-After", info.code);
            }
        }
    }
}
