//! The WebSocket routes, `GET /v1/topics/{topic}/stream` and
//! `GET /v1/groups/{group}/stream`: the HTTP half of a stream. Parameters are
//! validated and the stream opened (positions resolved, the member joined)
//! before the upgrade, so a bad request gets a problem+json answer; then the
//! socket is handed to `ws::conn::run`.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{OnFailedUpgrade, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::response::Response;
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, Problem};
use super::extract::{Caller, Path, Query};
use crate::codec::Encoding;
use crate::error::{Error, Result};
use crate::service::{Assignor, JoinParams, OffsetReset, RequestCtx, Service, StreamStart, limits};
use crate::ws::conn::{self, Options, Source};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(topic_stream)).routes(routes!(group_stream))
}

/// Largest client frame accepted (a produce frame); larger ones close the socket.
const MAX_CLIENT_FRAME: usize = 16 * 1024 * 1024;

/// Bytes tungstenite reserves (and zeroes) for each socket read. Its default,
/// 128 KiB, was zeroed on every poll of every connection: 12 % of the server's
/// CPU with 1,000 subscribers, and most of a connection's memory. Client frames
/// are small (credit, acks, modest produces); larger ones take a few more reads.
const READ_BUFFER: usize = 8 * 1024;

/// Batching and flow control, common to both stream routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Most records per `records` frame (1–10000, default 500).
    max_records: Option<u32>,
    /// Most record bytes per frame (default 1 MiB, at most 16 MiB); one record is always sent.
    max_bytes: Option<usize>,
    /// Once records are available, wait up to this long (ms, at most 1000) for
    /// more to fill the frame. Default 0: send at once.
    linger_ms: Option<u64>,
    /// Initial credit: the server sends at most this many records until the client
    /// grants more with `credit` frames. Default: no credit counting (the socket's
    /// own backpressure still stops the server reading for a client that does not read).
    credit: Option<u64>,
    /// `auto` (default) or `base64` (bytes as stored), as for reads.
    encoding: Option<Encoding>,
}

impl StreamParams {
    fn options(&self, state: &AppState) -> Result<Options> {
        Ok(Options {
            max_records: limits::max_records("max_records", self.max_records, 500)? as usize,
            max_bytes: limits::max_bytes("max_bytes", self.max_bytes, 1024 * 1024, limits::MAX_FRAME_BYTES)?,
            linger: limits::wait("linger_ms", self.linger_ms, limits::MAX_LINGER_MS)?,
            credit: self.credit,
            encoding: self.encoding.unwrap_or_default(),
            ping_interval: state.ws_ping_interval,
            max_poll_interval: Duration::from_millis(limits::DEFAULT_MAX_POLL_INTERVAL_MS),
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopicStreamParams {
    /// `earliest`, `latest` (default), an offset (applied to every partition), or `ts:MS`
    /// (the first offset at or after that time, per partition).
    from: Option<String>,
    /// Comma-separated partitions, e.g. `0,2`; default: all (and partitions added later).
    partitions: Option<String>,
}

/// The subprotocol a browser offers beside `gregor.bearer.<token>`; the server
/// selects it (never the token's, which would echo the secret back).
const PROTOCOL: &str = "gregor.v1";

fn upgrade(ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>) -> Result<WebSocketUpgrade, ApiError> {
    ws.map(|ws| ws.max_message_size(MAX_CLIENT_FRAME).read_buffer_size(READ_BUFFER).protocols([PROTOCOL]))
        .map_err(|e| ApiError::UpgradeRequired(e.body_text()))
}

/// `0,2` → `[0, 2]`.
fn parse_partitions(list: &str) -> Result<Vec<u32>> {
    list.split(',')
        .map(|item| {
            item.trim()
                .parse()
                .map_err(|_| Error::parameter("partitions", format!("'{item}' is not a partition number")))
        })
        .collect()
}

/// Stream a topic over WebSocket: records are pushed as they are appended.
///
/// Server → client frames: `{"type":"records","records":[{topic,partition,offset,timestamp,key,value,headers},…]}`,
/// `{"type":"produced","id":…,"offsets":[…]}`, `{"type":"error","code":…,"message":…}`.
/// Client → server: `{"type":"credit","records":N}`, `{"type":"produce","id":…,"records":[…],"acks":"all","idempotency_key":"…"}`.
/// Close codes: 1001 server shutting down, 4404 topic deleted, 4408 client unresponsive, 1011 server error.
#[utoipa::path(get, path = "/v1/topics/{topic}/stream", tag = "streams",
    params(("topic" = String, Path, description = "Topic name"), TopicStreamParams, StreamParams),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; frames as described above"),
        (status = 400, description = "Invalid parameter", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The principal may not read the topic or group (forbidden), or a foreign Origin (origin_not_allowed)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic or partition", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "`from` offset outside a partition's range", body = Problem, content_type = "application/problem+json"),
        (status = 426, description = "Not a WebSocket upgrade request", body = Problem, content_type = "application/problem+json"),
    ))]
async fn topic_stream(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(topic): Path<String>,
    Query(params): Query<TopicStreamParams>,
    Query(stream): Query<StreamParams>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let opts = stream.options(&state)?;
    let from: StreamStart = params.from.as_deref().unwrap_or("latest").parse()?;
    let partitions = params.partitions.as_deref().filter(|p| !p.is_empty()).map(parse_partitions).transpose()?;
    let opened = state.service.open_topic_stream(&ctx, &topic, from, partitions.as_deref()).await?;
    let ws = upgrade(ws)?;
    Ok(serve(ws, &state, ctx, Source::Topic(opened), opts))
}

/// Runs the connection once upgraded, tracked so that shutdown can wait for it.
fn serve<F: OnFailedUpgrade>(
    ws: WebSocketUpgrade<F>,
    state: &AppState,
    ctx: RequestCtx,
    source: Source,
    opts: Options,
) -> Response {
    let service = state.service.clone();
    let token = state.connections.token();
    ws.on_upgrade(move |socket| async move {
        let (sink, stream) = socket.split();
        conn::run(sink, stream, service, ctx, source, opts).await;
        drop(token);
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupStreamParams {
    /// Comma-separated topics to consume.
    topics: String,
    /// `earliest`, `latest` (default) or `none`, for partitions without a committed offset.
    auto_offset_reset: Option<OffsetReset>,
    /// Default 45000. The socket keeps the session alive while it is open.
    session_timeout_ms: Option<u64>,
    /// `cooperative-sticky` (default), `range` or `roundrobin`.
    assignor: Option<Assignor>,
    /// Static membership (KIP-345).
    instance_id: Option<String>,
    /// With `credit`: when records have waited this long (ms) for credit the
    /// client has not granted, the member leaves the group and the socket closes
    /// with 4408 (Kafka's `max.poll.interval.ms`). Default 300000, 1000–86400000.
    #[param(minimum = 1000, maximum = 86400000)]
    max_poll_interval_ms: Option<u64>,
}

/// Join a consumer group over WebSocket: the socket is a member for as long as it is open.
///
/// Server → client: `{"type":"assignment","member_id":…,"generation":N,"assignment":[{topic,partitions}],"revoked":[…]}`
/// first and after every rebalance; `records`; `committed` (answering `commit` and `ack`); `produced`; `error`.
/// Client → server: `{"type":"commit","offsets":[{topic,partition,offset}]}`, `{"type":"ack","topic":…,"partition":…,"offset":…}`
/// (the server commits the contiguous acknowledged prefix), `credit`, `produce` (naming its `topic`).
/// On a revocation the server stops sending the revoked partitions at once, and releases them once the
/// client has committed what it received from them (or after half the session timeout).
/// A client that stops reading is bounded: a socket whose sends stall for two ping intervals, or that
/// answers no ping for two, is closed (4408), and the member's session is kept only while the socket is
/// served, so it expires after `session_timeout_ms` at most; a client that stops granting `credit` while
/// records wait leaves the group after `max_poll_interval_ms` (4408). Granting credit, however slowly, keeps it.
/// Close codes: 1001 shutting down, 4409 member fenced (reconnect), 4408 unresponsive, 1011 server error.
#[utoipa::path(get, path = "/v1/groups/{group}/stream", tag = "streams",
    params(("group" = String, Path, description = "Group id"), GroupStreamParams, StreamParams),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; frames as described above"),
        (status = 400, description = "Invalid parameter", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The principal may not read the topic or group (forbidden), or a foreign Origin (origin_not_allowed)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Assignor differs from the group's", body = Problem, content_type = "application/problem+json"),
        (status = 426, description = "Not a WebSocket upgrade request", body = Problem, content_type = "application/problem+json"),
    ))]
async fn group_stream(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(group): Path<String>,
    Query(params): Query<GroupStreamParams>,
    Query(stream): Query<StreamParams>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let mut opts = stream.options(&state)?;
    opts.max_poll_interval = limits::max_poll_interval(params.max_poll_interval_ms)?;
    let ws = upgrade(ws)?;
    let topics: Vec<String> = params.topics.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
    let join = JoinParams {
        topics,
        auto_offset_reset: params.auto_offset_reset,
        session_timeout_ms: params.session_timeout_ms,
        assignor: params.assignor,
        instance_id: params.instance_id,
    };
    let member = state.service.open_member_stream(&ctx, &group, join).await?;
    let (service, left_ctx, member_id) = (state.service.clone(), ctx.clone(), member.member_id().to_owned());
    let ws = ws.on_failed_upgrade(move |_| {
        // The member joined but never got its socket: let it go now, not at session expiry.
        tokio::spawn(leave_unused(service, left_ctx, group, member_id));
    });
    Ok(serve(ws, &state, ctx, Source::Group(member), opts))
}

async fn leave_unused(service: Service, ctx: RequestCtx, group: String, member: String) {
    if let Err(e) = service.leave_group(&ctx, &group, &member).await
        && !matches!(e, Error::UnknownMember { .. } | Error::UnknownGroup(_))
    {
        tracing::warn!(error = %e, group, member, "leaving after a failed upgrade failed");
    }
}
