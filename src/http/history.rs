//! The console's chart data: `/v1/history/...`, the recent past the server samples
//! (`crate::history`): records per second per topic and partition, lag per group and
//! partition, produce latency.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, Problem};
use super::extract::{Caller, Path};
use crate::history::{GroupHistory, ProduceHistory, TopicHistory, TopicsHistory};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(topics_history))
        .routes(routes!(topic_history))
        .routes(routes!(group_history))
        .routes(routes!(produce_history))
}

/// Records per second of every topic over the last ten minutes (the topics the caller may describe).
#[utoipa::path(get, path = "/v1/history/topics", tag = "history",
    responses((status = 200, description = "One series per topic, sampled every interval_ms", body = TopicsHistory)))]
async fn topics_history(State(state): State<AppState>, Caller(ctx): Caller) -> Result<Json<TopicsHistory>, ApiError> {
    Ok(Json(state.service.topics_history(&ctx)?))
}

/// A topic's partitions over the last ten minutes: end offsets and records per second.
#[utoipa::path(get, path = "/v1/history/topics/{topic}", tag = "history",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "One series per partition", body = TopicHistory),
        (status = 404, description = "No such topic (topic_not_found)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn topic_history(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(topic): Path<String>,
) -> Result<Json<TopicHistory>, ApiError> {
    Ok(Json(state.service.topic_history(&ctx, &topic).await?))
}

/// A group's lag per partition over the last ten minutes.
#[utoipa::path(get, path = "/v1/history/groups/{group}", tag = "history",
    params(("group" = String, Path, description = "Group id")),
    responses(
        (status = 200, description = "Lag per partition with a committed offset, and in total", body = GroupHistory),
        (status = 404, description = "No such group (group_not_found)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn group_history(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(group): Path<String>,
) -> Result<Json<GroupHistory>, ApiError> {
    Ok(Json(state.service.group_history(&ctx, &group).await?))
}

/// Produce latency (admission to acknowledgement, every transport) per interval over the
/// last ten minutes. Needs `describe` on the cluster, as `/metrics` does.
#[utoipa::path(get, path = "/v1/history/produce", tag = "history",
    responses((status = 200, description = "Count, median, 99th percentile and maximum per interval", body = ProduceHistory)))]
async fn produce_history(State(state): State<AppState>, Caller(ctx): Caller) -> Result<Json<ProduceHistory>, ApiError> {
    Ok(Json(state.service.produce_history(&ctx)?))
}
