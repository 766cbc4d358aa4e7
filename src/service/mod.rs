//! The service layer: every operation gregor offers, named once, for every
//! transport. REST handlers and WebSocket connections call only this; they never
//! touch the log, the groups or the store.
//!
//! Each call takes the [`RequestCtx`] of the request (its principal), authorizes
//! the [`Operation`] in one place ([`Authorizer::check`]), validates its bounds
//! ([`limits`]) and returns owned values. Behind it sits a [`Backend`]: the
//! embedded log (RocksDB) with gregor's group coordinator, or a Kafka cluster
//! (`crate::cluster`); the seam is an enum, so every call decides what it means on each.
//!
//! - [`authz`]: principals, operations and the permissions they need.
//! - [`limits`]: the bounds of a request (records, bytes, waits).
//! - [`stream`]: topic streams and group-member streams (what a WebSocket follows).

pub mod authz;
mod history;
pub mod kafka_groups;
pub mod limits;
pub mod schemas;
pub mod stream;

pub use schemas::{Decoder, SchemaIds};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

pub use authz::{Action, Authorizer, Operation, Principal, RequestCtx, Resource};
// The values the service takes and returns, so that transports import them from here.
pub use crate::group::assignor::by_topic;
pub use crate::group::{
    Assignor, GroupInfo, GroupState, JoinParams, Joined, OffsetReset, ResetTo, TopicPartition, View,
};
pub use crate::log::{Acks, Produced, RecordMetadata, TimestampOffset};
pub use stream::{FetchSummary, Keepalive, MemberStream, RecordSink, StreamStart, TopicStream, Watch};

use crate::auth::quota::{Slot, Throttle};
use crate::auth::{Credentials, Security};
use crate::cluster::{Cluster, ClusterTopic};
use crate::error::{Code, Error, Result};
use crate::group::{CommittedInfo, Groups};
use crate::log::{IdempotencyKey, Log, ReadRequest, ReadResult, Topic};
use crate::metrics::{GroupTopicLabels, Metrics};
/// Why a batch a Kafka producer sent was refused.
pub use crate::record::BatchError;
use crate::record::{NewRecord, StoredRecord};
use crate::topic::{TopicConfig, TopicConfigPatch};

/// Produced Kafka batches up to this many bytes per request are checked on the async worker;
/// larger ones on a blocking thread (`Service::submit_batches`).
const CHECK_INLINE_BYTES: usize = 256 * 1024;

/// The backend that stores and serves the log.
enum Backend {
    /// The embedded RocksDB log and gregor's own group coordinator.
    Embedded { log: Arc<Log>, groups: Arc<Groups> },
    /// A Kafka cluster, with gregor as a stateless gateway (`crate::cluster`).
    Kafka { cluster: Arc<Cluster> },
}

struct Inner {
    backend: Backend,
    /// The Schema Registry (embedded backend; the Kafka backend has none yet).
    registry: Option<Arc<crate::registry::Registry>>,
    authorizer: Authorizer,
    metrics: Arc<Metrics>,
    /// What the console charts (`crate::history`).
    history: crate::history::History,
    /// Each principal's request counter, found without building its label set
    /// (an allocation and two hashes) on every request.
    request_counters:
        parking_lot::RwLock<std::collections::HashMap<String, prometheus_client::metrics::counter::Counter>>,
    /// Principals named in metric labels so far (bounded, see `MAX_LABELLED_PRINCIPALS`).
    labelled_principals: parking_lot::Mutex<std::collections::HashSet<String>>,
}

/// The service every transport calls. Cheap to clone.
#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.0.backend {
            Backend::Embedded { .. } => "embedded",
            Backend::Kafka { .. } => "kafka",
        };
        f.debug_struct("Service").field("backend", &backend).finish_non_exhaustive()
    }
}

/// A topic in a listing.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopicSummary {
    pub name: String,
    pub partition_count: u32,
    pub config: TopicConfig,
}

/// A topic with its partitions' offsets and its configuration.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopicDescription {
    pub name: String,
    pub partition_count: u32,
    pub partitions: Vec<PartitionInfo>,
    pub config: TopicConfig,
    /// When the topic was created (ms since the epoch).
    pub created_ms: u64,
}

/// A partition's offsets.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionInfo {
    pub topic: String,
    pub partition: u32,
    /// The earliest offset still stored.
    pub beginning_offset: u64,
    /// The next offset to be assigned (the log end offset).
    pub end_offset: u64,
    /// Bytes of the partition's stored batches (what `retention_bytes` limits); `null` on
    /// the Kafka backend, whose brokers keep that to themselves.
    pub size_bytes: Option<u64>,
}

/// What a read asks for; absent fields take their defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadParams {
    /// First offset to read; default: the partition's beginning offset.
    pub offset: Option<u64>,
    /// Most records (default 100).
    pub limit: Option<u32>,
    /// Most record bytes (default 1 MiB).
    pub max_bytes: Option<usize>,
    /// Long-poll up to this long when `offset` is the end of the log (default 0).
    pub wait_ms: Option<u64>,
}

/// A partition's stored batches for a Kafka Fetch, as stored, with the partition's offsets
/// when they were read.
#[derive(Debug)]
pub struct FetchedBatches {
    /// The batches, back to back.
    pub records: bytes::Bytes,
    pub beginning_offset: u64,
    pub end_offset: u64,
}

/// Records read from the log, decoded on demand. Decoding them is delivering
/// them: it counts them in `gregor_records_out_total`.
#[derive(Debug)]
pub struct Records {
    read: ReadResult,
    topic: String,
    metrics: Arc<Metrics>,
    /// The reader's quotas: what it decodes counts against `consume_bytes_per_sec`.
    quota: Option<Arc<crate::auth::PrincipalQuota>>,
}

impl Records {
    /// The records with their offsets, in offset order. Decoding is delivering:
    /// they count as records out, and their bytes against the reader's quota.
    pub fn decode(&self) -> Result<Vec<(u64, StoredRecord<'_>)>> {
        let records = self.read.records()?;
        self.metrics.records_out(&self.topic, records.len());
        if let Some(bucket) = self.quota.as_ref().and_then(|q| q.consume.as_ref()) {
            bucket.take(records.iter().map(|(_, r)| crate::log::stored_size(r) as u64).sum());
        }
        Ok(records)
    }
}

/// Which byte rate a request spends.
#[derive(Debug, Clone, Copy)]
enum Spend {
    Produce,
    Consume,
}

/// Distinct principals named in metric labels, at most: past it (many JWT
/// subjects, say) the rest are counted together, so a scrape stays bounded.
const MAX_LABELLED_PRINCIPALS: usize = 1_000;
/// The label of the principals past `MAX_LABELLED_PRINCIPALS`.
const OTHER_PRINCIPALS: &str = "User:(others)";

/// The label for `name`: itself while it is one of the first `cap` distinct
/// names seen, otherwise `OTHER_PRINCIPALS`.
fn bounded_label(known: &mut std::collections::HashSet<String>, name: &str, cap: usize) -> String {
    if known.contains(name) {
        return name.to_owned();
    }
    if known.len() < cap {
        known.insert(name.to_owned());
        return name.to_owned();
    }
    OTHER_PRINCIPALS.to_owned()
}

/// The answer to a read of one partition.
#[derive(Debug)]
pub struct Fetched {
    pub records: Records,
    /// The offset the read started at (the next offset when nothing was returned).
    pub offset: u64,
    pub beginning_offset: u64,
    /// The partition's end offset when the read ran.
    pub end_offset: u64,
}

/// How a REST or WebSocket produce request is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProduceOpts {
    /// Set by a per-partition route: overrides each record's own choice (which must then
    /// agree or be absent).
    pub partition: Option<u32>,
    pub acks: Acks,
    /// The schemas the request names for its keys and values.
    pub schemas: SchemaIds,
}

/// What a poll asks for.
#[derive(Debug, Clone, Default)]
pub struct PollParams {
    /// Most records (default 500).
    pub max_records: Option<u32>,
    /// Wait up to this long when there is nothing to return (default 0).
    pub wait_ms: Option<u64>,
    /// Most record bytes in the answer (default 50 MiB, Kafka's `fetch.max.bytes`);
    /// at least one record is returned when one is available.
    pub max_bytes: Option<usize>,
    /// The cursor of the last answer received (or of the join): read from its positions.
    pub cursor: Option<String>,
}

/// A poll's answer: what the member owns now, and what it was sent.
#[derive(Debug)]
pub struct Polled {
    pub view: View,
    pub records: Vec<(TopicPartition, Records)>,
    /// Partitions that could not be read, with a stable code.
    pub errors: Vec<(TopicPartition, Code)>,
    /// The member's positions after this answer, for the next poll.
    pub cursor: String,
}

/// A group in a listing.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub group: String,
    pub state: GroupState,
    pub generation: u64,
    pub members: usize,
}

/// One partition's offset in a commit or an offset reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsetEntry {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

impl Service {
    /// The service over the embedded log and its groups, authorizing with `security`.
    pub fn embedded(log: Arc<Log>, groups: Arc<Groups>, metrics: Arc<Metrics>, security: Arc<Security>) -> Service {
        Service(Arc::new(Inner {
            backend: Backend::Embedded { log, groups },
            registry: None,
            authorizer: Authorizer::new(security),
            metrics,
            history: crate::history::History::new(),
            request_counters: parking_lot::RwLock::new(std::collections::HashMap::new()),
            labelled_principals: parking_lot::Mutex::new(std::collections::HashSet::new()),
        }))
    }

    /// The service with `registry` as its Schema Registry (before it is shared).
    pub fn with_registry(self, registry: Arc<crate::registry::Registry>) -> Service {
        match Arc::try_unwrap(self.0) {
            Ok(mut inner) => {
                inner.registry = Some(registry);
                Service(Arc::new(inner))
            }
            Err(shared) => Service(shared),
        }
    }

    /// The Schema Registry, or `not_supported` where there is none (the Kafka backend).
    pub fn registry(&self) -> Result<&Arc<crate::registry::Registry>> {
        self.0.registry.as_ref().ok_or_else(|| Error::Unsupported("the Schema Registry is not available".into()))
    }

    /// The Schema Registry, once `op` (a registry operation) is authorized for `ctx`'s
    /// principal. The registry's calls are cheap and in memory (writes go through its own
    /// blocking boundary), so transports call it directly past this gate.
    pub fn registry_for(&self, ctx: &RequestCtx, op: Operation<'_>) -> Result<&Arc<crate::registry::Registry>> {
        self.authorize(ctx, op)?;
        self.registry()
    }

    /// Whether `ctx`'s principal may do `op` (for listings filtered per item).
    pub fn may(&self, ctx: &RequestCtx, op: Operation<'_>) -> bool {
        self.authorize(ctx, op).is_ok()
    }

    /// The service over a Kafka cluster, authorizing with `security`.
    pub fn kafka(cluster: Arc<Cluster>, metrics: Arc<Metrics>, security: Arc<Security>) -> Service {
        cluster.set_metrics(metrics.clone());
        Service(Arc::new(Inner {
            backend: Backend::Kafka { cluster },
            registry: None,
            authorizer: Authorizer::new(security),
            metrics,
            history: crate::history::History::new(),
            request_counters: parking_lot::RwLock::new(std::collections::HashMap::new()),
            labelled_principals: parking_lot::Mutex::new(std::collections::HashSet::new()),
        }))
    }

    /// Who presented `credentials`, as the context of their request
    /// (`Unauthenticated` when they are wrong or required and absent).
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<RequestCtx> {
        let identity = self.0.authorizer.security().authenticate(credentials).await?;
        Ok(RequestCtx {
            principal: identity.principal,
            expires_at: identity.expires_at,
            throttle: Throttle::Reject,
            slot: None,
        })
    }

    /// Admits one request of `ctx`'s principal: counts it, charges its
    /// `requests_per_sec` and takes its place under `max_connections` (held in
    /// `ctx` for as long as the request, or the stream it opens, lives).
    pub fn admit(&self, ctx: &mut RequestCtx) -> Result<()> {
        let security = self.0.authorizer.security();
        if security.enabled() {
            self.count_request(ctx);
        }
        let Some(quota) = security.quota(&ctx.principal) else { return Ok(()) };
        if let Some(bucket) = &quota.requests {
            let debt = bucket.debt();
            if !debt.is_zero() {
                return Err(self.over_quota(ctx, "requests_per_sec", debt));
            }
            bucket.take(1);
        }
        if let Some(limit) = &quota.connections {
            let slot = limit
                .acquire()
                .ok_or_else(|| self.over_quota(ctx, "max_connections", std::time::Duration::from_secs(1)))?;
            ctx.slot = Some(Arc::new(slot));
        }
        Ok(())
    }

    fn principal_labels(&self, ctx: &RequestCtx) -> crate::metrics::PrincipalLabels {
        let mut known = self.0.labelled_principals.lock();
        crate::metrics::PrincipalLabels {
            principal: bounded_label(&mut known, ctx.principal.as_str(), MAX_LABELLED_PRINCIPALS),
        }
    }

    fn count_request(&self, ctx: &RequestCtx) {
        if let Some(counter) = self.0.request_counters.read().get(ctx.principal.as_str()) {
            counter.inc();
            return;
        }
        let counter = self.0.metrics.principal_requests.get_or_create(&self.principal_labels(ctx)).clone();
        counter.inc();
        let mut counters = self.0.request_counters.write();
        // Bounded like the metric family it mirrors: principals come and go (JWT subjects).
        if counters.len() >= 10_000 {
            counters.clear();
        }
        counters.insert(ctx.principal.as_str().to_owned(), counter);
    }

    fn over_quota(&self, ctx: &RequestCtx, what: &'static str, retry_after: std::time::Duration) -> Error {
        self.0.metrics.principal_denied.get_or_create(&self.principal_labels(ctx)).inc();
        Error::QuotaExceeded { principal: ctx.principal.to_string(), what, retry_after }
    }

    /// Spends `n` of a byte rate (`produce` or `consume`): refused while in debt
    /// (`Throttle::Reject`), or after waiting the debt out (`Throttle::Delay`).
    async fn spend(&self, ctx: &RequestCtx, which: Spend, n: u64) -> Result<()> {
        let Some(quota) = self.0.authorizer.security().quota(&ctx.principal) else { return Ok(()) };
        let (bucket, what) = match which {
            Spend::Produce => (&quota.produce, "produce_bytes_per_sec"),
            Spend::Consume => (&quota.consume, "consume_bytes_per_sec"),
        };
        let Some(bucket) = bucket else { return Ok(()) };
        match ctx.throttle {
            Throttle::Reject => {
                let debt = bucket.debt();
                if !debt.is_zero() {
                    return Err(self.over_quota(ctx, what, debt));
                }
                bucket.take(n);
            }
            Throttle::Delay => {
                let wait = bucket.take(n);
                if !wait.is_zero() {
                    self.0
                        .metrics
                        .principal_throttle_seconds
                        .get_or_create(&self.principal_labels(ctx))
                        .inc_by(wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Ok(())
    }

    /// Takes a place under the principal's `max_streams`, held by the stream.
    fn stream_slot(&self, ctx: &RequestCtx) -> Result<Option<Slot>> {
        let Some(quota) = self.0.authorizer.security().quota(&ctx.principal) else { return Ok(None) };
        match &quota.streams {
            None => Ok(None),
            Some(limit) => match limit.acquire() {
                Some(slot) => Ok(Some(slot)),
                None => Err(self.over_quota(ctx, "max_streams", std::time::Duration::from_secs(1))),
            },
        }
    }

    /// Changes whenever keys or ACLs are reloaded: open streams check their permissions again.
    pub fn security_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.authorizer.security().subscribe()
    }

    /// The figures transports add to (request latency, WebSocket connections).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    fn authorize(&self, ctx: &RequestCtx, op: Operation<'_>) -> Result<()> {
        let decided = self.0.authorizer.check(ctx, op);
        if decided.is_err() {
            self.0.metrics.principal_denied.get_or_create(&self.principal_labels(ctx)).inc();
        }
        decided
    }

    /// The embedded log; `not_supported` on the Kafka backend (the Kafka listener's paths).
    fn log(&self) -> Result<&Arc<Log>> {
        match &self.0.backend {
            Backend::Embedded { log, .. } => Ok(log),
            Backend::Kafka { .. } => Err(Error::Unsupported(
                "this operation needs the embedded backend (it is using a Kafka cluster)".into(),
            )),
        }
    }

    /// gregor's group coordinator (embedded backend).
    fn groups(&self) -> Result<&Arc<Groups>> {
        match &self.0.backend {
            Backend::Embedded { groups, .. } => Ok(groups),
            Backend::Kafka { .. } => Err(Error::Unsupported(
                "consumer groups on the Kafka backend are not implemented yet (read by offset or stream a topic)"
                    .into(),
            )),
        }
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.0.backend {
            Backend::Embedded { .. } => None,
            Backend::Kafka { cluster } => Some(cluster),
        }
    }

    fn records(&self, ctx: &RequestCtx, topic: &str, read: ReadResult) -> Records {
        let quota = self.0.authorizer.security().quota(&ctx.principal);
        Records { read, topic: topic.to_owned(), metrics: self.0.metrics.clone(), quota }
    }

    /// True while the server accepts writes: not shutting down, its store not failed.
    pub fn is_ready(&self) -> bool {
        match &self.0.backend {
            Backend::Embedded { log, .. } => log.is_ready(),
            Backend::Kafka { cluster } => cluster.is_ready(),
        }
    }

    /// Cancelled when shutdown begins: long-polls return, streams close.
    pub fn shutdown_token(&self) -> CancellationToken {
        match &self.0.backend {
            Backend::Embedded { log, .. } => log.shutdown_token(),
            Backend::Kafka { cluster } => cluster.shutdown_token(),
        }
    }

    // ---- topics ----

    pub async fn list_topics(&self, ctx: &RequestCtx) -> Result<Vec<TopicSummary>> {
        self.authorize(ctx, Operation::ListTopics)?;
        let mut out = Vec::new();
        let log = match &self.0.backend {
            Backend::Embedded { log, .. } => log,
            Backend::Kafka { cluster } => {
                let names: Vec<(String, u32)> = cluster
                    .topic_names()
                    .await?
                    .into_iter()
                    .filter(|(n, _)| self.authorize(ctx, Operation::DescribeTopic(n)).is_ok())
                    .collect();
                let list: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
                let mut configs = cluster.configs(&list, false).await?;
                for (name, partition_count) in names {
                    // Deleted between the listing and the configs: left out.
                    if let Some(config) = configs.remove(&name) {
                        out.push(TopicSummary { name, partition_count, config });
                    }
                }
                return Ok(out);
            }
        };
        for t in log.topics() {
            if self.authorize(ctx, Operation::DescribeTopic(t.name.as_str())).is_ok() {
                out.push(TopicSummary {
                    name: t.name.to_string(),
                    partition_count: t.partitions().len() as u32,
                    config: t.config(),
                });
            }
        }
        Ok(out)
    }

    pub async fn create_topic(
        &self,
        ctx: &RequestCtx,
        name: &str,
        partitions: u32,
        config: &TopicConfigPatch,
    ) -> Result<TopicDescription> {
        self.authorize(ctx, Operation::CreateTopic(name))?;
        if let Some(cluster) = self.cluster() {
            let topic = describe_cluster_topic(cluster.create_topic(name, partitions, config).await?);
            return self.cluster_topic_schemas(topic, Some(config)).await;
        }
        let topic = self.log()?.create_topic(name, partitions, config).await?;
        Ok(describe(&topic))
    }

    /// On the Kafka backend: applies `patch`'s schema validation settings (kept in the Schema
    /// Registry's log, not in the cluster's topic configs) and shows them in `topic`.
    async fn cluster_topic_schemas(
        &self,
        mut topic: TopicDescription,
        patch: Option<&TopicConfigPatch>,
    ) -> Result<TopicDescription> {
        let Ok(registry) = self.registry() else { return Ok(topic) };
        let wanted = patch.map(|p| (p.key_schema_validation, p.value_schema_validation));
        let now = match wanted {
            Some((key, value)) if key.is_some() || value.is_some() => {
                registry.set_topic_validation(&topic.name, key, value).await.map_err(registry_error)?
            }
            _ => registry.topic_validation(&topic.name),
        };
        topic.config.key_schema_validation = now.key;
        topic.config.value_schema_validation = now.value;
        Ok(topic)
    }

    pub async fn describe_topic(&self, ctx: &RequestCtx, name: &str) -> Result<TopicDescription> {
        self.authorize(ctx, Operation::DescribeTopic(name))?;
        if let Some(cluster) = self.cluster() {
            return self.cluster_topic_schemas(describe_cluster_topic(cluster.describe(name).await?), None).await;
        }
        let topic = self.log()?.topic(name)?;
        Ok(describe(&topic))
    }

    /// Changes a topic's configuration and/or grows its partition count.
    pub async fn alter_topic(
        &self,
        ctx: &RequestCtx,
        name: &str,
        partitions: Option<u32>,
        patch: &TopicConfigPatch,
    ) -> Result<TopicDescription> {
        self.authorize(ctx, Operation::AlterTopic(name))?;
        if let Some(cluster) = self.cluster() {
            let topic = describe_cluster_topic(cluster.alter_topic(name, partitions, patch).await?);
            return self.cluster_topic_schemas(topic, Some(patch)).await;
        }
        let topic = self.log()?.update_topic(name, partitions, patch).await?;
        Ok(describe(&topic))
    }

    pub async fn delete_topic(&self, ctx: &RequestCtx, name: &str) -> Result<()> {
        self.authorize(ctx, Operation::DeleteTopic(name))?;
        if let Some(cluster) = self.cluster() {
            cluster.delete_topic(name).await?;
            // A topic made again under this name starts without validation.
            if let Ok(registry) = self.registry()
                && registry.topic_validation(name) != crate::registry::TopicValidation::default()
            {
                registry.set_topic_validation(name, Some(false), Some(false)).await.map_err(registry_error)?;
            }
            return Ok(());
        }
        let id = self.log()?.topic(name)?.id;
        self.log()?.delete_topic(name).await?;
        // The store dropped every group's offsets for it with the topic.
        self.groups()?.topic_deleted(id).await;
        Ok(())
    }

    pub async fn describe_partition(&self, ctx: &RequestCtx, topic: &str, partition: u32) -> Result<PartitionInfo> {
        self.authorize(ctx, Operation::DescribeTopic(topic))?;
        if let Some(cluster) = self.cluster() {
            if partition >= cluster.partition_count(topic).await? {
                return Err(Error::UnknownPartition { topic: topic.to_owned(), partition });
            }
            let marks = cluster.watermarks(topic, &[partition]).await?[0];
            return Ok(PartitionInfo {
                topic: topic.to_owned(),
                partition,
                beginning_offset: marks.beginning,
                end_offset: marks.end,
                size_bytes: None,
            });
        }
        let t = self.log()?.topic(topic)?;
        let p = t.partition(partition)?;
        Ok(partition_info(&t, &p))
    }

    /// Kafka's offsetsForTimes for one partition.
    pub async fn offset_for_timestamp(
        &self,
        ctx: &RequestCtx,
        topic: &str,
        partition: u32,
        timestamp: u64,
    ) -> Result<TimestampOffset> {
        self.authorize(ctx, Operation::DescribeTopic(topic))?;
        if let Some(cluster) = self.cluster() {
            if partition >= cluster.partition_count(topic).await? {
                return Err(Error::UnknownPartition { topic: topic.to_owned(), partition });
            }
            return cluster.offset_for_timestamp(topic, partition, timestamp).await;
        }
        self.log()?.offset_for_timestamp(topic, partition, timestamp).await
    }

    // ---- records ----

    /// Appends records to a topic: the one produce path of every transport.
    /// `partition` is set by a per-partition route and overrides each record's own
    /// choice (which must then agree or be absent). Stored whole or not at all.
    pub async fn produce(
        &self,
        ctx: &RequestCtx,
        topic: &str,
        opts: ProduceOpts,
        records: &[NewRecord<'_>],
    ) -> Result<Produced> {
        let ProduceOpts { partition, acks, schemas } = opts;
        self.admit_produce(ctx, topic, records).await?;
        let records = &*self.apply_schemas(topic, records, schemas)?;
        let started = std::time::Instant::now();
        let produced = match &self.0.backend {
            Backend::Embedded { log, .. } => log.produce(topic, records, partition, acks).await?,
            Backend::Kafka { cluster } => cluster.produce(topic, records, partition, acks).await?,
        };
        self.0.history.record_produce(started.elapsed());
        self.0.metrics.records_in(topic, records.len());
        Ok(produced)
    }

    /// What every produce passes first: `write` on the topic (and `create` when
    /// producing creates it: auto-create needs both, as in Kafka), then the
    /// principal's produce quota.
    async fn admit_produce(&self, ctx: &RequestCtx, topic: &str, records: &[NewRecord<'_>]) -> Result<()> {
        self.authorize(ctx, Operation::Produce(topic))?;
        let missing = match &self.0.backend {
            Backend::Embedded { log, .. } => log.auto_creates() && log.topic(topic).is_err(),
            Backend::Kafka { cluster } => {
                cluster.auto_creates() && matches!(cluster.partition_count(topic).await, Err(Error::UnknownTopic(_)))
            }
        };
        if missing {
            self.authorize(ctx, Operation::CreateTopic(topic))?;
        }
        self.spend(ctx, Spend::Produce, records.iter().map(|r| r.size() as u64).sum()).await
    }

    /// As [`Service::produce`], once per `key`: a request repeating a key its
    /// principal sent within the window gets the first answer again and writes
    /// nothing (`true`: replayed); the key with another request is
    /// `idempotency_key_reused`.
    pub async fn produce_idempotent(
        &self,
        ctx: &RequestCtx,
        topic: &str,
        opts: ProduceOpts,
        records: &[NewRecord<'_>],
        key: &str,
    ) -> Result<(Produced, bool)> {
        let ProduceOpts { partition, acks, schemas } = opts;
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidParameter {
                field: Some("Idempotency-Key".into()),
                reason: "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            });
        }
        self.admit_produce(ctx, topic, records).await?;
        let records = &*self.apply_schemas(topic, records, schemas)?;
        let started = std::time::Instant::now();
        if let Some(cluster) = self.cluster() {
            let scope = crate::cluster::idempotency::scope(ctx.principal.as_str(), topic, key);
            let fingerprint = crate::log::fingerprint(topic, records, partition, acks);
            let (produced, replayed) =
                cluster.produce_idempotent(&scope, fingerprint, topic, records, partition, acks).await?;
            if !replayed {
                self.0.history.record_produce(started.elapsed());
                self.0.metrics.records_in(topic, records.len());
            }
            return Ok((produced, replayed));
        }
        let scope = IdempotencyKey { principal: ctx.principal.as_str(), key };
        let (produced, replayed) = self.log()?.produce_idempotent(topic, records, partition, acks, &scope).await?;
        if !replayed {
            self.0.history.record_produce(started.elapsed());
            self.0.metrics.records_in(topic, records.len());
        }
        Ok((produced, replayed))
    }

    /// Reads one partition from an offset, long-polling up to `wait_ms` at its end.
    pub async fn read(&self, ctx: &RequestCtx, topic: &str, partition: u32, params: ReadParams) -> Result<Fetched> {
        let limit = limits::max_records("limit", params.limit, 100)?;
        let max_bytes = limits::max_bytes("max_bytes", params.max_bytes, 1024 * 1024, limits::MAX_READ_BYTES)?;
        let wait = limits::wait("wait_ms", params.wait_ms, limits::MAX_WAIT_MS)?;
        self.authorize(ctx, Operation::ReadTopic(topic))?;
        self.spend(ctx, Spend::Consume, 0).await?;
        let read = match &self.0.backend {
            Backend::Embedded { log, .. } => {
                let offset = match params.offset {
                    Some(o) => o,
                    None => log.topic(topic)?.partition(partition)?.start(),
                };
                let req = ReadRequest { offset, max_records: limit, max_bytes, wait };
                (offset, log.read(topic, partition, req).await?)
            }
            Backend::Kafka { cluster } => {
                let offset = match params.offset {
                    Some(o) => o,
                    None => cluster.watermarks(topic, &[partition]).await?[0].beginning,
                };
                (offset, cluster.read(topic, partition, offset, limit, max_bytes, wait).await?)
            }
        };
        let (offset, read) = read;
        let (beginning_offset, end_offset) = (read.beginning_offset, read.end_offset);
        Ok(Fetched { records: self.records(ctx, topic, read), offset, beginning_offset, end_offset })
    }

    // ---- the Kafka listener's record paths ----

    /// Queues the batches a Kafka producer sent to one topic, one per partition: `write` on
    /// the topic, then each batch is checked (`record::check_produced`, bounded by the topic's
    /// `max_message_bytes`, as Kafka's `max.message.bytes` bounds a batch), the produce quota
    /// is spent on the good ones' bytes, and they are queued for the writer, to be stored as
    /// sent in one write. Returns once they are queued: batches of later calls are written
    /// after these, so a connection can check its next request while this one is written.
    /// [`ProduceInFlight::outcomes`] waits for the answer. An `Err` is the whole request's.
    pub async fn submit_batches(
        &self,
        ctx: &RequestCtx,
        topic: &str,
        batches: Vec<(u32, Vec<u8>)>,
        acks: Acks,
    ) -> Result<ProduceInFlight> {
        self.authorize(ctx, Operation::Produce(topic))?;
        let max = self.log()?.topic(topic)?.config().max_message_bytes as usize;
        let framing = self.framing_check(topic)?;
        let check = move |batches: Vec<(u32, Vec<u8>)>| {
            let mut outcomes = Vec::with_capacity(batches.len());
            let mut good = Vec::with_capacity(batches.len());
            for (p, bytes) in batches {
                let checked = crate::record::check_produced(bytes, max).and_then(|c| match &framing {
                    Some(f) => f.check(&c.batch.bytes).map(|()| c).map_err(BatchError::InvalidRecord),
                    None => Ok(c),
                });
                match checked {
                    Ok(checked) => {
                        outcomes.push(Ok(None));
                        good.push((p, checked.batch));
                    }
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            (outcomes, good)
        };
        // Checking walks every record and inflates compressed batches: beyond a small request
        // that CPU work leaves the async workers to a blocking thread.
        let size: usize = batches.iter().map(|(_, b)| b.len()).sum();
        let (outcomes, good) = if size > CHECK_INLINE_BYTES {
            tokio::task::spawn_blocking(move || check(batches))
                .await
                .map_err(|e| Error::Internal(format!("checking produced batches: {e}")))?
        } else {
            check(batches)
        };
        let records: usize = good.iter().map(|(_, b)| b.count as usize).sum();
        let (waiting, started) = if good.is_empty() {
            (None, std::time::Instant::now())
        } else {
            let bytes = good.iter().map(|(_, b)| b.bytes.len() as u64).sum();
            self.spend(ctx, Spend::Produce, bytes).await?;
            let started = std::time::Instant::now();
            (self.log()?.submit_batches(topic, good, acks)?, started)
        };
        Ok(ProduceInFlight { service: self.clone(), topic: topic.to_owned(), records, started, outcomes, waiting })
    }

    /// Hands an idempotent Kafka producer its id (epoch 0). Nothing beyond a session is
    /// needed: each produce is authorized on its topic.
    pub async fn init_producer_id(&self, _ctx: &RequestCtx) -> Result<i64> {
        self.log()?.init_producer_id().await
    }

    /// Reads stored batches from `offset` on, up to `max_bytes` (with `at_least_one`, one
    /// batch even if larger), without waiting: what Kafka's Fetch sends, as stored.
    pub async fn fetch_batches(
        &self,
        ctx: &RequestCtx,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<FetchedBatches> {
        self.authorize(ctx, Operation::ReadTopic(topic))?;
        let req = ReadRequest { offset, max_records: u32::MAX, max_bytes, wait: Duration::ZERO };
        let read = self.log()?.read(topic, partition, req).await?;
        let records = read.raw_prefix(max_bytes, at_least_one);
        self.spend(ctx, Spend::Consume, records.len() as u64).await?;
        Ok(FetchedBatches { records, beginning_offset: read.beginning_offset, end_offset: read.end_offset })
    }

    /// Waits until one of the positions has records, `timeout` passes or shutdown begins.
    pub async fn wait_any(&self, positions: &[(String, u32, u64)], timeout: Duration) {
        match &self.0.backend {
            Backend::Embedded { log, .. } => log.wait_any(positions, timeout).await,
            // The Kafka listener (its only caller) runs on the embedded backend only.
            Backend::Kafka { .. } => {}
        }
    }

    /// Kafka's `MAX_TIMESTAMP` query for one partition.
    pub async fn max_timestamp_offset(
        &self,
        ctx: &RequestCtx,
        topic: &str,
        partition: u32,
    ) -> Result<Option<TimestampOffset>> {
        self.authorize(ctx, Operation::DescribeTopic(topic))?;
        self.log()?.max_timestamp_offset(topic, partition).await
    }

    /// Whether producing to or asking about a missing topic creates it.
    pub fn auto_creates_topics(&self) -> bool {
        match &self.0.backend {
            Backend::Embedded { log, .. } => log.auto_creates(),
            Backend::Kafka { cluster } => cluster.auto_creates(),
        }
    }

    // ---- groups ----

    pub async fn list_groups(&self, ctx: &RequestCtx) -> Result<Vec<GroupSummary>> {
        self.authorize(ctx, Operation::ListGroups)?;
        let ids = match self.cluster() {
            Some(cluster) => cluster.list_groups().await?,
            None => self.groups()?.list(),
        };
        let mut out = Vec::new();
        for id in ids {
            if self.authorize(ctx, Operation::DescribeGroup(&id)).is_err() {
                continue;
            }
            match self.group_info(&id).await {
                Ok(info) => out.push(GroupSummary {
                    group: info.group,
                    state: info.state,
                    generation: info.generation,
                    members: info.members.len(),
                }),
                // Deleted between the listing and the look.
                Err(Error::UnknownGroup(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// A group's description from whichever backend holds it (not authorized: callers do).
    async fn group_info(&self, group: &str) -> Result<GroupInfo> {
        match self.cluster() {
            Some(cluster) => cluster.describe_group(group).await,
            None => self.groups()?.describe(group).await,
        }
    }

    pub async fn describe_group(&self, ctx: &RequestCtx, group: &str) -> Result<GroupInfo> {
        self.authorize(ctx, Operation::DescribeGroup(group))?;
        self.group_info(group).await
    }

    /// Deletes an empty group and its committed offsets.
    pub async fn delete_group(&self, ctx: &RequestCtx, group: &str) -> Result<()> {
        self.authorize(ctx, Operation::DeleteGroup(group))?;
        if let Some(cluster) = self.cluster() {
            return cluster.delete_group(group).await;
        }
        self.groups()?.delete(group).await
    }

    /// Adds a member to a group (creating the group if needed).
    pub async fn join_group(&self, ctx: &RequestCtx, group: &str, params: JoinParams) -> Result<Joined> {
        self.authorize(ctx, Operation::JoinGroup { group, topics: &params.topics })?;
        if let Some(cluster) = self.cluster() {
            return cluster.join_group(group, params).await;
        }
        self.groups()?.join(group, params).await
    }

    /// Polls records for a member (also a heartbeat), long-polling up to `wait_ms`.
    pub async fn poll(&self, ctx: &RequestCtx, group: &str, member: &str, params: PollParams) -> Result<Polled> {
        let max = limits::max_records("max_records", params.max_records, 500)?;
        let wait = limits::wait("wait_ms", params.wait_ms, limits::MAX_WAIT_MS)?;
        self.authorize(ctx, Operation::ConsumeGroup(group))?;
        self.spend(ctx, Spend::Consume, 0).await?;
        let max_bytes = limits::max_bytes("max_bytes", params.max_bytes, 50 * 1024 * 1024, limits::MAX_READ_BYTES)?;
        let cursor = params.cursor.as_deref();
        let polled = match self.cluster() {
            Some(cluster) => cluster.poll(group, member, max, max_bytes, wait, cursor).await?,
            None => self.groups()?.poll(group, member, max, max_bytes, wait, cursor).await?,
        };
        Ok(Polled {
            view: polled.view,
            records: polled
                .records
                .into_iter()
                .map(|(tp, read)| (tp.clone(), self.records(ctx, &tp.topic, read)))
                .collect(),
            errors: polled.errors,
            cursor: polled.cursor,
        })
    }

    /// Keeps a member's session alive and tells it about rebalances.
    pub async fn heartbeat(&self, ctx: &RequestCtx, group: &str, member: &str) -> Result<View> {
        self.authorize(ctx, Operation::ConsumeGroup(group))?;
        if let Some(cluster) = self.cluster() {
            return cluster.heartbeat(group, member).await;
        }
        self.groups()?.heartbeat(group, member).await
    }

    /// The member leaves; its partitions move at once.
    pub async fn leave_group(&self, ctx: &RequestCtx, group: &str, member: &str) -> Result<()> {
        self.authorize(ctx, Operation::ConsumeGroup(group))?;
        if let Some(cluster) = self.cluster() {
            return cluster.leave(group, member).await;
        }
        self.groups()?.leave(group, member).await
    }

    /// Commits a member's offsets, fenced by membership, generation and ownership.
    pub async fn commit(
        &self,
        ctx: &RequestCtx,
        group: &str,
        member: &str,
        generation: u64,
        offsets: &[OffsetEntry],
    ) -> Result<()> {
        let topics: Vec<&str> = distinct_topics(offsets.iter().map(|o| o.topic.as_str()));
        self.authorize(ctx, Operation::CommitOffsets { group, topics: &topics })?;
        let list: Vec<(String, u32, u64)> = offsets.iter().map(|o| (o.topic.clone(), o.partition, o.offset)).collect();
        if let Some(cluster) = self.cluster() {
            return cluster.commit(group, member, generation, &list).await;
        }
        self.groups()?.commit(group, member, generation, &list).await
    }

    /// Moves a group's committed offsets for `topic` (every topic of the group when
    /// `None`) and `partitions` (all when `None`); returns the new offsets.
    pub async fn reset_offsets(
        &self,
        ctx: &RequestCtx,
        group: &str,
        topic: Option<&str>,
        partitions: Option<&[u32]>,
        to: ResetTo,
    ) -> Result<Vec<OffsetEntry>> {
        let topics: Vec<&str> = topic.into_iter().collect();
        self.authorize(ctx, Operation::CommitOffsets { group, topics: &topics })?;
        if partitions.is_some() && topic.is_none() {
            return Err(Error::InvalidRequest("partitions needs a topic".into()));
        }
        let moved = match self.cluster() {
            Some(cluster) => cluster.reset_offsets(group, topic, partitions, to).await?,
            None => self.groups()?.reset_offsets(group, topic, partitions, to).await?,
        };
        Ok(moved
            .into_iter()
            .map(|(tp, offset)| OffsetEntry { topic: tp.topic, partition: tp.partition, offset })
            .collect())
    }

    // ---- streams ----

    /// Opens a stream of `topic` from `from`, over `partitions` (every partition,
    /// including ones added later, when `None`).
    pub async fn open_topic_stream(
        &self,
        ctx: &RequestCtx,
        topic: &str,
        from: StreamStart,
        partitions: Option<&[u32]>,
    ) -> Result<TopicStream> {
        self.authorize(ctx, Operation::ReadTopic(topic))?;
        let slot = self.stream_slot(ctx)?;
        TopicStream::open(self.clone(), ctx.delayed(), topic, from, partitions, slot).await
    }

    /// Joins `group` as a member that lives as long as the returned stream.
    pub async fn open_member_stream(&self, ctx: &RequestCtx, group: &str, params: JoinParams) -> Result<MemberStream> {
        let slot = self.stream_slot(ctx)?;
        let topics = params.topics.clone();
        if let Some(cluster) = self.cluster() {
            self.authorize(ctx, Operation::JoinGroup { group, topics: &params.topics })?;
            let joined = cluster.join_stream(group, &params).await?;
            return Ok(MemberStream::on_kafka(self.clone(), ctx.delayed(), group, topics, joined, slot));
        }
        let joined = self.join_group(ctx, group, params).await?;
        Ok(MemberStream::new(self.clone(), ctx.delayed(), group, topics, joined, slot))
    }

    // ---- the server ----

    /// The Prometheus text exposition, with the gauges read at scrape time set.
    pub async fn metrics_text(&self, ctx: &RequestCtx) -> Result<String> {
        self.authorize(ctx, Operation::DescribeCluster)?;
        let m = &self.0.metrics;
        let Backend::Embedded { log, .. } = &self.0.backend else {
            return Ok(m.render());
        };
        m.write_queue_bytes.set(log.queued_bytes() as i64);
        m.tail_cache_bytes.set(log.tail_cache_bytes() as i64);
        m.reads_waiting.set(log.reads_waiting() as i64);
        m.polls_waiting.set(self.groups()?.polls_waiting() as i64);
        match log.store_size().await {
            Ok(bytes) => {
                m.store_bytes.set(bytes as i64);
            }
            // A scrape still reports everything else; the failure is in the log.
            Err(e) => tracing::warn!(error = %e, "cannot read the store size"),
        }
        // Lag is a snapshot: rebuilt from the groups at every scrape.
        m.consumer_lag.clear();
        for group in self.groups()?.list() {
            let info = match self.groups()?.describe(&group).await {
                Ok(info) => info,
                Err(Error::UnknownGroup(_)) => continue,
                Err(e) => return Err(e),
            };
            for CommittedInfo { tp, committed, end_offset, .. } in info.offsets {
                if let Some(c) = committed {
                    let labels = GroupTopicLabels { group: group.clone(), topic: tp.topic.clone() };
                    m.consumer_lag.get_or_create(&labels).inc_by(end_offset.saturating_sub(c) as i64);
                }
            }
        }
        Ok(m.render())
    }
}

fn partition_info(topic: &Topic, p: &crate::log::Partition) -> PartitionInfo {
    PartitionInfo {
        topic: topic.name.to_string(),
        partition: p.index,
        beginning_offset: p.start(),
        end_offset: p.end(),
        size_bytes: Some(p.stored_bytes()),
    }
}

fn describe(topic: &Topic) -> TopicDescription {
    let partitions: Vec<_> = topic.partitions().iter().map(|p| partition_info(topic, p)).collect();
    TopicDescription {
        name: topic.name.to_string(),
        partition_count: partitions.len() as u32,
        partitions,
        config: topic.config(),
        created_ms: topic.created_ms,
    }
}

/// A registry failure on a topic path: the registry's log could not be written or read.
fn registry_error(e: crate::registry::RegistryError) -> Error {
    Error::Backend(format!("the Schema Registry: {e}"))
}

fn describe_cluster_topic(topic: ClusterTopic) -> TopicDescription {
    let partitions: Vec<PartitionInfo> = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(i, w)| PartitionInfo {
            topic: topic.name.clone(),
            partition: i as u32,
            beginning_offset: w.beginning,
            end_offset: w.end,
            size_bytes: None,
        })
        .collect();
    TopicDescription {
        name: topic.name,
        partition_count: partitions.len() as u32,
        partitions,
        config: topic.config,
        // Kafka keeps no creation time a client can read.
        created_ms: 0,
    }
}

fn distinct_topics<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    names.collect::<BTreeSet<_>>().into_iter().collect()
}

/// How long a WebSocket waits between heartbeats: a third of its session.
pub fn heartbeat_interval(session_ms: u64) -> Duration {
    Duration::from_millis((session_ms / 3).max(10))
}

/// A Kafka produce request's batches for one topic, queued for the writer
/// ([`Service::submit_batches`]).
#[derive(Debug)]
pub struct ProduceInFlight {
    service: Service,
    topic: String,
    records: usize,
    started: std::time::Instant,
    /// Per batch in request order: `Ok(None)` for the queued ones, or why it was refused.
    outcomes: Vec<std::result::Result<Option<u64>, BatchError>>,
    /// The writer's answer to come; `None` with `acks=none` or nothing queued.
    waiting: Option<crate::log::Submitted>,
}

impl ProduceInFlight {
    /// Each batch's base offset once written (`None` with `acks=none`) or why it was refused,
    /// in request order; an `Err` is the whole request's (the write failed).
    pub async fn outcomes(self) -> Result<Vec<std::result::Result<Option<u64>, BatchError>>> {
        let ProduceInFlight { service, topic, records, started, mut outcomes, waiting } = self;
        if let Some(waiting) = waiting {
            let placed = service.log()?.placed(waiting).await?;
            let mut placed = placed.into_iter();
            for outcome in outcomes.iter_mut().filter(|o| o.is_ok()) {
                *outcome = placed.next().transpose();
            }
        }
        if records > 0 {
            service.0.history.record_produce(started.elapsed());
            service.0.metrics.records_in(&topic, records);
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metric labels name at most `cap` principals; the rest share one label.
    #[test]
    fn principal_labels_are_bounded() {
        let mut known = std::collections::HashSet::new();
        assert_eq!(bounded_label(&mut known, "User:a", 2), "User:a");
        assert_eq!(bounded_label(&mut known, "User:b", 2), "User:b");
        assert_eq!(bounded_label(&mut known, "User:c", 2), OTHER_PRINCIPALS);
        assert_eq!(bounded_label(&mut known, "User:a", 2), "User:a", "known principals keep their label");
        assert_eq!(known.len(), 2);
    }
}
