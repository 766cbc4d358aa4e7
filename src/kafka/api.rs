//! One handler per Kafka API, each calling the service layer with the connection's principal.

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, FetchRequest, FetchResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, ProducerId, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse, TopicName, api_versions_response, create_partitions_response,
    create_topics_response, delete_topics_response, describe_configs_response, fetch_response,
    find_coordinator_response, list_offsets_response, metadata_response, produce_response,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use super::errors::{self, code};
use super::gather::Gather;
use super::{ConnError, Shared, groups};
use crate::error::Error;
use crate::service::Acks;
use crate::service::{ProduceInFlight, RequestCtx, Service};
use crate::topic::TopicConfigPatch;

/// The APIs and versions gregor serves (further clamped to what the codec crate knows).
/// Produce stops before v13 and Fetch before v13: those name topics by id only.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The node id gregor calls itself: one broker, leader of every partition.
const NODE_ID: i32 = 0;
/// The leader epoch of every partition (gregor never changes leaders).
const LEADER_EPOCH: i32 = 0;

/// A connection's state: who it is, and whether it is closing.
#[derive(Debug)]
pub struct Session {
    pub ctx: RequestCtx,
    pub closing: bool,
    /// The client's address as Kafka shows it (`/127.0.0.1`).
    pub peer: String,
    /// Requests other than ApiVersions and SASL may be served: the connection is
    /// authenticated (SASL/PLAIN), or anonymous connections are allowed.
    pub authenticated: bool,
    /// A SaslHandshake chose PLAIN: a SaslAuthenticate may follow.
    pub handshaken: bool,
}

impl Session {
    /// A new connection: anonymous when `anonymous` is given (credentials are not required),
    /// otherwise waiting for SASL/PLAIN.
    pub fn new(anonymous: Option<RequestCtx>, peer: Option<std::net::SocketAddr>) -> Session {
        let peer = peer.map_or_else(String::new, |a| format!("/{}", a.ip()));
        let authenticated = anonymous.is_some();
        let ctx = anonymous.unwrap_or_else(RequestCtx::anonymous).delayed();
        Session { ctx, closing: false, peer, authenticated, handshaken: false }
    }
}

/// What a request produced.
pub enum Answer {
    /// A response body, as parts written one after another (a Fetch answer's large record
    /// sets are parts of their own: see `gather.rs`), and the header version to frame it with.
    Body { body: Vec<Bytes>, header_version: i16 },
    /// Nothing goes back (Produce with `acks=0`).
    Nothing,
    /// The answer once the writer has stored what the request queued (Produce): the
    /// connection reads its next requests meanwhile.
    Later(Pin<Box<dyn Future<Output = Result<Answer, ConnError>> + Send>>),
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Body { body, header_version } => {
                f.debug_struct("Body").field("body", body).field("header_version", header_version).finish()
            }
            Answer::Nothing => f.write_str("Nothing"),
            Answer::Later(_) => f.write_str("Later"),
        }
    }
}

/// The versions of `key` gregor serves, if any.
fn served(key: ApiKey) -> Option<(i16, i16)> {
    let (_, min, max) = SUPPORTED.iter().find(|(k, _, _)| *k == key)?;
    let crate_range = key.valid_versions();
    let (min, max) = ((*min).max(crate_range.min), (*max).min(crate_range.max));
    (min <= max).then_some((min, max))
}

fn decode<T: Decodable>(buf: &mut Bytes, version: i16) -> Result<T, ConnError> {
    T::decode(buf, version).map_err(|e| ConnError::Malformed(e.to_string()))
}

fn encode<T: Encodable + HeaderVersion>(message: &T, version: i16) -> Result<Answer, ConnError> {
    encode_sharing(message, version, Vec::new())
}

/// Encodes an answer, keeping the record sets in `shareable` by reference where it writes
/// them (see `gather.rs`) instead of copying them into the answer.
fn encode_sharing<T: Encodable + HeaderVersion>(
    message: &T,
    version: i16,
    shareable: Vec<Bytes>,
) -> Result<Answer, ConnError> {
    // Sized first: a Fetch answer of tens of megabytes is written once, not grown by doubling.
    let size = message.compute_size(version).unwrap_or(0);
    let mut buf = Gather::new(size, shareable);
    message.encode(&mut buf, version).map_err(|e| ConnError::Malformed(format!("encoding the answer: {e}")))?;
    Ok(Answer::Body { body: buf.into_parts(), header_version: T::header_version(version) })
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// Decodes the request in `frame` (header included) and runs it.
pub async fn dispatch(
    api_key: i16,
    version: i16,
    frame: &mut Bytes,
    shared: &Shared,
    session: &mut Session,
) -> Result<Answer, ConnError> {
    let key = ApiKey::try_from(api_key).ok();
    let range = key.and_then(served);
    let Some((key, (min, max))) = key.zip(range) else {
        // An API gregor does not serve at all.
        return unsupported(api_key, version);
    };
    if key == ApiKey::ApiVersions && !(min..=max).contains(&version) {
        // Kafka's rule: answer in v0 with the error and the versions served, so the
        // client can pick one it knows.
        let answer = api_versions(errors::UNSUPPORTED_VERSION);
        return encode(&answer, 0).map(|a| match a {
            Answer::Body { body, .. } => Answer::Body { body, header_version: 0 },
            other => other,
        });
    }
    if !(min..=max).contains(&version) {
        return unsupported(api_key, version);
    }
    let header_version = key.request_header_version(version);
    let header: kafka_protocol::messages::RequestHeader = decode(frame, header_version)?;
    let client_id = header.client_id.as_deref().unwrap_or_default();
    if !session.authenticated && !matches!(key, ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)
    {
        // Kafka's broker does the same: a request before authentication ends the connection.
        return Err(ConnError::Unauthenticated(key));
    }
    let service = &shared.service;
    let ctx = &session.ctx;
    match key {
        ApiKey::ApiVersions => {
            let _req: ApiVersionsRequest = decode(frame, version)?;
            let answer = encode(&api_versions(errors::NONE), version)?;
            // ApiVersions answers with header v0 at every version (clients read it before
            // they know whether the broker speaks flexible headers).
            Ok(match answer {
                Answer::Body { body, .. } => Answer::Body { body, header_version: 0 },
                other => other,
            })
        }
        ApiKey::Metadata => encode(&metadata(decode(frame, version)?, version, shared, ctx).await, version),
        ApiKey::Produce => {
            let req: ProduceRequest = decode(frame, version)?;
            let acks = req.acks;
            let queued = produce(req, service, ctx).await;
            // With `acks=0` no answer goes back, but the connection still waits for the write
            // like any Produce: requests after it see its records, and a producer that never
            // waits is held back by the window of Produces in flight instead of overflowing
            // the writer's queue (where its records would be dropped unanswered).
            Ok(Answer::Later(Box::pin(async move {
                let answer = queued.answer().await;
                if acks == 0 { Ok(Answer::Nothing) } else { encode(&answer, version) }
            })))
        }
        ApiKey::Fetch => {
            let answer = fetch(decode(frame, version)?, service, ctx).await;
            let records = answer.responses.iter().flat_map(|t| &t.partitions).filter_map(|p| p.records.clone());
            encode_sharing(&answer, version, records.collect())
        }
        ApiKey::ListOffsets => encode(&list_offsets(decode(frame, version)?, service, ctx).await, version),
        ApiKey::CreateTopics => encode(&create_topics(decode(frame, version)?, service, ctx).await, version),
        ApiKey::DeleteTopics => encode(&delete_topics(decode(frame, version)?, version, service, ctx).await, version),
        ApiKey::CreatePartitions => encode(&create_partitions(decode(frame, version)?, service, ctx).await, version),
        ApiKey::DescribeConfigs => encode(&describe_configs(decode(frame, version)?, service, ctx).await, version),
        ApiKey::FindCoordinator => encode(&find_coordinator(decode(frame, version)?, version, shared), version),
        ApiKey::SaslHandshake => encode(&sasl_handshake(decode(frame, version)?, session), version),
        ApiKey::SaslAuthenticate => {
            encode(&sasl_authenticate(decode(frame, version)?, service, session).await, version)
        }
        ApiKey::InitProducerId => encode(&init_producer_id(decode(frame, version)?, service, ctx).await, version),
        ApiKey::JoinGroup => {
            let req = decode(frame, version)?;
            encode(&groups::join_group(req, version, client_id, service, ctx, &session.peer).await, version)
        }
        ApiKey::SyncGroup => encode(&groups::sync_group(decode(frame, version)?, service, ctx).await, version),
        ApiKey::Heartbeat => encode(&groups::heartbeat(decode(frame, version)?, service, ctx).await, version),
        ApiKey::LeaveGroup => {
            encode(&groups::leave_group(decode(frame, version)?, version, service, ctx).await, version)
        }
        ApiKey::OffsetCommit => encode(&groups::offset_commit(decode(frame, version)?, service, ctx).await, version),
        ApiKey::OffsetFetch => encode(&groups::offset_fetch(decode(frame, version)?, service, ctx).await, version),
        ApiKey::ListGroups => encode(&groups::list_groups(decode(frame, version)?, service, ctx).await, version),
        ApiKey::DescribeGroups => {
            encode(&groups::describe_groups(decode(frame, version)?, service, ctx).await, version)
        }
        ApiKey::DeleteGroups => encode(&groups::delete_groups(decode(frame, version)?, service, ctx).await, version),
        _ => unsupported(api_key, version),
    }
}

/// The answer to an API or version gregor does not serve: UNSUPPORTED_VERSION, as the
/// bare error code clients of any API read first when they cannot parse more.
fn unsupported(api_key: i16, version: i16) -> Result<Answer, ConnError> {
    tracing::debug!(api_key, version, "kafka: unsupported API or version");
    let mut body = BytesMut::new();
    body.extend_from_slice(&errors::UNSUPPORTED_VERSION.to_be_bytes());
    Ok(Answer::Body { body: vec![body.freeze()], header_version: 0 })
}

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .filter_map(|(key, _, _)| {
            served(*key).map(|(min, max)| {
                api_versions_response::ApiVersion::default()
                    .with_api_key(*key as i16)
                    .with_min_version(min)
                    .with_max_version(max)
            })
        })
        .collect();
    ApiVersionsResponse::default().with_error_code(error_code).with_api_keys(api_keys)
}

fn broker(shared: &Shared) -> metadata_response::MetadataResponseBroker {
    metadata_response::MetadataResponseBroker::default()
        .with_node_id(BrokerId(NODE_ID))
        .with_host(str_bytes(shared.host.clone()))
        .with_port(i32::from(shared.port))
}

/// A stable topic id derived from the topic's name and creation time (Metadata v10+).
fn topic_id(name: &str, created_ms: u64) -> uuid::Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{name}\0{created_ms}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

async fn metadata(req: MetadataRequest, version: i16, shared: &Shared, ctx: &RequestCtx) -> MetadataResponse {
    let service = &shared.service;
    // v0: an empty list means every topic; v1+: null means every topic.
    let wanted: Option<Vec<String>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect()),
    };
    let names = match wanted {
        Some(names) => names,
        None => service.list_topics(ctx).await.map(|ts| ts.into_iter().map(|t| t.name).collect()).unwrap_or_default(),
    };
    let mut topics = Vec::with_capacity(names.len());
    for name in names {
        let mut described = service.describe_topic(ctx, &name).await;
        if matches!(described, Err(Error::UnknownTopic(_)))
            && req.allow_auto_topic_creation
            && service.auto_creates_topics()
        {
            let created = service.create_topic(ctx, &name, 0, &TopicConfigPatch::default()).await;
            described = match created {
                Err(Error::TopicExists(_)) => service.describe_topic(ctx, &name).await,
                other => other,
            };
        }
        let topic = metadata_response::MetadataResponseTopic::default().with_name(Some(topic_name(&name)));
        topics.push(match described {
            Ok(d) => topic.with_topic_id(topic_id(&name, d.created_ms)).with_partitions(
                (0..d.partition_count as i32)
                    .map(|p| {
                        metadata_response::MetadataResponsePartition::default()
                            .with_partition_index(p)
                            .with_leader_id(BrokerId(NODE_ID))
                            .with_leader_epoch(LEADER_EPOCH)
                            .with_replica_nodes(vec![BrokerId(NODE_ID)])
                            .with_isr_nodes(vec![BrokerId(NODE_ID)])
                    })
                    .collect(),
            ),
            Err(e) => topic.with_error_code(code(&e)),
        });
    }
    MetadataResponse::default()
        .with_brokers(vec![broker(shared)])
        .with_cluster_id(Some(str_bytes("gregor")))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
}

/// A Produce whose batches are queued for the writer, topic by topic in request order.
struct ProduceQueued {
    topics: Vec<(String, TopicQueued)>,
}

/// One topic's part of a Produce: its answer already (refused whole), or its batches queued.
enum TopicQueued {
    Answered(Vec<(i32, Result<i64, i16>)>),
    /// Each partition in request order with the code it was refused with, or `None` where its
    /// batch went to the service.
    Queued {
        slots: Vec<(i32, Option<i16>)>,
        in_flight: Result<ProduceInFlight, crate::error::Error>,
    },
}

/// The first half of a Produce: checks each topic's batches and queues the good ones for the
/// writer, in request order. The connection reads its next request while these are written;
/// [`ProduceQueued::answer`] waits for the writer.
async fn produce(req: ProduceRequest, service: &Service, ctx: &RequestCtx) -> ProduceQueued {
    let acks = match req.acks {
        // Written as `acks=1` is (not synced); the connection answers nothing (see `dispatch`).
        0 | 1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let mut topics = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let partitions: Vec<(i32, Option<Bytes>)> =
            topic.partition_data.into_iter().map(|p| (p.index, p.records)).collect();
        let queued = match (acks, req.transactional_id.is_some()) {
            (None, _) => TopicQueued::Answered(
                partitions.iter().map(|(p, _)| (*p, Err(errors::INVALID_REQUIRED_ACKS))).collect(),
            ),
            (_, true) => TopicQueued::Answered(
                partitions.iter().map(|(p, _)| (*p, Err(errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED))).collect(),
            ),
            (Some(acks), false) => produce_topic(service, ctx, &name, partitions, acks).await,
        };
        topics.push((name, queued));
    }
    ProduceQueued { topics }
}

impl ProduceQueued {
    /// The second half of a Produce: its answer once the writer has placed every batch.
    async fn answer(self) -> ProduceResponse {
        let mut responses = Vec::with_capacity(self.topics.len());
        for (name, queued) in self.topics {
            let results = match queued {
                TopicQueued::Answered(results) => results,
                TopicQueued::Queued { slots, in_flight } => {
                    let outcomes = match in_flight {
                        Ok(in_flight) => in_flight.outcomes().await,
                        Err(e) => Err(e),
                    };
                    let mut outcomes = match outcomes {
                        Ok(outcomes) => Ok(outcomes.into_iter()),
                        Err(e) => Err(code(&e)),
                    };
                    slots
                        .into_iter()
                        .map(|(p, refused)| match (refused, &mut outcomes) {
                            (Some(c), _) => (p, Err(c)),
                            (None, Err(c)) => (p, Err(*c)),
                            (None, Ok(outcomes)) => match outcomes.next() {
                                Some(Ok(base)) => (p, Ok(base.map_or(-1, |b| b as i64))),
                                Some(Err(e)) => (p, Err(errors::batch_code(&e))),
                                None => (p, Err(errors::UNKNOWN_SERVER_ERROR)),
                            },
                        })
                        .collect()
                }
            };
            let partition_responses = results
                .into_iter()
                .map(|(p, r)| {
                    let part = produce_response::PartitionProduceResponse::default().with_index(p);
                    match r {
                        Ok(base) => part.with_base_offset(base).with_log_append_time_ms(-1).with_log_start_offset(-1),
                        Err(c) => part.with_error_code(c).with_base_offset(-1).with_log_start_offset(-1),
                    }
                })
                .collect();
            responses.push(
                produce_response::TopicProduceResponse::default()
                    .with_name(topic_name(&name))
                    .with_partition_responses(partition_responses),
            );
        }
        ProduceResponse::default().with_responses(responses)
    }
}

/// Checks each partition's batch and queues the good ones for one write (the service's
/// [`Service::submit_batches`]).
async fn produce_topic(
    service: &Service,
    ctx: &RequestCtx,
    topic: &str,
    partitions: Vec<(i32, Option<Bytes>)>,
    acks: Acks,
) -> TopicQueued {
    let mut slots = Vec::with_capacity(partitions.len());
    let mut batches = Vec::with_capacity(partitions.len());
    for (p, records) in partitions {
        match u32::try_from(p) {
            Ok(index) => {
                slots.push((p, None));
                batches.push((index, records.map(|b| b.to_vec()).unwrap_or_default()));
            }
            Err(_) => slots.push((p, Some(errors::UNKNOWN_TOPIC_OR_PARTITION))),
        }
    }
    if batches.is_empty() {
        return TopicQueued::Answered(
            slots.into_iter().map(|(p, c)| (p, Err(c.unwrap_or(errors::UNKNOWN_TOPIC_OR_PARTITION)))).collect(),
        );
    }
    let in_flight = service.submit_batches(ctx, topic, batches, acks).await;
    TopicQueued::Queued { slots, in_flight }
}

async fn fetch(req: FetchRequest, service: &Service, ctx: &RequestCtx) -> FetchResponse {
    let wait = Duration::from_millis(req.max_wait_ms.clamp(0, 60_000) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes > 0 { req.max_bytes as usize } else { 50 * 1024 * 1024 };
    let mut waited = wait.is_zero();
    loop {
        let mut total = 0usize;
        let mut positions = Vec::new();
        let mut responses = Vec::with_capacity(req.topics.len());
        for topic in &req.topics {
            let name = topic.topic.0.to_string();
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for p in &topic.partitions {
                let data = fetch_response::PartitionData::default().with_partition_index(p.partition);
                let (Ok(index), Ok(offset)) = (u32::try_from(p.partition), u64::try_from(p.fetch_offset)) else {
                    partitions.push(data.with_error_code(errors::OFFSET_OUT_OF_RANGE).with_high_watermark(-1));
                    continue;
                };
                // Kafka's rule: the first partition with records sends its first batch even if it
                // is larger than the limits (so a consumer always progresses); after it, every
                // partition sends only what fits in its own limit and in what is left of the total.
                let room = max_bytes.saturating_sub(total);
                let limit = (p.partition_max_bytes.max(0) as usize).min(room);
                match service.fetch_batches(ctx, &name, index, offset, limit, total == 0).await {
                    Ok(read) => {
                        let records = read.records;
                        total += records.len();
                        positions.push((name.clone(), index, offset));
                        partitions.push(
                            data.with_high_watermark(read.end_offset as i64)
                                .with_last_stable_offset(read.end_offset as i64)
                                .with_log_start_offset(read.beginning_offset as i64)
                                .with_records(Some(records)),
                        );
                    }
                    Err(Error::OffsetOutOfRange { beginning, end, .. }) => partitions.push(
                        data.with_error_code(errors::OFFSET_OUT_OF_RANGE)
                            .with_high_watermark(end as i64)
                            .with_last_stable_offset(end as i64)
                            .with_log_start_offset(beginning as i64),
                    ),
                    Err(e) => partitions.push(data.with_error_code(code(&e)).with_high_watermark(-1)),
                }
            }
            responses.push(
                fetch_response::FetchableTopicResponse::default()
                    .with_topic(topic.topic.clone())
                    .with_partitions(partitions),
            );
        }
        if waited || total >= min_bytes.max(1) || positions.is_empty() {
            return FetchResponse::default().with_responses(responses);
        }
        service.wait_any(&positions, wait).await;
        waited = true;
    }
}

async fn list_offsets(req: ListOffsetsRequest, service: &Service, ctx: &RequestCtx) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let part = list_offsets_response::ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_leader_epoch(LEADER_EPOCH);
            let answer = list_offset(service, ctx, &name, p.partition_index, p.timestamp).await;
            partitions.push(match answer {
                Ok((offset, ts)) => part.with_offset(offset).with_timestamp(ts),
                Err(e) => part.with_error_code(code(&e)).with_offset(-1).with_timestamp(-1),
            });
        }
        topics.push(
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(topic_name(&name))
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// (offset, timestamp) for one ListOffsets query: -1 latest, -2 earliest, -3 the largest
/// timestamp, else the first offset whose timestamp is at least the one given.
async fn list_offset(
    service: &Service,
    ctx: &RequestCtx,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<(i64, i64), Error> {
    let partition = u32::try_from(partition)
        .map_err(|_| Error::UnknownPartition { topic: topic.to_owned(), partition: u32::MAX })?;
    match timestamp {
        -1 | -2 => {
            let info = service.describe_partition(ctx, topic, partition).await?;
            let offset = if timestamp == -1 { info.end_offset } else { info.beginning_offset };
            Ok((offset as i64, -1))
        }
        -3 => match service.max_timestamp_offset(ctx, topic, partition).await? {
            Some(found) => Ok((found.offset as i64, found.timestamp.map_or(-1, |t| t as i64))),
            None => Ok((-1, -1)),
        },
        ts if ts >= 0 => {
            let found = service.offset_for_timestamp(ctx, topic, partition, ts as u64).await?;
            Ok(match found.timestamp {
                Some(t) => (found.offset as i64, t as i64),
                None => (-1, -1),
            })
        }
        _ => Err(Error::InvalidRequest(format!("ListOffsets timestamp {timestamp} is not supported"))),
    }
}

/// A boolean topic config, as Kafka writes them.
fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{name}: '{value}' is not true or false")),
    }
}

/// Kafka topic configuration names gregor maps onto its own.
fn config_patch(configs: &[(String, Option<String>)]) -> Result<TopicConfigPatch, String> {
    let mut patch = TopicConfigPatch::default();
    for (name, value) in configs {
        let value = value.as_deref().unwrap_or_default();
        let num = || value.parse::<i64>().map_err(|_| format!("{name}: '{value}' is not a number"));
        match name.as_str() {
            "retention.ms" => patch.retention_ms = Some(num()?),
            "retention.bytes" => patch.retention_bytes = Some(num()?),
            "max.message.bytes" => {
                patch.max_message_bytes = Some(u32::try_from(num()?).map_err(|_| format!("{name}: out of range"))?)
            }
            "confluent.value.schema.validation" => patch.value_schema_validation = Some(flag(name, value)?),
            "confluent.key.schema.validation" => patch.key_schema_validation = Some(flag(name, value)?),
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => return Err(format!("cleanup.policy '{value}' is not supported (only delete)")),
            other => {
                return Err(format!(
                    "config '{other}' is not supported (retention.ms, retention.bytes, max.message.bytes, cleanup.policy=delete, confluent.value.schema.validation, confluent.key.schema.validation)"
                ));
            }
        }
    }
    Ok(patch)
}

async fn create_topics(req: CreateTopicsRequest, service: &Service, ctx: &RequestCtx) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let name = topic.name.0.to_string();
        let result = create_topics_response::CreatableTopicResult::default().with_name(topic.name.clone());
        let configs: Vec<(String, Option<String>)> =
            topic.configs.iter().map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()))).collect();
        let outcome: Result<(i32, i16), (i16, String)> = async {
            if topic.replication_factor > 1 {
                return Err((errors::INVALID_REPLICATION_FACTOR, "gregor is one broker: replication factor 1".into()));
            }
            if !topic.assignments.is_empty() {
                return Err((errors::INVALID_REQUEST, "manual replica assignments are not supported".into()));
            }
            let patch = config_patch(&configs).map_err(|m| (errors::INVALID_CONFIG, m))?;
            let partitions = u32::try_from(topic.num_partitions).unwrap_or(0);
            if req.validate_only {
                return match service.describe_topic(ctx, &name).await {
                    Ok(_) => Err((errors::TOPIC_ALREADY_EXISTS, format!("topic '{name}' already exists"))),
                    Err(_) => Ok((topic.num_partitions, 1)),
                };
            }
            let created =
                service.create_topic(ctx, &name, partitions, &patch).await.map_err(|e| (code(&e), e.to_string()))?;
            Ok((created.partition_count as i32, 1))
        }
        .await;
        results.push(match outcome {
            Ok((partitions, rf)) => result.with_num_partitions(partitions).with_replication_factor(rf),
            Err((c, message)) => result.with_error_code(c).with_error_message(Some(str_bytes(message))),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn delete_topics(
    req: DeleteTopicsRequest,
    version: i16,
    service: &Service,
    ctx: &RequestCtx,
) -> DeleteTopicsResponse {
    let names: Vec<String> = if version >= 6 {
        req.topics.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect()
    } else {
        req.topic_names.into_iter().map(|n| n.0.to_string()).collect()
    };
    let mut responses = Vec::with_capacity(names.len());
    for name in names {
        let result = delete_topics_response::DeletableTopicResult::default().with_name(Some(topic_name(&name)));
        responses.push(match service.delete_topic(ctx, &name).await {
            Ok(()) => result,
            Err(e) => result.with_error_code(code(&e)).with_error_message(Some(str_bytes(e.to_string()))),
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

async fn create_partitions(
    req: CreatePartitionsRequest,
    service: &Service,
    ctx: &RequestCtx,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let name = topic.name.0.to_string();
        let result = create_partitions_response::CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        let outcome = async {
            let count = u32::try_from(topic.count).map_err(|_| Error::InvalidPartitions("count is negative".into()))?;
            let current = service.describe_topic(ctx, &name).await?.partition_count;
            if count <= current {
                return Err(Error::InvalidPartitions(format!(
                    "topic '{name}' has {current} partitions; the new count must be larger"
                )));
            }
            if req.validate_only {
                return Ok(());
            }
            service.alter_topic(ctx, &name, Some(count), &TopicConfigPatch::default()).await.map(|_| ())
        }
        .await;
        results.push(match outcome {
            Ok(()) => result,
            Err(e) => result.with_error_code(code(&e)).with_error_message(Some(str_bytes(e.to_string()))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn describe_configs(req: DescribeConfigsRequest, service: &Service, ctx: &RequestCtx) -> DescribeConfigsResponse {
    const TOPIC: i8 = 2;
    let mut results = Vec::with_capacity(req.resources.len());
    for resource in req.resources {
        let result = describe_configs_response::DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        if resource.resource_type != TOPIC {
            // Brokers and others: gregor has nothing to describe there.
            results.push(result);
            continue;
        }
        let name = resource.resource_name.to_string();
        results.push(match service.describe_topic(ctx, &name).await {
            Ok(d) => {
                let entries = [
                    ("retention.ms", d.config.retention_ms.to_string(), false),
                    ("retention.bytes", d.config.retention_bytes.to_string(), false),
                    ("max.message.bytes", d.config.max_message_bytes.to_string(), false),
                    ("confluent.value.schema.validation", d.config.value_schema_validation.to_string(), false),
                    ("confluent.key.schema.validation", d.config.key_schema_validation.to_string(), false),
                    ("cleanup.policy", "delete".to_owned(), true),
                    ("message.timestamp.type", "CreateTime".to_owned(), true),
                ];
                let wanted = resource.configuration_keys.as_ref();
                let configs = entries
                    .into_iter()
                    .filter(|(n, _, _)| wanted.is_none_or(|keys| keys.iter().any(|k| &**k == *n)))
                    .map(|(n, v, read_only)| {
                        describe_configs_response::DescribeConfigsResourceResult::default()
                            .with_name(str_bytes(n))
                            .with_value(Some(str_bytes(v)))
                            .with_read_only(read_only)
                            // DYNAMIC_TOPIC_CONFIG
                            .with_config_source(1)
                    })
                    .collect();
                result.with_configs(configs)
            }
            Err(e) => result.with_error_code(code(&e)).with_error_message(Some(str_bytes(e.to_string()))),
        });
    }
    DescribeConfigsResponse::default().with_results(results)
}

fn find_coordinator(req: FindCoordinatorRequest, version: i16, shared: &Shared) -> FindCoordinatorResponse {
    let host = str_bytes(shared.host.clone());
    let port = i32::from(shared.port);
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                find_coordinator_response::Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(NODE_ID))
                    .with_host(host.clone())
                    .with_port(port)
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        FindCoordinatorResponse::default().with_node_id(BrokerId(NODE_ID)).with_host(host).with_port(port)
    }
}

/// A new idempotent producer id, epoch 0, whatever id and epoch the request names (as
/// Kafka's broker does without a transactional id). Transactions are not served: a
/// transactional id is refused.
async fn init_producer_id(req: InitProducerIdRequest, service: &Service, ctx: &RequestCtx) -> InitProducerIdResponse {
    let refused = |code: i16| {
        InitProducerIdResponse::default().with_error_code(code).with_producer_id(ProducerId(-1)).with_producer_epoch(-1)
    };
    if req.transactional_id.is_some() {
        return refused(errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    match service.init_producer_id(ctx).await {
        Ok(id) => InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => refused(code(&e)),
    }
}

/// The one SASL mechanism served.
const PLAIN: &str = "PLAIN";

fn sasl_handshake(req: SaslHandshakeRequest, session: &mut Session) -> SaslHandshakeResponse {
    let answer = SaslHandshakeResponse::default().with_mechanisms(vec![str_bytes(PLAIN)]);
    if req.mechanism.as_str() == PLAIN {
        session.handshaken = true;
        answer
    } else {
        answer.with_error_code(errors::UNSUPPORTED_SASL_MECHANISM)
    }
}

/// SASL/PLAIN (RFC 4616): `authzid NUL authcid NUL password`, checked against gregor's
/// users (`[[auth.users]]`) as HTTP Basic credentials are. The connection then acts as
/// that principal; a failure answers SASL_AUTHENTICATION_FAILED and closes the connection.
async fn sasl_authenticate(
    req: SaslAuthenticateRequest,
    service: &Service,
    session: &mut Session,
) -> SaslAuthenticateResponse {
    let failed = |session: &mut Session, message: &str| {
        session.closing = true;
        SaslAuthenticateResponse::default()
            .with_error_code(errors::SASL_AUTHENTICATION_FAILED)
            .with_error_message(Some(str_bytes(message)))
    };
    if !session.handshaken {
        session.closing = true;
        return SaslAuthenticateResponse::default()
            .with_error_code(errors::ILLEGAL_SASL_STATE)
            .with_error_message(Some(str_bytes("SaslAuthenticate before a SaslHandshake choosing PLAIN")));
    }
    session.handshaken = false;
    let parts: Vec<&[u8]> = req.auth_bytes.split(|b| *b == 0).collect();
    let [authzid, user, password] = parts.as_slice() else {
        return failed(session, "malformed PLAIN message: expected authzid NUL user NUL password");
    };
    let (Ok(authzid), Ok(user), Ok(password)) =
        (std::str::from_utf8(authzid), std::str::from_utf8(user), std::str::from_utf8(password))
    else {
        return failed(session, "malformed PLAIN message: not UTF-8");
    };
    if !authzid.is_empty() && authzid != user {
        return failed(session, "authorization id must be empty or the user");
    }
    let credentials = crate::auth::Credentials::Basic { user: user.to_owned(), password: password.to_owned() };
    match service.authenticate(&credentials).await {
        Ok(ctx) => {
            session.ctx = ctx.delayed();
            session.authenticated = true;
            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::new())
        }
        Err(_) => failed(session, "authentication failed: invalid username or password"),
    }
}
