//! The in-memory view of topics and partitions that requests consult.
//!
//! The writer thread is the only code that changes a partition's offsets or the
//! topic registry; everyone else reads them. Locks here are held for a few
//! instructions, never across an `.await`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::store::{PartitionState, ReadWindow, TopicMeta};
use crate::topic::{TopicConfig, TopicName};

const NO_TIMESTAMP: u64 = u64::MAX;

/// Most bytes of recent batches a partition keeps in memory for its followers.
pub const TAIL_CACHE_BYTES: usize = 512 * 1024;

/// Most bytes all partitions' tail caches hold together: a stream following every
/// partition of a wide topic must not pin 512 KiB for each of thousands of them.
pub const TAIL_CACHE_TOTAL_BYTES: usize = 64 * 1024 * 1024;

/// The bytes held by every tail cache of one log, against `TAIL_CACHE_TOTAL_BYTES`.
pub type TailBudget = Arc<AtomicUsize>;

/// A stored batch's bytes, shared between the tail cache and the reads using it.
pub type BatchBytes = bytes::Bytes;

/// The partition's most recent batches, exactly as stored, so that readers at
/// the end of the log (streams, long-polls) are served from memory instead of a
/// RocksDB read on the blocking pool. Contiguous: the writer either appends
/// every new batch or empties the cache (when nobody is waiting on the
/// partition), so a cached range never has holes.
#[derive(Debug)]
struct TailCache {
    /// (base offset, record count, bytes), in offset order.
    batches: VecDeque<(u64, u32, BatchBytes)>,
    bytes: usize,
    budget: TailBudget,
}

impl TailCache {
    fn clear(&mut self) {
        self.batches.clear();
        self.budget.fetch_sub(self.bytes, Ordering::AcqRel);
        self.bytes = 0;
    }
}

impl Drop for TailCache {
    fn drop(&mut self) {
        self.clear();
    }
}

/// One partition's offsets. `end` is a watch channel so that long-polls and
/// streams are woken the moment an append commits.
#[derive(Debug)]
pub struct Partition {
    pub index: u32,
    end: watch::Sender<u64>,
    start: AtomicU64,
    /// Running max timestamp, `NO_TIMESTAMP` until the first append. Writer-only.
    max_timestamp: AtomicU64,
    /// Bytes of the stored batches (what `retention_bytes` limits). Writer-only.
    bytes: AtomicU64,
    tail: Mutex<TailCache>,
}

impl Partition {
    pub(crate) fn new(index: u32, state: PartitionState, budget: TailBudget) -> Self {
        Partition {
            index,
            end: watch::Sender::new(state.end),
            start: AtomicU64::new(state.start),
            max_timestamp: AtomicU64::new(state.max_timestamp.unwrap_or(NO_TIMESTAMP)),
            bytes: AtomicU64::new(state.bytes),
            tail: Mutex::new(TailCache { batches: VecDeque::new(), bytes: 0, budget }),
        }
    }

    /// Bytes of the batches stored for this partition.
    pub fn stored_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// The writer stored `n` more bytes of batches, or removed `n` (retention).
    pub(crate) fn add_stored(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn remove_stored(&self, n: u64) {
        let _ = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(n)));
    }

    /// Called by the writer for every batch it stored, in offset order, before
    /// the new end is published. Keeps the batch only while someone waits on the
    /// partition (a stream or long-poll subscribed to its end): otherwise the
    /// cache is emptied, so idle partitions hold no memory. When every cache
    /// together would exceed `TAIL_CACHE_TOTAL_BYTES`, this one is emptied too
    /// (its followers read from the store until it fills again).
    pub(crate) fn cache_batch(&self, base: u64, count: u32, bytes: Vec<u8>) {
        let mut tail = self.tail.lock();
        let len = bytes.len();
        if self.end.receiver_count() == 0 || len > TAIL_CACHE_BYTES {
            tail.clear();
            return;
        }
        if tail.budget.fetch_add(len, Ordering::AcqRel) + len > TAIL_CACHE_TOTAL_BYTES {
            tail.budget.fetch_sub(len, Ordering::AcqRel);
            tail.clear();
            return;
        }
        tail.bytes += len;
        tail.batches.push_back((base, count, bytes::Bytes::from(bytes)));
        while tail.bytes > TAIL_CACHE_BYTES {
            match tail.batches.pop_front() {
                Some((_, _, b)) => {
                    tail.bytes -= b.len();
                    tail.budget.fetch_sub(b.len(), Ordering::AcqRel);
                }
                None => break,
            }
        }
    }

    /// The cached batches covering `from..end` within the limits (as the store's
    /// read would return them), or `None` when the cache does not reach back to `from`.
    pub(crate) fn cached(
        &self,
        from: u64,
        end: u64,
        max_records: u64,
        max_bytes: usize,
    ) -> Option<Vec<(u64, BatchBytes)>> {
        let tail = self.tail.lock();
        let &(first, _, _) = tail.batches.front()?;
        if from < first {
            return None;
        }
        let mut out = Vec::new();
        let mut window = ReadWindow::new(from, end, max_records, max_bytes);
        // Batches are in offset order: skip those that end before `from` by bisection.
        let skip = tail.batches.partition_point(|(base, count, _)| base + u64::from(*count) <= from);
        for (base, count, data) in tail.batches.range(skip..) {
            // The store's iterator stops at `end` by its upper bound; here the loop does.
            if *base >= end {
                break;
            }
            if window.take(*base, u64::from(*count), data.len()) {
                out.push((*base, data.clone()));
                if window.is_full() {
                    break;
                }
            }
        }
        Some(out)
    }

    /// The next offset to be assigned (Kafka's log end offset / high watermark).
    pub fn end(&self) -> u64 {
        *self.end.borrow()
    }

    /// The earliest offset still stored.
    pub fn start(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// A receiver that changes whenever the end offset moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    pub(crate) fn max_timestamp(&self) -> Option<u64> {
        match self.max_timestamp.load(Ordering::Acquire) {
            NO_TIMESTAMP => None,
            ts => Some(ts),
        }
    }

    pub(crate) fn publish_end(&self, end: u64, max_timestamp: Option<u64>) {
        if let Some(ts) = max_timestamp {
            self.max_timestamp.store(ts, Ordering::Release);
        }
        self.end.send_replace(end);
    }

    pub(crate) fn set_start(&self, start: u64) {
        self.start.store(start, Ordering::Release);
    }

    /// Wakes every waiter without moving the end (used when the topic is deleted).
    pub(crate) fn wake(&self) {
        self.end.send_modify(|_| {});
    }
}

/// A topic: its identity, configuration and partitions.
#[derive(Debug)]
pub struct Topic {
    pub id: u32,
    pub name: TopicName,
    pub created_ms: u64,
    config: RwLock<TopicConfig>,
    partitions: RwLock<Arc<Vec<Arc<Partition>>>>,
    /// Round-robin counter for the partition of unkeyed records.
    sticky: AtomicU32,
    deleted: AtomicBool,
    tail_budget: TailBudget,
}

impl Topic {
    pub(crate) fn new(meta: &TopicMeta, states: &[PartitionState], tail_budget: &TailBudget) -> Result<Self> {
        let name = TopicName::parse(&meta.name)?;
        let partitions = states
            .iter()
            .enumerate()
            .map(|(i, s)| Arc::new(Partition::new(i as u32, *s, tail_budget.clone())))
            .collect();
        Ok(Topic {
            id: meta.id,
            name,
            created_ms: meta.created_ms,
            config: RwLock::new(meta.config.clone()),
            partitions: RwLock::new(Arc::new(partitions)),
            sticky: AtomicU32::new(0),
            deleted: AtomicBool::new(false),
            tail_budget: tail_budget.clone(),
        })
    }

    pub fn config(&self) -> TopicConfig {
        self.config.read().clone()
    }

    pub fn partitions(&self) -> Arc<Vec<Arc<Partition>>> {
        self.partitions.read().clone()
    }

    pub fn partition(&self, index: u32) -> Result<Arc<Partition>> {
        self.partitions()
            .get(index as usize)
            .cloned()
            .ok_or_else(|| Error::UnknownPartition { topic: self.name.to_string(), partition: index })
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn next_sticky(&self) -> u32 {
        self.sticky.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn meta(&self) -> TopicMeta {
        TopicMeta {
            id: self.id,
            name: self.name.to_string(),
            partitions: self.partitions().len() as u32,
            config: self.config(),
            created_ms: self.created_ms,
        }
    }

    pub(crate) fn set_config(&self, config: TopicConfig) {
        *self.config.write() = config;
    }

    pub(crate) fn grow(&self, count: u32) {
        let mut guard = self.partitions.write();
        let mut next: Vec<_> = guard.iter().cloned().collect();
        let empty = PartitionState { start: 0, end: 0, max_timestamp: None, bytes: 0 };
        while (next.len() as u32) < count {
            next.push(Arc::new(Partition::new(next.len() as u32, empty, self.tail_budget.clone())));
        }
        *guard = Arc::new(next);
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        for p in self.partitions().iter() {
            p.wake();
        }
    }
}

/// All live topics by name.
#[derive(Debug, Default)]
pub struct Registry {
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    tail_budget: TailBudget,
}

impl Registry {
    /// The byte count shared by the tail caches of every partition of this log.
    pub(crate) fn tail_budget(&self) -> &TailBudget {
        &self.tail_budget
    }

    /// Bytes the tail caches hold now.
    pub fn tail_cache_bytes(&self) -> usize {
        self.tail_budget.load(Ordering::Acquire)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    pub(crate) fn insert(&self, topic: Arc<Topic>) {
        self.topics.write().insert(topic.name.to_string(), topic);
    }

    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.write().remove(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition() -> Partition {
        partition_in(&TailBudget::default())
    }

    fn partition_in(budget: &TailBudget) -> Partition {
        Partition::new(0, PartitionState { start: 0, end: 0, max_timestamp: None, bytes: 0 }, budget.clone())
    }

    fn bases(v: &[(u64, BatchBytes)]) -> Vec<u64> {
        v.iter().map(|(b, _)| *b).collect()
    }

    #[test]
    fn tail_cache_keeps_batches_only_while_someone_waits() {
        let p = partition();
        p.cache_batch(0, 10, vec![1; 100]);
        assert!(p.cached(0, 10, 100, 1 << 20).is_none(), "nobody subscribed: nothing cached");
        let _rx = p.subscribe();
        p.cache_batch(10, 10, vec![1; 100]);
        p.cache_batch(20, 5, vec![1; 100]);
        assert_eq!(bases(&p.cached(10, 25, 100, 1 << 20).unwrap_or_default()), vec![10, 20]);
        // Inside a batch: that batch is the first returned.
        assert_eq!(bases(&p.cached(15, 25, 100, 1 << 20).unwrap_or_default()), vec![10, 20]);
        // Before the cached range: the store must answer.
        assert!(p.cached(5, 25, 100, 1 << 20).is_none());
        // Limits stop after the batch that reaches them; `end` hides later batches.
        assert_eq!(bases(&p.cached(10, 25, 3, 1 << 20).unwrap_or_default()), vec![10]);
        assert_eq!(bases(&p.cached(10, 20, 100, 1 << 20).unwrap_or_default()), vec![10]);
        assert_eq!(bases(&p.cached(25, 25, 100, 1 << 20).unwrap_or_default()), Vec::<u64>::new());
    }

    #[test]
    fn tail_cache_empties_when_the_last_waiter_leaves_and_stays_contiguous() {
        let p = partition();
        let rx = p.subscribe();
        p.cache_batch(0, 1, vec![0; 10]);
        drop(rx);
        p.cache_batch(1, 1, vec![0; 10]);
        let _rx = p.subscribe();
        p.cache_batch(2, 1, vec![0; 10]);
        // Offsets 0 and 1 are gone together: the cache starts at 2, without a hole.
        assert!(p.cached(0, 3, 100, 1 << 20).is_none());
        assert!(p.cached(1, 3, 100, 1 << 20).is_none());
        assert_eq!(bases(&p.cached(2, 3, 100, 1 << 20).unwrap_or_default()), vec![2]);
    }

    #[test]
    fn tail_cache_is_bounded_in_bytes() {
        let p = partition();
        let _rx = p.subscribe();
        let size = TAIL_CACHE_BYTES / 4;
        for i in 0..10u64 {
            p.cache_batch(i, 1, vec![0; size]);
        }
        let held = p.cached(6, 10, 100, usize::MAX).unwrap_or_default();
        assert_eq!(bases(&held), vec![6, 7, 8, 9]);
        assert!(p.cached(5, 10, 100, usize::MAX).is_none());
        // A batch larger than the whole cache is not kept (and clears the rest).
        p.cache_batch(10, 1, vec![0; TAIL_CACHE_BYTES + 1]);
        assert!(p.cached(10, 11, 100, usize::MAX).is_none());
    }

    #[test]
    fn all_tail_caches_together_stay_within_the_total_budget() {
        let budget = TailBudget::default();
        let parts: Vec<Partition> =
            (0..(TAIL_CACHE_TOTAL_BYTES / TAIL_CACHE_BYTES + 8)).map(|_| partition_in(&budget)).collect();
        let _subscribers: Vec<_> = parts.iter().map(Partition::subscribe).collect();
        for round in 0..4u64 {
            for p in &parts {
                p.cache_batch(round, 1, vec![0; TAIL_CACHE_BYTES / 4]);
                assert!(budget.load(Ordering::Acquire) <= TAIL_CACHE_TOTAL_BYTES);
            }
        }
        let full = parts.iter().filter(|p| p.cached(0, 4, 100, usize::MAX).is_some()).count();
        assert!(full > 0 && full < parts.len(), "some partitions cache, the budget stops the rest ({full})");
        // Dropping partitions (a deleted topic) gives their bytes back.
        drop(_subscribers);
        drop(parts);
        assert_eq!(budget.load(Ordering::Acquire), 0);
    }
}
