//! gregor-bench: measures gregor on this machine and prints a table (and JSON).
//!
//! Each scenario starts a fresh `gregor` server *process* on a temporary data
//! directory (so its peak RSS is its own), warms up, then measures for a fixed
//! time. Scenarios:
//! - `produce`: HTTP produce, 100-byte values, 100 records per request, `acks=leader` and
//!   `acks=all`, 1, 8 and 64 connections: records/s, MB/s, request latency p50/p99.
//! - `produce-one`: one record per request, `acks=leader`, 64 connections: requests/s.
//! - `ws-delivery`: one WebSocket subscriber reading a pre-filled topic: records/s.
//! - `latency`: produce → WebSocket frame at a fixed offered rate (10,000 records/s),
//!   timed from each record's *intended* send time, so a stalled server cannot hide
//!   its queueing (no coordinated omission): p50, p99, p99.9.
//! - `fanout`: 1,000 WebSocket subscribers of one topic, half of them not reading, while
//!   records are produced: delivery latency to the readers, HTTP probe latency, server RSS.
//! - `store`: the store alone, without HTTP: append and read records/s.
//! - `restart`: a server process started on a store holding 10 M records, after a
//!   clean stop and after SIGKILL (WAL replay): time from spawn until `/readyz` is 200.
//! - `security`: produce (100 records and 1 record per request, 64 conns) with an API
//!   key and 100 ACL entries, and (100 records) over TLS, beside the same without.
//! - `kafka`: the Kafka listener under librdkafka (`rdkafka` crate): produce (100-byte values,
//!   `acks=all`, idempotent) and fetch, records/s; the same load against noida-db and Tansu
//!   when `.venv` has them (scripts/setup installs them), for the ratio.
//!
//! Usage: `cargo bench --bench gregor-bench -- [--smoke] [--only NAME] [--json PATH] [--rate N] [--server-config FILE]`
//! (`--only kafka-gregor`: the Kafka rows of gregor alone).
//! (`--rate`: the latency scenario's offered records/s, default 10000; `--server-config`:
//! a TOML file every server is started with, to measure non-default settings).
//! `GREGOR_BENCH_SERVER=/path/to/gregor` measures another server binary (A/B runs).
//! Figures are reported, never judged: the tool fails only if a scenario cannot run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

#[path = "kafka/mod.rs"]
mod kafka;

/// `--server-config`: the TOML file every server process is started with.
static SERVER_CONFIG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

struct Settings {
    smoke: bool,
    /// Offered rate of the latency scenario (records/s).
    rate: u64,
    only: Option<String>,
    json: std::path::PathBuf,
}

impl Settings {
    fn warmup(&self) -> Duration {
        if self.smoke { Duration::from_millis(200) } else { Duration::from_secs(2) }
    }
    fn measure(&self) -> Duration {
        if self.smoke { Duration::from_millis(500) } else { Duration::from_secs(10) }
    }
    fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| name.starts_with(o))
    }
}

/// One row of the report.
#[derive(Default, Clone)]
struct Row {
    scenario: String,
    records_per_s: Option<f64>,
    requests_per_s: Option<f64>,
    mb_per_s: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    peak_rss_mb: Option<f64>,
    note: String,
}

struct Server {
    child: Child,
    base: String,
    /// The Kafka listener's address, when the server printed one.
    kafka: Option<String>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(None).await
    }

    /// A server started with this configuration file instead of `--server-config`'s.
    async fn start_with(config: Option<&std::path::Path>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (child, base, kafka) = Server::spawn_full(dir.path(), config).await;
        Server { child, base, kafka, _dir: dir }
    }

    /// Starts a server process on `data_dir`; returns once it listens.
    async fn spawn(data_dir: &std::path::Path) -> (Child, String) {
        Server::spawn_with(data_dir, None).await
    }

    async fn spawn_with(data_dir: &std::path::Path, config: Option<&std::path::Path>) -> (Child, String) {
        let (child, base, _) = Server::spawn_full(data_dir, config).await;
        (child, base)
    }

    /// Starts a server process; answers it, its base URL and its Kafka listener's address.
    async fn spawn_full(
        data_dir: &std::path::Path,
        config: Option<&std::path::Path>,
    ) -> (Child, String, Option<String>) {
        // GREGOR_BENCH_SERVER runs another build of the server (an A/B run against an older binary).
        let server = std::env::var_os("GREGOR_BENCH_SERVER").unwrap_or_else(|| env!("CARGO_BIN_EXE_gregor").into());
        let mut command = Command::new(server);
        command.args(["serve", "--listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
        if let Some(config) = config.or(SERVER_CONFIG.get().map(|p| p.as_path())) {
            command.arg("--config").arg(config);
        }
        // Its own process group, so that the Kafka scenario can read its CPU time by group.
        let mut child = command
            .env("GREGOR_LOG", "warn")
            .stdout(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start gregor");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut base = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on ").nth(1) {
                base = rest.trim().to_owned();
                break;
            }
        }
        // The Kafka listener's line follows (an older binary under GREGOR_BENCH_SERVER may have none).
        let next = tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await;
        let kafka = match next {
            Ok(Ok(Some(line))) => line.split("kafka listener on ").nth(1).map(|a| a.trim().to_owned()),
            _ => None,
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (child, base, kafka)
    }

    /// Peak resident set size of the server process so far, in MB.
    fn peak_rss_mb(&self) -> Option<f64> {
        proc_status_mb(self.child.id()?, "VmHWM:")
    }

    async fn topic(&self, client: &reqwest::Client, name: &str, partitions: u32) {
        let res = client
            .post(format!("{}/v1/topics", self.base))
            .json(&json!({"name": name, "partitions": partitions, "config": {"retention_ms": -1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
}

fn percentile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64)
}

fn progress(msg: &str) {
    eprint!("\r\x1b[2K{msg}");
    let _ = std::io::stderr().flush();
}

fn batch_body(records: usize) -> String {
    let value = "x".repeat(100);
    json!({"records": (0..records).map(|_| json!({"value": value})).collect::<Vec<_>>()}).to_string()
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// One HTTP/1.1 keep-alive connection (plain hyper: the load generator shares
/// the server's two cores, so it should cost as little per request as it can).
async fn h1_connection(base: &str) -> Sender {
    h1_connection_with(base, None).await
}

/// The same, over TLS when `tls` is given (and the base says `https://`).
async fn h1_connection_with(base: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Sender {
    let addr = base.trim_start_matches("http://").trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    match tls {
        None => {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
            tokio::spawn(conn);
            sender
        }
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let stream = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.unwrap();
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            sender
        }
    }
}

/// A JSON `POST` of `body` to `path` on `host`, for an `h1_connection`.
fn post_json(path: &str, host: &str, body: bytes::Bytes) -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
    post_json_as(path, host, body, None)
}

/// The same, with `Authorization: Bearer <token>` when given.
fn post_json_as(
    path: &str,
    host: &str,
    body: bytes::Bytes,
    token: Option<&str>,
) -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = hyper::Request::post(path).header("host", host).header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    req.body(http_body_util::Full::new(body)).unwrap()
}

/// How the load generator reaches a server: credentials and TLS, for the
/// security scenario.
#[derive(Default, Clone)]
struct Access {
    token: Option<Arc<str>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    config: Option<std::path::PathBuf>,
}

/// The Kafka backend (SPEC §10) in front of noida-db: REST produce through gregor against
/// librdkafka producing straight into the same broker, WebSocket delivery and produce→WebSocket
/// latency through the backend.
async fn backend(s: &Settings) -> Vec<Row> {
    progress("backend: starting noida-db…");
    let Some(broker) = kafka::other_broker("noida-db").await else {
        return vec![Row {
            scenario: "backend-kafka".into(),
            note: "not run: noida-db not installed in .venv or did not start".into(),
            ..Row::default()
        }];
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gregor.toml");
    let toml = format!("[backend]\nkind = \"kafka\"\nbootstrap_servers = \"{}\"\n", broker.bootstrap);
    std::fs::write(&config, toml).unwrap();
    let access = Access { config: Some(config.clone()), ..Access::default() };
    let mut rows = Vec::new();
    progress("backend: REST produce through gregor…");
    let mut rest = produce_with(s, "all", 64, 100, &access).await;
    rest.scenario = format!("backend {}: REST produce 100x100B acks=all", broker.name);
    let direct = kafka::direct_produce(&broker.bootstrap, if s.smoke { 50_000 } else { 2_000_000 }).await;
    match (&direct, rest.records_per_s) {
        (Ok(d), Some(r)) => rest.note = format!("{:.0} % of librdkafka's direct rate; {}", 100.0 * r / d, rest.note),
        (Err(e), _) => rest.note = format!("direct librdkafka failed: {e}; {}", rest.note),
        _ => {}
    }
    rows.push(rest);
    rows.push(match direct {
        Ok(rate) => Row {
            scenario: format!("backend {}: librdkafka direct 100B acks=all", broker.name),
            records_per_s: Some(rate),
            mb_per_s: Some(rate * 100.0 / 1e6),
            note: "the same broker, no gregor in between".into(),
            ..Row::default()
        },
        Err(e) => Row { scenario: "backend direct".into(), note: format!("failed: {e}"), ..Row::default() },
    });
    progress("backend: WebSocket delivery…");
    // 500,000 records: noida-db ignores Fetch's byte limits and answers a partition's whole
    // backlog at once, which gregor refuses past 128 MiB.
    let mut ws = ws_delivery_with(s, Some(&config), 500_000).await;
    ws.scenario = format!("backend {}: {}", broker.name, ws.scenario);
    rows.push(ws);
    progress("backend: latency, with a librdkafka probe into the same broker at the same time…");
    // The probe tells a stall of the broker (both see it) from one of gregor (only the row).
    let rate = s.rate.max(1);
    let count = if s.smoke { 2_000 } else { rate * 10 };
    let probe_rate = 500;
    let probe = kafka::direct_latency(&broker.bootstrap, "probe", probe_rate, count * probe_rate / rate + probe_rate);
    let (mut lat, probe) = tokio::join!(latency_with(s, Some(&config), 256), probe);
    lat.scenario = format!("backend {}: {}", broker.name, lat.scenario);
    rows.push(lat);
    rows.push(delivery_row(
        format!("backend {}: librdkafka probe 1 record @{probe_rate} rec/s during the row above", broker.name),
        probe_rate,
        probe,
        |lat| format!("straight into the broker, no gregor; max {}", us(lat.last().map(|m| *m as f64))),
    ));
    progress("backend: direct latency…");
    rows.push(delivery_row(
        format!("backend {}: librdkafka direct 1 record @{rate} rec/s, delivery latency", broker.name),
        rate,
        kafka::direct_latency(&broker.bootstrap, "direct-latency", rate, count).await,
        |_| "the same broker and settings (acks=1, linger 2 ms), no gregor: the yardstick of the row above".into(),
    ));
    rows
}

/// A row of librdkafka's sorted delivery latencies at `rate` (`note` from them), or of the
/// error that stopped the measurement.
fn delivery_row(
    scenario: String,
    rate: u64,
    measured: Result<Vec<u64>, String>,
    note: impl FnOnce(&[u64]) -> String,
) -> Row {
    match measured {
        Ok(lat) => Row {
            scenario,
            records_per_s: Some(rate as f64),
            p50_us: percentile(&lat, 0.5),
            p99_us: percentile(&lat, 0.99),
            p999_us: percentile(&lat, 0.999),
            note: note(&lat),
            ..Row::default()
        },
        Err(e) => Row { scenario, note: format!("failed: {e}"), ..Row::default() },
    }
}

/// Closed-loop HTTP produce: `conns` clients, each on its own connection, send
/// the next request as soon as the last is answered.
async fn produce(s: &Settings, acks: &str, conns: usize, per_request: usize) -> Row {
    produce_with(s, acks, conns, per_request, &Access::default()).await
}

async fn produce_with(s: &Settings, acks: &str, conns: usize, per_request: usize, access: &Access) -> Row {
    let server = Server::start_with(access.config.as_deref()).await;
    let host: Arc<str> = server.base.trim_start_matches("http://").trim_start_matches("https://").into();
    {
        let mut sender = h1_connection_with(&server.base, access.tls.as_ref()).await;
        let body = json!({"name": "bench", "partitions": 4, "config": {"retention_ms": -1}}).to_string();
        sender.ready().await.unwrap();
        let req = post_json_as("/v1/topics", &host, bytes::Bytes::from(body), access.token.as_deref());
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), 201, "create the bench topic");
    }
    let body = bytes::Bytes::from(batch_body(per_request));
    let path: Arc<str> = format!("/v1/topics/bench/records?acks={acks}").into();
    let lat = drive_produce(s, &server.base, &host, &path, body, conns, access).await;
    let mut row = produce_row(s, &lat, per_request);
    row.scenario = format!("produce {per_request}x100B acks={acks} conns={conns}");
    row.peak_rss_mb = server.peak_rss_mb();
    row
}

/// `conns` connections post `body` to `path` in a loop through warm-up and measurement: the
/// measured requests' latencies (µs).
async fn drive_produce(
    s: &Settings,
    base: &str,
    host: &Arc<str>,
    path: &Arc<str>,
    body: bytes::Bytes,
    conns: usize,
    access: &Access,
) -> Vec<u64> {
    use http_body_util::BodyExt;
    let start = Instant::now();
    let measure_from = start + s.warmup();
    let stop = measure_from + s.measure();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut sender = h1_connection_with(base, access.tls.as_ref()).await;
        let (body, path, host, token) = (body.clone(), path.clone(), host.clone(), access.token.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= stop {
                    return lat;
                }
                let req = post_json_as(&path, &host, body.clone(), token.as_deref());
                sender.ready().await.unwrap();
                let res = sender.send_request(req).await.unwrap();
                let status = res.status();
                let answer = res.into_body().collect().await.unwrap().to_bytes();
                assert!(status.is_success(), "produce failed: {status} {}", String::from_utf8_lossy(&answer));
                if sent >= measure_from {
                    lat.push(sent.elapsed().as_micros() as u64);
                }
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort_unstable();
    lat
}

/// A produce row from sorted latencies of requests of `per_request` records of ~100 B.
fn produce_row(s: &Settings, lat: &[u64], per_request: usize) -> Row {
    let secs = s.measure().as_secs_f64();
    let requests = lat.len() as f64 / secs;
    let records = requests * per_request as f64;
    Row {
        records_per_s: Some(records),
        requests_per_s: Some(requests),
        mb_per_s: Some(records * 100.0 / 1e6),
        p50_us: percentile(lat, 0.5),
        p99_us: percentile(lat, 0.99),
        p999_us: percentile(lat, 0.999),
        ..Row::default()
    }
}

/// Produce 100 records of ~100 B per request (acks=leader, 8 connections) to a topic without
/// validation, to one validated by a JSON Schema and to one validated and encoded by an Avro
/// schema (SPEC §11): the validated rates, and their ratio to the plain one.
async fn schemas(s: &Settings) -> Vec<Row> {
    let server = Server::start().await;
    let client = reqwest::Client::new();
    let avro = json!({"type": "record", "name": "Event", "fields": [
        {"name": "id", "type": "long"}, {"name": "kind", "type": "string"},
        {"name": "note", "type": "string"}, {"name": "ok", "type": "boolean"}]});
    let json_schema = json!({"type": "object", "required": ["id", "kind"], "properties": {
        "id": {"type": "integer", "minimum": 0}, "kind": {"type": "string", "maxLength": 20},
        "note": {"type": "string"}, "ok": {"type": "boolean"}}});
    let topics = [
        ("plain", None),
        ("json", Some(json!({"schemaType": "JSON", "schema": json_schema.to_string()}))),
        ("avro", Some(json!({"schema": avro.to_string()}))),
    ];
    // ~100 B of JSON per value.
    let value = json!({"id": 123456, "kind": "page_view", "note": "x".repeat(50), "ok": true});
    let body = bytes::Bytes::from(json!({"records": vec![json!({"value": value}); 100]}).to_string());
    let host: Arc<str> = server.base.trim_start_matches("http://").into();
    let mut rows: Vec<Row> = Vec::new();
    for (name, schema) in topics {
        let config = json!({"retention_ms": -1, "value_schema_validation": schema.is_some()});
        let res = client
            .post(format!("{}/v1/topics", server.base))
            .json(&json!({"name": name, "partitions": 4, "config": config}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "create {name}");
        if let Some(schema) = schema {
            let res = client
                .post(format!("{}/registry/subjects/{name}-value/versions", server.base))
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .body(schema.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "register {name}-value");
        }
        progress(&format!("schemas: produce to {name}…"));
        let path: Arc<str> = format!("/v1/topics/{name}/records?acks=leader").into();
        let lat = drive_produce(s, &server.base, &host, &path, body.clone(), 8, &Access::default()).await;
        let mut row = produce_row(s, &lat, 100);
        row.scenario = format!("schemas produce 100x100B {name} conns=8");
        if let (Some(plain), Some(this)) = (rows.first().and_then(|r| r.records_per_s), row.records_per_s)
            && name != "plain"
        {
            row.note = format!("{:.0}% of the unvalidated rate (goal >= 50%)", 100.0 * this / plain);
        }
        rows.push(row);
    }
    if let Some(last) = rows.last_mut() {
        last.peak_rss_mb = server.peak_rss_mb();
    }
    rows
}

async fn ws_connect(
    base: &str,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}{}", base.replace("http://", "ws://"), path);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// One subscriber reads a pre-filled topic from the beginning.
async fn ws_delivery(s: &Settings) -> Row {
    ws_delivery_with(s, None, 5_000_000).await
}

async fn ws_delivery_with(s: &Settings, config: Option<&std::path::Path>, full: usize) -> Row {
    let server = Server::start_with(config).await;
    let client = reqwest::Client::new();
    server.topic(&client, "fill", 1).await;
    let total: usize = if s.smoke { 20_000 } else { full };
    let body = batch_body(1000);
    let url = format!("{}/v1/topics/fill/records?acks=leader", server.base);
    for i in 0..total / 1000 {
        client.post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
        if i % 100 == 0 {
            progress(&format!("ws-delivery: filling {}/{total}", i * 1000));
        }
    }
    /// What a client needs of a `records` frame: each record's position, its value left unparsed.
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        records: Vec<Rec<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Rec<'a> {
        offset: u64,
        #[serde(borrow)]
        #[allow(dead_code)]
        value: &'a serde_json::value::RawValue,
    }
    let mut ws = ws_connect(&server.base, "/v1/topics/fill/stream?from=earliest&max_records=5000").await;
    let started = Instant::now();
    let mut got = 0usize;
    while got < total {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => {
                let frame: Frame<'_> = serde_json::from_str(t.as_str()).unwrap();
                if let Some(last) = frame.records.last() {
                    assert_eq!(last.offset as usize, got + frame.records.len() - 1, "records arrive in order");
                }
                got += frame.records.len();
            }
            _ => continue,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Row {
        scenario: "ws delivery, 1 subscriber, pre-filled".into(),
        records_per_s: Some(total as f64 / secs),
        mb_per_s: Some(total as f64 * 100.0 / secs / 1e6),
        peak_rss_mb: server.peak_rss_mb(),
        note: format!("{total} records (the client parses every frame, values left raw)"),
        ..Default::default()
    }
}

/// Open-loop produce at a fixed rate, one record per request; latency to the WebSocket frame.
async fn latency(s: &Settings) -> Row {
    latency_with(s, None, 32).await
}

async fn latency_with(s: &Settings, config: Option<&std::path::Path>, conns: usize) -> Row {
    let server = Server::start_with(config).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
    server.topic(&client, "lat", 1).await;
    let mut ws = ws_connect(&server.base, "/v1/topics/lat/stream").await;
    let rate = s.rate.max(1);
    let count = if s.smoke { 2_000 } else { rate * 10 } as usize;
    let warm = if s.smoke { 200 } else { rate as usize };
    let schedule = Schedule::new(rate);
    let url = Arc::new("/v1/topics/lat/records?acks=leader".to_owned());
    let acked = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(count)));
    let lag = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(count)));
    // Each record has an intended send time; late sends are still timed from it.
    let intended = move |i: usize| schedule.due(i as u64);
    // A plain thread waits for each intended time and hands the index over.
    let (tick_tx, mut tick_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    std::thread::spawn(move || {
        for i in 0..count {
            schedule.wait(i as u64);
            if tick_tx.send(i).is_err() {
                return;
            }
        }
    });
    // A pool of pre-opened connections: a record waits for an idle one (and that
    // wait counts, as latency is timed from the intended send time). The pool must not
    // bound the offered rate: at 10,000 records/s, `conns` connections carry answers of
    // up to conns/10 ms. The embedded backend answers in ~0.5 ms (32 are plenty); the Kafka
    // backend in 2–9 ms (librdkafka lingers 2 ms), where 32 saturated and the generator's
    // own queue was measured as 225 ms of latency, so it gets 256.
    let (idle_tx, mut idle_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..conns {
        idle_tx.send(h1_connection(&server.base).await).unwrap();
    }
    let host: Arc<str> = server.base.trim_start_matches("http://").into();
    let sender = {
        let (acked, lag) = (acked.clone(), lag.clone());
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            while let Some(i) = tick_rx.recv().await {
                let intended = intended(i);
                let Some(mut conn) = idle_rx.recv().await else { return };
                if i >= warm {
                    lag.lock().push(intended.elapsed().as_micros() as u64);
                }
                let (url, host, acked, idle_tx) = (url.clone(), host.clone(), acked.clone(), idle_tx.clone());
                tokio::spawn(async move {
                    let body = format!("{{\"records\":[{{\"value\":{i}}}]}}");
                    let req = post_json(&url, &host, bytes::Bytes::from(body));
                    if conn.ready().await.is_ok()
                        && let Ok(res) = conn.send_request(req).await
                    {
                        let _ = res.into_body().collect().await;
                    }
                    if i >= warm {
                        acked.lock().push(intended.elapsed().as_micros() as u64);
                    }
                    let _ = idle_tx.send(conn);
                });
            }
        })
    };
    let mut lat = Vec::with_capacity(count);
    let mut seen = 0;
    while seen < count {
        let Some(Ok(Message::Text(t))) = ws.next().await else { continue };
        let now = Instant::now();
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        for r in v["records"].as_array().into_iter().flatten() {
            let i = r["value"].as_u64().unwrap();
            seen += 1;
            if i as usize >= warm {
                lat.push(now.saturating_duration_since(intended(i as usize)).as_micros() as u64);
            }
        }
    }
    sender.await.unwrap();
    let _ = ws.close(None).await;
    lat.sort_unstable();
    let mut acked = std::mem::take(&mut *acked.lock());
    let mut lag = std::mem::take(&mut *lag.lock());
    acked.sort_unstable();
    lag.sort_unstable();
    eprintln!(
        "\nlatency detail: send lag p50 {} p99 {} p99.9 {}; HTTP answer p50 {} p99 {} p99.9 {} (from intended time)",
        us(percentile(&lag, 0.5)),
        us(percentile(&lag, 0.99)),
        us(percentile(&lag, 0.999)),
        us(percentile(&acked, 0.5)),
        us(percentile(&acked, 0.99)),
        us(percentile(&acked, 0.999)),
    );
    Row {
        scenario: format!("produce → ws latency @{rate} rec/s"),
        records_per_s: Some(rate as f64),
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        p999_us: percentile(&lat, 0.999),
        peak_rss_mb: server.peak_rss_mb(),
        note: "HTTP produce (1 record/request) to WebSocket frame, from intended send time".into(),
        ..Default::default()
    }
}

/// An open-loop schedule of `rate` sends per second, starting 100 ms after it is made: send
/// `i` is due at `due(i)`, and a late send is still timed from then.
#[derive(Clone, Copy)]
struct Schedule {
    t0: Instant,
    rate: u64,
}

impl Schedule {
    fn new(rate: u64) -> Schedule {
        Schedule { t0: Instant::now() + Duration::from_millis(100), rate: rate.max(1) }
    }

    fn due(&self, i: u64) -> Instant {
        self.t0 + Duration::from_nanos(i * 1_000_000_000 / self.rate)
    }

    /// Sleeps the calling thread until send `i` is due (tokio's timer wheel has 1 ms
    /// granularity, too coarse for 100 µs gaps) and answers when that was.
    fn wait(&self, i: u64) -> Instant {
        let due = self.due(i);
        let left = due.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
        due
    }
}

/// The server's current resident set size, in MB.
fn rss_mb(pid: u32) -> Option<f64> {
    proc_status_mb(pid, "VmRSS:")
}

/// A kB field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in MB.
fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Memory the kernel holds in TCP buffers, machine-wide (`/proc/net/sockstat`, in pages), in MB.
fn tcp_kernel_mb() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    let pages: f64 = words.next()?.parse().ok()?;
    Some(pages * 4096.0 / 1e6)
}

/// A gauge's value from the server's `/metrics`.
async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = client.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Many WebSocket subscribers to one topic while records are produced at a fixed
/// rate; half of them never read (their sockets have a 4 KiB receive buffer, so
/// the server meets their backpressure within seconds, not after megabytes of
/// kernel buffering). Reports the delivery latency to the readers, the latency
/// of an HTTP probe meanwhile (is the server responsive?), and the server's RSS
/// over time (is its memory bounded?).
async fn fanout(s: &Settings) -> Vec<Row> {
    /// A `records` frame whose values are send times.
    #[derive(serde::Deserialize)]
    struct SentFrame {
        records: Vec<Sent>,
    }
    #[derive(serde::Deserialize)]
    struct Sent {
        value: u64,
    }
    let subscribers: usize = if s.smoke { 40 } else { 1000 };
    let server = Server::start().await;
    let pid = server.child.id().unwrap();
    let client = reqwest::Client::new();
    server.topic(&client, "fan", 1).await;
    let rss_idle = rss_mb(pid);
    let url = format!("{}/v1/topics/fan/stream?from=latest", server.base.replace("http://", "ws://"));
    let addr = server.base.trim_start_matches("http://").to_owned();
    let t0 = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    let mut stalled = Vec::new();
    for i in 0..subscribers {
        if i % 100 == 0 {
            progress(&format!("fanout: connecting {i}/{subscribers}"));
        }
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if i % 2 == 1 {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        let tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
        // tungstenite zeroes its whole read buffer (128 KiB by default) on every read: keep it small.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config)).await.unwrap();
        if i % 2 == 1 {
            // Never polled again: reads nothing, answers no ping.
            stalled.push(ws);
            continue;
        }
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut records = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let msg = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
                let Ok(Some(Ok(Message::Text(t)))) = msg else { continue };
                let now = t0.elapsed().as_micros() as u64;
                let frame: SentFrame = serde_json::from_str(t.as_str()).unwrap();
                for r in frame.records {
                    records += 1;
                    lat.push(now.saturating_sub(r.value));
                }
            }
            (records, lat)
        }));
    }
    let rss_connected = rss_mb(pid);
    // The producer: 10 records per request every 10 ms (1,000 records/s), each
    // record's value its send time in µs since t0; the probe: one GET every 10 ms.
    let producer = {
        let (client, base, stop) = (client.clone(), server.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let sent = t0.elapsed().as_micros() as u64;
                let body = json!({"records": (0..10).map(|_| json!({"value": sent})).collect::<Vec<_>>()});
                let res =
                    client.post(format!("{base}/v1/topics/fan/records?acks=leader")).json(&body).send().await.unwrap();
                assert!(res.status().is_success());
            }
        })
    };
    let probe = {
        let (client, base, stop) = (client.clone(), server.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let sent = Instant::now();
                let res = client.get(format!("{base}/v1/topics/fan")).send().await.unwrap();
                assert!(res.status().is_success());
                let _ = res.bytes().await;
                lat.push(sent.elapsed().as_micros() as u64);
            }
            lat
        })
    };
    let measure = s.warmup() + s.measure();
    let started = Instant::now();
    let mut rss_samples = Vec::new();
    while started.elapsed() < measure {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_samples.push(rss_mb(pid).unwrap_or(0.0));
        progress(&format!(
            "fanout: {:.0} s, server RSS {:.0} MB",
            started.elapsed().as_secs_f64(),
            rss_samples[rss_samples.len() - 1]
        ));
    }
    let buffered_peak = metric(&client, &server.base, "gregor_ws_buffered_bytes_peak").await;
    let kernel_tcp_mb = tcp_kernel_mb();
    let connections = metric(&client, &server.base, "gregor_ws_connections").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.await.unwrap();
    let mut probe_lat = probe.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let mut delivered = 0u64;
    let mut lat = Vec::new();
    for r in readers {
        let (n, l) = r.await.unwrap();
        delivered += n;
        lat.extend(l);
    }
    drop(stalled);
    lat.sort_unstable();
    probe_lat.sort_unstable();
    let half = rss_samples.len() / 2;
    let rss_mid = rss_samples.get(half).copied();
    let rss_end = rss_samples.last().copied();
    let mb = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} MB"));
    let note = format!(
        "RSS idle {}, after connecting {}, mid-run {}, end {}; frames held for stalled clients peak {:.0} kB; {} connections open; kernel TCP buffers (machine-wide) {}",
        mb(rss_idle),
        mb(rss_connected),
        mb(rss_mid),
        mb(rss_end),
        buffered_peak.unwrap_or(0.0) / 1e3,
        connections.unwrap_or(0.0),
        mb(kernel_tcp_mb)
    );
    let peak = server.peak_rss_mb();
    vec![
        Row {
            scenario: format!("{subscribers} ws subscribers, half stalled: delivery"),
            records_per_s: Some(delivered as f64 / secs),
            p50_us: percentile(&lat, 0.5),
            p99_us: percentile(&lat, 0.99),
            p999_us: percentile(&lat, 0.999),
            peak_rss_mb: peak,
            note: format!("1,000 records/s produced, delivered to {} readers; {note}", subscribers / 2),
            ..Default::default()
        },
        Row {
            scenario: format!("{subscribers} ws subscribers, half stalled: GET probe"),
            requests_per_s: Some(probe_lat.len() as f64 / secs),
            p50_us: percentile(&probe_lat, 0.5),
            p99_us: percentile(&probe_lat, 0.99),
            p999_us: percentile(&probe_lat, 0.999),
            peak_rss_mb: peak,
            note: "GET /v1/topics/fan every 10 ms during the run".into(),
            ..Default::default()
        },
    ]
}

/// A log on a fresh store in `dir`, without HTTP.
fn open_log(dir: &std::path::Path) -> Arc<gregor::log::Log> {
    let store = Arc::new(gregor::store::Store::open(dir).unwrap());
    let settings = gregor::log::LogSettings {
        auto_create_topics: false,
        default_partitions: 1,
        write_queue_bytes: 256 << 20,
        write_queue_len: 4096,
    };
    gregor::log::Log::open(store, settings).unwrap()
}

/// `n` unkeyed records, each with `value` as its binary value.
fn binary_records(n: usize, value: &[u8]) -> Vec<gregor::record::NewRecord<'_>> {
    use gregor::record::{Blob, Format, NewRecord};
    (0..n)
        .map(|_| NewRecord {
            key: None,
            value: Some(Blob::new(Format::Binary, value)),
            headers: vec![],
            timestamp: None,
            partition: None,
        })
        .collect()
}

/// The log and store without HTTP: append 100-record batches, then read them back.
async fn store(s: &Settings) -> Vec<Row> {
    use gregor::log::{Acks, ReadRequest};
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    log.create_topic("s", 1, &Default::default()).await.unwrap();
    let value = vec![b'x'; 100];
    let records = binary_records(100, &value);
    let stop = Instant::now() + s.measure();
    let started = Instant::now();
    let mut appended = 0u64;
    // 8 concurrent appenders, like concurrent requests, so group commit can work.
    while Instant::now() < stop {
        let futs = (0..8).map(|_| log.produce("s", &records, Some(0), Acks::Leader));
        for r in futures_util::future::join_all(futs).await {
            r.unwrap();
            appended += 100;
        }
    }
    let append_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut offset = 0;
    let mut read = 0u64;
    while offset < appended {
        let req = ReadRequest { offset, max_records: 10_000, max_bytes: 64 << 20, wait: Duration::ZERO };
        let res = log.read("s", 0, req).await.unwrap();
        let n = res.records().unwrap().len() as u64;
        read += n;
        offset += n;
    }
    let read_secs = started.elapsed().as_secs_f64();
    log.close().await.unwrap();
    vec![
        Row {
            scenario: "store append (no HTTP), acks=leader".into(),
            records_per_s: Some(appended as f64 / append_secs),
            mb_per_s: Some(appended as f64 * 100.0 / append_secs / 1e6),
            note: "8 concurrent 100-record batches".into(),
            ..Default::default()
        },
        Row {
            scenario: "store read (no HTTP)".into(),
            records_per_s: Some(read as f64 / read_secs),
            mb_per_s: Some(read as f64 * 100.0 / read_secs / 1e6),
            note: format!("{read} records, decoded"),
            ..Default::default()
        },
    ]
}

/// A retention pass over 100,000 partitions (1,000 in smoke mode) holding five
/// batches each, all under `retention_bytes`: what the timer pays every
/// `retention_check_interval_ms` when nothing is due. Then a pass that cuts all
/// but the newest batch from every partition.
async fn retention(s: &Settings) -> Vec<Row> {
    use gregor::log::Acks;
    use gregor::record::{Blob, Format, NewRecord};
    let (topics, per_topic, batches) = if s.smoke { (10u32, 100u32, 5) } else { (100, 1000, 5) };
    let partitions = topics * per_topic;
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    let config = gregor::topic::TopicConfigPatch {
        retention_ms: Some(-1),
        retention_bytes: Some(1 << 30),
        ..Default::default()
    };
    let value = vec![b'x'; 100];
    for t in 0..topics {
        let name = format!("r{t}");
        log.create_topic(&name, per_topic, &config).await.unwrap();
        // One record per partition per request: each request stores one batch in every partition.
        let records: Vec<NewRecord> = (0..per_topic)
            .map(|p| NewRecord {
                key: None,
                value: Some(Blob::new(Format::Binary, &value)),
                headers: vec![],
                timestamp: None,
                partition: Some(p),
            })
            .collect();
        for _ in 0..batches {
            log.produce(&name, &records, None, Acks::Leader).await.unwrap();
        }
        progress(&format!("retention: {} of {partitions} partitions filled", (t + 1) * per_topic));
    }
    let now = gregor::log::now_ms();
    let started = Instant::now();
    let report = log.apply_retention(now).await;
    let idle = started.elapsed();
    assert_eq!(report.moved, 0);
    progress(&format!("retention: a pass with nothing due took {:.0} ms", idle.as_secs_f64() * 1e3));
    eprintln!();
    for t in 0..topics {
        // One byte: every batch but the newest goes.
        let patch = gregor::topic::TopicConfigPatch { retention_bytes: Some(1), ..Default::default() };
        log.update_topic(&format!("r{t}"), None, &patch).await.unwrap();
    }
    let started = Instant::now();
    let report = log.apply_retention(now).await;
    let cutting = started.elapsed();
    assert_eq!(report.moved, partitions as usize);
    // Reads after the cuts (a range tombstone per partition used to make each of them slow).
    let started = Instant::now();
    for t in 0..topics.min(10) {
        for p in 0..per_topic {
            let req = gregor::log::ReadRequest { offset: 4, max_records: 1, max_bytes: 1 << 20, wait: Duration::ZERO };
            log.read(&format!("r{t}"), p, req).await.unwrap();
        }
    }
    let reads = started.elapsed();
    log.close().await.unwrap();
    let row = |what: &str, took: Duration, note: String| Row {
        scenario: format!("retention pass, {partitions} partitions, {what}"),
        p50_us: Some(took.as_micros() as f64),
        note,
        ..Default::default()
    };
    vec![
        row(
            "nothing due",
            idle,
            format!("{:.0} ms for {} batches under retention_bytes", idle.as_secs_f64() * 1e3, partitions * batches),
        ),
        row(
            "cutting four batches each",
            cutting,
            format!("{:.0} ms; {} partitions cut", cutting.as_secs_f64() * 1e3, report.moved),
        ),
        row(
            "reads after the cut",
            reads,
            format!("{:.0} ms for {} one-record reads", reads.as_secs_f64() * 1e3, topics.min(10) * per_topic),
        ),
    ]
}

/// Fills a server with records over HTTP, stops it (gracefully, or with SIGKILL
/// so that RocksDB replays its WAL), and times a new server process on the same
/// data directory: from spawn until `/readyz` answers 200. Checks that the
/// restarted server has every acknowledged record.
async fn restart(s: &Settings) -> Vec<Row> {
    let total: u64 = if s.smoke { 100_000 } else { 10_000_000 };
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut child, base) = Server::spawn(dir.path()).await;
    client
        .post(format!("{base}/v1/topics"))
        .json(&json!({"name": "r", "partitions": 4, "config": {"retention_ms": -1}}))
        .send()
        .await
        .unwrap();
    let body = bytes::Bytes::from(batch_body(1000));
    let host: Arc<str> = base.trim_start_matches("http://").into();
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let mut conn = h1_connection(&base).await;
        let (body, host, written) = (body.clone(), host.clone(), written.clone());
        fillers.push(tokio::spawn(async move {
            use http_body_util::BodyExt;
            while written.fetch_add(1000, std::sync::atomic::Ordering::Relaxed) < total {
                let req = post_json("/v1/topics/r/records?acks=leader", &host, body.clone());
                conn.ready().await.unwrap();
                let res = conn.send_request(req).await.unwrap();
                assert!(res.status().is_success());
                let _ = res.into_body().collect().await;
            }
        }));
    }
    while !fillers.iter().all(|f| f.is_finished()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = written.load(std::sync::atomic::Ordering::Relaxed).min(total);
        progress(&format!("restart: filled {n}/{total}"));
    }
    for f in fillers {
        f.await.unwrap();
    }
    let mut rows = Vec::new();
    for crash in [true, false] {
        if crash {
            child.kill().await.unwrap();
        } else {
            let pid = child.id().unwrap().to_string();
            let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(status.success());
            child.wait().await.unwrap();
        }
        let started = Instant::now();
        let (next, base) = Server::spawn(dir.path()).await;
        loop {
            let ready = client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200);
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ready = started.elapsed();
        let topic: Value = client.get(format!("{base}/v1/topics/r")).send().await.unwrap().json().await.unwrap();
        let stored: u64 =
            topic["partitions"].as_array().unwrap().iter().map(|p| p["end_offset"].as_u64().unwrap()).sum();
        assert_eq!(stored, total, "the restarted server has every acknowledged record");
        let how = if crash { "after SIGKILL (WAL replay)" } else { "after a clean stop" };
        rows.push(Row {
            scenario: format!("restart, {}M records, {}", total as f64 / 1e6, if crash { "crash" } else { "clean" }),
            p50_us: Some(ready.as_micros() as f64),
            note: format!("process spawn to /readyz 200 in {:.0} ms, {how}", ready.as_secs_f64() * 1000.0),
            ..Default::default()
        });
        child = next;
    }
    let _ = child.kill().await;
    rows
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 1e6 => format!("{:.2}M{unit}", x / 1e6),
        Some(x) if x >= 1e4 => format!("{:.1}k{unit}", x / 1e3),
        Some(x) => format!("{x:.1}{unit}"),
    }
}

fn us(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 1000.0 => format!("{:.2}ms", x / 1000.0),
        Some(x) => format!("{x:.0}µs"),
    }
}

/// SPEC §6's security figures, in one run: produce with authentication and
/// 100 ACL entries, and over TLS, each beside the same load without them.
async fn security(s: &Settings) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let token = "bench-api-key-4f1e9c";
    // 100 entries: half of them the bench principal's own (so that its decision
    // looks at 51 rules), the rest other principals'.
    let mut auth = format!(
        "[[auth.api_keys]]\nprincipal = \"bench\"\nsha256 = \"{}\"\n\n[[acl]]\nprincipal = \"User:bench\"\n\
         resource = \"topic\"\nname = \"bench\"\noperations = [\"create\", \"write\"]\n",
        gregor::auth::api_key_digest(token)
    );
    for i in 0..99 {
        let principal = if i < 50 { "bench".to_owned() } else { format!("user{}", i % 7) };
        auth.push_str(&format!(
            "\n[[acl]]\nprincipal = \"User:{principal}\"\nresource = \"topic\"\nname = \"app{i}-\"\n\
             pattern = \"prefixed\"\noperations = [\"read\", \"write\"]\n"
        ));
    }
    let auth_file = dir.path().join("auth.toml");
    std::fs::write(&auth_file, auth).unwrap();

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    let tls_file = dir.path().join("tls.toml");
    std::fs::write(
        &tls_file,
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("server.pem").display(),
            dir.path().join("server.key").display()
        ),
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let plain = Access::default();
    let authed = Access { token: Some(token.into()), config: Some(auth_file), ..Access::default() };
    let tls = Access { tls: Some(Arc::new(client)), config: Some(tls_file), ..Access::default() };
    let mut rows = Vec::new();
    for (per_request, variants) in [
        (100, vec![("plain", &plain), ("auth+100 ACLs", &authed), ("TLS", &tls)]),
        (1, vec![("plain", &plain), ("auth+100 ACLs", &authed)]),
    ] {
        let mut base = None;
        for (name, access) in variants {
            progress(&format!("security: {per_request} record(s) per request, {name}…"));
            let mut row = produce_with(s, "leader", 64, per_request, access).await;
            let records = row.records_per_s.unwrap_or(0.0);
            let share = base.map(|b: f64| format!("{:.0} % of plain", 100.0 * records / b)).unwrap_or_default();
            base.get_or_insert(records);
            row.scenario = format!("security: produce {per_request}x100B acks=leader conns=64, {name}");
            row.note = share;
            rows.push(row);
        }
    }
    rows
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let settings = Settings {
        smoke: args.iter().any(|a| a == "--smoke"),
        rate: arg("--rate").and_then(|r| r.parse().ok()).unwrap_or(10_000),
        only: arg("--only"),
        json: arg("--json").map(Into::into).unwrap_or_else(|| {
            // Cargo runs benches from the package root.
            std::path::Path::new("target").join("bench").join("results.json")
        }),
    };
    if let Some(config) = arg("--server-config") {
        let path = std::fs::canonicalize(&config).expect("--server-config: no such file");
        SERVER_CONFIG.set(path).unwrap();
    }
    let mut rows = Vec::new();
    if settings.wants("produce") {
        for acks in ["leader", "all"] {
            for conns in [1, 8, 64] {
                progress(&format!("produce acks={acks} conns={conns}…"));
                rows.push(produce(&settings, acks, conns, 100).await);
            }
        }
    }
    if settings.wants("produce-one") || settings.wants("produce") {
        progress("produce one record per request…");
        let mut row = produce(&settings, "leader", 64, 1).await;
        row.scenario = "produce 1x100B acks=leader conns=64".into();
        rows.push(row);
    }
    if settings.wants("schemas") {
        rows.extend(schemas(&settings).await);
    }
    if settings.wants("ws-delivery") {
        progress("ws delivery…");
        rows.push(ws_delivery(&settings).await);
    }
    if settings.wants("latency") {
        progress("latency at 10k records/s…");
        rows.push(latency(&settings).await);
    }
    if settings.wants("fanout") {
        progress("fanout…");
        rows.extend(fanout(&settings).await);
    }
    if settings.wants("store") {
        progress("store alone…");
        rows.extend(store(&settings).await);
    }
    if settings.wants("restart") {
        progress("restart…");
        rows.extend(restart(&settings).await);
    }
    if settings.wants("retention") {
        rows.extend(retention(&settings).await);
    }
    if settings.wants("security") {
        rows.extend(security(&settings).await);
    }
    // `--only kafka-gregor`: gregor's rows without the other brokers.
    let gregor_only = settings.only.as_deref() == Some("kafka-gregor");
    if settings.wants("kafka") || gregor_only {
        progress("kafka listener under librdkafka…");
        let server = Server::start().await;
        match server.kafka.clone() {
            Some(bootstrap) => rows.extend(kafka::run(&settings, &kafka::gregor(bootstrap, server.child.id())).await),
            None => rows.push(Row { scenario: "kafka".into(), note: "no Kafka listener".into(), ..Row::default() }),
        }
        if let Some(rss) = server.peak_rss_mb()
            && let Some(last) = rows.last_mut()
        {
            last.peak_rss_mb = Some(rss);
        }
        drop(server);
        // The other brokers only in full runs: the smoke run proves the tool, not the comparison.
        for name in if settings.smoke || gregor_only { &[][..] } else { &["noida-db", "tansu"][..] } {
            progress(&format!("kafka load against {name}…"));
            match kafka::other_broker(name).await {
                Some(broker) => rows.extend(kafka::run(&settings, &broker).await),
                None => rows.push(Row {
                    scenario: format!("kafka-produce {name}"),
                    note: "not run: not installed in .venv or did not start".into(),
                    ..Row::default()
                }),
            }
        }
    }
    if settings.wants("backend") {
        rows.extend(backend(&settings).await);
    }
    progress("");
    eprintln!();
    println!(
        "{:<44} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "scenario", "records/s", "req/s", "MB/s", "p50", "p99", "p99.9", "peakRSS"
    );
    for r in &rows {
        println!(
            "{:<44} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}  {}",
            r.scenario,
            fmt(r.records_per_s, ""),
            fmt(r.requests_per_s, ""),
            r.mb_per_s.map_or("-".into(), |m| format!("{m:.1}")),
            us(r.p50_us),
            us(r.p99_us),
            us(r.p999_us),
            r.peak_rss_mb.map_or("-".into(), |m| format!("{m:.0}MB")),
            r.note
        );
    }
    let json: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"scenario": r.scenario, "records_per_s": r.records_per_s, "requests_per_s": r.requests_per_s,
                   "mb_per_s": r.mb_per_s, "p50_us": r.p50_us, "p99_us": r.p99_us, "p999_us": r.p999_us,
                   "peak_rss_mb": r.peak_rss_mb, "note": r.note, "smoke": settings.smoke})
        })
        .collect();
    if let Some(parent) = settings.json.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&settings.json, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("figures written to {}", settings.json.display());
}
