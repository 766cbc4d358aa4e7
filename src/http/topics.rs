//! Topic and partition routes: `/v1/topics`, `/v1/topics/{topic}`,
//! `/v1/topics/{topic}/partitions[/{partition}[/offsets]]`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, Problem};
use super::extract::{Body, Caller, Path, Query};
use crate::codec::parse_json;
use crate::service::{PartitionInfo, TopicDescription, TopicSummary};
use crate::topic::TopicConfigPatch;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_topics, create_topic))
        .routes(routes!(describe_topic, update_topic, delete_topic))
        .routes(routes!(list_partitions))
        .routes(routes!(describe_partition))
        .routes(routes!(offset_for_timestamp))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopicList {
    topics: Vec<TopicSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionList {
    partitions: Vec<PartitionInfo>,
}

/// Create a topic.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "orders", "partitions": 3, "config": {"retention_ms": 86400000}}))]
pub struct CreateTopic {
    /// 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
    #[schema(pattern = r"^(?!\.\.?$)[a-zA-Z0-9._-]{1,249}$")]
    name: String,
    /// Number of partitions (1–4096). Default 1.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 4096)]
    partitions: u32,
    #[serde(default)]
    config: TopicConfigPatch,
}

fn one() -> u32 {
    1
}

/// Change a topic: its configuration, and/or grow its partition count.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"partitions": 6, "config": {"retention_bytes": 1073741824}}))]
pub struct UpdateTopic {
    /// New partition count; partitions can be added, never removed.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4096)]
    partitions: Option<u32>,
    #[serde(default)]
    config: TopicConfigPatch,
}

/// List topics.
#[utoipa::path(get, path = "/v1/topics", tag = "topics",
    responses((status = 200, description = "All topics, by name", body = TopicList)))]
async fn list_topics(State(state): State<AppState>, Caller(ctx): Caller) -> Result<Json<TopicList>, ApiError> {
    Ok(Json(TopicList { topics: state.service.list_topics(&ctx).await? }))
}

/// Create a topic.
#[utoipa::path(post, path = "/v1/topics", tag = "topics",
    request_body(content = CreateTopic, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = TopicDescription),
        (status = 400, description = "Invalid name, partition count or config", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A topic with this name exists (topic_exists)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_topic(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let req: CreateTopic = parse_json(&body)?;
    let topic = state.service.create_topic(&ctx, &req.name, req.partitions, &req.config).await?;
    let location = format!("/v1/topics/{}", topic.name);
    let mut res = (StatusCode::CREATED, Json(topic)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// Describe a topic: partitions with their offsets, and configuration.
#[utoipa::path(get, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = TopicDescription),
        (status = 404, description = "Unknown topic", body = Problem, content_type = "application/problem+json"),
    ))]
async fn describe_topic(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(topic): Path<String>,
) -> Result<Json<TopicDescription>, ApiError> {
    Ok(Json(state.service.describe_topic(&ctx, &topic).await?))
}

/// Change a topic's configuration or add partitions.
#[utoipa::path(patch, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    request_body(content = UpdateTopic, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated topic", body = TopicDescription),
        (status = 400, description = "Invalid config, or fewer partitions than now", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_topic(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(topic): Path<String>,
    Body(body): Body,
) -> Result<Json<TopicDescription>, ApiError> {
    let req: UpdateTopic = parse_json(&body)?;
    Ok(Json(state.service.alter_topic(&ctx, &topic, req.partitions, &req.config).await?))
}

/// Delete a topic and all its records.
#[utoipa::path(delete, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Unknown topic", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_topic(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(topic): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_topic(&ctx, &topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a topic's partitions with their offsets.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "Partitions", body = PartitionList),
        (status = 404, description = "Unknown topic", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_partitions(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(topic): Path<String>,
) -> Result<Json<PartitionList>, ApiError> {
    Ok(Json(PartitionList { partitions: state.service.describe_topic(&ctx, &topic).await?.partitions }))
}

/// Describe one partition.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name"), ("partition" = u32, Path, description = "Partition")),
    responses(
        (status = 200, description = "The partition", body = PartitionInfo),
        (status = 400, description = "The partition is not a number", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic or partition", body = Problem, content_type = "application/problem+json"),
    ))]
async fn describe_partition(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path((topic, partition)): Path<(String, u32)>,
) -> Result<Json<PartitionInfo>, ApiError> {
    Ok(Json(state.service.describe_partition(&ctx, &topic, partition).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimestampParams {
    /// Milliseconds since the epoch.
    timestamp: u64,
}

/// The first offset whose timestamp is at or after the query (Kafka's offsetsForTimes).
#[derive(Debug, Serialize, ToSchema)]
pub struct TimestampOffsetInfo {
    partition: u32,
    /// The first offset whose record timestamp is ≥ the query; the end offset
    /// when no record is that recent.
    offset: u64,
    /// That record's timestamp, or null when no record is that recent.
    timestamp: Option<u64>,
}

/// Find the first offset at or after a timestamp.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/offsets", tag = "topics",
    params(("topic" = String, Path, description = "Topic name"), ("partition" = u32, Path, description = "Partition"), TimestampParams),
    responses(
        (status = 200, description = "The offset", body = TimestampOffsetInfo),
        (status = 400, description = "Missing or invalid timestamp", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic or partition", body = Problem, content_type = "application/problem+json"),
    ))]
async fn offset_for_timestamp(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path((topic, partition)): Path<(String, u32)>,
    Query(params): Query<TimestampParams>,
) -> Result<Json<TimestampOffsetInfo>, ApiError> {
    let found = state.service.offset_for_timestamp(&ctx, &topic, partition, params.timestamp).await?;
    Ok(Json(TimestampOffsetInfo { partition, offset: found.offset, timestamp: found.timestamp }))
}
