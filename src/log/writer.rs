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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::log::topic::{Partition, Registry, Topic};
use crate::record::EncodedBatch;
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

/// One produce request, encoded, waiting for its offsets.
#[derive(Debug)]
pub struct AppendJob {
    pub topic: Arc<Topic>,
    /// One encoded batch per partition the request writes to.
    pub batches: Vec<(u32, EncodedBatch)>,
    /// Fsync the WAL before answering (`acks=all`).
    pub sync: bool,
    /// Base offset of each batch, in `batches` order; `None` for `acks=none`.
    pub reply: Option<Reply<Vec<u64>>>,
    /// The job's share of the write-queue byte budget, released once written.
    pub permit: OwnedSemaphorePermit,
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
    /// Stores committed offsets `(topic id, partition, offset)` of a group, synced.
    CommitOffsets {
        group: String,
        offsets: Vec<(u32, u32, u64)>,
        reply: Reply<()>,
    },
    /// Removes a group's committed offsets, synced.
    DeleteGroup {
        group: String,
        reply: Reply<()>,
    },
    /// Writes everything queued before it, flushes the store and stops the thread.
    Shutdown {
        reply: Reply<()>,
    },
}

pub struct Writer {
    store: Arc<Store>,
    registry: Arc<Registry>,
    next_topic_id: u32,
    failed: Arc<AtomicBool>,
}

impl Writer {
    pub fn new(store: Arc<Store>, registry: Arc<Registry>, next_topic_id: u32, failed: Arc<AtomicBool>) -> Self {
        Writer { store, registry, next_topic_id, failed }
    }

    /// Runs until a `Shutdown` command arrives or every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
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
                return;
            }
        }
        // Every sender is gone without a Shutdown command: still leave the store flushed.
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "flushing the store on writer exit failed");
        }
    }

    fn poisoned(&self) -> Option<Error> {
        self.failed
            .load(Ordering::Acquire)
            .then(|| Error::Storage("the store refused an earlier write; restart the server".into()))
    }

    fn write(&self, batch: crate::store::StoreBatch<'_>, sync: bool) -> Result<()> {
        let res = self.store.write(batch, sync);
        if let Err(e) = &res {
            tracing::error!(error = %e, "store write failed; refusing further writes");
            self.failed.store(true, Ordering::Release);
        }
        res
    }

    fn append(&mut self, group: Vec<AppendJob>) {
        if let Some(e) = self.poisoned() {
            for job in group {
                reply(job.reply, Err(clone_err(&e)));
            }
            return;
        }
        let mut batch = self.store.batch();
        let mut sync = false;
        let mut touched = Touched::new();
        let mut outcomes: Vec<Result<Vec<u64>>> = Vec::with_capacity(group.len());
        for job in &group {
            outcomes.push(self.stage(job, &mut batch, &mut touched));
            sync |= job.sync && outcomes.last().is_some_and(|o| o.is_ok());
        }
        let written = if outcomes.iter().any(|o| o.is_ok()) { self.write(batch, sync) } else { Ok(()) };
        match written {
            Ok(()) => {
                // Cache first, then publish: a woken reader must find its batches.
                let mut replies = Vec::with_capacity(group.len());
                for (job, outcome) in group.into_iter().zip(outcomes) {
                    if let Ok(bases) = &outcome {
                        let partitions = job.topic.partitions();
                        for ((p, enc), base) in job.batches.into_iter().zip(bases) {
                            if let Some(part) = partitions.get(p as usize) {
                                part.cache_batch(*base, enc.count, enc.bytes);
                            }
                        }
                    }
                    replies.push((job.reply, outcome));
                }
                for s in touched.into_values() {
                    s.partition.publish_end(s.end, s.max_timestamp);
                }
                for (r, outcome) in replies {
                    reply(r, outcome);
                }
            }
            Err(e) => {
                for job in group {
                    reply(job.reply, Err(clone_err(&e)));
                }
            }
        }
    }

    /// Assigns offsets to one job and adds its batches to the write.
    fn stage(
        &self,
        job: &AppendJob,
        batch: &mut crate::store::StoreBatch<'_>,
        touched: &mut Touched,
    ) -> Result<Vec<u64>> {
        if job.topic.is_deleted() {
            return Err(Error::UnknownTopic(job.topic.name.to_string()));
        }
        let partitions = job.topic.partitions();
        for (p, _) in &job.batches {
            if partitions.get(*p as usize).is_none() {
                return Err(Error::UnknownPartition { topic: job.topic.name.to_string(), partition: *p });
            }
        }
        let mut bases = Vec::with_capacity(job.batches.len());
        for (p, enc) in &job.batches {
            let part = &partitions[*p as usize];
            let staged = touched.entry((job.topic.id, *p)).or_insert_with(|| Staged {
                partition: part.clone(),
                end: part.end(),
                max_timestamp: part.max_timestamp(),
            });
            let base = staged.end;
            let raises = staged.max_timestamp.is_none_or(|m| enc.max_timestamp > m);
            batch.append(job.topic.id, *p, base, enc, raises.then_some(enc.max_timestamp))?;
            staged.end = base + enc.count as u64;
            if raises {
                staged.max_timestamp = Some(enc.max_timestamp);
            }
            bases.push(base);
        }
        Ok(bases)
    }

    /// Applies a non-append command. Returns true when the thread should stop.
    fn command(&mut self, cmd: Command) -> bool {
        if let Command::Shutdown { reply: r } = cmd {
            let _ = r.send(self.store.flush());
            return true;
        }
        if let Some(e) = self.poisoned() {
            match cmd {
                Command::CreateTopic { reply: r, .. } => reply(Some(r), Err(e)),
                Command::UpdateTopic { reply: r, .. }
                | Command::DeleteTopic { reply: r, .. }
                | Command::Truncate { reply: r, .. }
                | Command::CommitOffsets { reply: r, .. }
                | Command::DeleteGroup { reply: r, .. } => reply(Some(r), Err(e)),
                Command::Append(job) => reply(job.reply, Err(e)),
                Command::Shutdown { .. } => {}
            }
            return false;
        }
        match cmd {
            Command::CreateTopic { name, partitions, config, created_ms, reply: r } => {
                let res = self.create_topic(name, partitions, config, created_ms);
                reply(Some(r), res);
            }
            Command::UpdateTopic { topic, partitions, config, reply: r } => {
                reply(Some(r), self.update_topic(&topic, partitions, config));
            }
            Command::DeleteTopic { name, reply: r } => reply(Some(r), self.delete_topic(&name)),
            Command::Truncate { topic, partition, cut, reply: r } => {
                reply(Some(r), self.truncate(&topic, partition, cut));
            }
            Command::CommitOffsets { group, offsets, reply: r } => {
                reply(Some(r), self.commit_offsets(&group, &offsets));
            }
            Command::DeleteGroup { group, reply: r } => reply(Some(r), self.delete_group(&group)),
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
        let empty = PartitionState { start: 0, end: 0, max_timestamp: None };
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
        self.registry.remove(name);
        topic.mark_deleted();
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
        batch.truncate(topic.id, partition, cut)?;
        // Not synced: a truncation lost in a crash is simply decided again.
        self.write(batch, false)?;
        part.set_start(cut.new_start);
        Ok(())
    }
}

impl Writer {
    fn commit_offsets(&self, group: &str, offsets: &[(u32, u32, u64)]) -> Result<()> {
        let mut batch = self.store.batch();
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
}

fn group_bytes(group: &[AppendJob]) -> usize {
    group.iter().flat_map(|j| j.batches.iter()).map(|(_, b)| b.bytes.len()).sum()
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
