//! Idempotent producers: what the writer remembers of each (partition, producer id) so
//! that a retried batch is stored once and a lost one is noticed.
//!
//! Kafka's rules, as its broker applies them to a batch carrying a producer id:
//! - no state for the producer on the partition: the batch is taken whatever its sequence
//!   (a new producer, or one whose state expired);
//! - an epoch older than the state's: `INVALID_PRODUCER_EPOCH` (a newer instance fenced it);
//! - a newer epoch: the batch must start at sequence 0;
//! - the same epoch: a batch equal (first and last sequence) to one of the last
//!   [`RECENT`] stored is a retry, answered with the offset it was stored at and not
//!   written again; otherwise it must start right after the last one stored, or it is
//!   `OUT_OF_ORDER_SEQUENCE_NUMBER`.
//!
//! The state is stored in the same atomic write as the batch it describes, so a crash
//! keeps both or neither, and loaded back when the log opens.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::record::{BatchError, ProducerSeq};
use crate::store::Store;

/// How many of a producer's last batches per partition are remembered for retries
/// (Kafka's producers keep at most five requests in flight).
pub const RECENT: usize = 5;

/// One stored batch of a producer: its first and last sequence and its base offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub first: i32,
    pub last: i32,
    pub base: u64,
}

/// A producer's state on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    pub epoch: i16,
    /// Wall-clock ms of its last stored batch; the state expires some time after it.
    pub last_ms: u64,
    /// Its last batches, oldest first, at most [`RECENT`].
    pub recent: Vec<Sent>,
}

/// Every producer's state, by (topic id, partition, producer id), and the next producer
/// id to hand out: owned by the writer thread.
#[derive(Debug, Default)]
pub struct Producers {
    pub states: HashMap<(u32, u32, i64), ProducerState>,
    pub next_id: i64,
}

impl Producers {
    /// What the store holds (blocking: called while the log opens).
    pub fn load(store: &Store) -> Result<Producers> {
        let mut states = HashMap::new();
        for (key, bytes) in store.load_producers()? {
            states.insert(key, ProducerState::decode(&bytes)?);
        }
        Ok(Producers { states, next_id: store.next_producer_id()? })
    }
}

/// What to do with an idempotent batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Store it.
    Append,
    /// A retry of a stored batch: answer with its base offset, store nothing.
    Duplicate(u64),
    Refused(BatchError),
}

/// Applies Kafka's rules (module docs) to a batch from `seq.id`, whose state is `state`.
pub fn check(state: Option<&ProducerState>, seq: &ProducerSeq) -> Check {
    let Some(state) = state else { return Check::Append };
    if seq.epoch < state.epoch {
        return Check::Refused(BatchError::InvalidProducerEpoch { current: state.epoch, received: seq.epoch });
    }
    if seq.epoch > state.epoch {
        return if seq.first == 0 {
            Check::Append
        } else {
            Check::Refused(BatchError::OutOfOrderSequence { expected: 0, received: seq.first })
        };
    }
    if let Some(sent) = state.recent.iter().find(|s| s.first == seq.first && s.last == seq.last) {
        return Check::Duplicate(sent.base);
    }
    let expected = state.recent.last().map_or(0, |s| ProducerSeq::next(s.last));
    if seq.first == expected {
        Check::Append
    } else {
        Check::Refused(BatchError::OutOfOrderSequence { expected, received: seq.first })
    }
}

/// The state after a batch `check` let through was stored at `base`.
pub fn advance(state: Option<&ProducerState>, seq: &ProducerSeq, base: u64, now_ms: u64) -> ProducerState {
    let mut recent = match state {
        Some(s) if s.epoch == seq.epoch => s.recent.clone(),
        _ => Vec::with_capacity(1),
    };
    if recent.len() == RECENT {
        recent.remove(0);
    }
    recent.push(Sent { first: seq.first, last: seq.last, base });
    ProducerState { epoch: seq.epoch, last_ms: now_ms, recent }
}

impl ProducerState {
    /// The stored form: epoch (i16), last_ms (u64), count (u8), then per batch first,
    /// last (i32) and base (u64); little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + self.recent.len() * 16);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.last_ms.to_le_bytes());
        out.push(self.recent.len() as u8);
        for s in &self.recent {
            out.extend_from_slice(&s.first.to_le_bytes());
            out.extend_from_slice(&s.last.to_le_bytes());
            out.extend_from_slice(&s.base.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ProducerState> {
        let bad = || Error::Corrupt("producer state".into());
        if bytes.len() < 11 {
            return Err(bad());
        }
        let epoch = i16::from_le_bytes([bytes[0], bytes[1]]);
        let last_ms = u64::from_le_bytes(bytes[2..10].try_into().map_err(|_| bad())?);
        let n = bytes[10] as usize;
        if n > RECENT || bytes.len() != 11 + n * 16 {
            return Err(bad());
        }
        let recent = bytes[11..]
            .chunks_exact(16)
            .map(|c| {
                Ok(Sent {
                    first: i32::from_le_bytes(c[0..4].try_into().map_err(|_| bad())?),
                    last: i32::from_le_bytes(c[4..8].try_into().map_err(|_| bad())?),
                    base: u64::from_le_bytes(c[8..16].try_into().map_err(|_| bad())?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ProducerState { epoch, last_ms, recent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(epoch: i16, first: i32, count: i32) -> ProducerSeq {
        let last = ((i64::from(first) + i64::from(count) - 1) % (i64::from(i32::MAX) + 1)) as i32;
        ProducerSeq { id: 7, epoch, first, last }
    }

    /// Stores batches in order, returning the state.
    fn run(batches: &[ProducerSeq]) -> Option<ProducerState> {
        let mut state = None;
        let mut base = 0;
        for b in batches {
            assert_eq!(check(state.as_ref(), b), Check::Append, "{b:?}");
            state = Some(advance(state.as_ref(), b, base, 1));
            base += (b.last - b.first) as u64 + 1;
        }
        state
    }

    #[test]
    fn a_new_producer_starts_anywhere_then_must_follow_on() {
        assert_eq!(check(None, &seq(0, 42, 3)), Check::Append);
        let state = run(&[seq(0, 0, 3), seq(0, 3, 2)]);
        assert_eq!(check(state.as_ref(), &seq(0, 5, 1)), Check::Append);
        assert_eq!(
            check(state.as_ref(), &seq(0, 6, 1)),
            Check::Refused(BatchError::OutOfOrderSequence { expected: 5, received: 6 }),
            "a gap"
        );
    }

    #[test]
    fn a_retry_of_one_of_the_last_five_batches_answers_its_offset() {
        let batches: Vec<ProducerSeq> = (0..6).map(|i| seq(0, i * 2, 2)).collect();
        let state = run(&batches);
        assert_eq!(check(state.as_ref(), &seq(0, 10, 2)), Check::Duplicate(10));
        assert_eq!(check(state.as_ref(), &seq(0, 2, 2)), Check::Duplicate(2), "the oldest still kept");
        assert!(
            matches!(check(state.as_ref(), &seq(0, 0, 2)), Check::Refused(BatchError::OutOfOrderSequence { .. })),
            "the sixth-last is forgotten"
        );
        assert!(
            matches!(check(state.as_ref(), &seq(0, 10, 1)), Check::Refused(_)),
            "same first sequence, another length: not a retry"
        );
    }

    #[test]
    fn epochs_fence_older_producers_and_restart_sequences() {
        let state = run(&[seq(3, 0, 4)]);
        assert_eq!(
            check(state.as_ref(), &seq(2, 4, 1)),
            Check::Refused(BatchError::InvalidProducerEpoch { current: 3, received: 2 })
        );
        assert_eq!(check(state.as_ref(), &seq(4, 0, 1)), Check::Append);
        assert!(matches!(check(state.as_ref(), &seq(4, 4, 1)), Check::Refused(BatchError::OutOfOrderSequence { .. })));
        let bumped = advance(state.as_ref(), &seq(4, 0, 1), 9, 2);
        assert_eq!(bumped.recent, vec![Sent { first: 0, last: 0, base: 9 }], "a new epoch forgets the old batches");
    }

    #[test]
    fn sequences_wrap_past_i32_max() {
        let state = run(&[seq(0, i32::MAX - 1, 2)]);
        assert_eq!(state.as_ref().unwrap().recent[0].last, i32::MAX);
        assert_eq!(check(state.as_ref(), &seq(0, 0, 1)), Check::Append);
        let wrapped = seq(0, i32::MAX, 3);
        assert_eq!(wrapped.last, 1);
    }

    #[test]
    fn the_stored_form_round_trips_and_refuses_garbage() {
        let state = run(&(0..7).map(|i| seq(2, i, 1)).collect::<Vec<_>>()).unwrap();
        assert_eq!(state.recent.len(), RECENT);
        assert_eq!(ProducerState::decode(&state.encode()).unwrap(), state);
        assert!(ProducerState::decode(&state.encode()[..20]).is_err());
        assert!(ProducerState::decode(b"").is_err());
    }
}
