//! Prometheus metrics, in a registry owned by each `App` (so several servers in
//! one process, as in the tests, never share figures). Rendered at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
        };
        registry.register("ws_connections", "Open WebSocket connections", m.ws_connections.clone());
        registry.register(
            "ws_buffered_bytes",
            "Bytes of WebSocket frames waiting to be written to their sockets",
            m.ws_buffered_bytes.clone(),
        );
        registry.register("ws_buffered_bytes_peak", "Highest ws_buffered_bytes seen", m.ws_buffered_bytes_peak.clone());
        registry.register("ws_records_sent", "Records sent over WebSockets", m.ws_records_sent.clone());
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
