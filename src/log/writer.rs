//! The single writer: one OS thread that owns every change to the store.
//!
//! Requests queue [`Command`]s on a bounded channel. The thread takes the first
//! command, then drains whatever else is already queued (up to a bound) into one
//! RocksDB `WriteBatch`: concurrent produce requests share one WAL write and, when
//! any of them asked for `acks=all`, one fsync (group commit). Offsets are assigned
//! here, in queue order, which is what makes them dense and unique per partition.
//! After the write succeeds the new end offsets are published (waking readers) and
//! each waiter gets its base offsets through its oneshot.
//!
//! A failed write poisons the writer: every later command fails with a storage
//! error, because the in-memory offsets can no longer be trusted to match the disk.
//! So does the thread's death (a panic unwinding out of `run`). A job is staged
//! whole or not at all: if staging one fails, the write is rebuilt without it.
//! On `Shutdown` the writer answers every command still queued (`ShuttingDown`)
//! before it stops, so that a waiter whose reply never comes knows the writer was lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::log::producers::{self, Check, ProducerState, Producers};
use crate::log::topic::{Partition, Registry, Topic};
use crate::record::{BatchError, EncodedBatch};
use crate::store::{Cut, PartitionState, Store, TopicMeta};
use crate::topic::TopicConfig;

/// The most produce requests merged into one write.
const MAX_GROUP: usize = 1024;
/// The most record bytes merged into one write.
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;

pub type Reply<T> = oneshot::Sender<Result<T>>;

/// A partition's offsets as the write being built will leave them; published
/// to the partition only once the write has succeeded.
struct Staged {
    partition: Arc<Partition>,
    end: u64,
    max_timestamp: Option<u64>,
}

/// Partitions touched by the write being built, by (topic id, partition).
type Touched = HashMap<(u32, u32), Staged>;

/// Idempotent producers' states as the write being built will leave them, by
/// (topic id, partition, producer id); kept only once the write has succeeded.
type StagedProducers = HashMap<(u32, u32, i64), ProducerState>;

/// What became of one batch of a job.
#[derive(Debug)]
enum Placement {
    /// Written at this base offset.
    Written(u64),
    /// A retry of an idempotent producer's batch stored at this base offset: not written again.
    Duplicate(u64),
    /// Refused by the idempotent producer rules; nothing written.
    Refused(BatchError),
}

/// A batch's answer: its base offset (a retried batch's is the first one's) or why the
/// idempotent producer rules refused it.
pub type Placed = std::result::Result<u64, BatchError>;

/// One produce request, encoded, waiting for its offsets.
#[derive(Debug)]
pub struct AppendJob {
    pub topic: Arc<Topic>,
    /// One encoded batch per partition the request writes to.
    pub batches: Vec<(u32, EncodedBatch)>,
    /// Fsync the WAL before answering (`acks=all`).
    pub sync: bool,
    /// Each batch's answer, in `batches` order; `None` for `acks=none`.
    pub reply: Option<Reply<Vec<Placed>>>,
    /// The job's share of the write-queue byte budget, released once written.
    pub permit: OwnedSemaphorePermit,
    /// An idempotency key and the answer to store under it, in the same write.
    pub idempotent: Option<(Vec<u8>, super::IdempotentAnswer)>,
}

#[derive(Debug)]
pub enum Command {
    Append(AppendJob),
    CreateTopic {
        name: String,
        partitions: u32,
        config: TopicConfig,
        created_ms: u64,
        reply: Reply<Arc<Topic>>,
    },
    UpdateTopic {
        topic: Arc<Topic>,
        partitions: Option<u32>,
        config: Option<TopicConfig>,
        reply: Reply<()>,
    },
    DeleteTopic {
        name: String,
        reply: Reply<()>,
    },
    Truncate {
        topic: Arc<Topic>,
        partition: u32,
        cut: Cut,
        reply: Reply<()>,
    },
    /// Stores committed offsets `(topic id, partition, offset)` of a group, and
    /// `at_ms` as the time the group was last in use, synced. No offsets: only the time.
    CommitOffsets {
        group: String,
        offsets: Vec<(u32, u32, u64)>,
        at_ms: u64,
        reply: Reply<()>,
    },
    /// Removes a group's committed offsets, synced.
    DeleteGroup {
        group: String,
        reply: Reply<()>,
    },
    /// Hands out a new producer id (Kafka's InitProducerId without a transactional id).
    InitProducerId {
        reply: Reply<i64>,
    },
    /// Forgets idempotent producers whose last batch on a partition is older than `before_ms`.
    ExpireProducers {
        before_ms: u64,
        reply: Reply<usize>,
    },
    /// Writes everything queued before it, flushes the store and stops the thread.
    Shutdown {
        reply: Reply<()>,
    },
}

/// The writer's health, shared with the log: `failed` poisons every later write;
/// `stopped` tells a lost writer from one that stopped because it was asked to.
#[derive(Debug, Default)]
pub struct WriterState {
    pub failed: AtomicBool,
    pub stopped: AtomicBool,
    /// How many idempotent producer states the writer holds (none: nothing to expire).
    pub producer_states: std::sync::atomic::AtomicUsize,
}

pub struct Writer {
    store: Arc<Store>,
    registry: Arc<Registry>,
    next_topic_id: u32,
    state: Arc<WriterState>,
    producers: Producers,
}

/// Poisons the log if the writer thread unwinds: whatever it was doing may be
/// half done, and nobody is left to write.
struct PoisonOnUnwind(Arc<WriterState>);

impl Drop for PoisonOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the writer thread panicked; refusing further writes");
            self.0.failed.store(true, Ordering::Release);
        }
    }
}

impl Writer {
    pub fn new(
        store: Arc<Store>,
        registry: Arc<Registry>,
        next_topic_id: u32,
        state: Arc<WriterState>,
        producers: Producers,
    ) -> Self {
        state.producer_states.store(producers.states.len(), Ordering::Release);
        Writer { store, registry, next_topic_id, state, producers }
    }

    /// Runs until a `Shutdown` command arrives or every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let _guard = PoisonOnUnwind(self.state.clone());
        while let Some(first) = rx.blocking_recv() {
            let mut group = Vec::new();
            let mut other = None;
            match first {
                Command::Append(job) => group.push(job),
                cmd => other = Some(cmd),
            }
            if other.is_none() {
                let mut bytes = group_bytes(&group);
                while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                    match rx.try_recv() {
                        Ok(Command::Append(job)) => {
                            bytes += job.batches.iter().map(|(_, b)| b.bytes.len()).sum::<usize>();
                            group.push(job);
                        }
                        Ok(cmd) => {
                            other = Some(cmd);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            if !group.is_empty() {
                self.append(group);
            }
            if let Some(cmd) = other
                && self.command(cmd)
            {
                // Nothing queued behind the shutdown is written: say so to each waiter.
                rx.close();
                while let Ok(cmd) = rx.try_recv() {
                    refuse(cmd, || Error::ShuttingDown);
                }
                return;
            }
        }
        // Every sender is gone without a Shutdown command: still leave the store flushed.
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "flushing the store on writer exit failed");
        }
    }

    fn poisoned(&self) -> Option<Error> {
        self.state
            .failed
            .load(Ordering::Acquire)
            .then(|| Error::Storage("the store refused an earlier write; restart the server".into()))
    }

    fn write(&self, batch: crate::store::StoreBatch<'_>, sync: bool) -> Result<()> {
        let res = self.store.write(batch, sync);
        if let Err(e) = &res {
            tracing::error!(error = %e, "store write failed; refusing further writes");
            self.state.failed.store(true, Ordering::Release);
        }
        res
    }

    /// Answers a waiter, unless a test asked for the reply to be lost.
    fn reply<T>(&self, to: Option<Reply<T>>, res: Result<T>) {
        if self.store.faults().reply_dropped() {
            return;
        }
        reply(to, res);
    }

    fn append(&mut self, mut group: Vec<AppendJob>) {
        if let Some(e) = self.poisoned() {
            for job in group {
                self.reply(job.reply, Err(clone_err(&e)));
            }
            return;
        }
        // Stage every job into one write. A job whose staging fails must leave
        // nothing behind, so the write is rebuilt from scratch without it; each
        // pass drops at least one job, so this ends.
        let mut refused: Vec<Option<Error>> = group.iter().map(|_| None).collect();
        let now = super::now_ms();
        // Room for the records and, per batch, its keys and index entry.
        let capacity = group_bytes(&group) + group.iter().map(|j| j.batches.len()).sum::<usize>() * 128;
        let (batch, touched, staged_producers, outcomes, sync) = 'build: loop {
            let mut batch = self.store.batch_with_capacity(capacity);
            let mut sync = false;
            let mut touched = Touched::new();
            let mut staged_producers = StagedProducers::new();
            let mut outcomes: Vec<Result<Vec<Placement>>> = Vec::with_capacity(group.len());
            for (i, job) in group.iter_mut().enumerate() {
                if let Some(e) = &refused[i] {
                    outcomes.push(Err(clone_err(e)));
                    continue;
                }
                if let Err(e) = check(job) {
                    // Refused before anything was staged: the write stays as it is.
                    outcomes.push(Err(e));
                    continue;
                }
                let staged = self.stage(job, &mut batch, &mut touched, &mut staged_producers, now).and_then(|placed| {
                    if let Some((key, answer)) = &job.idempotent {
                        let mut answer = answer.clone();
                        answer.bases = placed.iter().filter_map(Placement::base).collect();
                        let bytes = serde_json::to_vec(&answer).map_err(|e| Error::Internal(e.to_string()))?;
                        batch.put_meta(key, &bytes)?;
                    }
                    Ok(placed)
                });
                match staged {
                    Ok(placed) => {
                        sync |= job.sync;
                        outcomes.push(Ok(placed));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, topic = %job.topic.name, "staging a produce request failed");
                        refused[i] = Some(e);
                        continue 'build;
                    }
                }
            }
            break (batch, touched, staged_producers, outcomes, sync);
        };
        let written = if outcomes.iter().any(|o| o.is_ok()) { self.write(batch, sync) } else { Ok(()) };
        match written {
            Ok(()) => {
                // Cache first, then publish: a woken reader must find its batches.
                let mut replies = Vec::with_capacity(group.len());
                for (job, outcome) in group.into_iter().zip(outcomes) {
                    let answer = outcome.map(|placed| {
                        let partitions = job.topic.partitions();
                        let mut answers = Vec::with_capacity(placed.len());
                        for ((p, enc), placement) in job.batches.into_iter().zip(placed) {
                            if let (Placement::Written(base), Some(part)) = (&placement, partitions.get(p as usize)) {
                                part.add_stored(enc.bytes.len() as u64);
                                part.cache_batch(*base, enc.count, enc.bytes);
                            }
                            answers.push(placement.into_placed());
                        }
                        answers
                    });
                    replies.push((job.reply, answer));
                }
                if !staged_producers.is_empty() {
                    self.producers.states.extend(staged_producers);
                    self.count_producers();
                }
                for s in touched.into_values() {
                    s.partition.publish_end(s.end, s.max_timestamp);
                }
                for (r, outcome) in replies {
                    self.reply(r, outcome);
                }
            }
            Err(e) => {
                for job in group {
                    self.reply(job.reply, Err(clone_err(&e)));
                }
            }
        }
    }

    /// Assigns offsets to one job and adds its batches to the write; an idempotent
    /// producer's batch is first checked against its state (`producers::check`), and its
    /// new state joins the write. On an error the write holds part of the job and must
    /// be rebuilt without it.
    fn stage(
        &self,
        job: &mut AppendJob,
        batch: &mut crate::store::StoreBatch<'_>,
        touched: &mut Touched,
        staged_producers: &mut StagedProducers,
        now_ms: u64,
    ) -> Result<Vec<Placement>> {
        let partitions = job.topic.partitions();
        let mut placed = Vec::with_capacity(job.batches.len());
        for (p, enc) in &mut job.batches {
            let part = partitions
                .get(*p as usize)
                .ok_or_else(|| Error::UnknownPartition { topic: job.topic.name.to_string(), partition: *p })?;
            // An idempotent producer's batch: its key and its state before this batch, looked
            // up once for the check and for the state that follows.
            let producer = enc.producer.map(|seq| {
                let key = (job.topic.id, *p, seq.id);
                (key, seq, staged_producers.get(&key).or_else(|| self.producers.states.get(&key)))
            });
            if let Some((_, seq, state)) = &producer {
                match producers::check(*state, seq) {
                    Check::Append => {}
                    Check::Duplicate(base) => {
                        placed.push(Placement::Duplicate(base));
                        continue;
                    }
                    Check::Refused(e) => {
                        placed.push(Placement::Refused(e));
                        continue;
                    }
                }
            }
            let staged = touched.entry((job.topic.id, *p)).or_insert_with(|| Staged {
                partition: part.clone(),
                end: part.end(),
                max_timestamp: part.max_timestamp(),
            });
            let base = staged.end;
            // The base offset lies outside the batch's CRC: set here, as Kafka's broker does.
            crate::record::set_base_offset(&mut enc.bytes, base);
            let raises = staged.max_timestamp.is_none_or(|m| enc.max_timestamp > m);
            batch.append(job.topic.id, *p, base, enc, raises.then_some(enc.max_timestamp))?;
            staged.end = base + enc.count as u64;
            if raises {
                staged.max_timestamp = Some(enc.max_timestamp);
            }
            if let Some((key, seq, state)) = producer {
                let state = producers::advance(state, &seq, base, now_ms);
                batch.put_producer(key.0, key.1, key.2, Some(&state.encode()))?;
                staged_producers.insert(key, state);
            }
            placed.push(Placement::Written(base));
        }
        Ok(placed)
    }

    /// Applies a non-append command. Returns true when the thread should stop.
    fn command(&mut self, cmd: Command) -> bool {
        if let Command::Shutdown { reply: r } = cmd {
            self.state.stopped.store(true, Ordering::Release);
            let flushed = self.store.flush();
            self.reply(Some(r), flushed);
            return true;
        }
        if let Some(e) = self.poisoned() {
            refuse(cmd, || clone_err(&e));
            return false;
        }
        match cmd {
            Command::CreateTopic { name, partitions, config, created_ms, reply: r } => {
                let res = self.create_topic(name, partitions, config, created_ms);
                self.reply(Some(r), res);
            }
            Command::UpdateTopic { topic, partitions, config, reply: r } => {
                let res = self.update_topic(&topic, partitions, config);
                self.reply(Some(r), res);
            }
            Command::DeleteTopic { name, reply: r } => {
                let res = self.delete_topic(&name);
                self.reply(Some(r), res);
            }
            Command::Truncate { topic, partition, cut, reply: r } => {
                let res = self.truncate(&topic, partition, cut);
                self.reply(Some(r), res);
            }
            Command::CommitOffsets { group, offsets, at_ms, reply: r } => {
                let res = self.commit_offsets(&group, &offsets, at_ms);
                self.reply(Some(r), res);
            }
            Command::DeleteGroup { group, reply: r } => {
                let res = self.delete_group(&group);
                self.reply(Some(r), res);
            }
            Command::InitProducerId { reply: r } => {
                let res = self.init_producer_id();
                self.reply(Some(r), res);
            }
            Command::ExpireProducers { before_ms, reply: r } => {
                let res = self.expire_producers(before_ms);
                self.reply(Some(r), res);
            }
            Command::Append(job) => self.append(vec![job]),
            Command::Shutdown { .. } => {}
        }
        false
    }

    fn create_topic(
        &mut self,
        name: String,
        partitions: u32,
        config: TopicConfig,
        created_ms: u64,
    ) -> Result<Arc<Topic>> {
        if self.registry.get(&name).is_some() {
            return Err(Error::TopicExists(name));
        }
        let meta = TopicMeta { id: self.next_topic_id, name, partitions, config, created_ms };
        let mut batch = self.store.batch();
        batch.put_topic(&meta)?;
        batch.put_next_topic_id(meta.id + 1)?;
        self.write(batch, true)?;
        self.next_topic_id += 1;
        let empty = PartitionState { start: 0, end: 0, max_timestamp: None, bytes: 0 };
        let topic = Arc::new(Topic::new(&meta, &vec![empty; partitions as usize], self.registry.tail_budget())?);
        self.registry.insert(topic.clone());
        Ok(topic)
    }

    fn update_topic(&mut self, topic: &Arc<Topic>, partitions: Option<u32>, config: Option<TopicConfig>) -> Result<()> {
        if topic.is_deleted() {
            return Err(Error::UnknownTopic(topic.name.to_string()));
        }
        let mut meta = topic.meta();
        if let Some(n) = partitions {
            if n < meta.partitions {
                return Err(Error::InvalidPartitions(format!(
                    "partitions can only be added: the topic has {}, the request asks for {n}",
                    meta.partitions
                )));
            }
            meta.partitions = n;
        }
        if let Some(c) = &config {
            meta.config = c.clone();
        }
        let mut batch = self.store.batch();
        batch.put_topic(&meta)?;
        self.write(batch, true)?;
        if let Some(c) = config {
            topic.set_config(c);
        }
        topic.grow(meta.partitions);
        Ok(())
    }

    fn delete_topic(&mut self, name: &str) -> Result<()> {
        let topic = self.registry.get(name).ok_or_else(|| Error::UnknownTopic(name.to_owned()))?;
        let mut batch = self.store.batch();
        batch.delete_topic(topic.id, name)?;
        self.write(batch, true)?;
        let stored = topic.partitions().iter().map(|p| p.stored_bytes()).sum();
        self.store.note_removed(topic.id, stored, true);
        self.registry.remove(name);
        topic.mark_deleted();
        self.producers.states.retain(|(tid, _, _), _| *tid != topic.id);
        self.count_producers();
        Ok(())
    }

    fn truncate(&mut self, topic: &Arc<Topic>, partition: u32, cut: Cut) -> Result<()> {
        if topic.is_deleted() {
            return Ok(());
        }
        let part = topic.partition(partition)?;
        if cut.new_start <= part.start() {
            return Ok(());
        }
        let mut batch = self.store.batch();
        let removed = batch.truncate(topic.id, partition, cut)?;
        // Not synced: a truncation lost in a crash is simply decided again.
        self.write(batch, false)?;
        part.set_start(cut.new_start);
        part.remove_stored(removed);
        self.store.note_removed(topic.id, removed, false);
        Ok(())
    }
}

impl Writer {
    fn commit_offsets(&self, group: &str, offsets: &[(u32, u32, u64)], at_ms: u64) -> Result<()> {
        let mut batch = self.store.batch();
        batch.put_group_time(group, at_ms)?;
        for (tid, p, offset) in offsets {
            batch.put_offset(group, *tid, *p, *offset)?;
        }
        self.write(batch, true)
    }

    fn delete_group(&self, group: &str) -> Result<()> {
        let mut batch = self.store.batch();
        batch.delete_group(group)?;
        self.write(batch, true)
    }

    /// A new producer id, its successor stored (synced) before it is handed out, so an id
    /// is never handed out twice.
    fn init_producer_id(&mut self) -> Result<i64> {
        let id = self.producers.next_id;
        let next = id.checked_add(1).ok_or_else(|| Error::Internal("producer ids are exhausted".into()))?;
        let mut batch = self.store.batch();
        batch.put_next_producer_id(next)?;
        self.write(batch, true)?;
        self.producers.next_id = next;
        Ok(id)
    }

    fn expire_producers(&mut self, before_ms: u64) -> Result<usize> {
        let expired: Vec<(u32, u32, i64)> =
            self.producers.states.iter().filter(|(_, s)| s.last_ms < before_ms).map(|(k, _)| *k).collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let mut batch = self.store.batch();
        for (tid, p, id) in &expired {
            batch.put_producer(*tid, *p, *id, None)?;
        }
        // Not synced: an expiry lost in a crash is simply decided again.
        self.write(batch, false)?;
        for key in &expired {
            self.producers.states.remove(key);
        }
        self.count_producers();
        Ok(expired.len())
    }

    fn count_producers(&self) {
        self.state.producer_states.store(self.producers.states.len(), Ordering::Release);
    }
}

impl Placement {
    fn base(&self) -> Option<u64> {
        match self {
            Placement::Written(b) | Placement::Duplicate(b) => Some(*b),
            Placement::Refused(_) => None,
        }
    }

    fn into_placed(self) -> Placed {
        match self {
            Placement::Written(b) | Placement::Duplicate(b) => Ok(b),
            Placement::Refused(e) => Err(e),
        }
    }
}

fn group_bytes(group: &[AppendJob]) -> usize {
    group.iter().flat_map(|j| j.batches.iter()).map(|(_, b)| b.bytes.len()).sum()
}

/// Whether a job can be staged at all: its topic still exists with its partitions.
fn check(job: &AppendJob) -> Result<()> {
    if job.topic.is_deleted() {
        return Err(Error::UnknownTopic(job.topic.name.to_string()));
    }
    let count = job.topic.partitions().len();
    match job.batches.iter().find(|(p, _)| *p as usize >= count) {
        Some((p, _)) => Err(Error::UnknownPartition { topic: job.topic.name.to_string(), partition: *p }),
        None => Ok(()),
    }
}

/// Answers a command that will not be carried out.
fn refuse(cmd: Command, err: impl Fn() -> Error) {
    match cmd {
        Command::CreateTopic { reply: r, .. } => reply(Some(r), Err(err())),
        Command::UpdateTopic { reply: r, .. }
        | Command::DeleteTopic { reply: r, .. }
        | Command::Truncate { reply: r, .. }
        | Command::CommitOffsets { reply: r, .. }
        | Command::DeleteGroup { reply: r, .. }
        | Command::Shutdown { reply: r } => reply(Some(r), Err(err())),
        Command::InitProducerId { reply: r } => reply(Some(r), Err(err())),
        Command::ExpireProducers { reply: r, .. } => reply(Some(r), Err(err())),
        Command::Append(job) => reply(job.reply, Err(err())),
    }
}

fn reply<T>(to: Option<Reply<T>>, res: Result<T>) {
    if let Some(tx) = to {
        // The requester may have gone away (client disconnected); nothing to do then.
        let _ = tx.send(res);
    }
}

fn clone_err(e: &Error) -> Error {
    Error::Storage(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BatchBuilder, Blob, Format, NewRecord};
    use tokio::sync::Semaphore;

    fn batch(values: &[&str]) -> EncodedBatch {
        let mut b = BatchBuilder::new();
        for v in values {
            let rec = NewRecord {
                key: None,
                value: Some(Blob::new(Format::Text, v.as_bytes())),
                headers: vec![],
                timestamp: None,
                partition: None,
            };
            b.push(&rec, 1);
        }
        b.finish()
    }

    fn job(
        topic: &Arc<Topic>,
        batches: Vec<(u32, EncodedBatch)>,
    ) -> (AppendJob, oneshot::Receiver<Result<Vec<Placed>>>) {
        let (tx, rx) = oneshot::channel();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        (AppendJob { topic: topic.clone(), batches, sync: false, reply: Some(tx), permit, idempotent: None }, rx)
    }

    fn stored_values(store: &Store, tid: u32, p: u32, end: u64) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (base, bytes) in store.read(tid, p, 0, end, 1000, 1 << 20).unwrap().batches {
            for (i, rec) in crate::record::decode(&bytes).unwrap().iter().map(|r| r.map(|(_, r)| r)).enumerate() {
                let value = rec.unwrap().value.unwrap();
                out.push((base + i as u64, String::from_utf8(value.bytes.to_vec()).unwrap()));
            }
        }
        out
    }

    /// Jobs a, b, c are written together; staging b's second batch fails. b must
    /// leave nothing behind: not its first batch in the write, not its offsets in
    /// the partition's end (on the old code, c was written after b's half).
    #[test]
    fn a_job_whose_staging_fails_leaves_nothing_in_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let registry = Arc::new(Registry::default());
        let mut writer = Writer::new(store.clone(), registry, 1, Arc::default(), Producers::default());
        let topic = writer.create_topic("t".into(), 2, TopicConfig::default(), 0).unwrap();
        let (a, mut ra) = job(&topic, vec![(0, batch(&["a0"]))]);
        let (b, mut rb) = job(&topic, vec![(0, batch(&["b0", "b1"])), (1, batch(&["b2"]))]);
        let (c, mut rc) = job(&topic, vec![(0, batch(&["c0"])), (1, batch(&["c1"]))]);
        // a's append and b's first go through; b's second fails.
        store.faults().fail_append_after(2);
        writer.append(vec![a, b, c]);
        assert_eq!(ra.try_recv().unwrap().unwrap(), vec![Ok(0)]);
        assert!(matches!(rb.try_recv().unwrap(), Err(Error::Storage(_))));
        assert_eq!(rc.try_recv().unwrap().unwrap(), vec![Ok(1), Ok(0)], "c follows a directly");
        let (p0, p1) = (topic.partition(0).unwrap(), topic.partition(1).unwrap());
        assert_eq!((p0.end(), p1.end()), (2, 1));
        assert_eq!(stored_values(&store, topic.id, 0, 10), vec![(0, "a0".into()), (1, "c0".into())]);
        assert_eq!(stored_values(&store, topic.id, 1, 10), vec![(0, "c1".into())]);
        let recovered = store.recover().unwrap();
        let ends: Vec<u64> = recovered.topics[0].1.iter().map(|s| s.end).collect();
        assert_eq!(ends, vec![2, 1], "what recovery finds agrees with what was published");
        assert!(!writer.state.failed.load(Ordering::Acquire), "a staging failure is that job's, not the store's");
    }

    /// An idempotent producer's batch and its retry in the same write: the retry answers the
    /// first one's offset and stores nothing; the next batch follows on; a gap is refused
    /// without failing the other batches of its job. The states load back from the store.
    #[test]
    fn idempotent_batches_in_one_write_are_checked_against_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut writer = Writer::new(store.clone(), Arc::default(), 1, Arc::default(), Producers::default());
        let topic = writer.create_topic("t".into(), 2, TopicConfig::default(), 0).unwrap();
        let from = |values: &[&str], first: i32| {
            let mut b = batch(values);
            let last = first + values.len() as i32 - 1;
            b.producer = Some(crate::record::ProducerSeq { id: 9, epoch: 0, first, last });
            b
        };
        let (a, mut ra) = job(&topic, vec![(0, from(&["a0", "a1"], 0))]);
        let (b, mut rb) = job(&topic, vec![(0, from(&["a0", "a1"], 0))]);
        let (c, mut rc) = job(&topic, vec![(0, from(&["c0"], 5)), (1, from(&["c1"], 0))]);
        let (d, mut rd) = job(&topic, vec![(0, from(&["d0"], 2))]);
        writer.append(vec![a, b, c, d]);
        assert_eq!(ra.try_recv().unwrap().unwrap(), vec![Ok(0)]);
        assert_eq!(rb.try_recv().unwrap().unwrap(), vec![Ok(0)], "the retry answers the first offset");
        let c_answer = rc.try_recv().unwrap().unwrap();
        assert!(matches!(c_answer[0], Err(BatchError::OutOfOrderSequence { expected: 2, received: 5 })));
        assert_eq!(c_answer[1], Ok(0), "the same producer on another partition starts its own sequence");
        assert_eq!(rd.try_recv().unwrap().unwrap(), vec![Ok(2)]);
        assert_eq!(stored_values(&store, topic.id, 0, 10), vec![(0, "a0".into()), (1, "a1".into()), (2, "d0".into())]);
        assert_eq!(topic.partition(0).unwrap().end(), 3);
        let loaded = Producers::load(&store).unwrap();
        assert_eq!(loaded.states, writer.producers.states);
        assert_eq!(writer.state.producer_states.load(Ordering::Acquire), 2, "counted for the expiry's shortcut");
        assert_eq!(loaded.states[&(topic.id, 0, 9)].recent.len(), 2);
        assert_eq!(writer.init_producer_id().unwrap(), 0);
        assert_eq!(writer.init_producer_id().unwrap(), 1);
        assert_eq!(Producers::load(&store).unwrap().next_id, 2, "the next id is stored");
        assert_eq!(writer.expire_producers(u64::MAX).unwrap(), 2);
        assert_eq!(writer.state.producer_states.load(Ordering::Acquire), 0);
        assert!(Producers::load(&store).unwrap().states.is_empty());
    }

    /// A failed store write (a real RocksDB error) poisons the writer: later
    /// writes are refused even though the store would take them.
    #[test]
    fn a_failed_write_poisons_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut writer =
            Writer::new(store.clone(), Arc::new(Registry::default()), 1, Arc::default(), Producers::default());
        let topic = writer.create_topic("t".into(), 1, TopicConfig::default(), 0).unwrap();
        store.faults().fail_writes(1);
        let (a, mut ra) = job(&topic, vec![(0, batch(&["a"]))]);
        writer.append(vec![a]);
        assert!(matches!(ra.try_recv().unwrap(), Err(Error::Storage(_))));
        let (b, mut rb) = job(&topic, vec![(0, batch(&["b"]))]);
        writer.append(vec![b]);
        assert!(matches!(rb.try_recv().unwrap(), Err(Error::Storage(_))), "poisoned");
        assert_eq!(topic.partition(0).unwrap().end(), 0, "nothing published");
        assert!(stored_values(&store, topic.id, 0, 10).is_empty());
    }
}
