//! The RocksDB key layout. Every key is big-endian so that byte order is
//! numeric order: a partition's batches sort by base offset, its time index by
//! timestamp, and a topic's keys form one contiguous range.

/// `records` and `batches` column families: topic id, partition, base offset.
pub fn batch(topic_id: u32, partition: u32, base: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[0..4].copy_from_slice(&topic_id.to_be_bytes());
    k[4..8].copy_from_slice(&partition.to_be_bytes());
    k[8..16].copy_from_slice(&base.to_be_bytes());
    k
}

/// Decodes the base offset of a `batch` key that belongs to (topic_id, partition).
pub fn batch_base(key: &[u8], topic_id: u32, partition: u32) -> Option<u64> {
    if key.len() != 16 || key[0..8] != partition_prefix(topic_id, partition) {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[8..16]);
    Some(u64::from_be_bytes(b))
}

/// Decodes a `batch` key into (topic id, partition, base offset).
pub fn batch_parts(key: &[u8]) -> Option<(u32, u32, u64)> {
    let k: &[u8; 16] = key.try_into().ok()?;
    let (t, rest) = k.split_at(4);
    let (p, b) = rest.split_at(4);
    Some((
        u32::from_be_bytes(t.try_into().ok()?),
        u32::from_be_bytes(p.try_into().ok()?),
        u64::from_be_bytes(b.try_into().ok()?),
    ))
}

/// `timeindex` column family: topic id, partition, running max timestamp, base offset.
pub fn time(topic_id: u32, partition: u32, timestamp: u64, base: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[0..8].copy_from_slice(&partition_prefix(topic_id, partition));
    k[8..16].copy_from_slice(&timestamp.to_be_bytes());
    k[16..24].copy_from_slice(&base.to_be_bytes());
    k
}

/// Decodes (timestamp, base offset) of a `time` key that belongs to (topic_id, partition).
pub fn time_entry(key: &[u8], topic_id: u32, partition: u32) -> Option<(u64, u64)> {
    if key.len() != 24 || key[0..8] != partition_prefix(topic_id, partition) {
        return None;
    }
    let mut t = [0u8; 8];
    let mut b = [0u8; 8];
    t.copy_from_slice(&key[8..16]);
    b.copy_from_slice(&key[16..24]);
    Some((u64::from_be_bytes(t), u64::from_be_bytes(b)))
}

pub fn partition_prefix(topic_id: u32, partition: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[0..4].copy_from_slice(&topic_id.to_be_bytes());
    k[4..8].copy_from_slice(&partition.to_be_bytes());
    k
}

/// The half-open key range holding every key of a topic, in any of the data families.
pub fn topic_range(topic_id: u32) -> ([u8; 4], [u8; 4]) {
    (topic_id.to_be_bytes(), topic_id.saturating_add(1).to_be_bytes())
}

/// `meta` column family: a topic's description, by name.
pub fn topic_meta(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + name.len());
    k.extend_from_slice(b"t/");
    k.extend_from_slice(name.as_bytes());
    k
}

pub const TOPIC_META_PREFIX: &[u8] = b"t/";

/// `meta` column family: the next topic id to hand out (ids are never reused).
pub const NEXT_TOPIC_ID: &[u8] = b"next_topic_id";

/// `meta`: the format of stored batches (`2`: RecordBatch v2); absent in data directories
/// written before it, whose batches `Store::migrate` rewrites.
pub const BATCH_FORMAT: &[u8] = b"batch_format";

/// `meta` column family: a partition's log start offset, once retention has moved it.
pub fn log_start(topic_id: u32, partition: u32) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0..2].copy_from_slice(b"s/");
    k[2..10].copy_from_slice(&partition_prefix(topic_id, partition));
    k
}

pub fn log_start_topic_range(topic_id: u32) -> ([u8; 6], [u8; 6]) {
    let mut lo = [0u8; 6];
    let mut hi = [0u8; 6];
    lo[0..2].copy_from_slice(b"s/");
    hi[0..2].copy_from_slice(b"s/");
    let (a, b) = topic_range(topic_id);
    lo[2..6].copy_from_slice(&a);
    hi[2..6].copy_from_slice(&b);
    (lo, hi)
}

/// `meta` column family: prefix of a group's committed offsets. Group ids never
/// contain a NUL byte, so the NUL ends the id unambiguously.
pub fn group_prefix(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + group.len());
    k.extend_from_slice(b"o/");
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k
}

/// `meta` column family: a group's committed offset for (topic id, partition).
pub fn committed(group: &str, topic_id: u32, partition: u32) -> Vec<u8> {
    let mut k = group_prefix(group);
    k.extend_from_slice(&partition_prefix(topic_id, partition));
    k
}

pub const COMMITTED_PREFIX: &[u8] = b"o/";

/// `meta` column family: when a group was last known to be in use (wall-clock ms:
/// its last commit, the moment it became empty, or a periodic refresh while it
/// has members). An empty group's offsets expire `offsets_retention_ms` after it.
pub fn group_time(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + group.len());
    k.extend_from_slice(GROUP_TIME_PREFIX);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k
}

pub const GROUP_TIME_PREFIX: &[u8] = b"a/";

/// `meta` column family: a produce's idempotency key (scoped to its principal
/// and topic) → the first answer (`log::IdempotentAnswer`, JSON).
pub fn idempotency(principal: &str, topic: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + principal.len() + topic.len() + key.len());
    k.extend_from_slice(IDEMPOTENCY_PREFIX);
    for part in [principal, topic] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k.extend_from_slice(key.as_bytes());
    k
}

pub const IDEMPOTENCY_PREFIX: &[u8] = b"i/";

/// The topic name in an `idempotency` key.
pub fn idempotency_topic(key: &[u8]) -> Option<&[u8]> {
    let rest = key.strip_prefix(IDEMPOTENCY_PREFIX)?;
    let after_principal = &rest[rest.iter().position(|b| *b == 0)? + 1..];
    Some(&after_principal[..after_principal.iter().position(|b| *b == 0)?])
}

/// `meta` column family: an idempotent producer's state on a partition
/// (`log::producers::ProducerState`), by topic id, partition and producer id.
pub fn producer(topic_id: u32, partition: u32, producer_id: i64) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[0..2].copy_from_slice(PRODUCER_PREFIX);
    k[2..10].copy_from_slice(&partition_prefix(topic_id, partition));
    k[10..18].copy_from_slice(&producer_id.to_be_bytes());
    k
}

pub const PRODUCER_PREFIX: &[u8] = b"p/";

/// The (topic id, partition, producer id) of a `producer` key.
pub fn producer_entry(key: &[u8]) -> Option<(u32, u32, i64)> {
    let rest: &[u8; 16] = key.strip_prefix(PRODUCER_PREFIX)?.try_into().ok()?;
    let tid = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let p = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&rest[8..16]);
    Some((tid, p, i64::from_be_bytes(id)))
}

/// The key range of every producer state of a topic.
pub fn producer_topic_range(topic_id: u32) -> ([u8; 6], [u8; 6]) {
    let (a, b) = topic_range(topic_id);
    let mut lo = [0u8; 6];
    let mut hi = [0u8; 6];
    lo[0..2].copy_from_slice(PRODUCER_PREFIX);
    hi[0..2].copy_from_slice(PRODUCER_PREFIX);
    lo[2..6].copy_from_slice(&a);
    hi[2..6].copy_from_slice(&b);
    (lo, hi)
}

/// `meta` column family: the next producer id InitProducerId hands out (never reused).
pub const NEXT_PRODUCER_ID: &[u8] = b"next_producer_id";

/// `meta` column family: the secret that signs poll cursors.
pub const CURSOR_SECRET: &[u8] = b"k/cursor";

/// Decodes a `committed` key into (group, topic id, partition).
pub fn committed_entry(key: &[u8]) -> Option<(String, u32, u32)> {
    let rest = key.strip_prefix(COMMITTED_PREFIX)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let (group, ids) = (&rest[..nul], &rest[nul + 1..]);
    if ids.len() != 8 {
        return None;
    }
    let topic_id = u32::from_be_bytes([ids[0], ids[1], ids[2], ids[3]]);
    let partition = u32::from_be_bytes([ids[4], ids[5], ids[6], ids[7]]);
    Some((String::from_utf8(group.to_vec()).ok()?, topic_id, partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically() {
        assert!(batch(1, 0, 255) < batch(1, 0, 256));
        assert!(batch(1, 0, u64::MAX) < batch(1, 1, 0));
        assert!(batch(1, u32::MAX, u64::MAX) < batch(2, 0, 0));
        assert!(time(1, 0, 5, 9) < time(1, 0, 6, 0));
        assert_eq!(batch_base(&batch(3, 4, 77), 3, 4), Some(77));
        assert_eq!(batch_base(&batch(3, 5, 77), 3, 4), None);
        assert_eq!(time_entry(&time(3, 4, 10, 20), 3, 4), Some((10, 20)));
        assert_eq!(committed_entry(&committed("g.1", 7, 2)), Some(("g.1".to_string(), 7, 2)));
        assert!(committed("g", 1, 0) < group_prefix("g-"), "one group's keys never interleave with another's");
    }
}
