//! The core error type: what can go wrong in the log, in terms a caller can act on.
//!
//! Transports map every variant to a status and a stable code (see `http::error`);
//! this module knows nothing of HTTP.

use crate::topic::TopicConfigError;

/// Everything the domain core and the store can fail with.
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

    #[error("invalid record at index {index}: {reason}")]
    InvalidRecord { index: usize, field: &'static str, reason: String },

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

    #[error("the member does not own partition {partition} of topic '{topic}'")]
    NotOwner { topic: String, partition: u32 },

    #[error("group '{0}' has active members; it can be deleted only when empty")]
    GroupNotEmpty(String),

    #[error("group '{group}' uses the {current} assignor; a member cannot join with {requested}")]
    InconsistentAssignor { group: String, current: &'static str, requested: &'static str },

    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    #[error("the write queue is full; retry shortly")]
    WriteQueueFull,

    #[error("the server is shutting down")]
    ShuttingDown,

    /// A write to the store failed. The store stops accepting writes after this
    /// (it is "poisoned"): offsets already handed out could otherwise be reused.
    #[error("storage failure: {0}")]
    Storage(String),

    /// Bytes read back from the store do not decode: a bug or on-disk corruption.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Storage(e.into_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
