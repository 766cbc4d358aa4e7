//! gregor's errors as Kafka's error codes (the numbers Kafka's clients know).

use crate::error::Error;
use crate::service::BatchError;

pub const NONE: i16 = 0;
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const REQUEST_TIMED_OUT: i16 = 7;
pub const REPLICA_NOT_AVAILABLE: i16 = 9;
pub const NETWORK_EXCEPTION: i16 = 13;
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const NOT_COORDINATOR: i16 = 16;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const INVALID_REQUIRED_ACKS: i16 = 21;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const INVALID_GROUP_ID: i16 = 24;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
pub const INVALID_TIMESTAMP: i16 = 32;
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub const ILLEGAL_SASL_STATE: i16 = 34;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_PARTITIONS: i16 = 37;
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
pub const INVALID_REQUEST: i16 = 42;
pub const INVALID_CONFIG: i16 = 40;
pub const POLICY_VIOLATION: i16 = 44;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
pub const KAFKA_STORAGE_ERROR: i16 = 56;
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
pub const NON_EMPTY_GROUP: i16 = 68;
pub const GROUP_ID_NOT_FOUND: i16 = 69;
pub const FENCED_LEADER_EPOCH: i16 = 74;
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
pub const OFFSET_NOT_AVAILABLE: i16 = 78;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const FENCED_INSTANCE_ID: i16 = 82;
pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
pub const INVALID_RECORD: i16 = 87;
pub const THROTTLING_QUOTA_EXCEEDED: i16 = 89;

/// What a topic or partition operation's error is called in Kafka.
pub fn code(e: &Error) -> i16 {
    match e {
        Error::UnknownTopic(_) | Error::UnknownPartition { .. } => UNKNOWN_TOPIC_OR_PARTITION,
        Error::TopicExists(_) => TOPIC_ALREADY_EXISTS,
        Error::InvalidTopicName(_) => INVALID_TOPIC_EXCEPTION,
        Error::InvalidPartitions(_) => INVALID_PARTITIONS,
        Error::InvalidConfig(_) => INVALID_CONFIG,
        Error::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
        Error::RecordTooLarge { .. } => MESSAGE_TOO_LARGE,
        Error::InvalidRecord { .. } => INVALID_RECORD,
        // `auth::Security::check` names the resource: "group 'g'", "topic 't'", "the cluster".
        Error::Forbidden { resource, .. } if resource.starts_with("group ") => GROUP_AUTHORIZATION_FAILED,
        Error::Forbidden { resource, .. } if resource == "the cluster" => CLUSTER_AUTHORIZATION_FAILED,
        Error::Forbidden { .. } => TOPIC_AUTHORIZATION_FAILED,
        Error::QuotaExceeded { .. } => THROTTLING_QUOTA_EXCEEDED,
        // Retriable: the client backs off and tries again.
        Error::WriteQueueFull => REQUEST_TIMED_OUT,
        Error::ShuttingDown => NOT_LEADER_OR_FOLLOWER,
        Error::Storage(_) | Error::Corrupt(_) => KAFKA_STORAGE_ERROR,
        Error::InvalidArgument { .. } | Error::InvalidParameter { .. } | Error::InvalidRequest(_) => INVALID_REQUEST,
        _ => UNKNOWN_SERVER_ERROR,
    }
}

/// What a refused produced batch is called in Kafka.
pub fn batch_code(e: &BatchError) -> i16 {
    match e {
        BatchError::Corrupt(_) => CORRUPT_MESSAGE,
        BatchError::TooLarge { .. } => MESSAGE_TOO_LARGE,
        BatchError::UnsupportedCompression(_) => UNSUPPORTED_COMPRESSION_TYPE,
        BatchError::Transactional => TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        BatchError::InvalidRecord(_) => INVALID_RECORD,
        BatchError::InvalidTimestamp(_) => INVALID_TIMESTAMP,
        BatchError::OutOfOrderSequence { .. } => OUT_OF_ORDER_SEQUENCE_NUMBER,
        BatchError::InvalidProducerEpoch { .. } => INVALID_PRODUCER_EPOCH,
    }
}
