//! The embedded RocksDB store: the only module that knows column families and
//! the key layout (see `keys`). Every call here blocks on RocksDB; callers on the
//! async runtime go through the writer thread or `spawn_blocking` (ARCHITECTURE.md).
//!
//! Column families:
//! - `records`: one entry per stored batch, `(topic id, partition, base offset)` → batch bytes.
//! - `batches`: the same keys → `count:u32 bytes:u32 max_timestamp:u64`, a small
//!   index that retention-by-size walks without reading record bytes.
//! - `timeindex`: `(topic id, partition, running max timestamp, base offset)` → empty;
//!   one entry each time a partition's largest timestamp grows (Kafka's time index).
//! - `meta`: topic descriptions (JSON), the next topic id, log start offsets.

pub mod keys;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::faults::Faults;
use crate::record::{self, EncodedBatch};
use crate::topic::TopicConfig;

const CF_RECORDS: &str = "records";
const CF_BATCHES: &str = "batches";
const CF_TIMEINDEX: &str = "timeindex";
const CF_META: &str = "meta";

/// A `records` value at least this large is kept in a blob file, its key in the LSM tree
/// with a reference (RocksDB's integrated BlobDB): compactions then move the reference, not
/// the batch, so a batch is written once to its blob file when its memtable is flushed
/// instead of again at every level. Smaller batches (single REST records) stay inline.
const MIN_BLOB_BYTES: u64 = 4 * 1024;

/// Blob garbage collection starts when at least this share of the blob files' bytes is
/// garbage (batches that retention or a topic deletion removed from a file that still holds
/// live ones)...
const BLOB_GC_START: f64 = 0.25;
/// ...and stops once garbage is below this share again.
const BLOB_GC_STOP: f64 = 0.10;
/// Below this much garbage, collecting it is not worth rewriting anything.
pub const BLOB_GC_MIN_GARBAGE: u64 = 64 * 1024 * 1024;

/// Retention cuts that removed at least this many bytes since the last reclaim have their
/// topics' keys compacted away (`Store::reclaim_removed`); smaller ones wait for the
/// compactions writes bring.
pub const RECLAIM_MIN_BYTES: u64 = 16 * 1024 * 1024;

/// A store that took at least this many bytes of writes between two reclaim checks is
/// busy: its memtables flush and its own compactions reach the removed keys, and a manual
/// compaction would compete with them, so `Store::reclaim_removed` waits for a quiet check.
pub const RECLAIM_QUIET_BYTES: u64 = 64 * 1024 * 1024;

/// Removals written but not yet compacted away, by [`Store::note_removed`].
#[derive(Debug, Default)]
struct Removed {
    /// `Store::written` at the last reclaim check.
    written_seen: u64,
    bytes: u64,
    /// A topic was deleted: reclaimed whatever its size.
    deleted: bool,
    topics: BTreeSet<u32>,
}

/// What [`Store::reclaim_removed`] compacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    pub topics: usize,
    /// Stored bytes the removals took out of partitions (before compression).
    pub bytes: u64,
}

/// What [`Store::tend_blob_gc`] found and decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobSpace {
    /// Bytes of the live blob files.
    pub bytes: u64,
    /// Of those, bytes of batches no key refers to any more.
    pub garbage: u64,
    /// Whether garbage collection is on after this call.
    pub collecting: bool,
    /// Whether this call turned it on or off.
    pub changed: bool,
}

/// A topic as persisted in the `meta` family.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicMeta {
    /// Internal id used in data keys. Never reused, so a topic deleted and
    /// created again under the same name can never see the old records.
    pub id: u32,
    pub name: String,
    pub partitions: u32,
    pub config: TopicConfig,
    pub created_ms: u64,
}

/// What start-up recovery found for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    /// The earliest offset still readable.
    pub start: u64,
    /// The next offset to be assigned.
    pub end: u64,
    /// The largest timestamp ever appended (the time index's running max), if any.
    pub max_timestamp: Option<u64>,
    /// Bytes of the batches stored (what `retention_bytes` counts).
    pub bytes: u64,
}

#[derive(Debug)]
pub struct Recovered {
    pub topics: Vec<(TopicMeta, Vec<PartitionState>)>,
    pub next_topic_id: u32,
}

/// Where retention cuts a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The new earliest readable offset.
    pub new_start: u64,
    /// Batches below this base offset are deleted. It is never above the newest
    /// batch's base: the newest batch stays so that recovery can always derive
    /// the end offset from the stored records.
    pub keep_from_base: u64,
}

/// The opened database.
pub struct Store {
    db: DB,
    /// Faults the tests inject (off unless a test turns them on).
    faults: Arc<Faults>,
    /// Whether blob garbage collection is on (see [`Store::tend_blob_gc`]).
    blob_gc: AtomicBool,
    /// Removed ranges whose space compaction has not been asked to reclaim yet.
    removed: parking_lot::Mutex<Removed>,
    /// Bytes of write batches written since the store was opened.
    written: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

/// Bound on the WAL, and so on what a restart after a crash replays.
const MAX_WAL_BYTES: u64 = 128 * 1024 * 1024;

/// Which batches a read of offsets `from..end` takes, within its limits. The
/// store and the partitions' tail caches both choose with it, so a read gets the
/// same batches from either.
#[derive(Debug)]
pub struct ReadWindow {
    from: u64,
    end: u64,
    max_records: u64,
    max_bytes: usize,
    records: u64,
    bytes: usize,
}

impl ReadWindow {
    pub fn new(from: u64, end: u64, max_records: u64, max_bytes: usize) -> Self {
        ReadWindow { from, end, max_records, max_bytes, records: 0, bytes: 0 }
    }

    /// Offers the next batch in offset order (base offset, record count, stored
    /// size); true when the read takes it, false when it ends before `from`.
    pub fn take(&mut self, base: u64, count: u64, len: usize) -> bool {
        if base + count <= self.from {
            return false;
        }
        self.records += (base + count).min(self.end) - base.max(self.from);
        self.bytes += len;
        true
    }

    /// True once the batches taken cover `max_records` records or `max_bytes` bytes.
    pub fn is_full(&self) -> bool {
        self.records >= self.max_records || self.bytes >= self.max_bytes
    }
}

/// Most bytes a read reserves for its buffer up front (see [`read_reserve`]).
const READ_RESERVE_BYTES: usize = 64 * 1024 * 1024;

/// What a read reserves for its buffer once it has seen its first batch (`len` bytes, `count`
/// records): what the limits would take of batches like it, up to [`READ_RESERVE_BYTES`], so
/// that a read of many batches is not copied again as its buffer grows (reserved address
/// space costs nothing until it is written), while a read of a few records stays small.
fn read_reserve(len: usize, count: u64, max_records: u64, max_bytes: usize) -> usize {
    let batches = max_records.div_ceil(count.max(1));
    let by_records = usize::try_from(batches).unwrap_or(usize::MAX).saturating_mul(len);
    by_records.min(max_bytes).min(READ_RESERVE_BYTES).max(len)
}

/// Batches read from the `records` family, copied back to back into one buffer.
#[derive(Debug, Default)]
pub struct ReadBatches {
    /// Every batch read, in offset order, back to back.
    pub bytes: Bytes,
    /// Each batch's base offset and its slice of `bytes`, in order.
    pub batches: Vec<(u64, Bytes)>,
}

/// A batch's entry in the `batches` family: `count:u32 bytes:u32 max_timestamp:u64`.
fn batch_index(batch: &EncodedBatch) -> [u8; 16] {
    let mut idx = [0u8; 16];
    idx[0..4].copy_from_slice(&batch.count.to_le_bytes());
    idx[4..8].copy_from_slice(&(batch.bytes.len() as u32).to_le_bytes());
    idx[8..16].copy_from_slice(&batch.max_timestamp.to_le_bytes());
    idx
}

/// The `records` family's options. Blob files can be turned on for a directory written
/// without them: values already inline stay readable there, and new large ones go to blobs.
fn records_options(blob_files: bool) -> Options {
    let mut data = Options::default();
    data.set_compression_type(DBCompressionType::Lz4);
    data.set_write_buffer_size(64 * 1024 * 1024);
    let mut table = BlockBasedOptions::default();
    table.set_block_size(64 * 1024);
    data.set_block_based_table_factory(&table);
    if blob_files {
        data.set_enable_blob_files(true);
        data.set_min_blob_size(MIN_BLOB_BYTES);
        data.set_blob_compression_type(DBCompressionType::Lz4);
        // A blob file holds the batches of every partition flushed together, so it is
        // deleted only when retention has removed all of them. Garbage collection moves the
        // batches still live out of old blob files when compaction meets their keys, so a
        // topic with a long retention does not keep a short one's files. It rewrites live
        // data, so it is off until garbage builds up: `Store::tend_blob_gc` turns it on and
        // off. While on, compactions move the live batches of the older half of the files,
        // and RocksDB compacts the keys of the oldest files by itself while a quarter of that
        // half is garbage, so reclaiming does not wait for writes to reach those keys.
        data.set_enable_blob_gc(false);
        data.set_blob_gc_age_cutoff(0.5);
        data.set_blob_gc_force_threshold(BLOB_GC_START);
    }
    data
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with(path, true)
    }

    /// Opens the store with large batches in blob files or, as before blob files were
    /// used (and for the test that a directory written that way still opens), inline.
    fn open_with(path: &Path, blob_files: bool) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        // Group commit already batches writers; RocksDB's own pipelining helps the
        // WAL write overlap the memtable insert of the previous group.
        opts.set_enable_pipelined_write(true);
        // A WAL file is kept until every column family with data in it has been
        // flushed, and the small index families fill their memtables slowly: left
        // at its default (4 × all write buffers, ~2 GiB here) the WAL grows with
        // everything written, and a crash replays all of it. Past this size
        // RocksDB flushes the families holding the oldest WAL, so a crash restart
        // replays at most this much.
        opts.set_max_total_wal_size(MAX_WAL_BYTES);

        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_RECORDS, records_options(blob_files)),
            ColumnFamilyDescriptor::new(CF_BATCHES, Options::default()),
            ColumnFamilyDescriptor::new(CF_TIMEINDEX, Options::default()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Store {
            db,
            faults: Arc::default(),
            blob_gc: AtomicBool::new(false),
            removed: Default::default(),
            written: AtomicU64::new(0),
        })
    }

    /// The store's fault injection switches (see [`crate::faults`]).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| Error::Storage(format!("column family '{name}' is missing")))
    }

    /// Rewrites batches stored in the format before RecordBatch v2 (`record::v1`) as v2
    /// batches under the same keys, with their index entries, then records that the store
    /// is v2. A migration cut short resumes: each batch says which format it is in.
    /// Returns the number of batches rewritten.
    pub fn migrate(&self) -> Result<u64> {
        let meta = self.cf(CF_META)?;
        if self.db.get_cf(meta, keys::BATCH_FORMAT)?.as_deref() == Some(&[record::MAGIC][..]) {
            return Ok(0);
        }
        let records = self.cf(CF_RECORDS)?;
        let mut it = self.db.raw_iterator_cf(records);
        it.seek_to_first();
        let mut migrated = 0u64;
        let mut wb = WriteBatch::default();
        let mut pending = 0usize;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if record::v1::is_v1(v) {
                let (_, _, base) =
                    keys::batch_parts(k).ok_or_else(|| Error::Corrupt("a records key is not a batch key".into()))?;
                let mut builder = record::BatchBuilder::new();
                for rec in record::v1::decode(v)? {
                    let rec = rec?;
                    let new = record::NewRecord {
                        key: rec.key,
                        value: rec.value,
                        headers: rec.headers,
                        timestamp: Some(rec.timestamp),
                        partition: None,
                    };
                    builder.push(&new, rec.timestamp);
                }
                let mut batch = builder.finish();
                record::set_base_offset(&mut batch.bytes, base);
                wb.put_cf(records, k, &batch.bytes);
                wb.put_cf(self.cf(CF_BATCHES)?, k, batch_index(&batch));
                pending += batch.bytes.len();
                migrated += 1;
                if pending >= 4 * 1024 * 1024 {
                    self.db.write(std::mem::take(&mut wb))?;
                    pending = 0;
                }
            }
            it.next();
        }
        it.status()?;
        wb.put_cf(meta, keys::BATCH_FORMAT, [record::MAGIC]);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo)?;
        Ok(migrated)
    }

    /// Rebuilds every partition's offsets from what is stored.
    pub fn recover(&self) -> Result<Recovered> {
        let meta = self.cf(CF_META)?;
        let mut topics = Vec::new();
        let mut max_id = 0;
        let iter = self.db.iterator_cf(meta, IteratorMode::From(keys::TOPIC_META_PREFIX, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(keys::TOPIC_META_PREFIX) {
                break;
            }
            let topic: TopicMeta =
                serde_json::from_slice(&v).map_err(|e| Error::Corrupt(format!("topic metadata: {e}")))?;
            max_id = max_id.max(topic.id);
            let mut parts = Vec::with_capacity(topic.partitions as usize);
            for p in 0..topic.partitions {
                parts.push(self.recover_partition(topic.id, p)?);
            }
            topics.push((topic, parts));
        }
        let next_topic_id = match self.db.get_cf(meta, keys::NEXT_TOPIC_ID)? {
            Some(v) if v.len() == 4 => u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            Some(_) => return Err(Error::Corrupt("next topic id".into())),
            None => max_id + 1,
        }
        .max(max_id + 1);
        Ok(Recovered { topics, next_topic_id })
    }

    fn recover_partition(&self, tid: u32, p: u32) -> Result<PartitionState> {
        // One walk over the partition's small index entries (written in the same atomic
        // write as each batch) gives its first batch, its end and its running size, without
        // reading a batch: a large one is a blob-file read.
        let mut first = None;
        let mut end = 0;
        let mut bytes = 0;
        let mut it = self.db.raw_iterator_cf(self.cf(CF_BATCHES)?);
        it.seek(keys::batch(tid, p, 0));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let Some(base) = keys::batch_base(k, tid, p) else { break };
            first.get_or_insert(base);
            let (count, len) = batch_index_entry(v)?;
            end = base + u64::from(count);
            bytes += len;
            it.next();
        }
        it.status()?;
        let first = first.unwrap_or(end);
        let persisted = match self.db.get_cf(self.cf(CF_META)?, keys::log_start(tid, p))? {
            Some(v) => Some(decode_u64(&v)?),
            None => None,
        };
        let start = first.max(persisted.unwrap_or(0));
        let end = end.max(start);

        let index = self.cf(CF_TIMEINDEX)?;
        let mut it = self.db.raw_iterator_cf(index);
        it.seek_for_prev(keys::time(tid, p, u64::MAX, u64::MAX));
        let max_timestamp = it.key().and_then(|k| keys::time_entry(k, tid, p)).map(|(ts, _)| ts);
        it.status()?;
        Ok(PartitionState { start, end, max_timestamp, bytes })
    }

    /// Starts an atomic write.
    pub fn batch(&self) -> StoreBatch<'_> {
        StoreBatch { store: self, wb: WriteBatch::default() }
    }

    /// A write with room for `bytes` reserved up front: a group commit of megabytes is then
    /// copied into it once instead of being re-copied each time the write's buffer doubles.
    pub fn batch_with_capacity(&self, bytes: usize) -> StoreBatch<'_> {
        StoreBatch { store: self, wb: WriteBatch::with_capacity_bytes(bytes) }
    }

    /// Applies a write atomically; with `sync` the WAL is fsynced before returning.
    pub fn write(&self, batch: StoreBatch<'_>, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        if self.faults.write_fails() {
            // RocksDB refuses a synced write without a WAL: a real error from the real call.
            wo.disable_wal(true);
            wo.set_sync(true);
        }
        let bytes = batch.wb.size_in_bytes() as u64;
        self.db.write_opt(batch.wb, &wo)?;
        self.written.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Makes everything written so far durable: fsyncs the WAL and flushes memtables.
    pub fn flush(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        let cfs =
            [CF_RECORDS, CF_BATCHES, CF_TIMEINDEX, CF_META].iter().map(|n| self.cf(n)).collect::<Result<Vec<_>>>()?;
        self.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    /// Reads the stored batches that hold offsets `from..end` of a partition, in
    /// order, stopping once `max_records` records or `max_bytes` batch bytes are
    /// covered (the first batch is always returned), copied back to back into one buffer.
    pub fn read(
        &self,
        tid: u32,
        p: u32,
        from: u64,
        end: u64,
        max_records: u64,
        max_bytes: usize,
    ) -> Result<ReadBatches> {
        if from >= end {
            return Ok(ReadBatches::default());
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::batch(tid, p, end).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_RECORDS)?, ro);
        it.seek_for_prev(keys::batch(tid, p, from));
        if it.key().and_then(|k| keys::batch_base(k, tid, p)).is_none() {
            it.seek(keys::batch(tid, p, from));
        }
        let mut window = ReadWindow::new(from, end, max_records, max_bytes);
        let mut buf = BytesMut::new();
        let mut bases = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let Some(base) = keys::batch_base(k, tid, p) else { break };
            let count = record::batch_info(v)?.count as u64;
            if window.take(base, count, v.len()) {
                if bases.is_empty() {
                    buf.reserve(read_reserve(v.len(), count, max_records, max_bytes));
                }
                bases.push((base, v.len()));
                buf.extend_from_slice(v);
                if window.is_full() {
                    break;
                }
            }
            it.next();
        }
        it.status()?;
        let bytes = buf.freeze();
        let mut at = 0;
        let batches = bases
            .into_iter()
            .map(|(base, len)| {
                at += len;
                (base, bytes.slice(at - len..at))
            })
            .collect();
        Ok(ReadBatches { bytes, batches })
    }

    /// Kafka's offsetsForTimes: the first offset in `start..end` whose timestamp
    /// is ≥ `ts`, with that record's timestamp; `None` if there is none.
    pub fn offset_for_timestamp(&self, tid: u32, p: u32, start: u64, end: u64, ts: u64) -> Result<Option<(u64, u64)>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_TIMEINDEX)?);
        it.seek(keys::time(tid, p, ts, 0));
        let found = it.key().and_then(|k| keys::time_entry(k, tid, p));
        it.status()?;
        // The first index entry whose running max reaches `ts` names the first
        // batch that holds such a record: every earlier batch is entirely older.
        let Some((_, base)) = found else { return Ok(None) };
        let mut from = base.max(start);
        while from < end {
            let batches = self.read(tid, p, from, end, 10_000, 4 * 1024 * 1024)?.batches;
            if batches.is_empty() {
                break;
            }
            for (b, bytes) in &batches {
                for rec in record::decode(bytes)?.iter() {
                    let (delta, rec) = rec?;
                    let offset = b + delta;
                    if offset >= from && offset < end && rec.timestamp >= ts {
                        return Ok(Some((offset, rec.timestamp)));
                    }
                }
                let count = record::batch_info(bytes)?.count as u64;
                from = from.max(b + count);
            }
        }
        Ok(None)
    }

    /// Decides where retention cuts a partition, or `None` when nothing is due.
    /// `cutoff_ms`: records whose partition-wide running max timestamp is below it
    /// are expired. `max_bytes`: the newest batches totalling at most this many
    /// bytes are kept (and always the newest batch); `stored_bytes` is the
    /// partition's running size, so a partition within its limit costs one seek,
    /// and one over it a walk over the batches that go, never over those that stay.
    #[allow(clippy::too_many_arguments)]
    pub fn retention_cut(
        &self,
        tid: u32,
        p: u32,
        start: u64,
        end: u64,
        cutoff_ms: Option<u64>,
        max_bytes: Option<u64>,
        stored_bytes: u64,
    ) -> Result<Option<Cut>> {
        let batches = self.cf(CF_BATCHES)?;
        let mut it = self.db.raw_iterator_cf(batches);
        it.seek_for_prev(keys::batch(tid, p, u64::MAX));
        let Some(last_base) = it.key().and_then(|k| keys::batch_base(k, tid, p)) else {
            it.status()?;
            return Ok(None);
        };

        let mut cut = start;
        if let Some(cutoff) = cutoff_ms {
            let mut ti = self.db.raw_iterator_cf(self.cf(CF_TIMEINDEX)?);
            ti.seek(keys::time(tid, p, cutoff, 0));
            let kept = ti.key().and_then(|k| keys::time_entry(k, tid, p));
            ti.status()?;
            cut = cut.max(kept.map_or(end, |(_, base)| base));
        }
        if let Some(limit) = max_bytes
            && stored_bytes > limit
        {
            // Drop the oldest batches until the rest fit; the newest is kept even
            // when it alone is over the limit.
            let mut remaining = stored_bytes;
            it.seek(keys::batch(tid, p, 0));
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let Some(base) = keys::batch_base(k, tid, p) else { break };
                if remaining <= limit || base >= last_base {
                    cut = cut.max(base);
                    break;
                }
                remaining = remaining.saturating_sub(batch_index_bytes(v)?);
                it.next();
            }
            it.status()?;
        }
        if cut <= start {
            return Ok(None);
        }
        let new_start = cut.min(end);
        Ok(Some(Cut { new_start, keep_from_base: new_start.min(last_base) }))
    }
}

impl Store {
    /// Notes that a written batch removed `bytes` of topic `tid` (a retention cut) or the
    /// whole topic (`deleted`), for [`Store::reclaim_removed`].
    pub fn note_removed(&self, tid: u32, bytes: u64, deleted: bool) {
        let mut removed = self.removed.lock();
        removed.bytes = removed.bytes.saturating_add(bytes);
        removed.deleted |= deleted;
        removed.topics.insert(tid);
    }

    /// Compacts the keys of the topics whose batches were removed (deleted topics, or
    /// retention cuts of at least `min_bytes` in all), so that their space comes back
    /// without waiting for writes to bring compactions there: a blob file left with no
    /// live batch is deleted, one partly live counts its garbage (see `tend_blob_gc`), and
    /// inline batches leave their SST files. Only while the store is quiet (less than
    /// `quiet_bytes` written since the last check); a busy store's own compactions do it.
    /// Returns what was compacted, if anything.
    pub fn reclaim_removed(&self, min_bytes: u64, quiet_bytes: u64) -> Result<Option<Reclaimed>> {
        let removed = {
            let mut removed = self.removed.lock();
            let written = self.written.load(Ordering::Relaxed);
            let busy = written.saturating_sub(removed.written_seen) >= quiet_bytes;
            removed.written_seen = written;
            if busy || removed.topics.is_empty() || (!removed.deleted && removed.bytes < min_bytes) {
                return Ok(None);
            }
            // What is left starts empty, remembering this check's count of bytes written.
            std::mem::replace(&mut *removed, Removed { written_seen: written, ..Removed::default() })
        };
        let mut opts = rocksdb::CompactOptions::default();
        // Automatic compactions go on meanwhile (writes must not wait for this one).
        opts.set_exclusive_manual_compaction(false);
        for &tid in &removed.topics {
            let (lo, hi) = keys::topic_range(tid);
            for cf in [CF_RECORDS, CF_BATCHES, CF_TIMEINDEX] {
                self.db.compact_range_cf_opt(self.cf(cf)?, Some(lo), Some(hi), &opts);
            }
        }
        Ok(Some(Reclaimed { topics: removed.topics.len(), bytes: removed.bytes }))
    }

    /// Turns blob garbage collection on when at least `BLOB_GC_START` of the blob bytes (and
    /// `min_garbage` bytes) are garbage, and off again below `BLOB_GC_STOP`. Garbage is what
    /// compactions found unreferenced; a file that is all garbage is deleted without this.
    /// Collection rewrites live batches, so it is left off where there is nothing to gain
    /// (a log that only grows, or whose topics age out together, as whole blob files).
    pub fn tend_blob_gc(&self, min_garbage: u64) -> Result<BlobSpace> {
        let cf = self.cf(CF_RECORDS)?;
        let bytes = self.db.property_int_value_cf(cf, "rocksdb.live-blob-file-size")?.unwrap_or(0);
        let garbage = self.db.property_int_value_cf(cf, "rocksdb.live-blob-file-garbage-size")?.unwrap_or(0);
        let share = if bytes == 0 { 0.0 } else { garbage as f64 / bytes as f64 };
        let was = self.blob_gc.load(Ordering::Acquire);
        let collecting = if was { share >= BLOB_GC_STOP } else { share >= BLOB_GC_START && garbage >= min_garbage };
        if collecting != was {
            let value = if collecting { "true" } else { "false" };
            self.db.set_options_cf(cf, &[("enable_blob_garbage_collection", value)])?;
            self.blob_gc.store(collecting, Ordering::Release);
        }
        Ok(BlobSpace { bytes, garbage, collecting, changed: collecting != was })
    }

    /// Bytes held by the store: SST files, blob files and memtables of every column family.
    pub fn size_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for name in [CF_RECORDS, CF_BATCHES, CF_TIMEINDEX, CF_META] {
            let cf = self.cf(name)?;
            for prop in
                ["rocksdb.total-sst-files-size", "rocksdb.total-blob-file-size", "rocksdb.cur-size-all-mem-tables"]
            {
                total += self.db.property_int_value_cf(cf, prop)?.unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// The secret stored under `key`, created (32 random bytes, synced) the first time.
    pub fn secret(&self, key: &[u8]) -> Result<Vec<u8>> {
        let meta = self.cf(CF_META)?;
        if let Some(v) = self.db.get_cf(meta, key)? {
            return Ok(v);
        }
        let mut secret = vec![0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| Error::Storage("the system's random source failed".into()))?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_cf_opt(meta, key, &secret, &wo)?;
        Ok(secret)
    }

    /// A `meta` value.
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META)?, key)?)
    }

    /// Every `meta` entry whose key starts with `prefix`.
    pub fn scan_meta(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let meta = self.cf(CF_META)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(meta, IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Puts (`Some`) and deletes (`None`) `meta` entries in one synced write.
    pub fn write_meta(&self, changes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        let meta = self.cf(CF_META)?;
        let mut wb = WriteBatch::default();
        for (k, v) in changes {
            match v {
                Some(v) => wb.put_cf(meta, k, v),
                None => wb.delete_cf(meta, k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }

    /// Deletes the idempotency records `expired` says are past their window.
    pub fn expire_idempotency(&self, expired: impl Fn(&[u8]) -> bool) -> Result<usize> {
        let meta = self.cf(CF_META)?;
        let mut wb = WriteBatch::default();
        let mut n = 0;
        let iter = self.db.iterator_cf(meta, IteratorMode::From(keys::IDEMPOTENCY_PREFIX, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(keys::IDEMPOTENCY_PREFIX) {
                break;
            }
            if expired(&v) {
                wb.delete_cf(meta, &k);
                n += 1;
            }
        }
        if n > 0 {
            self.db.write(wb)?;
        }
        Ok(n)
    }

    /// When each group was last known to be in use (wall-clock ms).
    pub fn load_group_times(&self) -> Result<Vec<(String, u64)>> {
        let meta = self.cf(CF_META)?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(meta, IteratorMode::From(keys::GROUP_TIME_PREFIX, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            let Some(rest) = k.strip_prefix(keys::GROUP_TIME_PREFIX) else { break };
            let group = rest
                .strip_suffix(&[0])
                .and_then(|g| std::str::from_utf8(g).ok())
                .ok_or_else(|| Error::Corrupt("group time key".into()))?;
            out.push((group.to_owned(), decode_u64(&v)?));
        }
        Ok(out)
    }

    /// Every idempotent producer's stored state: ((topic id, partition, producer id), state bytes).
    #[allow(clippy::type_complexity)]
    pub fn load_producers(&self) -> Result<Vec<((u32, u32, i64), Vec<u8>)>> {
        let meta = self.cf(CF_META)?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(meta, IteratorMode::From(keys::PRODUCER_PREFIX, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(keys::PRODUCER_PREFIX) {
                break;
            }
            let id = keys::producer_entry(&k).ok_or_else(|| Error::Corrupt("producer state key".into()))?;
            out.push((id, v.to_vec()));
        }
        Ok(out)
    }

    /// The next producer id to hand out (0 in a store that never handed one out).
    pub fn next_producer_id(&self) -> Result<i64> {
        match self.get_meta(keys::NEXT_PRODUCER_ID)? {
            Some(v) => Ok(decode_u64(&v)? as i64),
            None => Ok(0),
        }
    }

    /// Every committed offset: (group, topic id, partition, offset).
    pub fn load_offsets(&self) -> Result<Vec<(String, u32, u32, u64)>> {
        let meta = self.cf(CF_META)?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(meta, IteratorMode::From(keys::COMMITTED_PREFIX, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(keys::COMMITTED_PREFIX) {
                break;
            }
            let (group, tid, p) =
                keys::committed_entry(&k).ok_or_else(|| Error::Corrupt("committed offset key".into()))?;
            out.push((group, tid, p, decode_u64(&v)?));
        }
        Ok(out)
    }
}

fn decode_u64(v: &[u8]) -> Result<u64> {
    let a: [u8; 8] = v.try_into().map_err(|_| Error::Corrupt("expected 8 bytes".into()))?;
    Ok(u64::from_le_bytes(a))
}

/// A `batches` entry's record count and batch bytes (the inverse of [`batch_index`]).
fn batch_index_entry(v: &[u8]) -> Result<(u32, u64)> {
    if v.len() != 16 {
        return Err(Error::Corrupt("batch index entry".into()));
    }
    Ok((u32::from_le_bytes([v[0], v[1], v[2], v[3]]), u32::from_le_bytes([v[4], v[5], v[6], v[7]]) as u64))
}

fn batch_index_bytes(v: &[u8]) -> Result<u64> {
    Ok(batch_index_entry(v)?.1)
}

#[cfg(test)]
impl Store {
    /// Overwrites a batch's index entry with bytes that do not decode, for the
    /// tests of what corruption does.
    pub(crate) fn corrupt_batch_index(&self, tid: u32, p: u32, base: u64) -> Result<()> {
        self.db.put_cf(self.cf(CF_BATCHES)?, keys::batch(tid, p, base), b"bad")?;
        Ok(())
    }

    /// Compacts the whole `records` family now, the bottom level too (tests of what
    /// compaction reclaims).
    pub(crate) fn compact_records(&self) -> Result<()> {
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db.compact_range_cf_opt(self.cf(CF_RECORDS)?, None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }

    /// An integer property of the `records` family.
    pub(crate) fn records_property(&self, name: &str) -> Result<u64> {
        Ok(self.db.property_int_value_cf(self.cf(CF_RECORDS)?, name)?.unwrap_or(0))
    }
}

/// Up to this many batches, a retention cut deletes keys one by one rather
/// than with a range tombstone.
const POINT_DELETES_MAX: usize = 256;

/// An atomic group of changes, applied by [`Store::write`].
pub struct StoreBatch<'a> {
    store: &'a Store,
    wb: WriteBatch,
}

impl StoreBatch<'_> {
    /// Stores one batch at `base`. `index_timestamp` is set when the batch raises
    /// the partition's running max timestamp, which adds a time-index entry.
    pub fn append(
        &mut self,
        tid: u32,
        p: u32,
        base: u64,
        batch: &EncodedBatch,
        index_timestamp: Option<u64>,
    ) -> Result<()> {
        if self.store.faults.append_fails() {
            return Err(Error::Storage("injected fault: staging a batch failed".into()));
        }
        let key = keys::batch(tid, p, base);
        self.wb.put_cf(self.store.cf(CF_RECORDS)?, key, &batch.bytes);
        self.wb.put_cf(self.store.cf(CF_BATCHES)?, key, batch_index(batch));
        if let Some(ts) = index_timestamp {
            self.wb.put_cf(self.store.cf(CF_TIMEINDEX)?, keys::time(tid, p, ts, base), []);
        }
        Ok(())
    }

    pub fn put_topic(&mut self, meta: &TopicMeta) -> Result<()> {
        let json = serde_json::to_vec(meta).map_err(|e| Error::Storage(e.to_string()))?;
        self.wb.put_cf(self.store.cf(CF_META)?, keys::topic_meta(&meta.name), json);
        Ok(())
    }

    pub fn put_next_topic_id(&mut self, id: u32) -> Result<()> {
        self.wb.put_cf(self.store.cf(CF_META)?, keys::NEXT_TOPIC_ID, id.to_le_bytes());
        Ok(())
    }

    /// Removes a topic's description and every record, index entry and start offset.
    pub fn delete_topic(&mut self, tid: u32, name: &str) -> Result<()> {
        let (lo, hi) = keys::topic_range(tid);
        for cf in [CF_RECORDS, CF_BATCHES, CF_TIMEINDEX] {
            self.wb.delete_range_cf(self.store.cf(cf)?, lo, hi);
        }
        let meta = self.store.cf(CF_META)?;
        self.wb.delete_cf(meta, keys::topic_meta(name));
        let (lo, hi) = keys::log_start_topic_range(tid);
        self.wb.delete_range_cf(meta, lo, hi);
        let (lo, hi) = keys::producer_topic_range(tid);
        self.wb.delete_range_cf(meta, lo, hi);
        // Every group's committed offsets for the topic go with it.
        let iter = self.store.db.iterator_cf(meta, IteratorMode::From(keys::COMMITTED_PREFIX, Direction::Forward));
        for item in iter {
            let (k, _) = item?;
            if !k.starts_with(keys::COMMITTED_PREFIX) {
                break;
            }
            let (_, id, _) = keys::committed_entry(&k).ok_or_else(|| Error::Corrupt("committed offset key".into()))?;
            if id == tid {
                self.wb.delete_cf(meta, &k);
            }
        }
        // And every idempotency key sent for it: a topic created again under the
        // name must not replay the old topic's answers.
        let iter = self.store.db.iterator_cf(meta, IteratorMode::From(keys::IDEMPOTENCY_PREFIX, Direction::Forward));
        for item in iter {
            let (k, _) = item?;
            if !k.starts_with(keys::IDEMPOTENCY_PREFIX) {
                break;
            }
            if keys::idempotency_topic(&k) == Some(name.as_bytes()) {
                self.wb.delete_cf(meta, &k);
            }
        }
        Ok(())
    }

    /// Stages a `meta` value.
    pub fn put_meta(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.wb.put_cf(self.store.cf(CF_META)?, key, value);
        Ok(())
    }

    /// Stores an idempotent producer's state on a partition (`None`: forgets it).
    pub fn put_producer(&mut self, tid: u32, p: u32, producer_id: i64, state: Option<&[u8]>) -> Result<()> {
        let (meta, key) = (self.store.cf(CF_META)?, keys::producer(tid, p, producer_id));
        match state {
            Some(bytes) => self.wb.put_cf(meta, key, bytes),
            None => self.wb.delete_cf(meta, key),
        }
        Ok(())
    }

    /// Stores the next producer id to hand out.
    pub fn put_next_producer_id(&mut self, id: i64) -> Result<()> {
        self.wb.put_cf(self.store.cf(CF_META)?, keys::NEXT_PRODUCER_ID, (id as u64).to_le_bytes());
        Ok(())
    }

    /// Records when a group was last known to be in use (wall-clock ms).
    pub fn put_group_time(&mut self, group: &str, at_ms: u64) -> Result<()> {
        self.wb.put_cf(self.store.cf(CF_META)?, keys::group_time(group), at_ms.to_le_bytes());
        Ok(())
    }

    /// Stores a group's committed offset for a partition.
    pub fn put_offset(&mut self, group: &str, tid: u32, p: u32, offset: u64) -> Result<()> {
        self.wb.put_cf(self.store.cf(CF_META)?, keys::committed(group, tid, p), offset.to_le_bytes());
        Ok(())
    }

    /// Removes every committed offset of a group.
    pub fn delete_group(&mut self, group: &str) -> Result<()> {
        let lo = keys::group_prefix(group);
        let mut hi = lo.clone();
        if let Some(last) = hi.last_mut() {
            *last = 1;
        }
        let meta = self.store.cf(CF_META)?;
        self.wb.delete_range_cf(meta, lo, hi);
        self.wb.delete_cf(meta, keys::group_time(group));
        Ok(())
    }

    /// Applies a retention cut: deletes whole batches below `cut.keep_from_base`
    /// and their time-index entries, and records the new log start offset.
    /// Returns the bytes of the batches it deletes.
    pub fn truncate(&mut self, tid: u32, p: u32, cut: Cut) -> Result<u64> {
        let lo = keys::batch(tid, p, 0);
        let hi = keys::batch(tid, p, cut.keep_from_base);
        let (records, batches) = (self.store.cf(CF_RECORDS)?, self.store.cf(CF_BATCHES)?);
        let mut removed = 0;
        let mut bases = Vec::new();
        let mut it = self.store.db.raw_iterator_cf(batches);
        it.seek(lo);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            match keys::batch_base(k, tid, p) {
                Some(base) if base < cut.keep_from_base => {
                    removed += batch_index_bytes(v)?;
                    bases.push(base);
                }
                _ => break,
            }
            it.next();
        }
        it.status()?;
        // A few batches (the usual cut) are deleted one by one: a range tombstone
        // per partition would make every later read in the memtable re-fragment
        // them all, which with many partitions costs more than the deletes.
        let ranged = bases.len() > POINT_DELETES_MAX;
        if ranged {
            self.wb.delete_range_cf(records, lo, hi);
            self.wb.delete_range_cf(batches, lo, hi);
        } else {
            for base in &bases {
                let key = keys::batch(tid, p, *base);
                self.wb.delete_cf(records, key);
                self.wb.delete_cf(batches, key);
            }
        }
        // Index entries are ordered by timestamp and by base alike (both grow), so
        // the entries of deleted batches are a prefix of the partition's index.
        let index = self.store.cf(CF_TIMEINDEX)?;
        let mut it = self.store.db.raw_iterator_cf(index);
        it.seek(keys::time(tid, p, 0, 0));
        let mut upper = keys::time(tid, p, u64::MAX, u64::MAX);
        let mut entries = Vec::new();
        while let Some((ts, base)) = it.key().and_then(|k| keys::time_entry(k, tid, p)) {
            if base >= cut.keep_from_base {
                upper = keys::time(tid, p, ts, base);
                break;
            }
            entries.push((ts, base));
            it.next();
        }
        it.status()?;
        if ranged || entries.len() > POINT_DELETES_MAX {
            self.wb.delete_range_cf(index, keys::time(tid, p, 0, 0), upper);
        } else {
            for (ts, base) in entries {
                self.wb.delete_cf(index, keys::time(tid, p, ts, base));
            }
        }
        self.wb.put_cf(self.store.cf(CF_META)?, keys::log_start(tid, p), cut.new_start.to_le_bytes());
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_reserves_what_its_limits_take_of_batches_like_its_first() {
        // A Kafka Fetch (no record limit): its byte limit.
        assert_eq!(read_reserve(1000, 10, u64::MAX, 10 << 20), 10 << 20);
        // A read of 100 records from batches of 10: ten batches, not its 50 MiB byte limit.
        assert_eq!(read_reserve(1000, 10, 100, 50 << 20), 10_000);
        // Never past the cap, never less than the first batch.
        assert_eq!(read_reserve(1000, 1, u64::MAX, usize::MAX), READ_RESERVE_BYTES);
        assert_eq!(read_reserve(5000, 10, 1, 100), 5000);
    }

    /// A batch of `count` records whose values are `value_bytes` long, each distinct.
    fn batch_of(count: u32, value_bytes: usize, seed: u64) -> record::EncodedBatch {
        let mut builder = record::BatchBuilder::new();
        for i in 0..count {
            let mut value = format!("{seed}-{i}-").into_bytes();
            value.resize(value_bytes, b'a' + (i % 26) as u8);
            let rec = record::NewRecord {
                key: None,
                value: Some(record::Blob::new(record::Format::Binary, value)),
                headers: Vec::new(),
                timestamp: None,
                partition: None,
            };
            builder.push(&rec, 1_000 + seed);
        }
        builder.finish()
    }

    /// Appends `batch` at `base` of topic 1's partition 0, synced.
    fn put(store: &Store, base: u64, batch: &record::EncodedBatch) {
        put_to(store, 1, base, batch);
    }

    /// Appends `batch` at `base` of topic `tid`'s partition 0, synced.
    fn put_to(store: &Store, tid: u32, base: u64, batch: &record::EncodedBatch) {
        let mut b = store.batch();
        b.append(tid, 0, base, batch, None).unwrap();
        store.write(b, true).unwrap();
    }

    /// Every batch stored for topic 1's partition 0 from offset 0, as (base, bytes).
    fn read_all(store: &Store, end: u64) -> Vec<(u64, Vec<u8>)> {
        let read = store.read(1, 0, 0, end, u64::MAX, usize::MAX).unwrap();
        read.batches.into_iter().map(|(base, bytes)| (base, bytes.to_vec())).collect()
    }

    /// Batches as (base, length, digest), so that a failure prints briefly.
    fn brief(batches: &[(u64, Vec<u8>)]) -> Vec<(u64, usize, u64)> {
        use std::hash::{Hash, Hasher};
        let digest = |b: &[u8]| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            b.hash(&mut h);
            h.finish()
        };
        batches.iter().map(|(base, b)| (*base, b.len(), digest(b))).collect()
    }

    #[test]
    fn a_directory_written_without_blob_files_keeps_every_batch_once_they_are_on() {
        let dir = tempfile::tempdir().unwrap();
        // Small batches (single records) and large ones (a Kafka producer's), as written by
        // the store before large batches went to blob files.
        let mut expected = Vec::new();
        let mut base = 0;
        fn write(store: &Store, expected: &mut Vec<(u64, Vec<u8>)>, base: &mut u64, seed: u64) {
            for (i, (count, value_bytes)) in [(1, 50), (200, 100), (3, 20), (100, 400)].into_iter().enumerate() {
                let mut batch = batch_of(count, value_bytes, seed * 10 + i as u64);
                record::set_base_offset(&mut batch.bytes, *base); // as the writer does
                put(store, *base, &batch);
                expected.push((*base, batch.bytes));
                *base += u64::from(count);
            }
        }
        {
            let old = Store::open_with(dir.path(), false).unwrap();
            write(&old, &mut expected, &mut base, 1);
            old.flush().unwrap();
            write(&old, &mut expected, &mut base, 2); // left in the WAL only
            assert_eq!(old.records_property("rocksdb.total-blob-file-size").unwrap(), 0);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            brief(&read_all(&store, base)),
            brief(&expected),
            "what the old layout wrote, read with blob files on"
        );
        write(&store, &mut expected, &mut base, 3);
        store.flush().unwrap();
        assert!(store.records_property("rocksdb.total-blob-file-size").unwrap() > 0, "new large batches go to blobs");
        store.compact_records().unwrap();
        assert_eq!(brief(&read_all(&store, base)), brief(&expected), "both layouts, after a compaction");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(brief(&read_all(&store, base)), brief(&expected), "both layouts, after a restart");
        let recovered = store.recover_partition(1, 0).unwrap();
        assert_eq!((recovered.start, recovered.end), (0, base));
    }

    #[test]
    fn retention_deletes_the_blob_files_whose_batches_it_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Eight flushes of four batches of 640 records (about 70 kB each before compression):
        // eight blob files.
        let mut base = 0;
        for flush in 0..8 {
            for i in 0..4 {
                put(&store, base, &batch_of(640, 100, flush * 4 + i));
                base += 640;
            }
            store.flush().unwrap();
        }
        let files = store.records_property("rocksdb.num-blob-files").unwrap();
        let before = store.records_property("rocksdb.total-blob-file-size").unwrap();
        assert_eq!(files, 8);
        // Keep the newest batch only, as a retention cut does, then let compaction drop the
        // references to what was removed.
        let cut = Cut { new_start: base - 640, keep_from_base: base - 640 };
        let mut b = store.batch();
        b.truncate(1, 0, cut).unwrap();
        store.write(b, true).unwrap();
        store.flush().unwrap();
        store.compact_records().unwrap();
        let after = store.records_property("rocksdb.total-blob-file-size").unwrap();
        // The newest blob file stays: it holds the batch kept.
        assert_eq!(store.records_property("rocksdb.num-blob-files").unwrap(), 1);
        assert!(after * 6 <= before, "blob bytes {before} before, {after} after removing 31 of 32 batches");
        assert_eq!(read_all(&store, base).len(), 1);
    }

    /// Eight flushes, each a blob file holding a batch of topic 1 and one of topic 2.
    fn two_topics_in_eight_blob_files(store: &Store) {
        for flush in 0..8u64 {
            put_to(store, 1, flush * 640, &batch_of(640, 100, flush));
            put_to(store, 2, flush * 640, &batch_of(640, 100, 100 + flush));
            store.flush().unwrap();
        }
        assert_eq!(store.records_property("rocksdb.num-blob-files").unwrap(), 8);
    }

    #[test]
    fn a_deleted_topics_space_comes_back_with_nothing_written_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for flush in 0..4u64 {
            put_to(&store, 1, flush * 640, &batch_of(640, 100, flush));
            put_to(&store, 1, 10_000 + flush, &batch_of(1, 10, flush)); // a small batch, inline
            store.flush().unwrap();
        }
        let sst = |store: &Store| store.records_property("rocksdb.total-sst-files-size").unwrap();
        let inline = sst(&store);
        let mut b = store.batch();
        b.delete_topic(1, "one").unwrap();
        store.write(b, true).unwrap();
        store.note_removed(1, 0, true);
        // An idle store compacts nothing by itself: the topic's files stay.
        assert_eq!(store.records_property("rocksdb.num-blob-files").unwrap(), 4);
        assert_eq!(store.reclaim_removed(u64::MAX, u64::MAX).unwrap(), Some(Reclaimed { topics: 1, bytes: 0 }));
        assert_eq!(store.records_property("rocksdb.num-blob-files").unwrap(), 0);
        assert_eq!(store.records_property("rocksdb.live-blob-file-size").unwrap(), 0);
        assert!(sst(&store) < inline, "SST bytes {inline} before, {} after", sst(&store));
        assert_eq!(store.reclaim_removed(0, u64::MAX).unwrap(), None, "nothing left to reclaim");
    }

    #[test]
    fn retention_cuts_are_compacted_away_once_they_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.note_removed(1, 600, false);
        assert_eq!(store.reclaim_removed(1000, u64::MAX).unwrap(), None);
        store.note_removed(2, 400, false);
        assert_eq!(store.reclaim_removed(1000, u64::MAX).unwrap(), Some(Reclaimed { topics: 2, bytes: 1000 }));
        assert_eq!(store.reclaim_removed(0, u64::MAX).unwrap(), None);
    }

    #[test]
    fn a_busy_store_leaves_removed_keys_to_its_own_compactions_until_it_is_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.note_removed(1, 0, true);
        put_to(&store, 2, 0, &batch_of(64, 100, 0)); // about 7 kB written since the last check
        assert_eq!(store.reclaim_removed(0, 4096).unwrap(), None, "busy: left pending");
        // Nothing written since that check: quiet, so the deletion is compacted now.
        assert_eq!(store.reclaim_removed(0, 4096).unwrap(), Some(Reclaimed { topics: 1, bytes: 0 }));
        // Still nothing written: the next removal is compacted at the next check too.
        store.note_removed(3, 0, true);
        assert_eq!(store.reclaim_removed(0, 4096).unwrap(), Some(Reclaimed { topics: 1, bytes: 0 }));
    }

    #[test]
    fn blob_garbage_collection_stays_off_while_nothing_is_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        two_topics_in_eight_blob_files(&store);
        // A log that only grows: compactions move keys and rewrite no batch (with collection
        // on, the older files' batches would move to a new file).
        store.compact_records().unwrap();
        assert_eq!(store.records_property("rocksdb.num-blob-files").unwrap(), 8);
        let space = store.tend_blob_gc(0).unwrap();
        assert_eq!((space.garbage, space.collecting, space.changed), (0, false, false), "{space:?}");
    }

    #[test]
    fn garbage_collection_moves_a_kept_topics_batches_out_of_old_blob_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        two_topics_in_eight_blob_files(&store);
        let kept = store.read(2, 0, 0, 8 * 640, u64::MAX, usize::MAX).unwrap().bytes;
        let before = store.records_property("rocksdb.total-blob-file-size").unwrap();
        let mut b = store.batch();
        b.delete_topic(1, "one").unwrap();
        store.write(b, true).unwrap();
        store.flush().unwrap();
        store.compact_records().unwrap();
        // Compaction dropped topic 1's keys: every file is half garbage, none all garbage,
        // so none could be deleted, and with collection off nothing was moved.
        assert_eq!(store.records_property("rocksdb.num-blob-files").unwrap(), 8);
        let space = store.tend_blob_gc(0).unwrap();
        assert!(space.collecting && space.changed, "{space:?}");
        assert!(space.garbage * 5 >= space.bytes * 2, "about half the blob bytes are garbage: {space:?}");
        // With collection on, RocksDB compacts the oldest files' keys by itself (no write
        // needed), and again after each such compaction, moving the live batches out. Those
        // background compactions are waited for, up to a bound, until garbage is below a
        // tenth of the blob bytes and collection stops.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut space = store.tend_blob_gc(0).unwrap();
        while space.collecting && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            space = store.tend_blob_gc(0).unwrap();
        }
        assert!(!space.collecting && space.changed, "{space:?}");
        let after = store.records_property("rocksdb.total-blob-file-size").unwrap();
        assert!(after * 10 <= before * 7, "blob bytes {before} before deleting topic 1, {after} after");
        let read = store.read(2, 0, 0, 8 * 640, u64::MAX, usize::MAX).unwrap().bytes;
        assert!(read == kept, "topic 2 reads back {} bytes, {} were stored", read.len(), kept.len());
        assert!(store.read(1, 0, 0, 8 * 640, u64::MAX, usize::MAX).unwrap().batches.is_empty());
    }
}
