//! The group coordinator's state machine: members, generations, ownership and the
//! cooperative protocol. Pure and synchronous: every call takes `now` (ms on a
//! monotonic clock) and the partition counts of the topics involved; timers,
//! storage and transports live at the edge (`group::Groups`).
//!
//! Ownership rules (the invariant is that no partition is ever deliverable to two
//! members at once):
//! - A rebalance computes a *target* owner for every partition, but only hands a
//!   partition to its target when it has no current owner.
//! - A member that owns a partition whose target is someone else is told so in its
//!   next poll/heartbeat answer (`revoked`); from that answer on it gets no more
//!   records from it, but it still owns it and may commit its offset.
//! - Its following poll/heartbeat releases the partition (or its leave, or its
//!   session expiring), and only then does the target owner receive it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::assignor::{self, Assignor, MemberSpec, TopicPartition};
use crate::error::Error;

/// Where a member starts reading a partition that has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    Earliest,
    /// Kafka's default.
    #[default]
    Latest,
    /// No committed offset is an error for that partition.
    None,
}

/// What a joining member asks for.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u64,
    pub auto_offset_reset: OffsetReset,
    pub assignor: Option<Assignor>,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u64,
    pub auto_offset_reset: OffsetReset,
    pub last_seen_ms: u64,
    /// The generation this member was last told.
    pub generation: u64,
    /// Partitions this member owns, including those it has been told to give up.
    pub owned: BTreeSet<TopicPartition>,
    /// Owned partitions announced as revoked, released at its next poll/heartbeat.
    pub revoking: BTreeSet<TopicPartition>,
    /// Next offset to deliver, per owned partition, once known (for polls
    /// without a cursor, and WebSocket members).
    pub positions: BTreeMap<TopicPartition, u64>,
    /// The generation in which the member received each owned partition: a
    /// cursor from an earlier generation does not speak for a partition received later.
    pub acquired: BTreeMap<TopicPartition, u64>,
    /// Where the member started each owned partition when there was no committed
    /// offset (resolved once from `auto_offset_reset`, so a repeated poll starts there again).
    pub starts: BTreeMap<TopicPartition, u64>,
    /// The assignment the member was last told.
    pub told: BTreeSet<TopicPartition>,
}

impl Member {
    /// The partitions the member may consume now.
    pub fn active(&self) -> impl Iterator<Item = &TopicPartition> {
        self.owned.iter().filter(|tp| !self.revoking.contains(*tp))
    }
}

/// What a member is told after a join, poll or heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub generation: u64,
    /// Partitions the member may consume now.
    pub assignment: BTreeSet<TopicPartition>,
    /// Partitions the member must give up: commit them now; the next poll or
    /// heartbeat releases them.
    pub revoked: BTreeSet<TopicPartition>,
    /// Whether `assignment` differs from what the member was told last time.
    pub changed: bool,
}

/// A partition the member may read, with where to read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub tp: TopicPartition,
    /// The server-held position (polls without a cursor).
    pub position: Option<u64>,
    pub epoch: u64,
    /// The generation in which the member received the partition.
    pub acquired: u64,
    /// Where the member started when there was no committed offset.
    pub start: Option<u64>,
}

/// The state summary Kafka tools show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum GroupState {
    Empty,
    /// Some partition is waiting to move between members.
    Rebalancing,
    Stable,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub generation: u64,
    pub assignor: Assignor,
    members: BTreeMap<String, Member>,
    target: assignor::Assignment,
    owners: BTreeMap<TopicPartition, String>,
    /// Partition counts of subscribed topics at the last rebalance.
    snapshot: BTreeMap<String, u32>,
    /// Bumped per partition by an offset reset, so in-flight polls can tell.
    epochs: BTreeMap<TopicPartition, u64>,
    /// Bumped whenever ownership changes, so the edge knows to wake waiting members.
    version: u64,
}

impl Group {
    pub fn new(id: impl Into<String>) -> Self {
        Group {
            id: id.into(),
            generation: 0,
            assignor: Assignor::default(),
            members: BTreeMap::new(),
            target: Default::default(),
            owners: BTreeMap::new(),
            snapshot: BTreeMap::new(),
            epochs: BTreeMap::new(),
            version: 0,
        }
    }

    /// Changes whenever any member's ownership changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// A member, or `UnknownMember` (it left, expired, or never joined).
    pub fn member(&self, id: &str) -> Result<&Member, Error> {
        self.members.get(id).ok_or_else(|| self.unknown(id))
    }

    pub fn owner(&self, tp: &TopicPartition) -> Option<&str> {
        self.owners.get(tp).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every topic some member subscribes to.
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members.values().flat_map(|m| m.topics.iter().cloned()).collect()
    }

    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.target.iter().any(|(tp, m)| self.owners.get(tp) != Some(m))
            || self.owners.iter().any(|(tp, m)| self.target.get(tp) != Some(m))
        {
            GroupState::Rebalancing
        } else {
            GroupState::Stable
        }
    }

    fn unknown(&self, member: &str) -> Error {
        Error::UnknownMember { group: self.id.clone(), member: member.to_owned() }
    }

    /// Adds a member (or, with a known `instance_id`, replaces the static member
    /// of that id without a rebalance) and returns what it owns now.
    pub fn join(&mut self, req: JoinRequest, now: u64, topics: &BTreeMap<String, u32>) -> Result<View, Error> {
        if let Some(requested) = req.assignor {
            if self.members.is_empty() {
                self.assignor = requested;
            } else if requested != self.assignor {
                return Err(Error::InconsistentAssignor {
                    group: self.id.clone(),
                    current: self.assignor.name(),
                    requested: requested.name(),
                });
            }
        } else if self.members.is_empty() {
            self.assignor = Assignor::default();
        }
        let previous = req
            .instance_id
            .as_ref()
            .and_then(|iid| self.members.values().find(|m| m.instance_id.as_ref() == Some(iid)).map(|m| m.id.clone()));
        let mut member = Member {
            id: req.member_id.clone(),
            instance_id: req.instance_id,
            topics: req.topics,
            session_timeout_ms: req.session_timeout_ms,
            auto_offset_reset: req.auto_offset_reset,
            last_seen_ms: now,
            generation: self.generation,
            owned: BTreeSet::new(),
            revoking: BTreeSet::new(),
            positions: BTreeMap::new(),
            acquired: BTreeMap::new(),
            starts: BTreeMap::new(),
            told: BTreeSet::new(),
        };
        let mut needs_rebalance = true;
        if let Some(old_id) = previous.and_then(|id| self.members.remove(&id)) {
            // KIP-345: the same static member came back; it takes over what its
            // previous incarnation owned, and the old member id is fenced.
            needs_rebalance = old_id.topics != member.topics;
            member.owned = old_id.owned;
            member.revoking = old_id.revoking;
            member.positions = old_id.positions;
            member.acquired = old_id.acquired;
            member.starts = old_id.starts;
            for owner in self.owners.values_mut().chain(self.target.values_mut()) {
                if *owner == old_id.id {
                    owner.clone_from(&member.id);
                }
            }
        }
        let id = member.id.clone();
        self.members.insert(id.clone(), member);
        if needs_rebalance {
            self.rebalance(topics);
        }
        self.heartbeat(&id, now, topics)
    }

    /// A poll or heartbeat: keeps the session alive, releases partitions announced
    /// as revoked in the previous answer, and announces new revocations.
    pub fn heartbeat(&mut self, member: &str, now: u64, topics: &BTreeMap<String, u32>) -> Result<View, Error> {
        let Some(m) = self.members.get_mut(member) else { return Err(self.unknown(member)) };
        m.last_seen_ms = now;
        let released: Vec<TopicPartition> = std::mem::take(&mut m.revoking).into_iter().collect();
        for tp in &released {
            m.owned.remove(tp);
            m.positions.remove(tp);
            m.acquired.remove(tp);
            m.starts.remove(tp);
        }
        for tp in &released {
            self.owners.remove(tp);
        }
        if !released.is_empty() {
            self.version += 1;
        }
        let subscribed = self.subscribed_topics();
        let current: BTreeMap<String, u32> =
            topics.iter().filter(|(t, _)| subscribed.contains(*t)).map(|(t, n)| (t.clone(), *n)).collect();
        if current != self.snapshot {
            self.rebalance(topics);
        } else if !released.is_empty() {
            self.hand_over();
        }
        let generation = self.generation;
        let target = &self.target;
        let Some(m) = self.members.get_mut(member) else { return Err(self.unknown(member)) };
        let revoked: BTreeSet<TopicPartition> =
            m.owned.iter().filter(|tp| target.get(*tp) != Some(&m.id)).cloned().collect();
        m.revoking.extend(revoked.iter().cloned());
        m.generation = generation;
        let assignment: BTreeSet<TopicPartition> = m.active().cloned().collect();
        let changed = assignment != m.told;
        m.told.clone_from(&assignment);
        Ok(View { generation, assignment, revoked, changed })
    }

    /// Keeps a member's session alive without releasing or announcing anything
    /// (a WebSocket member, between the steps of its revocation handshake).
    pub fn touch(&mut self, member: &str, now: u64) -> Result<(), Error> {
        let Some(m) = self.members.get_mut(member) else { return Err(self.unknown(member)) };
        m.last_seen_ms = now;
        Ok(())
    }

    /// Whether a heartbeat would change what the member owns or was told.
    pub fn has_news(&self, member: &str) -> Result<bool, Error> {
        let m = self.member(member)?;
        let active: BTreeSet<&TopicPartition> = m.active().collect();
        Ok(!m.revoking.is_empty()
            || m.owned.iter().any(|tp| self.target.get(tp) != Some(&m.id))
            || active.len() != m.told.len()
            || m.told.iter().any(|tp| !active.contains(tp))
            || m.generation != self.generation)
    }

    /// The member leaves: its partitions are released at once.
    pub fn leave(&mut self, member: &str, topics: &BTreeMap<String, u32>) -> Result<(), Error> {
        let m = self.members.remove(member).ok_or_else(|| self.unknown(member))?;
        for tp in &m.owned {
            self.owners.remove(tp);
        }
        self.rebalance(topics);
        Ok(())
    }

    /// Removes members whose session expired; returns their ids.
    pub fn expire(&mut self, now: u64, topics: &BTreeMap<String, u32>) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| now.saturating_sub(m.last_seen_ms) > m.session_timeout_ms)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            if let Some(m) = self.members.remove(id) {
                for tp in &m.owned {
                    self.owners.remove(tp);
                }
            }
        }
        if !expired.is_empty() {
            self.rebalance(topics);
        }
        expired
    }

    /// When the next session expires, if any member exists.
    pub fn next_expiry(&self) -> Option<u64> {
        self.members.values().map(|m| m.last_seen_ms + m.session_timeout_ms + 1).min()
    }

    fn rebalance(&mut self, topics: &BTreeMap<String, u32>) {
        self.generation += 1;
        self.version += 1;
        let subscribed = self.subscribed_topics();
        self.snapshot = topics.iter().filter(|(t, _)| subscribed.contains(*t)).map(|(t, n)| (t.clone(), *n)).collect();
        let specs: BTreeMap<String, MemberSpec> = self
            .members
            .values()
            .map(|m| (m.id.clone(), MemberSpec { topics: m.topics.clone(), owned: m.owned.clone() }))
            .collect();
        self.target = assignor::assign(self.assignor, &specs, &self.snapshot);
        self.hand_over();
    }

    /// Gives every partition with a target but no owner to its target.
    fn hand_over(&mut self) {
        for (tp, id) in &self.target {
            if self.owners.contains_key(tp) {
                continue;
            }
            if let Some(m) = self.members.get_mut(id) {
                m.owned.insert(tp.clone());
                m.acquired.insert(tp.clone(), self.generation);
                self.owners.insert(tp.clone(), id.clone());
                self.version += 1;
            }
        }
    }

    /// Fencing for commits: the member exists, states the generation it was last
    /// told, and owns every partition (a partition being revoked is still owned).
    pub fn check_commit<'a>(
        &self,
        member: &str,
        generation: u64,
        tps: impl IntoIterator<Item = &'a TopicPartition>,
    ) -> Result<(), Error> {
        let m = self.member(member)?;
        if generation != m.generation {
            return Err(Error::IllegalGeneration { group: self.id.clone(), current: m.generation, given: generation });
        }
        for tp in tps {
            if !m.owned.contains(tp) {
                return Err(Error::NotOwner { topic: tp.topic.clone(), partition: tp.partition });
            }
        }
        Ok(())
    }

    /// The partitions a member may read now, with positions and reset epochs.
    pub fn fetches(&self, member: &str) -> Result<Vec<Fetch>, Error> {
        let m = self.member(member)?;
        Ok(m.active()
            .map(|tp| Fetch {
                tp: tp.clone(),
                position: m.positions.get(tp).copied(),
                epoch: self.epochs.get(tp).copied().unwrap_or(0),
                // Unknown is "received now": a cursor cannot speak for it.
                acquired: m.acquired.get(tp).copied().unwrap_or(u64::MAX),
                start: m.starts.get(tp).copied(),
            })
            .collect())
    }

    /// Sets a position the member did not have yet (resolved from the committed
    /// offset or the reset policy). Ignored if the partition moved meanwhile.
    pub fn init_position(&mut self, member: &str, tp: &TopicPartition, epoch: u64, position: u64) {
        if self.epochs.get(tp).copied().unwrap_or(0) != epoch {
            return;
        }
        if let Some(m) = self.members.get_mut(member)
            && m.owned.contains(tp)
            && !m.revoking.contains(tp)
        {
            m.positions.entry(tp.clone()).or_insert(position);
            m.starts.entry(tp.clone()).or_insert(position);
        }
    }

    /// After a poll with a cursor read from `tp`: whether the member may still
    /// be given what it read (it owns the partition, not being revoked, and no
    /// reset intervened). If so, the server-held position becomes `to`.
    pub fn settle(&mut self, member: &str, tp: &TopicPartition, epoch: u64, to: u64) -> bool {
        if self.epochs.get(tp).copied().unwrap_or(0) != epoch {
            return false;
        }
        let Some(m) = self.members.get_mut(member) else { return false };
        if !m.owned.contains(tp) || m.revoking.contains(tp) {
            return false;
        }
        m.positions.insert(tp.clone(), to);
        true
    }

    /// Moves a position forward after records were read from `from`, only if the
    /// member may still read the partition and nothing moved the position
    /// meanwhile. Returns whether the records may be delivered.
    pub fn advance(&mut self, member: &str, tp: &TopicPartition, epoch: u64, from: u64, to: u64) -> bool {
        if self.epochs.get(tp).copied().unwrap_or(0) != epoch {
            return false;
        }
        let Some(m) = self.members.get_mut(member) else { return false };
        if !m.owned.contains(tp) || m.revoking.contains(tp) {
            return false;
        }
        match m.positions.get_mut(tp) {
            Some(p) if *p == from => {
                *p = to;
                true
            }
            _ => false,
        }
    }

    /// An operator moved offsets: the owners continue from the new positions, and
    /// reads already in flight from the old positions are discarded.
    pub fn reset_positions(&mut self, offsets: &BTreeMap<TopicPartition, u64>) {
        for (tp, offset) in offsets {
            *self.epochs.entry(tp.clone()).or_default() += 1;
            if let Some(owner) = self.owners.get(tp)
                && let Some(m) = self.members.get_mut(owner)
            {
                m.positions.insert(tp.clone(), *offset);
                m.starts.insert(tp.clone(), *offset);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(n: u32) -> BTreeMap<String, u32> {
        BTreeMap::from([("t".to_string(), n)])
    }

    fn join(g: &mut Group, id: &str, now: u64, t: &BTreeMap<String, u32>) -> View {
        g.join(
            JoinRequest {
                member_id: id.into(),
                instance_id: None,
                topics: BTreeSet::from(["t".to_string()]),
                session_timeout_ms: 1000,
                auto_offset_reset: OffsetReset::Earliest,
                assignor: None,
            },
            now,
            t,
        )
        .unwrap()
    }

    fn tps(v: &[u32]) -> BTreeSet<TopicPartition> {
        v.iter().map(|p| TopicPartition::new("t", *p)).collect()
    }

    /// No partition is active (deliverable) for two members at once.
    fn assert_exclusive(g: &Group) {
        let mut seen = BTreeSet::new();
        for m in g.members() {
            for tp in &m.owned {
                assert!(seen.insert(tp.clone()), "{tp:?} owned twice");
                assert_eq!(g.owner(tp), Some(m.id.as_str()));
            }
        }
    }

    #[test]
    fn first_member_gets_everything_second_waits_for_release() {
        let t = topics(4);
        let mut g = Group::new("g");
        let a = join(&mut g, "a", 0, &t);
        assert_eq!(a.assignment, tps(&[0, 1, 2, 3]));
        let gen1 = g.generation;

        let b = join(&mut g, "b", 10, &t);
        assert!(g.generation > gen1);
        assert!(b.assignment.is_empty(), "b gets nothing until a releases");
        assert_eq!(g.state(), GroupState::Rebalancing);
        assert_exclusive(&g);

        let a = g.heartbeat("a", 20, &t).unwrap();
        assert_eq!(a.revoked.len(), 2, "a is told to give up two partitions");
        assert_eq!(a.assignment.len(), 2, "and keeps consuming the other two");
        // Still owned while revoking: a may commit them.
        g.check_commit("a", a.generation, a.revoked.iter()).unwrap();
        let b = g.heartbeat("b", 25, &t).unwrap();
        assert!(b.assignment.is_empty(), "not released yet");
        assert_exclusive(&g);

        let a2 = g.heartbeat("a", 30, &t).unwrap();
        assert!(a2.revoked.is_empty());
        assert_eq!(a2.assignment, a.assignment);
        let b = g.heartbeat("b", 35, &t).unwrap();
        assert_eq!(b.assignment, a.revoked, "released partitions move to b");
        assert_eq!(g.state(), GroupState::Stable);
        assert_exclusive(&g);
    }

    #[test]
    fn session_expiry_moves_partitions_and_fences_the_zombie() {
        let t = topics(2);
        let mut g = Group::new("g");
        join(&mut g, "a", 0, &t);
        join(&mut g, "b", 0, &t);
        g.heartbeat("a", 10, &t).unwrap();
        g.heartbeat("a", 20, &t).unwrap();
        let b = g.heartbeat("b", 20, &t).unwrap();
        assert_eq!(b.assignment.len(), 1);
        let b_gen = b.generation;
        let b_tp = b.assignment.iter().next().unwrap().clone();

        // a keeps heartbeating, b goes silent.
        for now in (100..=1000).step_by(100) {
            g.heartbeat("a", now, &t).unwrap();
            assert!(g.expire(now, &t).is_empty());
        }
        assert_eq!(g.expire(1021, &t), vec!["b".to_string()]);
        let a = g.heartbeat("a", 1030, &t).unwrap();
        assert_eq!(a.assignment, tps(&[0, 1]));
        assert!(matches!(g.check_commit("b", b_gen, [&b_tp]), Err(Error::UnknownMember { .. })));
        assert_exclusive(&g);
    }

    #[test]
    fn commits_are_fenced_by_generation_and_ownership() {
        let t = topics(2);
        let mut g = Group::new("g");
        let a = join(&mut g, "a", 0, &t);
        let old = a.generation;
        join(&mut g, "b", 0, &t);
        let a = g.heartbeat("a", 1, &t).unwrap();
        assert!(matches!(g.check_commit("a", old, a.assignment.iter()), Err(Error::IllegalGeneration { .. })));
        g.check_commit("a", a.generation, a.assignment.iter()).unwrap();
        g.heartbeat("a", 2, &t).unwrap();
        let gone = a.revoked.iter().next().unwrap();
        assert!(matches!(g.check_commit("a", a.generation, [gone]), Err(Error::NotOwner { .. })));
        assert!(matches!(g.check_commit("zed", 1, [gone]), Err(Error::UnknownMember { .. })));
    }

    #[test]
    fn leaving_releases_at_once() {
        let t = topics(3);
        let mut g = Group::new("g");
        join(&mut g, "a", 0, &t);
        join(&mut g, "b", 0, &t);
        g.heartbeat("a", 1, &t).unwrap();
        g.heartbeat("a", 2, &t).unwrap();
        g.leave("a", &t).unwrap();
        assert_eq!(g.heartbeat("b", 3, &t).unwrap().assignment, tps(&[0, 1, 2]));
        assert!(g.leave("a", &t).is_err());
    }

    #[test]
    fn static_member_rejoins_without_rebalance() {
        let t = topics(2);
        let mut g = Group::new("g");
        let req = |id: &str| JoinRequest {
            member_id: id.into(),
            instance_id: Some("host-1".into()),
            topics: BTreeSet::from(["t".to_string()]),
            session_timeout_ms: 1000,
            auto_offset_reset: OffsetReset::Latest,
            assignor: None,
        };
        let v = g.join(req("a1"), 0, &t).unwrap();
        let generation = g.generation;
        let v2 = g.join(req("a2"), 500, &t).unwrap();
        assert_eq!(g.generation, generation, "no rebalance");
        assert_eq!(v2.assignment, v.assignment);
        assert!(g.heartbeat("a1", 600, &t).is_err(), "the old incarnation is fenced");
        assert_exclusive(&g);
    }

    #[test]
    fn topic_growth_triggers_a_rebalance() {
        let mut g = Group::new("g");
        join(&mut g, "a", 0, &topics(1));
        let generation = g.generation;
        let v = g.heartbeat("a", 1, &topics(3)).unwrap();
        assert!(g.generation > generation);
        assert_eq!(v.assignment, tps(&[0, 1, 2]));
    }

    #[test]
    fn positions_advance_only_while_owned_and_unreset() {
        let t = topics(1);
        let mut g = Group::new("g");
        join(&mut g, "a", 0, &t);
        let tp = TopicPartition::new("t", 0);
        let f = g.fetches("a").unwrap();
        assert_eq!(f[0].position, None);
        g.init_position("a", &tp, f[0].epoch, 5);
        assert!(g.advance("a", &tp, 0, 5, 9));
        assert!(!g.advance("a", &tp, 0, 5, 9), "a stale read is discarded");
        g.reset_positions(&BTreeMap::from([(tp.clone(), 2)]));
        assert!(!g.advance("a", &tp, 0, 9, 12), "a read from before the reset is discarded");
        let f = g.fetches("a").unwrap();
        assert_eq!((f[0].position, f[0].epoch), (Some(2), 1));
    }

    #[test]
    fn assignor_must_match_the_group() {
        let t = topics(1);
        let mut g = Group::new("g");
        join(&mut g, "a", 0, &t);
        let err = g.join(
            JoinRequest {
                member_id: "b".into(),
                instance_id: None,
                topics: BTreeSet::from(["t".to_string()]),
                session_timeout_ms: 1000,
                auto_offset_reset: OffsetReset::Latest,
                assignor: Some(Assignor::Range),
            },
            0,
            &t,
        );
        assert!(matches!(err, Err(Error::InconsistentAssignor { .. })));
    }
}
