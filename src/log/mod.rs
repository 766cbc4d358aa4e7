//! The domain core: topics, partitions, produce and read with Kafka's semantics.
//!
//! Knows nothing of HTTP. Changes go through the single writer thread (`writer`);
//! reads run on tokio's blocking pool against RocksDB directly, so they never wait
//! behind writes.

mod topic;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use topic::{BatchBytes, Partition, Registry, TAIL_CACHE_BYTES, TAIL_CACHE_TOTAL_BYTES, Topic};
use writer::{AppendJob, Command, Writer};

use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;
use crate::record::{self, BatchBuilder, NewRecord, StoredRecord};
use crate::store::Store;
use crate::topic::{TopicConfig, TopicConfigPatch, TopicName, validate_partition_count};

/// Kafka's `acks`, mapped onto HTTP answers (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Answer before the write (fire-and-forget).
    None,
    /// Answer once the write is in the WAL (survives a process crash).
    Leader,
    /// Answer once the WAL is fsynced (survives power loss). The default.
    #[default]
    All,
}

/// Settings of the log that come from the server's configuration.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Create a topic on the first produce to it.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    pub default_partitions: u32,
    /// Bytes of encoded records that may wait for the writer; beyond it produce
    /// requests are refused with `WriteQueueFull` instead of queueing.
    pub write_queue_bytes: usize,
    /// Commands that may wait for the writer.
    pub write_queue_len: usize,
}

/// Where one produced record landed (Kafka's `RecordMetadata`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: u64,
}

#[derive(Debug)]
pub enum Produced {
    /// `acks=none`: queued, not yet written.
    Accepted { records: usize },
    /// Written; one entry per record in request order.
    Written(Vec<RecordMetadata>),
}

/// A read from one partition.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest {
    pub offset: u64,
    pub max_records: u32,
    pub max_bytes: usize,
    pub wait: Duration,
}

/// Stored batches covering a read, and the window of offsets to return from them.
#[derive(Debug)]
pub struct ReadResult {
    batches: Vec<(u64, BatchBytes)>,
    from: u64,
    max_records: u32,
    max_bytes: usize,
    /// The partition's beginning offset when the read ran.
    pub beginning_offset: u64,
    /// The partition's end offset when the read ran (records beyond it are not returned).
    pub end_offset: u64,
}

impl ReadResult {
    /// The records, in offset order, within the request's count and byte limits
    /// (at least one record when any is available, as Kafka does).
    pub fn records(&self) -> Result<Vec<(u64, StoredRecord<'_>)>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'batches: for (base, data) in &self.batches {
            for (i, rec) in record::decode(data)?.enumerate() {
                let offset = base + i as u64;
                if offset < self.from {
                    continue;
                }
                if offset >= self.end_offset || out.len() >= self.max_records as usize {
                    break 'batches;
                }
                let rec = rec?;
                let size = stored_size(&rec);
                if !out.is_empty() && bytes + size > self.max_bytes {
                    break 'batches;
                }
                bytes += size;
                out.push((offset, rec));
            }
        }
        Ok(out)
    }
}

fn stored_size(r: &StoredRecord<'_>) -> usize {
    let blob = |b: &Option<record::Blob<'_>>| b.as_ref().map_or(0, |b| b.bytes.len());
    blob(&r.key) + blob(&r.value) + r.headers.iter().map(|h| h.name.len() + blob(&h.value)).sum::<usize>()
}

/// The answer to an offset-for-timestamp query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    /// The first offset whose timestamp is ≥ the query, or the end offset if none is.
    pub offset: u64,
    /// That record's timestamp; `None` when no record is that recent.
    pub timestamp: Option<u64>,
}

/// The log: the registry of topics, the store, and the writer thread's queue.
pub struct Log {
    registry: Arc<Registry>,
    store: Arc<Store>,
    tx: mpsc::Sender<Command>,
    /// The writer thread, joined by `close` or, failing that, on drop: the store
    /// must be closed before the process exits, or RocksDB's static teardown races it.
    writer: parking_lot::Mutex<Option<JoinHandle<()>>>,
    budget: Arc<Semaphore>,
    budget_total: usize,
    settings: LogSettings,
    shutdown: CancellationToken,
    failed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("store", &self.store).finish_non_exhaustive()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Log {
    /// Recovers the registry from the store and starts the writer thread.
    /// Blocking: call before serving (or from `spawn_blocking`).
    pub fn open(store: Arc<Store>, settings: LogSettings) -> Result<Arc<Log>> {
        let recovered = store.recover()?;
        let registry = Arc::new(Registry::default());
        for (meta, states) in &recovered.topics {
            registry.insert(Arc::new(Topic::new(meta, states, registry.tail_budget())?));
        }
        let failed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(settings.write_queue_len.max(1));
        let writer = Writer::new(store.clone(), registry.clone(), recovered.next_topic_id, failed.clone());
        let handle = std::thread::Builder::new()
            .name("gregor-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::Storage(format!("cannot start the writer thread: {e}")))?;
        let budget_total = settings.write_queue_bytes.clamp(1, u32::MAX as usize);
        let log = Log {
            registry,
            store,
            tx,
            writer: parking_lot::Mutex::new(Some(handle)),
            budget: Arc::new(Semaphore::new(budget_total)),
            budget_total,
            settings,
            shutdown: CancellationToken::new(),
            failed,
        };
        Ok(Arc::new(log))
    }

    /// True while the log accepts writes (not shutting down, store not failed).
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled() && !self.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Bytes the partitions' tail caches hold.
    pub fn tail_cache_bytes(&self) -> usize {
        self.registry.tail_cache_bytes()
    }

    /// Bytes of produce requests waiting for the writer.
    pub fn queued_bytes(&self) -> usize {
        self.budget_total - self.budget.available_permits()
    }

    /// Refuses new writes and wakes long-polls; in-flight writes still complete.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A token cancelled when shutdown begins.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Writes everything queued, flushes the store and stops the writer thread.
    pub async fn close(&self) -> Result<()> {
        self.begin_shutdown();
        let (reply, rx) = oneshot::channel();
        let flushed =
            if self.tx.send(Command::Shutdown { reply }).await.is_err() { Ok(()) } else { rx.await.unwrap_or(Ok(())) };
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        flushed
    }

    async fn command<T>(&self, make: impl FnOnce(writer::Reply<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.registry.list()
    }

    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.registry.get(name).ok_or_else(|| Error::UnknownTopic(name.to_owned()))
    }

    pub async fn create_topic(&self, name: &str, partitions: u32, config: &TopicConfigPatch) -> Result<Arc<Topic>> {
        let name = TopicName::parse(name)?;
        let partitions = validate_partition_count(partitions)?;
        let config = TopicConfig::default().apply(config)?;
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        self.command(|reply| Command::CreateTopic {
            name: name.to_string(),
            partitions,
            config,
            created_ms: now_ms(),
            reply,
        })
        .await
    }

    /// Changes a topic's configuration and/or grows its partition count.
    pub async fn update_topic(
        &self,
        name: &str,
        partitions: Option<u32>,
        patch: &TopicConfigPatch,
    ) -> Result<Arc<Topic>> {
        let topic = self.topic(name)?;
        if let Some(n) = partitions {
            validate_partition_count(n)?;
        }
        let config = if *patch == TopicConfigPatch::default() { None } else { Some(topic.config().apply(patch)?) };
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let t = topic.clone();
        self.command(|reply| Command::UpdateTopic { topic: t, partitions, config, reply }).await?;
        Ok(topic)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.topic(name)?;
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let name = name.to_owned();
        self.command(|reply| Command::DeleteTopic { name, reply }).await
    }

    /// Appends records. `partition` is set for the per-partition produce route and
    /// overrides each record's own choice (which must then agree or be absent).
    /// The records are validated whole before anything is queued: a request is
    /// stored entirely or not at all.
    pub async fn produce(
        &self,
        topic: &str,
        records: &[NewRecord<'_>],
        partition: Option<u32>,
        acks: Acks,
    ) -> Result<Produced> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let topic = match self.registry.get(topic) {
            Some(t) => t,
            None if self.settings.auto_create_topics => {
                match self.create_topic(topic, self.settings.default_partitions, &TopicConfigPatch::default()).await {
                    Ok(t) => t,
                    Err(Error::TopicExists(_)) => self.topic(topic)?,
                    Err(Error::InvalidTopicName(_)) => return Err(Error::UnknownTopic(topic.to_owned())),
                    Err(e) => return Err(e),
                }
            }
            None => return Err(Error::UnknownTopic(topic.to_owned())),
        };
        let (job, placement, timestamps) = self.encode(&topic, records, partition, acks)?;
        let count = records.len();
        let rx = self.enqueue(job)?;
        let Some((rx, partitions)) = rx else { return Ok(Produced::Accepted { records: count }) };
        let bases = rx.await.map_err(|_| Error::ShuttingDown)??;
        let metadata = placement
            .iter()
            .zip(timestamps)
            .map(|(&(slot, pos), timestamp)| RecordMetadata {
                partition: partitions.get(slot).copied().unwrap_or_default(),
                offset: bases.get(slot).copied().unwrap_or_default() + pos as u64,
                timestamp,
            })
            .collect();
        Ok(Produced::Written(metadata))
    }

    /// Validates and encodes a request into one batch per partition.
    /// Returns the job, each record's (batch slot, position in batch) and timestamp.
    #[allow(clippy::type_complexity)]
    fn encode(
        &self,
        topic: &Arc<Topic>,
        records: &[NewRecord<'_>],
        partition: Option<u32>,
        acks: Acks,
    ) -> Result<(PendingJob, Vec<(usize, u32)>, Vec<u64>)> {
        let partitions = topic.partitions().len() as u32;
        let max = topic.config().max_message_bytes;
        let now = now_ms();
        let mut sticky = None;
        let mut slots: Vec<(u32, BatchBuilder)> = Vec::new();
        let mut placement = Vec::with_capacity(records.len());
        let mut timestamps = Vec::with_capacity(records.len());
        for (index, rec) in records.iter().enumerate() {
            let size = rec.size();
            if size > max as usize {
                return Err(Error::RecordTooLarge { index, size, max });
            }
            if rec.headers.len() > u16::MAX as usize {
                return Err(Error::InvalidRecord {
                    index,
                    field: "headers",
                    reason: format!("at most {} headers per record", u16::MAX),
                });
            }
            if let Some(h) = rec.headers.iter().find(|h| h.name.len() > u16::MAX as usize) {
                return Err(Error::InvalidRecord {
                    index,
                    field: "headers",
                    reason: format!("header name of {} bytes; at most {}", h.name.len(), u16::MAX),
                });
            }
            let timestamp = match rec.timestamp {
                Some(ts) if ts > i64::MAX as u64 => {
                    return Err(Error::InvalidRecord {
                        index,
                        field: "timestamp",
                        reason: "a timestamp is at most 2^63-1 ms".into(),
                    });
                }
                Some(ts) => ts,
                None => now,
            };
            let p = match (partition, rec.partition) {
                (Some(route), Some(own)) if route != own => {
                    return Err(Error::InvalidRecord {
                        index,
                        field: "partition",
                        reason: format!("record names partition {own} but was posted to partition {route}"),
                    });
                }
                (Some(p), _) | (None, Some(p)) => p,
                (None, None) => match &rec.key {
                    Some(key) => partition_for_key(&key.bytes, partitions),
                    None => *sticky.get_or_insert_with(|| topic.next_sticky() % partitions),
                },
            };
            if p >= partitions {
                return Err(Error::UnknownPartition { topic: topic.name.to_string(), partition: p });
            }
            let slot = match slots.iter().position(|(sp, _)| *sp == p) {
                Some(s) => s,
                None => {
                    slots.push((p, BatchBuilder::new()));
                    slots.len() - 1
                }
            };
            let pos = slots[slot].1.push(rec, timestamp);
            placement.push((slot, pos));
            timestamps.push(timestamp);
        }
        let batches = slots.into_iter().map(|(p, b)| (p, b.finish())).collect();
        Ok((PendingJob { topic: topic.clone(), batches, acks }, placement, timestamps))
    }

    #[allow(clippy::type_complexity)]
    fn enqueue(&self, job: PendingJob) -> Result<Option<(oneshot::Receiver<Result<Vec<u64>>>, Vec<u32>)>> {
        let bytes: usize = job.batches.iter().map(|(_, b)| b.bytes.len()).sum();
        let permits = bytes.clamp(1, self.budget_total) as u32;
        let permit = self.budget.clone().try_acquire_many_owned(permits).map_err(|_| Error::WriteQueueFull)?;
        let partitions: Vec<u32> = job.batches.iter().map(|(p, _)| *p).collect();
        let (reply, rx) = match job.acks {
            Acks::None => (None, None),
            _ => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
        };
        let cmd = Command::Append(AppendJob {
            topic: job.topic,
            batches: job.batches,
            sync: job.acks == Acks::All,
            reply,
            permit,
        });
        self.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::WriteQueueFull,
            mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
        })?;
        Ok(rx.map(|rx| (rx, partitions)))
    }

    /// Reads records from one partition, long-polling up to `req.wait` when the
    /// offset is the end of the log.
    pub async fn read(&self, topic: &str, partition: u32, req: ReadRequest) -> Result<ReadResult> {
        let topic = self.topic(topic)?;
        let part = topic.partition(partition)?;
        let mut end_rx = part.subscribe();
        let end = *end_rx.borrow_and_update();
        let start = part.start();
        if req.offset < start || req.offset > end {
            return Err(Error::OffsetOutOfRange { offset: req.offset, beginning: start, end });
        }
        if req.offset == end && !req.wait.is_zero() {
            let wait = end_rx.wait_for(|e| *e > req.offset);
            tokio::select! {
                _ = tokio::time::timeout(req.wait, wait) => {}
                _ = self.shutdown.cancelled() => {}
            }
            if topic.is_deleted() {
                return Err(Error::UnknownTopic(topic.name.to_string()));
            }
        }
        let (start, end) = (part.start(), part.end());
        if req.offset < start {
            return Err(Error::OffsetOutOfRange { offset: req.offset, beginning: start, end });
        }
        let (tid, from) = (topic.id, req.offset);
        let (max_records, max_bytes) = (req.max_records.max(1), req.max_bytes.max(1));
        // Readers at the end of the log are served from the tail cache; others read the store.
        let batches = match part.cached(from, end, max_records as u64, max_bytes) {
            Some(batches) => batches,
            None => {
                let store = self.store.clone();
                let read = move || store.read(tid, partition, from, end, max_records as u64, max_bytes);
                self.blocking(read).await?.into_iter().map(|(base, bytes)| (base, Arc::new(bytes))).collect()
            }
        };
        Ok(ReadResult { batches, from, max_records, max_bytes, beginning_offset: start, end_offset: end })
    }

    /// Kafka's offsetsForTimes for one partition.
    pub async fn offset_for_timestamp(&self, topic: &str, partition: u32, timestamp: u64) -> Result<TimestampOffset> {
        let topic = self.topic(topic)?;
        let part = topic.partition(partition)?;
        let (start, end) = (part.start(), part.end());
        let store = self.store.clone();
        let tid = topic.id;
        let found = self.blocking(move || store.offset_for_timestamp(tid, partition, start, end, timestamp)).await?;
        Ok(match found {
            Some((offset, ts)) => TimestampOffset { offset, timestamp: Some(ts) },
            None => TimestampOffset { offset: end, timestamp: None },
        })
    }

    /// Applies retention to every partition of every topic as of `now_ms`.
    /// Returns how many partitions moved their beginning offset.
    pub async fn apply_retention(&self, now_ms: u64) -> Result<usize> {
        let mut moved = 0;
        for topic in self.topics() {
            let config = topic.config();
            let cutoff = (config.retention_ms >= 0).then(|| now_ms.saturating_sub(config.retention_ms as u64));
            let max_bytes = (config.retention_bytes >= 0).then_some(config.retention_bytes as u64);
            if cutoff.is_none() && max_bytes.is_none() {
                continue;
            }
            for part in topic.partitions().iter() {
                let (store, tid, p) = (self.store.clone(), topic.id, part.index);
                let (start, end) = (part.start(), part.end());
                let cut = self.blocking(move || store.retention_cut(tid, p, start, end, cutoff, max_bytes)).await?;
                if let Some(cut) = cut {
                    let t = topic.clone();
                    self.command(|reply| Command::Truncate { topic: t, partition: p, cut, reply }).await?;
                    moved += 1;
                }
            }
        }
        Ok(moved)
    }

    /// Durably stores committed offsets `(topic id, partition, offset)` for a group.
    pub async fn commit_offsets(&self, group: &str, offsets: Vec<(u32, u32, u64)>) -> Result<()> {
        let group = group.to_owned();
        self.command(|reply| Command::CommitOffsets { group, offsets, reply }).await
    }

    /// Removes a group's committed offsets.
    pub async fn delete_group_offsets(&self, group: &str) -> Result<()> {
        let group = group.to_owned();
        self.command(|reply| Command::DeleteGroup { group, reply }).await
    }

    /// Bytes held by the store (SST files and memtables).
    pub async fn store_size(&self) -> Result<u64> {
        let store = self.store.clone();
        self.blocking(move || store.size_bytes()).await
    }

    /// Every committed offset in the store: (group, topic id, partition, offset).
    pub async fn load_offsets(&self) -> Result<Vec<(String, u32, u32, u64)>> {
        let store = self.store.clone();
        self.blocking(move || store.load_offsets()).await
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        tokio::task::spawn_blocking(f).await.map_err(|e| Error::Storage(format!("store task failed: {e}")))?
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Not closed (e.g. a test that never shut its server down): close the queue so
        // that the writer drains it, flushes and ends, and wait for it.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(handle) = self.writer.get_mut().take() {
            let _ = handle.join();
        }
    }
}

/// An encoded request before it gets its queue permit.
struct PendingJob {
    topic: Arc<Topic>,
    batches: Vec<(u32, record::EncodedBatch)>,
    acks: Acks,
}
