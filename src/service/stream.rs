//! What a WebSocket follows: a topic from chosen positions ([`TopicStream`]), or
//! a consumer-group member's assigned partitions ([`MemberStream`]).
//!
//! Both hand records to a [`RecordSink`] (the transport's frame being built), so
//! records go from the stored batch to the frame with no copy in between, and
//! both give a [`Watch`]: an owned future source that resolves when there is
//! something to read. Positions, fencing and the group protocol stay here.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;

use super::{OffsetEntry, Operation, RequestCtx, Service};
use crate::auth::quota::Slot;
use crate::cluster::Cluster;
use crate::cluster::member::{Driven, StreamMember};
use crate::error::{Code, Error, Result};
use crate::group::{Joined, TopicPartition, View};
use crate::log::{ReadRequest, Topic};
use crate::record::StoredRecord;

/// Where a topic stream starts, per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    Earliest,
    Latest,
    /// The same offset in every partition (each must hold it).
    Offset(u64),
    /// The first offset at or after this time (ms), per partition.
    Timestamp(u64),
}

impl FromStr for StreamStart {
    type Err = Error;

    /// `earliest`, `latest`, an offset, or `ts:MS`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "earliest" => Ok(StreamStart::Earliest),
            "latest" => Ok(StreamStart::Latest),
            other => match other.strip_prefix("ts:") {
                Some(ms) => ms
                    .parse()
                    .map(StreamStart::Timestamp)
                    .map_err(|_| Error::parameter("from", "ts: takes milliseconds")),
                None => other
                    .parse()
                    .map(StreamStart::Offset)
                    .map_err(|_| Error::parameter("from", "from is earliest, latest, an offset, or ts:MS")),
            },
        }
    }
}

/// Where fetched records go: the frame a transport is building.
pub trait RecordSink {
    fn push(&mut self, topic: &str, partition: u32, offset: u64, record: &StoredRecord<'_>);
    /// Records pushed so far.
    fn count(&self) -> usize;
    /// Bytes of the frame so far.
    fn bytes(&self) -> usize;
}

/// Resolves when a followed partition has records past the stream's position.
/// Owned: taken before a `select!`, while the stream itself stays free to change.
#[derive(Debug)]
pub struct Watch {
    ends: Vec<(u64, watch::Receiver<u64>)>,
}

impl Watch {
    /// Records are there to read now.
    pub fn is_ready(&self) -> bool {
        self.ends.iter().any(|(pos, rx)| *rx.borrow() > *pos)
    }

    /// Waits until an end offset moves (or forever, when nothing is followed).
    pub async fn changed(&mut self) {
        if self.ends.is_empty() {
            std::future::pending::<()>().await;
        }
        let _ = futures_util::future::select_all(self.ends.iter_mut().map(|(_, rx)| rx.changed().boxed())).await;
    }
}

/// Resolves whenever a group changes in a way its members should hear about.
#[derive(Debug)]
pub struct GroupChanges(watch::Receiver<u64>);

impl GroupChanges {
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The group is gone; the member's next call says so.
            std::future::pending::<()>().await;
        }
    }
}

/// What a topic stream follows: the embedded log's topic, or a topic of the Kafka cluster
/// (with its partitions' end offsets kept by the cluster's followers).
#[derive(Debug)]
enum Followed {
    Log(Arc<Topic>),
    Cluster { cluster: Arc<Cluster>, name: String, ends: BTreeMap<u32, watch::Receiver<u64>> },
}

/// A stream of one topic from explicit positions, with no group.
#[derive(Debug)]
pub struct TopicStream {
    service: Service,
    ctx: RequestCtx,
    followed: Followed,
    positions: BTreeMap<u32, u64>,
    /// Follow partitions added while the stream is open (no explicit list given).
    follow_new_partitions: bool,
    /// The stream's place under its principal's `max_streams`.
    _slot: Option<Slot>,
}

impl TopicStream {
    pub(super) async fn open(
        service: Service,
        ctx: RequestCtx,
        name: &str,
        from: StreamStart,
        partitions: Option<&[u32]>,
        slot: Option<Slot>,
    ) -> Result<TopicStream> {
        let follow_new_partitions = partitions.is_none_or(<[u32]>::is_empty);
        let mut positions = BTreeMap::new();
        let followed = match service.cluster() {
            None => {
                let log = service.log()?.clone();
                let topic = log.topic(name)?;
                let chosen: Vec<u32> = match partitions {
                    None | Some([]) => (0..topic.partitions().len() as u32).collect(),
                    Some(list) => list.to_vec(),
                };
                for p in chosen {
                    let part = topic.partition(p)?;
                    let (start, end) = (part.start(), part.end());
                    let pos = match from {
                        StreamStart::Timestamp(ms) => log.offset_for_timestamp(name, p, ms).await?.offset,
                        _ => start_position(from, start, end)?,
                    };
                    positions.insert(p, pos);
                }
                Followed::Log(topic)
            }
            Some(cluster) => {
                let count = cluster.partition_count(name).await?;
                let chosen: Vec<u32> = match partitions {
                    None | Some([]) => (0..count).collect(),
                    Some(list) => list.to_vec(),
                };
                if let Some(p) = chosen.iter().find(|p| **p >= count) {
                    return Err(Error::UnknownPartition { topic: name.to_owned(), partition: *p });
                }
                let marks = cluster.watermarks(name, &chosen).await?;
                let mut ends = BTreeMap::new();
                for (p, w) in chosen.iter().zip(marks) {
                    let pos = match from {
                        StreamStart::Timestamp(ms) => cluster.offset_for_timestamp(name, *p, ms).await?.offset,
                        _ => start_position(from, w.beginning, w.end)?,
                    };
                    positions.insert(*p, pos);
                    ends.insert(*p, cluster.subscribe(name, *p).await?);
                }
                Followed::Cluster { cluster: cluster.clone(), name: name.to_owned(), ends }
            }
        };
        Ok(TopicStream { service, ctx, followed, positions, follow_new_partitions, _slot: slot })
    }

    pub fn topic(&self) -> &str {
        match &self.followed {
            Followed::Log(topic) => topic.name.as_str(),
            Followed::Cluster { name, .. } => name,
        }
    }

    /// Whether the stream's principal may still read its topic (after an ACL reload).
    pub fn authorized(&self) -> Result<()> {
        self.service.authorize(&self.ctx, Operation::ReadTopic(self.topic()))
    }

    pub fn watch(&self) -> Watch {
        let ends = match &self.followed {
            Followed::Log(topic) => self
                .positions
                .iter()
                .filter_map(|(p, pos)| topic.partition(*p).ok().map(|part| (*pos, part.subscribe())))
                .collect(),
            Followed::Cluster { ends, .. } => self
                .positions
                .iter()
                .filter_map(|(p, pos)| {
                    let mut rx = ends.get(p)?.clone();
                    // Seen: only later moves of the end wake the stream.
                    rx.borrow_and_update();
                    Some((*pos, rx))
                })
                .collect(),
        };
        Watch { ends }
    }

    /// Reads up to `budget` records (and about `max_bytes` of frame) into `sink`,
    /// advancing the stream's positions. `UnknownTopic` once the topic is deleted.
    pub async fn fetch(&mut self, sink: &mut impl RecordSink, budget: usize, max_bytes: usize) -> Result<()> {
        self.service.authorize(&self.ctx, Operation::ReadTopic(self.topic()))?;
        // Over its consume quota, the stream waits its debt out before reading more.
        self.service.spend(&self.ctx, super::Spend::Consume, 0).await?;
        let count = match &self.followed {
            Followed::Log(topic) if topic.is_deleted() => return Err(Error::UnknownTopic(topic.name.to_string())),
            Followed::Log(topic) => topic.partitions().len() as u32,
            Followed::Cluster { cluster, name, .. } => cluster.partition_count(name).await?,
        };
        if self.follow_new_partitions {
            for p in self.positions.len() as u32..count {
                self.positions.insert(p, 0);
                if let Followed::Cluster { cluster, name, ends } = &mut self.followed {
                    ends.insert(p, cluster.subscribe(name, p).await?);
                }
            }
        }
        let name = self.topic().to_owned();
        for (p, pos) in self.positions.iter_mut() {
            let remaining = budget.saturating_sub(sink.count());
            if remaining == 0 || sink.bytes() >= max_bytes {
                break;
            }
            let max = max_bytes.saturating_sub(sink.bytes()).max(1);
            let read = match &self.followed {
                Followed::Log(_) => {
                    let req = ReadRequest {
                        offset: *pos,
                        max_records: remaining as u32,
                        max_bytes: max,
                        wait: Duration::ZERO,
                    };
                    self.service.log()?.read(&name, *p, req).await
                }
                Followed::Cluster { cluster, .. } => {
                    cluster.read(&name, *p, *pos, remaining as u32, max, Duration::ZERO).await
                }
            };
            match read {
                Ok(read) => {
                    let records = self.service.records(&self.ctx, &name, read);
                    for (offset, rec) in records.decode()? {
                        sink.push(&name, *p, offset, &rec);
                        *pos = offset + 1;
                    }
                }
                // Retention removed records the stream had not reached: skip ahead.
                Err(Error::OffsetOutOfRange { beginning, .. }) if *pos < beginning => *pos = beginning,
                Err(Error::OffsetOutOfRange { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A stream's first position in a partition holding `start..end`.
fn start_position(from: StreamStart, start: u64, end: u64) -> Result<u64> {
    match from {
        StreamStart::Earliest => Ok(start),
        StreamStart::Latest => Ok(end),
        StreamStart::Offset(o) if (start..=end).contains(&o) => Ok(o),
        StreamStart::Offset(o) => Err(Error::OffsetOutOfRange { offset: o, beginning: start, end }),
        // Looked up by the caller.
        StreamStart::Timestamp(_) => Ok(start),
    }
}

/// What a member's fetch delivered, besides the records in the sink.
#[derive(Debug, Default)]
pub struct FetchSummary {
    /// Per partition, the delivered offsets `first..end`.
    pub delivered: Vec<(TopicPartition, u64, u64)>,
    /// Partitions that could not be read, with a stable code.
    pub errors: Vec<(TopicPartition, Code)>,
}

/// Keeps a member's session alive (see [`MemberStream::keepalive`]).
#[derive(Debug, Clone)]
pub enum Keepalive {
    Embedded { service: Service, group: String, member: String },
    Kafka(Arc<StreamMember>),
}

impl Keepalive {
    pub async fn touch(&self) -> Result<()> {
        match self {
            Keepalive::Embedded { service, group, member } => service.groups()?.touch(group, member).await,
            Keepalive::Kafka(member) => member.touch(),
        }
    }
}

/// A member on the Kafka backend, as its connection sees it: the membership (driven by
/// its own task) and the positions, which live here because a socket is one replica's.
#[derive(Debug)]
struct KafkaMember {
    member: Driven,
    /// The membership's change count at the last heartbeat.
    seen: u64,
    positions: BTreeMap<TopicPartition, u64>,
    ends: BTreeMap<TopicPartition, watch::Receiver<u64>>,
    /// Per partition, the end of what was delivered, and what the stream committed.
    delivered: BTreeMap<TopicPartition, u64>,
    committed: BTreeMap<TopicPartition, u64>,
}

impl KafkaMember {
    /// Positions for assigned partitions that have none: the committed offset, else the
    /// member's reset policy. Partitions that get none are returned with their code.
    async fn place(
        &mut self,
        cluster: &Arc<Cluster>,
        group: &str,
        assignment: &BTreeSet<TopicPartition>,
    ) -> Result<Vec<(TopicPartition, Code)>> {
        let unplaced: BTreeSet<TopicPartition> =
            assignment.iter().filter(|tp| !self.positions.contains_key(*tp)).cloned().collect();
        let mut errors = Vec::new();
        if unplaced.is_empty() {
            return Ok(errors);
        }
        let committed = cluster.committed(group, Some(&unplaced)).await?;
        for tp in unplaced {
            let pos = match committed.get(&tp) {
                Some(c) => *c,
                None => {
                    let marks = match cluster.watermarks(&tp.topic, &[tp.partition]).await {
                        Ok(m) => m,
                        Err(e) if e.code().is_server_fault() => return Err(e),
                        Err(e) => {
                            errors.push((tp, e.code()));
                            continue;
                        }
                    };
                    match self.member.reset() {
                        Some("earliest") => marks[0].beginning,
                        Some("none") => {
                            errors.push((tp, Code::NoCommittedOffset));
                            continue;
                        }
                        _ => marks[0].end,
                    }
                }
            };
            match cluster.subscribe(&tp.topic, tp.partition).await {
                Ok(rx) => {
                    self.ends.insert(tp.clone(), rx);
                    self.positions.insert(tp, pos);
                }
                Err(e) if e.code().is_server_fault() => return Err(e),
                Err(e) => errors.push((tp, e.code())),
            }
        }
        Ok(errors)
    }

    /// Forgets what the member no longer owns.
    fn keep_only(&mut self, owned: &BTreeSet<TopicPartition>) {
        self.positions.retain(|tp, _| owned.contains(tp));
        self.ends.retain(|tp, _| owned.contains(tp));
        self.delivered.retain(|tp, _| owned.contains(tp));
        self.committed.retain(|tp, _| owned.contains(tp));
    }
}

/// A consumer-group member whose lifetime is a connection's.
#[derive(Debug)]
pub struct MemberStream {
    service: Service,
    ctx: RequestCtx,
    group: String,
    /// The topics the member subscribed to.
    topics: Vec<String>,
    member: String,
    view: View,
    session_ms: u64,
    /// On the Kafka backend: the membership and the positions.
    kafka: Option<KafkaMember>,
    /// The stream's place under its principal's `max_streams`.
    _slot: Option<Slot>,
}

impl MemberStream {
    pub(super) fn new(
        service: Service,
        ctx: RequestCtx,
        group: &str,
        topics: Vec<String>,
        joined: Joined,
        slot: Option<Slot>,
    ) -> MemberStream {
        MemberStream {
            service,
            ctx,
            group: group.to_owned(),
            topics,
            member: joined.member_id,
            view: joined.view,
            session_ms: joined.session_timeout_ms,
            kafka: None,
            _slot: slot,
        }
    }

    /// A member of a group on the Kafka backend, driven by `member`'s task.
    pub(super) fn on_kafka(
        service: Service,
        ctx: RequestCtx,
        group: &str,
        topics: Vec<String>,
        (member, view): (Driven, View),
        slot: Option<Slot>,
    ) -> MemberStream {
        MemberStream {
            service,
            ctx,
            group: group.to_owned(),
            topics,
            member: member.id().to_owned(),
            view,
            session_ms: member.session().as_millis() as u64,
            kafka: Some(KafkaMember {
                seen: member.version(),
                member,
                positions: BTreeMap::new(),
                ends: BTreeMap::new(),
                delivered: BTreeMap::new(),
                committed: BTreeMap::new(),
            }),
            _slot: slot,
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The member's id (on the Kafka backend, a new one after the coordinator forgot it).
    pub fn member_id(&self) -> String {
        match &self.kafka {
            Some(k) => k.member.id(),
            None => self.member.clone(),
        }
    }

    /// What the member was last told it owns.
    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_ms)
    }

    /// Whether the member's principal may still consume its group and topics
    /// (after an ACL reload).
    pub fn authorized(&self) -> Result<()> {
        self.service.authorize(&self.ctx, Operation::JoinGroup { group: &self.group, topics: &self.topics })
    }

    /// The member's readable partitions' end offsets against its positions (a
    /// partition whose position is not known yet counts as not ready: its first
    /// read, which an assignment change triggers, sets it).
    pub async fn watch(&self) -> Result<Watch> {
        if let Some(k) = &self.kafka {
            let ends = self
                .view
                .assignment
                .iter()
                .filter_map(|tp| {
                    let mut rx = k.ends.get(tp)?.clone();
                    // Seen: only later moves of the end wake the stream.
                    rx.borrow_and_update();
                    Some((*k.positions.get(tp)?, rx))
                })
                .collect();
            return Ok(Watch { ends });
        }
        let groups = self.service.groups()?;
        let log = self.service.log()?;
        let mut ends = Vec::new();
        for (tp, pos) in groups.positions(&self.group, &self.member).await? {
            if !self.view.assignment.contains(&tp) {
                continue;
            }
            // A topic deleted under the member: nothing to follow there.
            let Ok(topic) = log.topic(&tp.topic) else { continue };
            let Ok(part) = topic.partition(tp.partition) else { continue };
            ends.push((pos.unwrap_or(u64::MAX), part.subscribe()));
        }
        Ok(Watch { ends })
    }

    pub fn changes(&self) -> Result<GroupChanges> {
        if let Some(k) = &self.kafka {
            return Ok(GroupChanges(k.member.changes()));
        }
        Ok(GroupChanges(self.service.groups()?.subscribe(&self.group)?))
    }

    /// Reads up to `budget` records from the partitions the member was told it
    /// owns into `sink`, recording the deliveries (positions advance).
    pub async fn fetch(&mut self, sink: &mut impl RecordSink, budget: usize, max_bytes: usize) -> Result<FetchSummary> {
        self.service.authorize(&self.ctx, Operation::ConsumeGroup(&self.group))?;
        if self.kafka.is_some() {
            return self.fetch_from_cluster(sink, budget, max_bytes).await;
        }
        let polled = self
            .service
            .groups()?
            .read(&self.group, &self.member, budget as u32, max_bytes, &self.view.assignment)
            .await?;
        let mut summary = FetchSummary { delivered: Vec::new(), errors: polled.errors };
        for (tp, read) in polled.records {
            let records = self.service.records(&self.ctx, &tp.topic, read);
            let decoded = records.decode()?;
            if let (Some((first, _)), Some((last, _))) = (decoded.first(), decoded.last()) {
                summary.delivered.push((tp.clone(), *first, last + 1));
            }
            for (offset, rec) in decoded {
                sink.push(&tp.topic, tp.partition, offset, &rec);
            }
        }
        Ok(summary)
    }

    async fn fetch_from_cluster(
        &mut self,
        sink: &mut impl RecordSink,
        budget: usize,
        max_bytes: usize,
    ) -> Result<FetchSummary> {
        let (Some(k), Some(cluster)) = (self.kafka.as_mut(), self.service.cluster()) else {
            return Err(Error::Internal("a Kafka member without the Kafka backend".into()));
        };
        k.member.touch()?;
        let errors = k.place(cluster, &self.group, &self.view.assignment).await?;
        let mut summary = FetchSummary { delivered: Vec::new(), errors };
        for tp in &self.view.assignment {
            let remaining = budget.saturating_sub(sink.count());
            if remaining == 0 || sink.bytes() >= max_bytes {
                break;
            }
            let Some(pos) = k.positions.get_mut(tp) else { continue };
            let max = max_bytes.saturating_sub(sink.bytes()).max(1);
            match cluster.read(&tp.topic, tp.partition, *pos, remaining as u32, max, Duration::ZERO).await {
                Ok(read) => {
                    let records = self.service.records(&self.ctx, &tp.topic, read);
                    let decoded = records.decode()?;
                    if let (Some((first, _)), Some((last, _))) = (decoded.first(), decoded.last()) {
                        summary.delivered.push((tp.clone(), *first, last + 1));
                        k.delivered.insert(tp.clone(), last + 1);
                        *pos = last + 1;
                    }
                    for (offset, rec) in decoded {
                        sink.push(&tp.topic, tp.partition, offset, &rec);
                    }
                }
                // Retention removed records the member had not reached: skip ahead.
                Err(Error::OffsetOutOfRange { beginning, .. }) if *pos < beginning => *pos = beginning,
                Err(Error::OffsetOutOfRange { .. }) => {}
                Err(e) if e.code().is_server_fault() => return Err(e),
                Err(e) => summary.errors.push((tp.clone(), e.code())),
            }
        }
        Ok(summary)
    }

    /// Keeps the session alive without a heartbeat's release step.
    pub async fn touch(&self) -> Result<()> {
        if let Some(k) = &self.kafka {
            return k.member.touch();
        }
        self.service.groups()?.touch(&self.group, &self.member).await
    }

    /// A handle that keeps this member's session alive while the transport is
    /// busy elsewhere (a send waiting on a slow client).
    pub fn keepalive(&self) -> Keepalive {
        if let Some(k) = &self.kafka {
            return Keepalive::Kafka(k.member.0.clone());
        }
        Keepalive::Embedded { service: self.service.clone(), group: self.group.clone(), member: self.member.clone() }
    }

    /// Whether a heartbeat would tell the member something new.
    pub async fn has_news(&self) -> Result<bool> {
        if let Some(k) = &self.kafka {
            k.member.touch()?;
            return Ok(k.member.version() != k.seen);
        }
        self.service.groups()?.has_news(&self.group, &self.member).await
    }

    /// Whether every partition being revoked has its delivered records committed.
    pub async fn revocation_settled(&self) -> Result<bool> {
        if let Some(k) = &self.kafka {
            k.member.touch()?;
            return Ok(self.view.revoked.iter().all(|tp| match k.delivered.get(tp) {
                None => true,
                Some(end) => k.committed.get(tp).is_some_and(|c| c >= end),
            }));
        }
        self.service.groups()?.revocation_settled(&self.group, &self.member).await
    }

    /// A heartbeat: releases what the last answer revoked; returns the new view,
    /// which becomes the member's view.
    pub async fn heartbeat(&mut self) -> Result<&View> {
        self.service.authorize(&self.ctx, Operation::ConsumeGroup(&self.group))?;
        let Some(k) = self.kafka.as_mut() else {
            self.view = self.service.groups()?.heartbeat(&self.group, &self.member).await?;
            return Ok(&self.view);
        };
        if !self.view.revoked.is_empty() {
            // Announced and settled (or waited on long enough): give them up; the rejoin's
            // assignment arrives as news.
            k.member.release();
            self.view = View { revoked: BTreeSet::new(), changed: false, ..self.view.clone() };
        } else {
            k.seen = k.member.version();
            let next = k.member.view()?;
            let changed = next.assignment != self.view.assignment || next.generation != self.view.generation;
            self.view = View { changed: changed && next.revoked.is_empty(), ..next };
        }
        k.keep_only(&self.view.assignment.union(&self.view.revoked).cloned().collect());
        Ok(&self.view)
    }

    /// Commits offsets in the member's current generation.
    pub async fn commit(&mut self, offsets: &[OffsetEntry]) -> Result<()> {
        let Some(k) = self.kafka.as_mut() else {
            return self.service.commit(&self.ctx, &self.group, &self.member, self.view.generation, offsets).await;
        };
        let topics: Vec<&str> = offsets.iter().map(|o| o.topic.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
        self.service.authorize(&self.ctx, Operation::CommitOffsets { group: &self.group, topics: &topics })?;
        let mut list = Vec::with_capacity(offsets.len());
        for o in offsets {
            let tp = TopicPartition::new(o.topic.clone(), o.partition);
            if !self.view.assignment.contains(&tp) && !self.view.revoked.contains(&tp) {
                return Err(Error::NotOwner { topic: o.topic.clone(), partition: o.partition });
            }
            list.push((o.topic.clone(), o.partition, o.offset));
        }
        k.member.commit(&list).await?;
        for o in offsets {
            k.committed.insert(TopicPartition::new(o.topic.clone(), o.partition), o.offset);
        }
        Ok(())
    }

    /// Leaves the group; the member's partitions move at once.
    pub async fn leave(&self) -> Result<()> {
        if let Some(k) = &self.kafka {
            return k.member.leave().await;
        }
        self.service.groups()?.leave(&self.group, &self.member).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_starts_parse_or_name_the_parameter() {
        assert_eq!("earliest".parse::<StreamStart>().unwrap(), StreamStart::Earliest);
        assert_eq!("latest".parse::<StreamStart>().unwrap(), StreamStart::Latest);
        assert_eq!("42".parse::<StreamStart>().unwrap(), StreamStart::Offset(42));
        assert_eq!("ts:1500".parse::<StreamStart>().unwrap(), StreamStart::Timestamp(1500));
        for bad in ["soon", "ts:x", "-1", ""] {
            let e = bad.parse::<StreamStart>().unwrap_err();
            assert!(matches!(&e, Error::InvalidParameter { field: Some(f), .. } if f == "from"), "{bad}: {e}");
        }
    }
}
