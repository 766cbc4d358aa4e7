//! A WebSocket group member on the Kafka backend: a member of Kafka's classic group
//! protocol whose lifetime is its socket's.
//!
//! Unlike a REST member (which any replica acts for, from what the coordinator shows), a
//! socket is served by one replica, so that replica drives the member: a task heartbeats
//! for it every third of its session, and turns the coordinator's REBALANCE_IN_PROGRESS
//! into gregor's revocation handshake. With `cooperative-sticky` (the default):
//!
//! 1. the heartbeat answers REBALANCE_IN_PROGRESS: the task rejoins at once stating what the
//!    member owns (it keeps reading); the leader withholds partitions that move;
//! 2. what the new assignment lacks is announced as revoked and no longer read;
//! 3. the connection releases it once the client committed what it received from those
//!    partitions, or half the session passed ([`StreamMember::release`]);
//! 4. the task rejoins once more, and the withheld partitions reach their new owners.
//!
//! With the eager protocols (`range`, `roundrobin`) step 2 comes first: every owned
//! partition is revoked before the member rejoins.
//!
//! If the coordinator forgets the member (its session lapsed while the socket was not served,
//! or the coordinator lost it), the member's partitions are lost, as a Kafka consumer's are:
//! the task joins again as a new member, and the next `assignment` frame names its new id and
//! assignment. Lost partitions are not announced as revoked: another member may own them
//! already, so nothing of them may be committed. Only a static member fenced by another
//! instance ends.
//!
//! Kafka keeps the member in the group while it rejoins within the rebalance timeout
//! (never shorter than the session), so step 2's wait holds no one up for longer than the
//! client takes to commit. If the replica dies, its members' sessions lapse at the
//! coordinator; their clients reconnect to any replica and resume from committed offsets.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::groups::{Described, cooperative, group_error, with_owned};
use crate::error::{Error, Result};
use crate::group::{JoinParams, View};
use crate::kafka::errors as code;

/// Where the member is in Kafka's group protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Heartbeats succeed; the assignment holds.
    Stable,
    /// The coordinator is rebalancing: the member's partitions are announced as revoked
    /// and wait for the connection to release them.
    Revoking,
    /// Released: the task rejoins.
    Rejoining,
}

/// Why the member's membership ended.
#[derive(Debug, Clone)]
enum Ended {
    /// The coordinator no longer knows the member (its session lapsed) or fenced it.
    Fenced,
    /// The cluster failed in a way retrying did not mend.
    Failed(String),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// What the coordinator last gave the member (while revoking: nothing, with the old
    /// assignment in `revoked`).
    view: View,
    ended: Option<Ended>,
    /// When the connection last showed it is served (see [`StreamMember::touch`]).
    touched: Instant,
}

/// The shared half of a WebSocket member: the connection reads its view, the driver task
/// keeps it current.
#[derive(Debug)]
pub struct StreamMember {
    cluster: Arc<Cluster>,
    group: String,
    /// The coordinator's id for the member (a new one after it was forgotten).
    id: Mutex<String>,
    instance: Option<String>,
    /// What the member joined with (to join again with).
    params: JoinParams,
    me: Described,
    state: Mutex<State>,
    /// Bumped whenever the view changes or the membership ends.
    news: watch::Sender<u64>,
    released: Notify,
    stop: CancellationToken,
}

/// Stops the driver when the member's stream goes.
#[derive(Debug)]
pub struct Driven(pub Arc<StreamMember>);

impl Drop for Driven {
    fn drop(&mut self) {
        self.0.stop.cancel();
    }
}

impl std::ops::Deref for Driven {
    type Target = StreamMember;
    fn deref(&self) -> &StreamMember {
        &self.0
    }
}

impl Cluster {
    /// Joins `group` for a WebSocket: a member whose heartbeats and rebalances a task of
    /// this replica drives until the returned handle is dropped.
    pub async fn join_stream(self: &Arc<Self>, group: &str, params: &JoinParams) -> Result<(Driven, View)> {
        let (id, view, me) = self.join_new(group, params).await?;
        let member = Arc::new(StreamMember {
            cluster: self.clone(),
            group: group.to_owned(),
            id: Mutex::new(id),
            instance: params.instance_id.clone(),
            params: params.clone(),
            me,
            state: Mutex::new(State { phase: Phase::Stable, view: view.clone(), ended: None, touched: Instant::now() }),
            news: watch::channel(0).0,
            released: Notify::new(),
            stop: self.shutdown.child_token(),
        });
        tokio::spawn(member.clone().drive());
        Ok((Driven(member), view))
    }
}

impl StreamMember {
    pub fn id(&self) -> String {
        self.id.lock().clone()
    }

    pub fn session(&self) -> Duration {
        Duration::from_millis(self.me.params.session_timeout_ms)
    }

    /// The policy for partitions without a committed offset (`earliest`, `latest`, `none`).
    pub fn reset(&self) -> Option<&str> {
        self.me.params.reset.as_deref()
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.news.subscribe()
    }

    /// The connection is served: the driver keeps heartbeating. A connection stuck for a
    /// whole session stops them, so its partitions move.
    pub fn touch(&self) -> Result<()> {
        let mut state = self.state.lock();
        state.touched = Instant::now();
        check(&self.group, &self.id(), &state)
    }

    /// The member's current view, or why it has none.
    pub fn view(&self) -> Result<View> {
        let state = self.state.lock();
        check(&self.group, &self.id(), &state)?;
        Ok(state.view.clone())
    }

    /// Counts the view's changes (and the membership's end): a connection that saw
    /// another count has news.
    pub fn version(&self) -> u64 {
        *self.news.borrow()
    }

    /// Gives the revoked partitions up: the driver rejoins now.
    pub fn release(&self) {
        let mut state = self.state.lock();
        if state.phase == Phase::Revoking {
            state.phase = Phase::Rejoining;
            state.view.revoked.clear();
            drop(state);
            self.released.notify_one();
        }
    }

    /// Commits in the member's latest generation (the connection may not have heard of a
    /// rebalance that just completed): Kafka fences it by member and generation.
    pub async fn commit(&self, offsets: &[(String, u32, u64)]) -> Result<()> {
        let generation = self.view()?.generation.min(i32::MAX as u64) as i32;
        self.cluster.offset_commit(&self.group, &self.id(), generation, offsets).await
    }

    pub async fn leave(&self) -> Result<()> {
        self.stop.cancel();
        self.cluster.leave(&self.group, &self.id()).await
    }

    fn end(&self, why: Ended) {
        self.state.lock().ended = Some(why);
        self.news.send_modify(|n| *n += 1);
    }

    /// Heartbeats every third of the session; rebalances as the module's comment says.
    async fn drive(self: Arc<Self>) {
        let every = crate::service::heartbeat_interval(self.me.params.session_timeout_ms);
        let session = self.session();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = self.released.notified() => {}
            }
            let (phase, generation, touched) = {
                let s = self.state.lock();
                (s.phase, s.view.generation, s.touched)
            };
            if phase == Phase::Rejoining {
                self.rejoin().await;
                if self.state.lock().ended.is_some() {
                    return;
                }
                continue;
            }
            if touched.elapsed() > session {
                // The socket is not being served: let the session lapse.
                continue;
            }
            match self.heartbeat(generation).await {
                Ok(0) => {}
                Ok(code::REBALANCE_IN_PROGRESS) => {
                    let mut state = self.state.lock();
                    if state.phase != Phase::Stable {
                        continue;
                    }
                    if state.view.assignment.is_empty() || cooperative(&self.me.protocol) {
                        // Nothing to hand over, or a cooperative rebalance (the member keeps
                        // reading while it rejoins stating what it owns): rejoin at once.
                        state.phase = Phase::Rejoining;
                        drop(state);
                        self.released.notify_one();
                        continue;
                    }
                    state.phase = Phase::Revoking;
                    let owned = std::mem::take(&mut state.view.assignment);
                    state.view = View { generation, assignment: BTreeSet::new(), revoked: owned, changed: true };
                    drop(state);
                    self.news.send_modify(|n| *n += 1);
                }
                Ok(code::FENCED_INSTANCE_ID) => return self.end(Ended::Fenced),
                Ok(c @ (code::UNKNOWN_MEMBER_ID | code::ILLEGAL_GENERATION)) => {
                    tracing::info!(
                        group = self.group,
                        member = self.id(),
                        code = c,
                        "the coordinator forgot the member"
                    );
                    self.join_again().await;
                    if self.state.lock().ended.is_some() {
                        return;
                    }
                }
                Ok(c) => tracing::warn!(group = self.group, member = self.id(), code = c, "heartbeat refused"),
                // The cluster may come back within the session; if not, the coordinator
                // says UNKNOWN_MEMBER_ID then.
                Err(e) => tracing::warn!(group = self.group, member = self.id(), error = %e, "heartbeat failed"),
            }
        }
    }

    async fn heartbeat(&self, generation: u64) -> Result<i16> {
        self.cluster.heartbeat_once(&self.group, &self.id(), self.instance.as_deref(), generation).await
    }

    /// The member was forgotten: what it owned is lost, and it joins as a new member (a
    /// static member with its instance id).
    async fn join_again(&self) {
        match self.cluster.join_new(&self.group, &self.params).await {
            Ok((id, view, _)) => {
                *self.id.lock() = id;
                {
                    // Lost, not revoked: another member may own them already, so there is no
                    // commit to wait for (and the connection refuses one as `not_owner`).
                    let mut state = self.state.lock();
                    state.phase = Phase::Stable;
                    state.view = View { revoked: BTreeSet::new(), changed: true, ..view };
                }
                self.news.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "joining again failed");
                self.end(Ended::Failed(e.to_string()));
            }
        }
    }

    /// Rejoins and syncs. Eager: the member owns nothing now. Cooperative: it states what it
    /// owns and keeps all but what moves, which it then revokes (and rejoins once more when
    /// the connection released it).
    async fn rejoin(&self) {
        let me = &self.me;
        let (owned, generation) = {
            let state = self.state.lock();
            (state.view.assignment.clone(), state.view.generation)
        };
        let metadata =
            if cooperative(&me.protocol) { with_owned(&me.metadata, &owned) } else { Ok(me.metadata.clone()) };
        let joined = match metadata {
            Ok(metadata) => {
                let session = me.params.session_timeout_ms;
                let instance = self.instance.as_deref();
                let (group, id, protocol) = (&self.group, self.id(), &me.protocol);
                self.cluster.join_and_sync(group, &id, Some(generation), instance, protocol, metadata, session).await
            }
            Err(e) => Err(e),
        };
        match joined {
            Ok((_, view)) => {
                {
                    let mut state = self.state.lock();
                    let revoked: BTreeSet<_> = owned.difference(&view.assignment).cloned().collect();
                    state.phase = if revoked.is_empty() { Phase::Stable } else { Phase::Revoking };
                    state.view = View { revoked, changed: true, ..view };
                }
                self.news.send_modify(|n| *n += 1);
            }
            Err(Error::UnknownMember { .. } | Error::IllegalGeneration { .. } | Error::GenerationMoved { .. }) => {
                self.join_again().await
            }
            Err(e) => {
                tracing::warn!(group = self.group, member = self.id(), error = %e, "rejoining failed");
                self.end(Ended::Failed(e.to_string()));
            }
        }
    }
}

fn check(group: &str, member: &str, state: &State) -> Result<()> {
    match &state.ended {
        None => Ok(()),
        Some(Ended::Fenced) => Err(group_error(group, member, code::UNKNOWN_MEMBER_ID, "Heartbeat")),
        Some(Ended::Failed(why)) => Err(Error::Backend(why.clone())),
    }
}
