//! The groups Kafka clients form with the classic protocol ([`classic`]), on the same
//! group registry, committed offsets and session timer as gregor's own groups. A group id
//! is used by one protocol at a time: while gregor members are in it, a Kafka JoinGroup is
//! refused, and the other way round.
//!
//! JoinGroup and SyncGroup answers wait for the rebalance: a waiting request sleeps on
//! the group's change notification (or until the rebalance is due) and asks the state
//! machine again; every change to a classic group notifies.

use std::time::Duration;

use bytes::Bytes;

use super::classic::{ClassicError, ClassicState, JoinOutcome, JoinRequest, JoinResult, Member};
use super::{GroupData, Groups, TopicPartition};
use crate::error::Error;
use crate::topic::check_name;

type Result<T> = std::result::Result<T, ClassicError>;

/// A group as Kafka's ListGroups and DescribeGroups show it.
#[derive(Debug, Clone)]
pub struct KafkaGroupView {
    pub group: String,
    /// `consumer` (or what its members sent) for Kafka clients' groups, `gregor` for
    /// groups of REST and WebSocket members.
    pub protocol_type: String,
    /// Kafka's state names: Empty, PreparingRebalance, CompletingRebalance, Stable.
    pub state: &'static str,
    /// The chosen protocol (assignor) of a Kafka group.
    pub protocol: String,
    pub members: Vec<Member>,
}

/// What an OffsetCommit did to each partition.
pub type CommitOutcome = Vec<(String, u32, std::result::Result<(), Error>)>;

impl GroupData {
    /// Whether gregor members or Kafka members are in the group.
    pub(super) fn has_members(&self) -> bool {
        !self.group.is_empty() || !self.classic.is_empty()
    }
}

impl Groups {
    /// A Kafka group as gregor's describe shows it: members with the topics and partitions
    /// their consumer-protocol metadata and assignment name.
    pub(super) fn describe_kafka(&self, data: &GroupData) -> super::GroupInfo {
        let c = &data.classic;
        let now = self.now();
        let members: Vec<super::MemberInfo> = c
            .members()
            .iter()
            .map(|m| {
                let metadata = m.protocols.iter().find(|(n, _)| Some(n) == c.protocol.as_ref()).map(|(_, b)| b);
                super::MemberInfo {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    topics: metadata.map(subscribed_topics).unwrap_or_default(),
                    assignment: assigned_partitions(&m.assignment),
                    revoking: Default::default(),
                    session_timeout_ms: m.session_timeout_ms,
                    last_seen_ms_ago: now.saturating_sub(m.last_seen),
                    generation: c.generation.max(0) as u64,
                }
            })
            .collect();
        let topics = members.iter().flat_map(|m| m.topics.iter().cloned()).collect();
        let owner =
            |tp: &TopicPartition| members.iter().find(|m| m.assignment.contains(tp)).map(|m| m.member_id.clone());
        let offsets = self.offsets_of(data, topics, owner);
        let state = match c.state {
            ClassicState::Stable => super::GroupState::Stable,
            ClassicState::Empty => super::GroupState::Empty,
            _ => super::GroupState::Rebalancing,
        };
        super::GroupInfo {
            group: data.group.id.clone(),
            state,
            generation: c.generation.max(0) as u64,
            protocol: "kafka",
            assignor: c.protocol.clone().unwrap_or_default(),
            members,
            offsets,
        }
    }

    fn instant(&self, ms: u64) -> tokio::time::Instant {
        self.clock + Duration::from_millis(ms)
    }

    /// A JoinGroup: answers once the rebalance it joins is complete.
    pub async fn kafka_join(&self, group: &str, req: JoinRequest) -> Result<JoinResult> {
        check_name("group id", group).map_err(Error::InvalidGroupId)?;
        let s = self.settings;
        if !(s.min_session_timeout_ms..=s.max_session_timeout_ms).contains(&req.session_timeout_ms) {
            return Err(ClassicError::InvalidSessionTimeout(req.session_timeout_ms));
        }
        let shutdown = self.log.shutdown_token();
        let (cell, member_id) = loop {
            let cell = self.cell(group);
            let mut data = cell.state.lock().await;
            if data.removed {
                continue;
            }
            if !data.group.is_empty() {
                return Err(ClassicError::UsedByGregor);
            }
            let out = data.classic.join(req.clone(), self.now());
            data.in_use_ms = self.wall_ms();
            drop(data);
            cell.notify();
            match out? {
                JoinOutcome::Done(r) => return Ok(r),
                JoinOutcome::Wait { member_id } => break (cell, member_id),
            }
        };
        let mut changed = cell.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let mut data = cell.state.lock().await;
            let before = (data.classic.generation, data.classic.state);
            let polled = data.classic.poll_join(&member_id, self.now());
            let moved = before != (data.classic.generation, data.classic.state);
            let due = data.classic.join_due();
            drop(data);
            if moved {
                cell.notify();
            }
            if let Some(r) = polled? {
                return Ok(r);
            }
            if shutdown.is_cancelled() {
                return Err(Error::ShuttingDown.into());
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(self.instant(due)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// A SyncGroup: the leader's stores every assignment; each member's answers its own
    /// once the leader's has arrived.
    pub async fn kafka_sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes> {
        let cell = self.existing(group).map_err(|_| ClassicError::UnknownMemberId)?;
        let mut changed = cell.changed.subscribe();
        let mut data = cell.state.lock().await;
        let answer = data.classic.sync(member, generation, assignments, self.now())?;
        let session = data.classic.members().iter().find(|m| m.id == member).map_or(0, |m| m.session_timeout_ms);
        drop(data);
        cell.notify();
        if let Some(a) = answer {
            return Ok(a);
        }
        // Bounded by the member's session: a leader that never sends its assignment
        // leaves the others to rejoin.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(session);
        let shutdown = self.log.shutdown_token();
        loop {
            changed.borrow_and_update();
            if let Some(a) = cell.state.lock().await.classic.poll_sync(member, generation)? {
                return Ok(a);
            }
            if shutdown.is_cancelled() {
                return Err(Error::ShuttingDown.into());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClassicError::RebalanceInProgress);
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    pub async fn kafka_heartbeat(&self, group: &str, member: &str, generation: i32) -> Result<()> {
        let cell = self.existing(group).map_err(|_| ClassicError::UnknownMemberId)?;
        let mut data = cell.state.lock().await;
        data.classic.heartbeat(member, generation, self.now())
    }

    /// LeaveGroup for each (member id, instance id); answers each one's outcome.
    pub async fn kafka_leave(
        &self,
        group: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<std::result::Result<(), ClassicError>>> {
        let cell = self.existing(group).map_err(|_| ClassicError::UnknownMemberId)?;
        let mut data = cell.state.lock().await;
        let now = self.now();
        let outcomes: Vec<_> = members.iter().map(|(id, iid)| data.classic.leave(id, iid.as_deref(), now)).collect();
        // Only a member that left can have emptied the group (then stamped, synced).
        if outcomes.iter().any(Result::is_ok) && !data.has_members() {
            self.became_empty(group, &mut data).await;
        }
        drop(data);
        cell.notify();
        Ok(outcomes)
    }

    /// An OffsetCommit: fenced by member and generation ([`classic::Classic::check_commit`]),
    /// then the offsets of existing partitions are stored (synced) in one write.
    pub async fn kafka_commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        offsets: &[(String, u32, u64)],
    ) -> Result<CommitOutcome> {
        check_name("group id", group).map_err(Error::InvalidGroupId)?;
        loop {
            let cell = self.cell(group);
            let mut data = cell.state.lock().await;
            if data.removed {
                continue;
            }
            if !data.group.is_empty() {
                return Err(ClassicError::UsedByGregor);
            }
            data.classic.check_commit(member, generation)?;
            let mut outcome = Vec::with_capacity(offsets.len());
            let mut entries = Vec::new();
            let mut tps = Vec::new();
            for (topic, p, offset) in offsets {
                let found = self.log.topic(topic).and_then(|t| t.partition(*p).map(|_| t.id));
                match found {
                    Ok(tid) => {
                        entries.push((tid, *p, *offset));
                        tps.push(TopicPartition::new(topic.clone(), *p));
                        outcome.push((topic.clone(), *p, Ok(())));
                    }
                    Err(e) => outcome.push((topic.clone(), *p, Err(e))),
                }
            }
            self.store_commits(group, &mut data, tps, entries).await?;
            return Ok(outcome);
        }
    }

    /// Committed offsets of `topics` (every topic the group committed for, if `None`):
    /// (topic, partition, offset), `None` where nothing is committed. A group that does not
    /// exist has committed nothing.
    pub async fn kafka_committed(
        &self,
        group: &str,
        topics: Option<&[(String, Vec<u32>)]>,
    ) -> Vec<(String, u32, Option<u64>)> {
        let Ok(cell) = self.existing(group) else {
            return topics
                .unwrap_or_default()
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p, None)))
                .collect();
        };
        let data = cell.state.lock().await;
        let current = |tp: &TopicPartition| data.committed_offset(tp, self.log.topic(&tp.topic).ok()?.id);
        match topics {
            Some(topics) => topics
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| TopicPartition::new(t.clone(), *p)))
                .map(|tp| {
                    let offset = current(&tp);
                    (tp.topic, tp.partition, offset)
                })
                .collect(),
            None => data
                .committed
                .keys()
                .filter_map(|tp| current(tp).map(|o| (tp.topic.clone(), tp.partition, Some(o))))
                .collect(),
        }
    }

    /// A group as Kafka's tools see it; `None` if it does not exist.
    pub async fn kafka_describe(&self, group: &str) -> Option<KafkaGroupView> {
        let cell = self.existing(group).ok()?;
        let data = cell.state.lock().await;
        if data.removed {
            return None;
        }
        Some(view(group, &data))
    }

    /// Every group as Kafka's ListGroups shows it.
    pub async fn kafka_list(&self) -> Vec<KafkaGroupView> {
        let cells: Vec<(String, std::sync::Arc<super::GroupCell>)> =
            self.groups.lock().iter().map(|(id, c)| (id.clone(), c.clone())).collect();
        let mut out = Vec::with_capacity(cells.len());
        for (id, cell) in cells {
            let data = cell.state.lock().await;
            if !data.removed {
                out.push(view(&id, &data));
            }
        }
        out
    }
}

fn view(group: &str, data: &GroupData) -> KafkaGroupView {
    let c = &data.classic;
    if !data.group.is_empty() {
        let state = match data.group.state() {
            super::GroupState::Empty => "Empty",
            super::GroupState::Rebalancing => "PreparingRebalance",
            super::GroupState::Stable => "Stable",
        };
        return KafkaGroupView {
            group: group.to_owned(),
            protocol_type: "gregor".into(),
            state,
            protocol: data.group.assignor.name().to_owned(),
            members: Vec::new(),
        };
    }
    KafkaGroupView {
        group: group.to_owned(),
        protocol_type: c.protocol_type.clone().unwrap_or_else(|| "consumer".into()),
        state: if c.is_empty() { ClassicState::Empty.name() } else { c.state.name() },
        protocol: c.protocol.clone().unwrap_or_default(),
        members: c.members().to_vec(),
    }
}

/// The topics a consumer-protocol member subscribes to (its JoinGroup metadata); empty when
/// the metadata is not the consumer protocol's.
pub(crate) fn subscribed_topics(metadata: &Bytes) -> std::collections::BTreeSet<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    decode_versioned::<ConsumerProtocolSubscription>(metadata)
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

/// The partitions a consumer-protocol member was assigned (its SyncGroup assignment).
pub(crate) fn assigned_partitions(assignment: &Bytes) -> std::collections::BTreeSet<TopicPartition> {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    decode_versioned::<ConsumerProtocolAssignment>(assignment)
        .map(|a| {
            a.assigned_partitions
                .iter()
                .flat_map(|tp| {
                    let topic = tp.topic.0.to_string();
                    tp.partitions
                        .iter()
                        .filter_map(move |p| Some(TopicPartition::new(topic.clone(), u32::try_from(*p).ok()?)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Decodes a consumer-protocol message: a version (i16), then the body. Versions newer
/// than the codec knows are read as its newest (Kafka's rule: later versions only append).
pub(crate) fn decode_versioned<T: kafka_protocol::protocol::Decodable + kafka_protocol::protocol::Message>(
    bytes: &Bytes,
) -> Option<T> {
    let mut buf = bytes.clone();
    if buf.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    let version = version.clamp(T::VERSIONS.min, T::VERSIONS.max);
    T::decode(&mut buf, version).ok()
}
