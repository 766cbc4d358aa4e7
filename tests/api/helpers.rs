//! `spawn_app()`: a gregor server in-process on port 0 with a fresh store; and
//! the ways tests wait: for an observable condition (`eventually`, a metric),
//! never for a length of time, and each test within a deadline (`within`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gregor::faults::Faults;
use gregor::{App, AppError, Config};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub base: String,
    /// The Kafka listener's `host:port` (on by default, on an ephemeral port).
    pub kafka: Option<String>,
    pub client: reqwest::Client,
    pub dir: TempDir,
    /// Faults to inject into this server's store and writer.
    pub faults: Arc<Faults>,
    /// What SIGHUP does: reloads keys and ACLs from the configuration file.
    pub reloader: gregor::app::Reloader,
    config: Config,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), AppError>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tune: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path());
    tune(&mut config);
    start(dir, config).await
}

/// A server on an existing data directory (a fixture copied into `dir`).
pub async fn spawn_app_in(dir: TempDir) -> TestApp {
    let config = Config::for_data_dir(dir.path());
    start(dir, config).await
}

async fn start(dir: TempDir, config: Config) -> TestApp {
    let app = App::build(config.clone()).await.expect("server starts");
    let base = format!("http://{}", app.local_addr());
    let kafka = app.kafka_addr().map(|a| a.to_string());
    let faults = app.faults();
    let reloader = app.reloader();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        base,
        kafka,
        client: reqwest::Client::new(),
        dir,
        faults,
        reloader,
        config,
        stop: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Graceful shutdown; returns the data directory for a restart.
    pub async fn stop(mut self) -> (TempDir, Config) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().expect("clean shutdown");
        }
        (self.dir, self.config)
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(self) -> TestApp {
        let (dir, config) = self.stop().await;
        start(dir, config).await
    }

    pub async fn create_topic(&self, name: &str, partitions: u32) {
        self.create_topic_with(name, partitions, json!({})).await;
    }

    pub async fn create_topic_with(&self, name: &str, partitions: u32, config: Value) {
        let res = self
            .client
            .post(self.url("/v1/topics"))
            .json(&json!({"name": name, "partitions": partitions, "config": config}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "create {name}: {}", res.text().await.unwrap());
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self.client.post(self.url(path)).json(&body).send().await.unwrap();
        status_json(res).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.client.get(self.url(path)).send().await.unwrap();
        status_json(res).await
    }

    /// Produces `records` to `topic` and returns the `offsets` array (asserting 200).
    pub async fn produce(&self, topic: &str, records: Value) -> Vec<Value> {
        let (status, body) = self.post(&format!("/v1/topics/{topic}/records"), json!({"records": records})).await;
        assert_eq!(status, 200, "produce: {body}");
        body["offsets"].as_array().unwrap().clone()
    }

    /// Reads a partition from `offset` (up to 10000 records), asserting 200.
    pub async fn read_all(&self, topic: &str, partition: u32, offset: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut next = offset;
        loop {
            let (status, body) =
                self.get(&format!("/v1/topics/{topic}/partitions/{partition}/records?offset={next}&limit=10000")).await;
            assert_eq!(status, 200, "read: {body}");
            let recs = body["records"].as_array().unwrap();
            if recs.is_empty() {
                return out;
            }
            next = body["next_offset"].as_u64().unwrap();
            out.extend(recs.iter().cloned());
        }
    }

    /// The value of a metric (its first line starting with `name`, labels included).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.client.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ')))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Waits (up to 10 s) until `name` reads `value`; panics naming both otherwise.
    pub async fn wait_for_metric(&self, name: &str, value: f64) {
        let reached = eventually(Duration::from_secs(10), || async { self.metric(name).await == value }).await;
        assert!(reached, "{name} never reached {value} (it is {})", self.metric(name).await);
    }

    pub async fn partition(&self, topic: &str, partition: u32) -> Value {
        let (status, body) = self.get(&format!("/v1/topics/{topic}/partitions/{partition}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

pub async fn status_json(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = res.text().await.unwrap();
    if status >= 400 {
        assert!(ct.starts_with("application/problem+json"), "error {status} without problem+json ({ct}): {text}");
    }
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    (status, body)
}

/// The longest any integration test may run: a test that hangs fails instead.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a test's body within `TEST_TIMEOUT`.
pub async fn within<F: Future<Output = ()>>(body: F) {
    if tokio::time::timeout(TEST_TIMEOUT, body).await.is_err() {
        panic!("the test did not finish within {TEST_TIMEOUT:?}");
    }
}

/// Polls `f` until it returns true, at most `within`.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The wall clock in ms since the epoch, as record timestamps and retention count it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The package's root directory, read when the test runs: a build cache shared
/// between checkouts (CI's clean clone, a working copy) can hold test binaries
/// compiled in another checkout, whose compile-time `env!` path is stale.
pub fn project_root() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A small deterministic random source (xorshift64) for randomized tests.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

/// Produces batches of `per_batch` keyed records (`k0`, `k1`, …, each with its
/// number as value) to `topic` every `pause` until `stop`; resolves to the
/// (partition, offset) of every record written.
pub fn spawn_producer(
    app: Arc<TestApp>,
    topic: &'static str,
    per_batch: u64,
    pause: Duration,
    stop: std::time::Instant,
) -> JoinHandle<std::collections::BTreeSet<(u64, u64)>> {
    tokio::spawn(async move {
        let mut produced = std::collections::BTreeSet::new();
        let mut n = 0u64;
        while std::time::Instant::now() < stop {
            let records: Vec<Value> = (0..per_batch)
                .map(|i| json!({"key": format!("k{}", n * per_batch + i), "value": n * per_batch + i}))
                .collect();
            for o in app.produce(topic, json!(records)).await {
                produced.insert((o["partition"].as_u64().unwrap(), o["offset"].as_u64().unwrap()));
            }
            n += 1;
            tokio::time::sleep(pause).await;
        }
        produced
    })
}
