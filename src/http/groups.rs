//! Consumer group routes: `/v1/groups`, members (join, poll, heartbeat, leave),
//! committed offsets and offset resets.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, Problem};
use super::extract::{Body, Caller, Path, Query};
use super::records::RecordDoc;
use crate::codec::{self, Encoding, parse_json};
use crate::error::Error;
use crate::service::{
    Assignor, GroupState, JoinParams, OffsetEntry, OffsetReset, PollParams as ServicePollParams, ResetTo,
    TopicPartition, View,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_groups))
        .routes(routes!(describe_group, delete_group))
        .routes(routes!(join))
        .routes(routes!(poll))
        .routes(routes!(heartbeat))
        .routes(routes!(leave))
        .routes(routes!(commit))
        .routes(routes!(reset_offsets))
}

/// Partitions of one topic.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicPartitions {
    topic: String,
    partitions: Vec<u32>,
}

pub fn by_topic<'a>(tps: impl IntoIterator<Item = &'a TopicPartition>) -> Vec<TopicPartitions> {
    crate::service::by_topic(tps)
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions { topic: topic.to_owned(), partitions })
        .collect()
}

/// Join a group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"topics": ["orders"], "auto_offset_reset": "earliest", "session_timeout_ms": 10000}))]
pub struct JoinBody {
    /// Topics to consume.
    #[schema(min_items = 1)]
    topics: Vec<String>,
    /// Where to start on partitions without a committed offset: `earliest`, `latest` (default) or `none`.
    #[serde(default)]
    auto_offset_reset: Option<OffsetReset>,
    /// The member is removed (and its partitions move) when it has not polled or
    /// heartbeated for this long. Default 45000; bounds set by the server.
    #[serde(default)]
    session_timeout_ms: Option<u64>,
    /// `cooperative-sticky` (default), `range` or `roundrobin`; every member of a group uses the same.
    #[serde(default)]
    assignor: Option<Assignor>,
    /// Static membership (KIP-345): a member that rejoins with the same id before its
    /// session expires takes its partitions back without a rebalance.
    #[serde(default)]
    instance_id: Option<String>,
}

/// What a member owns after a join, poll or heartbeat.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    member_id: String,
    /// The group's generation; commits must state it.
    generation: u64,
    /// Partitions the member may consume now.
    assignment: Vec<TopicPartitions>,
    /// Partitions the member must give up: commit their offsets now. The next poll
    /// or heartbeat releases them to their new owner.
    revoked: Vec<TopicPartitions>,
}

fn member_view(member_id: &str, view: &View) -> MemberView {
    MemberView {
        member_id: member_id.to_owned(),
        generation: view.generation,
        assignment: by_topic(&view.assignment),
        revoked: by_topic(&view.revoked),
    }
}

/// A new member.
#[derive(Debug, Serialize, ToSchema)]
pub struct Joined {
    #[serde(flatten)]
    view: MemberView,
    session_timeout_ms: u64,
    /// How often to poll or heartbeat at least (a third of the session timeout).
    heartbeat_interval_ms: u64,
    /// Send this as `cursor` with the first poll (see the poll's `cursor`).
    cursor: String,
}

/// Join a consumer group (creating it if needed).
#[utoipa::path(post, path = "/v1/groups/{group}/members", tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    request_body(content = JoinBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Joined; the answer names the member and what it owns now", body = Joined),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Assignor differs from the group's (inconsistent_assignor), or Kafka consumers use the group (group_protocol_conflict)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn join(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(group): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let req: JoinBody = parse_json(&body)?;
    let joined = state
        .service
        .join_group(
            &ctx,
            &group,
            JoinParams {
                topics: req.topics,
                auto_offset_reset: req.auto_offset_reset,
                session_timeout_ms: req.session_timeout_ms,
                assignor: req.assignor,
                instance_id: req.instance_id,
            },
        )
        .await?;
    let body = Joined {
        view: member_view(&joined.member_id, &joined.view),
        session_timeout_ms: joined.session_timeout_ms,
        heartbeat_interval_ms: joined.session_timeout_ms / 3,
        cursor: joined.cursor,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollParams {
    /// Most records to return (1–10000, default 500).
    #[param(minimum = 1, maximum = 10000)]
    max_records: Option<u32>,
    /// Wait up to this long (ms, at most 60000) when there is nothing to return. Default 0.
    #[param(maximum = 60000)]
    wait_ms: Option<u64>,
    /// `auto` (default) or `base64` (bytes as stored), as for partition reads.
    encoding: Option<Encoding>,
    /// Most record bytes in the answer (default 50 MiB, at most 64 MiB, Kafka's
    /// `fetch.max.bytes`); at least one record is returned when one is available.
    #[param(minimum = 1, maximum = 67108864)]
    max_bytes: Option<usize>,
    /// The `cursor` of the last answer received (or of the join). The poll reads
    /// from the positions it holds, so repeating a poll whose answer was lost
    /// returns the same records. Without it the server-held positions are used,
    /// and a lost answer's records come back only through the committed offset.
    #[param(max_length = 32768, pattern = "^[A-Za-z0-9_-]*$")]
    cursor: Option<String>,
}

/// A poll's answer.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct PollAnswer {
    member_id: String,
    generation: u64,
    assignment: Vec<TopicPartitions>,
    revoked: Vec<TopicPartitions>,
    /// Records from the member's partitions.
    records: Vec<RecordDoc>,
    /// Partitions that could not be read (`no_committed_offset` with
    /// `auto_offset_reset=none`, `offset_out_of_range`).
    errors: Vec<PartitionError>,
    /// The member's positions after this answer (opaque, signed): send it as
    /// `cursor` with the next poll.
    cursor: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionError {
    topic: String,
    partition: u32,
    code: &'static str,
}

#[derive(Serialize)]
struct PollHead<'a> {
    #[serde(flatten)]
    view: MemberView,
    errors: &'a [PartitionError],
    cursor: &'a str,
}

/// Poll records for a member. Also a heartbeat.
#[utoipa::path(get, path = "/v1/groups/{group}/members/{member}/records", tag = "groups",
    params(("group" = String, Path, description = "Group id"), ("member" = String, Path, description = "Member id"), PollParams),
    responses(
        (status = 200, description = "Records, generation and assignment", body = PollAnswer),
        (status = 400, description = "Invalid parameter, or a cursor not issued to this member (invalid_cursor)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown group or member (unknown_member: rejoin)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn poll(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path((group, member)): Path<(String, String)>,
    Query(params): Query<PollParams>,
) -> Result<Response, ApiError> {
    let asked = ServicePollParams {
        max_records: params.max_records,
        wait_ms: params.wait_ms,
        max_bytes: params.max_bytes,
        cursor: params.cursor,
    };
    let polled = state.service.poll(&ctx, &group, &member, asked).await?;
    let errors: Vec<PartitionError> = polled
        .errors
        .iter()
        .map(|(tp, code)| PartitionError { topic: tp.topic.clone(), partition: tp.partition, code: code.as_str() })
        .collect();
    let head = PollHead { view: member_view(&member, &polled.view), errors: &errors, cursor: &polled.cursor };
    let mut out = codec::to_json(&head)?.into_bytes();
    // Drop the closing brace: the records follow.
    if out.pop() != Some(b'}') {
        return Err(Error::Internal("a poll answer's head is not a JSON object".into()).into());
    }
    out.extend_from_slice(b",\"records\":[");
    let encoding = params.encoding.unwrap_or_default();
    let mut decoder = state.service.decoder();
    let mut first = true;
    for (tp, records) in &polled.records {
        for (offset, rec) in records.decode()? {
            if !first {
                out.push(b',');
            }
            first = false;
            codec::write_record(&mut out, &tp.topic, tp.partition, offset, &rec, encoding, decoder.as_mut());
        }
    }
    out.extend_from_slice(b"]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// Heartbeat: keeps the member's session alive and tells it about rebalances.
#[utoipa::path(post, path = "/v1/groups/{group}/members/{member}/heartbeat", tag = "groups",
    params(("group" = String, Path, description = "Group id"), ("member" = String, Path, description = "Member id")),
    responses(
        (status = 200, description = "Generation and assignment", body = MemberView),
        (status = 404, description = "Unknown group or member", body = Problem, content_type = "application/problem+json"),
    ))]
async fn heartbeat(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path((group, member)): Path<(String, String)>,
) -> Result<Json<MemberView>, ApiError> {
    let view = state.service.heartbeat(&ctx, &group, &member).await?;
    Ok(Json(member_view(&member, &view)))
}

/// Leave the group: the member's partitions move to the others at once.
#[utoipa::path(delete, path = "/v1/groups/{group}/members/{member}", tag = "groups",
    params(("group" = String, Path, description = "Group id"), ("member" = String, Path, description = "Member id")),
    responses(
        (status = 204, description = "Left"),
        (status = 404, description = "Unknown group or member", body = Problem, content_type = "application/problem+json"),
    ))]
async fn leave(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path((group, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.service.leave_group(&ctx, &group, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An offset for one partition.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionOffset {
    topic: String,
    partition: u32,
    /// The next offset to read (Kafka's convention: last processed + 1).
    offset: u64,
}

/// Commit offsets.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"member_id": "member-1f3a…", "generation": 2, "offsets": [{"topic": "orders", "partition": 0, "offset": 42}]}))]
pub struct CommitBody {
    member_id: String,
    /// The generation from the member's last poll, heartbeat or join.
    generation: u64,
    offsets: Vec<PartitionOffset>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Committed {
    committed: Vec<PartitionOffset>,
}

/// Commit a member's offsets; refused (and nothing changes) when the member is fenced.
#[utoipa::path(post, path = "/v1/groups/{group}/offsets", tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    request_body(content = CommitBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed durably", body = Committed),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown group, member (unknown_member), topic or partition", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Fenced: illegal_generation or not_owner", body = Problem, content_type = "application/problem+json"),
    ))]
async fn commit(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(group): Path<String>,
    Body(body): Body,
) -> Result<Json<Committed>, ApiError> {
    let req: CommitBody = parse_json(&body)?;
    let offsets: Vec<OffsetEntry> = req
        .offsets
        .iter()
        .map(|o| OffsetEntry { topic: o.topic.clone(), partition: o.partition, offset: o.offset })
        .collect();
    state.service.commit(&ctx, &group, &req.member_id, req.generation, &offsets).await?;
    Ok(Json(Committed { committed: req.offsets }))
}

/// Move a group's committed offsets. Give exactly one of `to`, `timestamp`, `offset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"topic": "orders", "to": "earliest"}))]
pub struct ResetBody {
    /// Topic to reset; default: every topic the group subscribes to or has offsets for.
    #[serde(default)]
    topic: Option<String>,
    /// Partitions of `topic` to reset; default: all.
    #[serde(default)]
    partitions: Option<Vec<u32>>,
    /// `earliest` or `latest`.
    #[serde(default)]
    to: Option<ResetEnd>,
    /// The first offset at or after this time (ms).
    #[serde(default)]
    timestamp: Option<u64>,
    /// An explicit offset (within the partition's range).
    #[serde(default)]
    offset: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResetEnd {
    Earliest,
    Latest,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResetAnswer {
    offsets: Vec<PartitionOffset>,
}

/// Reset a group's offsets: for an empty group, and also online, for an active one
/// (owners continue from the new offsets at their next poll).
#[utoipa::path(post, path = "/v1/groups/{group}/offsets/reset", tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    request_body(content = ResetBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The new committed offsets", body = ResetAnswer),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown group, topic or partition", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "Explicit offset outside the partition's range", body = Problem, content_type = "application/problem+json"),
    ))]
async fn reset_offsets(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(group): Path<String>,
    Body(body): Body,
) -> Result<Json<ResetAnswer>, ApiError> {
    let req: ResetBody = parse_json(&body)?;
    let to = match (req.to, req.timestamp, req.offset) {
        (Some(ResetEnd::Earliest), None, None) => ResetTo::Earliest,
        (Some(ResetEnd::Latest), None, None) => ResetTo::Latest,
        (None, Some(ts), None) => ResetTo::Timestamp(ts),
        (None, None, Some(o)) => ResetTo::Offset(o),
        _ => return Err(Error::InvalidRequest("give exactly one of to, timestamp, offset".into()).into()),
    };
    let moved = state.service.reset_offsets(&ctx, &group, req.topic.as_deref(), req.partitions.as_deref(), to).await?;
    let offsets = moved
        .into_iter()
        .map(|o| PartitionOffset { topic: o.topic, partition: o.partition, offset: o.offset })
        .collect();
    Ok(Json(ResetAnswer { offsets }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    groups: Vec<GroupSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupSummary {
    group: String,
    state: GroupState,
    generation: u64,
    members: usize,
}

/// List consumer groups (active, or with committed offsets).
#[utoipa::path(get, path = "/v1/groups", tag = "groups", responses((status = 200, body = GroupList)))]
async fn list_groups(State(state): State<AppState>, Caller(ctx): Caller) -> Result<Json<GroupList>, ApiError> {
    let groups = state
        .service
        .list_groups(&ctx)
        .await?
        .into_iter()
        .map(|g| GroupSummary { group: g.group, state: g.state, generation: g.generation, members: g.members })
        .collect();
    Ok(Json(GroupList { groups }))
}

/// A group: members, assignments, committed offsets and lag.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDescription {
    group: String,
    state: GroupState,
    generation: u64,
    /// `gregor` (REST and WebSocket members) or `kafka` (Kafka clients, classic protocol).
    protocol: &'static str,
    /// The group's assignor: gregor's, or the one a Kafka group's members chose.
    assignor: String,
    members: Vec<MemberDescription>,
    offsets: Vec<OffsetDescription>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberDescription {
    member_id: String,
    instance_id: Option<String>,
    topics: BTreeSet<String>,
    assignment: Vec<TopicPartitions>,
    /// Partitions announced as revoked, not yet released.
    revoking: Vec<TopicPartitions>,
    generation: u64,
    session_timeout_ms: u64,
    last_heartbeat_ms_ago: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetDescription {
    topic: String,
    partition: u32,
    /// Next offset the group will read; null when nothing is committed.
    committed_offset: Option<u64>,
    end_offset: u64,
    /// `end_offset - committed_offset`; null when nothing is committed.
    lag: Option<u64>,
    /// The member owning the partition now.
    owner: Option<String>,
}

/// Describe a group.
#[utoipa::path(get, path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    responses(
        (status = 200, body = GroupDescription),
        (status = 404, description = "Unknown group", body = Problem, content_type = "application/problem+json"),
    ))]
async fn describe_group(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(group): Path<String>,
) -> Result<Json<GroupDescription>, ApiError> {
    let info = state.service.describe_group(&ctx, &group).await?;
    Ok(Json(GroupDescription {
        group: info.group,
        state: info.state,
        generation: info.generation,
        protocol: info.protocol,
        assignor: info.assignor,
        members: info
            .members
            .into_iter()
            .map(|m| MemberDescription {
                member_id: m.member_id,
                instance_id: m.instance_id,
                topics: m.topics,
                assignment: by_topic(&m.assignment),
                revoking: by_topic(&m.revoking),
                generation: m.generation,
                session_timeout_ms: m.session_timeout_ms,
                last_heartbeat_ms_ago: m.last_seen_ms_ago,
            })
            .collect(),
        offsets: info
            .offsets
            .into_iter()
            .map(|o| OffsetDescription {
                topic: o.tp.topic,
                partition: o.tp.partition,
                committed_offset: o.committed,
                end_offset: o.end_offset,
                lag: o.committed.map(|c| o.end_offset.saturating_sub(c)),
                owner: o.owner,
            })
            .collect(),
    }))
}

/// Delete an empty group and its committed offsets.
#[utoipa::path(delete, path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Unknown group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The group has members (group_not_empty)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_group(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(group): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_group(&ctx, &group).await?;
    Ok(StatusCode::NO_CONTENT)
}
