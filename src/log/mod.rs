//! The domain core: topics, partitions, produce and read with Kafka's semantics.
//!
//! Knows nothing of HTTP. Changes go through the single writer thread (`writer`);
//! reads run on tokio's blocking pool against RocksDB directly, so they never wait
//! behind writes.

pub mod producers;
mod topic;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use topic::{BatchBytes, Partition, Registry, TAIL_CACHE_BYTES, TAIL_CACHE_TOTAL_BYTES, Topic};
use writer::{AppendJob, Command, Writer, WriterState};

use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;
use crate::record::{self, BatchBuilder, NewRecord, StoredRecord};
use crate::store::Store;
use crate::topic::{TopicConfig, TopicConfigPatch, TopicName, validate_partition_count};

/// Kafka's `acks`, mapped onto HTTP answers (SPEC §2). Spelled `none`, `leader`,
/// `all`, or Kafka's `0`, `1`, `-1`, wherever a transport takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Answer before the write (fire-and-forget).
    #[serde(alias = "0")]
    None,
    /// Answer once the write is in the WAL (survives a process crash).
    #[serde(alias = "1")]
    Leader,
    /// Answer once the WAL is fsynced (survives power loss). The default.
    #[default]
    #[serde(alias = "-1")]
    All,
}

impl std::str::FromStr for Acks {
    type Err = Error;

    /// The same spellings as the serde form, by the same rule.
    fn from_str(s: &str) -> Result<Self> {
        use serde::Deserialize;
        let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s);
        Acks::deserialize(de)
            .map_err(|_| Error::parameter("acks", format!("unknown acks '{s}'; use none, leader or all")))
    }
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
    /// When the batches were read into one buffer (from the store): all of them, back to
    /// back, each batch a slice of it.
    back_to_back: Option<Bytes>,
    /// Per batch: its records inflated, for compressed batches once a reader decodes them.
    inflated: Vec<record::Inflated>,
    from: u64,
    max_records: u32,
    max_bytes: usize,
    /// The partition's beginning offset when the read ran.
    pub beginning_offset: u64,
    /// The partition's end offset when the read ran (records beyond it are not returned).
    pub end_offset: u64,
}

impl ReadResult {
    /// A read's answer from batches fetched elsewhere (the Kafka backend): `batches` in
    /// offset order, each a RecordBatch v2 with its base offset.
    pub fn from_batches(
        batches: Vec<(u64, BatchBytes)>,
        from: u64,
        max_records: u32,
        max_bytes: usize,
        beginning_offset: u64,
        end_offset: u64,
    ) -> ReadResult {
        let inflated = batches.iter().map(|_| record::Inflated::new()).collect();
        ReadResult { batches, back_to_back: None, inflated, from, max_records, max_bytes, beginning_offset, end_offset }
    }

    /// The stored batches the read found, as stored (what Kafka's Fetch sends): the first
    /// holds the requested offset, none starts at or past the end offset.
    fn raw_batches(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.batches.iter().filter(|(base, _)| *base < self.end_offset).map(|(base, b)| (*base, &b[..]))
    }

    /// The stored batches that fit in `limit` bytes, back to back (with `at_least_one`, the
    /// first one even if it does not fit): a partition's records in a Kafka Fetch answer.
    /// Shares the read's buffer, without a copy, when the batches were read into one or when
    /// there is only one.
    pub fn raw_prefix(&self, limit: usize, at_least_one: bool) -> Bytes {
        let (mut count, mut size) = (0, 0);
        for (_, batch) in self.raw_batches() {
            if (count > 0 || !at_least_one) && size + batch.len() > limit {
                break;
            }
            count += 1;
            size += batch.len();
        }
        // `raw_batches` leaves out only trailing batches, so these are the first `count`.
        match (&self.back_to_back, &self.batches[..count]) {
            (_, []) => Bytes::new(),
            (_, [(_, only)]) => only.clone(),
            (Some(all), _) => all.slice(..size),
            (None, batches) => {
                let mut out = BytesMut::with_capacity(size);
                for (_, batch) in batches {
                    out.extend_from_slice(batch);
                }
                out.freeze()
            }
        }
    }

    /// The records, in offset order, within the request's count and byte limits
    /// (at least one record when any is available, as Kafka does).
    pub fn records(&self) -> Result<Vec<(u64, StoredRecord<'_>)>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'batches: for ((base, data), cell) in self.batches.iter().zip(&self.inflated) {
            for rec in record::decode_into(data, cell)? {
                let (delta, rec) = rec?;
                let offset = base + delta;
                if offset < self.from {
                    continue;
                }
                if offset >= self.end_offset || out.len() >= self.max_records as usize {
                    break 'batches;
                }
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

/// The bytes of a record that limits and quotas count: key, value, header names and values.
pub fn stored_size(r: &StoredRecord<'_>) -> usize {
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

/// What one retention pass did.
#[derive(Debug, Default)]
pub struct RetentionReport {
    /// Partitions whose beginning offset moved.
    pub moved: usize,
    /// Partitions that could not be processed: topic, partition, why.
    pub failed: Vec<(String, u32, Error)>,
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
    /// The writer's health: failed (poisoned) or stopped on request.
    writer_state: Arc<WriterState>,
    /// Reads waiting in a long-poll (`gregor_reads_waiting`).
    reads_waiting: AtomicUsize,
    /// How long an idempotency key's first answer is replayed (ms).
    idempotency_window_ms: AtomicU64,
    /// How long an idempotent producer's state outlives its last batch on a partition (ms).
    producer_expiry_ms: AtomicU64,
    /// Per idempotency key in use, a lock: a retry racing its original waits
    /// for it, then replays its answer.
    idempotency_locks: parking_lot::Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
}

/// A produce's idempotency key, scoped to the principal that sent it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey<'a> {
    pub principal: &'a str,
    pub key: &'a str,
}

/// The first answer to an idempotent produce, as stored beside its records
/// (written in the same atomic write).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct IdempotentAnswer {
    /// SHA-256 of the request: a key reused for another request is refused.
    pub fingerprint: String,
    /// When it was written (ms since the epoch).
    pub at_ms: u64,
    /// `acks=none`: how many records were accepted (no offsets were promised).
    pub accepted: Option<usize>,
    pub placement: Vec<(usize, u32)>,
    pub timestamps: Vec<u64>,
    pub partitions: Vec<u32>,
    /// Filled in by the writer.
    pub bases: Vec<u64>,
}

/// Default replay window of idempotency keys: a day, as common HTTP APIs keep them.
pub const DEFAULT_IDEMPOTENCY_WINDOW_MS: u64 = 86_400_000;

/// Default lifetime of an idempotent producer's state after its last batch: a day, as
/// Kafka's `producer.id.expiration.ms`.
pub const DEFAULT_PRODUCER_EXPIRY_MS: u64 = 86_400_000;

/// Batches queued for the writer by [`Log::submit_batches`], not yet known to be written.
#[derive(Debug)]
pub struct Submitted(oneshot::Receiver<Result<Vec<writer::Placed>>>);

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
    /// Whether producing to a missing topic creates it.
    pub fn auto_creates(&self) -> bool {
        self.settings.auto_create_topics
    }

    pub fn open(store: Arc<Store>, settings: LogSettings) -> Result<Arc<Log>> {
        let migrated = store.migrate()?;
        if migrated > 0 {
            tracing::info!(batches = migrated, "migrated stored batches to Kafka's RecordBatch v2");
        }
        let recovered = store.recover()?;
        let registry = Arc::new(Registry::default());
        for (meta, states) in &recovered.topics {
            registry.insert(Arc::new(Topic::new(meta, states, registry.tail_budget())?));
        }
        let writer_state = Arc::new(WriterState::default());
        let (tx, rx) = mpsc::channel(settings.write_queue_len.max(1));
        let producers = producers::Producers::load(&store)?;
        let writer =
            Writer::new(store.clone(), registry.clone(), recovered.next_topic_id, writer_state.clone(), producers);
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
            writer_state,
            reads_waiting: AtomicUsize::new(0),
            idempotency_window_ms: AtomicU64::new(DEFAULT_IDEMPOTENCY_WINDOW_MS),
            producer_expiry_ms: AtomicU64::new(DEFAULT_PRODUCER_EXPIRY_MS),
            idempotency_locks: parking_lot::Mutex::new(HashMap::new()),
        };
        Ok(Arc::new(log))
    }

    /// How long an idempotency key's first answer is replayed.
    pub fn set_idempotency_window(&self, window: std::time::Duration) {
        self.idempotency_window_ms.store(window.as_millis() as u64, Ordering::Release);
    }

    /// Appends records once per idempotency key: a request repeating a key sent
    /// within the window gets the first answer again and writes nothing
    /// (`true`: replayed). The key and the first answer are stored in the same
    /// atomic write as the records, so a crash keeps both or neither.
    pub async fn produce_idempotent(
        &self,
        topic: &str,
        records: &[NewRecord<'_>],
        partition: Option<u32>,
        acks: Acks,
        key: &IdempotencyKey<'_>,
    ) -> Result<(Produced, bool)> {
        let store_key = crate::store::keys::idempotency(key.principal, topic, key.key);
        let fingerprint = fingerprint(topic, records, partition, acks);
        let lock = self.idempotency_locks.lock().entry(store_key.clone()).or_default().clone();
        let result = async {
            let _held = lock.lock().await;
            let store = self.store.clone();
            let k = store_key.clone();
            let stored = self.blocking(move || store.get_meta(&k)).await?;
            let window = self.idempotency_window_ms.load(Ordering::Acquire);
            if let Some(bytes) = stored {
                let first: IdempotentAnswer =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(format!("idempotency record: {e}")))?;
                if now_ms().saturating_sub(first.at_ms) < window {
                    if first.fingerprint != fingerprint {
                        return Err(Error::IdempotencyKeyReused(key.key.to_owned()));
                    }
                    let answer = match first.accepted {
                        Some(records) => Produced::Accepted { records },
                        None => Produced::Written(record_metadata(
                            &first.placement,
                            &first.timestamps,
                            &first.partitions,
                            &first.bases,
                        )?),
                    };
                    return Ok((answer, true));
                }
            }
            let pending = IdempotentAnswer { fingerprint, at_ms: now_ms(), ..Default::default() };
            let produced =
                self.produce_with(topic, records, partition, acks, Some((store_key.clone(), pending))).await?;
            Ok((produced, false))
        }
        .await;
        let mut locks = self.idempotency_locks.lock();
        if locks.get(&store_key).is_some_and(|l| Arc::strong_count(l) <= 2) {
            locks.remove(&store_key);
        }
        result
    }

    /// A new idempotent producer id (Kafka's InitProducerId without a transactional id;
    /// its epoch is 0). Ids are never handed out twice, across restarts too.
    pub async fn init_producer_id(&self) -> Result<i64> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        self.command(|reply| Command::InitProducerId { reply }).await
    }

    /// Forgets idempotent producers that stored nothing on a partition for
    /// `producer_expiry_ms` (Kafka's `producer.id.expiration.ms`). Returns how many states.
    pub async fn expire_producers(&self, now_ms: u64) -> Result<usize> {
        // The common case, no idempotent producer at all, costs no writer command.
        if self.writer_state.producer_states.load(Ordering::Acquire) == 0 {
            return Ok(0);
        }
        let before_ms = now_ms.saturating_sub(self.producer_expiry_ms.load(Ordering::Acquire));
        self.command(|reply| Command::ExpireProducers { before_ms, reply }).await
    }

    /// How long an idempotent producer's state outlives its last batch on a partition.
    pub fn set_producer_expiry(&self, expiry: std::time::Duration) {
        self.producer_expiry_ms.store(expiry.as_millis() as u64, Ordering::Release);
    }

    /// Forgets idempotency keys older than the window. Returns how many.
    pub async fn expire_idempotency_keys(&self, now_ms: u64) -> Result<usize> {
        let cutoff = now_ms.saturating_sub(self.idempotency_window_ms.load(Ordering::Acquire));
        let store = self.store.clone();
        self.blocking(move || {
            store.expire_idempotency(|value| {
                serde_json::from_slice::<IdempotentAnswer>(value).map_or(true, |a| a.at_ms < cutoff)
            })
        })
        .await
    }

    /// True while the log accepts writes (not shutting down, store not failed).
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled() && !self.writer_state.failed.load(Ordering::Acquire)
    }

    /// The store's fault injection switches, for tests (see [`crate::faults`]).
    pub fn faults(&self) -> &Arc<crate::faults::Faults> {
        self.store.faults()
    }

    /// Why the writer cannot be reached: it stopped because shutdown asked it to,
    /// or it was lost (it died, or dropped a reply it owed), which poisons the log:
    /// what it did with the request is unknown.
    fn writer_gone(&self) -> Error {
        if self.writer_state.stopped.load(Ordering::Acquire) && !self.writer_state.failed.load(Ordering::Acquire) {
            return Error::ShuttingDown;
        }
        if !self.writer_state.failed.swap(true, Ordering::AcqRel) {
            tracing::error!("the writer thread is gone or lost a reply; refusing further writes");
        }
        Error::Storage("the writer was lost; restart the server".into())
    }

    /// The writer's answer to one command.
    async fn reply<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(self.writer_gone()),
        }
    }

    /// Reads long-polling at the end of their partition now.
    pub fn reads_waiting(&self) -> usize {
        self.reads_waiting.load(Ordering::Acquire)
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
    /// Fails if the flush fails or the writer was lost: a clean exit then would
    /// claim data safe that may not be.
    pub async fn close(&self) -> Result<()> {
        self.begin_shutdown();
        let (reply, rx) = oneshot::channel();
        let flushed = match self.tx.send(Command::Shutdown { reply }).await {
            // Stopped by an earlier close, which reported.
            Err(_) if self.writer_state.stopped.load(Ordering::Acquire) => Ok(()),
            Err(_) => Err(self.writer_gone()),
            Ok(()) => match rx.await {
                Ok(flushed) => flushed,
                Err(_) => {
                    self.writer_state.failed.store(true, Ordering::Release);
                    Err(Error::Storage("the writer stopped without confirming the final flush".into()))
                }
            },
        };
        let handle = self.writer.lock().take();
        let joined = match handle {
            Some(handle) => match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Error::Storage("the writer thread panicked".into())),
                Err(e) => Err(Error::Storage(format!("joining the writer thread failed: {e}"))),
            },
            // Closed before: the first close reported.
            None => Ok(()),
        };
        flushed.and(joined)
    }

    async fn command<T>(&self, make: impl FnOnce(writer::Reply<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| self.writer_gone())?;
        self.reply(rx).await
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
        self.produce_with(topic, records, partition, acks, None).await
    }

    async fn produce_with(
        &self,
        topic: &str,
        records: &[NewRecord<'_>],
        partition: Option<u32>,
        acks: Acks,
        idempotent: Option<(Vec<u8>, IdempotentAnswer)>,
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
        let (mut job, placement, timestamps) = self.encode(&topic, records, partition, acks)?;
        let count = records.len();
        if let Some((key, mut answer)) = idempotent {
            answer.placement.clone_from(&placement);
            answer.timestamps.clone_from(&timestamps);
            answer.partitions = job.batches.iter().map(|(p, _)| *p).collect();
            if acks == Acks::None {
                answer.accepted = Some(count);
            }
            job.idempotent = Some((key, answer));
        }
        let rx = self.enqueue(job)?;
        let Some((rx, partitions)) = rx else { return Ok(Produced::Accepted { records: count }) };
        let bases = self
            .reply(rx)
            .await?
            .into_iter()
            .collect::<std::result::Result<Vec<u64>, _>>()
            .map_err(|e| Error::Internal(format!("a batch without a producer id was refused: {e}")))?;
        let metadata = record_metadata(&placement, &timestamps, &partitions, &bases)?;
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
            let (p, timestamp) = place(topic.name.as_str(), index, rec, partition, partitions, max, now, &mut || {
                *sticky.get_or_insert_with(|| topic.next_sticky() % partitions)
            })?;
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
        Ok((PendingJob { topic: topic.clone(), batches, acks, idempotent: None }, placement, timestamps))
    }

    /// Queues batches a Kafka producer sent (checked by `record::check_produced`) for the
    /// writer, stored as sent, in one write: `(partition, batch)` in request order. Batches
    /// queued by successive calls are written in call order (a connection's pipelined requests
    /// keep their producer sequences in order). [`Log::placed`] waits for each batch's base
    /// offset; `None` with `acks=none`.
    pub fn submit_batches(
        &self,
        topic: &str,
        batches: Vec<(u32, record::EncodedBatch)>,
        acks: Acks,
    ) -> Result<Option<Submitted>> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let topic = self.topic(topic)?;
        let partitions = topic.partitions().len() as u32;
        if let Some((p, _)) = batches.iter().find(|(p, _)| *p >= partitions) {
            return Err(Error::UnknownPartition { topic: topic.name.to_string(), partition: *p });
        }
        let job = PendingJob { topic, batches, acks, idempotent: None };
        Ok(self.enqueue(job)?.map(|(rx, _)| Submitted(rx)))
    }

    /// Each submitted batch's base offset once written (an idempotent producer's retry: the
    /// first one's, nothing written) or why the idempotent producer rules refused it
    /// ([`producers`]).
    pub async fn placed(&self, submitted: Submitted) -> Result<Vec<writer::Placed>> {
        self.reply(submitted.0).await
    }

    /// Waits until one of `positions` (topic, partition, offset) has a record at or past its
    /// offset, `timeout` passes, or shutdown begins (Kafka's Fetch `max_wait_ms`).
    pub async fn wait_any(&self, positions: &[(String, u32, u64)], timeout: Duration) {
        let mut waits = Vec::with_capacity(positions.len());
        for (topic, p, offset) in positions {
            let Ok(part) = self.topic(topic).and_then(|t| t.partition(*p)) else { return };
            let mut rx = part.subscribe();
            let offset = *offset;
            if *rx.borrow_and_update() > offset {
                return;
            }
            waits.push(Box::pin(async move {
                let _ = rx.wait_for(|e| *e > offset).await;
            }));
        }
        if waits.is_empty() {
            return;
        }
        let _waiting = Waiting::count(&self.reads_waiting);
        tokio::select! {
            _ = tokio::time::timeout(timeout, futures_util::future::select_all(waits)) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// The largest timestamp in a partition and the first offset holding it (Kafka's
    /// `MAX_TIMESTAMP` ListOffsets query), or `None` when it is empty.
    pub async fn max_timestamp_offset(&self, topic: &str, partition: u32) -> Result<Option<TimestampOffset>> {
        let max = self.topic(topic)?.partition(partition)?.max_timestamp();
        let Some(max) = max else { return Ok(None) };
        let found = self.offset_for_timestamp(topic, partition, max).await?;
        Ok(found.timestamp.is_some().then_some(found))
    }

    #[allow(clippy::type_complexity)]
    fn enqueue(&self, job: PendingJob) -> Result<Option<(oneshot::Receiver<Result<Vec<writer::Placed>>>, Vec<u32>)>> {
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
            idempotent: job.idempotent,
        });
        self.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::WriteQueueFull,
            mpsc::error::TrySendError::Closed(_) => self.writer_gone(),
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
            // Counted only once subscribed: an append from now on wakes this read.
            let _waiting = Waiting::count(&self.reads_waiting);
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
        let (batches, back_to_back) = match part.cached(from, end, max_records as u64, max_bytes) {
            Some(batches) => (batches, None),
            None => {
                let store = self.store.clone();
                let read = move || store.read(tid, partition, from, end, max_records as u64, max_bytes);
                let read = self.blocking(read).await?;
                (read.batches, Some(read.bytes))
            }
        };
        let inflated = batches.iter().map(|_| record::Inflated::new()).collect();
        Ok(ReadResult {
            batches,
            back_to_back,
            inflated,
            from,
            max_records,
            max_bytes,
            beginning_offset: start,
            end_offset: end,
        })
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

    /// Applies retention to every partition of every topic as of `now_ms`. A
    /// partition that fails is reported and the pass goes on with the others.
    pub async fn apply_retention(&self, now_ms: u64) -> RetentionReport {
        let mut report = RetentionReport::default();
        for topic in self.topics() {
            let config = topic.config();
            let cutoff = (config.retention_ms >= 0).then(|| now_ms.saturating_sub(config.retention_ms as u64));
            let max_bytes = (config.retention_bytes >= 0).then_some(config.retention_bytes as u64);
            if cutoff.is_none() && max_bytes.is_none() {
                continue;
            }
            for part in topic.partitions().iter() {
                match self.retain(&topic, part, cutoff, max_bytes).await {
                    Ok(true) => report.moved += 1,
                    Ok(false) => {}
                    Err(e) => report.failed.push((topic.name.to_string(), part.index, e)),
                }
            }
        }
        report
    }

    /// Retention for one partition; true when its beginning offset moved.
    async fn retain(
        &self,
        topic: &Arc<Topic>,
        part: &Partition,
        cutoff: Option<u64>,
        max_bytes: Option<u64>,
    ) -> Result<bool> {
        let (store, tid, p) = (self.store.clone(), topic.id, part.index);
        let (start, end, stored) = (part.start(), part.end(), part.stored_bytes());
        if cutoff.is_none() && max_bytes.is_some_and(|limit| stored <= limit) {
            // Within its size limit and no age limit: nothing to look up.
            return Ok(false);
        }
        let cut = self.blocking(move || store.retention_cut(tid, p, start, end, cutoff, max_bytes, stored)).await?;
        let Some(cut) = cut else { return Ok(false) };
        let t = topic.clone();
        self.command(|reply| Command::Truncate { topic: t, partition: p, cut, reply }).await?;
        Ok(true)
    }

    /// Durably stores committed offsets `(topic id, partition, offset)` for a group.
    pub async fn commit_offsets(&self, group: &str, offsets: Vec<(u32, u32, u64)>, at_ms: u64) -> Result<()> {
        let group = group.to_owned();
        self.command(|reply| Command::CommitOffsets { group, offsets, at_ms, reply }).await
    }

    /// When each group was last known to be in use (wall-clock ms).
    pub async fn load_group_times(&self) -> Result<Vec<(String, u64)>> {
        let store = self.store.clone();
        self.blocking(move || store.load_group_times()).await
    }

    /// The secret that signs poll cursors, created with the store.
    pub async fn cursor_secret(&self) -> Result<Vec<u8>> {
        let store = self.store.clone();
        self.blocking(move || store.secret(crate::store::keys::CURSOR_SECRET)).await
    }

    /// Removes a group's committed offsets.
    pub async fn delete_group_offsets(&self, group: &str) -> Result<()> {
        let group = group.to_owned();
        self.command(|reply| Command::DeleteGroup { group, reply }).await
    }

    /// Compacts away what deleted topics and retention cuts removed (`Store::reclaim_removed`).
    pub async fn reclaim_removed(&self) -> Result<Option<crate::store::Reclaimed>> {
        let store = self.store.clone();
        self.blocking(move || store.reclaim_removed(crate::store::RECLAIM_MIN_BYTES, crate::store::RECLAIM_QUIET_BYTES))
            .await
    }

    /// Turns the store's blob garbage collection on or off by how much of its blob files is
    /// garbage (`Store::tend_blob_gc`).
    pub async fn tend_blob_gc(&self) -> Result<crate::store::BlobSpace> {
        let store = self.store.clone();
        self.blocking(move || store.tend_blob_gc(crate::store::BLOB_GC_MIN_GARBAGE)).await
    }

    /// Bytes held by the store (SST and blob files, memtables).
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

/// Where each record of a request landed: its batch's partition and base offset
/// (`partitions` and `bases`, one per batch, the writer's answer) plus its
/// position in the batch. A writer answer that does not cover every batch is a
/// bug, reported as one, never papered over with offset 0 of partition 0.
fn record_metadata(
    placement: &[(usize, u32)],
    timestamps: &[u64],
    partitions: &[u32],
    bases: &[u64],
) -> Result<Vec<RecordMetadata>> {
    if bases.len() != partitions.len() {
        return Err(Error::Internal(format!(
            "the writer answered {} base offsets for {} batches",
            bases.len(),
            partitions.len()
        )));
    }
    placement
        .iter()
        .zip(timestamps)
        .map(|(&(slot, pos), &timestamp)| match (partitions.get(slot), bases.get(slot)) {
            (Some(&partition), Some(&base)) => {
                Ok(RecordMetadata { partition, offset: base + u64::from(pos), timestamp })
            }
            _ => Err(Error::Internal(format!("record placed in batch {slot} of {}", partitions.len()))),
        })
        .collect()
}

/// Counts one waiter in a gauge for as long as it lives.
pub(crate) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(crate) fn count(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An encoded request before it gets its queue permit.
struct PendingJob {
    topic: Arc<Topic>,
    batches: Vec<(u32, record::EncodedBatch)>,
    acks: Acks,
    idempotent: Option<(Vec<u8>, IdempotentAnswer)>,
}

/// SHA-256 over everything that makes a produce request what it is.
pub(crate) fn fingerprint(topic: &str, records: &[NewRecord<'_>], partition: Option<u32>, acks: Acks) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let blob = |h: &mut sha2::Sha256, b: Option<&record::Blob<'_>>| match b {
        Some(b) => {
            h.update([1]);
            h.update(format!("{:?}", b.format).as_bytes());
            h.update((b.bytes.len() as u64).to_le_bytes());
            h.update(&b.bytes[..]);
        }
        None => h.update([0]),
    };
    let field = |h: &mut sha2::Sha256, bytes: Option<&[u8]>| match bytes {
        Some(b) => {
            h.update([1]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
        None => h.update([0]),
    };
    field(&mut h, Some(topic.as_bytes()));
    field(&mut h, partition.map(|p| p.to_le_bytes()).as_ref().map(|b| &b[..]));
    h.update([acks as u8]);
    for r in records {
        blob(&mut h, r.key.as_ref());
        blob(&mut h, r.value.as_ref());
        h.update((r.headers.len() as u64).to_le_bytes());
        for hd in &r.headers {
            field(&mut h, Some(hd.name.as_bytes()));
            blob(&mut h, hd.value.as_ref());
        }
        field(&mut h, r.timestamp.map(|t| t.to_le_bytes()).as_ref().map(|b| &b[..]));
        field(&mut h, r.partition.map(|p| p.to_le_bytes()).as_ref().map(|b| &b[..]));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks one record of a produce request (size, headers, timestamp, partition) and places
/// it: its partition and timestamp. `route` is the request's partition (a per-partition
/// route), `sticky` the partition of keyless records without one. Both backends use it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn place(
    topic: &str,
    index: usize,
    rec: &NewRecord<'_>,
    route: Option<u32>,
    partitions: u32,
    max: u32,
    now: u64,
    sticky: &mut dyn FnMut() -> u32,
) -> Result<(u32, u64)> {
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
    let p = match (route, rec.partition) {
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
            None => sticky(),
        },
    };
    if p >= partitions {
        return Err(Error::UnknownPartition { topic: topic.to_owned(), partition: p });
    }
    Ok((p, timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Blob, Format};

    fn settings() -> LogSettings {
        LogSettings {
            auto_create_topics: false,
            default_partitions: 1,
            write_queue_bytes: 1 << 20,
            write_queue_len: 16,
        }
    }

    fn record(value: &str) -> NewRecord<'_> {
        NewRecord {
            key: None,
            value: Some(Blob::new(Format::Text, value.as_bytes())),
            headers: vec![],
            timestamp: Some(1_000),
            partition: None,
        }
    }

    #[test]
    fn record_metadata_refuses_an_answer_that_does_not_cover_every_batch() {
        let placement = [(0, 0), (1, 0), (0, 1)];
        let ts = [7, 8, 9];
        let meta = record_metadata(&placement, &ts, &[2, 5], &[10, 20]).unwrap();
        let got: Vec<_> = meta.iter().map(|m| (m.partition, m.offset, m.timestamp)).collect();
        assert_eq!(got, vec![(2, 10, 7), (5, 20, 8), (2, 11, 9)]);
        // One base offset for two batches: an error, not partition 0 / offset 0.
        assert!(matches!(record_metadata(&placement, &ts, &[2, 5], &[10]), Err(Error::Internal(_))));
        assert!(matches!(record_metadata(&[(3, 0)], &[1], &[2], &[10]), Err(Error::Internal(_))));
    }

    /// A corrupt index in one partition fails that partition's retention, and
    /// the pass goes on to the others (it used to stop at the first failure).
    #[tokio::test]
    async fn a_retention_pass_goes_on_past_a_failing_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = Log::open(store.clone(), settings()).unwrap();
        let patch = TopicConfigPatch { retention_bytes: Some(1), retention_ms: Some(-1), ..Default::default() };
        let topic = log.create_topic("r", 2, &patch).await.unwrap();
        for p in 0..2 {
            for v in ["a", "b", "c"] {
                log.produce("r", &[record(v)], Some(p), Acks::Leader).await.unwrap();
            }
        }
        // The oldest batch: the one the size walk reads first.
        store.corrupt_batch_index(topic.id, 0, 0).unwrap();
        let report = log.apply_retention(now_ms()).await;
        assert_eq!(report.moved, 1, "partition 1 was cut");
        assert_eq!(report.failed.len(), 1);
        assert!(matches!(&report.failed[0], (t, 0, Error::Corrupt(_)) if t == "r"), "{:?}", report.failed);
        assert_eq!(topic.partition(0).unwrap().start(), 0, "the failing partition keeps its records");
        assert_eq!(topic.partition(1).unwrap().start(), 2, "the other keeps only its newest batch");
        log.close().await.unwrap();
    }

    /// The running size per partition follows appends and cuts, and a restart
    /// recovers the same figure from the store.
    #[tokio::test]
    async fn partitions_keep_a_running_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = Log::open(store.clone(), settings()).unwrap();
        let patch = TopicConfigPatch { retention_ms: Some(-1), ..Default::default() };
        let topic = log.create_topic("s", 1, &patch).await.unwrap();
        let part = topic.partition(0).unwrap();
        assert_eq!(part.stored_bytes(), 0);
        let mut sizes = Vec::new();
        for v in ["a", "bb", "ccc", "dddd"] {
            let before = part.stored_bytes();
            log.produce("s", &[record(v)], None, Acks::Leader).await.unwrap();
            sizes.push(part.stored_bytes() - before);
        }
        assert!(sizes.iter().all(|s| *s > 0));
        let total: u64 = sizes.iter().sum();
        assert_eq!(part.stored_bytes(), total);
        assert_eq!(log.apply_retention(now_ms()).await.moved, 0, "no size limit: nothing cut");

        // Room for the newest two batches.
        let limit = sizes[2] + sizes[3];
        let patch = TopicConfigPatch { retention_bytes: Some(limit as i64), ..Default::default() };
        log.update_topic("s", None, &patch).await.unwrap();
        assert_eq!(log.apply_retention(now_ms()).await.moved, 1);
        assert_eq!((part.start(), part.stored_bytes()), (2, limit));
        assert_eq!(log.apply_retention(now_ms()).await.moved, 0, "within the limit now");
        log.close().await.unwrap();
        drop((log, part, topic, store));

        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = Log::open(store, settings()).unwrap();
        let part = log.topic("s").unwrap().partition(0).unwrap();
        assert_eq!((part.start(), part.stored_bytes()), (2, limit), "recovered from the store");
        log.close().await.unwrap();
    }

    /// An idempotency key is forgotten once its window has passed: the same key
    /// then writes again.
    #[tokio::test]
    async fn idempotency_keys_expire_after_their_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = Log::open(store, settings()).unwrap();
        log.create_topic("t", 1, &TopicConfigPatch::default()).await.unwrap();
        log.set_idempotency_window(std::time::Duration::from_secs(60));
        let key = IdempotencyKey { principal: "User:a", key: "k" };
        let other = IdempotencyKey { principal: "User:b", key: "k" };
        let (_, replayed) = log.produce_idempotent("t", &[record("x")], None, Acks::All, &key).await.unwrap();
        assert!(!replayed);
        let (_, replayed) = log.produce_idempotent("t", &[record("x")], None, Acks::All, &key).await.unwrap();
        assert!(replayed);
        let (_, replayed) = log.produce_idempotent("t", &[record("x")], None, Acks::All, &other).await.unwrap();
        assert!(!replayed, "keys are scoped to their principal");
        assert_eq!(log.expire_idempotency_keys(now_ms()).await.unwrap(), 0, "within the window");
        assert_eq!(log.expire_idempotency_keys(now_ms() + 61_000).await.unwrap(), 2);
        let (_, replayed) = log.produce_idempotent("t", &[record("x")], None, Acks::All, &key).await.unwrap();
        assert!(!replayed, "an expired key writes again");
        assert_eq!(log.topic("t").unwrap().partition(0).unwrap().end(), 3);
        log.close().await.unwrap();
    }

    /// A writer that loses a reply poisons the log: the waiter gets a storage
    /// error (not success, not "shutting down"), and so does every later write.
    #[tokio::test]
    async fn a_lost_writer_reply_poisons_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = Log::open(store.clone(), settings()).unwrap();
        log.create_topic("t", 1, &TopicConfigPatch::default()).await.unwrap();
        assert!(log.is_ready());
        store.faults().drop_replies(1);
        let lost = log.produce("t", &[record("x")], None, Acks::All).await;
        assert!(matches!(lost, Err(Error::Storage(_))), "{lost:?}");
        assert!(!log.is_ready(), "/readyz fails from now on");
        let later = log.produce("t", &[record("y")], None, Acks::All).await;
        assert!(matches!(later, Err(Error::Storage(_))), "{later:?}");
        log.close().await.unwrap();
    }

    /// Closing reports a flush or writer failure instead of claiming success.
    #[tokio::test]
    async fn close_reports_a_lost_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = Log::open(store.clone(), settings()).unwrap();
        store.faults().drop_replies(1);
        // The shutdown's reply is lost: close must not say the store was flushed.
        assert!(matches!(log.close().await, Err(Error::Storage(_))));
    }
}
