//! Produce and read routes: `/v1/topics/{topic}/records` and
//! `/v1/topics/{topic}/partitions/{partition}/records`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::codec::{self, Encoding, ProduceBody};
use super::error::{ApiError, Problem, parse_json};
use super::extract::{Body, Path, Query};
use crate::error::Error;
use crate::log::{Acks, Produced, ReadRequest};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(produce)).routes(routes!(produce_to_partition, read))
}

/// Kafka's `acks`; `0`, `1` and `-1` are accepted as aliases.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum AcksParam {
    /// Answer `202` before the write (fire-and-forget).
    #[serde(alias = "0")]
    None,
    /// Answer `200` once the write is in the WAL: survives a crash of the process.
    #[serde(alias = "1")]
    Leader,
    /// Answer `200` once the WAL is fsynced: survives power loss. The default.
    #[default]
    #[serde(alias = "-1")]
    All,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProduceParams {
    /// Delivery guarantee before the answer: `none`, `leader` or `all` (default).
    acks: Option<AcksParam>,
}

/// A produce request.
#[derive(Debug, ToSchema)]
#[schema(example = json!({"records": [
    {"key": "user-1", "value": {"action": "login"}, "headers": [{"name": "trace", "value": "abc"}]},
    {"value_base64": "AAEC", "partition": 0, "timestamp": 1700000000000u64}
]}))]
#[allow(dead_code)]
pub struct ProduceRequest {
    /// Records, stored in this order; each partition's share is one atomic batch.
    #[schema(min_items = 1)]
    records: Vec<ProduceRecord>,
}

/// A record to produce. Give at most one of `key`/`key_base64` and of `value`/`value_base64`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ProduceRecord {
    /// Key as JSON. A string is stored as its UTF-8 bytes (and hashed like Kafka's
    /// StringSerializer); other JSON is stored as the text sent.
    key: Option<serde_json::Value>,
    /// Key as base64 bytes.
    key_base64: Option<String>,
    /// Value as JSON: a string is stored as its UTF-8 bytes, other JSON verbatim.
    /// Absent or `null` is a null value (Kafka's tombstone).
    value: Option<serde_json::Value>,
    /// Value as base64 bytes.
    value_base64: Option<String>,
    /// Ordered headers; names may repeat.
    headers: Option<Vec<HeaderDoc>>,
    /// Explicit partition. Without it a keyed record goes to
    /// `murmur2(key) % partitions` (Kafka's default partitioner) and unkeyed
    /// records of one request all go to one partition, chosen round-robin per request.
    partition: Option<u32>,
    /// Timestamp in ms since the epoch; default: the broker's clock at append.
    #[schema(maximum = 9223372036854775807i64)]
    timestamp: Option<u64>,
}

/// A record header.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct HeaderDoc {
    name: String,
    /// Value as JSON (a string is its UTF-8 bytes).
    value: Option<serde_json::Value>,
    /// Value as base64 bytes.
    value_base64: Option<String>,
}

/// Where each record landed, in request order (Kafka's `RecordMetadata`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProduceResponse {
    offsets: Vec<RecordOffset>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordOffset {
    partition: u32,
    offset: u64,
    /// The record's timestamp (ms), given or assigned.
    timestamp: u64,
}

/// `acks=none`: the records are queued, not yet written.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProduceAccepted {
    accepted: usize,
}

/// Produce records to a topic.
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/records",
    tag = "records",
    params(("topic" = String, Path, description = "Topic name"), ProduceParams),
    request_body(content = ProduceRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Written (acks=leader|all)", body = ProduceResponse),
        (status = 202, description = "Queued (acks=none)", body = ProduceAccepted),
        (status = 400, description = "Malformed JSON or parameters", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic or partition", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Record or request too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid record (bad base64, two forms of one field, …)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Write queue full or shutting down; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn produce(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    Query(params): Query<ProduceParams>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    produce_records(&state, &topic, None, params, &body).await
}

/// Produce records to one partition.
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/partitions/{partition}/records",
    tag = "records",
    params(
        ("topic" = String, Path, description = "Topic name"),
        ("partition" = u32, Path, description = "Partition"),
        ProduceParams
    ),
    request_body(content = ProduceRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Written (acks=leader|all)", body = ProduceResponse),
        (status = 202, description = "Queued (acks=none)", body = ProduceAccepted),
        (status = 400, description = "Malformed JSON or parameters", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic or partition", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Record or request too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid record", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Write queue full or shutting down; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn produce_to_partition(
    State(state): State<AppState>,
    Path((topic, partition)): Path<(String, u32)>,
    Query(params): Query<ProduceParams>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    produce_records(&state, &topic, Some(partition), params, &body).await
}

async fn produce_records(
    state: &AppState,
    topic: &str,
    partition: Option<u32>,
    params: ProduceParams,
    body: &[u8],
) -> Result<Response, ApiError> {
    let parsed: ProduceBody<'_> = parse_json(body)?;
    if parsed.records.is_empty() {
        return Err(ApiError::InvalidRequest("records: give at least one record".into()));
    }
    let records =
        parsed.records.into_iter().enumerate().map(|(i, r)| r.into_record(i)).collect::<Result<Vec<_>, Error>>()?;
    let acks = match params.acks.unwrap_or_default() {
        AcksParam::None => Acks::None,
        AcksParam::Leader => Acks::Leader,
        AcksParam::All => Acks::All,
    };
    let produced = state.log.produce(topic, &records, partition, acks).await?;
    state.metrics.records_in(topic, records.len());
    Ok(match produced {
        Produced::Accepted { records } => {
            (StatusCode::ACCEPTED, axum::Json(ProduceAccepted { accepted: records })).into_response()
        }
        Produced::Written(meta) => {
            ([(header::CONTENT_TYPE, "application/json")], produce_response_json(&meta)).into_response()
        }
    })
}

/// `ProduceResponse` as JSON, written directly: only integers, so nothing needs
/// escaping, and serde's generic path cost about as much as parsing the request.
fn produce_response_json(meta: &[crate::log::RecordMetadata]) -> String {
    let mut out = String::with_capacity(16 + meta.len() * 64);
    let mut num = itoa::Buffer::new();
    out.push_str("{\"offsets\":[");
    for (i, m) in meta.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"partition\":");
        out.push_str(num.format(m.partition));
        out.push_str(",\"offset\":");
        out.push_str(num.format(m.offset));
        out.push_str(",\"timestamp\":");
        out.push_str(num.format(m.timestamp));
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// The most records one read returns.
pub const MAX_LIMIT: u32 = 10_000;
/// The most bytes one read may ask for.
pub const MAX_READ_BYTES: usize = 64 * 1024 * 1024;
/// The longest a read may long-poll.
pub const MAX_WAIT_MS: u64 = 60_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// First offset to read; default: the partition's beginning offset.
    offset: Option<u64>,
    /// Most records to return (1–10000, default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// Most record bytes to return (default 1 MiB, at most 64 MiB); at least one
    /// record is returned when one is available, whatever its size.
    #[param(minimum = 1, maximum = 67108864)]
    max_bytes: Option<usize>,
    /// When `offset` is the end of the log, wait up to this long (ms, at most
    /// 60000) for a record to arrive. Default 0.
    #[param(maximum = 60000)]
    wait_ms: Option<u64>,
    /// `auto` (default): bytes in the form they were produced in; `base64`: all as base64.
    encoding: Option<Encoding>,
}

/// Records read from a partition.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct RecordsPage {
    records: Vec<RecordDoc>,
    /// The offset to read next.
    next_offset: u64,
    beginning_offset: u64,
    /// The partition's end offset (next offset to be assigned) when the read ran.
    end_offset: u64,
}

/// A stored record. Each byte string appears as `key`/`value` (JSON or text, as
/// produced) or as `key_base64`/`value_base64` (binary, or with `encoding=base64`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct RecordDoc {
    topic: String,
    partition: u32,
    offset: u64,
    timestamp: u64,
    key: Option<serde_json::Value>,
    key_base64: Option<String>,
    value: Option<serde_json::Value>,
    value_base64: Option<String>,
    headers: Vec<HeaderDoc>,
}

/// Read records from a partition, long-polling when there are none yet.
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}/partitions/{partition}/records",
    tag = "records",
    params(
        ("topic" = String, Path, description = "Topic name"),
        ("partition" = u32, Path, description = "Partition"),
        ReadParams
    ),
    responses(
        (status = 200, description = "Records from the offset on (possibly none)", body = RecordsPage),
        (status = 400, description = "Invalid parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic or partition", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "Offset outside [beginning_offset, end_offset]", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn read(
    State(state): State<AppState>,
    Path((topic, partition)): Path<(String, u32)>,
    Query(params): Query<ReadParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::parameter("limit", format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let max_bytes = params.max_bytes.unwrap_or(1024 * 1024);
    if max_bytes == 0 || max_bytes > MAX_READ_BYTES {
        return Err(ApiError::parameter("max_bytes", format!("max_bytes must be between 1 and {MAX_READ_BYTES}")));
    }
    let wait_ms = params.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::parameter("wait_ms", format!("wait_ms is at most {MAX_WAIT_MS}")));
    }
    let offset = match params.offset {
        Some(o) => o,
        None => state.log.topic(&topic)?.partition(partition)?.start(),
    };
    let req = ReadRequest { offset, max_records: limit, max_bytes, wait: Duration::from_millis(wait_ms) };
    let result = state.log.read(&topic, partition, req).await?;
    let records = result.records()?;
    state.metrics.records_out(&topic, records.len());
    let encoding = params.encoding.unwrap_or_default();
    let mut out = Vec::with_capacity(64 + records.len() * 160);
    out.extend_from_slice(b"{\"records\":[");
    for (i, (off, rec)) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        codec::write_record(&mut out, &topic, partition, *off, rec, encoding);
    }
    let next = records.last().map_or(offset, |(o, _)| o + 1);
    let tail = format!(
        "],\"next_offset\":{next},\"beginning_offset\":{},\"end_offset\":{}}}",
        result.beginning_offset, result.end_offset
    );
    out.extend_from_slice(tail.as_bytes());
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::RecordMetadata;

    #[test]
    fn hand_written_produce_response_is_what_serde_writes() {
        for meta in [
            vec![],
            vec![RecordMetadata { partition: 0, offset: 0, timestamp: 0 }],
            vec![
                RecordMetadata { partition: 3, offset: 41, timestamp: 1_700_000_000_000 },
                RecordMetadata { partition: u32::MAX, offset: u64::MAX, timestamp: i64::MAX as u64 },
            ],
        ] {
            let expected = serde_json::to_string(&ProduceResponse {
                offsets: meta
                    .iter()
                    .map(|m| RecordOffset { partition: m.partition, offset: m.offset, timestamp: m.timestamp })
                    .collect(),
            })
            .unwrap();
            assert_eq!(produce_response_json(&meta), expected);
        }
    }
}
