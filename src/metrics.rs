//! Prometheus metrics, in a registry owned by each `App` (so several servers in
//! one process, as in the tests, never share figures). Rendered at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrincipalLabels {
    pub principal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupTopicLabels {
    pub group: String,
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route template (`/v1/topics/{topic}`), never the raw path.
    pub route: String,
    pub status: u16,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// A request of the Kafka backend to its cluster, by Kafka API name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub api: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~26 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

/// The figures gregor keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub ws_connections: Gauge,
    /// Bytes of frames handed to WebSocket connections and not yet written to
    /// their sockets, over all connections. Bounded by design: each connection
    /// has at most one records frame in flight.
    pub ws_buffered_bytes: Gauge,
    /// The highest `ws_buffered_bytes` seen.
    pub ws_buffered_bytes_peak: Gauge,
    /// Records sent over WebSockets.
    pub ws_records_sent: Counter,
    /// WebSocket streams with records to send and no credit left (the client has
    /// not granted more): consumers that are not keeping up.
    pub ws_credit_stalled: Gauge,
    /// Open HTTP connections (WebSockets included).
    pub http_connections: Gauge,
    /// Connections refused because `http.max_connections` were open.
    pub http_connections_refused: Counter,
    /// Partition reads long-polling at the end of their partition (set at each scrape).
    pub reads_waiting: Gauge,
    /// Group polls waiting for records or a rebalance (set at each scrape).
    pub polls_waiting: Gauge,
    /// Requests per principal (while authentication or quotas are on).
    pub principal_requests: Family<PrincipalLabels, Counter>,
    /// Requests refused per principal: missing permissions and quotas.
    pub principal_denied: Family<PrincipalLabels, Counter>,
    /// Time streams of a principal were held back by its quotas, in seconds.
    pub principal_throttle_seconds: Family<PrincipalLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// Records accepted by produce requests (REST and WebSocket), per topic.
    pub records_in: Family<TopicLabels, Counter>,
    /// Records handed to consumers (reads, polls, streams), per topic.
    pub records_out: Family<TopicLabels, Counter>,
    /// HTTP request latency by method, route and status.
    pub http_requests: HistogramFamily,
    /// Committed-offset lag per group and topic (set at each scrape).
    pub consumer_lag: Family<GroupTopicLabels, Gauge>,
    /// Bytes of produce requests waiting for the writer (set at each scrape).
    pub write_queue_bytes: Gauge,
    /// Bytes of SST files and memtables in the store (set at each scrape).
    pub store_bytes: Gauge,
    /// Bytes held by the partitions' tail caches (set at each scrape).
    pub tail_cache_bytes: Gauge,
    /// The Kafka backend's requests to its cluster: latency by API (a Fetch's includes its
    /// long-poll wait).
    pub backend_requests: Family<BackendLabels, Histogram, fn() -> Histogram>,
    /// The Kafka backend's failed requests to its cluster (unreachable, timed out, refused,
    /// undeliverable records), by API.
    pub backend_errors: Family<BackendLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gregor");
        let m = Metrics {
            registry: Registry::default(),
            ws_connections: Gauge::default(),
            ws_buffered_bytes: Gauge::default(),
            ws_buffered_bytes_peak: Gauge::default(),
            ws_records_sent: Counter::default(),
            ws_credit_stalled: Gauge::default(),
            http_connections: Gauge::default(),
            http_connections_refused: Counter::default(),
            reads_waiting: Gauge::default(),
            polls_waiting: Gauge::default(),
            principal_requests: Family::default(),
            principal_denied: Family::default(),
            principal_throttle_seconds: Family::default(),
            records_in: Family::default(),
            records_out: Family::default(),
            http_requests: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            backend_requests: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            backend_errors: Family::default(),
            consumer_lag: Family::default(),
            write_queue_bytes: Gauge::default(),
            store_bytes: Gauge::default(),
            tail_cache_bytes: Gauge::default(),
        };
        registry.register("ws_connections", "Open WebSocket connections", m.ws_connections.clone());
        registry.register(
            "ws_buffered_bytes",
            "Bytes of WebSocket frames waiting to be written to their sockets",
            m.ws_buffered_bytes.clone(),
        );
        registry.register("ws_buffered_bytes_peak", "Highest ws_buffered_bytes seen", m.ws_buffered_bytes_peak.clone());
        registry.register("ws_records_sent", "Records sent over WebSockets", m.ws_records_sent.clone());
        registry.register(
            "ws_credit_stalled",
            "WebSocket streams holding records back until the client grants credit",
            m.ws_credit_stalled.clone(),
        );
        registry.register("http_connections", "Open HTTP connections, WebSockets included", m.http_connections.clone());
        registry.register(
            "http_connections_refused",
            "Connections refused at the http.max_connections cap",
            m.http_connections_refused.clone(),
        );
        registry.register("reads_waiting", "Partition reads long-polling for new records", m.reads_waiting.clone());
        registry.register("polls_waiting", "Group polls waiting for records or a rebalance", m.polls_waiting.clone());
        registry.register("principal_requests", "Requests per principal", m.principal_requests.clone());
        registry.register(
            "principal_denied",
            "Requests refused per principal (permissions and quotas)",
            m.principal_denied.clone(),
        );
        registry.register(
            "principal_throttle_seconds",
            "Time a principal's streams were held back by its quotas",
            m.principal_throttle_seconds.clone(),
        );
        registry.register("records_in", "Records produced, per topic", m.records_in.clone());
        registry.register("records_out", "Records delivered to consumers, per topic", m.records_out.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method, route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "backend_request_duration_seconds",
            "Kafka backend: requests to the cluster, by API",
            m.backend_requests.clone(),
        );
        registry.register(
            "backend_errors",
            "Kafka backend: failed requests to the cluster, by API",
            m.backend_errors.clone(),
        );
        registry.register("consumer_lag", "Committed-offset lag per group and topic", m.consumer_lag.clone());
        registry.register(
            "write_queue_bytes",
            "Bytes of produce requests waiting for the writer",
            m.write_queue_bytes.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes of SST files, blob files and memtables in the store",
            m.store_bytes.clone(),
        );
        registry.register(
            "tail_cache_bytes",
            "Bytes of recent batches kept in memory for readers at the end of partitions",
            m.tail_cache_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts `bytes` as buffered until the returned guard is dropped.
    pub fn buffer(&self, bytes: usize) -> BufferedGuard<'_> {
        let now = self.ws_buffered_bytes.inc_by(bytes as i64) + bytes as i64;
        if now > self.ws_buffered_bytes_peak.get() {
            self.ws_buffered_bytes_peak.set(now);
        }
        BufferedGuard { metrics: self, bytes: bytes as i64 }
    }

    pub fn records_in(&self, topic: &str, n: usize) {
        self.records_in.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc_by(n as u64);
    }

    pub fn records_out(&self, topic: &str, n: usize) {
        if n > 0 {
            self.records_out.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc_by(n as u64);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Keeps bytes counted in `ws_buffered_bytes` while alive.
#[derive(Debug)]
pub struct BufferedGuard<'a> {
    metrics: &'a Metrics,
    bytes: i64,
}

impl Drop for BufferedGuard<'_> {
    fn drop(&mut self) {
        self.metrics.ws_buffered_bytes.dec_by(self.bytes);
    }
}
