//! The fault suite (SPEC §12): runs the release `gregor` binary through crashes,
//! power cuts, disk errors and hostile clients, and checks that nothing
//! acknowledged is ever lost. One line per scenario with its figures, then
//! `fault-suite: N passed, N failed, N skipped`. A scenario that cannot run here
//! (not root, no loop device, no libfiu) says why and is skipped, never passed.
//!
//! Usage: `cargo bench --bench fault-suite -- [--only NAME] [--quick]` (root for
//! the power-cut, EIO and disk-full scenarios). `scripts/fault-suite` runs it.
//! Traffic goes only to 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

type Outcome = Result<String, Verdict>;

/// Why a scenario did not pass.
enum Verdict {
    Failed(String),
    Skipped(String),
}

fn fail<T>(why: impl Into<String>) -> Result<T, Verdict> {
    Err(Verdict::Failed(why.into()))
}

fn skip<T>(why: impl Into<String>) -> Result<T, Verdict> {
    Err(Verdict::Skipped(why.into()))
}

/// Turns any error into a failure of the scenario.
trait OrFail<T> {
    fn or_fail(self, what: &str) -> Result<T, Verdict>;
}

impl<T, E: std::error::Error> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> Result<T, Verdict> {
        self.map_err(|e| {
            let mut why = format!("{what}: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            Verdict::Failed(why)
        })
    }
}

impl<T> OrFail<T> for Option<T> {
    fn or_fail(self, what: &str) -> Result<T, Verdict> {
        self.ok_or_else(|| Verdict::Failed(what.to_owned()))
    }
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh(cmd: &str) -> Result<String, Verdict> {
    let out = std::process::Command::new("sh").args(["-c", cmd]).output().or_fail(cmd)?;
    if !out.status.success() {
        return fail(format!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running server process.
struct Server {
    child: Child,
    base: String,
    /// The Kafka listener's address.
    kafka: Option<String>,
    pid: u32,
}

impl Server {
    /// Starts `gregor serve` on `data_dir` (with `config`, and a `wrapper` such
    /// as fiu-run in front); returns once it listens.
    async fn start(data_dir: &Path, config: Option<&Path>, wrapper: &[&str]) -> Result<Server, Verdict> {
        let bin = env!("CARGO_BIN_EXE_gregor");
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command.args(["serve", "--listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .env("GREGOR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("FAULT_DEBUG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .kill_on_drop(true)
            .spawn()
            .or_fail("start gregor")?;
        let stdout = child.stdout.take().or_fail("gregor's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    return Some(rest.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .or_fail("gregor did not start listening")?;
        // The Kafka listener's line comes next.
        let kafka = match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
            Ok(Ok(Some(line))) => line.split("kafka listener on ").nth(1).map(|a| a.trim().to_owned()),
            _ => None,
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let pid = child.id().or_fail("gregor's pid")?;
        Ok(Server { child, base, kafka, pid })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn signal(&self, sig: &str) -> Result<(), Verdict> {
        sh(&format!("kill -{sig} {}", self.pid)).map(|_| ())
    }

    async fn kill9(mut self) -> Result<(), Verdict> {
        self.signal("KILL")?;
        self.child.wait().await.or_fail("wait for the killed server")?;
        Ok(())
    }
}

/// What clients were told was stored.
#[derive(Default, Clone)]
struct Acked {
    /// (partition, offset) → value, for acks=leader and acks=all.
    records: BTreeMap<(u64, u64), String>,
    /// Values written with acks=all, by (partition, offset).
    durable: BTreeSet<(u64, u64)>,
    /// Sent with acks=none (answered before the write: not a promise).
    unpromised: usize,
    /// The highest acknowledged commit per partition.
    commits: BTreeMap<u64, u64>,
    /// Of `records`, how many a Kafka producer was told were delivered.
    kafka: usize,
}

type Shared = Arc<Mutex<Acked>>;

/// A copy of what was acknowledged so far (no lock held across awaits).
fn snapshot(a: &Shared) -> Acked {
    lock(a).clone()
}

fn lock(a: &Shared) -> std::sync::MutexGuard<'_, Acked> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

async fn create_topic(client: &reqwest::Client, s: &Server, name: &str, partitions: u32) -> Result<(), Verdict> {
    let res = client
        .post(s.url("/v1/topics"))
        .json(&json!({"name": name, "partitions": partitions, "config": {"retention_ms": -1}}))
        .send()
        .await
        .or_fail("create topic")?;
    if res.status() != 201 {
        return fail(format!("create topic: {}", res.status()));
    }
    Ok(())
}

/// Produces batches of 10 records with unique values over REST until `stop`,
/// cycling through acks none/leader/all, recording what was acknowledged.
async fn rest_producer(base: String, topic: String, tag: String, acked: Shared, stop: Instant) {
    rest_producer_with(base, topic, tag, acked, stop, &["none", "leader", "all"]).await
}

async fn rest_producer_with(
    base: String,
    topic: String,
    tag: String,
    acked: Shared,
    stop: Instant,
    cycle: &'static [&'static str],
) {
    let client = reqwest::Client::new();
    let mut seq = 0u64;
    while Instant::now() < stop {
        let acks = cycle[(seq % cycle.len() as u64) as usize];
        let values: Vec<String> = (0..10).map(|i| format!("{tag}-{seq}-{i}")).collect();
        let records: Vec<Value> = values.iter().map(|v| json!({"key": v, "value": v})).collect();
        seq += 1;
        let url = format!("{base}/v1/topics/{topic}/records?acks={acks}");
        let Ok(res) = client.post(url).json(&json!({"records": records})).send().await else { return };
        // Paced: the figure that matters is what survives, and every round re-reads everything.
        tokio::time::sleep(Duration::from_millis(3)).await;
        if res.status() != 200 {
            continue;
        }
        let Ok(body) = res.json::<Value>().await else { return };
        let mut a = lock(&acked);
        if acks == "none" {
            a.unpromised += values.len();
            continue;
        }
        let Some(offsets) = body["offsets"].as_array() else { continue };
        for (o, v) in offsets.iter().zip(values) {
            let (Some(p), Some(off)) = (o["partition"].as_u64(), o["offset"].as_u64()) else { continue };
            if acks == "all" {
                a.durable.insert((p, off));
            }
            a.records.insert((p, off), v);
        }
    }
}

/// Produces over a WebSocket with `produce` frames (acks=leader), recording the
/// `produced` answers.
async fn ws_producer(base: String, topic: String, tag: String, acked: Shared, stop: Instant) {
    let url = format!("{}/v1/topics/{topic}/stream?from=latest", base.replace("http://", "ws://"));
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else { return };
    let mut pending: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut id = 0u64;
    while Instant::now() < stop {
        let values: Vec<String> = (0..5).map(|i| format!("{tag}-{id}-{i}")).collect();
        let records: Vec<Value> = values.iter().map(|v| json!({"key": v, "value": v})).collect();
        let frame = json!({"type": "produce", "id": id, "acks": "leader", "records": records});
        if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
            return;
        }
        pending.insert(id, values);
        id += 1;
        // One in flight: wait for its answer.
        loop {
            let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await else { return };
            let Message::Text(text) = msg else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
            if v["type"] != "produced" {
                continue;
            }
            let Some(values) = v["id"].as_u64().and_then(|i| pending.remove(&i)) else { continue };
            let mut a = lock(&acked);
            for (o, val) in v["offsets"].as_array().into_iter().flatten().zip(values) {
                if let (Some(p), Some(off)) = (o["partition"].as_u64(), o["offset"].as_u64()) {
                    a.records.insert((p, off), val);
                }
            }
            break;
        }
    }
}

/// A REST group member polling with cursors and committing what it got,
/// recording acknowledged commits.
async fn committer(base: String, topic: String, group: String, acked: Shared, stop: Instant) {
    let client = reqwest::Client::new();
    let join = client
        .post(format!("{base}/v1/groups/{group}/members"))
        .json(&json!({"topics": [topic], "auto_offset_reset": "earliest", "session_timeout_ms": 1000}))
        .send()
        .await;
    let Ok(Ok(joined)) = (match join {
        Ok(r) => Ok(r.json::<Value>().await),
        Err(e) => Err(e),
    }) else {
        return;
    };
    let (Some(member), Some(mut cursor)) = (joined["member_id"].as_str(), joined["cursor"].as_str().map(str::to_owned))
    else {
        return;
    };
    while Instant::now() < stop {
        let url = format!("{base}/v1/groups/{group}/members/{member}/records");
        let Ok(res) =
            client.get(url).query(&[("max_records", "200"), ("wait_ms", "50"), ("cursor", &cursor)]).send().await
        else {
            return;
        };
        let Ok(answer) = res.json::<Value>().await else { return };
        let Some(next) = answer["cursor"].as_str() else { return };
        cursor = next.to_owned();
        let mut offsets: BTreeMap<u64, u64> = BTreeMap::new();
        for r in answer["records"].as_array().into_iter().flatten() {
            if let (Some(p), Some(o)) = (r["partition"].as_u64(), r["offset"].as_u64()) {
                let e = offsets.entry(p).or_insert(o + 1);
                *e = (*e).max(o + 1);
            }
        }
        if offsets.is_empty() {
            continue;
        }
        let list: Vec<Value> =
            offsets.iter().map(|(p, o)| json!({"topic": topic, "partition": p, "offset": o})).collect();
        let body = json!({"member_id": member, "generation": answer["generation"], "offsets": list});
        let Ok(res) = client.post(format!("{base}/v1/groups/{group}/offsets")).json(&body).send().await else {
            return;
        };
        if res.status() == 200 {
            let mut a = lock(&acked);
            for (p, o) in offsets {
                let e = a.commits.entry(p).or_insert(o);
                *e = (*e).max(o);
            }
        }
    }
}

/// A GET's JSON answer; `what` names it in a failure.
async fn get_json(client: &reqwest::Client, url: &str, what: &str) -> Result<Value, Verdict> {
    client.get(url).send().await.or_fail(what)?.json().await.or_fail(what)
}

/// Every partition's records from its beginning: (offset, value) in order.
/// Fails unless the offsets are dense (no gap, no reuse).
async fn read_all(
    client: &reqwest::Client,
    s: &Server,
    topic: &str,
) -> Result<BTreeMap<u64, Vec<(u64, String)>>, Verdict> {
    let meta = get_json(client, &s.url(&format!("/v1/topics/{topic}")), "describe").await?;
    let mut out = BTreeMap::new();
    for part in meta["partitions"].as_array().or_fail("partitions")? {
        let p = part["partition"].as_u64().or_fail("partition")?;
        let end = part["end_offset"].as_u64().or_fail("end_offset")?;
        let mut offset = part["beginning_offset"].as_u64().or_fail("beginning_offset")?;
        let mut records = Vec::new();
        while offset < end {
            let url = s.url(&format!("/v1/topics/{topic}/partitions/{p}/records?offset={offset}&limit=10000"));
            let body = get_json(client, &url, "read").await?;
            let got = body["records"].as_array().or_fail("records")?;
            if got.is_empty() {
                return fail(format!("partition {p}: nothing readable at {offset} below its end {end}"));
            }
            for r in got {
                let o = r["offset"].as_u64().or_fail("offset")?;
                if let Some((last, _)) = records.last()
                    && o != last + 1
                {
                    return fail(format!("partition {p}: offsets not dense ({last} then {o})"));
                }
                records.push((o, r["value"].as_str().unwrap_or_default().to_owned()));
                offset = o + 1;
            }
        }
        out.insert(p, records);
    }
    Ok(out)
}

/// Checks a restarted server against what was acknowledged: every acknowledged
/// record at its offset with its value, offsets dense, no value twice, every
/// acknowledged commit at least where it was. Returns (stored records).
async fn verify(
    client: &reqwest::Client,
    s: &Server,
    topic: &str,
    group: Option<&str>,
    acked: &Acked,
) -> Result<usize, Verdict> {
    let stored = read_all(client, s, topic).await?;
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for (p, records) in &stored {
        for (_, v) in records {
            if !seen.insert(v.clone()) {
                return fail(format!("partition {p}: value {v} stored twice"));
            }
        }
        total += records.len();
    }
    for ((p, off), v) in &acked.records {
        let got = stored.get(p).and_then(|r| r.iter().find(|(o, _)| o == off)).map(|(_, v)| v);
        if got != Some(v) {
            return fail(format!("acknowledged record {p}/{off} ({v}) is {got:?} after the restart"));
        }
    }
    if let Some(group) = group {
        let desc = get_json(client, &s.url(&format!("/v1/groups/{group}")), "describe group").await?;
        for (p, o) in &acked.commits {
            let committed = desc["offsets"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["partition"].as_u64() == Some(*p))
                .and_then(|e| e["committed_offset"].as_u64());
            if committed.is_none_or(|c| c < *o) {
                return fail(format!("acknowledged commit {p}→{o} is {committed:?} after the restart"));
            }
        }
    }
    Ok(total)
}

/// Records what the Kafka producer was told was stored (acks=all).
struct KafkaAcks(Shared);

impl rdkafka::ClientContext for KafkaAcks {}

impl rdkafka::producer::ProducerContext for KafkaAcks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        use rdkafka::message::Message;
        let Ok(m) = result else { return };
        let Some(value) = m.payload().and_then(|v| std::str::from_utf8(v).ok()) else { return };
        let (Ok(p), Ok(off)) = (u64::try_from(m.partition()), u64::try_from(m.offset())) else { return };
        let mut a = lock(&self.0);
        a.durable.insert((p, off));
        a.records.insert((p, off), value.to_owned());
        a.kafka += 1;
    }
}

/// An idempotent librdkafka producer (acks=all) on the Kafka listener until `stop`, paced;
/// what it is told was delivered joins the acknowledged records. Blocking: run it on a thread.
fn kafka_producer(bootstrap: String, topic: String, tag: String, acked: Shared, stop: Instant) {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let producer: Result<ThreadedProducer<KafkaAcks>, _> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "600")
        .set("log_level", "0")
        .create_with_context(KafkaAcks(acked));
    let Ok(producer) = producer else { return };
    let mut seq = 0u64;
    while Instant::now() < stop {
        for _ in 0..10 {
            let value = format!("{tag}-{seq}");
            seq += 1;
            let _ = producer.send(BaseRecord::<(), String>::to(&topic).payload(&value));
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    // What the kill cut off fails within message.timeout.ms and is not acknowledged.
    let _ = producer.flush(rdkafka::util::Timeout::After(Duration::from_secs(1)));
}

/// Mixed load against `s` for `how_long`: 3 REST producers (every acks), one
/// WebSocket producer, one Kafka producer (idempotent, acks=all), one group member committing.
async fn mixed_load(
    base: String,
    kafka: Option<String>,
    topic: &str,
    group: &str,
    round: usize,
    acked: Shared,
    how_long: Duration,
) {
    let stop = Instant::now() + how_long;
    let mut tasks = Vec::new();
    if let Some(bootstrap) = kafka {
        let (topic, tag, acked) = (topic.to_owned(), format!("r{round}k"), acked.clone());
        tasks.push(tokio::task::spawn_blocking(move || kafka_producer(bootstrap, topic, tag, acked, stop)));
    }
    for t in 0..3 {
        tasks.push(tokio::spawn(rest_producer(
            base.clone(),
            topic.into(),
            format!("r{round}p{t}"),
            acked.clone(),
            stop,
        )));
    }
    tasks.push(tokio::spawn(ws_producer(base.clone(), topic.into(), format!("r{round}w"), acked.clone(), stop)));
    tasks.push(tokio::spawn(committer(base, topic.into(), group.into(), acked, stop)));
    for t in tasks {
        let _ = t.await;
    }
}

/// Scenario 1: Repeated kill -9 under mixed load.
async fn kill9(quick: bool) -> Outcome {
    let rounds = if quick { 5 } else { 20 };
    let dir = tempfile::tempdir().or_fail("tempdir")?;
    let client = reqwest::Client::new();
    let acked: Shared = Arc::default();
    let mut stored = 0;
    for round in 0..rounds {
        let s = Server::start(dir.path(), None, &[]).await?;
        if round == 0 {
            create_topic(&client, &s, "k", 4).await?;
        } else {
            stored = verify(&client, &s, "k", Some("kg"), &snapshot(&acked)).await?;
        }
        // Kill at a random moment under load: the load runs on while the kill lands.
        let load = tokio::spawn(mixed_load(
            s.base.clone(),
            s.kafka.clone(),
            "k",
            "kg",
            round,
            acked.clone(),
            Duration::from_millis(900),
        ));
        let delay = 200 + (round as u64 * 7919) % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        s.kill9().await?;
        let _ = load.await;
    }
    let s = Server::start(dir.path(), None, &[]).await?;
    stored = stored.max(verify(&client, &s, "k", Some("kg"), &snapshot(&acked)).await?);
    let a = lock(&acked);
    Ok(format!(
        "kill -9 ×{rounds} under load: {} acknowledged ({} acks=all, {} by a Kafka producer), acknowledged commits on {} partitions all kept, {stored} stored, 0 lost, 0 duplicated, offsets dense",
        a.records.len(),
        a.durable.len(),
        a.kafka,
        a.commits.len()
    ))
}

/// Scenario 9: SIGTERM under load: exits 0 within shutdown_timeout, nothing acknowledged lost.
async fn sigterm(_quick: bool) -> Outcome {
    let dir = tempfile::tempdir().or_fail("tempdir")?;
    let client = reqwest::Client::new();
    let acked: Shared = Arc::default();
    let mut s = Server::start(dir.path(), None, &[]).await?;
    create_topic(&client, &s, "t", 4).await?;
    let load = tokio::spawn(mixed_load(
        s.base.clone(),
        s.kafka.clone(),
        "t",
        "tg",
        0,
        acked.clone(),
        Duration::from_millis(1500),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    s.signal("TERM")?;
    let status = tokio::time::timeout(Duration::from_secs(10), s.child.wait()).await;
    let took = started.elapsed();
    let _ = load.await;
    let status = match status {
        Ok(Ok(st)) => st,
        _ => return fail("did not exit within shutdown_timeout (10 s)"),
    };
    if !status.success() {
        return fail(format!("exit status {status}"));
    }
    let s = Server::start(dir.path(), None, &[]).await?;
    let stored = verify(&client, &s, "t", Some("tg"), &snapshot(&acked)).await?;
    let a = lock(&acked);
    Ok(format!(
        "SIGTERM under load: exit 0 in {} ms; {} acknowledged, {stored} stored, 0 lost",
        took.as_millis(),
        a.records.len()
    ))
}

/// Scenario 3: EIO from fsync/fdatasync/write, injected with libfiu into the live process.
async fn eio(_quick: bool) -> Outcome {
    if !have("fiu-run") || !have("fiu-ctrl") {
        return skip("libfiu's fiu-run/fiu-ctrl are not installed (scripts/setup installs fiu-utils)");
    }
    let dir = tempfile::tempdir().or_fail("tempdir")?;
    let fifo = dir.path().join("fiu");
    let data = dir.path().join("data");
    // A new connection per request: under libfiu's preload, a server-side read
    // that would block on an idle keep-alive connection comes back as an error
    // (the wrapper does not keep errno), so the server closes such connections.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().or_fail("client")?;
    let fifo_s = fifo.to_string_lossy().into_owned();
    let s = Server::start(&data, None, &["fiu-run", "-x", "-f", &fifo_s]).await?;
    create_topic(&client, &s, "e", 2).await?;
    let acked: Shared = Arc::default();
    let produce = |acks: &'static str, n: usize| {
        let (client, url, acked) = (client.clone(), s.url(&format!("/v1/topics/e/records?acks={acks}")), acked.clone());
        async move {
            let v = format!("eio-{acks}-{n}");
            let res = client.post(url).json(&json!({"records": [{"value": v}]})).send().await.or_fail("produce")?;
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or_default();
            if status == 200 && acks != "none" {
                let o = &body["offsets"][0];
                if let (Some(p), Some(off)) = (o["partition"].as_u64(), o["offset"].as_u64()) {
                    lock(&acked).records.insert((p, off), v);
                }
            }
            Ok::<_, Verdict>((status, body))
        }
    };
    for n in 0..20 {
        let (status, body) = match produce("all", n).await {
            Ok(answer) => answer,
            Err(Verdict::Failed(why)) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let alive = sh(&format!("kill -0 {} && echo alive || echo gone", s.pid)).unwrap_or_default();
                return fail(format!("{why} (server {})", alive.trim()));
            }
            Err(e) => return Err(e),
        };
        if status != 200 {
            return fail(format!("before the fault: {status} {body}"));
        }
    }
    // Every fsync and fdatasync of the process fails with EIO from now on (write()
    // cannot be failed selectively: the runtime's eventfd wake-ups use it too).
    for point in ["posix/io/sync/fsync", "posix/io/sync/fdatasync"] {
        sh(&format!("fiu-ctrl -f {fifo_s} -c 'enable name={point},failinfo=5' {}", s.pid))?;
    }
    let (first, body) = produce("all", 100).await?;
    if first != 503 || body["code"] != "storage_error" {
        return fail(format!("the first produce under EIO answered {first} {body}"));
    }
    for (i, acks) in ["all", "leader", "all"].into_iter().enumerate() {
        let (status, body) = produce(acks, 101 + i).await?;
        if status != 503 {
            return fail(format!("a later produce (acks={acks}) under EIO answered {status} {body}"));
        }
    }
    let ready = client.get(s.url("/readyz")).send().await.or_fail("readyz")?.status().as_u16();
    if ready != 503 {
        return fail(format!("/readyz answered {ready} with the log failing"));
    }
    s.kill9().await?;
    let s = Server::start(&data, None, &[]).await?;
    let stored = verify(&client, &s, "e", None, &snapshot(&acked)).await?;
    let (status, _) = {
        let res = client
            .post(s.url("/v1/topics/e/records?acks=all"))
            .json(&json!({"records": [{"value": "after"}]}))
            .send()
            .await
            .or_fail("produce")?;
        (res.status().as_u16(), ())
    };
    if status != 200 {
        return fail(format!("after a restart without the fault, produce answered {status}"));
    }
    Ok(format!(
        "EIO on fsync/fdatasync (libfiu, live process): first failing produce 503 storage_error, later ones 503, /readyz 503; after restart {} acknowledged of {stored} stored, 0 lost",
        lock(&acked).records.len()
    ))
}

/// Sets a sysctl for as long as it lives, then puts the old value back.
struct Sysctl {
    name: &'static str,
    old: String,
}

impl Sysctl {
    fn set(name: &'static str, value: &str) -> Result<Sysctl, Verdict> {
        let old = sh(&format!("sysctl -n {name}"))?.trim().to_owned();
        sh(&format!("sysctl -q -w {name}={value}"))?;
        Ok(Sysctl { name, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = sh(&format!("sysctl -q -w {}={}", self.name, self.old));
    }
}

/// A mount point that is unmounted (and its loop device freed) when dropped.
struct Mount(PathBuf);

impl Mount {
    fn loop_ext4(image: &Path, at: &Path, options: &str) -> Result<Mount, Verdict> {
        std::fs::create_dir_all(at).or_fail("mount point")?;
        sh(&format!("mount -o loop,{options} {} {}", image.display(), at.display()))?;
        Ok(Mount(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = sh(&format!("umount {}", self.0.display()));
    }
}

fn loop_mounts_work() -> Result<(), Verdict> {
    if !is_root() {
        return skip("needs root (loop mounts)");
    }
    for tool in ["losetup", "mkfs.ext4", "e2fsck", "mount"] {
        if !have(tool) {
            return skip(format!("{tool} is not installed (scripts/setup installs it)"));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return skip("no loop devices on this machine (/dev/loop-control)");
    }
    Ok(())
}

/// Scenario 2, power cut: the data directory on a loop-mounted ext4 image whose
/// dirty pages are held in memory; the server is killed and the image copied as
/// the "disk" holds it, without the page cache; then e2fsck and a restart on it.
async fn power_cut(_quick: bool) -> Outcome {
    loop_mounts_work()?;
    let dir = tempfile::tempdir().or_fail("tempdir")?;
    let (image, copy) = (dir.path().join("disk.img"), dir.path().join("after-cut.img"));
    sh(&format!("truncate -s 512M {0} && mkfs.ext4 -q -F {0}", image.display()))?;
    // Hold off periodic writeback and journal commits: only what is synced reaches the image.
    let _writeback = Sysctl::set("vm.dirty_writeback_centisecs", "0")?;
    let _expire = Sysctl::set("vm.dirty_expire_centisecs", "360000")?;
    let mount = Mount::loop_ext4(&image, &dir.path().join("mnt"), "commit=600")?;
    let data = mount.0.join("data");
    let client = reqwest::Client::new();
    let acked: Shared = Arc::default();
    let s = Server::start(&data, None, &[]).await?;
    create_topic(&client, &s, "p", 4).await?;
    mixed_load(s.base.clone(), s.kafka.clone(), "p", "pg", 0, acked.clone(), Duration::from_millis(1500)).await;
    // Then only acks=leader: nothing syncs the log any more, so what follows
    // stays in the page cache, and the cut must lose it.
    let stop = Instant::now() + Duration::from_secs(5);
    let load =
        tokio::spawn(rest_producer_with(s.base.clone(), "p".into(), "lead".into(), acked.clone(), stop, &["leader"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The cut: the process dies, and the disk keeps only what reached it.
    s.kill9().await?;
    sh(&format!("cp --sparse=always {} {}", image.display(), copy.display()))?;
    load.abort();
    drop(mount);
    let fsck = std::process::Command::new("e2fsck").args(["-f", "-y"]).arg(&copy).output().or_fail("e2fsck")?;
    let code = fsck.status.code().unwrap_or(-1);
    if !(0..4).contains(&code) {
        return fail(format!("e2fsck could not repair the image (exit {code})"));
    }
    let after = Mount::loop_ext4(&copy, &dir.path().join("mnt2"), "defaults")?;
    let s = Server::start(&after.0.join("data"), None, &[]).await?;
    let stored = read_all(&client, &s, "p").await?;
    let a = snapshot(&acked);
    let at = |p: u64, off: u64| stored.get(&p).and_then(|r| r.iter().find(|(o, _)| *o == off)).map(|(_, v)| v);
    for &(p, off) in &a.durable {
        if at(p, off) != a.records.get(&(p, off)) {
            return fail(format!("acks=all record {p}/{off} lost in the power cut"));
        }
    }
    let leader: Vec<(u64, u64)> = a.records.keys().filter(|k| !a.durable.contains(k)).copied().collect();
    let lost = leader.iter().filter(|&&(p, off)| at(p, off) != a.records.get(&(p, off))).count();
    let total: usize = stored.values().map(Vec::len).sum();
    s.kill9().await?;
    drop(after);
    Ok(format!(
        "power cut (ext4 image copied without its page cache, e2fsck exit {code}): {} acks=all acknowledged, 0 lost; {} acks=leader acknowledged, {lost} lost (allowed); {total} stored",
        a.durable.len(),
        leader.len()
    ))
}

/// Sum of every partition's end offset.
async fn stored_count(client: &reqwest::Client, s: &Server, topic: &str) -> Result<u64, Verdict> {
    let meta = get_json(client, &s.url(&format!("/v1/topics/{topic}")), "describe").await?;
    Ok(meta["partitions"].as_array().or_fail("partitions")?.iter().filter_map(|p| p["end_offset"].as_u64()).sum())
}

async fn healthy(client: &reqwest::Client, s: &Server) -> bool {
    client.get(s.url("/healthz")).send().await.is_ok_and(|r| r.status() == 200)
}

/// Writes raw bytes on a new connection and reads until the server answers or closes.
async fn raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else { return Vec::new() };
    let _ = tcp.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut out)).await;
    out
}

/// A WebSocket handshake by hand on a raw connection, then `frame` as sent bytes.
async fn raw_ws(addr: &str, path: &str, frame: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else { return Vec::new() };
    let hello = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let _ = tcp.write_all(hello.as_bytes()).await;
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await;
    let _ = tcp.write_all(frame).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut out)).await;
    out
}

/// A masked client frame with `opcode` and `payload` (lengths as RFC 6455).
fn ws_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n < 65536 => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [1u8, 2, 3, 4];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Scenario 7: Malformed HTTP and WebSocket input: errors, no crash, nothing stored.
async fn malformed(_quick: bool) -> Outcome {
    let dir = tempfile::tempdir().or_fail("tempdir")?;
    let client = reqwest::Client::new();
    let s = Server::start(dir.path(), None, &[]).await?;
    create_topic(&client, &s, "m", 2).await?;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let before = stored_count(&client, &s, "m").await?;
    let produce = "POST /v1/topics/m/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    let nested = format!("{{\"records\":[{{\"value\":{}{}}}]}}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("binary garbage", (0..4096u32).map(|i| ((i * 2654435761u32) >> 13) as u8).collect()),
        ("a request line without a version", b"GET /v1/topics\r\n\r\n".to_vec()),
        (
            "a 1 MiB header",
            format!("GET /v1/topics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20)).into_bytes(),
        ),
        ("100,000 headers", format!("GET /v1/topics HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(100_000)).into_bytes()),
        ("a body shorter than its length", format!("{produce}Content-Length: 100\r\n\r\n{{\"records\":[").into_bytes()),
        ("broken chunked encoding", format!("{produce}Transfer-Encoding: chunked\r\n\r\nZZ\r\n{{\r\n").into_bytes()),
        ("a negative length", format!("{produce}Content-Length: -5\r\n\r\n{{}}").into_bytes()),
        ("JSON nested 100,000 deep", format!("{produce}Content-Length: {}\r\n\r\n{nested}", nested.len()).into_bytes()),
        ("truncated JSON", format!("{produce}Content-Length: 12\r\n\r\n{{\"records\":[").into_bytes()),
        (
            "invalid UTF-8 in JSON",
            [format!("{produce}Content-Length: 16\r\n\r\n").into_bytes(), b"{\"records\":[\"\xff\xfe\"]}".to_vec()]
                .concat(),
        ),
    ];
    let n_http = cases.len();
    for (what, bytes) in cases {
        let answer = raw(&addr, &bytes).await;
        if !healthy(&client, &s).await {
            return fail(format!("the server died after {what}"));
        }
        if answer.starts_with(b"HTTP/1.1 2") {
            return fail(format!(
                "{what} was answered with success: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ));
        }
    }
    let ws_cases: Vec<(&str, Vec<u8>)> = vec![
        ("an unmasked frame", ws_frame(1, b"{\"type\":\"credit\",\"records\":1}", false)),
        ("invalid UTF-8 in a text frame", ws_frame(1, b"\xff\xfe\xfd", true)),
        ("a reserved opcode", ws_frame(3, b"x", true)),
        ("reserved bits set", {
            let mut f = ws_frame(1, b"{}", true);
            f[0] |= 0x70;
            f
        }),
        ("a frame claiming 2^62 bytes", {
            let mut f = vec![0x81, 0xff];
            f.extend_from_slice(&(1u64 << 62).to_be_bytes());
            f.extend_from_slice(&[1, 2, 3, 4]);
            f
        }),
        ("a produce frame that is not JSON", ws_frame(1, b"{\"type\":\"produce\",\"records\":[", true)),
        (
            "a produce frame with a bad record",
            ws_frame(1, b"{\"type\":\"produce\",\"id\":1,\"records\":[{\"value_base64\":\"!!\"}]}", true),
        ),
        ("a fragmented control frame", {
            let mut f = ws_frame(9, b"x", true);
            f[0] &= 0x7f;
            f
        }),
    ];
    let n_ws = ws_cases.len();
    for (what, frame) in ws_cases {
        let _ = raw_ws(&addr, "/v1/topics/m/stream", &frame).await;
        if !healthy(&client, &s).await {
            return fail(format!("the server died after a WebSocket with {what}"));
        }
    }
    // Kafka frames: lying sizes, a real header before garbage, a request cut short, noise.
    let framed = |body: &[u8]| [(body.len() as i32).to_be_bytes().to_vec(), body.to_vec()].concat();
    let produce_header =
        [&0i16.to_be_bytes()[..], &9i16.to_be_bytes(), &7i32.to_be_bytes(), &(-1i16).to_be_bytes(), &[0]].concat();
    let kafka_cases: Vec<(&str, Vec<u8>)> = vec![
        ("a frame claiming 2 GiB", [i32::MAX.to_be_bytes().to_vec(), vec![0; 64]].concat()),
        ("a negative frame size", [(-1i32).to_be_bytes().to_vec(), vec![0; 64]].concat()),
        ("a Produce header before 0xff bytes", framed(&[produce_header.clone(), vec![0xff; 64]].concat())),
        ("a Metadata request cut short", framed(&[0, 3, 0, 12, 0, 0, 0, 1, 0xff, 0xff, 0, 0x05])[..9].to_vec()),
        ("random bytes", (0..512u32).map(|i| ((i * 2246822519u32) >> 11) as u8).collect()),
    ];
    let n_kafka = kafka_cases.len();
    if let Some(kafka) = &s.kafka {
        for (what, bytes) in kafka_cases {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if let Ok(mut tcp) = tokio::net::TcpStream::connect(kafka).await {
                let _ = tcp.write_all(&bytes).await;
                let mut out = Vec::new();
                let _ = tokio::time::timeout(Duration::from_millis(500), tcp.read_to_end(&mut out)).await;
            }
            if !healthy(&client, &s).await {
                return fail(format!("the server died after a Kafka connection with {what}"));
            }
        }
    }
    let after = stored_count(&client, &s, "m").await?;
    if after != before {
        return fail(format!("malformed input stored {} records", after - before));
    }
    Ok(format!(
        "malformed input: {n_http} HTTP, {n_ws} WebSocket and {n_kafka} Kafka cases refused, server up, 0 records stored"
    ))
}

/// Scenario 8, SIGSTOP/SIGCONT for longer than a session: clients resume (a
/// fenced member rejoins) and the group consumes everything acknowledged.
async fn sigstop(_quick: bool) -> Outcome {
    let dir = tempfile::tempdir().or_fail("tempdir")?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().or_fail("client")?;
    let s = Server::start(dir.path(), None, &[]).await?;
    create_topic(&client, &s, "st", 2).await?;
    let acked: Shared = Arc::default();
    let stop = Instant::now() + Duration::from_secs(5);
    let producer =
        tokio::spawn(rest_producer_with(s.base.clone(), "st".into(), "st".into(), acked.clone(), stop, &["all"]));
    let consumer = {
        let base = s.base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().ok()?;
            let mut processed: BTreeSet<(u64, u64)> = BTreeSet::new();
            let mut rejoins = 0;
            let deadline = Instant::now() + Duration::from_secs(40);
            'member: while Instant::now() < deadline {
                let joined: Value = client
                    .post(format!("{base}/v1/groups/sg/members"))
                    .json(&json!({"topics": ["st"], "auto_offset_reset": "earliest", "session_timeout_ms": 1000}))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let member = joined["member_id"].as_str()?.to_owned();
                let mut cursor = joined["cursor"].as_str()?.to_owned();
                while Instant::now() < deadline {
                    let res = client
                        .get(format!("{base}/v1/groups/sg/members/{member}/records"))
                        .query(&[("max_records", "500"), ("wait_ms", "100"), ("cursor", cursor.as_str())])
                        .send()
                        .await
                        .ok()?;
                    if res.status() == 404 {
                        rejoins += 1;
                        continue 'member;
                    }
                    let answer: Value = res.json().await.ok()?;
                    cursor = answer["cursor"].as_str()?.to_owned();
                    let got: Vec<(u64, u64)> = answer["records"]
                        .as_array()?
                        .iter()
                        .filter_map(|r| Some((r["partition"].as_u64()?, r["offset"].as_u64()?)))
                        .collect();
                    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
                    for (p, o) in &got {
                        let e = next.entry(*p).or_insert(o + 1);
                        *e = (*e).max(o + 1);
                    }
                    if !next.is_empty() {
                        let offsets: Vec<Value> =
                            next.iter().map(|(p, o)| json!({"topic": "st", "partition": p, "offset": o})).collect();
                        let res = client
                            .post(format!("{base}/v1/groups/sg/offsets"))
                            .json(&json!({"member_id": member, "generation": answer["generation"], "offsets": offsets}))
                            .send()
                            .await
                            .ok()?;
                        if res.status() == 200 {
                            processed.extend(got.iter().copied());
                        } else if res.status() == 404 {
                            rejoins += 1;
                            continue 'member;
                        }
                    }
                    if Instant::now() > stop + Duration::from_secs(1) && got.is_empty() {
                        return Some((processed, rejoins));
                    }
                }
            }
            Some((processed, rejoins))
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.signal("STOP")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.signal("CONT")?;
    let _ = producer.await;
    let (processed, rejoins) = consumer.await.or_fail("consumer")?.or_fail("the consumer gave up")?;
    let a = lock(&acked);
    let missing = a.records.keys().filter(|k| !processed.contains(k)).count();
    if missing > 0 {
        return fail(format!("{missing} acknowledged records never consumed after SIGCONT"));
    }
    // Whether the member is fenced depends on what runs first after SIGCONT: its
    // pending poll (a heartbeat) or the session timer. Either way nothing is lost.
    Ok(format!(
        "SIGSTOP 3 s (session 1 s): clients resumed, the member rejoined {rejoins}× after being fenced; {} acknowledged, all consumed and committed",
        a.records.len()
    ))
}

/// Scenarios 5 and 6: Slow clients closed by the serving limits; 9,000 idle connections
/// with the server still answering.
async fn slow_and_idle(_quick: bool) -> Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().or_fail("tempdir")?;
    let config = dir.path().join("gregor.toml");
    std::fs::write(&config, "[http]\nheader_read_timeout_ms = 1000\n").or_fail("config")?;
    let client = reqwest::Client::new();
    let s = Server::start(&dir.path().join("a"), Some(&config), &[]).await?;
    let addr = s.base.trim_start_matches("http://").to_owned();
    // A dribbler: one header byte every 200 ms. Closed by the header timeout.
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.or_fail("connect")?;
    let mut closed_after = None;
    for b in b"GET /v1/topics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if tcp.write_all(&[*b]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let dribble = closed_after.or_fail("a client dribbling headers was never closed")?;
    // An idle connection: closed after the same timeout.
    let started = Instant::now();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.or_fail("connect")?;
    let mut buf = [0u8; 16];
    let idle_closed =
        matches!(tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await, Ok(Ok(0) | Err(_)));
    if !idle_closed {
        return fail("an idle connection was not closed within 5 s (header timeout 1 s)");
    }
    let idle_after = started.elapsed();
    s.kill9().await?;

    // 9,000 idle connections, with an idle timeout long enough to keep them.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if limit < 9_500 {
        return skip(format!("the open-file limit here is {limit}, fewer than 9,000 connections need"));
    }
    std::fs::write(&config, "[http]\nheader_read_timeout_ms = 120000\n").or_fail("config")?;
    let s = Server::start(&dir.path().join("b"), Some(&config), &[]).await?;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let mut conns = Vec::with_capacity(9_000);
    for i in 0..9_000 {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(c) => conns.push(c),
            Err(e) => return fail(format!("connection {i} of 9,000 failed: {e}")),
        }
    }
    let opened = started.elapsed();
    let t = Instant::now();
    let res = client.get(s.url("/v1/topics")).send().await.or_fail("a request beside 9,000 idle connections")?;
    let answered = t.elapsed();
    if res.status() != 200 {
        return fail(format!("with 9,000 idle connections /v1/topics answered {}", res.status()));
    }
    drop(conns);
    Ok(format!(
        "slow clients: a header dribbler closed after {:.1} s and an idle connection after {:.1} s (timeout 1 s); 9,000 idle connections opened in {:.1} s, a request beside them answered in {} ms (open-file limit {limit})",
        dribble.as_secs_f64(),
        idle_after.as_secs_f64(),
        opened.as_secs_f64(),
        answered.as_millis(),
    ))
}

/// Scenario 4: Disk full on a small image: clear errors, reads keep working, no
/// corruption; after space is freed and a restart, writes work again.
async fn disk_full(_quick: bool) -> Outcome {
    loop_mounts_work()?;
    let dir = tempfile::tempdir().or_fail("tempdir")?;
    let image = dir.path().join("small.img");
    sh(&format!("truncate -s 256M {0} && mkfs.ext4 -q -F -m 0 {0}", image.display()))?;
    let mount = Mount::loop_ext4(&image, &dir.path().join("mnt"), "defaults")?;
    let ballast = mount.0.join("ballast");
    sh(&format!("dd if=/dev/zero of={} bs=1M count=192 status=none", ballast.display()))?;
    let data = mount.0.join("data");
    let client = reqwest::Client::new();
    let s = Server::start(&data, None, &[]).await?;
    create_topic(&client, &s, "f", 1).await?;
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut failure = None;
    // 1 MiB requests (16 × 64 KiB records, distinct values) until the disk is full.
    for n in 0..400u32 {
        let values: Vec<String> =
            (0..16).map(|i| format!("{n}-{i}-{}", "x".repeat(64 * 1024)).chars().rev().collect()).collect();
        let records: Vec<Value> = values.iter().map(|v| json!({"value": v})).collect();
        let res = client
            .post(s.url("/v1/topics/f/records?acks=all"))
            .json(&json!({"records": records}))
            .send()
            .await
            .or_fail("produce")?;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or_default();
        if status != 200 {
            failure = Some((n, status, body));
            break;
        }
        for (o, v) in body["offsets"].as_array().into_iter().flatten().zip(values) {
            if let Some(off) = o["offset"].as_u64() {
                acked.insert(off, v);
            }
        }
    }
    let (n, status, body) = failure.or_fail("the disk never filled")?;
    if status != 503 || body["code"] != "storage_error" {
        return fail(format!("the write that found the disk full answered {status} {body}"));
    }
    if !healthy(&client, &s).await {
        return fail("the server died with its disk full");
    }
    let first = acked.iter().next().map(|(o, _)| *o).or_fail("nothing was acknowledged")?;
    let read = client
        .get(s.url(&format!("/v1/topics/f/partitions/0/records?offset={first}&limit=1")))
        .send()
        .await
        .or_fail("read")?;
    if read.status() != 200 {
        return fail(format!("reads stopped working with the disk full: {}", read.status()));
    }
    // Free space, restart: every acknowledged record is there, and writes work.
    std::fs::remove_file(&ballast).or_fail("remove the ballast")?;
    s.kill9().await?;
    let s = Server::start(&data, None, &[]).await?;
    let stored = read_all(&client, &s, "f").await?;
    let records = stored.get(&0).or_fail("partition 0")?;
    for (off, v) in &acked {
        if records.iter().find(|(o, _)| o == off).map(|(_, val)| val) != Some(v) {
            return fail(format!("acknowledged record {off} is missing after the disk filled"));
        }
    }
    let res = client
        .post(s.url("/v1/topics/f/records?acks=all"))
        .json(&json!({"records": [{"value": "after"}]}))
        .send()
        .await
        .or_fail("produce")?;
    if res.status() != 200 {
        return fail(format!("after freeing space and a restart, produce answered {}", res.status()));
    }
    s.kill9().await?;
    drop(mount);
    Ok(format!(
        "disk full (256 MiB image, 192 MiB of ballast): request {n} answered 503 storage_error, reads kept working; after freeing space and a restart {} acknowledged records all there, writes work",
        acked.len()
    ))
}

/// A memory cgroup (v1) for as long as it lives.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Scenario 10: A 256 MiB memory cgroup with 1,000 WebSocket subscribers, half of them
/// stalled, under produce load: no OOM kill.
async fn memory_limit(quick: bool) -> Outcome {
    if !is_root() {
        return skip("needs root (cgroups)");
    }
    let root = Path::new("/sys/fs/cgroup/memory");
    if !root.join("memory.limit_in_bytes").exists() {
        return skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory");
    }
    let cg = Cgroup(root.join(format!("gregor-fault-{}", std::process::id())));
    std::fs::create_dir_all(&cg.0).or_fail("create the cgroup")?;
    let limit = std::env::var("FAULT_MEMORY_LIMIT").unwrap_or_else(|_| "268435456".into());
    std::fs::write(cg.0.join("memory.limit_in_bytes"), limit).or_fail("set the limit")?;
    let dir = tempfile::tempdir().or_fail("tempdir")?;
    let client = reqwest::Client::new();
    let s = Server::start(dir.path(), None, &[]).await?;
    std::fs::write(cg.0.join("cgroup.procs"), s.pid.to_string()).or_fail("move the server into the cgroup")?;
    create_topic(&client, &s, "mem", 4).await?;
    let subscribers = if quick { 200 } else { 1_000 };
    let ws_url = format!("{}/v1/topics/mem/stream?from=earliest", s.base.replace("http://", "ws://"));
    let mut stalled = Vec::new();
    let mut readers = Vec::new();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for i in 0..subscribers {
        let (ws, _) = tokio_tungstenite::connect_async(&ws_url).await.or_fail("subscribe")?;
        if i % 2 == 0 {
            stalled.push(ws); // never read
        } else {
            let received = received.clone();
            readers.push(tokio::spawn(async move {
                let mut ws = ws;
                while let Some(Ok(_)) = ws.next().await {
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
    }
    let stop = Instant::now() + Duration::from_secs(if quick { 3 } else { 6 });
    let value = "v".repeat(1000);
    let mut producers = Vec::new();
    for _ in 0..4 {
        let (client, url, value) = (client.clone(), s.url("/v1/topics/mem/records?acks=leader"), value.clone());
        producers.push(tokio::spawn(async move {
            let records: Vec<Value> = (0..100).map(|i| json!({"key": format!("k{i}"), "value": value})).collect();
            let body = json!({"records": records});
            let mut sent = 0u64;
            while Instant::now() < stop {
                if client.post(&url).json(&body).send().await.is_ok_and(|r| r.status() == 200) {
                    sent += 100;
                }
            }
            sent
        }));
    }
    let mut produced = 0;
    for p in producers {
        produced += p.await.unwrap_or(0);
    }
    let oom = std::fs::read_to_string(cg.0.join("memory.oom_control")).or_fail("oom_control")?;
    let kills: u64 =
        oom.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    let peak = std::fs::read_to_string(cg.0.join("memory.max_usage_in_bytes")).unwrap_or_default();
    let peak_mb = peak.trim().parse::<f64>().unwrap_or(0.0) / 1_048_576.0;
    let rss = std::fs::read_to_string(format!("/proc/{}/status", s.pid))
        .ok()
        .and_then(|st| {
            st.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let alive = healthy(&client, &s).await;
    drop(stalled);
    for r in readers {
        r.abort();
    }
    if kills > 0 || !alive {
        return fail(format!("OOM kills: {kills}, server alive: {alive}"));
    }
    let _ = std::fs::write(root.join("cgroup.procs"), s.pid.to_string());
    s.kill9().await?;
    Ok(format!(
        "256 MiB memory cgroup, {subscribers} subscribers ({} stalled): {produced} records produced, {} frames to readers, 0 OOM kills, peak RSS {rss}, cgroup peak {peak_mb:.0} MiB (page cache included)",
        subscribers / 2,
        received.load(std::sync::atomic::Ordering::Relaxed)
    ))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let quick = args.iter().any(|a| a == "--quick");
    type Scenario = fn(bool) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome>>>;
    let scenarios: Vec<(&str, Scenario)> = vec![
        ("kill9", |q| Box::pin(kill9(q))),
        ("power-cut", |q| Box::pin(power_cut(q))),
        ("eio", |q| Box::pin(eio(q))),
        ("slow-clients", |q| Box::pin(slow_and_idle(q))),
        ("malformed", |q| Box::pin(malformed(q))),
        ("sigstop", |q| Box::pin(sigstop(q))),
        ("disk-full", |q| Box::pin(disk_full(q))),
        ("memory-limit", |q| Box::pin(memory_limit(q))),
        ("sigterm", |q| Box::pin(sigterm(q))),
    ];
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, run) in scenarios {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(300), run(quick)).await;
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(line)) => {
                passed += 1;
                println!("PASS {name} ({secs:.1} s): {line}");
            }
            Ok(Err(Verdict::Failed(why))) => {
                failed += 1;
                println!("FAIL {name} ({secs:.1} s): {why}");
            }
            Ok(Err(Verdict::Skipped(why))) => {
                skipped += 1;
                println!("SKIP {name}: {why}");
            }
            Err(_) => {
                failed += 1;
                println!("FAIL {name}: did not finish within 300 s");
            }
        }
    }
    println!("fault-suite: {passed} passed, {failed} failed, {skipped} skipped");
    std::process::exit(if failed > 0 { 1 } else { 0 });
}
