//! Topic names and per-topic configuration: parsed once, valid from then on.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;

/// The most partitions a topic may have. Every partition costs a little memory
/// (its end-offset notification) and one key range in the store; the bound keeps
/// a typo such as `"partitions": 100000000` from exhausting the server.
pub const MAX_PARTITIONS: u32 = 4096;

/// Kafka's default `max.message.bytes` (1 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1024 * 1024;

/// The largest `max_message_bytes` a topic may set (64 MiB).
pub const MAX_MAX_MESSAGE_BYTES: u32 = 64 * 1024 * 1024;

/// Kafka's default `retention.ms`: seven days.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// A topic name that follows Kafka's rule: 1–249 characters of `[a-zA-Z0-9._-]`,
/// and neither `.` nor `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicName(String);

/// Kafka's rule for topic names, also used for group ids (which then stay
/// URL-safe): 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("a {kind} cannot be empty"));
    }
    if name.len() > 249 {
        return Err(format!("a {kind} has at most 249 characters, this one has {}", name.len()));
    }
    if name == "." || name == ".." {
        return Err(format!("'{name}' is not allowed as a {kind}"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("'{c}' is not allowed; a {kind} uses only a-z, A-Z, 0-9, '.', '_' and '-'"));
    }
    Ok(())
}

impl TopicName {
    pub fn parse(name: &str) -> Result<Self, Error> {
        check_name("topic name", name).map_err(Error::InvalidTopicName)?;
        Ok(TopicName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a partition count for a new topic or for growing one.
pub fn validate_partition_count(n: u32) -> Result<u32, Error> {
    if n == 0 || n > MAX_PARTITIONS {
        return Err(Error::InvalidPartitions(format!(
            "a topic has between 1 and {MAX_PARTITIONS} partitions, not {n}"
        )));
    }
    Ok(n)
}

/// A topic's settings, with Kafka's meanings and defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TopicConfig {
    /// How long a record is kept, in ms; `-1` keeps records forever. Default 7 days.
    pub retention_ms: i64,
    /// The most bytes kept per partition; `-1` (the default) means no limit.
    /// The newest batch of a partition is always kept.
    pub retention_bytes: i64,
    /// The largest record (key + value + headers) the topic accepts. Default 1 MiB.
    pub max_message_bytes: u32,
    /// Values must match the latest schema of the subject `<topic>-value` (or the one a
    /// request names): REST and WebSocket values are validated (and encoded to Avro on Avro
    /// subjects) and stored in Confluent's wire format; Kafka producers must send values
    /// framed with a schema id of that subject. Kafka's name (as Confluent Server's):
    /// `confluent.value.schema.validation`. Default false.
    #[serde(default)]
    pub value_schema_validation: bool,
    /// The same for keys, with the subject `<topic>-key`. Default false.
    #[serde(default)]
    pub key_schema_validation: bool,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: DEFAULT_RETENTION_MS,
            retention_bytes: -1,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            value_schema_validation: false,
            key_schema_validation: false,
        }
    }
}

/// A partial topic configuration: what a create or a PATCH request sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicConfigPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_schema_validation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_schema_validation: Option<bool>,
}

/// A configuration value out of its range.
#[derive(Debug, thiserror::Error)]
#[error("invalid config '{field}': {reason}")]
pub struct TopicConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl TopicConfig {
    /// Returns this configuration with `patch` applied, or the first invalid field.
    pub fn apply(&self, patch: &TopicConfigPatch) -> Result<TopicConfig, TopicConfigError> {
        let mut next = self.clone();
        if let Some(ms) = patch.retention_ms {
            if ms < -1 {
                return Err(TopicConfigError {
                    field: "retention_ms",
                    reason: format!("must be -1 (keep forever) or a number of ms ≥ 0, not {ms}"),
                });
            }
            next.retention_ms = ms;
        }
        if let Some(bytes) = patch.retention_bytes {
            if bytes < -1 {
                return Err(TopicConfigError {
                    field: "retention_bytes",
                    reason: format!("must be -1 (no limit) or a number of bytes ≥ 0, not {bytes}"),
                });
            }
            next.retention_bytes = bytes;
        }
        if let Some(max) = patch.max_message_bytes {
            if max == 0 || max > MAX_MAX_MESSAGE_BYTES {
                return Err(TopicConfigError {
                    field: "max_message_bytes",
                    reason: format!("must be between 1 and {MAX_MAX_MESSAGE_BYTES}, not {max}"),
                });
            }
            next.max_message_bytes = max;
        }
        if let Some(on) = patch.value_schema_validation {
            next.value_schema_validation = on;
        }
        if let Some(on) = patch.key_schema_validation {
            next.key_schema_validation = on;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_name_rule() {
        for ok in ["a", "orders", "Orders.v2", "a_b-c.d", &"x".repeat(249)] {
            assert!(TopicName::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in ["", ".", "..", "has space", "slash/x", "ünïcode", &"x".repeat(250)] {
            assert!(TopicName::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn config_patch_validates_each_field() {
        let base = TopicConfig::default();
        let patched = base.apply(&TopicConfigPatch { retention_ms: Some(-1), ..Default::default() }).unwrap();
        assert_eq!(patched.retention_ms, -1);
        assert_eq!(patched.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
        let err = base.apply(&TopicConfigPatch { retention_bytes: Some(-5), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "retention_bytes");
        let err = base.apply(&TopicConfigPatch { max_message_bytes: Some(0), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "max_message_bytes");
    }

    #[test]
    fn partition_count_bounds() {
        assert!(validate_partition_count(0).is_err());
        assert!(validate_partition_count(1).is_ok());
        assert!(validate_partition_count(MAX_PARTITIONS).is_ok());
        assert!(validate_partition_count(MAX_PARTITIONS + 1).is_err());
    }
}
