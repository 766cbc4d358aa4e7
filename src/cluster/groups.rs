//! Consumer groups on the Kafka backend, with nothing kept in a replica.
//!
//! A REST member *is* a member of Kafka's classic group protocol: its member id is the one
//! the group coordinator gave, its generation and assignment are the coordinator's. Any
//! replica acts for it on any request:
//!
//! - join: JoinGroup (answering MEMBER_ID_REQUIRED), then, as the group's leader, the
//!   assignment (gregor's assignors), then SyncGroup. What a later rejoin needs travels in
//!   the member's own subscription (`user_data`: its session timeout and reset policy); the
//!   leader writes each member's generation into its assignment's `user_data`.
//! - poll, heartbeat, commit: Heartbeat with the generation DescribeGroups shows; on
//!   REBALANCE_IN_PROGRESS the replica rejoins for the member (its metadata, again from
//!   DescribeGroups) and syncs, so the answer carries the new assignment.
//! - positions: the poll cursor the client sends back (sealed); without one, the group's
//!   committed offsets, else the member's reset policy.
//!
//! Hand-over: with `range` and `roundrobin` (eager) a rejoining member states nothing owned
//! and gives up every partition at once. With `cooperative-sticky` (KIP-429) it states what
//! it owns; the leader withholds every partition that moves and writes, into the losing
//! member's assignment, the partitions it must give up (`Granted::revoking`). Any replica
//! reads that from DescribeGroups: the member keeps reading the rest, may still commit what
//! it is giving up, and rejoins once more (which releases them to their new owners) at its
//! first poll with a cursor of that generation (the answer that told it), or once half its
//! session has passed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, DeleteGroupsRequest, DescribeGroupsRequest,
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest, TopicName,
    consumer_protocol_assignment::TopicPartition as AssignedTopic,
    join_group_request::JoinGroupRequestProtocol,
    leave_group_request::MemberIdentity,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::OffsetFetchRequestTopic,
    sync_group_request::SyncGroupRequestAssignment,
};
use kafka_protocol::protocol::{Encodable, Request, StrBytes};
use serde::{Deserialize, Serialize};

use super::{Cluster, TRIES, wire_error};
use crate::error::{Code, Error, Result};
use crate::group::assignor::{self, Assignor, MemberSpec, TopicPartition};
use crate::group::cursor::{Cursor, Position};
use crate::group::{
    CommittedInfo, GroupInfo, GroupState, JoinParams, Joined, MemberInfo, OffsetReset, Polled, ResetTo, View,
};

/// Kafka's error codes: the listener's table.
use crate::kafka::errors as code;

/// Rounds of JoinGroup and SyncGroup a member goes through while other members' joins keep
/// cutting its rebalance short, before it gives up.
const REJOIN_ROUNDS: usize = 20;

/// What a member carries in its subscription's `user_data`, for the replica that rejoins
/// for it later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MemberParams {
    pub(super) session_timeout_ms: u64,
    #[serde(default)]
    pub(super) reset: Option<String>,
    /// The protocol (assignor) it joined with: DescribeGroups names none mid-rebalance.
    #[serde(default)]
    protocol: Option<String>,
}

/// What the leader writes into a member's assignment `user_data`: the generation, and after a
/// cooperative rebalance the partitions the member is giving up (withheld from their new
/// owners until it rejoins) with the time (ms) the leader decided it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Granted {
    pub(super) generation: u64,
    pub(super) revoking: BTreeSet<TopicPartition>,
    pub(super) since_ms: u64,
}

impl Granted {
    /// The generation (8 bytes, big-endian, which is all an older replica reads); then, when
    /// something is being revoked, `since_ms` (8 bytes) and the partitions as JSON pairs.
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(16);
        out.put_i64(self.generation.min(i64::MAX as u64) as i64);
        if !self.revoking.is_empty() {
            out.put_u64(self.since_ms);
            out.extend_from_slice(&serde_json::to_vec(&pairs(&self.revoking)).unwrap_or_default());
        }
        out.freeze()
    }

    /// What `encode` wrote; a missing or unreadable part is its default.
    fn decode(bytes: &[u8]) -> Granted {
        let word = |at: usize| bytes.get(at..at + 8).and_then(|b| <[u8; 8]>::try_from(b).ok());
        let generation = word(0).map_or(0, |b| i64::from_be_bytes(b).max(0) as u64);
        let since_ms = word(8).map_or(0, u64::from_be_bytes);
        let revoking =
            from_pairs(bytes.get(16..).and_then(|json| serde_json::from_slice(json).ok()).unwrap_or_default());
        Granted { generation, revoking, since_ms }
    }
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub(super) struct Described {
    pub(super) generation: u64,
    pub(super) assignment: BTreeSet<TopicPartition>,
    /// Partitions it is giving up in a cooperative hand-over (it may still commit them).
    pub(super) revoking: BTreeSet<TopicPartition>,
    pub(super) revoking_since_ms: u64,
    pub(super) topics: Vec<String>,
    pub(super) metadata: Bytes,
    pub(super) params: MemberParams,
    pub(super) protocol: String,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone)]
struct DescribedGroup {
    state: String,
    protocol: String,
    members: Vec<(String, Option<String>, Described)>,
}

pub(super) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// Kafka's name of the protocol gregor runs for `assignor`.
fn protocol_name(assignor: Assignor) -> &'static str {
    match assignor {
        Assignor::Range => "range",
        Assignor::RoundRobin => "roundrobin",
        Assignor::CooperativeSticky => "cooperative-sticky",
    }
}

fn assignor_for(protocol: &str) -> Option<Assignor> {
    match protocol {
        "range" => Some(Assignor::Range),
        "roundrobin" => Some(Assignor::RoundRobin),
        "cooperative-sticky" | "sticky" => Some(Assignor::CooperativeSticky),
        _ => None,
    }
}

/// Whether `protocol` hands partitions over cooperatively (KIP-429): members rejoin stating
/// what they own, the leader withholds a partition that moves until its owner gave it up, and
/// a member that lost partitions rejoins once more after releasing them: WebSocket members
/// (`cluster::member`) and REST members (the module's comment) alike.
pub(super) fn cooperative(protocol: &str) -> bool {
    protocol == "cooperative-sticky"
}

/// `metadata` (a subscription) stating `owned` as the partitions the member owns.
pub(super) fn with_owned(metadata: &Bytes, owned: &BTreeSet<TopicPartition>) -> Result<Bytes> {
    let Some(sub) = decode_subscription(metadata) else {
        return Err(Error::Internal("a member's own subscription does not decode".into()));
    };
    let mut by: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in owned {
        by.entry(tp.topic.as_str()).or_default().push(tp.partition as i32);
    }
    let owned = by
        .into_iter()
        .map(|(t, ps)| {
            kafka_protocol::messages::consumer_protocol_subscription::TopicPartition::default()
                .with_topic(TopicName(str_bytes(t)))
                .with_partitions(ps)
        })
        .collect();
    versioned(&sub.with_owned_partitions(owned), 1)
}

/// A consumer-protocol message: its version (i16), then its body.
fn versioned<T: Encodable>(message: &T, version: i16) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    message.encode(&mut buf, version).map_err(|e| Error::Internal(format!("encoding a group message: {e}")))?;
    Ok(buf.freeze())
}

pub(super) fn group_error(group: &str, member: &str, code: i16, what: &str) -> Error {
    match code {
        code::UNKNOWN_MEMBER_ID => Error::UnknownMember { group: group.to_owned(), member: member.to_owned() },
        code::ILLEGAL_GENERATION => Error::GenerationMoved { group: group.to_owned(), answer: "ILLEGAL_GENERATION" },
        code::REBALANCE_IN_PROGRESS => {
            Error::GenerationMoved { group: group.to_owned(), answer: "REBALANCE_IN_PROGRESS" }
        }
        code::INVALID_GROUP_ID => Error::InvalidGroupId(group.to_owned()),
        code::GROUP_ID_NOT_FOUND => Error::UnknownGroup(group.to_owned()),
        code::NON_EMPTY_GROUP => Error::GroupNotEmpty(group.to_owned()),
        // Its other members are Kafka consumers of another protocol type or assignor.
        code::INCONSISTENT_GROUP_PROTOCOL => Error::GroupProtocolConflict(group.to_owned()),
        code::INVALID_SESSION_TIMEOUT => {
            Error::parameter("session_timeout_ms", "outside the cluster's group.min/max.session.timeout.ms")
        }
        code::GROUP_AUTHORIZATION_FAILED => {
            Error::Backend(format!("the cluster refused gregor's principal access to group {group}"))
        }
        c => Error::Backend(format!("{what} for group {group}: Kafka error {c}")),
    }
}

pub(super) fn coordinator_moved(code: i16) -> bool {
    matches!(code, code::NOT_COORDINATOR | code::COORDINATOR_NOT_AVAILABLE | code::COORDINATOR_LOAD_IN_PROGRESS)
}

impl Cluster {
    /// The address of `group`'s coordinator (cached until it moves).
    async fn coordinator(&self, group: &str, fresh: bool) -> Result<String> {
        if !fresh && let Some(addr) = self.coordinators.lock().get(group) {
            return Ok(addr.clone());
        }
        for attempt in 0..TRIES {
            let addr = self.any_broker().await?;
            let req = FindCoordinatorRequest::default().with_key(str_bytes(group)).with_key_type(0);
            let (resp, _) =
                self.wire.call(&addr, 0..=3, &req, self.settings.request_timeout).await.map_err(wire_error)?;
            if resp.error_code == 0 {
                let found = format!("{}:{}", resp.host.as_str(), resp.port);
                self.coordinators.lock().insert(group.to_owned(), found.clone());
                return Ok(found);
            }
            if !coordinator_moved(resp.error_code) || attempt + 1 == TRIES {
                return Err(group_error(group, "", resp.error_code, "FindCoordinator"));
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        Err(Error::Backend(format!("no coordinator for group {group}")))
    }

    /// Sends a group request to the coordinator, finding it again when it moved (`error`
    /// reads the answer's error code).
    pub(super) async fn to_coordinator<R: Request>(
        &self,
        group: &str,
        versions: std::ops::RangeInclusive<i16>,
        req: &R,
        timeout: Duration,
        error: impl Fn(&R::Response) -> i16,
    ) -> Result<(R::Response, i16)> {
        let mut last = None;
        for attempt in 0..TRIES {
            let addr = self.coordinator(group, attempt > 0).await?;
            match self.wire.call(&addr, versions.clone(), req, timeout).await {
                Ok((resp, v)) if coordinator_moved(error(&resp)) && attempt + 1 < TRIES => {
                    self.coordinators.lock().remove(group);
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    last = Some(Ok((resp, v)));
                }
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    self.wire.forget(&addr);
                    self.coordinators.lock().remove(group);
                    last = Some(Err(wire_error(e)));
                }
            }
        }
        last.unwrap_or_else(|| Err(Error::Backend(format!("no coordinator for group {group}"))))
    }

    /// Joins (or, with `member`, rejoins) and syncs: the member's id and view.
    /// `generation`: the member's last one, for a member that rejoins: it keeps
    /// heartbeating while its JoinGroup waits for the others (as Kafka's own consumers do),
    /// since some brokers (noida-db) expire a member whose JoinGroup waited longer than its
    /// session.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn join_and_sync(
        &self,
        group: &str,
        member: &str,
        generation: Option<u64>,
        instance: Option<&str>,
        protocol: &str,
        metadata: Bytes,
        session_ms: u64,
    ) -> Result<(String, View)> {
        let mut member = member.to_owned();
        let rebalance_ms = session_ms.max(10_000);
        let timeout = Duration::from_millis(rebalance_ms) + self.settings.request_timeout;
        // A rebalance that another member's join cuts short is joined again, as Kafka's
        // consumers do, for as long as three rebalance timeouts (a bounded number of rounds).
        let patience = 3 * timeout;
        let deadline = tokio::time::Instant::now() + patience;
        for _ in 0..REJOIN_ROUNDS {
            if tokio::time::Instant::now() > deadline {
                break;
            }
            let req = JoinGroupRequest::default()
                .with_group_id(GroupId(str_bytes(group)))
                .with_session_timeout_ms(session_ms.min(i32::MAX as u64) as i32)
                .with_rebalance_timeout_ms(rebalance_ms.min(i32::MAX as u64) as i32)
                .with_member_id(str_bytes(&member))
                .with_group_instance_id(instance.map(str_bytes))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default().with_name(str_bytes(protocol)).with_metadata(metadata.clone()),
                ]);
            // A dynamic member joins at v3 at most, where the coordinator gives its id in the
            // same answer: the two-step join of v4+ (MEMBER_ID_REQUIRED, then again) races
            // with the other members' rejoins, and noida-db then loses the second join's answer.
            let versions = if instance.is_some() { 0..=5 } else { 0..=3 };
            let join = self.to_coordinator(group, versions, &req, timeout, |r| r.error_code);
            let (resp, _) = match generation {
                Some(g) if !member.is_empty() => {
                    tokio::select! {
                        answer = join => answer?,
                        () = self.beat_while_joining(group, &member, instance, g, session_ms) => unreachable!(),
                    }
                }
                _ => join.await?,
            };
            tracing::debug!(
                group,
                member,
                code = resp.error_code,
                generation = resp.generation_id,
                leader = resp.leader.as_str(),
                members = resp.members.len(),
                "JoinGroup answered"
            );
            match resp.error_code {
                0 => {}
                code::MEMBER_ID_REQUIRED => {
                    member = resp.member_id.to_string();
                    continue;
                }
                c => return Err(group_error(group, &member, c, "JoinGroup")),
            }
            member = resp.member_id.to_string();
            let generation = resp.generation_id;
            let assignments = if resp.leader.as_str() == member {
                let members: Vec<(String, Bytes)> =
                    resp.members.iter().map(|m| (m.member_id.to_string(), m.metadata.clone())).collect();
                self.assign(protocol, &members, generation).await?
            } else {
                Vec::new()
            };
            let sync = SyncGroupRequest::default()
                .with_group_id(GroupId(str_bytes(group)))
                .with_generation_id(generation)
                .with_member_id(str_bytes(&member))
                .with_group_instance_id(instance.map(str_bytes))
                .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
                .with_protocol_name(Some(str_bytes(protocol)))
                .with_assignments(
                    assignments
                        .into_iter()
                        .map(|(id, bytes)| {
                            SyncGroupRequestAssignment::default().with_member_id(str_bytes(&id)).with_assignment(bytes)
                        })
                        .collect(),
                );
            let resp = match self.to_coordinator(group, 0..=3, &sync, timeout, |r| r.error_code).await {
                Ok((resp, _)) => resp,
                // librdkafka's mock answers a sync that a new rebalance cut short with a null
                // assignment, which Kafka's schema does not allow: join again, as for
                // REBALANCE_IN_PROGRESS.
                Err(Error::Backend(msg)) if msg.contains("decoding SyncGroup") => continue,
                Err(e) => return Err(e),
            };
            match resp.error_code {
                0 => {}
                // Another member joined meanwhile: join again.
                code::REBALANCE_IN_PROGRESS => continue,
                c => return Err(group_error(group, &member, c, "SyncGroup")),
            }
            let assignment = crate::group::kafka::assigned_partitions(&resp.assignment);
            tracing::debug!(group, member, generation, ?assignment, "joined and synced");
            let view =
                View { generation: generation.max(0) as u64, assignment, revoked: BTreeSet::new(), changed: true };
            return Ok((member, view));
        }
        Err(Error::Backend(format!("group {group} kept rebalancing for {REJOIN_ROUNDS} rounds or {patience:?}")))
    }

    /// Heartbeats for `member` every third of its session, forever (raced against its join).
    async fn beat_while_joining(
        &self,
        group: &str,
        member: &str,
        instance: Option<&str>,
        generation: u64,
        session_ms: u64,
    ) {
        let every = Duration::from_millis((session_ms / 3).max(100));
        loop {
            tokio::time::sleep(every).await;
            // REBALANCE_IN_PROGRESS is the expected answer; the join says what matters.
            let _ = self.heartbeat_once(group, member, instance, generation).await;
        }
    }

    /// One Heartbeat for `member` at `generation`: the coordinator's error code.
    pub(super) async fn heartbeat_once(
        &self,
        group: &str,
        member: &str,
        instance: Option<&str>,
        generation: u64,
    ) -> Result<i16> {
        let hb = HeartbeatRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_generation_id(generation.min(i32::MAX as u64) as i32)
            .with_member_id(str_bytes(member))
            .with_group_instance_id(instance.map(str_bytes));
        let (resp, _) = self.to_coordinator(group, 0..=3, &hb, self.settings.request_timeout, |r| r.error_code).await?;
        Ok(resp.error_code)
    }

    /// The leader's work: every member's partitions, with the generation in `user_data`.
    async fn assign(
        &self,
        protocol: &str,
        members: &[(String, Bytes)],
        generation: i32,
    ) -> Result<Vec<(String, Bytes)>> {
        let kind = assignor_for(protocol).unwrap_or(Assignor::Range);
        let mut specs = BTreeMap::new();
        let mut topics = BTreeSet::new();
        for (id, metadata) in members {
            let topics_of = crate::group::kafka::subscribed_topics(metadata);
            topics.extend(topics_of.iter().cloned());
            let owned = decode_subscription(metadata).map(|s| owned_partitions(&s)).unwrap_or_default();
            specs.insert(id.clone(), MemberSpec { topics: topics_of, owned });
        }
        let mut counts = BTreeMap::new();
        for t in topics {
            // A subscribed topic that does not exist yet has no partitions to hand out.
            match self.partition_count(&t).await {
                Ok(n) => {
                    counts.insert(t, n);
                }
                Err(Error::UnknownTopic(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut target = assignor::assign(kind, &specs, &counts);
        if cooperative(protocol) {
            withhold_moving(&mut target, &specs);
        }
        let since_ms = crate::log::now_ms();
        let mut by_member: BTreeMap<&str, BTreeMap<&str, Vec<i32>>> =
            specs.keys().map(|id| (id.as_str(), BTreeMap::new())).collect();
        for (tp, owner) in &target {
            if let Some(m) = by_member.get_mut(owner.as_str()) {
                m.entry(tp.topic.as_str()).or_default().push(tp.partition as i32);
            }
        }
        let mut out = Vec::with_capacity(by_member.len());
        for (id, parts) in by_member {
            // What it owned and keeps no more: withheld from the new owner until it rejoins.
            let revoking =
                specs[id].owned.iter().filter(|tp| target.get(*tp).is_none_or(|owner| owner != id)).cloned().collect();
            let granted = Granted { generation: generation.max(0) as u64, revoking, since_ms };
            let assignment = ConsumerProtocolAssignment::default()
                .with_assigned_partitions(
                    parts
                        .into_iter()
                        .map(|(t, ps)| AssignedTopic::default().with_topic(TopicName(str_bytes(t))).with_partitions(ps))
                        .collect(),
                )
                .with_user_data(Some(granted.encode()));
            out.push((id.to_owned(), versioned(&assignment, 1)?));
        }
        Ok(out)
    }

    /// A new REST member.
    pub async fn join_group(&self, group: &str, params: JoinParams) -> Result<Joined> {
        let (member, view, me) = self.join_new(group, &params).await?;
        let cursor = self.seal_cursor(group, &member, &me, &view, Vec::new());
        Ok(Joined { member_id: member, view, session_timeout_ms: me.params.session_timeout_ms, cursor })
    }

    /// Joins `group` as a new member: its id, its view and itself as a rejoin needs it.
    pub(super) async fn join_new(&self, group: &str, params: &JoinParams) -> Result<(String, View, Described)> {
        crate::topic::check_name("group id", group).map_err(Error::InvalidGroupId)?;
        let session_ms = params.session_timeout_ms.unwrap_or(self.default_session_ms);
        let assignor = params.assignor.unwrap_or_default();
        let user = MemberParams {
            session_timeout_ms: session_ms,
            reset: params.auto_offset_reset.map(|r| reset_name(r).to_owned()),
            protocol: Some(protocol_name(assignor).to_owned()),
        };
        let subscription = ConsumerProtocolSubscription::default()
            .with_topics(params.topics.iter().map(|t| str_bytes(t)).collect())
            .with_user_data(Some(Bytes::from(serde_json::to_vec(&user).unwrap_or_default())));
        let metadata = versioned(&subscription, 1)?;
        let protocol = protocol_name(assignor);
        let (member, view) = self
            .join_and_sync(group, "", None, params.instance_id.as_deref(), protocol, metadata.clone(), session_ms)
            .await?;
        let me = Described {
            generation: view.generation,
            assignment: view.assignment.clone(),
            revoking: BTreeSet::new(),
            revoking_since_ms: 0,
            topics: params.topics.clone(),
            metadata,
            params: user,
            protocol: protocol.to_owned(),
        };
        Ok((member, view, me))
    }

    async fn describe_raw(&self, group: &str) -> Result<DescribedGroup> {
        let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group))]);
        let (resp, _) = self
            .to_coordinator(group, 0..=4, &req, self.settings.request_timeout, |r| {
                r.groups.first().map_or(0, |g| g.error_code)
            })
            .await?;
        let Some(g) = resp.groups.into_iter().next() else {
            return Err(Error::Backend(format!("DescribeGroups answered nothing for {group}")));
        };
        if g.error_code != 0 {
            return Err(group_error(group, "", g.error_code, "DescribeGroups"));
        }
        let protocol = g.protocol_data.to_string();
        tracing::trace!(?g, "DescribeGroups");
        let members = g
            .members
            .into_iter()
            .map(|m| {
                let sub = decode_subscription(&m.member_metadata);
                let params = sub
                    .as_ref()
                    .and_then(|s| s.user_data.as_ref())
                    .and_then(|u| serde_json::from_slice::<MemberParams>(u).ok())
                    .unwrap_or(MemberParams { session_timeout_ms: 0, reset: None, protocol: None });
                let granted = decode_assignment(&m.member_assignment)
                    .and_then(|a| a.user_data)
                    .map(|u| Granted::decode(&u))
                    .unwrap_or_default();
                let described = Described {
                    generation: granted.generation,
                    assignment: crate::group::kafka::assigned_partitions(&m.member_assignment),
                    revoking: granted.revoking,
                    revoking_since_ms: granted.since_ms,
                    topics: sub.map(|s| s.topics.iter().map(|t| t.to_string()).collect()).unwrap_or_default(),
                    metadata: m.member_metadata,
                    protocol: params.protocol.clone().unwrap_or_else(|| protocol.clone()),
                    params,
                };
                (m.member_id.to_string(), m.group_instance_id.map(|i| i.to_string()), described)
            })
            .collect();
        Ok(DescribedGroup { state: g.group_state.to_string(), protocol, members })
    }

    /// The member's current state, rejoining for it when the group rebalances, and when it is
    /// giving partitions up and `release` says it may (the module's comment). The view's
    /// `revoked` is what it is giving up (all it lost, with an eager protocol).
    /// `carried`: the member as its cursor describes it, for clusters whose DescribeGroups
    /// does not (librdkafka's mock has none; Tansu's names members without their metadata).
    async fn current(
        &self,
        group: &str,
        member: &str,
        carried: Option<&Described>,
        release: Release,
    ) -> Result<(Described, View)> {
        for _ in 0..TRIES {
            let (from_cursor, found) = match self.describe_raw(group).await {
                Ok(described) => match described.members.into_iter().find(|(id, _, _)| id == member) {
                    // Mid-rebalance, Kafka's DescribeGroups hides assignments: what the member
                    // owns is then what its cursor says.
                    Some((_, instance, mut me))
                        if !me.metadata.is_empty() && described.state != "Stable" && me.assignment.is_empty() =>
                    {
                        if let Some(c) = carried {
                            me.assignment = c.assignment.clone();
                            me.generation = c.generation;
                            me.revoking = c.revoking.clone();
                            me.revoking_since_ms = c.revoking_since_ms;
                        }
                        (false, Some((instance, me)))
                    }
                    Some((_, instance, me)) if !me.metadata.is_empty() => (false, Some((instance, me))),
                    Some((_, instance, _)) => (true, carried.map(|me| (instance, me.clone()))),
                    None => return Err(Error::UnknownMember { group: group.to_owned(), member: member.to_owned() }),
                },
                Err(Error::Unsupported(_)) => (true, carried.map(|me| (None, me.clone()))),
                Err(e) => return Err(e),
            };
            let Some((instance, me)) = found else {
                return Err(Error::Unsupported(
                    "the cluster's DescribeGroups does not report members' assignments: pass the cursor of the \
                     member's last join or poll (it carries them)"
                        .into(),
                ));
            };
            match self.heartbeat_once(group, member, instance.as_deref(), me.generation).await? {
                0 if !me.revoking.is_empty() && release.now(&me) => {
                    tracing::debug!(group, member, revoking = ?me.revoking, "released; rejoining");
                    return self.rejoin_for(group, member, instance.as_deref(), me).await;
                }
                0 => {
                    // A member giving partitions up that has not been told yet: a poll answers at once.
                    let changed = !me.revoking.is_empty() && release.untold(&me);
                    let view = View {
                        generation: me.generation,
                        assignment: me.assignment.clone(),
                        revoked: me.revoking.clone(),
                        changed,
                    };
                    return Ok((me, view));
                }
                code::REBALANCE_IN_PROGRESS => return self.rejoin_for(group, member, instance.as_deref(), me).await,
                // DescribeGroups and Heartbeat crossed a generation change: look again. (A
                // cursor's generation stays what it is: the member missed a rebalance.)
                code::ILLEGAL_GENERATION if !from_cursor => continue,
                c => return Err(group_error(group, member, c, "Heartbeat")),
            }
        }
        Err(Error::Backend(format!("group {group} kept changing generation")))
    }

    /// Rejoins and syncs for `me`; `revoked` is what it lost. Cooperatively it states what it
    /// owns (and so releases what it was giving up) and keeps all but what moves, which it
    /// is then giving up; eagerly it states nothing and has lost `revoked` already.
    async fn rejoin_for(
        &self,
        group: &str,
        member: &str,
        instance: Option<&str>,
        me: Described,
    ) -> Result<(Described, View)> {
        let session = me.params.session_timeout_ms.max(1_000);
        let generation = Some(me.generation);
        let keeps = cooperative(&me.protocol);
        let metadata = if keeps { with_owned(&me.metadata, &me.assignment)? } else { me.metadata.clone() };
        let (_, view) =
            self.join_and_sync(group, member, generation, instance, &me.protocol, metadata, session).await?;
        let revoked: BTreeSet<TopicPartition> = me.assignment.difference(&view.assignment).cloned().collect();
        let me = Described {
            generation: view.generation,
            assignment: view.assignment.clone(),
            revoking: if keeps { revoked.clone() } else { BTreeSet::new() },
            revoking_since_ms: crate::log::now_ms(),
            ..me
        };
        Ok((me, View { revoked, ..view }))
    }

    pub async fn heartbeat(&self, group: &str, member: &str) -> Result<View> {
        Ok(self.current(group, member, None, Release::Late).await?.1)
    }

    /// The cursor for `member` at `view`, with `positions`, carrying what a replica needs
    /// when the cluster's DescribeGroups does not show the member.
    fn seal_cursor(&self, group: &str, member: &str, me: &Described, view: &View, positions: Vec<Position>) -> String {
        let carried = Carried {
            assignment: pairs(&view.assignment),
            metadata: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &me.metadata),
            params: me.params.clone(),
            revoking: pairs(&me.revoking),
            revoking_since_ms: me.revoking_since_ms,
        };
        let cursor = Cursor {
            generation: view.generation,
            rotation: 0,
            positions,
            extra: serde_json::to_vec(&carried).unwrap_or_default(),
        };
        self.cursor_key.seal(group, member, &cursor)
    }

    /// Committed offsets of `group` for `tps` (every committed partition when `None`).
    pub(crate) async fn committed(
        &self,
        group: &str,
        tps: Option<&BTreeSet<TopicPartition>>,
    ) -> Result<BTreeMap<TopicPartition, u64>> {
        let topics = tps.map(|tps| {
            let mut by: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for tp in tps {
                by.entry(tp.topic.as_str()).or_default().push(tp.partition as i32);
            }
            by.into_iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopic::default().with_name(TopicName(str_bytes(t))).with_partition_indexes(ps)
                })
                .collect()
        });
        let req = OffsetFetchRequest::default().with_group_id(GroupId(str_bytes(group))).with_topics(topics);
        let (resp, _) =
            self.to_coordinator(group, 2..=5, &req, self.settings.request_timeout, |r| r.error_code).await?;
        if resp.error_code != 0 {
            return Err(group_error(group, "", resp.error_code, "OffsetFetch"));
        }
        let mut out = BTreeMap::new();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code == 0 && p.committed_offset >= 0 {
                    out.insert(
                        TopicPartition::new(t.name.0.to_string(), p.partition_index as u32),
                        p.committed_offset as u64,
                    );
                }
            }
        }
        Ok(out)
    }

    /// Reads for a member from its cursor's positions (or the committed offsets, or its
    /// reset policy), long-polling up to `wait` when nothing is there.
    pub async fn poll(
        self: &Arc<Self>,
        group: &str,
        member: &str,
        max_records: u32,
        max_bytes: usize,
        wait: Duration,
        cursor: Option<&str>,
    ) -> Result<Polled> {
        let given = cursor.map(|c| self.cursor_key.open(group, member, c)).transpose()?;
        let mut carried = given.as_ref().and_then(carried_member);
        let deadline = Instant::now() + wait;
        // The cursor's generation: an answer of that generation told the member what it is
        // giving up. A later round of this poll may release too (a round that found the
        // member untold, or rejoined, answers at once: its view changed), so a long poll that
        // came too soon after the rebalance releases once it may.
        let release = Release::Told(given.as_ref().map(|c| c.generation));
        loop {
            let (me, view) = self.current(group, member, carried.as_ref(), release).await?;
            // A rejoin within this poll: later rounds start from the member as it is now.
            carried = Some(me.clone());
            // Committed offsets only for partitions the cursor has no position in.
            let unplaced: BTreeSet<TopicPartition> = me
                .assignment
                .iter()
                .filter(|tp| given.as_ref().and_then(|c| c.position(tp)).is_none())
                .cloned()
                .collect();
            let committed =
                if unplaced.is_empty() { BTreeMap::new() } else { self.committed(group, Some(&unplaced)).await? };
            let mut positions: BTreeMap<TopicPartition, u64> = BTreeMap::new();
            let mut errors = Vec::new();
            for tp in &me.assignment {
                let from_cursor = given.as_ref().and_then(|c| c.position(tp)).map(|p| p.offset);
                let pos = match from_cursor.or_else(|| committed.get(tp).copied()) {
                    Some(p) => p,
                    None => match me.params.reset.as_deref() {
                        Some("earliest") => self.watermarks(&tp.topic, &[tp.partition]).await?[0].beginning,
                        Some("none") => {
                            errors.push((tp.clone(), Code::NoCommittedOffset));
                            continue;
                        }
                        _ => self.watermarks(&tp.topic, &[tp.partition]).await?[0].end,
                    },
                };
                positions.insert(tp.clone(), pos);
            }
            let mut records = Vec::new();
            let (mut count, mut bytes) = (0u32, 0usize);
            for (tp, pos) in positions.iter_mut() {
                if count >= max_records || bytes >= max_bytes {
                    break;
                }
                match self
                    .read(&tp.topic, tp.partition, *pos, max_records - count, max_bytes - bytes, Duration::ZERO)
                    .await
                {
                    Ok(read) => {
                        let got = read.records()?;
                        if let Some((last, _)) = got.last() {
                            count += got.len() as u32;
                            bytes += got.iter().map(|(_, r)| crate::log::stored_size(r)).sum::<usize>();
                            *pos = last + 1;
                            drop(got);
                            records.push((tp.clone(), read));
                        }
                    }
                    // Retention moved past the position: from the partition's beginning.
                    Err(Error::OffsetOutOfRange { beginning, .. }) if *pos < beginning => *pos = beginning,
                    Err(e) if e.code().is_server_fault() => return Err(e),
                    Err(e) => errors.push((tp.clone(), e.code())),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !records.is_empty() || left.is_zero() || view.changed || self.shutdown.is_cancelled() {
                let positions =
                    positions.into_iter().map(|(tp, offset)| Position { tp, topic_id: 0, epoch: 0, offset }).collect();
                let cursor = self.seal_cursor(group, member, &me, &view, positions);
                return Ok(Polled { view, records, errors, cursor });
            }
            // Nothing yet: wait for an end offset to move (or a third of the session, to
            // heartbeat again), then look again.
            let mut waits = Vec::new();
            for (tp, pos) in &positions {
                let mut rx = self.subscribe(&tp.topic, tp.partition).await?;
                let pos = *pos;
                waits.push(Box::pin(async move {
                    let _ = rx.wait_for(|end| *end > pos).await;
                }));
            }
            let beat = Duration::from_millis((me.params.session_timeout_ms / 3).max(100));
            // A release that came too soon is tried again once it may be due.
            let beat = if me.revoking.is_empty() { beat } else { beat.min(Duration::from_millis(RELEASE_AFTER_MS)) };
            let slice = left.min(beat);
            // (select_all panics on nothing to select from: a member may own no partition.)
            let moved = async move {
                if waits.is_empty() {
                    std::future::pending::<()>().await;
                }
                futures_util::future::select_all(waits).await;
            };
            tokio::select! {
                _ = tokio::time::sleep(slice) => {}
                _ = moved => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Commits a member's offsets: fenced by membership, generation and ownership.
    pub async fn commit(
        &self,
        group: &str,
        member: &str,
        generation: u64,
        offsets: &[(String, u32, u64)],
    ) -> Result<()> {
        // Where DescribeGroups does not show assignments (the mock, Tansu), Kafka's own fence
        // (member and generation) is the only one.
        match self.current(group, member, None, Release::Never).await {
            Ok((me, view)) => {
                if generation != view.generation {
                    return Err(Error::IllegalGeneration {
                        group: group.to_owned(),
                        current: view.generation,
                        given: generation,
                    });
                }
                for (t, p, _) in offsets {
                    let tp = TopicPartition::new(t.clone(), *p);
                    if !me.assignment.contains(&tp) && !me.revoking.contains(&tp) {
                        return Err(Error::NotOwner { topic: t.clone(), partition: *p });
                    }
                }
            }
            Err(Error::Unsupported(_)) => {}
            Err(e) => return Err(e),
        }
        self.offset_commit(group, member, generation.min(i32::MAX as u64) as i32, offsets).await
    }

    pub(super) async fn offset_commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        offsets: &[(String, u32, u64)],
    ) -> Result<()> {
        let mut by: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (t, p, o) in offsets {
            by.entry(t.as_str()).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*p as i32)
                    .with_committed_offset(*o as i64)
                    .with_committed_leader_epoch(-1),
            );
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(str_bytes(member))
            .with_retention_time_ms(-1)
            .with_topics(
                by.into_iter()
                    .map(|(t, ps)| {
                        OffsetCommitRequestTopic::default().with_name(TopicName(str_bytes(t))).with_partitions(ps)
                    })
                    .collect(),
            );
        let (resp, _) = self
            .to_coordinator(group, 2..=7, &req, self.settings.request_timeout, |r| {
                r.topics.iter().flat_map(|t| &t.partitions).map(|p| p.error_code).find(|c| *c != 0).unwrap_or(0)
            })
            .await?;
        for t in &resp.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(group_error(group, member, p.error_code, "OffsetCommit"));
                }
            }
        }
        Ok(())
    }

    pub async fn leave(&self, group: &str, member: &str) -> Result<()> {
        // v3+ names members in a list, v0-2 in one field; each version refuses the other's.
        let batch = LeaveGroupRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_members(vec![MemberIdentity::default().with_member_id(str_bytes(member))]);
        let timeout = self.settings.request_timeout;
        let single =
            LeaveGroupRequest::default().with_group_id(GroupId(str_bytes(group))).with_member_id(str_bytes(member));
        let resp = match self.to_coordinator(group, 3..=3, &batch, timeout, |r| r.error_code).await {
            Ok((resp, _)) => resp,
            Err(Error::Unsupported(_)) => {
                self.to_coordinator(group, 0..=2, &single, timeout, |r| r.error_code).await?.0
            }
            // librdkafka's mock answers v3+ in v0-2's shape, which does not decode; the member
            // may have left already, which asking again in v0-2's shape says.
            Err(Error::Backend(msg)) if msg.contains("decoding LeaveGroup") => {
                let resp = self.to_coordinator(group, 0..=2, &single, timeout, |r| r.error_code).await?.0;
                if resp.error_code == code::UNKNOWN_MEMBER_ID {
                    return Ok(());
                }
                resp
            }
            Err(e) => return Err(e),
        };
        let code = if resp.error_code != 0 {
            resp.error_code
        } else {
            resp.members.iter().map(|m| m.error_code).find(|c| *c != 0).unwrap_or(0)
        };
        match code {
            0 => Ok(()),
            c => Err(group_error(group, member, c, "LeaveGroup")),
        }
    }

    /// Every offset `group` committed.
    async fn committed_all(&self, group: &str) -> Result<BTreeMap<TopicPartition, u64>> {
        match self.committed(group, None).await {
            Ok(c) => Ok(c),
            // Tansu's answer to OffsetFetch for every topic (a null list) does not decode:
            // ask for every partition of every topic instead.
            Err(Error::Backend(msg)) if msg.contains("decoding OffsetFetch") => {
                let mut all = BTreeSet::new();
                for (topic, partitions) in self.topic_names().await? {
                    all.extend((0..partitions).map(|p| TopicPartition::new(topic.clone(), p)));
                }
                self.committed(group, Some(&all)).await
            }
            Err(e) => Err(e),
        }
    }

    /// `group`'s committed offsets with their partitions' end offsets: (partition,
    /// committed, end). One OffsetFetch and one ListOffsets per topic; no DescribeGroups
    /// (which some brokers lack), so it serves the console's lag charts everywhere.
    pub async fn group_lag(&self, group: &str) -> Result<Vec<(TopicPartition, u64, u64)>> {
        let committed = self.committed_all(group).await?;
        let ends = self.end_offsets(committed.keys()).await?;
        Ok(committed.into_iter().filter_map(|(tp, c)| ends.get(&tp).map(|&end| (tp, c, end))).collect())
    }

    /// The end offsets of `tps`, asked for one topic at a time; partitions (or topics) that
    /// no longer exist are left out.
    async fn end_offsets<'a>(
        &self,
        tps: impl IntoIterator<Item = &'a TopicPartition>,
    ) -> Result<BTreeMap<TopicPartition, u64>> {
        let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for tp in tps {
            by_topic.entry(tp.topic.as_str()).or_default().push(tp.partition);
        }
        let mut out = BTreeMap::new();
        for (topic, partitions) in by_topic {
            match self.watermarks(topic, &partitions).await {
                Ok(marks) => {
                    for (p, m) in partitions.into_iter().zip(marks) {
                        out.insert(TopicPartition::new(topic.to_owned(), p), m.end);
                    }
                }
                Err(Error::UnknownTopic(_)) => {}
                // One partition is gone: ask for each, keeping the others.
                Err(Error::UnknownPartition { .. }) => {
                    for p in partitions {
                        match self.watermarks(topic, &[p]).await {
                            Ok(marks) => {
                                out.insert(TopicPartition::new(topic.to_owned(), p), marks[0].end);
                            }
                            Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// A group as REST describes it: members, assignments, committed offsets and lag.
    pub async fn describe_group(&self, group: &str) -> Result<GroupInfo> {
        let g = self.describe_raw(group).await?;
        let committed = self.committed_all(group).await?;
        if g.state == "Dead" || (g.members.is_empty() && committed.is_empty() && g.state == "Empty") {
            return Err(Error::UnknownGroup(group.to_owned()));
        }
        let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
        let mut generation = 0;
        let members = g
            .members
            .iter()
            .map(|(id, instance, m)| {
                generation = generation.max(m.generation);
                // What a member gives up stays its own until it released it.
                for tp in m.assignment.iter().chain(&m.revoking) {
                    owners.insert(tp.clone(), id.clone());
                }
                MemberInfo {
                    member_id: id.clone(),
                    instance_id: instance.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    assignment: m.assignment.clone(),
                    revoking: m.revoking.clone(),
                    session_timeout_ms: m.params.session_timeout_ms,
                    last_seen_ms_ago: 0,
                    generation: m.generation,
                }
            })
            .collect();
        let mut tps: BTreeSet<TopicPartition> = committed.keys().cloned().collect();
        tps.extend(owners.keys().cloned());
        let offsets = self
            .end_offsets(&tps)
            .await?
            .into_iter()
            .map(|(tp, end_offset)| CommittedInfo {
                committed: committed.get(&tp).copied(),
                end_offset,
                owner: owners.get(&tp).cloned(),
                tp,
            })
            .collect();
        let state = match g.state.as_str() {
            "Empty" => GroupState::Empty,
            "Stable" => GroupState::Stable,
            _ => GroupState::Rebalancing,
        };
        let assignor = assignor_for(&g.protocol).map_or(g.protocol.clone(), |a| a.name().to_owned());
        Ok(GroupInfo { group: group.to_owned(), state, generation, protocol: "kafka", assignor, members, offsets })
    }

    /// Every group id the cluster's brokers coordinate.
    pub async fn list_groups(&self) -> Result<Vec<String>> {
        let brokers: Vec<String> = {
            self.refresh(Some(&[])).await?;
            self.meta.read().brokers.values().cloned().collect()
        };
        let mut out = BTreeSet::new();
        for addr in brokers {
            let (resp, _) = self
                .wire
                .call(&addr, 0..=3, &ListGroupsRequest::default(), self.settings.request_timeout)
                .await
                .map_err(wire_error)?;
            if resp.error_code != 0 {
                return Err(group_error("*", "", resp.error_code, "ListGroups"));
            }
            for g in resp.groups {
                if g.protocol_type.is_empty() || g.protocol_type.as_str() == "consumer" {
                    out.insert(g.group_id.0.to_string());
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Deletes an empty group and its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str_bytes(group))]);
        let (resp, _) = self
            .to_coordinator(group, 0..=1, &req, self.settings.request_timeout, |r| {
                r.results.first().map_or(0, |g| g.error_code)
            })
            .await?;
        match resp.results.first().map_or(0, |r| r.error_code) {
            0 => Ok(()),
            c => Err(group_error(group, "", c, "DeleteGroups")),
        }
    }

    /// Moves an empty group's committed offsets.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: Option<&str>,
        partitions: Option<&[u32]>,
        to: ResetTo,
    ) -> Result<Vec<(TopicPartition, u64)>> {
        let g = self.describe_raw(group).await?;
        if !g.members.is_empty() {
            return Err(Error::GroupNotEmpty(group.to_owned()));
        }
        let tps: Vec<TopicPartition> = match (topic, partitions) {
            (Some(t), Some(ps)) => ps.iter().map(|p| TopicPartition::new(t, *p)).collect(),
            (Some(t), None) => (0..self.partition_count(t).await?).map(|p| TopicPartition::new(t, p)).collect(),
            (None, _) => self.committed(group, None).await?.into_keys().collect(),
        };
        let mut moved = Vec::with_capacity(tps.len());
        for tp in tps {
            let w = self.watermarks(&tp.topic, &[tp.partition]).await?[0];
            let offset = match to {
                ResetTo::Earliest => w.beginning,
                ResetTo::Latest => w.end,
                ResetTo::Offset(o) => o.clamp(w.beginning, w.end),
                ResetTo::Timestamp(ts) => self.offset_for_timestamp(&tp.topic, tp.partition, ts).await?.offset,
            };
            moved.push((tp, offset));
        }
        let list: Vec<(String, u32, u64)> = moved.iter().map(|(tp, o)| (tp.topic.clone(), tp.partition, *o)).collect();
        if !list.is_empty() {
            self.offset_commit(group, "", -1, &list).await?;
        }
        Ok(moved)
    }
}

/// What a cursor carries of its member (its `extra`).
#[derive(Debug, Serialize, Deserialize)]
struct Carried {
    assignment: Vec<(String, u32)>,
    /// The member's JoinGroup metadata (base64), for a rejoin.
    metadata: String,
    params: MemberParams,
    /// What it is giving up, and since when (`Described`).
    #[serde(default)]
    revoking: Vec<(String, u32)>,
    #[serde(default)]
    revoking_since_ms: u64,
}

/// How long after the rebalance that told a member to give partitions up it may rejoin at the
/// earliest: the other members' JoinGroup answers of that generation must reach them before a
/// new rebalance starts. Kafka keeps them; noida-db answers followers some milliseconds after
/// the leader and loses those answers when a rejoin comes first (the followers then wait out
/// the rebalance timeout and one of them is dropped).
const RELEASE_AFTER_MS: u64 = 500;

/// When a member giving partitions up rejoins, which releases them.
#[derive(Debug, Clone, Copy)]
enum Release {
    /// A poll: once it shows (with a cursor of the generation that is giving them up) that an
    /// answer told the member, or once half its session has passed.
    Told(Option<u64>),
    /// A heartbeat: once half the session has passed.
    Late,
    /// A commit: never (it may commit what it is giving up).
    Never,
}

impl Release {
    fn now(self, me: &Described) -> bool {
        let since = crate::log::now_ms().saturating_sub(me.revoking_since_ms);
        match self {
            Release::Told(Some(g)) if g == me.generation => since >= RELEASE_AFTER_MS,
            Release::Told(_) | Release::Late => since >= me.params.session_timeout_ms / 2,
            Release::Never => false,
        }
    }

    /// A poll whose cursor was not of the generation that is giving partitions up.
    fn untold(self, me: &Described) -> bool {
        matches!(self, Release::Told(Some(g)) if g != me.generation)
    }
}

/// Partitions as the `[topic, partition]` pairs cursors and `user_data` carry them.
fn pairs(tps: &BTreeSet<TopicPartition>) -> Vec<(String, u32)> {
    tps.iter().map(|tp| (tp.topic.clone(), tp.partition)).collect()
}

fn from_pairs(pairs: Vec<(String, u32)>) -> BTreeSet<TopicPartition> {
    pairs.into_iter().map(|(t, p)| TopicPartition::new(t, p)).collect()
}

/// The member as a cursor describes it.
fn carried_member(cursor: &Cursor) -> Option<Described> {
    let c: Carried = serde_json::from_slice(&cursor.extra).ok()?;
    let metadata = Bytes::from(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &c.metadata).ok()?);
    let topics = decode_subscription(&metadata).map(|s| s.topics.iter().map(|t| t.to_string()).collect())?;
    Some(Described {
        generation: cursor.generation,
        assignment: from_pairs(c.assignment),
        revoking: from_pairs(c.revoking),
        revoking_since_ms: c.revoking_since_ms,
        topics,
        metadata,
        protocol: c.params.protocol.clone().unwrap_or_else(|| "range".to_owned()),
        params: c.params,
    })
}

/// Cooperative rebalancing: a partition that moves is withheld from its new owner until the
/// old one gave it up and rejoined, so no partition has two owners.
fn withhold_moving(target: &mut assignor::Assignment, specs: &BTreeMap<String, MemberSpec>) {
    let owners: BTreeMap<&TopicPartition, &String> =
        specs.iter().flat_map(|(id, spec)| spec.owned.iter().map(move |tp| (tp, id))).collect();
    target.retain(|tp, owner| owners.get(tp).is_none_or(|current| current.as_str() == owner.as_str()));
}

fn decode_subscription(metadata: &Bytes) -> Option<ConsumerProtocolSubscription> {
    crate::group::kafka::decode_versioned(metadata)
}

fn decode_assignment(assignment: &Bytes) -> Option<ConsumerProtocolAssignment> {
    crate::group::kafka::decode_versioned(assignment)
}

fn owned_partitions(s: &ConsumerProtocolSubscription) -> BTreeSet<TopicPartition> {
    s.owned_partitions
        .iter()
        .flat_map(|t| {
            let topic = t.topic.0.to_string();
            t.partitions.iter().filter_map(move |p| Some(TopicPartition::new(topic.clone(), u32::try_from(*p).ok()?)))
        })
        .collect()
}

fn reset_name(r: OffsetReset) -> &'static str {
    match r {
        OffsetReset::Earliest => "earliest",
        OffsetReset::Latest => "latest",
        OffsetReset::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster's fence (ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS) is `illegal_generation`,
    /// as gregor's own is, but claims no current generation it was not told.
    #[test]
    fn a_clusters_fence_is_illegal_generation_without_a_made_up_generation() {
        for (code, name) in
            [(code::ILLEGAL_GENERATION, "ILLEGAL_GENERATION"), (code::REBALANCE_IN_PROGRESS, "REBALANCE_IN_PROGRESS")]
        {
            let e = group_error("g", "m", code, "OffsetCommit");
            assert_eq!(e.code(), crate::error::Code::IllegalGeneration);
            let p = crate::http::error::ApiError::Core(e).problem();
            assert_eq!((p.code, p.status, p.generation), ("illegal_generation", 409, None));
            assert!(p.detail.contains(name) && p.detail.contains("'g'"), "{}", p.detail);
        }
    }

    /// The leader's `user_data`: the generation alone (as older replicas wrote and read it),
    /// or with what the member is giving up and since when.
    #[test]
    fn what_a_member_gives_up_travels_with_its_generation() {
        let plain = Granted { generation: 7, ..Granted::default() };
        assert_eq!(&plain.encode()[..], &7i64.to_be_bytes()[..]);
        assert_eq!(Granted::decode(&7i64.to_be_bytes()), plain);
        let giving = Granted {
            generation: 9,
            revoking: [TopicPartition::new("t", 1), TopicPartition::new("u", 0)].into_iter().collect(),
            since_ms: 1_700_000_000_000,
        };
        let bytes = giving.encode();
        assert_eq!(&bytes[..8], &9i64.to_be_bytes()[..]);
        assert_eq!(Granted::decode(&bytes), giving);
        assert_eq!(Granted::decode(b"junk"), Granted::default());
    }

    /// A poll releases what the member gives up once its cursor shows it was told (and the
    /// others had time to hear of the generation), a heartbeat only late, a commit never.
    #[test]
    fn a_member_releases_when_told_or_late_never_by_committing() {
        let now = crate::log::now_ms();
        let me = |since_ms: u64| Described {
            generation: 5,
            assignment: BTreeSet::new(),
            revoking: [TopicPartition::new("t", 0)].into_iter().collect(),
            revoking_since_ms: since_ms,
            topics: vec!["t".into()],
            metadata: Bytes::new(),
            params: MemberParams { session_timeout_ms: 10_000, reset: None, protocol: None },
            protocol: "cooperative-sticky".into(),
        };
        let (fresh, settled, late) = (me(now), me(now - RELEASE_AFTER_MS), me(now - 5_000));
        assert!(!Release::Told(Some(5)).now(&fresh));
        assert!(Release::Told(Some(5)).now(&settled));
        assert!(!Release::Told(Some(4)).now(&settled) && Release::Told(Some(4)).untold(&settled));
        assert!(!Release::Told(None).now(&settled) && !Release::Told(None).untold(&settled));
        assert!(Release::Told(Some(4)).now(&late) && Release::Told(None).now(&late));
        assert!(!Release::Late.now(&settled) && Release::Late.now(&late));
        assert!(!Release::Never.now(&late));
    }

    /// What the leader writes travels intact: partitions and the generation in `user_data`;
    /// a member's subscription carries its topics and join parameters.
    #[test]
    fn assignments_and_subscriptions_round_trip_through_the_consumer_protocol() {
        let assignment = ConsumerProtocolAssignment::default()
            .with_assigned_partitions(vec![
                AssignedTopic::default().with_topic(TopicName(str_bytes("t"))).with_partitions(vec![0, 2]),
            ])
            .with_user_data(Some(Bytes::copy_from_slice(&7i64.to_be_bytes())));
        let bytes = versioned(&assignment, 1).unwrap();
        let back = decode_assignment(&bytes).unwrap();
        assert_eq!(back.user_data.as_deref(), Some(&7i64.to_be_bytes()[..]));
        let parts = crate::group::kafka::assigned_partitions(&bytes);
        assert_eq!(parts, [TopicPartition::new("t", 0), TopicPartition::new("t", 2)].into_iter().collect());

        let params =
            MemberParams { session_timeout_ms: 6000, reset: Some("earliest".into()), protocol: Some("range".into()) };
        let sub = ConsumerProtocolSubscription::default()
            .with_topics(vec![str_bytes("t")])
            .with_user_data(Some(Bytes::from(serde_json::to_vec(&params).unwrap())));
        let bytes = versioned(&sub, 1).unwrap();
        let back = decode_subscription(&bytes).unwrap();
        let got: MemberParams = serde_json::from_slice(back.user_data.as_ref().unwrap()).unwrap();
        assert_eq!(
            (got.session_timeout_ms, got.reset.as_deref(), got.protocol.as_deref()),
            (6000, Some("earliest"), Some("range"))
        );
        assert!(decode_subscription(&Bytes::from_static(b"\x00")).is_none(), "too short to hold a version");
    }

    #[test]
    fn gregor_assignors_map_to_kafka_protocols_and_back() {
        for a in [Assignor::Range, Assignor::RoundRobin, Assignor::CooperativeSticky] {
            assert_eq!(assignor_for(protocol_name(a)), Some(a));
        }
        assert!(cooperative(protocol_name(Assignor::CooperativeSticky)));
        assert!(!cooperative(protocol_name(Assignor::Range)));
        assert_eq!(assignor_for("sticky"), Some(Assignor::CooperativeSticky), "groups made by earlier gregors");
    }

    /// A partition that changes owner is given to nobody this generation; one that stays, or
    /// that nobody owned, is given at once; a member's owned partitions ride in its metadata.
    #[test]
    fn a_cooperative_leader_withholds_what_moves() {
        let tp = |p| TopicPartition::new("t", p);
        let spec = |owned: &[u32]| MemberSpec {
            topics: ["t".to_owned()].into_iter().collect(),
            owned: owned.iter().map(|p| tp(*p)).collect(),
        };
        let specs: BTreeMap<String, MemberSpec> =
            [("a".to_owned(), spec(&[0, 1, 2])), ("b".to_owned(), spec(&[]))].into();
        let mut target: assignor::Assignment =
            [(tp(0), "a".to_owned()), (tp(1), "b".to_owned()), (tp(2), "a".to_owned()), (tp(3), "b".to_owned())].into();
        withhold_moving(&mut target, &specs);
        let got: Vec<(u32, &str)> = target.iter().map(|(t, o)| (t.partition, o.as_str())).collect();
        assert_eq!(got, vec![(0, "a"), (2, "a"), (3, "b")], "1 moves from a to b: withheld");

        let metadata =
            versioned(&ConsumerProtocolSubscription::default().with_topics(vec![str_bytes("t")]), 1).unwrap();
        let stated = with_owned(&metadata, &[tp(0), tp(2)].into_iter().collect()).unwrap();
        let sub = decode_subscription(&stated).unwrap();
        assert_eq!(owned_partitions(&sub), [tp(0), tp(2)].into_iter().collect());
        assert_eq!(crate::group::kafka::subscribed_topics(&stated), ["t".to_owned()].into_iter().collect());
    }
}
