//! `Idempotency-Key` on the Kafka backend, with nothing kept in a replica that an answer
//! depends on: claims and first answers are records of one cluster topic,
//! `__gregor_idempotency` (one partition, kept for the replay window), and every replica
//! reads that log in order, so all of them decide the same way:
//!
//! 1. a produce with a key reads the log to its end: a first answer within the window is
//!    replayed (or, for another request, refused as `idempotency_key_reused`);
//! 2. otherwise it appends a **claim** and reads up to it: the first claim of the key wins
//!    (a claim counts for `claim timeout`, after which a later claim may take over);
//! 3. the winner produces, then appends the **answer** (or, if the produce failed, a
//!    **release**, so a retry may claim again); a loser waits for that answer and replays it.
//!
//! Decisions use the times written in the records, never a replica's clock, so replicas agree.
//! What stays in memory (the index of the log read so far) is a cache: a new replica
//! rebuilds it by reading the topic.
//!
//! The limit: a replica that dies after writing the records and before appending the answer
//! leaves a claim without an answer; a retry after the claim timeout writes again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};

use super::{Cluster, kafka_error};
use crate::error::{Error, Result};
use crate::log::{Acks, Produced, RecordMetadata};
use crate::record::NewRecord;
use crate::topic::TopicConfigPatch;

/// The topic holding claims and answers.
pub const TOPIC: &str = "__gregor_idempotency";

/// One record of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    Claim {
        fingerprint: String,
        at_ms: u64,
        nonce: u64,
    },
    Answer {
        fingerprint: String,
        at_ms: u64,
        /// `acks=none`: how many records were accepted.
        accepted: Option<usize>,
        /// Per record: partition, offset, timestamp.
        records: Vec<(u32, u64, u64)>,
    },
    Release {
        nonce: u64,
    },
}

#[derive(Debug, Clone)]
struct Claimed {
    fingerprint: String,
    at_ms: u64,
    nonce: u64,
}

#[derive(Debug, Clone)]
struct Answered {
    fingerprint: String,
    at_ms: u64,
    accepted: Option<usize>,
    records: Vec<(u32, u64, u64)>,
}

#[derive(Debug, Default, Clone)]
struct Known {
    claim: Option<Claimed>,
    answer: Option<Answered>,
}

/// The log as read so far.
#[derive(Debug, Default)]
struct Index {
    /// The next offset to read.
    next: u64,
    keys: HashMap<String, Known>,
}

impl Index {
    /// Applies one record; `window` and `claim_timeout` in ms.
    fn apply(&mut self, key: &str, entry: Entry, window: u64, claim_timeout: u64) {
        let known = self.keys.entry(key.to_owned()).or_default();
        match entry {
            Entry::Claim { fingerprint, at_ms, nonce } => {
                let answered = known.answer.as_ref().is_some_and(|a| at_ms.saturating_sub(a.at_ms) < window);
                let claimed = known.claim.as_ref().is_some_and(|c| at_ms.saturating_sub(c.at_ms) < claim_timeout);
                if !answered && !claimed {
                    known.claim = Some(Claimed { fingerprint, at_ms, nonce });
                    known.answer = None;
                }
            }
            Entry::Answer { fingerprint, at_ms, accepted, records } => {
                known.claim = None;
                known.answer = Some(Answered { fingerprint, at_ms, accepted, records });
            }
            Entry::Release { nonce } => {
                if known.claim.as_ref().is_some_and(|c| c.nonce == nonce) {
                    known.claim = None;
                }
            }
        }
    }

    /// Forgets keys whose answer left the window and whose claim timed out.
    fn prune(&mut self, now_ms: u64, window: u64, claim_timeout: u64) {
        self.keys.retain(|_, k| {
            k.answer.as_ref().is_some_and(|a| now_ms.saturating_sub(a.at_ms) < window)
                || k.claim.as_ref().is_some_and(|c| now_ms.saturating_sub(c.at_ms) < claim_timeout)
        });
    }
}

/// A replica's reader of the log.
#[derive(Debug)]
pub struct Keys {
    index: tokio::sync::Mutex<Index>,
    window_ms: AtomicU64,
    nonce: AtomicU64,
    created: tokio::sync::OnceCell<()>,
}

impl Default for Keys {
    fn default() -> Keys {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Keys {
            index: tokio::sync::Mutex::new(Index::default()),
            window_ms: AtomicU64::new(crate::log::DEFAULT_IDEMPOTENCY_WINDOW_MS),
            nonce: AtomicU64::new((seed as u64) ^ u64::from(std::process::id()).rotate_left(32)),
            created: tokio::sync::OnceCell::new(),
        }
    }
}

/// What the log says about a key.
enum Found {
    Nothing,
    Answered(Answered),
    Claimed(Claimed),
}

impl Cluster {
    /// How long a first answer is replayed (`idempotency_window_ms`).
    pub fn set_idempotency_window(&self, window: Duration) {
        self.keys.window_ms.store(window.as_millis() as u64, Ordering::Release);
    }

    /// How long an unanswered claim holds its key: twice a request's timeout.
    fn claim_timeout_ms(&self) -> u64 {
        self.settings.request_timeout.as_millis() as u64 * 2
    }

    /// Produces `records` once per `scope` (principal, topic and key) within the window:
    /// the answer and whether it is a replay.
    pub async fn produce_idempotent(
        self: &Arc<Self>,
        scope: &str,
        fingerprint: String,
        topic: &str,
        records: &[NewRecord<'_>],
        route: Option<u32>,
        acks: Acks,
    ) -> Result<(Produced, bool)> {
        self.keys_topic().await?;
        let deadline = Instant::now() + self.settings.request_timeout;
        let nonce = loop {
            // Someone answered, or holds the key: replay or wait.
            match self.look(scope, None).await? {
                Found::Answered(a) => return replay(scope, &fingerprint, a),
                Found::Claimed(c) => {
                    if c.fingerprint != fingerprint {
                        return Err(Error::IdempotencyKeyReused(key_of(scope)));
                    }
                    if let Some(answered) = self.await_answer(scope, deadline).await? {
                        return replay(scope, &fingerprint, answered);
                    }
                    // Released (its produce failed): claim it ourselves.
                }
                Found::Nothing => {}
            }
            let nonce = self.keys.nonce.fetch_add(1, Ordering::Relaxed);
            let claim = Entry::Claim { fingerprint: fingerprint.clone(), at_ms: crate::log::now_ms(), nonce };
            let offset = self.append(scope, &claim).await?;
            match self.look(scope, Some(offset + 1)).await? {
                Found::Claimed(c) if c.nonce == nonce => break nonce,
                // Another claim came first: loop to replay or wait for it.
                _ if Instant::now() < deadline => continue,
                _ => return Err(in_progress()),
            }
        };
        match self.produce(topic, records, route, acks).await {
            Ok(produced) => {
                let (accepted, placed) = match &produced {
                    Produced::Accepted { records } => (Some(*records), Vec::new()),
                    Produced::Written(meta) => {
                        (None, meta.iter().map(|m| (m.partition, m.offset, m.timestamp)).collect())
                    }
                };
                let answer = Entry::Answer { fingerprint, at_ms: crate::log::now_ms(), accepted, records: placed };
                if let Err(e) = self.append(scope, &answer).await {
                    // Written, but unanswered: a retry after the claim timeout writes again.
                    tracing::warn!(error = %e, "the first answer of an idempotent produce could not be kept");
                }
                Ok((produced, false))
            }
            Err(e) => {
                // Nothing (or part) written: let a retry claim the key again at once.
                if let Err(e) = self.append(scope, &Entry::Release { nonce }).await {
                    tracing::warn!(error = %e, "releasing an idempotency key failed; it frees after the claim timeout");
                }
                Err(e)
            }
        }
    }

    /// Creates the log's topic once (it may exist: another replica made it).
    async fn keys_topic(&self) -> Result<()> {
        self.keys
            .created
            .get_or_try_init(|| async {
                match self.partition_count(TOPIC).await {
                    Ok(_) => return Ok(()),
                    Err(Error::UnknownTopic(_)) => {}
                    Err(e) => return Err(e),
                }
                let retention = (self.keys.window_ms.load(Ordering::Acquire) * 2).min(i64::MAX as u64) as i64;
                let patch = TopicConfigPatch { retention_ms: Some(retention), ..Default::default() };
                match self.create_topic(TOPIC, 1, &patch).await {
                    // Another replica made it meanwhile.
                    Ok(_) | Err(Error::TopicExists(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await
            .map(|_| ())
    }

    /// Appends `entry` for `scope`; its offset.
    async fn append(&self, scope: &str, entry: &Entry) -> Result<u64> {
        let value = serde_json::to_vec(entry).map_err(|e| Error::Internal(format!("an idempotency entry: {e}")))?;
        let record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(TOPIC).partition(0).key(scope.as_bytes()).payload(&value[..]);
        let delivery = self.producers[2].send_result(record).map_err(|(e, _)| kafka_error(TOPIC, &e))?;
        match delivery.await {
            Ok(Ok(d)) => Ok(d.offset.max(0) as u64),
            Ok(Err((e, _))) => Err(kafka_error(TOPIC, &e)),
            Err(_) => Err(Error::ShuttingDown),
        }
    }

    /// Reads the log to `until` (to its end when `None`) and says what it holds for `scope`.
    async fn look(self: &Arc<Self>, scope: &str, until: Option<u64>) -> Result<Found> {
        let mut index = self.keys.index.lock().await;
        self.catch_up(&mut index, until, Duration::ZERO).await?;
        Ok(found(&index, scope))
    }

    /// Waits (until `deadline`) for the claim on `scope` to be answered (`Some`) or
    /// released or timed out (`None`).
    async fn await_answer(self: &Arc<Self>, scope: &str, deadline: Instant) -> Result<Option<Answered>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(in_progress());
            }
            let mut index = self.keys.index.lock().await;
            let end = index.next;
            // A long-poll for the next entry, in short slices so other requests get the index.
            self.catch_up(&mut index, Some(end + 1), left.min(Duration::from_millis(200))).await?;
            match found(&index, scope) {
                Found::Answered(a) => return Ok(Some(a)),
                Found::Nothing => return Ok(None),
                Found::Claimed(_) => {}
            }
        }
    }

    /// Reads the log from where the index stands to `until` (or its end), waiting up to
    /// `wait` at the end for more.
    async fn catch_up(self: &Arc<Self>, index: &mut Index, until: Option<u64>, wait: Duration) -> Result<()> {
        let window = self.keys.window_ms.load(Ordering::Acquire);
        let claim_timeout = self.claim_timeout_ms();
        loop {
            let read = match self.read(TOPIC, 0, index.next, 1_000, 4 << 20, wait).await {
                Ok(r) => r,
                // Retention removed entries older than the window: nothing there matters.
                Err(Error::OffsetOutOfRange { beginning, .. }) if index.next < beginning => {
                    index.next = beginning;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let end = read.end_offset;
            for (offset, rec) in read.records()? {
                index.next = offset + 1;
                let (Some(key), Some(value)) = (&rec.key, &rec.value) else { continue };
                let Ok(key) = std::str::from_utf8(&key.bytes) else { continue };
                match serde_json::from_slice::<Entry>(&value.bytes) {
                    Ok(entry) => index.apply(key, entry, window, claim_timeout),
                    Err(e) => tracing::warn!(offset, error = %e, "an unreadable entry in {TOPIC}"),
                }
            }
            index.next = index.next.max(read.beginning_offset);
            let target = until.unwrap_or(end);
            if index.next >= target || index.next >= end {
                index.prune(crate::log::now_ms(), window, claim_timeout);
                return Ok(());
            }
        }
    }
}

fn found(index: &Index, scope: &str) -> Found {
    match index.keys.get(scope) {
        Some(Known { answer: Some(a), .. }) => Found::Answered(a.clone()),
        Some(Known { claim: Some(c), .. }) => Found::Claimed(c.clone()),
        _ => Found::Nothing,
    }
}

/// The key part of a scope (`principal\0topic\0key`), for error messages.
fn key_of(scope: &str) -> String {
    scope.rsplit('\0').next().unwrap_or_default().to_owned()
}

fn in_progress() -> Error {
    Error::Backend("the first request with this Idempotency-Key is still being written: retry".into())
}

fn replay(scope: &str, fingerprint: &str, a: Answered) -> Result<(Produced, bool)> {
    if a.fingerprint != fingerprint {
        return Err(Error::IdempotencyKeyReused(key_of(scope)));
    }
    let produced = match a.accepted {
        Some(records) => Produced::Accepted { records },
        None => Produced::Written(
            a.records
                .into_iter()
                .map(|(partition, offset, timestamp)| RecordMetadata { partition, offset, timestamp })
                .collect(),
        ),
    };
    Ok((produced, true))
}

/// The scope of a key: who sent it, for which topic.
pub fn scope(principal: &str, topic: &str, key: &str) -> String {
    format!("{principal}\0{topic}\0{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(fp: &str, at_ms: u64, nonce: u64) -> Entry {
        Entry::Claim { fingerprint: fp.into(), at_ms, nonce }
    }

    /// Every replica applies the same log the same way: the first claim wins until it is
    /// answered, released or timed out; an answer holds for the window.
    #[test]
    fn the_first_claim_wins_and_answers_hold_for_the_window() {
        let (window, timeout) = (10_000, 1_000);
        let mut index = Index::default();
        index.apply("k", claim("a", 100, 1), window, timeout);
        index.apply("k", claim("a", 200, 2), window, timeout);
        assert!(matches!(found(&index, "k"), Found::Claimed(c) if c.nonce == 1), "the first claim holds");
        index.apply("k", claim("a", 1_200, 3), window, timeout);
        assert!(matches!(found(&index, "k"), Found::Claimed(c) if c.nonce == 3), "a timed-out claim is taken over");
        index.apply("k", Entry::Release { nonce: 1 }, window, timeout);
        assert!(matches!(found(&index, "k"), Found::Claimed(c) if c.nonce == 3), "only its owner releases it");
        index.apply("k", Entry::Release { nonce: 3 }, window, timeout);
        assert!(matches!(found(&index, "k"), Found::Nothing));
        let answer = Entry::Answer { fingerprint: "a".into(), at_ms: 1_300, accepted: None, records: vec![(0, 5, 9)] };
        index.apply("k", claim("a", 1_250, 4), window, timeout);
        index.apply("k", answer, window, timeout);
        index.apply("k", claim("b", 5_000, 5), window, timeout);
        assert!(matches!(found(&index, "k"), Found::Answered(a) if a.records == vec![(0, 5, 9)]), "within the window");
        index.apply("k", claim("b", 20_000, 6), window, timeout);
        assert!(matches!(found(&index, "k"), Found::Claimed(c) if c.nonce == 6), "after the window, a new request");
        index.prune(20_500, window, timeout);
        assert!(matches!(found(&index, "k"), Found::Claimed(_)));
        index.prune(30_000, window, timeout);
        assert!(index.keys.is_empty(), "stale keys are forgotten");
    }

    #[test]
    fn replays_refuse_another_request() {
        let a = Answered { fingerprint: "x".into(), at_ms: 0, accepted: Some(3), records: vec![] };
        assert!(matches!(replay("p\0t\0k", "x", a.clone()), Ok((Produced::Accepted { records: 3 }, true))));
        let e = replay("p\0t\0k", "y", a).err().unwrap();
        assert!(matches!(e, Error::IdempotencyKeyReused(k) if k == "k"));
    }
}
