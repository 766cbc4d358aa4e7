//! Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) as a
//! state machine on an explicit clock, for the groups Kafka clients form.
//!
//! Members choose their own assignment: the coordinator collects each member's
//! protocols (assignor names, with the subscription as opaque metadata), picks one
//! that every member supports, names a leader, hands the leader every member's
//! metadata, and passes the assignment the leader computes back to each member.
//! States and transitions are Kafka's:
//!
//! ```text
//! Empty ──join──▶ PreparingRebalance ──all joined, or rebalance timeout──▶ CompletingRebalance
//!                        ▲                                                     │ leader's SyncGroup
//!   join, leave, expiry  └────────────────────── Stable ◀──────────────────────┘
//! ```
//!
//! A rebalance completes when every known member has sent JoinGroup again (after the
//! initial delay, for a group that was empty), or when the rebalance timeout passes,
//! which drops members that did not rejoin. Each completion starts a new generation;
//! Heartbeat, SyncGroup and OffsetCommit from another generation are fenced.
//! Cooperative clients (cooperative-sticky) need nothing more: they run two rebalances.
//! Static members (`group.instance.id`) are accepted; a static member rejoining under a
//! new member id replaces its old one (with a rebalance, which Kafka's broker skips).

use std::collections::HashMap;

use bytes::Bytes;

use crate::error::Error;

/// Kafka's name for each state (DescribeGroups, ListGroups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl ClassicState {
    pub fn name(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
        }
    }
}

/// Why a classic group request is refused (each is one of Kafka's error codes); `Other`
/// carries gregor's own errors (authorization, storage).
#[derive(Debug, thiserror::Error)]
pub enum ClassicError {
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("generation {given} is not the group's generation {current}")]
    IllegalGeneration { current: i32, given: i32 },
    #[error("the group is rebalancing; rejoin")]
    RebalanceInProgress,
    #[error("no protocol that every member supports, or another protocol type")]
    InconsistentGroupProtocol,
    /// The group is in use by gregor's own (REST/WebSocket) members.
    #[error("the group is in use by REST or WebSocket members")]
    UsedByGregor,
    #[error("join again with member id {0}")]
    MemberIdRequired(String),
    #[error("another member holds this group.instance.id")]
    FencedInstanceId,
    #[error("session timeout {0} ms is outside the broker's bounds")]
    InvalidSessionTimeout(u64),
    #[error("the group has members")]
    NonEmptyGroup,
    #[error("the group does not exist")]
    GroupIdNotFound,
    #[error(transparent)]
    Other(#[from] Error),
}

/// A JoinGroup as the state machine needs it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Empty on a member's first join.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocol_type: String,
    /// (assignor name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a member without an id is given one and asked to join again with it.
    pub require_known_member_id: bool,
}

/// One member as DescribeGroups shows it, and as the leader is told of it.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocols: Vec<(String, Bytes)>,
    /// What the leader assigned it in this generation (opaque to the coordinator).
    pub assignment: Bytes,
    /// Monotonic ms of its last request.
    pub last_seen: u64,
    /// It has sent JoinGroup in the rebalance under way.
    pub joined: bool,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

/// A JoinGroup's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinResult {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member's (id, instance id, metadata for `protocol`): the leader's answer only.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// What became of a JoinGroup.
#[derive(Debug)]
pub enum JoinOutcome {
    Done(JoinResult),
    /// The rebalance is under way: ask again ([`Classic::poll_join`]) when the group
    /// changes, or at [`Classic::join_due`].
    Wait {
        member_id: String,
    },
}

/// A classic group.
#[derive(Debug)]
pub struct Classic {
    pub state: ClassicState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    /// The protocol (assignor) chosen for the current generation.
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// In order of first join (the first is leader when there is none).
    members: Vec<Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, and when they lapse.
    pending: HashMap<String, u64>,
    /// When the rebalance under way completes whoever has joined.
    rebalance_deadline: u64,
    /// A group rebalancing out of Empty waits this long for more members first.
    initial_delay_until: u64,
    /// JoinGroup answers ready for members waiting on them.
    results: HashMap<String, JoinResult>,
    initial_delay_ms: u64,
    next_id: u64,
}

impl Classic {
    pub fn new(initial_delay_ms: u64) -> Classic {
        Classic {
            state: ClassicState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: Vec::new(),
            pending: HashMap::new(),
            rebalance_deadline: 0,
            initial_delay_until: 0,
            results: HashMap::new(),
            initial_delay_ms,
            next_id: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn member_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    fn new_member_id(&mut self, req: &JoinRequest) -> String {
        self.next_id += 1;
        let prefix =
            req.instance_id.as_deref().unwrap_or(if req.client_id.is_empty() { "member" } else { &req.client_id });
        format!("{prefix}-{}-{}", self.next_id, super::random_suffix())
    }

    /// Protocols every member other than `except` supports, with `req`'s; none in common
    /// (or another protocol type) is INCONSISTENT_GROUP_PROTOCOL.
    fn check_protocols(&self, req: &JoinRequest, except: Option<&str>) -> Result<(), ClassicError> {
        if req.protocols.is_empty() || req.protocol_type.is_empty() {
            return Err(ClassicError::InconsistentGroupProtocol);
        }
        let others: Vec<&Member> = self.members.iter().filter(|m| Some(m.id.as_str()) != except).collect();
        if others.is_empty() {
            return Ok(());
        }
        if self.protocol_type.as_deref() != Some(req.protocol_type.as_str()) {
            return Err(ClassicError::InconsistentGroupProtocol);
        }
        let common =
            req.protocols.iter().any(|(name, _)| others.iter().all(|m| m.protocols.iter().any(|(n, _)| n == name)));
        if common { Ok(()) } else { Err(ClassicError::InconsistentGroupProtocol) }
    }

    /// A JoinGroup (see the module docs).
    pub fn join(&mut self, req: JoinRequest, now: u64) -> Result<JoinOutcome, ClassicError> {
        let static_holder =
            req.instance_id.as_ref().and_then(|iid| self.members.iter().find(|m| m.instance_id.as_ref() == Some(iid)));
        let member_id = match (req.member_id.is_empty(), static_holder) {
            // A static member back under a new id: it replaces its old self.
            (true, Some(old)) => {
                let old = old.id.clone();
                self.check_protocols(&req, Some(&old))?;
                self.remove(&old);
                let id = self.new_member_id(&req);
                self.add(&req, id.clone(), now);
                id
            }
            (false, Some(old)) if old.id != req.member_id => return Err(ClassicError::FencedInstanceId),
            (true, None) => {
                self.check_protocols(&req, None)?;
                let id = self.new_member_id(&req);
                if req.require_known_member_id && req.instance_id.is_none() {
                    self.pending.insert(id.clone(), now + req.session_timeout_ms);
                    return Err(ClassicError::MemberIdRequired(id));
                }
                self.add(&req, id.clone(), now);
                id
            }
            (false, _) => {
                let id = req.member_id.clone();
                if self.pending.remove(&id).is_some() {
                    self.check_protocols(&req, None)?;
                    self.add(&req, id.clone(), now);
                } else {
                    let Some(m) = self.member(&id) else { return Err(ClassicError::UnknownMemberId) };
                    self.check_protocols(&req, Some(&id))?;
                    let same = m.protocols == req.protocols;
                    let is_leader = self.leader.as_deref() == Some(id.as_str());
                    match self.state {
                        // Asked again for the answer it may have missed.
                        ClassicState::CompletingRebalance if same => {
                            self.touch(&id, now);
                            return Ok(JoinOutcome::Done(self.result_for(&id)));
                        }
                        ClassicState::Stable if same && !is_leader => {
                            self.touch(&id, now);
                            return Ok(JoinOutcome::Done(self.result_for(&id)));
                        }
                        _ => {}
                    }
                    if let Some(m) = self.member_mut(&id) {
                        m.protocols = req.protocols.clone();
                        m.session_timeout_ms = req.session_timeout_ms;
                        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
                        m.joined = true;
                        m.last_seen = now;
                    }
                    if self.state != ClassicState::PreparingRebalance {
                        self.prepare_rebalance(now);
                    }
                }
                id
            }
        };
        self.protocol_type = Some(req.protocol_type);
        self.complete_join_if_due(now);
        match self.results.remove(&member_id) {
            Some(r) => Ok(JoinOutcome::Done(r)),
            None => Ok(JoinOutcome::Wait { member_id }),
        }
    }

    fn add(&mut self, req: &JoinRequest, id: String, now: u64) {
        self.members.push(Member {
            id,
            instance_id: req.instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocols: req.protocols.clone(),
            assignment: Bytes::new(),
            last_seen: now,
            joined: true,
        });
        if self.state != ClassicState::PreparingRebalance {
            self.prepare_rebalance(now);
        }
    }

    fn remove(&mut self, id: &str) {
        self.members.retain(|m| m.id != id);
        self.results.remove(id);
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    fn touch(&mut self, id: &str, now: u64) {
        if let Some(m) = self.member_mut(id) {
            m.last_seen = now;
        }
    }

    fn prepare_rebalance(&mut self, now: u64) {
        let timeout = self.members.iter().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0);
        if self.state == ClassicState::Empty {
            self.initial_delay_until = now + self.initial_delay_ms.min(timeout);
        } else {
            self.initial_delay_until = now;
        }
        self.rebalance_deadline = now + timeout;
        self.state = ClassicState::PreparingRebalance;
        self.results.clear();
    }

    /// When a member waiting on its JoinGroup should ask again if nothing changes first.
    pub fn join_due(&self) -> u64 {
        let all_joined = self.members.iter().all(|m| m.joined) && self.pending.is_empty();
        if all_joined { self.initial_delay_until.min(self.rebalance_deadline) } else { self.rebalance_deadline }
    }

    /// A waiting member asks for its JoinGroup answer: `None` while the rebalance is under way.
    pub fn poll_join(&mut self, member_id: &str, now: u64) -> Result<Option<JoinResult>, ClassicError> {
        self.complete_join_if_due(now);
        if let Some(r) = self.results.remove(member_id) {
            return Ok(Some(r));
        }
        match self.member(member_id) {
            None => Err(ClassicError::UnknownMemberId),
            Some(_) if self.state == ClassicState::PreparingRebalance => Ok(None),
            // Completed without it having asked in time (or its answer was taken): resend.
            Some(_) => Ok(Some(self.result_for(member_id))),
        }
    }

    fn complete_join_if_due(&mut self, now: u64) {
        if self.state != ClassicState::PreparingRebalance {
            return;
        }
        let all_joined = self.members.iter().all(|m| m.joined) && self.pending.is_empty();
        let due = (all_joined && now >= self.initial_delay_until) || now >= self.rebalance_deadline;
        if !due {
            return;
        }
        // Members that did not rejoin in time are out.
        let gone: Vec<String> = self.members.iter().filter(|m| !m.joined).map(|m| m.id.clone()).collect();
        for id in &gone {
            self.remove(id);
        }
        self.pending.clear();
        self.generation += 1;
        self.results.clear();
        if self.members.is_empty() {
            self.state = ClassicState::Empty;
            self.protocol = None;
            self.protocol_type = None;
            self.leader = None;
            return;
        }
        self.protocol = Some(self.choose_protocol());
        if self.leader.is_none() {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        self.state = ClassicState::CompletingRebalance;
        for m in &mut self.members {
            m.joined = false;
            m.assignment = Bytes::new();
            m.last_seen = now;
        }
        let ids: Vec<String> = self.members.iter().map(|m| m.id.clone()).collect();
        for id in ids {
            let r = self.result_for(&id);
            self.results.insert(id, r);
        }
    }

    /// Kafka's vote: each member votes for the first protocol in its list that every
    /// member supports; the most votes wins (ties: the earliest in the first member's list).
    fn choose_protocol(&self) -> String {
        let candidates: Vec<&String> = match self.members.first() {
            Some(first) => first
                .protocols
                .iter()
                .map(|(n, _)| n)
                .filter(|n| self.members.iter().all(|m| m.protocols.iter().any(|(p, _)| p == *n)))
                .collect(),
            None => Vec::new(),
        };
        let mut votes: Vec<(&String, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for m in &self.members {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n))
                && let Some(v) = votes.iter_mut().find(|(c, _)| *c == name)
            {
                v.1 += 1;
            }
        }
        let best = votes.iter().map(|(_, n)| *n).max().unwrap_or(0);
        votes.iter().find(|(_, n)| *n == best).map(|(c, _)| (*c).clone()).unwrap_or_default()
    }

    fn result_for(&self, member_id: &str) -> JoinResult {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members.iter().map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol))).collect()
        } else {
            Vec::new()
        };
        JoinResult {
            generation: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol,
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    fn check_member(&self, member_id: &str, generation: i32) -> Result<(), ClassicError> {
        if self.member(member_id).is_none() {
            return Err(ClassicError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ClassicError::IllegalGeneration { current: self.generation, given: generation });
        }
        Ok(())
    }

    /// A SyncGroup: the leader's carries every member's assignment. Answers the member's
    /// assignment, or `None` while the leader's has not arrived ([`Classic::poll_sync`]).
    pub fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: u64,
    ) -> Result<Option<Bytes>, ClassicError> {
        self.check_member(member_id, generation)?;
        self.touch(member_id, now);
        match self.state {
            ClassicState::Empty => Err(ClassicError::UnknownMemberId),
            ClassicState::PreparingRebalance => Err(ClassicError::RebalanceInProgress),
            ClassicState::Stable => Ok(self.member(member_id).map(|m| m.assignment.clone())),
            ClassicState::CompletingRebalance => {
                if self.leader.as_deref() == Some(member_id) {
                    for m in &mut self.members {
                        m.assignment =
                            assignments.iter().find(|(id, _)| *id == m.id).map(|(_, a)| a.clone()).unwrap_or_default();
                    }
                    self.state = ClassicState::Stable;
                    self.results.clear();
                    Ok(self.member(member_id).map(|m| m.assignment.clone()))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// A waiting member asks for its SyncGroup answer: `None` while the leader's is awaited.
    pub fn poll_sync(&self, member_id: &str, generation: i32) -> Result<Option<Bytes>, ClassicError> {
        self.check_member(member_id, generation).map_err(|e| match e {
            // The generation moved on while it waited: a rebalance began.
            ClassicError::IllegalGeneration { .. } => ClassicError::RebalanceInProgress,
            other => other,
        })?;
        match self.state {
            ClassicState::Stable => Ok(self.member(member_id).map(|m| m.assignment.clone())),
            ClassicState::CompletingRebalance => Ok(None),
            _ => Err(ClassicError::RebalanceInProgress),
        }
    }

    /// A Heartbeat: keeps the session; REBALANCE_IN_PROGRESS tells the member to rejoin.
    pub fn heartbeat(&mut self, member_id: &str, generation: i32, now: u64) -> Result<(), ClassicError> {
        if self.state == ClassicState::Empty {
            return Err(ClassicError::UnknownMemberId);
        }
        self.check_member(member_id, generation)?;
        self.touch(member_id, now);
        if self.state == ClassicState::PreparingRebalance { Err(ClassicError::RebalanceInProgress) } else { Ok(()) }
    }

    /// A member leaves (by id, or by its instance id); the others rebalance.
    pub fn leave(&mut self, member_id: &str, instance_id: Option<&str>, now: u64) -> Result<(), ClassicError> {
        let found = self.members.iter().find(|m| match instance_id {
            Some(iid) => m.instance_id.as_deref() == Some(iid),
            None => m.id == member_id,
        });
        let Some(m) = found else {
            return if self.pending.remove(member_id).is_some() { Ok(()) } else { Err(ClassicError::UnknownMemberId) };
        };
        if instance_id.is_some() && !member_id.is_empty() && m.id != member_id {
            return Err(ClassicError::FencedInstanceId);
        }
        let id = m.id.clone();
        self.remove(&id);
        self.members_changed(now);
        Ok(())
    }

    /// After members were removed: a stable group rebalances; a rebalancing one may now be complete.
    fn members_changed(&mut self, now: u64) {
        match self.state {
            ClassicState::Stable | ClassicState::CompletingRebalance => {
                self.prepare_rebalance(now);
                self.complete_join_if_due(now);
            }
            ClassicState::PreparingRebalance => self.complete_join_if_due(now),
            ClassicState::Empty => {}
        }
    }

    /// Removes members whose session ran out (not those waiting in a JoinGroup) and lapsed
    /// pending member ids, and completes a rebalance whose time is up. Returns the members removed.
    pub fn expire(&mut self, now: u64) -> Vec<String> {
        self.pending.retain(|_, until| *until > now);
        let rebalancing = self.state == ClassicState::PreparingRebalance;
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|m| !(rebalancing && m.joined) && now > m.last_seen + m.session_timeout_ms)
            .map(|m| m.id.clone())
            .collect();
        for id in &gone {
            self.remove(id);
        }
        if !gone.is_empty() {
            self.members_changed(now);
        } else {
            self.complete_join_if_due(now);
        }
        gone
    }

    /// Whether an OffsetCommit from `member_id` at `generation` may land: a commit without a
    /// member (generation -1) only to a group without members; a member's, from its generation.
    pub fn check_commit(&self, member_id: &str, generation: i32) -> Result<(), ClassicError> {
        if generation < 0 && member_id.is_empty() && self.members.is_empty() {
            return Ok(());
        }
        if self.state == ClassicState::CompletingRebalance && self.member(member_id).is_some() {
            return Err(ClassicError::RebalanceInProgress);
        }
        self.check_member(member_id, generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_owned(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: protocols.iter().map(|p| (p.to_string(), Bytes::from(format!("meta-{p}")))).collect(),
            require_known_member_id: true,
        }
    }

    /// Joins with an empty id (MEMBER_ID_REQUIRED) and again with the id given.
    fn first_join(g: &mut Classic, protocols: &[&str], now: u64) -> (String, JoinOutcome) {
        let id = match g.join(req("", protocols), now) {
            Err(ClassicError::MemberIdRequired(id)) => id,
            other => panic!("expected MEMBER_ID_REQUIRED, got {other:?}"),
        };
        let out = g.join(req(&id, protocols), now).unwrap();
        (id, out)
    }

    fn done(out: JoinOutcome) -> JoinResult {
        match out {
            JoinOutcome::Done(r) => r,
            JoinOutcome::Wait { .. } => panic!("the join is still waiting"),
        }
    }

    #[test]
    fn a_first_member_waits_out_the_initial_delay_then_leads_generation_one() {
        let mut g = Classic::new(3_000);
        let (a, out) = first_join(&mut g, &["range"], 0);
        assert!(matches!(out, JoinOutcome::Wait { .. }));
        assert_eq!(g.join_due(), 3_000);
        assert_eq!(g.poll_join(&a, 2_999).unwrap(), None);
        let r = g.poll_join(&a, 3_000).unwrap().unwrap();
        assert_eq!((r.generation, r.leader.as_str(), r.protocol.as_str()), (1, a.as_str(), "range"));
        assert_eq!(r.members, vec![(a.clone(), None, Bytes::from("meta-range"))]);
        assert_eq!(g.state, ClassicState::CompletingRebalance);
        assert_eq!(g.sync(&a, 1, vec![(a.clone(), Bytes::from("A"))], 3_001).unwrap(), Some(Bytes::from("A")));
        assert_eq!(g.state, ClassicState::Stable);
        g.heartbeat(&a, 1, 3_002).unwrap();
    }

    #[test]
    fn a_second_member_triggers_a_rebalance_the_first_learns_of_by_heartbeat() {
        let mut g = Classic::new(0);
        let (a, out) = first_join(&mut g, &["range", "cooperative-sticky"], 0);
        assert_eq!(done(out).generation, 1);
        g.sync(&a, 1, vec![(a.clone(), Bytes::from("all"))], 1).unwrap();
        let (b, out) = first_join(&mut g, &["cooperative-sticky", "range"], 10);
        assert!(matches!(out, JoinOutcome::Wait { .. }), "b waits for a to rejoin");
        assert!(matches!(g.heartbeat(&a, 1, 11), Err(ClassicError::RebalanceInProgress)));
        let ra = done(g.join(req(&a, &["range", "cooperative-sticky"]), 12).unwrap());
        assert_eq!(ra.generation, 2);
        assert_eq!(ra.leader, a, "the leader stays");
        assert_eq!(ra.members.len(), 2);
        let rb = g.poll_join(&b, 12).unwrap().unwrap();
        assert!(rb.members.is_empty(), "only the leader sees the members");
        assert_eq!(rb.protocol, ra.protocol);
        // b syncs first and waits for the leader's assignment.
        assert_eq!(g.sync(&b, 2, vec![], 13).unwrap(), None);
        assert_eq!(g.poll_sync(&b, 2).unwrap(), None);
        let assignments = vec![(a.clone(), Bytes::from("p0")), (b.clone(), Bytes::from("p1"))];
        assert_eq!(g.sync(&a, 2, assignments, 14).unwrap(), Some(Bytes::from("p0")));
        assert_eq!(g.poll_sync(&b, 2).unwrap(), Some(Bytes::from("p1")));
        assert!(matches!(g.heartbeat(&b, 1, 15), Err(ClassicError::IllegalGeneration { current: 2, given: 1 })));
    }

    #[test]
    fn the_protocol_is_the_one_most_members_prefer_among_those_all_support() {
        let mut g = Classic::new(0);
        let (a, _) = first_join(&mut g, &["range", "roundrobin"], 0);
        let (b, _) = first_join(&mut g, &["roundrobin", "range"], 1);
        let (c, _) = first_join(&mut g, &["roundrobin"], 2);
        g.join(req(&a, &["range", "roundrobin"]), 3).unwrap();
        g.join(req(&b, &["roundrobin", "range"]), 3).unwrap();
        assert_eq!(g.poll_join(&c, 3).unwrap().unwrap().protocol, "roundrobin");
        assert!(matches!(g.join(req("", &["sticky"]), 4), Err(ClassicError::InconsistentGroupProtocol)));
        let mut other_type = req("", &["range"]);
        other_type.protocol_type = "connect".into();
        assert!(matches!(g.join(other_type, 4), Err(ClassicError::InconsistentGroupProtocol)));
    }

    #[test]
    fn members_that_do_not_rejoin_in_the_rebalance_timeout_are_dropped() {
        let mut g = Classic::new(0);
        let (a, _) = first_join(&mut g, &["range"], 0);
        g.sync(&a, 1, vec![], 0).unwrap();
        let (b, out) = first_join(&mut g, &["range"], 100);
        assert!(matches!(out, JoinOutcome::Wait { .. }));
        assert_eq!(g.join_due(), 100 + 30_000);
        // a never rejoins; its heartbeats keep its session but not its place.
        assert!(matches!(g.heartbeat(&a, 1, 20_000), Err(ClassicError::RebalanceInProgress)));
        assert_eq!(g.poll_join(&b, 30_099).unwrap(), None);
        let r = g.poll_join(&b, 30_100).unwrap().unwrap();
        assert_eq!((r.generation, r.leader.as_str(), r.members.len()), (2, b.as_str(), 1));
        assert!(matches!(g.heartbeat(&a, 1, 30_101), Err(ClassicError::UnknownMemberId)));
    }

    #[test]
    fn silent_members_expire_and_leaving_rebalances_the_rest() {
        let mut g = Classic::new(0);
        let (a, _) = first_join(&mut g, &["range"], 0);
        let (b, _) = first_join(&mut g, &["range"], 0);
        let r = done(g.join(req(&a, &["range"]), 0).unwrap());
        assert_eq!(r.generation, 2, "b's arrival was a second rebalance");
        g.sync(&a, 2, vec![], 0).unwrap();
        g.sync(&b, 2, vec![], 0).unwrap();
        g.heartbeat(&a, 2, 9_000).unwrap();
        assert!(g.expire(10_000).is_empty(), "10 s is b's session: not yet past it");
        assert_eq!(g.expire(10_001), vec![b.clone()]);
        assert_eq!(g.state, ClassicState::PreparingRebalance);
        let r = done(g.join(req(&a, &["range"]), 10_002).unwrap());
        assert_eq!((r.generation, r.members.len()), (3, 1));
        g.sync(&a, 3, vec![], 10_003).unwrap();
        g.leave(&a, None, 10_004).unwrap();
        assert_eq!((g.state, g.generation), (ClassicState::Empty, 4), "the last one out empties the group");
        assert!(g.is_empty());
        assert!(matches!(g.leave(&a, None, 10_005), Err(ClassicError::UnknownMemberId)));
    }

    #[test]
    fn commits_are_fenced_by_member_and_generation() {
        let mut g = Classic::new(0);
        g.check_commit("", -1).unwrap();
        let (a, out) = first_join(&mut g, &["range"], 0);
        let gen_ = done(out).generation;
        assert!(matches!(g.check_commit(&a, gen_), Err(ClassicError::RebalanceInProgress)), "before its sync");
        g.sync(&a, gen_, vec![], 0).unwrap();
        g.check_commit(&a, gen_).unwrap();
        assert!(matches!(g.check_commit(&a, gen_ - 1), Err(ClassicError::IllegalGeneration { .. })));
        assert!(matches!(g.check_commit("", -1), Err(ClassicError::UnknownMemberId)), "the group has members");
        // Commits during a rebalance from the current generation land (eager clients commit before rejoining).
        first_join(&mut g, &["range"], 1);
        assert_eq!(g.state, ClassicState::PreparingRebalance);
        g.check_commit(&a, gen_).unwrap();
    }

    #[test]
    fn a_static_member_rejoining_replaces_its_old_self_and_fences_it() {
        let mut g = Classic::new(0);
        let mut s = req("", &["range"]);
        s.instance_id = Some("host-1".into());
        let first = done(g.join(s.clone(), 0).unwrap());
        g.sync(&first.member_id, 1, vec![], 0).unwrap();
        let second = done(g.join(s.clone(), 5).unwrap());
        assert_ne!(second.member_id, first.member_id);
        assert_eq!(g.members().len(), 1);
        assert!(matches!(g.heartbeat(&first.member_id, 1, 6), Err(ClassicError::UnknownMemberId)));
        let mut stale = s;
        stale.member_id = first.member_id;
        assert!(matches!(g.join(stale, 7), Err(ClassicError::FencedInstanceId)));
    }

    #[test]
    fn a_member_asking_again_for_its_join_answer_gets_it_without_a_rebalance() {
        let mut g = Classic::new(0);
        let (a, out) = first_join(&mut g, &["range"], 0);
        let first = done(out);
        let again = done(g.join(req(&a, &["range"]), 1).unwrap());
        assert_eq!(again, first);
        assert_eq!(g.generation, 1);
        assert!(matches!(g.join(req("nobody", &["range"]), 1), Err(ClassicError::UnknownMemberId)));
    }
}
