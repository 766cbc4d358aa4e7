//! Produce and read routes: `/v1/topics/{topic}/records` and
//! `/v1/topics/{topic}/partitions/{partition}/records`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, Problem};
use super::extract::{Body, Caller, Path, Query};
use crate::codec::{self, Encoding};
use crate::service::{Acks, ProduceOpts, Produced, ReadParams as ServiceReadParams};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(produce)).routes(routes!(produce_to_partition, read))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProduceParams {
    /// Delivery guarantee before the answer: `none`, `leader` or `all` (default);
    /// Kafka's `0`, `1` and `-1` are accepted as aliases.
    acks: Option<Acks>,
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
    /// Validate (and encode) the values with this schema, a version of the subject
    /// `<topic>-value`, instead of the subject's latest; allowed on any topic.
    value_schema_id: Option<u32>,
    /// The same for keys (subject `<topic>-key`).
    key_schema_id: Option<u32>,
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
    params(("topic" = String, Path, description = "Topic name"), ProduceParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the produce idempotent: a retry with the same key (per principal and topic, within `idempotency_window_ms`) gets the first answer again, with `Idempotent-Replayed: true`, and writes nothing. 1–255 visible ASCII characters.")),
    request_body(content = ProduceRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Written (acks=leader|all)", body = ProduceResponse),
        (status = 202, description = "Queued (acks=none)", body = ProduceAccepted),
        (status = 400, description = "Malformed JSON or parameters", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic or partition", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Record or request too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid record (bad base64, two forms of one field, …); a value that does not match the topic's schema (schema_violation, with `index`, `field`, `pointer`, `schema_id`) or a topic whose subject has no schema (schema_not_found); or an idempotency key reused for another request (idempotency_key_reused)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Write queue full or shutting down; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn produce(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(topic): Path<String>,
    Query(params): Query<ProduceParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    produce_records(&state, &ctx, &topic, None, params, &headers, &body).await
}

/// Produce records to one partition.
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/partitions/{partition}/records",
    tag = "records",
    params(
        ("topic" = String, Path, description = "Topic name"),
        ("partition" = u32, Path, description = "Partition"),
        ProduceParams,
        ("Idempotency-Key" = Option<String>, Header, description = "As for `POST /v1/topics/{topic}/records`.")
    ),
    request_body(content = ProduceRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Written (acks=leader|all)", body = ProduceResponse),
        (status = 202, description = "Queued (acks=none)", body = ProduceAccepted),
        (status = 400, description = "Malformed JSON or parameters", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic or partition", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Record or request too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid record, a schema violation (schema_violation) or missing schema (schema_not_found), or an idempotency key reused for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Write queue full or shutting down; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn produce_to_partition(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path((topic, partition)): Path<(String, u32)>,
    Query(params): Query<ProduceParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    produce_records(&state, &ctx, &topic, Some(partition), params, &headers, &body).await
}

async fn produce_records(
    state: &AppState,
    ctx: &crate::service::RequestCtx,
    topic: &str,
    partition: Option<u32>,
    params: ProduceParams,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let (records, schemas) = codec::parse_produce_body(body)?;
    let opts = ProduceOpts { partition, acks: params.acks.unwrap_or_default(), schemas };
    let (produced, replayed) = match headers.get(IDEMPOTENCY_KEY) {
        None => (state.service.produce(ctx, topic, opts, &records).await?, false),
        Some(key) => {
            let key = key.to_str().unwrap_or("\u{fffd}");
            state.service.produce_idempotent(ctx, topic, opts, &records, key).await?
        }
    };
    let mut response = match produced {
        Produced::Accepted { records } => {
            (StatusCode::ACCEPTED, axum::Json(ProduceAccepted { accepted: records })).into_response()
        }
        Produced::Written(meta) => {
            let mut out = String::with_capacity(16 + meta.len() * 64);
            out.push('{');
            codec::write_offsets(&mut out, &meta);
            out.push('}');
            ([(header::CONTENT_TYPE, "application/json")], out).into_response()
        }
    };
    if replayed {
        response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The request header that makes a produce idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer that repeats the first answer to its idempotency key.
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

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
    /// `auto` (default): bytes in the form they were produced in, and values (keys) in
    /// Confluent's wire format with a schema of the topic's subject decoded to JSON (with
    /// `value_schema_id`); `base64`: all as stored, as base64 (the raw bytes).
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
    /// The schema a key in Confluent's wire format was decoded by (`key` is then its JSON).
    key_schema_id: Option<u32>,
    value: Option<serde_json::Value>,
    value_base64: Option<String>,
    /// The schema a value in Confluent's wire format was decoded by (`value` is then its JSON).
    value_schema_id: Option<u32>,
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
    Caller(ctx): Caller,
    Path((topic, partition)): Path<(String, u32)>,
    Query(params): Query<ReadParams>,
) -> Result<Response, ApiError> {
    let asked = ServiceReadParams {
        offset: params.offset,
        limit: params.limit,
        max_bytes: params.max_bytes,
        wait_ms: params.wait_ms,
    };
    let fetched = state.service.read(&ctx, &topic, partition, asked).await?;
    let records = fetched.records.decode()?;
    let encoding = params.encoding.unwrap_or_default();
    let mut decoder = state.service.decoder();
    let mut out = Vec::with_capacity(64 + records.len() * 160);
    out.extend_from_slice(b"{\"records\":[");
    for (i, (off, rec)) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        codec::write_record(&mut out, &topic, partition, *off, rec, encoding, decoder.as_mut());
    }
    let next = records.last().map_or(fetched.offset, |(o, _)| o + 1);
    let tail = format!(
        "],\"next_offset\":{next},\"beginning_offset\":{},\"end_offset\":{}}}",
        fetched.beginning_offset, fetched.end_offset
    );
    out.extend_from_slice(tail.as_bytes());
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}
