//! Consumer groups at the edge: the coordinator state machines (`coordinator`),
//! their committed offsets, the session-expiry timer, and polls that read the
//! log for a member. Knows nothing of HTTP.
//!
//! Each group sits behind its own async mutex. A commit holds it across the
//! durable write, so fencing decided under the lock still holds when the offsets
//! land; polls hold it only to decide and to record deliveries, never across reads.

pub mod assignor;
pub mod classic;
pub mod coordinator;
pub mod cursor;
pub mod kafka;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use assignor::{Assignor, TopicPartition};
use coordinator::{Group, JoinRequest};
pub use coordinator::{GroupState, OffsetReset, View};
use cursor::{Cursor, CursorKey, Position};

use crate::error::{Code, Error, Result};
use crate::log::{Log, ReadRequest, ReadResult};
use crate::topic::check_name;

/// Session timeout bounds and default (Kafka's `group.min/max.session.timeout.ms`
/// and the consumer's `session.timeout.ms`).
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    pub min_session_timeout_ms: u64,
    pub max_session_timeout_ms: u64,
    pub default_session_timeout_ms: u64,
    /// How long a group without members keeps its committed offsets before it
    /// is removed (Kafka's `offsets.retention.minutes`; default 7 days).
    pub offsets_retention_ms: u64,
    /// How long a Kafka group's first rebalance waits for more members (Kafka's
    /// `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay_ms: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 1_800_000,
            default_session_timeout_ms: 45_000,
            offsets_retention_ms: 7 * 24 * 3_600_000,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

/// The most record bytes one partition read of a poll takes.
const POLL_MAX_BYTES: usize = 1024 * 1024;

/// How often a group with members records that it is in use, at most: after a
/// crash, its retention counts from no earlier than this before the crash.
const IN_USE_REFRESH_MS: u64 = 3_600_000;

/// What a member asks for when it joins.
#[derive(Debug, Clone, Default)]
pub struct JoinParams {
    pub topics: Vec<String>,
    pub auto_offset_reset: Option<OffsetReset>,
    pub session_timeout_ms: Option<u64>,
    pub assignor: Option<Assignor>,
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Joined {
    pub member_id: String,
    pub view: View,
    pub session_timeout_ms: u64,
    /// A cursor for the first poll: with it, even that poll's answer can be lost.
    pub cursor: String,
}

/// A poll's answer: what the member owns, and the records read for it.
#[derive(Debug)]
pub struct Polled {
    pub view: View,
    /// Records per partition; each `ReadResult` yields exactly the delivered records.
    pub records: Vec<(TopicPartition, ReadResult)>,
    /// Partitions that could not be read, with a stable code.
    pub errors: Vec<(TopicPartition, Code)>,
    /// The member's positions after this answer (see [`cursor`]).
    pub cursor: String,
}

/// Where an offset reset moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Timestamp(u64),
    Offset(u64),
}

#[derive(Debug, Clone)]
pub struct CommittedInfo {
    pub tp: TopicPartition,
    pub committed: Option<u64>,
    pub end_offset: u64,
    pub owner: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub topics: BTreeSet<String>,
    pub assignment: BTreeSet<TopicPartition>,
    pub revoking: BTreeSet<TopicPartition>,
    pub session_timeout_ms: u64,
    pub last_seen_ms_ago: u64,
    pub generation: u64,
}

#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub group: String,
    pub state: GroupState,
    pub generation: u64,
    /// `gregor` (REST and WebSocket members) or `kafka` (Kafka clients' classic protocol).
    pub protocol: &'static str,
    /// The assignor: gregor's, or the one a Kafka group's members chose.
    pub assignor: String,
    pub members: Vec<MemberInfo>,
    pub offsets: Vec<CommittedInfo>,
}

/// What [`Groups::read_for`] read: the records delivered, per-partition errors,
/// the member's session timeout, and its positions after this read (sorted).
struct ReadFor {
    records: Vec<(TopicPartition, ReadResult)>,
    errors: Vec<(TopicPartition, Code)>,
    session: u64,
    positions: Vec<Position>,
    rotation: u32,
}

struct GroupCell {
    state: tokio::sync::Mutex<GroupData>,
    /// Bumped after any change members should hear about quickly.
    changed: watch::Sender<u64>,
}

struct GroupData {
    group: Group,
    /// The group's Kafka (classic protocol) members; empty while gregor members are in it.
    classic: classic::Classic,
    /// Committed offsets, with the id of the topic they were committed for: a
    /// topic deleted and created again under the same name does not inherit them.
    committed: BTreeMap<TopicPartition, (u32, u64)>,
    /// When the group was last known to be in use (wall-clock ms): while it has
    /// members, refreshed; once empty, the moment it became empty.
    in_use_ms: u64,
    /// The last `in_use_ms` written to the store.
    stamped_ms: u64,
    /// Removed (expired or deleted): whoever still holds this cell must look the
    /// group up again.
    removed: bool,
}

impl GroupData {
    /// The offset committed for `tp`, if it was committed for the topic that has `topic_id`
    /// now (not for a deleted topic of the same name).
    fn committed_offset(&self, tp: &TopicPartition, topic_id: u32) -> Option<u64> {
        self.committed.get(tp).filter(|(tid, _)| *tid == topic_id).map(|(_, o)| *o)
    }
}

impl GroupCell {
    fn new(id: &str, now_ms: u64, initial_rebalance_delay_ms: u64) -> Self {
        GroupCell {
            state: tokio::sync::Mutex::new(GroupData {
                group: Group::new(id),
                classic: classic::Classic::new(initial_rebalance_delay_ms),
                committed: BTreeMap::new(),
                in_use_ms: now_ms,
                stamped_ms: 0,
                removed: false,
            }),
            changed: watch::Sender::new(0),
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// All consumer groups.
pub struct Groups {
    log: Arc<Log>,
    groups: parking_lot::Mutex<BTreeMap<String, Arc<GroupCell>>>,
    clock: tokio::time::Instant,
    /// Wall-clock ms at `clock`'s start: wall time advances with tokio's clock, so
    /// tests can pause it.
    wall_base_ms: u64,
    settings: GroupSettings,
    cursor_key: CursorKey,
    /// Polls waiting for records or a change (`gregor_polls_waiting`).
    polls_waiting: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Groups {
    /// Loads committed offsets from the store.
    pub async fn open(log: Arc<Log>, settings: GroupSettings) -> Result<Arc<Groups>> {
        let wall_base_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Groups::open_at(log, settings, wall_base_ms).await
    }

    /// As [`Groups::open`], with the wall clock starting at `wall_base_ms`.
    async fn open_at(log: Arc<Log>, settings: GroupSettings, wall_base_ms: u64) -> Result<Arc<Groups>> {
        let groups = Groups {
            log: log.clone(),
            groups: parking_lot::Mutex::new(BTreeMap::new()),
            clock: tokio::time::Instant::now(),
            wall_base_ms,
            settings,
            cursor_key: CursorKey::new(&log.cursor_secret().await?),
            polls_waiting: std::sync::atomic::AtomicUsize::new(0),
        };
        let topics: BTreeMap<u32, String> = log.topics().iter().map(|t| (t.id, t.name.to_string())).collect();
        for (group, tid, p, offset) in log.load_offsets().await? {
            let Some(topic) = topics.get(&tid) else { continue };
            let cell = groups.cell(&group);
            cell.state.lock().await.committed.insert(TopicPartition::new(topic.clone(), p), (tid, offset));
        }
        // Loaded groups have no members: each is empty since it was last known in
        // use (a store from before these times were kept: since now).
        for (group, at_ms) in log.load_group_times().await? {
            let cell = groups.groups.lock().get(&group).cloned();
            if let Some(cell) = cell {
                let mut data = cell.state.lock().await;
                data.in_use_ms = at_ms;
                data.stamped_ms = at_ms;
            }
        }
        Ok(Arc::new(groups))
    }

    /// Polls waiting now.
    pub fn polls_waiting(&self) -> usize {
        self.polls_waiting.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Milliseconds on a monotonic clock (tokio's, so tests can pause it).
    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Wall-clock milliseconds, advancing with [`Groups::now`].
    fn wall_ms(&self) -> u64 {
        self.wall_base_ms + self.now()
    }

    fn cell(&self, id: &str) -> Arc<GroupCell> {
        let (now, delay) = (self.wall_ms(), self.settings.initial_rebalance_delay_ms);
        self.groups.lock().entry(id.to_owned()).or_insert_with(|| Arc::new(GroupCell::new(id, now, delay))).clone()
    }

    fn existing(&self, id: &str) -> Result<Arc<GroupCell>> {
        self.groups.lock().get(id).cloned().ok_or_else(|| Error::UnknownGroup(id.to_owned()))
    }

    /// Partition counts of the given topics that exist.
    fn partition_counts<'a>(&self, topics: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, u32> {
        topics
            .into_iter()
            .filter_map(|t| self.log.topic(t).ok().map(|topic| (t.clone(), topic.partitions().len() as u32)))
            .collect()
    }

    fn counts_for(&self, group: &Group, extra: &[String]) -> BTreeMap<String, u32> {
        let mut topics = group.subscribed_topics();
        topics.extend(extra.iter().cloned());
        self.partition_counts(&topics)
    }

    /// Adds a member to a group (creating the group if needed).
    pub async fn join(&self, group: &str, params: JoinParams) -> Result<Joined> {
        check_name("group id", group).map_err(Error::InvalidGroupId)?;
        if params.topics.is_empty() {
            return Err(Error::InvalidArgument { field: "topics", reason: "subscribe to at least one topic".into() });
        }
        for t in &params.topics {
            check_name("topic name", t).map_err(|reason| Error::InvalidArgument { field: "topics", reason })?;
        }
        let s = self.settings;
        let session = params.session_timeout_ms.unwrap_or(s.default_session_timeout_ms);
        if !(s.min_session_timeout_ms..=s.max_session_timeout_ms).contains(&session) {
            return Err(Error::InvalidArgument {
                field: "session_timeout_ms",
                reason: format!(
                    "must be between {} and {} ms, not {session}",
                    s.min_session_timeout_ms, s.max_session_timeout_ms
                ),
            });
        }
        if let Some(iid) = &params.instance_id {
            check_name("instance id", iid).map_err(|reason| Error::InvalidArgument { field: "instance_id", reason })?;
        }
        let member_id = format!("{}-{}", params.instance_id.as_deref().unwrap_or("member"), random_suffix());
        loop {
            let cell = self.cell(group);
            let mut data = cell.state.lock().await;
            if data.removed {
                // Expired between the look-up and the lock: the next look-up makes a new one.
                continue;
            }
            if !data.classic.is_empty() {
                return Err(Error::GroupProtocolConflict(group.to_owned()));
            }
            let counts = self.counts_for(&data.group, &params.topics);
            let view = data.group.join(
                JoinRequest {
                    member_id: member_id.clone(),
                    instance_id: params.instance_id.clone(),
                    topics: params.topics.iter().cloned().collect(),
                    session_timeout_ms: session,
                    auto_offset_reset: params.auto_offset_reset.unwrap_or_default(),
                    assignor: params.assignor,
                },
                self.now(),
                &counts,
            )?;
            data.in_use_ms = self.wall_ms();
            drop(data);
            cell.notify();
            let first = Cursor { generation: view.generation, rotation: 0, positions: Vec::new(), extra: Vec::new() };
            let cursor = self.cursor_key.seal(group, &member_id, &first);
            return Ok(Joined { member_id, view, session_timeout_ms: session, cursor });
        }
    }

    /// A heartbeat: keeps the session, releases what the previous answer revoked.
    pub async fn heartbeat(&self, group: &str, member: &str) -> Result<View> {
        let cell = self.existing(group)?;
        let mut data = cell.state.lock().await;
        let counts = self.counts_for(&data.group, &[]);
        let before = data.group.version();
        let view = data.group.heartbeat(member, self.now(), &counts)?;
        let moved = data.group.version() != before;
        drop(data);
        // Wake members waiting in a poll: a release may have handed them partitions.
        if moved {
            cell.notify();
        }
        Ok(view)
    }

    /// The member leaves; its partitions move at once.
    pub async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let cell = self.existing(group)?;
        let mut data = cell.state.lock().await;
        let counts = self.counts_for(&data.group, &[]);
        data.group.leave(member, &counts)?;
        if data.group.is_empty() {
            self.became_empty(group, &mut data).await;
        }
        drop(data);
        cell.notify();
        Ok(())
    }

    /// The group's last member is gone: its offsets' retention starts now, and the
    /// store hears of it (so a restart does not extend it).
    async fn became_empty(&self, group: &str, data: &mut GroupData) {
        let now = self.wall_ms();
        data.in_use_ms = now;
        self.stamp(group, data, now).await;
    }

    /// Writes `at_ms` as the time the group was last in use. A failure is logged:
    /// the time only decides when an empty group's offsets expire, and the
    /// previous time stays stored.
    async fn stamp(&self, group: &str, data: &mut GroupData, at_ms: u64) {
        match self.log.commit_offsets(group, Vec::new(), at_ms).await {
            Ok(()) => data.stamped_ms = at_ms,
            Err(e) => tracing::warn!(group, error = %e, "could not record when the group was last in use"),
        }
    }

    /// Polls records for a member: a heartbeat, then up to `max_records` records
    /// from the partitions it may consume, long-polling up to `wait` when there are none.
    ///
    /// With a `cursor` (from an earlier answer or the join), the member's
    /// positions are the cursor's, for the partitions it has owned since; other
    /// partitions start at the committed offset (or where the member first
    /// started them). So a poll repeated with the same cursor answers the same
    /// records: a lost answer loses nothing. Without one, the server-held
    /// positions are used, and moved past what this answer delivers.
    pub async fn poll(
        &self,
        group: &str,
        member: &str,
        max_records: u32,
        max_bytes: usize,
        wait: Duration,
        cursor: Option<&str>,
    ) -> Result<Polled> {
        let cursor = cursor.map(|token| self.cursor_key.open(group, member, token)).transpose()?;
        let cell = self.existing(group)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut changed = cell.changed.subscribe();
        let shutdown = self.log.shutdown_token();
        loop {
            // Mark changes seen before looking, so that none between the look and the wait is lost.
            changed.borrow_and_update();
            let view = self.heartbeat(group, member).await?;
            // Subscribe to appends before reading, so that none after the read is missed.
            let mut ends: Vec<_> = view
                .assignment
                .iter()
                .filter_map(|tp| self.log.topic(&tp.topic).ok()?.partition(tp.partition).ok())
                .map(|p| p.subscribe())
                .collect();
            // Read only what this answer will list as the assignment: a partition handed
            // over since the heartbeat is announced (and read) in the next answer.
            let read =
                self.read_for(&cell, member, max_records, max_bytes, Some(&view.assignment), cursor.as_ref()).await?;
            let now = tokio::time::Instant::now();
            if !read.records.is_empty()
                || !view.revoked.is_empty()
                || view.changed
                || now >= deadline
                || shutdown.is_cancelled()
            {
                let next = Cursor {
                    generation: view.generation,
                    rotation: read.rotation,
                    positions: read.positions,
                    extra: Vec::new(),
                };
                let cursor = self.cursor_key.seal(group, member, &next);
                return Ok(Polled { view, records: read.records, errors: read.errors, cursor });
            }
            // Wait for an append to an owned partition or a change in the group, but
            // wake within a third of the session timeout to heartbeat again.
            let slice = deadline.min(now + Duration::from_millis((read.session / 3).max(10)));
            let appends = futures_util::future::select_all(
                ends.iter_mut().map(|rx| rx.changed().boxed()).chain(std::iter::once(std::future::pending().boxed())),
            );
            // Counted once subscribed to both: a change from now on wakes this poll.
            let _waiting = crate::log::Waiting::count(&self.polls_waiting);
            tokio::select! {
                _ = appends => {}
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(slice) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// Keeps a member's session alive without a heartbeat's release step.
    pub async fn touch(&self, group: &str, member: &str) -> Result<()> {
        let cell = self.existing(group)?;
        let mut data = cell.state.lock().await;
        let now = self.now();
        data.group.touch(member, now)
    }

    /// Reads up to `max_records` from the member's partitions without waiting,
    /// recording the deliveries (a WebSocket member's fetch).
    /// Only partitions in `only` (what the member was last told it owns) are read.
    pub async fn read(
        &self,
        group: &str,
        member: &str,
        max_records: u32,
        max_bytes: usize,
        only: &BTreeSet<TopicPartition>,
    ) -> Result<Polled> {
        let cell = self.existing(group)?;
        let ReadFor { records, errors, .. } =
            self.read_for(&cell, member, max_records, max_bytes, Some(only), None).await?;
        let data = cell.state.lock().await;
        let m = data.group.member(member)?;
        let view = View {
            generation: m.generation,
            assignment: m.active().cloned().collect(),
            revoked: BTreeSet::new(),
            changed: false,
        };
        Ok(Polled { view, records, errors, cursor: String::new() })
    }

    /// Whether every partition the member is giving up has its delivered records
    /// committed (so releasing it loses nothing).
    pub async fn revocation_settled(&self, group: &str, member: &str) -> Result<bool> {
        let cell = self.existing(group)?;
        let data = cell.state.lock().await;
        let m = data.group.member(member)?;
        Ok(m.revoking.iter().all(|tp| match m.positions.get(tp) {
            None => true,
            Some(pos) => data.committed.get(tp).is_some_and(|(_, c)| c >= pos),
        }))
    }

    /// The member's readable partitions and their positions (`None` until known).
    pub async fn positions(&self, group: &str, member: &str) -> Result<Vec<(TopicPartition, Option<u64>)>> {
        let cell = self.existing(group)?;
        let data = cell.state.lock().await;
        Ok(data.group.fetches(member)?.into_iter().map(|f| (f.tp, f.position)).collect())
    }

    /// Whether a heartbeat would tell the member something: a revocation to
    /// announce or release, or an assignment different from what it was told.
    pub async fn has_news(&self, group: &str, member: &str) -> Result<bool> {
        let cell = self.existing(group)?;
        let data = cell.state.lock().await;
        data.group.has_news(member)
    }

    /// A receiver that changes whenever the group changes in a way members should hear about.
    pub fn subscribe(&self, group: &str) -> Result<watch::Receiver<u64>> {
        Ok(self.existing(group)?.changed.subscribe())
    }

    /// Reads from the member's partitions and records the deliveries. Only
    /// partitions in `only` are read. With a `cursor`, reads start where it says
    /// (see [`Groups::poll`]); without, at the server-held positions.
    async fn read_for(
        &self,
        cell: &GroupCell,
        member: &str,
        max_records: u32,
        max_bytes: usize,
        only: Option<&BTreeSet<TopicPartition>>,
        cursor: Option<&Cursor>,
    ) -> Result<ReadFor> {
        // (fetch, topic id, where to read from)
        let (plan, reset, session) = {
            let mut data = cell.state.lock().await;
            let m = data.group.member(member)?;
            let (reset, session) = (m.auto_offset_reset, m.session_timeout_ms);
            let mut fetches = data.group.fetches(member)?;
            if let Some(only) = only {
                fetches.retain(|f| only.contains(&f.tp));
            }
            let mut plan = Vec::with_capacity(fetches.len());
            for f in fetches {
                let Ok(topic) = self.log.topic(&f.tp.topic) else { continue };
                let Ok(part) = topic.partition(f.tp.partition) else { continue };
                let (start, end) = (part.start(), part.end());
                let committed = data
                    .committed
                    .get(&f.tp)
                    .filter(|(tid, o)| *tid == topic.id && (start..=end).contains(o))
                    .map(|(_, o)| *o);
                let known = match cursor {
                    // The cursor speaks for partitions owned since it was issued, and
                    // not reset since; for the others, what was committed is where
                    // to resume (the records after it may have been in lost answers).
                    Some(c) => c
                        .position(&f.tp)
                        .filter(|p| p.topic_id == topic.id && p.epoch == f.epoch && f.acquired <= c.generation)
                        .map(|p| p.offset)
                        .or(committed)
                        .or(f.start),
                    None => f.position.or(committed),
                };
                // Otherwise the reset policy says, once: the member keeps that start.
                let from = known.or(match reset {
                    OffsetReset::Earliest => Some(start),
                    OffsetReset::Latest => Some(end),
                    OffsetReset::None => None,
                });
                if let Some(pos) = from
                    && (f.position.is_none() || f.start.is_none())
                {
                    data.group.init_position(member, &f.tp, f.epoch, pos);
                }
                plan.push((f, topic.id, from));
            }
            (plan, reset, session)
        };

        let mut records = Vec::new();
        let mut errors = Vec::new();
        let mut budget = max_records;
        let mut bytes_left = max_bytes;
        // Start at a different partition each poll so that none starves; a cursor
        // fixes the order, so that a repeated poll reads the same records.
        let rotation = cursor.map_or(self.now() as usize, |c| c.rotation as usize);
        let mut starts: BTreeMap<TopicPartition, u64> = BTreeMap::new();
        let skip = rotation % plan.len().max(1);
        for (f, _, from) in plan.iter().cycle().skip(skip).take(plan.len()) {
            let Some(mut from) = *from else {
                errors.push((f.tp.clone(), Code::NoCommittedOffset));
                continue;
            };
            starts.insert(f.tp.clone(), from);
            if budget == 0 || bytes_left == 0 {
                continue;
            }
            let per_read = bytes_left.min(POLL_MAX_BYTES);
            let req = |offset| ReadRequest { offset, max_records: budget, max_bytes: per_read, wait: Duration::ZERO };
            let mut read = self.log.read(&f.tp.topic, f.tp.partition, req(from)).await;
            if let Err(Error::OffsetOutOfRange { beginning, end, .. }) = read {
                let to = match reset {
                    OffsetReset::Earliest => beginning,
                    OffsetReset::Latest => end,
                    OffsetReset::None => {
                        errors.push((f.tp.clone(), Code::OffsetOutOfRange));
                        starts.remove(&f.tp);
                        continue;
                    }
                };
                if cursor.is_none() {
                    cell.state.lock().await.group.advance(member, &f.tp, f.epoch, from, to);
                }
                from = to;
                starts.insert(f.tp.clone(), from);
                read = self.log.read(&f.tp.topic, f.tp.partition, req(from)).await;
            }
            match read {
                Ok(read) => {
                    let got = read.records()?;
                    let n = got.len() as u32;
                    let size: usize = got.iter().map(|(_, r)| crate::log::stored_size(r)).sum();
                    drop(got);
                    bytes_left = bytes_left.saturating_sub(size);
                    if n > 0 {
                        budget -= n;
                        records.push((f.tp.clone(), read, f.epoch, from, n));
                    }
                }
                // Moved again under the read (retention): the next poll resolves it.
                Err(Error::OffsetOutOfRange { .. }) => {}
                Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) => {
                    starts.remove(&f.tp);
                }
                Err(e) => return Err(e),
            }
        }
        // Deliver only what is still this member's to deliver from that position.
        let mut data = cell.state.lock().await;
        let mut delivered = Vec::with_capacity(records.len());
        for (tp, read, epoch, from, n) in records {
            let to = from + n as u64;
            let ok = match cursor {
                Some(_) => data.group.settle(member, &tp, epoch, to),
                None => data.group.advance(member, &tp, epoch, from, to),
            };
            if ok {
                starts.insert(tp.clone(), to);
                delivered.push((tp, read));
            }
        }
        drop(data);
        let positions = plan
            .iter()
            .filter_map(|(f, topic_id, _)| {
                let offset = *starts.get(&f.tp)?;
                Some(Position { tp: f.tp.clone(), topic_id: *topic_id, epoch: f.epoch, offset })
            })
            .collect();
        Ok(ReadFor {
            records: delivered,
            errors,
            session,
            positions,
            rotation: (rotation.wrapping_add(1) % (u32::MAX as usize)) as u32,
        })
    }

    /// Commits offsets for a member, fenced by membership, generation and ownership.
    pub async fn commit(
        &self,
        group: &str,
        member: &str,
        generation: u64,
        offsets: &[(String, u32, u64)],
    ) -> Result<()> {
        let cell = self.existing(group)?;
        let tps: Vec<TopicPartition> = offsets.iter().map(|(t, p, _)| TopicPartition::new(t.clone(), *p)).collect();
        let mut data = cell.state.lock().await;
        data.group.check_commit(member, generation, tps.iter())?;
        let mut entries = Vec::with_capacity(offsets.len());
        for (topic, p, offset) in offsets {
            let t = self.log.topic(topic)?;
            t.partition(*p)?;
            entries.push((t.id, *p, *offset));
        }
        self.store_commits(group, &mut data, tps, entries).await
    }

    /// Stores committed offsets `(topic id, partition, offset)` of `tps` (synced) and keeps
    /// them in `data`. The caller holds the group's lock across the write: a rebalance cannot
    /// move these partitions between its fencing check and the offsets landing.
    async fn store_commits(
        &self,
        group: &str,
        data: &mut GroupData,
        tps: Vec<TopicPartition>,
        entries: Vec<(u32, u32, u64)>,
    ) -> Result<()> {
        let now = self.wall_ms();
        self.log.commit_offsets(group, entries.clone(), now).await?;
        for (tp, (tid, _, offset)) in tps.into_iter().zip(entries) {
            data.committed.insert(tp, (tid, offset));
        }
        data.in_use_ms = now;
        data.stamped_ms = now;
        Ok(())
    }

    /// Moves a group's committed offsets (and, for an active group, its owners'
    /// positions) for `topic` (all the group's topics if `None`) and `partitions`
    /// (all if `None`). Returns the new offsets.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: Option<&str>,
        partitions: Option<&[u32]>,
        to: ResetTo,
    ) -> Result<Vec<(TopicPartition, u64)>> {
        // Naming a topic sets offsets for a group that does not exist yet too, as Kafka's
        // tools do (the group is created empty, with them); without one there is nothing
        // to reset.
        let cell = match topic {
            Some(t) if self.existing(group).is_err() => {
                check_name("group id", group).map_err(Error::InvalidGroupId)?;
                self.log.topic(t)?;
                self.cell(group)
            }
            _ => self.existing(group)?,
        };
        let mut data = cell.state.lock().await;
        if data.removed {
            return Err(Error::UnknownGroup(group.to_owned()));
        }
        if !data.classic.is_empty() {
            // Kafka members hold their positions themselves: they would not see the move.
            return Err(Error::GroupNotEmpty(group.to_owned()));
        }
        let topics: BTreeSet<String> = match topic {
            Some(t) => BTreeSet::from([t.to_owned()]),
            None => {
                let mut all = data.group.subscribed_topics();
                all.extend(data.committed.keys().map(|tp| tp.topic.clone()));
                all
            }
        };
        let mut targets = BTreeMap::new();
        let mut entries = Vec::new();
        for name in &topics {
            let t = match self.log.topic(name) {
                Ok(t) => t,
                Err(e) if topic.is_some() => return Err(e),
                Err(_) => continue,
            };
            let parts = t.partitions();
            let chosen: Vec<u32> = match partitions {
                Some(ps) => ps.to_vec(),
                None => (0..parts.len() as u32).collect(),
            };
            for p in chosen {
                let part = t.partition(p)?;
                let (start, end) = (part.start(), part.end());
                let offset = match to {
                    ResetTo::Earliest => start,
                    ResetTo::Latest => end,
                    ResetTo::Timestamp(ts) => self.log.offset_for_timestamp(name, p, ts).await?.offset,
                    ResetTo::Offset(o) if (start..=end).contains(&o) => o,
                    ResetTo::Offset(o) => return Err(Error::OffsetOutOfRange { offset: o, beginning: start, end }),
                };
                targets.insert(TopicPartition::new(name.clone(), p), offset);
                entries.push((t.id, p, offset));
            }
        }
        let now = self.wall_ms();
        self.log.commit_offsets(group, entries.clone(), now).await?;
        for ((tp, offset), (tid, ..)) in targets.iter().zip(&entries) {
            data.committed.insert(tp.clone(), (*tid, *offset));
        }
        data.in_use_ms = now;
        data.stamped_ms = now;
        data.group.reset_positions(&targets);
        drop(data);
        cell.notify();
        Ok(targets.into_iter().collect())
    }

    pub fn list(&self) -> Vec<String> {
        self.groups.lock().keys().cloned().collect()
    }

    pub async fn describe(&self, group: &str) -> Result<GroupInfo> {
        let cell = self.existing(group)?;
        let data = cell.state.lock().await;
        if data.removed {
            return Err(Error::UnknownGroup(group.to_owned()));
        }
        if !data.classic.is_empty() {
            return Ok(self.describe_kafka(&data));
        }
        let g = &data.group;
        let now = self.now();
        let members = g
            .members()
            .map(|m| MemberInfo {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                topics: m.topics.clone(),
                assignment: m.active().cloned().collect(),
                revoking: m.revoking.clone(),
                session_timeout_ms: m.session_timeout_ms,
                last_seen_ms_ago: now.saturating_sub(m.last_seen_ms),
                generation: m.generation,
            })
            .collect();
        let offsets = self.offsets_of(&data, g.subscribed_topics(), |tp| g.owner(tp).map(str::to_owned));
        Ok(GroupInfo {
            group: g.id.clone(),
            state: g.state(),
            generation: g.generation,
            protocol: "gregor",
            assignor: g.assignor.name().to_owned(),
            members,
            offsets,
        })
    }

    /// Committed offsets and lag of every partition of `topics` and of the topics the group
    /// committed for, with each one's owner.
    fn offsets_of(
        &self,
        data: &GroupData,
        mut topics: BTreeSet<String>,
        owner: impl Fn(&TopicPartition) -> Option<String>,
    ) -> Vec<CommittedInfo> {
        topics.extend(data.committed.keys().map(|tp| tp.topic.clone()));
        let mut offsets = Vec::new();
        for name in &topics {
            let Ok(t) = self.log.topic(name) else { continue };
            for part in t.partitions().iter() {
                let tp = TopicPartition::new(name.clone(), part.index);
                let committed = data.committed_offset(&tp, t.id);
                let owner = owner(&tp);
                offsets.push(CommittedInfo { tp, committed, end_offset: part.end(), owner });
            }
        }
        offsets
    }

    /// Deletes an empty group and its committed offsets.
    pub async fn delete(&self, group: &str) -> Result<()> {
        let cell = self.existing(group)?;
        let mut data = cell.state.lock().await;
        if data.removed {
            return Err(Error::UnknownGroup(group.to_owned()));
        }
        if data.has_members() {
            return Err(Error::GroupNotEmpty(group.to_owned()));
        }
        self.remove(group, &cell, &mut data).await
    }

    /// Removes an empty group and its committed offsets, from the store first.
    async fn remove(&self, group: &str, cell: &Arc<GroupCell>, data: &mut GroupData) -> Result<()> {
        self.log.delete_group_offsets(group).await?;
        data.removed = true;
        let mut groups = self.groups.lock();
        if groups.get(group).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            groups.remove(group);
        }
        Ok(())
    }

    /// A topic was deleted (with every group's committed offsets for it, in the
    /// store): forgets those offsets here too.
    pub async fn topic_deleted(&self, topic_id: u32) {
        let cells: Vec<Arc<GroupCell>> = self.groups.lock().values().cloned().collect();
        for cell in cells {
            cell.state.lock().await.committed.retain(|_, (tid, _)| *tid != topic_id);
        }
    }

    /// Removes groups that have been empty for `offsets_retention_ms`, with their
    /// offsets (and at once those that hold no offsets), and records that groups with members are in use (at most every
    /// [`IN_USE_REFRESH_MS`]). Returns how many groups were removed.
    pub async fn expire_groups(&self) -> usize {
        let cells: Vec<(String, Arc<GroupCell>)> =
            self.groups.lock().iter().map(|(id, c)| (id.clone(), c.clone())).collect();
        let now = self.wall_ms();
        let refresh = IN_USE_REFRESH_MS.min(self.settings.offsets_retention_ms / 4).max(1);
        let mut removed = 0;
        for (id, cell) in cells {
            let mut data = cell.state.lock().await;
            if data.removed {
                continue;
            }
            if data.has_members() {
                data.in_use_ms = now;
                if now.saturating_sub(data.stamped_ms) >= refresh {
                    self.stamp(&id, &mut data, now).await;
                }
                continue;
            }
            // No members and no offsets: nothing to keep (Kafka's Dead state).
            let holds_offsets = !data.committed.is_empty();
            if holds_offsets && now.saturating_sub(data.in_use_ms) < self.settings.offsets_retention_ms {
                continue;
            }
            match self.remove(&id, &cell, &mut data).await {
                Ok(()) => {
                    tracing::info!(group = %id, "group expired: empty for offsets_retention_ms");
                    removed += 1;
                }
                Err(e) => tracing::warn!(group = %id, error = %e, "could not remove an expired group"),
            }
        }
        removed
    }

    /// Expires members whose session ran out, in every group. Returns how many.
    pub async fn expire_sessions(&self) -> usize {
        let cells: Vec<Arc<GroupCell>> = self.groups.lock().values().cloned().collect();
        let mut expired = 0;
        for cell in cells {
            let mut data = cell.state.lock().await;
            let counts = self.counts_for(&data.group, &[]);
            let mut gone = data.group.expire(self.now(), &counts);
            let before = (data.classic.generation, data.classic.state);
            gone.extend(data.classic.expire(self.now()));
            let moved = before != (data.classic.generation, data.classic.state);
            if !gone.is_empty() && !data.has_members() {
                let id = data.group.id.clone();
                self.became_empty(&id, &mut data).await;
            }
            drop(data);
            if moved && gone.is_empty() {
                // A Kafka rebalance whose time was up completed: its waiters must hear.
                cell.notify();
            }
            if !gone.is_empty() {
                tracing::info!(members = ?gone, "session expired");
                expired += gone.len();
                cell.notify();
            }
        }
        expired
    }

    /// The session timer: runs until `stop` is cancelled.
    pub async fn run_expiry(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Empty groups expire on a scale of days: a sweep a second is plenty.
        let sweep_every = every.max(Duration::from_secs(1));
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    self.expire_sessions().await;
                    if last_sweep.is_none_or(|at| at.elapsed() >= sweep_every) {
                        last_sweep = Some(tokio::time::Instant::now());
                        self.expire_groups().await;
                    }
                }
            }
        }
    }
}

/// A random hex suffix for member ids, from the std hasher's per-process random keys.
fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogSettings;
    use crate::store::Store;

    /// A log on a fresh store, and the directory that holds it.
    fn test_log() -> (tempfile::TempDir, Arc<Log>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let settings = LogSettings {
            auto_create_topics: false,
            default_partitions: 1,
            write_queue_bytes: 1 << 20,
            write_queue_len: 16,
        };
        (dir, Log::open(store, settings).unwrap())
    }

    /// The session timer at the edge, on tokio's paused clock: no sleeps.
    #[tokio::test(start_paused = true)]
    async fn the_session_timer_expires_silent_members() {
        let (_dir, log) = test_log();
        log.create_topic("t", 2, &Default::default()).await.unwrap();
        let groups = Groups::open(
            log.clone(),
            GroupSettings {
                min_session_timeout_ms: 100,
                max_session_timeout_ms: 10_000,
                default_session_timeout_ms: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let join = || JoinParams { topics: vec!["t".into()], session_timeout_ms: Some(1000), ..Default::default() };
        let a = groups.join("g", join()).await.unwrap();
        let b = groups.join("g", join()).await.unwrap();

        let stop = CancellationToken::new();
        let timer = tokio::spawn(groups.clone().run_expiry(Duration::from_millis(100), stop.clone()));
        // a heartbeats every 400 ms; b never does.
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            groups.heartbeat("g", &a.member_id).await.unwrap();
        }
        assert_eq!(groups.describe("g").await.unwrap().members.len(), 2, "800 ms < the 1000 ms session");
        tokio::time::sleep(Duration::from_millis(400)).await;
        groups.heartbeat("g", &a.member_id).await.unwrap();
        let info = groups.describe("g").await.unwrap();
        assert_eq!(info.members.len(), 1, "b expired after 1000 ms of silence");
        assert_eq!(info.members[0].member_id, a.member_id);
        assert!(matches!(groups.heartbeat("g", &b.member_id).await, Err(Error::UnknownMember { .. })));
        let view = groups.heartbeat("g", &a.member_id).await.unwrap();
        assert_eq!(view.assignment.len(), 2, "b's partitions moved to a");
        stop.cancel();
        timer.await.unwrap();
    }

    /// Kafka members on the same session timer, on tokio's paused clock: a JoinGroup waits
    /// for the rebalance, a silent member expires, and the survivor is told to rejoin.
    #[tokio::test(start_paused = true)]
    async fn kafka_members_wait_for_the_rebalance_and_expire_on_the_session_timer() {
        let (_dir, log) = test_log();
        let settings = GroupSettings {
            min_session_timeout_ms: 100,
            max_session_timeout_ms: 10_000,
            initial_rebalance_delay_ms: 500,
            ..Default::default()
        };
        let groups = Groups::open(log.clone(), settings).await.unwrap();
        let req = |member: &str| classic::JoinRequest {
            member_id: member.to_owned(),
            instance_id: None,
            client_id: "c".into(),
            client_host: String::new(),
            session_timeout_ms: 1_000,
            rebalance_timeout_ms: 2_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), bytes::Bytes::new())],
            require_known_member_id: false,
        };
        let started = tokio::time::Instant::now();
        let (a, b) = tokio::join!(groups.kafka_join("k", req("")), groups.kafka_join("k", req("")));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(started.elapsed(), Duration::from_millis(500), "both waited out the initial delay together");
        assert_eq!((a.generation, b.generation), (1, 1));
        let (leader, follower) = if a.leader == a.member_id { (a, b) } else { (b, a) };
        let assignments = vec![(leader.member_id.clone(), bytes::Bytes::from("L"))];
        let (l, f) = tokio::join!(
            groups.kafka_sync("k", &leader.member_id, 1, assignments),
            groups.kafka_sync("k", &follower.member_id, 1, vec![])
        );
        assert_eq!((l.unwrap(), f.unwrap()), (bytes::Bytes::from("L"), bytes::Bytes::new()));
        assert!(matches!(
            groups.kafka_sync("k", "stranger", 1, vec![]).await,
            Err(classic::ClassicError::UnknownMemberId)
        ));

        let stop = CancellationToken::new();
        let timer = tokio::spawn(groups.clone().run_expiry(Duration::from_millis(100), stop.clone()));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            if let Err(e) = groups.kafka_heartbeat("k", &leader.member_id, 1).await {
                assert!(matches!(e, classic::ClassicError::RebalanceInProgress), "{e}");
                break;
            }
        }
        assert!(matches!(
            groups.kafka_heartbeat("k", &follower.member_id, 1).await,
            Err(classic::ClassicError::UnknownMemberId)
        ));
        let again = groups.kafka_join("k", req(&leader.member_id)).await.unwrap();
        assert_eq!((again.generation, again.members.len()), (2, 1), "the survivor alone in generation 2");
        stop.cancel();
        timer.await.unwrap();
    }

    /// Empty groups expire `offsets_retention_ms` after they became empty, with
    /// their offsets; groups with members never do; a restart keeps the clock.
    #[tokio::test(start_paused = true)]
    async fn empty_groups_expire_after_offsets_retention() {
        let (_dir, log) = test_log();
        log.create_topic("t", 1, &Default::default()).await.unwrap();
        let group_settings = GroupSettings {
            min_session_timeout_ms: 100,
            max_session_timeout_ms: 1_000_000,
            default_session_timeout_ms: 1_000_000,
            offsets_retention_ms: 60_000,
            initial_rebalance_delay_ms: 0,
        };
        let wall = 1_000_000_000;
        let groups = Groups::open_at(log.clone(), group_settings, wall).await.unwrap();
        let join = || JoinParams { topics: vec!["t".into()], ..Default::default() };
        let mut members = BTreeMap::new();
        for g in ["leaves", "stays", "after-restart"] {
            let m = groups.join(g, join()).await.unwrap();
            groups.commit(g, &m.member_id, m.view.generation, &[("t".into(), 0, 0)]).await.unwrap();
            members.insert(g, m.member_id);
        }
        groups.leave("leaves", &members["leaves"]).await.unwrap();

        // t = 50 s: the sweep records that the groups with members are in use.
        tokio::time::sleep(Duration::from_millis(50_000)).await;
        assert_eq!(groups.expire_groups().await, 0);
        groups.leave("after-restart", &members["after-restart"]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(9_000)).await;
        assert_eq!(groups.expire_groups().await, 0, "59 s < the 60 s retention");
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        assert_eq!(groups.expire_groups().await, 1);
        assert_eq!(groups.list(), vec!["after-restart".to_string(), "stays".to_string()]);
        let stored: BTreeSet<String> = log.load_offsets().await.unwrap().into_iter().map(|o| o.0).collect();
        assert_eq!(stored, BTreeSet::from(["after-restart".to_string(), "stays".to_string()]), "offsets removed");
        assert!(log.load_group_times().await.unwrap().iter().all(|(g, _)| g != "leaves"));
        assert!(matches!(groups.describe("leaves").await, Err(Error::UnknownGroup(_))));
        // t = 75 s: "stays" is recorded in use again (every quarter retention at most).
        tokio::time::sleep(Duration::from_millis(14_000)).await;
        assert_eq!(groups.expire_groups().await, 0);

        // A restart at t = 80 s. "after-restart" became empty at 50 s and expires
        // at 110 s, not 60 s after the restart. "stays" lost its member in the
        // restart; it was last known in use at 75 s and expires at 135 s.
        tokio::time::sleep(Duration::from_millis(5_000)).await;
        drop(groups);
        let groups = Groups::open_at(log.clone(), group_settings, wall + 80_000).await.unwrap();
        assert_eq!(groups.list().len(), 2);
        tokio::time::sleep(Duration::from_millis(29_000)).await;
        assert_eq!(groups.expire_groups().await, 0);
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        assert_eq!(groups.expire_groups().await, 1);
        assert_eq!(groups.list(), vec!["stays".to_string()]);
        tokio::time::sleep(Duration::from_millis(25_000)).await;
        assert_eq!(groups.expire_groups().await, 1);
        assert!(groups.list().is_empty());
        assert!(log.load_offsets().await.unwrap().is_empty());

        // A group that never committed holds nothing: it goes at the next sweep.
        let m = groups.join("fleeting", join()).await.unwrap();
        assert_eq!(groups.expire_groups().await, 0, "it has a member");
        groups.leave("fleeting", &m.member_id).await.unwrap();
        assert_eq!(groups.expire_groups().await, 1);
        assert!(groups.list().is_empty());

        // A group with members does not expire.
        groups.join("busy", join()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120_000)).await;
        assert_eq!(groups.expire_groups().await, 0, "a group with members does not expire");
        assert_eq!(groups.list(), vec!["busy".to_string()]);
    }

    /// A cursor answers again what it answered, through a rebalance, for the
    /// partitions the member kept; a forged one is refused.
    #[tokio::test]
    async fn a_cursor_repeats_its_answer() {
        let (_dir, log) = test_log();
        log.create_topic("t", 2, &Default::default()).await.unwrap();
        let records: Vec<crate::record::NewRecord> = (0..20u32)
            .map(|i| crate::record::NewRecord {
                key: None,
                value: None,
                headers: Vec::new(),
                timestamp: None,
                partition: Some(i % 2),
            })
            .collect();
        log.produce("t", &records, None, crate::log::Acks::Leader).await.unwrap();
        let groups = Groups::open(log.clone(), GroupSettings::default()).await.unwrap();
        let join = || JoinParams {
            topics: vec!["t".into()],
            auto_offset_reset: Some(OffsetReset::Earliest),
            ..Default::default()
        };
        let a = groups.join("g", join()).await.unwrap();
        let count = |p: &Polled| p.records.iter().map(|(_, r)| r.records().unwrap().len()).sum::<usize>();
        let first = groups.poll("g", &a.member_id, 6, usize::MAX, Duration::ZERO, Some(&a.cursor)).await.unwrap();
        assert_eq!(count(&first), 6);
        let again = groups.poll("g", &a.member_id, 6, usize::MAX, Duration::ZERO, Some(&a.cursor)).await.unwrap();
        assert_eq!(again.cursor, first.cursor);
        let next = groups.poll("g", &a.member_id, 100, usize::MAX, Duration::ZERO, Some(&first.cursor)).await.unwrap();
        assert_eq!(count(&next), 14, "the rest, after the repeated six");
        assert!(matches!(
            groups.poll("g", &a.member_id, 6, usize::MAX, Duration::ZERO, Some("AAAA")).await,
            Err(Error::InvalidCursor(_))
        ));
    }
}
