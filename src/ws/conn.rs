//! One WebSocket connection: a loop over the socket's send and receive halves,
//! the stream's append notifications, the group's change notifications and
//! timers, under one `select!`. Generic over `Sink`/`Stream` so that it does not
//! depend on the transport; it reaches the log only through the service layer.
//!
//! Memory per connection is bounded: at most one `records` frame is in flight
//! (the send is awaited, so a client that stops reading stops the log reads for
//! it), produce answers wait in a bounded channel, and at most `MAX_PENDING_PRODUCES`
//! produce frames are handled at once (beyond that the socket is not read).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::frames::{self, AckError, AckTracker, ClientFrame, OffsetEntry, RecordsFrame};
use crate::codec::{self, Encoding};
use crate::error::{Code, Error, Result};
use crate::service::{
    Acks, Keepalive, MemberStream, Produced, RequestCtx, Service, TopicPartition, TopicStream, Watch,
};

/// Record bytes of all connections' frames together, at most (each frame gets
/// an equal share, and never less than `MIN_FRAME_BYTES`).
const FRAMES_BUDGET: usize = 32 * 1024 * 1024;
const MIN_FRAME_BYTES: usize = 16 * 1024;

/// A connection's frame size when `connections` share `FRAMES_BUDGET`.
fn frame_share(requested: usize, connections: usize) -> usize {
    requested.min((FRAMES_BUDGET / connections.max(1)).max(MIN_FRAME_BYTES))
}

/// Produce frames handled concurrently per connection.
pub const MAX_PENDING_PRODUCES: usize = 64;

/// Close codes (RFC 6455 and gregor's own 4xxx).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const INTERNAL: u16 = 1011;
    /// The client stopped answering pings or reading frames.
    pub const TIMEOUT: u16 = 4408;
    /// The topic was deleted.
    pub const GONE: u16 = 4404;
    /// The group member was fenced (session expired); reconnect to rejoin.
    pub const FENCED: u16 = 4409;
    /// The credentials expired.
    pub const UNAUTHENTICATED: u16 = 4401;
    /// The principal lost a permission the stream needs (an ACL reload).
    pub const FORBIDDEN: u16 = 4403;
}

/// Batching and flow control chosen by the client.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Most records per `records` frame.
    pub max_records: usize,
    /// Most record bytes per `records` frame (at least one record is sent).
    pub max_bytes: usize,
    /// After records become available, wait this long for more to fill the frame.
    pub linger: Duration,
    /// Records the server may send before the client grants more with `credit`
    /// frames; `None`: no credit counting, the socket's backpressure alone.
    pub credit: Option<u64>,
    pub encoding: Encoding,
    pub ping_interval: Duration,
    /// A group member whose records wait this long for credit leaves its group
    /// (Kafka's `max.poll.interval.ms`); topic streams just wait.
    pub max_poll_interval: Duration,
}

/// What the connection follows.
pub enum Source {
    /// Explicit partitions of a topic from explicit positions.
    Topic(TopicStream),
    /// A group member: the group decides the partitions and positions.
    Group(MemberStream),
}

impl Source {
    fn authorized(&self) -> Result<()> {
        match self {
            Source::Topic(stream) => stream.authorized(),
            Source::Group(member) => member.authorized(),
        }
    }
}

struct Conn<S> {
    sink: S,
    service: Service,
    ctx: RequestCtx,
    opts: Options,
    credit: Option<u64>,
    /// Since when records have waited for credit the client has not granted
    /// (counted in `gregor_ws_credit_stalled` meanwhile).
    credit_stalled: Option<Instant>,
    acks: AckTracker,
    /// When a revocation was announced and not yet released.
    revoking_since: Option<Instant>,
    /// Partitions whose read errors were already reported to the client.
    reported: BTreeSet<TopicPartition>,
    last_heard: Instant,
    /// A group member's session keeper, and how often to use it: a send that
    /// waits on a slow client keeps the member alive meanwhile (the loop that
    /// heartbeats is waiting on the send).
    keepalive: Option<(Keepalive, Duration)>,
}

/// Why the loop ended.
enum End {
    ClientGone,
    Close(u16, String),
}

impl From<Error> for End {
    /// A failure that ends the stream: a deleted topic, a fenced member, or a
    /// server fault (logged; the client sees 1011).
    fn from(e: Error) -> End {
        match e {
            Error::UnknownTopic(t) => End::Close(close::GONE, format!("topic '{t}' was deleted")),
            Error::UnknownMember { .. } | Error::UnknownGroup(_) => {
                End::Close(close::FENCED, "the member's session expired; reconnect".into())
            }
            Error::ShuttingDown => End::Close(close::GOING_AWAY, "server shutting down".into()),
            Error::Unauthenticated(why) => End::Close(close::UNAUTHENTICATED, why),
            e @ Error::Forbidden { .. } => End::Close(close::FORBIDDEN, e.to_string()),
            e => {
                tracing::error!(error = %e, "websocket stream failed");
                End::Close(close::INTERNAL, "the server failed to serve the stream".into())
            }
        }
    }
}

pub async fn run<S, R>(sink: S, stream: R, service: Service, ctx: RequestCtx, mut source: Source, opts: Options)
where
    S: Sink<Message, Error = axum::Error> + Unpin,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin + Send + 'static,
{
    // The socket's receive half is read by its own task. Polled from the loop's
    // `select!`, tungstenite would reserve and zero its read buffer on every
    // wake-up of every connection, although clients rarely send anything.
    // The channel holds one frame: a client that floods frames waits for the
    // loop, as it did when the loop read the socket itself.
    let (in_tx, mut incoming) = mpsc::channel::<Option<Result<Message, axum::Error>>>(1);
    let reader = tokio::spawn(async move {
        let mut stream = stream;
        loop {
            let msg = stream.next().await;
            let last = msg.is_none();
            if in_tx.send(msg).await.is_err() || last {
                return;
            }
        }
    });
    let _reader = tokio_util::task::AbortOnDropHandle::new(reader);
    service.metrics().ws_connections.inc();
    let shutdown = service.shutdown_token();
    // A stream's produce frames wait out their principal's quota debt instead of being refused.
    let ctx = ctx.delayed();
    let mut conn = Conn {
        sink,
        credit: opts.credit,
        credit_stalled: None,
        opts,
        service,
        ctx,
        acks: AckTracker::default(),
        revoking_since: None,
        reported: BTreeSet::new(),
        last_heard: Instant::now(),
        keepalive: match &source {
            Source::Group(member) => Some((
                member.keepalive(),
                crate::service::heartbeat_interval(member.session_timeout().as_millis() as u64),
            )),
            Source::Topic(_) => None,
        },
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Result<String>>(MAX_PENDING_PRODUCES);
    let produce_slots = Arc::new(Semaphore::new(MAX_PENDING_PRODUCES));
    let mut ping = tokio::time::interval(opts.ping_interval);
    ping.reset();
    let mut changes = match &source {
        Source::Group(member) => match member.changes() {
            Ok(c) => Some(c),
            Err(e) => return conn.finish(&source, e.into()).await,
        },
        Source::Topic(_) => None,
    };
    // A member that holds records back for longer than this is not consuming:
    // it leaves the group, so that its partitions move (Kafka's max.poll.interval.ms).
    let is_member = matches!(source, Source::Group(_));
    let heartbeat_every = match &source {
        Source::Group(member) => crate::service::heartbeat_interval(member.session_timeout().as_millis() as u64),
        Source::Topic(_) => Duration::from_secs(3600),
    };
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.reset();
    let mut security = conn.service.security_changes();
    // Credentials that expire (a JWT) end the stream when they do.
    let expiry = conn.ctx.expires_at.map(|at| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let left = at.saturating_sub(now);
        tokio::time::Instant::now() + Duration::from_secs(left)
    });

    if let Source::Group(member) = &source {
        let first = frames::assignment(&member.member_id(), member.view());
        if let Err(end) = conn.send_frame(first).await {
            return conn.finish(&source, end).await;
        }
        if let Err(end) = conn.send_records(&mut source).await {
            return conn.finish(&source, end).await;
        }
    }

    let end = loop {
        let mut watch = match conn.watch(&source).await {
            Ok(w) => w,
            Err(e) => break End::from(e),
        };
        let ready = watch.is_ready();
        let can_send = conn.credit != Some(0);
        conn.set_credit_stalled(ready && !can_send);
        // Without credit, appends are still watched until records are ready, so
        // that the stall is seen (and counted) when it begins.
        let follow = can_send || !ready;
        let data = async {
            if !ready {
                watch.changed().await;
            }
        };
        let group_changed = async {
            match changes.as_mut() {
                Some(c) => c.changed().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break End::Close(close::GOING_AWAY, "server shutting down".into()),
            msg = incoming.recv(), if produce_slots.available_permits() > 0 => {
                conn.last_heard = Instant::now();
                match msg.flatten() {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break End::ClientGone,
                    Some(Ok(Message::Text(text))) => {
                        if let Err(end) = conn.client_frame(&mut source, text, &out_tx, &produce_slots).await {
                            break end;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let frame = frames::error(Code::BinaryFramesUnsupported, "send JSON text frames", None);
                        if let Err(end) = conn.send_frame(frame).await { break end; }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            Some(frame) = out_rx.recv() => {
                if let Err(end) = conn.send_frame(frame).await { break end; }
            }
            _ = ping.tick() => {
                if conn.last_heard.elapsed() > opts.ping_interval * 2 {
                    break End::Close(close::TIMEOUT, "no pong or frame from the client".into());
                }
                if conn.send_message(Message::Ping(Default::default())).await.is_err() { break End::ClientGone; }
            }
            _ = async { match expiry { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                break End::Close(close::UNAUTHENTICATED, "the credentials expired; reconnect with new ones".into());
            }
            Ok(()) = security.changed() => {
                // Keys or ACLs were reloaded: a stream whose principal lost its
                // permission ends now (4403), not at its next record.
                if let Err(e) = source.authorized() { break End::from(e); }
            }
            _ = group_changed => {
                if let Err(end) = conn.group_event(&mut source, false).await { break end; }
            }
            _ = heartbeat.tick() => {
                if let Err(end) = conn.group_event(&mut source, true).await { break end; }
            }
            _ = async {
                match conn.credit_stalled {
                    Some(since) if is_member => tokio::time::sleep_until(since + opts.max_poll_interval).await,
                    _ => std::future::pending().await,
                }
            } => {
                break End::Close(
                    close::TIMEOUT,
                    "records waited max_poll_interval_ms for credit; the member left the group: reconnect".into(),
                );
            }
            _ = data, if follow => {
                if !can_send {
                    continue;
                }
                if !opts.linger.is_zero() {
                    tokio::time::sleep(opts.linger).await;
                }
                if let Err(end) = conn.send_records(&mut source).await { break end; }
            }
        }
    };
    conn.finish(&source, end).await;
}

impl<S> Conn<S>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    /// Sends a frame that was built (or failed to be built: a server fault that
    /// ends the stream rather than sending something broken).
    async fn send_frame(&mut self, frame: Result<String>) -> Result<(), End> {
        let text = frame.map_err(End::from)?;
        self.send_message(Message::Text(Utf8Bytes::from(text))).await.map_err(|()| End::ClientGone)
    }

    /// Sends one message; gives up on a client that does not read it within two
    /// ping intervals (its socket buffers are full and stay full).
    async fn send_message(&mut self, msg: Message) -> Result<(), ()> {
        let size = match &msg {
            Message::Text(t) => t.len(),
            _ => 0,
        };
        let metrics = self.service.metrics().clone();
        let _counted = metrics.buffer(size);
        let shutdown = self.service.shutdown_token();
        let send = tokio::time::timeout(self.opts.ping_interval * 2, self.sink.send(msg));
        tokio::pin!(send);
        let sent = |res: Result<Result<(), axum::Error>, _>| if matches!(res, Ok(Ok(()))) { Ok(()) } else { Err(()) };
        // Most sends finish at once (the socket has room): no timer for those.
        if let std::task::Poll::Ready(res) = futures_util::poll!(&mut send) {
            return sent(res);
        }
        // A send that waits keeps a group member's session alive meanwhile.
        let mut keepalive = self.keepalive.as_ref().map(|(keepalive, every)| {
            let mut tick = tokio::time::interval(*every);
            tick.reset();
            (keepalive, tick)
        });
        loop {
            tokio::select! {
                res = &mut send => return sent(res),
                keepalive = async {
                    match keepalive.as_mut() {
                        Some((keepalive, tick)) => {
                            tick.tick().await;
                            Some(*keepalive)
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(keepalive) = keepalive {
                        // A failure (the member was fenced) surfaces at the loop's next group event.
                        let _ = keepalive.touch().await;
                    }
                }
                _ = shutdown.cancelled() => return Err(()),
            }
        }
    }

    /// Counts the connection in `gregor_ws_credit_stalled` while records wait
    /// for credit the client has not granted.
    fn set_credit_stalled(&mut self, stalled: bool) {
        if stalled != self.credit_stalled.is_some() {
            self.credit_stalled = stalled.then(Instant::now);
            let gauge = &self.service.metrics().ws_credit_stalled;
            if stalled {
                gauge.inc();
            } else {
                gauge.dec();
            }
        }
    }

    async fn watch(&self, source: &Source) -> Result<Watch> {
        match source {
            Source::Topic(stream) => Ok(stream.watch()),
            Source::Group(member) => member.watch().await,
        }
    }

    fn budget(&self) -> usize {
        match self.credit {
            Some(c) => (c as usize).min(self.opts.max_records),
            None => self.opts.max_records,
        }
    }

    /// The record bytes of the next frame: the client's `max_bytes`, shrunk so
    /// that all connections' frames together stay near `FRAMES_BUDGET`. A frame
    /// in flight is held (and, once sent, its size stays reserved in the
    /// socket's write buffer), so with a thousand subscribers at 1 MiB a frame,
    /// half of them stalled, the server held over a gigabyte (the fault suite's
    /// 256 MiB memory-limit scenario was OOM-killed).
    fn frame_bytes(&self) -> usize {
        frame_share(self.opts.max_bytes, self.service.metrics().ws_connections.get().max(1) as usize)
    }

    async fn send_records(&mut self, source: &mut Source) -> Result<(), End> {
        let mut frame = RecordsFrame::new(self.opts.encoding, self.service.decoder());
        let budget = self.budget();
        let max_bytes = self.frame_bytes();
        match source {
            Source::Topic(stream) => stream.fetch(&mut frame, budget, max_bytes).await?,
            Source::Group(member) => {
                let summary = member.fetch(&mut frame, budget, max_bytes).await?;
                for (tp, code) in &summary.errors {
                    if self.reported.insert(tp.clone()) {
                        let msg = format!("cannot read {}/{}", tp.topic, tp.partition);
                        self.send_frame(frames::error(*code, &msg, None)).await?;
                    }
                }
                for (tp, first, end) in &summary.delivered {
                    self.acks.delivered(tp, *first, *end);
                }
            }
        }
        if frame.is_empty() {
            return Ok(());
        }
        let n = crate::service::RecordSink::count(&frame) as u64;
        if let Some(c) = self.credit.as_mut() {
            *c = c.saturating_sub(n);
        }
        self.service.metrics().ws_records_sent.inc_by(n);
        self.send_frame(frame.finish()).await
    }

    /// A group notification (`tick`: the heartbeat timer). Runs the revocation
    /// handshake: a heartbeat announces revocations (sent as an `assignment` frame);
    /// the release heartbeat waits until the client committed what it received
    /// from those partitions, or until half its session has passed.
    async fn group_event(&mut self, source: &mut Source, tick: bool) -> Result<(), End> {
        let Source::Group(member) = source else { return Ok(()) };
        if let Some(since) = self.revoking_since {
            let settled = member.revocation_settled().await?;
            if !settled && since.elapsed() < member.session_timeout() / 2 {
                return Ok(member.touch().await?);
            }
        } else if tick && !member.has_news().await? {
            // Nothing to announce or release: a keep-alive is enough.
            return Ok(member.touch().await?);
        }
        let revoked_before = member.view().revoked.clone();
        member.heartbeat().await?;
        let next = member.view();
        for tp in &revoked_before {
            if !next.assignment.contains(tp) {
                self.acks.forget(tp);
            }
        }
        self.revoking_since = (!next.revoked.is_empty()).then(Instant::now);
        let changed = next.changed || !next.revoked.is_empty();
        if changed {
            let frame = frames::assignment(&member.member_id(), next);
            self.send_frame(frame).await?;
            self.reported.clear();
            // New partitions may already hold records: read them now.
            self.send_records(source).await?;
        }
        Ok(())
    }

    async fn client_frame(
        &mut self,
        source: &mut Source,
        text: Utf8Bytes,
        out: &mpsc::Sender<Result<String>>,
        slots: &Arc<Semaphore>,
    ) -> Result<(), End> {
        let frame = match ClientFrame::parse(text.as_str()) {
            Ok(f) => f,
            Err(e) => return self.send_frame(frames::error(e.code, &e.message, e.id.as_ref())).await,
        };
        match frame {
            ClientFrame::Credit { records } => {
                self.credit = Some(self.credit.unwrap_or(0).saturating_add(records));
                Ok(())
            }
            ClientFrame::Produce { id, topic, partition, acks, idempotency_key, schemas, records } => {
                let topic = match (topic, &*source) {
                    (Some(t), _) => t,
                    (None, Source::Topic(stream)) => stream.topic().to_owned(),
                    (None, Source::Group(_)) => {
                        let msg = "a produce frame on a group stream names its topic";
                        return self.send_frame(frames::error(Code::InvalidFrame, msg, Some(&id))).await;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else { return Ok(()) };
                let (service, ctx, out, records) =
                    (self.service.clone(), self.ctx.clone(), out.clone(), records.get().to_owned());
                tokio::spawn(async move {
                    let acks = acks.unwrap_or_default();
                    let key = idempotency_key.as_deref();
                    let frame = produce(&service, &ctx, &topic, partition, acks, key, schemas, &records, &id).await;
                    let _ = out.send(frame).await;
                    drop(permit);
                });
                Ok(())
            }
            ClientFrame::Commit { offsets } => self.commit(source, offsets).await,
            ClientFrame::Ack { topic, partition, offset, records } => {
                let mut list = records;
                if let (Some(topic), Some(partition), Some(offset)) = (topic, partition, offset) {
                    list.push(OffsetEntry { topic, partition, offset });
                }
                if !matches!(source, Source::Group(_)) {
                    let f = frames::error(Code::NotAGroupStream, "ack frames need a group stream", None);
                    return self.send_frame(f).await;
                }
                let mut to_commit = BTreeMap::new();
                for e in &list {
                    let tp = TopicPartition::new(e.topic.clone(), e.partition);
                    match self.acks.ack(&tp, e.offset) {
                        Ok(Some(next)) => {
                            to_commit.insert(tp, next);
                        }
                        Ok(None) => {}
                        Err(AckError::NotDelivered) => {
                            let msg = format!(
                                "offset {} of {}/{} was not delivered on this connection",
                                e.offset, e.topic, e.partition
                            );
                            self.send_frame(frames::error(Code::AckNotDelivered, &msg, None)).await?;
                        }
                    }
                }
                if to_commit.is_empty() {
                    return Ok(());
                }
                let offsets = to_commit
                    .into_iter()
                    .map(|(tp, offset)| OffsetEntry { topic: tp.topic, partition: tp.partition, offset })
                    .collect();
                self.commit(source, offsets).await
            }
        }
    }

    async fn commit(&mut self, source: &mut Source, offsets: Vec<OffsetEntry>) -> Result<(), End> {
        let Source::Group(member) = &mut *source else {
            let f = frames::error(Code::NotAGroupStream, "commit frames need a group stream", None);
            return self.send_frame(f).await;
        };
        match member.commit(&offsets).await {
            Ok(()) => self.send_frame(frames::committed(&offsets)).await?,
            // Refusals (fenced, unknown partition) are the client's to know; the
            // socket stays. Server faults end it.
            Err(e) if !e.code().is_server_fault() => {
                self.send_frame(frames::error(e.code(), &e.public_detail(), None)).await?;
            }
            Err(e) => return Err(e.into()),
        }
        if self.revoking_since.is_some() {
            self.group_event(source, false).await?;
        }
        Ok(())
    }

    /// Leaves the group (if a member) and closes the socket with a close frame.
    async fn finish(mut self, source: &Source, end: End) {
        self.set_credit_stalled(false);
        if let Source::Group(member) = source
            && let Err(e) = member.leave().await
            && !matches!(e, Error::UnknownMember { .. } | Error::UnknownGroup(_))
        {
            tracing::warn!(error = %e, member = member.member_id(), "leaving the group at disconnect failed");
        }
        if let End::Close(code, reason) = end {
            let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
            let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.send(Message::Close(Some(frame)))).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
        self.service.metrics().ws_connections.dec();
    }
}

/// Handles one produce frame through the service's one produce path; returns
/// the `produced` or `error` frame.
#[allow(clippy::too_many_arguments)]
async fn produce(
    service: &Service,
    ctx: &RequestCtx,
    topic: &str,
    partition: Option<u32>,
    acks: Acks,
    idempotency_key: Option<&str>,
    schemas: crate::service::SchemaIds,
    records: &str,
    id: &serde_json::Value,
) -> Result<String> {
    let opts = crate::service::ProduceOpts { partition, acks, schemas };
    let produced = match (codec::parse_record_list(records), idempotency_key) {
        (Ok(records), None) => service.produce(ctx, topic, opts, &records).await.map(|p| (p, false)),
        (Ok(records), Some(key)) => service.produce_idempotent(ctx, topic, opts, &records, key).await,
        (Err(e), _) => Err(e),
    };
    match produced {
        Ok((Produced::Accepted { records }, replayed)) => frames::produced(id, None, records, replayed),
        Ok((Produced::Written(meta), replayed)) => frames::produced(id, Some(&meta), meta.len(), replayed),
        Err(e) => frames::error(e.code(), &e.public_detail(), Some(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All connections' frames together stay within the budget (the fault
    /// suite's memory-limit scenario was OOM-killed before), and a few
    /// connections keep the frames their clients asked for.
    #[test]
    fn frames_shrink_as_connections_grow() {
        assert_eq!(frame_share(1 << 20, 1), 1 << 20);
        assert_eq!(frame_share(1 << 20, 32), 1 << 20);
        assert_eq!(frame_share(1 << 20, 1_000), FRAMES_BUDGET / 1_000);
        assert!(frame_share(1 << 20, 1_000) * 1_000 <= FRAMES_BUDGET);
        assert_eq!(frame_share(1 << 20, 100_000), MIN_FRAME_BYTES, "never below the floor");
        assert_eq!(frame_share(4_096, 1_000), 4_096, "never above what the client asked");
    }
}
