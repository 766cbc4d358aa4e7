//! One WebSocket connection: a loop over the socket's send and receive halves,
//! the log's append notifications, the group's change notifications and timers,
//! under one `select!`. Generic over `Sink`/`Stream` so that it does not depend
//! on the transport.
//!
//! Memory per connection is bounded: at most one `records` frame is in flight
//! (the send is awaited, so a client that stops reading stops the log reads for
//! it), produce answers wait in a bounded channel, and at most `MAX_PENDING_PRODUCES`
//! produce frames are handled at once (beyond that the socket is not read).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::frames::{self, AckError, AckTracker, ClientFrame, FrameError, OffsetEntry, RecordsFrame};
use crate::error::Error;
use crate::group::{Groups, TopicPartition, View};
use crate::http::codec::{Encoding, RecordIn};
use crate::http::error::ApiError;
use crate::log::{Acks, Log, Produced, ReadRequest, Topic};
use crate::metrics::Metrics;

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
}

/// What the connection reads.
pub enum Source {
    /// Explicit partitions of a topic from explicit positions.
    Topic { topic: Arc<Topic>, positions: BTreeMap<u32, u64>, follow_new_partitions: bool },
    /// A group member: the group decides the partitions and positions.
    Group { group: String, member: String, view: View, session_ms: u64 },
}

/// Everything a connection shares with the server.
pub struct Ctx {
    pub log: Arc<Log>,
    pub groups: Arc<Groups>,
    pub metrics: Arc<Metrics>,
}

struct Conn<S> {
    sink: S,
    ctx: Ctx,
    opts: Options,
    credit: Option<u64>,
    acks: AckTracker,
    /// When a revocation was announced and not yet released.
    revoking_since: Option<Instant>,
    /// Partitions whose read errors were already reported to the client.
    reported: BTreeSet<TopicPartition>,
    last_heard: Instant,
}

/// Why the loop ended.
enum End {
    ClientGone,
    Close(u16, String),
}

pub async fn run<S, R>(sink: S, stream: R, ctx: Ctx, mut source: Source, opts: Options)
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
    ctx.metrics.ws_connections.inc();
    let shutdown = ctx.log.shutdown_token();
    let mut conn = Conn {
        sink,
        credit: opts.credit,
        opts,
        ctx,
        acks: AckTracker::default(),
        revoking_since: None,
        reported: BTreeSet::new(),
        last_heard: Instant::now(),
    };
    let (out_tx, mut out_rx) = mpsc::channel::<String>(MAX_PENDING_PRODUCES);
    let produce_slots = Arc::new(Semaphore::new(MAX_PENDING_PRODUCES));
    let mut ping = tokio::time::interval(opts.ping_interval);
    ping.reset();
    let mut changes = match &source {
        Source::Group { group, .. } => conn.ctx.groups.subscribe(group).ok(),
        Source::Topic { .. } => None,
    };
    let heartbeat_every = match &source {
        Source::Group { session_ms, .. } => Duration::from_millis((*session_ms / 3).max(10)),
        Source::Topic { .. } => Duration::from_secs(3600),
    };
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.reset();

    if let Source::Group { member, view, .. } = &source {
        let frame = frames::assignment(member, view);
        if conn.send(frame).await.is_err() {
            conn.finish(&source, End::ClientGone).await;
            return;
        }
        if let Err(end) = conn.send_records(&mut source).await {
            conn.finish(&source, end).await;
            return;
        }
    }

    let end = loop {
        let mut ends = conn.watch_ends(&source).await;
        let ready = ends.iter().any(|(pos, rx)| *rx.borrow() > *pos);
        let can_send = conn.credit != Some(0);
        let data = async {
            if ready {
                return;
            }
            if ends.is_empty() {
                std::future::pending::<()>().await;
            }
            let _ = futures_util::future::select_all(ends.iter_mut().map(|(_, rx)| rx.changed().boxed())).await;
        };
        let group_changed = async {
            match changes.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
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
                        let frame = frames::error("binary_frames_unsupported", "send JSON text frames", None);
                        if conn.send(frame).await.is_err() { break End::ClientGone; }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            Some(frame) = out_rx.recv() => {
                if conn.send(frame).await.is_err() { break End::ClientGone; }
            }
            _ = ping.tick() => {
                if conn.last_heard.elapsed() > opts.ping_interval * 2 {
                    break End::Close(close::TIMEOUT, "no pong or frame from the client".into());
                }
                if conn.send_message(Message::Ping(Default::default())).await.is_err() { break End::ClientGone; }
            }
            _ = group_changed => {
                if let Err(end) = conn.group_event(&mut source, false).await { break end; }
            }
            _ = heartbeat.tick() => {
                if let Err(end) = conn.group_event(&mut source, true).await { break end; }
            }
            _ = data, if can_send => {
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
    async fn send(&mut self, frame: String) -> Result<(), ()> {
        self.send_message(Message::Text(Utf8Bytes::from(frame))).await
    }

    /// Sends one message; gives up on a client that does not read it within two
    /// ping intervals (its socket buffers are full and stay full).
    async fn send_message(&mut self, msg: Message) -> Result<(), ()> {
        let size = match &msg {
            Message::Text(t) => t.len(),
            _ => 0,
        };
        let metrics = self.ctx.metrics.clone();
        let _counted = metrics.buffer(size);
        let shutdown = self.ctx.log.shutdown_token();
        tokio::select! {
            res = tokio::time::timeout(self.opts.ping_interval * 2, self.sink.send(msg)) => match res {
                Ok(Ok(())) => Ok(()),
                _ => Err(()),
            },
            _ = shutdown.cancelled() => Err(()),
        }
    }

    /// The end-offset watch of every partition the connection reads, with its
    /// position (`u64::MAX` while a group partition's position is not known yet:
    /// it becomes known at the next read, which an assignment change triggers).
    async fn watch_ends(&self, source: &Source) -> Vec<(u64, tokio::sync::watch::Receiver<u64>)> {
        match source {
            Source::Topic { topic, positions, .. } => positions
                .iter()
                .filter_map(|(p, pos)| topic.partition(*p).ok().map(|part| (*pos, part.subscribe())))
                .collect(),
            Source::Group { group, member, view, .. } => {
                let positions = self.ctx.groups.positions(group, member).await.unwrap_or_default();
                positions
                    .into_iter()
                    .filter(|(tp, _)| view.assignment.contains(tp))
                    .filter_map(|(tp, pos)| {
                        let part = self.ctx.log.topic(&tp.topic).ok()?.partition(tp.partition).ok()?;
                        Some((pos.unwrap_or(u64::MAX), part.subscribe()))
                    })
                    .collect()
            }
        }
    }

    fn budget(&self) -> usize {
        match self.credit {
            Some(c) => (c as usize).min(self.opts.max_records),
            None => self.opts.max_records,
        }
    }

    async fn send_records(&mut self, source: &mut Source) -> Result<(), End> {
        let mut frame = RecordsFrame::new(self.opts.encoding);
        let budget = self.budget();
        match source {
            Source::Topic { topic, positions, follow_new_partitions } => {
                if topic.is_deleted() {
                    return Err(End::Close(close::GONE, format!("topic '{}' was deleted", topic.name)));
                }
                if *follow_new_partitions {
                    for p in positions.len() as u32..topic.partitions().len() as u32 {
                        positions.insert(p, 0);
                    }
                }
                for (p, pos) in positions.iter_mut() {
                    let remaining = budget - frame.count();
                    if remaining == 0 || frame.len() >= self.opts.max_bytes {
                        break;
                    }
                    let req = ReadRequest {
                        offset: *pos,
                        max_records: remaining as u32,
                        max_bytes: self.opts.max_bytes.saturating_sub(frame.len()).max(1),
                        wait: Duration::ZERO,
                    };
                    match self.ctx.log.read(topic.name.as_str(), *p, req).await {
                        Ok(read) => {
                            let records = read.records().map_err(fatal)?;
                            self.ctx.metrics.records_out(topic.name.as_str(), records.len());
                            for (offset, rec) in records {
                                frame.push(topic.name.as_str(), *p, offset, &rec);
                                *pos = offset + 1;
                            }
                        }
                        // Retention removed records the stream had not reached: skip ahead.
                        Err(Error::OffsetOutOfRange { beginning, .. }) if *pos < beginning => *pos = beginning,
                        Err(Error::OffsetOutOfRange { .. }) => {}
                        Err(Error::UnknownTopic(_)) => {
                            return Err(End::Close(close::GONE, format!("topic '{}' was deleted", topic.name)));
                        }
                        Err(e) => return Err(fatal(e)),
                    }
                }
            }
            Source::Group { group, member, view, .. } => {
                let polled = match self.ctx.groups.read(group, member, budget as u32, &view.assignment).await {
                    Ok(p) => p,
                    Err(Error::UnknownMember { .. }) => {
                        return Err(End::Close(close::FENCED, "the member's session expired; reconnect".into()));
                    }
                    Err(e) => return Err(fatal(e)),
                };
                for (tp, code) in &polled.errors {
                    if self.reported.insert(tp.clone()) {
                        let msg = format!("cannot read {}/{}", tp.topic, tp.partition);
                        self.send(frames::error(code, &msg, None)).await.map_err(|()| End::ClientGone)?;
                    }
                }
                for (tp, read) in &polled.records {
                    let records = read.records().map_err(fatal)?;
                    self.ctx.metrics.records_out(&tp.topic, records.len());
                    if let (Some((first, _)), Some((last, _))) = (records.first(), records.last()) {
                        self.acks.delivered(tp, *first, last + 1);
                    }
                    for (offset, rec) in records {
                        frame.push(&tp.topic, tp.partition, offset, &rec);
                    }
                }
            }
        }
        if frame.is_empty() {
            return Ok(());
        }
        let n = frame.count() as u64;
        if let Some(c) = self.credit.as_mut() {
            *c = c.saturating_sub(n);
        }
        self.ctx.metrics.ws_records_sent.inc_by(n);
        self.send(frame.finish()).await.map_err(|()| End::ClientGone)
    }

    /// A group notification (`tick`: the heartbeat timer). Runs the revocation
    /// handshake: a heartbeat announces revocations (sent as an `assignment` frame);
    /// the release heartbeat waits until the client committed what it received
    /// from those partitions, or until half its session has passed.
    async fn group_event(&mut self, source: &mut Source, tick: bool) -> Result<(), End> {
        let Source::Group { group, member, view, session_ms } = source else { return Ok(()) };
        if let Some(since) = self.revoking_since {
            let settled = self.ctx.groups.revocation_settled(group, member).await.unwrap_or(true);
            if !settled && since.elapsed() < Duration::from_millis(*session_ms / 2) {
                return self.ctx.groups.touch(group, member).await.map_err(member_error);
            }
        } else if tick && !self.ctx.groups.has_news(group, member).await.map_err(member_error)? {
            // Nothing to announce or release: a keep-alive is enough.
            return self.ctx.groups.touch(group, member).await.map_err(member_error);
        }
        let next = self.ctx.groups.heartbeat(group, member).await.map_err(member_error)?;
        for tp in &view.revoked {
            if !next.assignment.contains(tp) {
                self.acks.forget(tp);
            }
        }
        self.revoking_since = (!next.revoked.is_empty()).then(Instant::now);
        let changed = next.changed || !next.revoked.is_empty();
        *view = next;
        if changed {
            let frame = frames::assignment(member, view);
            self.send(frame).await.map_err(|()| End::ClientGone)?;
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
        out: &mpsc::Sender<String>,
        slots: &Arc<Semaphore>,
    ) -> Result<(), End> {
        let frame = match ClientFrame::parse(text.as_str()) {
            Ok(f) => f,
            Err(e) => {
                let (code, message) = match e {
                    FrameError::Json(e) => ("invalid_json", e.to_string()),
                    FrameError::Frame(m) => ("invalid_frame", m),
                };
                return self.send(frames::error(code, &message, None)).await.map_err(|()| End::ClientGone);
            }
        };
        match frame {
            ClientFrame::Credit { records } => {
                self.credit = Some(self.credit.unwrap_or(0).saturating_add(records));
                Ok(())
            }
            ClientFrame::Produce { id, topic, partition, acks, records } => {
                let topic = match (topic, &*source) {
                    (Some(t), _) => t,
                    (None, Source::Topic { topic, .. }) => topic.name.to_string(),
                    (None, Source::Group { .. }) => {
                        let f = frames::error(
                            "invalid_frame",
                            "a produce frame on a group stream names its topic",
                            Some(&id),
                        );
                        return self.send(f).await.map_err(|()| End::ClientGone);
                    }
                };
                let acks = match acks.as_deref() {
                    None | Some("all") | Some("-1") => Acks::All,
                    Some("leader") | Some("1") => Acks::Leader,
                    Some("none") | Some("0") => Acks::None,
                    Some(other) => {
                        let f = frames::error("invalid_frame", &format!("unknown acks '{other}'"), Some(&id));
                        return self.send(f).await.map_err(|()| End::ClientGone);
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else { return Ok(()) };
                let (log, out, records) = (self.ctx.log.clone(), out.clone(), records.get().to_owned());
                let metrics = self.ctx.metrics.clone();
                tokio::spawn(async move {
                    let frame = produce(&log, &metrics, &topic, partition, acks, &records, &id).await;
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
                if !matches!(source, Source::Group { .. }) {
                    let f = frames::error("not_a_group_stream", "ack frames need a group stream", None);
                    return self.send(f).await.map_err(|()| End::ClientGone);
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
                            self.send(frames::error("ack_not_delivered", &msg, None))
                                .await
                                .map_err(|()| End::ClientGone)?;
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
        let Source::Group { group, member, view, .. } = &*source else {
            let f = frames::error("not_a_group_stream", "commit frames need a group stream", None);
            return self.send(f).await.map_err(|()| End::ClientGone);
        };
        let list: Vec<(String, u32, u64)> = offsets.iter().map(|o| (o.topic.clone(), o.partition, o.offset)).collect();
        match self.ctx.groups.commit(group, member, view.generation, &list).await {
            Ok(()) => self.send(frames::committed(&offsets)).await.map_err(|()| End::ClientGone)?,
            Err(e) => {
                let problem = ApiError::from(e).problem();
                self.send(frames::error(problem.code, &problem.detail, None)).await.map_err(|()| End::ClientGone)?;
            }
        }
        if self.revoking_since.is_some() {
            self.group_event(source, false).await?;
        }
        Ok(())
    }

    /// Leaves the group (if a member) and closes the socket with a close frame.
    async fn finish(mut self, source: &Source, end: End) {
        if let Source::Group { group, member, .. } = source {
            let _ = self.ctx.groups.leave(group, member).await;
        }
        if let End::Close(code, reason) = end {
            let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
            let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.send(Message::Close(Some(frame)))).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
        self.ctx.metrics.ws_connections.dec();
    }
}

fn fatal(e: Error) -> End {
    tracing::error!(error = %e, "websocket stream failed");
    End::Close(close::INTERNAL, "the server failed to read the log".into())
}

fn member_error(e: Error) -> End {
    match e {
        Error::UnknownMember { .. } | Error::UnknownGroup(_) => {
            End::Close(close::FENCED, "the member's session expired; reconnect".into())
        }
        e => fatal(e),
    }
}

/// Handles one produce frame; returns the `produced` or `error` frame.
async fn produce(
    log: &Log,
    metrics: &Metrics,
    topic: &str,
    partition: Option<u32>,
    acks: Acks,
    records: &str,
    id: &serde_json::Value,
) -> String {
    let parsed: Result<Vec<RecordIn<'_>>, _> = serde_json::from_str(records);
    let parsed = match parsed {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => return frames::error("invalid_request", "records: give at least one record", Some(id)),
        Err(e) => return frames::error("invalid_request", &e.to_string(), Some(id)),
    };
    let converted: Result<Vec<_>, Error> = parsed.into_iter().enumerate().map(|(i, r)| r.into_record(i)).collect();
    let result = match converted {
        Ok(recs) => {
            let res = log.produce(topic, &recs, partition, acks).await;
            if res.is_ok() {
                metrics.records_in(topic, recs.len());
            }
            res
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(Produced::Accepted { records }) => frames::produced(id, None, records),
        Ok(Produced::Written(meta)) => {
            let offsets: Vec<frames::ProducedOffset> = meta
                .iter()
                .map(|m| frames::ProducedOffset { partition: m.partition, offset: m.offset, timestamp: m.timestamp })
                .collect();
            frames::produced(id, Some(&offsets), offsets.len())
        }
        Err(e) => {
            let problem = ApiError::from(e).problem();
            frames::error(problem.code, &problem.detail, Some(id))
        }
    }
}
