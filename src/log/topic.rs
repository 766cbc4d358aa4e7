//! The in-memory view of topics and partitions that requests consult.
//!
//! The writer thread is the only code that changes a partition's offsets or the
//! topic registry; everyone else reads them. Locks here are held for a few
//! instructions, never across an `.await`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::RwLock;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::store::{PartitionState, TopicMeta};
use crate::topic::{TopicConfig, TopicName};

const NO_TIMESTAMP: u64 = u64::MAX;

/// One partition's offsets. `end` is a watch channel so that long-polls and
/// streams are woken the moment an append commits.
#[derive(Debug)]
pub struct Partition {
    pub index: u32,
    end: watch::Sender<u64>,
    start: AtomicU64,
    /// Running max timestamp, `NO_TIMESTAMP` until the first append. Writer-only.
    max_timestamp: AtomicU64,
}

impl Partition {
    pub(crate) fn new(index: u32, state: PartitionState) -> Self {
        Partition {
            index,
            end: watch::Sender::new(state.end),
            start: AtomicU64::new(state.start),
            max_timestamp: AtomicU64::new(state.max_timestamp.unwrap_or(NO_TIMESTAMP)),
        }
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
}

impl Topic {
    pub(crate) fn new(meta: &TopicMeta, states: &[PartitionState]) -> Result<Self> {
        let name = TopicName::parse(&meta.name)?;
        let partitions = states.iter().enumerate().map(|(i, s)| Arc::new(Partition::new(i as u32, *s))).collect();
        Ok(Topic {
            id: meta.id,
            name,
            created_ms: meta.created_ms,
            config: RwLock::new(meta.config.clone()),
            partitions: RwLock::new(Arc::new(partitions)),
            sticky: AtomicU32::new(0),
            deleted: AtomicBool::new(false),
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
        let empty = PartitionState { start: 0, end: 0, max_timestamp: None };
        while (next.len() as u32) < count {
            next.push(Arc::new(Partition::new(next.len() as u32, empty)));
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
}

impl Registry {
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
