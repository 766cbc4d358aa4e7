//! The Kafka backend: gregor as a stateless gateway in front of a Kafka cluster.
//!
//! - Produce goes through librdkafka (the `rdkafka` crate): one producer per `acks` level,
//!   records placed by gregor's own murmur2 partitioner (as on the embedded backend), so
//!   keys land where Java clients put them.
//! - Topic admin goes through librdkafka's admin client (create, delete, add partitions,
//!   describe configs) and, for a configuration patch, Kafka's IncrementalAlterConfigs
//!   (librdkafka's admin client offers only the replacing AlterConfigs).
//! - Reads, offsets and watermarks go through [`wire`], a small client that sends one
//!   Fetch or ListOffsets per request to the partition's leader: a read at any offset,
//!   long-polling with Kafka's own `max_wait_ms`, with no consumer instance (and so no
//!   state) tied to a replica. Fetched batches are RecordBatch v2, as the embedded store
//!   keeps them, so both backends decode records with the same code.
//!
//! Nothing a request depends on lives in one replica: topics, offsets and records are the
//! cluster's; the caches here (metadata, topic configs) only save round trips.

pub mod groups;
pub mod idempotency;
pub mod member;
pub mod schemas;
mod tls;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiKey, DescribeConfigsRequest, FetchRequest, IncrementalAlterConfigsRequest, ListOffsetsRequest, MetadataRequest,
    TopicName,
    describe_configs_request::DescribeConfigsResource,
    fetch_request::{FetchPartition, FetchTopic},
    incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::log::{Acks, BatchBytes, Produced, ReadResult, RecordMetadata, TimestampOffset};
use crate::record::NewRecord;
use crate::topic::{TopicConfig, TopicConfigPatch};
use wire::{Plain, Wire, WireError};

/// `[backend]` with `kind = "kafka"`.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// HOST:PORT of brokers to bootstrap from.
    pub bootstrap_servers: Vec<String>,
    /// librdkafka properties passed to every client gregor creates (SASL, TLS, tuning).
    pub kafka_config: BTreeMap<String, String>,
    /// How long a request to the cluster may take before it fails with `backend_unavailable`.
    pub request_timeout: Duration,
    /// The secret that signs poll cursors, the same on every replica (`cursor_secret`).
    pub cursor_secret: Option<String>,
}

/// The cursor secret when none is configured: cursors are then integrity-checked but
/// forgeable by someone who knows this constant. A forged cursor can only move a member's
/// own positions within partitions it owns, on topics it may read.
const DEFAULT_CURSOR_SECRET: &str = "gregor kafka backend cursor";

/// librdkafka properties gregor sets itself, per request or per client.
const RESERVED: &[&str] = &["bootstrap.servers", "metadata.broker.list", "acks", "request.required.acks"];

impl ClusterSettings {
    /// Settings for a cluster at `bootstrap` (HOST:PORT[,HOST:PORT]) with nothing else configured.
    pub fn new(bootstrap: &str) -> ClusterSettings {
        ClusterSettings {
            bootstrap_servers: bootstrap.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
            kafka_config: BTreeMap::new(),
            request_timeout: Duration::from_secs(30),
            cursor_secret: None,
        }
    }

    /// Refuses settings gregor cannot honour, saying which.
    pub fn check(&self) -> Result<(), String> {
        if let Some(k) = self.kafka_config.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(format!(
                "backend.kafka_config.{k}: set by gregor itself (bootstrap from bootstrap_servers, acks per request)"
            ));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err("backend.request_timeout_ms: must be at least 100".into());
        }
        self.security().map(|_| ())
    }

    /// What gregor's own protocol client presents: SASL/PLAIN credentials and TLS, from the
    /// same `kafka_config` librdkafka reads.
    fn security(&self) -> Result<(Option<Plain>, Option<Arc<rustls::ClientConfig>>), String> {
        let get = |k: &str| self.kafka_config.get(k).map(|v| v.to_ascii_lowercase());
        let (sasl, tls) = match get("security.protocol").as_deref() {
            None | Some("plaintext") => (false, false),
            Some("sasl_plaintext") => (true, false),
            Some("ssl") => (false, true),
            Some("sasl_ssl") => (true, true),
            Some(other) => {
                return Err(format!(
                    "backend.kafka_config.security.protocol: {other} is not one of plaintext, ssl, sasl_plaintext, \
                     sasl_ssl"
                ));
            }
        };
        let plain = if sasl {
            let mechanism = get("sasl.mechanism").or_else(|| get("sasl.mechanisms"));
            if mechanism.as_deref().is_some_and(|m| m != "plain") {
                return Err(format!(
                    "backend.kafka_config: sasl.mechanism {} is not supported yet; use PLAIN",
                    mechanism.unwrap_or_default()
                ));
            }
            let username = self.kafka_config.get("sasl.username").cloned().unwrap_or_default();
            let password = self.kafka_config.get("sasl.password").cloned().unwrap_or_default();
            if username.is_empty() {
                return Err("backend.kafka_config: SASL needs sasl.username and sasl.password".into());
            }
            Some(Plain { username, password })
        } else {
            None
        };
        let tls = if tls { Some(tls::client_config(&self.kafka_config)?) } else { None };
        Ok((plain, tls))
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap_servers.join(","));
        c.set("client.id", "gregor");
        for (k, v) in &self.kafka_config {
            c.set(k, v);
        }
        c
    }
}

/// Kafka's error codes: the listener's table.
use crate::kafka::errors as code;

/// A partition-level error worth a metadata refresh and another try.
fn retriable(code: i16) -> bool {
    matches!(
        code,
        code::LEADER_NOT_AVAILABLE
            | code::NOT_LEADER_OR_FOLLOWER
            | code::REQUEST_TIMED_OUT
            | code::REPLICA_NOT_AVAILABLE
            | code::NETWORK_EXCEPTION
            | code::KAFKA_STORAGE_ERROR
            | code::FENCED_LEADER_EPOCH
            | code::UNKNOWN_LEADER_EPOCH
            | code::OFFSET_NOT_AVAILABLE
    )
}

/// Tries of a partition request (refreshing metadata in between) before giving up.
const TRIES: usize = 4;
/// How long the partition counts and topic configs a produce uses are trusted.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// How long a follower long-polls a partition's leader per Fetch.
const FOLLOW_WAIT: Duration = Duration::from_millis(500);
/// The longest wait of one Fetch for a long-poll; a longer wait asks again.
const WAIT_SLICE: Duration = Duration::from_millis(500);
/// The wait of a Fetch asked again after an empty answer to `max_wait_ms` 0.
const EMPTY_ANSWER_WAIT: Duration = Duration::from_millis(20);
/// How often a follower asks a broker that answers an empty Fetch at once (no long-poll),
/// while its partition is idle ...
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// ... and while records arrived within [`BUSY_FOR`]: a stream's latency is half of this on
/// average, and a partition in use is worth the extra requests.
const BUSY_POLL_INTERVAL: Duration = Duration::from_millis(4);
const BUSY_FOR: Duration = Duration::from_secs(2);

/// The cluster's brokers and each known topic's partition leaders.
#[derive(Debug, Default)]
struct Meta {
    brokers: HashMap<i32, String>,
    topics: HashMap<String, TopicMeta>,
}

#[derive(Debug, Clone)]
struct TopicMeta {
    /// Leader broker id by partition (-1: none right now).
    leaders: Vec<i32>,
    /// The topic's id (Fetch v13+ names topics by id; nil from brokers before Kafka 2.8).
    id: uuid::Uuid,
    fetched: Instant,
}

/// A topic's partition watermarks, as ListOffsets reports them.
#[derive(Debug, Clone, Copy)]
pub struct Watermarks {
    pub beginning: u64,
    pub end: u64,
}

/// A topic as the cluster describes it.
#[derive(Debug, Clone)]
pub struct ClusterTopic {
    pub name: String,
    pub partitions: Vec<Watermarks>,
    pub config: TopicConfig,
}

/// The Kafka backend.
pub struct Cluster {
    settings: ClusterSettings,
    wire: Wire,
    meta: parking_lot::RwLock<Meta>,
    /// Topic configs by name, with when they were read.
    configs: parking_lot::Mutex<HashMap<String, (TopicConfig, Instant)>>,
    admin: AdminClient<DefaultClientContext>,
    /// Producers for `acks` none, leader and all.
    producers: [FutureProducer; 3],
    /// Followed partitions' end offsets (for streams), each kept by a task while watched.
    followers: parking_lot::Mutex<HashMap<(String, u32), watch::Sender<u64>>>,
    sticky: AtomicU32,
    ready: AtomicBool,
    /// The cluster has no DescribeConfigs (librdkafka's mock): said once.
    configs_unsupported: AtomicBool,
    /// Each group's coordinator, found with FindCoordinator (a cache).
    coordinators: parking_lot::Mutex<HashMap<String, String>>,
    /// Signs poll cursors; replicas share it (`[backend] cursor_secret`).
    cursor_key: crate::group::cursor::CursorKey,
    auto_create: bool,
    default_partitions: u32,
    /// A member's session timeout when its join names none.
    default_session_ms: u64,
    /// The reader of the `Idempotency-Key` log.
    keys: idempotency::Keys,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("bootstrap", &self.settings.bootstrap_servers).finish_non_exhaustive()
    }
}

/// A librdkafka error as gregor's error.
fn kafka_error(what: &str, e: &KafkaError) -> Error {
    let code = match e {
        KafkaError::AdminOp(code) => Some(*code),
        _ => e.rdkafka_error_code(),
    };
    match code {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            Error::UnknownTopic(what.to_owned())
        }
        Some(RDKafkaErrorCode::TopicAlreadyExists) => Error::TopicExists(what.to_owned()),
        Some(RDKafkaErrorCode::InvalidTopic) => Error::InvalidTopicName(format!("{what}: {e}")),
        Some(RDKafkaErrorCode::InvalidPartitions) => Error::InvalidPartitions(format!("{what}: {e}")),
        Some(
            RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidReplicaAssignment
            | RDKafkaErrorCode::PolicyViolation,
        ) => Error::InvalidRequest(format!("the cluster refused it ({what}): {e}")),
        Some(RDKafkaErrorCode::QueueFull) => Error::WriteQueueFull,
        Some(RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::UnsupportedFeature) => {
            Error::Unsupported(format!("the cluster does not support {what}: {e}"))
        }
        _ => Error::Backend(format!("{what}: {e}")),
    }
}

fn wire_error(e: WireError) -> Error {
    match e {
        WireError::Unsupported { .. } => Error::Unsupported(e.to_string()),
        _ => Error::Backend(e.to_string()),
    }
}

/// Splits a Fetch answer's record set into RecordBatch v2 batches by base offset, leaving
/// out control batches (transaction markers) and a trailing partial batch.
fn split_batches(mut data: &[u8]) -> Result<Vec<(u64, BatchBytes)>> {
    let mut out = Vec::new();
    while data.len() >= 12 {
        let base = u64::from_be_bytes(data[0..8].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(data[8..12].try_into().unwrap_or_default()) as usize;
        let total = 12 + len;
        if data.len() < total {
            break;
        }
        let batch = &data[..total];
        data = &data[total..];
        if total < 61 {
            return Err(Error::Corrupt(format!("a fetched batch of {total} bytes")));
        }
        let magic = batch[16];
        if magic != 2 {
            return Err(Error::Unsupported(format!(
                "records in Kafka's message format v{magic} (before 0.11); only v2 batches are read"
            )));
        }
        let attributes = u16::from_be_bytes([batch[21], batch[22]]);
        if attributes & 0x20 != 0 {
            continue;
        }
        out.push((base, bytes::Bytes::copy_from_slice(batch)));
    }
    Ok(out)
}

impl Cluster {
    /// Creates the clients (nothing is sent yet) and starts the readiness check.
    pub fn open(
        settings: ClusterSettings,
        auto_create: bool,
        default_partitions: u32,
        default_session_ms: u64,
    ) -> Result<Arc<Cluster>> {
        settings.check().map_err(Error::InvalidRequest)?;
        let (sasl, tls) = settings.security().map_err(Error::InvalidRequest)?;
        let wire = Wire::new("gregor", sasl, tls, settings.request_timeout.min(Duration::from_secs(10)));
        let admin: AdminClient<DefaultClientContext> =
            settings.client_config().create().map_err(|e| kafka_error("creating the admin client", &e))?;
        let producer = |acks: &str| -> Result<FutureProducer> {
            let mut c = settings.client_config();
            c.set("acks", acks);
            // Every REST request waits for its records: linger a little to batch concurrent ones.
            if !settings.kafka_config.contains_key("linger.ms") {
                c.set("linger.ms", "2");
            }
            if !settings.kafka_config.contains_key("enable.idempotence") {
                c.set("enable.idempotence", if acks == "all" { "true" } else { "false" });
            }
            // The broker's max.message.bytes decides what is too large, not librdkafka's default.
            if !settings.kafka_config.contains_key("message.max.bytes") {
                c.set("message.max.bytes", "1000000000");
            }
            c.set("message.timeout.ms", settings.request_timeout.as_millis().to_string());
            c.create().map_err(|e| kafka_error("creating a producer", &e))
        };
        let producers = [producer("0")?, producer("1")?, producer("all")?];
        let cursor_secret = settings.cursor_secret.clone().unwrap_or_else(|| DEFAULT_CURSOR_SECRET.to_owned());
        let cluster = Arc::new(Cluster {
            settings,
            wire,
            meta: parking_lot::RwLock::new(Meta::default()),
            configs: parking_lot::Mutex::new(HashMap::new()),
            admin,
            producers,
            followers: parking_lot::Mutex::new(HashMap::new()),
            sticky: AtomicU32::new(0),
            ready: AtomicBool::new(false),
            configs_unsupported: AtomicBool::new(false),
            coordinators: parking_lot::Mutex::new(HashMap::new()),
            cursor_key: crate::group::cursor::CursorKey::new(cursor_secret.as_bytes()),
            auto_create,
            default_partitions,
            default_session_ms,
            keys: idempotency::Keys::default(),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(watch_readiness(Arc::downgrade(&cluster), cluster.shutdown.clone()));
        Ok(cluster)
    }

    /// The bootstrap servers.
    pub fn bootstrap(&self) -> String {
        self.settings.bootstrap_servers.join(",")
    }

    /// True while the last metadata request to the cluster was answered.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.shutdown.is_cancelled()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for queued produces to be delivered (up to `timeout`).
    pub async fn close(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        self.shutdown.cancel();
        let producers: Vec<FutureProducer> = self.producers.to_vec();
        let flushed = tokio::task::spawn_blocking(move || {
            for p in &producers {
                if let Err(e) = p.flush(timeout) {
                    tracing::warn!(error = %e, "records still queued for the cluster at shutdown");
                }
            }
        })
        .await;
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "flushing the producers failed");
        }
    }

    /// Counts the backend's requests and failures in `metrics` (`/metrics`).
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        self.wire.set_metrics(metrics);
    }

    /// How long a request to the cluster may take.
    pub fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }

    pub fn auto_creates(&self) -> bool {
        self.auto_create
    }

    // ---- metadata ----

    /// Asks the cluster for `topics` (all topics when `None`), trying every known broker,
    /// then the bootstrap servers; updates the cache.
    async fn refresh(&self, topics: Option<&[&str]>) -> Result<kafka_protocol::messages::MetadataResponse> {
        let req = MetadataRequest::default()
            .with_topics(topics.map(|names| {
                names
                    .iter()
                    .map(|n| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string((*n).to_owned()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let mut addrs: Vec<String> = self.meta.read().brokers.values().cloned().collect();
        addrs.sort();
        for b in &self.settings.bootstrap_servers {
            if !addrs.contains(b) {
                addrs.push(b.clone());
            }
        }
        let mut last = None;
        for addr in &addrs {
            match self.wire.call(addr, 1..=10, &req, self.settings.request_timeout).await {
                Ok((resp, _)) => {
                    self.absorb(&resp, topics.is_none());
                    return Ok(resp);
                }
                Err(e) => {
                    self.wire.forget(addr);
                    last = Some(e);
                }
            }
        }
        self.ready.store(false, Ordering::Relaxed);
        Err(last.map(wire_error).unwrap_or_else(|| Error::Backend("no bootstrap servers".into())))
    }

    fn absorb(&self, resp: &kafka_protocol::messages::MetadataResponse, all: bool) {
        let mut meta = self.meta.write();
        if !resp.brokers.is_empty() {
            meta.brokers =
                resp.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
        }
        if all {
            meta.topics.clear();
        }
        let now = Instant::now();
        for t in &resp.topics {
            let Some(name) = &t.name else { continue };
            if t.error_code == code::UNKNOWN_TOPIC_OR_PARTITION {
                meta.topics.remove(name.0.as_str());
                continue;
            }
            if t.error_code != 0 && t.partitions.is_empty() {
                continue;
            }
            let mut leaders = vec![-1; t.partitions.len()];
            for p in &t.partitions {
                if let Some(slot) = usize::try_from(p.partition_index).ok().and_then(|i| leaders.get_mut(i)) {
                    *slot = p.leader_id.0;
                }
            }
            meta.topics.insert(name.0.to_string(), TopicMeta { leaders, id: t.topic_id, fetched: now });
        }
    }

    /// The topic's partition leaders: cached, or asked for (`UnknownTopic` when it has none).
    async fn topic_meta(&self, topic: &str, fresh: bool) -> Result<TopicMeta> {
        if !fresh
            && let Some(t) = self.meta.read().topics.get(topic)
            && t.fetched.elapsed() < CACHE_TTL
        {
            return Ok(t.clone());
        }
        self.refresh(Some(&[topic])).await?;
        self.meta.read().topics.get(topic).cloned().ok_or_else(|| Error::UnknownTopic(topic.to_owned()))
    }

    /// The number of partitions of `topic`.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.topic_meta(topic, false).await?.leaders.len() as u32)
    }

    /// The address of `partition`'s leader.
    async fn leader(&self, topic: &str, partition: u32, fresh: bool) -> Result<String> {
        let meta = self.topic_meta(topic, fresh).await?;
        let Some(&leader) = meta.leaders.get(partition as usize) else {
            // Partitions may have been added since the cache was filled.
            if !fresh {
                return Box::pin(self.leader(topic, partition, true)).await;
            }
            return Err(Error::UnknownPartition { topic: topic.to_owned(), partition });
        };
        let addr = self.meta.read().brokers.get(&leader).cloned();
        match addr {
            Some(a) => Ok(a),
            None if !fresh => Box::pin(self.leader(topic, partition, true)).await,
            None => Err(Error::Backend(format!("{topic}/{partition} has no leader right now"))),
        }
    }

    /// Topic names (internal topics left out) with their partition counts.
    pub async fn topic_names(&self) -> Result<Vec<(String, u32)>> {
        let resp = self.refresh(None).await?;
        let mut out: Vec<(String, u32)> = resp
            .topics
            .iter()
            .filter(|t| !t.is_internal && t.error_code == 0)
            .filter_map(|t| t.name.as_ref().map(|n| (n.0.to_string(), t.partitions.len() as u32)))
            .filter(|(n, _)| !n.starts_with("__"))
            .collect();
        out.sort();
        Ok(out)
    }

    // ---- offsets ----

    /// ListOffsets for `partitions` of `topic` at `timestamp` (-2 earliest, -1 latest):
    /// each partition's (offset, timestamp), offset -1 when no record is that recent.
    async fn list_offsets(&self, topic: &str, partitions: &[u32], timestamp: i64) -> Result<Vec<(i64, i64)>> {
        let mut out = vec![None; partitions.len()];
        for attempt in 0..TRIES {
            let fresh = attempt > 0;
            let mut by_leader: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, p) in partitions.iter().enumerate() {
                if out[i].is_none() {
                    by_leader.entry(self.leader(topic, *p, fresh).await?).or_default().push(i);
                }
            }
            let calls =
                by_leader.into_iter().map(|(addr, idx)| {
                    let req = ListOffsetsRequest::default()
                        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                        .with_isolation_level(0)
                        .with_topics(vec![
                            ListOffsetsTopic::default()
                                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                                .with_partitions(
                                    idx.iter()
                                        .map(|&i| {
                                            ListOffsetsPartition::default()
                                                .with_partition_index(partitions[i] as i32)
                                                .with_current_leader_epoch(-1)
                                                .with_timestamp(timestamp)
                                        })
                                        .collect(),
                                ),
                        ]);
                    async move {
                        (addr.clone(), idx, self.wire.call(&addr, 1..=5, &req, self.settings.request_timeout).await)
                    }
                });
            let mut again = false;
            for (addr, idx, answer) in futures_util::future::join_all(calls).await {
                let resp = match answer {
                    Ok((resp, _)) => resp,
                    Err(e) => {
                        tracing::debug!(error = %e, "ListOffsets failed; retrying");
                        self.wire.forget(&addr);
                        again = true;
                        if attempt + 1 == TRIES {
                            return Err(wire_error(e));
                        }
                        continue;
                    }
                };
                for t in &resp.topics {
                    for p in &t.partitions {
                        let Some(&i) = idx.iter().find(|&&i| partitions[i] as i32 == p.partition_index) else {
                            continue;
                        };
                        match p.error_code {
                            0 => out[i] = Some((p.offset, p.timestamp)),
                            code::UNKNOWN_TOPIC_OR_PARTITION if attempt + 1 == TRIES => {
                                return Err(Error::UnknownTopic(topic.to_owned()));
                            }
                            c if (retriable(c) || c == code::UNKNOWN_TOPIC_OR_PARTITION) && attempt + 1 < TRIES => {
                                again = true
                            }
                            c => return Err(partition_error(topic, partitions[i], c)),
                        }
                    }
                }
            }
            if !again && out.iter().all(Option::is_some) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| Error::Backend(format!("no offsets for {topic} after {TRIES} tries"))))
            .collect()
    }

    /// Every partition's beginning and end offsets.
    pub async fn watermarks(&self, topic: &str, partitions: &[u32]) -> Result<Vec<Watermarks>> {
        let (begin, end) =
            tokio::try_join!(self.list_offsets(topic, partitions, -2), self.list_offsets(topic, partitions, -1))?;
        Ok(begin
            .into_iter()
            .zip(end)
            .map(|((b, _), (e, _))| Watermarks { beginning: b.max(0) as u64, end: e.max(0) as u64 })
            .collect())
    }

    /// Kafka's offsetsForTimes for one partition.
    pub async fn offset_for_timestamp(&self, topic: &str, partition: u32, timestamp: u64) -> Result<TimestampOffset> {
        let ts = i64::try_from(timestamp).map_err(|_| Error::parameter("timestamp", "at most 2^63-1 ms"))?;
        let (offset, found) = self.list_offsets(topic, &[partition], ts).await?[0];
        if offset >= 0 {
            return Ok(TimestampOffset { offset: offset as u64, timestamp: u64::try_from(found).ok() });
        }
        let (end, _) = self.list_offsets(topic, &[partition], -1).await?[0];
        Ok(TimestampOffset { offset: end.max(0) as u64, timestamp: None })
    }

    // ---- topics ----

    /// Topic configs, from the cache or one DescribeConfigs for those missing.
    pub async fn configs(&self, names: &[String], fresh: bool) -> Result<HashMap<String, TopicConfig>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.configs.lock();
            for n in names {
                match cache.get(n) {
                    Some((c, at)) if !fresh && at.elapsed() < CACHE_TTL => {
                        out.insert(n.clone(), c.clone());
                    }
                    _ => missing.push(n.as_str()),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let req = DescribeConfigsRequest::default().with_resources(
            missing
                .iter()
                .map(|n| {
                    DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(StrBytes::from_string((*n).to_owned()))
                        // Every config (null): Tansu cannot decode a list of names.
                        .with_configuration_keys(None)
                })
                .collect(),
        );
        let addr = self.any_broker().await?;
        let resp = match self.wire.call(&addr, 1..=2, &req, self.settings.request_timeout).await {
            Ok((resp, _)) => resp,
            Err(WireError::Unsupported { .. }) => {
                // librdkafka's MockCluster: no DescribeConfigs. Kafka's defaults, said once.
                if !self.configs_unsupported.swap(true, Ordering::Relaxed) {
                    tracing::warn!("the cluster has no DescribeConfigs API: topic configs shown as Kafka's defaults");
                }
                for n in missing {
                    out.insert(n.to_owned(), kafka_default_config());
                }
                return Ok(out);
            }
            Err(e) => {
                self.wire.forget(&addr);
                return Err(wire_error(e));
            }
        };
        let now = Instant::now();
        for result in &resp.results {
            let name = result.resource_name.as_str();
            match result.error_code {
                0 => {}
                code::UNKNOWN_TOPIC_OR_PARTITION => return Err(Error::UnknownTopic(name.to_owned())),
                c => {
                    let msg = result.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default();
                    return Err(Error::Backend(format!("DescribeConfigs of {name}: Kafka error {c} {msg}")));
                }
            }
            let get = |k: &str| {
                result.configs.iter().find(|c| c.name.as_str() == k).and_then(|c| c.value.as_ref()).map(|v| v.as_str())
            };
            let d = kafka_default_config();
            let config = TopicConfig {
                retention_ms: get("retention.ms").and_then(|v| v.parse().ok()).unwrap_or(d.retention_ms),
                retention_bytes: get("retention.bytes").and_then(|v| v.parse().ok()).unwrap_or(d.retention_bytes),
                max_message_bytes: get("max.message.bytes").and_then(|v| v.parse().ok()).unwrap_or(d.max_message_bytes),
                ..d
            };
            self.configs.lock().insert(name.to_owned(), (config.clone(), now));
            out.insert(name.to_owned(), config);
        }
        if let Some(n) = missing.iter().find(|n| !out.contains_key(**n)) {
            return Err(Error::UnknownTopic((*n).to_owned()));
        }
        Ok(out)
    }

    async fn config(&self, topic: &str) -> Result<TopicConfig> {
        let names = [topic.to_owned()];
        self.configs(&names, false).await?.remove(topic).ok_or_else(|| Error::UnknownTopic(topic.to_owned()))
    }

    /// Describes a topic: partitions with watermarks, configuration.
    pub async fn describe(&self, topic: &str) -> Result<ClusterTopic> {
        let meta = self.topic_meta(topic, true).await?;
        let partitions: Vec<u32> = (0..meta.leaders.len() as u32).collect();
        let (marks, config) = tokio::try_join!(self.watermarks(topic, &partitions), self.config(topic))?;
        Ok(ClusterTopic { name: topic.to_owned(), partitions: marks, config })
    }

    /// Waits (briefly) until metadata shows `topic` with `partitions` partitions, or without
    /// it when `partitions` is 0: admin answers come before every broker knows.
    async fn settle(&self, topic: &str, partitions: u32) {
        for i in 0..40 {
            match self.topic_meta(topic, true).await {
                Ok(t)
                    if t.leaders.len() as u32 >= partitions && partitions > 0 && t.leaders.iter().all(|l| *l >= 0) =>
                {
                    return;
                }
                Err(Error::UnknownTopic(_)) if partitions == 0 => return,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(25 * (i + 1).min(8))).await;
        }
        tracing::warn!(topic, partitions, "the cluster's metadata did not settle within 5 s");
    }

    pub async fn create_topic(&self, name: &str, partitions: u32, patch: &TopicConfigPatch) -> Result<ClusterTopic> {
        crate::topic::TopicName::parse(name)?;
        crate::topic::validate_partition_count(partitions)?;
        TopicConfig::default().apply(patch)?;
        let values = config_values(patch)?;
        self.require(ApiKey::CreateTopics).await?;
        let mut new = NewTopic::new(name, partitions as i32, TopicReplication::Fixed(-1));
        for (k, v) in &values {
            new = new.set(k, v);
        }
        let opts = AdminOptions::new()
            .request_timeout(Some(self.settings.request_timeout))
            .operation_timeout(Some(self.settings.request_timeout));
        let answers = self.admin.create_topics([&new], &opts).await.map_err(|e| kafka_error("CreateTopics", &e))?;
        for answer in answers {
            if let Err((_, code)) = answer {
                return Err(kafka_error(name, &KafkaError::AdminOp(code)));
            }
        }
        self.configs.lock().remove(name);
        self.settle(name, partitions).await;
        self.describe(name).await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.topic_meta(name, true).await?;
        self.require(ApiKey::DeleteTopics).await?;
        let opts = AdminOptions::new()
            .request_timeout(Some(self.settings.request_timeout))
            .operation_timeout(Some(self.settings.request_timeout));
        let answers = self.admin.delete_topics(&[name], &opts).await.map_err(|e| kafka_error("DeleteTopics", &e))?;
        for answer in answers {
            if let Err((_, code)) = answer {
                return Err(kafka_error(name, &KafkaError::AdminOp(code)));
            }
        }
        self.configs.lock().remove(name);
        self.settle(name, 0).await;
        Ok(())
    }

    /// Grows the partition count and/or patches the configuration.
    pub async fn alter_topic(
        &self,
        name: &str,
        partitions: Option<u32>,
        patch: &TopicConfigPatch,
    ) -> Result<ClusterTopic> {
        let current = self.topic_meta(name, true).await?.leaders.len() as u32;
        TopicConfig::default().apply(patch)?;
        if let Some(n) = partitions {
            crate::topic::validate_partition_count(n)?;
            if n < current {
                return Err(Error::InvalidPartitions(format!(
                    "{name} has {current} partitions; a topic's partitions can be added, not removed"
                )));
            }
        }
        let values = config_values(patch)?;
        if partitions.is_some_and(|n| n > current) {
            // Checked before anything changes: a request is applied whole or refused.
            self.require(ApiKey::CreatePartitions).await?;
        }
        if !values.is_empty() {
            self.alter_configs(name, &values).await?;
        }
        if let Some(n) = partitions.filter(|n| *n > current) {
            self.require(ApiKey::CreatePartitions).await?;
            let opts = AdminOptions::new()
                .request_timeout(Some(self.settings.request_timeout))
                .operation_timeout(Some(self.settings.request_timeout));
            let grow = NewPartitions::new(name, n as usize);
            let answers =
                self.admin.create_partitions([&grow], &opts).await.map_err(|e| kafka_error("CreatePartitions", &e))?;
            for answer in answers {
                if let Err((_, code)) = answer {
                    return Err(kafka_error(name, &KafkaError::AdminOp(code)));
                }
            }
            self.settle(name, n).await;
        }
        self.configs.lock().remove(name);
        self.describe(name).await
    }

    /// Kafka's IncrementalAlterConfigs: sets `values` on the topic, leaving the rest.
    async fn alter_configs(&self, name: &str, values: &[(&'static str, String)]) -> Result<()> {
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(name.to_owned()))
                .with_configs(
                    values
                        .iter()
                        .map(|(k, v)| {
                            AlterableConfig::default()
                                .with_name(StrBytes::from_static_str(k))
                                .with_config_operation(0)
                                .with_value(Some(StrBytes::from_string(v.clone())))
                        })
                        .collect(),
                ),
        ]);
        let addr = self.any_broker().await?;
        let (resp, _) = self.wire.call(&addr, 0..=1, &req, self.settings.request_timeout).await.map_err(wire_error)?;
        for r in &resp.responses {
            let msg = r.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default();
            match r.error_code {
                0 => {}
                code::UNKNOWN_TOPIC_OR_PARTITION => return Err(Error::UnknownTopic(name.to_owned())),
                code::INVALID_CONFIG | code::POLICY_VIOLATION => {
                    return Err(Error::InvalidRequest(format!("the cluster refused the configuration: {msg}")));
                }
                code::TOPIC_AUTHORIZATION_FAILED => {
                    return Err(Error::Backend(format!("the cluster refused gregor's principal: {msg}")));
                }
                c => return Err(Error::Backend(format!("IncrementalAlterConfigs of {name}: error {c} {msg}"))),
            }
        }
        Ok(())
    }

    /// `not_supported` unless the cluster's brokers offer `key`.
    async fn require(&self, key: ApiKey) -> Result<()> {
        let addr = self.any_broker().await?;
        match self.wire.supports(&addr, key).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Unsupported(format!("the Kafka cluster does not offer {key:?}"))),
            Err(e) => {
                self.wire.forget(&addr);
                Err(wire_error(e))
            }
        }
    }

    async fn any_broker(&self) -> Result<String> {
        if let Some(a) = self.meta.read().brokers.values().min().cloned() {
            return Ok(a);
        }
        self.refresh(Some(&[])).await?;
        self.meta
            .read()
            .brokers
            .values()
            .min()
            .cloned()
            .ok_or_else(|| Error::Backend("the cluster has no brokers".into()))
    }

    // ---- records ----

    /// Produces records: each placed as on the embedded backend, sent with the producer of
    /// `acks`. With `acks=none` the answer comes once librdkafka queued them.
    pub async fn produce(
        &self,
        topic: &str,
        records: &[NewRecord<'_>],
        route: Option<u32>,
        acks: Acks,
    ) -> Result<Produced> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let partitions = match self.partition_count(topic).await {
            Ok(n) => n,
            Err(Error::UnknownTopic(_)) if self.auto_create => {
                match self.create_topic(topic, self.default_partitions, &TopicConfigPatch::default()).await {
                    Ok(t) => t.partitions.len() as u32,
                    Err(Error::TopicExists(_)) => self.partition_count(topic).await?,
                    Err(Error::InvalidTopicName(_)) => return Err(Error::UnknownTopic(topic.to_owned())),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let max = self.config(topic).await?.max_message_bytes;
        let now = crate::log::now_ms();
        let mut sticky = None;
        let mut placed = Vec::with_capacity(records.len());
        for (index, rec) in records.iter().enumerate() {
            placed.push(crate::log::place(topic, index, rec, route, partitions, max, now, &mut || {
                *sticky.get_or_insert_with(|| self.sticky.fetch_add(1, Ordering::Relaxed) % partitions)
            })?);
        }
        let producer = &self.producers[match acks {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => 2,
        }];
        let mut deliveries = Vec::with_capacity(records.len());
        for (rec, (p, ts)) in records.iter().zip(&placed) {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(topic).partition(*p as i32).timestamp(*ts as i64);
            // Headers are a C allocation of librdkafka's: made only for records that have some.
            if !rec.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
                for h in &rec.headers {
                    headers = headers.insert(Header { key: &h.name, value: h.value.as_ref().map(|v| &v.bytes[..]) });
                }
                record = record.headers(headers);
            }
            if let Some(k) = &rec.key {
                record = record.key(&k.bytes[..]);
            }
            if let Some(v) = &rec.value {
                record = record.payload(&v.bytes[..]);
            }
            // librdkafka's queue is full: refused whole when nothing of the request is queued
            // yet (503, retry later); past its first record the request waits for room, up to
            // the request timeout, rather than answer an error for a request partly written.
            let mut room_by = None;
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((e, back))
                        if !deliveries.is_empty()
                            && e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                            && *room_by.get_or_insert_with(|| Instant::now() + self.settings.request_timeout)
                                > Instant::now() =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        self.wire.count_error("Produce");
                        return Err(kafka_error(topic, &e));
                    }
                }
            }
        }
        if acks == Acks::None {
            return Ok(Produced::Accepted { records: records.len() });
        }
        let mut out = Vec::with_capacity(records.len());
        for (delivery, (p, ts)) in futures_util::future::join_all(deliveries).await.into_iter().zip(&placed) {
            match delivery {
                Ok(Ok(d)) => out.push(RecordMetadata {
                    partition: *p,
                    offset: d.offset.max(0) as u64,
                    timestamp: d.timestamp.to_millis().and_then(|t| u64::try_from(t).ok()).unwrap_or(*ts),
                }),
                Ok(Err((e, _))) => {
                    self.wire.count_error("Produce");
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
                    ) {
                        let index = out.len();
                        return Err(Error::RecordTooLarge { index, size: records[index].size(), max });
                    }
                    return Err(kafka_error(topic, &e));
                }
                Err(_) => return Err(Error::Backend("the producer was closed before delivering".into())),
            }
        }
        Ok(Produced::Written(out))
    }

    /// Reads `partition` from `offset`, long-polling up to `wait` when there is nothing at
    /// `offset` yet. Out-of-range offsets are `OffsetOutOfRange`. The wait is the broker's
    /// (Fetch `max_wait_ms`); a broker that answers an empty Fetch at once (some do not
    /// long-poll) is waited for on the partition's follower instead.
    pub async fn read(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: u32,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<ReadResult> {
        let deadline = Instant::now() + wait;
        let mut follower: Option<watch::Receiver<u64>> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let asked = Instant::now();
            // In slices: some brokers (Tansu, librdkafka's mock) hold an empty Fetch for its
            // whole max_wait_ms even when records arrive meanwhile.
            let read = self.fetch(topic, partition, offset, max_records, max_bytes, left.min(WAIT_SLICE)).await?;
            let early = asked.elapsed() + Duration::from_millis(20) < left.min(WAIT_SLICE);
            if read.end_offset != offset || left.is_zero() || self.shutdown.is_cancelled() {
                return Ok(read);
            }
            if !early {
                // The broker waited its slice: ask again until the deadline.
                continue;
            }
            // Answered early with nothing to read: wait for the end to move.
            if follower.is_none() {
                follower = Some(self.subscribe(topic, partition).await?);
            }
            let Some(rx) = follower.as_mut() else { return Ok(read) };
            let moved = async { rx.wait_for(|end| *end > offset).await.map(|_| ()) };
            tokio::select! {
                _ = tokio::time::timeout(left, moved) => {}
                _ = self.shutdown.cancelled() => {}
            }
            if Instant::now() >= deadline {
                return self.fetch(topic, partition, offset, max_records, max_bytes, Duration::ZERO).await;
            }
        }
    }

    /// One Fetch of `partition` from `offset` to its leader, waiting at most `wait` there.
    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: u32,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<ReadResult> {
        let fetch_offset = i64::try_from(offset).map_err(|_| Error::parameter("offset", "at most 2^63-1"))?;
        let max_bytes_i32 = i32::try_from(max_bytes).unwrap_or(i32::MAX);
        let mut wait = if self.shutdown.is_cancelled() { Duration::ZERO } else { wait };
        for attempt in 0..TRIES {
            let addr = self.leader(topic, partition, attempt > 0).await?;
            let id = self.meta.read().topics.get(topic).map(|t| t.id).unwrap_or_default();
            // Fetch v13+ names the topic by id: only with an id to give.
            let versions = if id.is_nil() { 4..=12 } else { 4..=16 };
            let req = FetchRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                .with_max_wait_ms(wait.as_millis().min(i32::MAX as u128) as i32)
                .with_min_bytes(1)
                .with_max_bytes(max_bytes_i32)
                .with_isolation_level(0)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                        .with_topic_id(id)
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(partition as i32)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(fetch_offset)
                                .with_last_fetched_epoch(-1)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(max_bytes_i32),
                        ]),
                ]);
            let call = self.wire.call(&addr, versions, &req, wait + self.settings.request_timeout);
            let answer = tokio::select! {
                a = call => a,
                _ = self.shutdown.cancelled(), if !wait.is_zero() => {
                    // Shutting down: answer at once with what is there now.
                    return Box::pin(self.fetch(topic, partition, offset, max_records, max_bytes, Duration::ZERO)).await;
                }
            };
            let resp = match answer {
                Ok((resp, _)) => resp,
                Err(e) if attempt + 1 < TRIES => {
                    tracing::debug!(error = %e, "Fetch failed; retrying");
                    self.wire.forget(&addr);
                    continue;
                }
                Err(e) => return Err(wire_error(e)),
            };
            if resp.error_code != 0 {
                return Err(Error::Backend(format!("Fetch from {addr}: error {}", resp.error_code)));
            }
            let Some(data) =
                resp.responses.iter().flat_map(|t| &t.partitions).find(|p| p.partition_index == partition as i32)
            else {
                if attempt + 1 < TRIES {
                    // Tansu sometimes answers a Fetch with no partition at all (always to
                    // `max_wait_ms` 0); asked again, with a short wait, it answers properly.
                    tracing::debug!(topic, partition, "a Fetch answer without the partition; asking again");
                    wait = wait.max(EMPTY_ANSWER_WAIT);
                    continue;
                }
                return Err(Error::Backend(format!("Fetch from {addr} answered without {topic}/{partition}")));
            };
            match data.error_code {
                0 => {}
                code::OFFSET_OUT_OF_RANGE => {
                    let marks = self.watermarks(topic, &[partition]).await?[0];
                    return Err(Error::OffsetOutOfRange { offset, beginning: marks.beginning, end: marks.end });
                }
                c if (retriable(c) || c == code::UNKNOWN_TOPIC_OR_PARTITION) && attempt + 1 < TRIES => {
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    continue;
                }
                c => return Err(partition_error(topic, partition, c)),
            }
            let end = data.high_watermark.max(0) as u64;
            let beginning = if data.log_start_offset >= 0 {
                data.log_start_offset as u64
            } else {
                self.list_offsets(topic, &[partition], -2).await?[0].0.max(0) as u64
            };
            // Brokers that do not say OFFSET_OUT_OF_RANGE themselves (Tansu) still give the range.
            if offset > end || offset < beginning {
                return Err(Error::OffsetOutOfRange { offset, beginning, end });
            }
            let batches = split_batches(data.records.as_deref().unwrap_or_default())?;
            return Ok(ReadResult::from_batches(batches, offset, max_records, max_bytes, beginning, end));
        }
        Err(Error::Backend(format!("reading {topic}/{partition}: no answer after {TRIES} tries")))
    }

    /// A receiver of `partition`'s end offset, kept current by a follower task while anyone
    /// holds one (streams wait on it as on the embedded log's).
    pub async fn subscribe(self: &Arc<Self>, topic: &str, partition: u32) -> Result<watch::Receiver<u64>> {
        let key = (topic.to_owned(), partition);
        if let Some(tx) = self.followers.lock().get(&key)
            && !tx.is_closed()
        {
            return Ok(tx.subscribe());
        }
        let end = self.list_offsets(topic, &[partition], -1).await?[0].0.max(0) as u64;
        let mut followers = self.followers.lock();
        if let Some(tx) = followers.get(&key)
            && !tx.is_closed()
        {
            return Ok(tx.subscribe());
        }
        let (tx, rx) = watch::channel(end);
        followers.insert(key.clone(), tx.clone());
        tokio::spawn(follow(Arc::downgrade(self), key, tx));
        Ok(rx)
    }
}

/// Keeps a followed partition's end offset current: long-polls its leader with Fetch at the
/// end offset it knows; stops once nobody watches.
async fn follow(cluster: std::sync::Weak<Cluster>, key: (String, u32), tx: watch::Sender<u64>) {
    let (topic, partition) = &key;
    let mut changed = Instant::now() - BUSY_FOR;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        if c.shutdown.is_cancelled() {
            return;
        }
        let end = *tx.borrow();
        let stop = tx.closed();
        let asked = Instant::now();
        let read = c.fetch(topic, *partition, end, 1, 1, FOLLOW_WAIT);
        let outcome = tokio::select! {
            r = read => Some(r),
            _ = stop => None,
        };
        match outcome {
            None => break,
            Some(Ok(r)) => {
                if r.end_offset != end {
                    tx.send_replace(r.end_offset);
                    changed = Instant::now();
                } else if asked.elapsed() < FOLLOW_WAIT / 2 {
                    // The broker does not long-poll: ask again shortly instead.
                    drop(c);
                    let interval = if changed.elapsed() < BUSY_FOR { BUSY_POLL_INTERVAL } else { POLL_INTERVAL };
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = tx.closed() => break,
                    }
                }
            }
            // Retention moved past it, or the log was truncated: take the end as it is now.
            Some(Err(Error::OffsetOutOfRange { end: now, .. })) => {
                tx.send_replace(now);
            }
            Some(Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. })) => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, topic, partition, "following a partition failed; retrying");
                drop(c);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    if let Some(c) = cluster.upgrade() {
        let mut followers = c.followers.lock();
        if followers.get(&key).is_some_and(|t| t.same_channel(&tx)) {
            followers.remove(&key);
        }
    }
}

/// Asks the cluster for its brokers every few seconds: `/readyz` says whether it answers.
async fn watch_readiness(cluster: std::sync::Weak<Cluster>, stop: CancellationToken) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let ok = c.refresh(Some(&[])).await.is_ok();
        if ok != c.ready.swap(ok, Ordering::Relaxed) {
            if ok {
                tracing::info!(bootstrap = %c.bootstrap(), "the Kafka cluster answers");
            } else {
                tracing::warn!(bootstrap = %c.bootstrap(), "the Kafka cluster does not answer");
            }
        }
        drop(c);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(if ok { 5 } else { 1 })) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Kafka's own defaults for the configs gregor shows (broker defaults may differ).
fn kafka_default_config() -> TopicConfig {
    TopicConfig { retention_ms: 7 * 24 * 3_600_000, max_message_bytes: 1_048_588, ..TopicConfig::default() }
}

/// A partition-level error code as gregor's error.
fn partition_error(topic: &str, partition: u32, code: i16) -> Error {
    match code {
        code::UNKNOWN_TOPIC_OR_PARTITION => Error::UnknownTopic(topic.to_owned()),
        code::TOPIC_AUTHORIZATION_FAILED => {
            Error::Backend(format!("the cluster refused gregor's principal access to {topic}"))
        }
        c => Error::Backend(format!("{topic}/{partition}: Kafka error {c}")),
    }
}

/// A configuration patch as Kafka's topic config names and values.
fn config_values(patch: &TopicConfigPatch) -> Result<Vec<(&'static str, String)>> {
    // `value_schema_validation` / `key_schema_validation` are not Kafka topic configs: the
    // service keeps them in the Schema Registry's `_schemas` topic.
    let mut out = Vec::new();
    if let Some(v) = patch.retention_ms {
        out.push(("retention.ms", v.to_string()));
    }
    if let Some(v) = patch.retention_bytes {
        out.push(("retention.bytes", v.to_string()));
    }
    if let Some(v) = patch.max_message_bytes {
        out.push(("max.message.bytes", v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: u64, attributes: u16, magic: u8) -> Vec<u8> {
        let mut b = vec![0u8; 61];
        b[0..8].copy_from_slice(&base.to_be_bytes());
        b[8..12].copy_from_slice(&49u32.to_be_bytes());
        b[16] = magic;
        b[21..23].copy_from_slice(&attributes.to_be_bytes());
        b
    }

    /// Fetched record sets split into batches; control batches and a partial tail are left out.
    #[test]
    fn fetched_batches_split_skipping_control_and_partial() {
        let mut data = batch(5, 0, 2);
        data.extend(batch(6, 0x20, 2));
        data.extend(batch(7, 0, 2));
        data.extend(&batch(8, 0, 2)[..30]);
        let got: Vec<u64> = split_batches(&data).unwrap().iter().map(|(b, _)| *b).collect();
        assert_eq!(got, vec![5, 7]);
        let old = batch(0, 0, 1);
        assert!(matches!(split_batches(&old), Err(Error::Unsupported(_))));
    }

    #[test]
    fn settings_refuse_what_gregor_sets_or_cannot_speak() {
        let mut s = ClusterSettings::new("127.0.0.1:9092");
        assert!(s.check().is_ok());
        s.kafka_config.insert("acks".into(), "1".into());
        assert!(s.check().unwrap_err().contains("acks"));
        s.kafka_config.clear();
        s.kafka_config.insert("security.protocol".into(), "SASL_PLAINTEXT".into());
        assert!(s.check().unwrap_err().contains("sasl.username"));
        s.kafka_config.insert("sasl.username".into(), "u".into());
        s.kafka_config.insert("sasl.password".into(), "p".into());
        assert!(s.security().unwrap().0.is_some());
        s.kafka_config.insert("sasl.mechanism".into(), "SCRAM-SHA-256".into());
        assert!(s.check().is_err());
        s.kafka_config.remove("sasl.mechanism");
        s.kafka_config.insert("security.protocol".into(), "SASL_SSL".into());
        s.kafka_config.insert("enable.ssl.certificate.verification".into(), "false".into());
        let (sasl, tls) = s.security().unwrap();
        assert!(sasl.is_some() && tls.is_some(), "SASL over TLS");
        s.kafka_config.insert("security.protocol".into(), "SSL".into());
        s.kafka_config.insert("ssl.keystore.location".into(), "/k.p12".into());
        assert!(s.check().unwrap_err().contains("ssl.keystore.location"));
        s.kafka_config.insert("security.protocol".into(), "SASL_GSSAPI".into());
        assert!(s.check().unwrap_err().contains("SASL_GSSAPI".to_ascii_lowercase().as_str()));
    }
}
