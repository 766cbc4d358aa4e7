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
        command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
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
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let pid = child.id().or_fail("gregor's pid")?;
        Ok(Server { child, base, pid })
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
#[derive(Default)]
struct Acked {
    /// (partition, offset) → value, for acks=leader and acks=all.
    records: BTreeMap<(u64, u64), String>,
    /// Values written with acks=all, by (partition, offset).
    durable: BTreeSet<(u64, u64)>,
    /// Sent with acks=none (answered before the write: not a promise).
    unpromised: usize,
    /// The highest acknowledged commit per partition.
    commits: BTreeMap<u64, u64>,
}

type Shared = Arc<Mutex<Acked>>;

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

/// Every partition's records from its beginning: (offset, value) in order.
async fn read_all(
    client: &reqwest::Client,
    s: &Server,
    topic: &str,
) -> Result<BTreeMap<u64, Vec<(u64, String)>>, Verdict> {
    let meta: Value = client
        .get(s.url(&format!("/v1/topics/{topic}")))
        .send()
        .await
        .or_fail("describe")?
        .json()
        .await
        .or_fail("describe")?;
    let mut out = BTreeMap::new();
    for part in meta["partitions"].as_array().or_fail("partitions")? {
        let p = part["partition"].as_u64().or_fail("partition")?;
        let end = part["end_offset"].as_u64().or_fail("end_offset")?;
        let mut offset = part["beginning_offset"].as_u64().or_fail("beginning_offset")?;
        let mut records = Vec::new();
        while offset < end {
            let url = s.url(&format!("/v1/topics/{topic}/partitions/{p}/records?offset={offset}&limit=10000"));
            let body: Value = client.get(url).send().await.or_fail("read")?.json().await.or_fail("read")?;
            let got = body["records"].as_array().or_fail("records")?;
            if got.is_empty() {
                return fail(format!("partition {p}: nothing readable at {offset} below its end {end}"));
            }
            for r in got {
                let o = r["offset"].as_u64().or_fail("offset")?;
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
        for pair in records.windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                return fail(format!("partition {p}: offsets not dense ({} then {})", pair[0].0, pair[1].0));
            }
        }
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
        let desc: Value = client
            .get(s.url(&format!("/v1/groups/{group}")))
            .send()
            .await
            .or_fail("describe group")?
            .json()
            .await
            .or_fail("describe group")?;
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

/// Mixed load against `s` for `how_long`: 3 REST producers (every acks), one
/// WebSocket producer, one group member committing.
async fn mixed_load(base: String, topic: &str, group: &str, round: usize, acked: Shared, how_long: Duration) {
    let stop = Instant::now() + how_long;
    let mut tasks = Vec::new();
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

/// 1. Repeated kill -9 under mixed load.
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
            stored = verify(&client, &s, "k", Some("kg"), &lock(&acked)).await?;
        }
        // Kill at a random moment under load: the load runs on while the kill lands.
        let load =
            tokio::spawn(mixed_load(s.base.clone(), "k", "kg", round, acked.clone(), Duration::from_millis(900)));
        let delay = 200 + (round as u64 * 7919) % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        s.kill9().await?;
        let _ = load.await;
    }
    let s = Server::start(dir.path(), None, &[]).await?;
    stored = stored.max(verify(&client, &s, "k", Some("kg"), &lock(&acked)).await?);
    let a = lock(&acked);
    Ok(format!(
        "kill -9 ×{rounds} under load: {} acknowledged ({} acks=all), {} commits, {stored} stored, 0 lost, 0 duplicated, offsets dense",
        a.records.len(),
        a.durable.len(),
        a.commits.len()
    ))
}

/// 9. SIGTERM under load: exits 0 within shutdown_timeout, nothing acknowledged lost.
async fn sigterm(_quick: bool) -> Outcome {
    let dir = tempfile::tempdir().or_fail("tempdir")?;
    let client = reqwest::Client::new();
    let acked: Shared = Arc::default();
    let mut s = Server::start(dir.path(), None, &[]).await?;
    create_topic(&client, &s, "t", 4).await?;
    let load = tokio::spawn(mixed_load(s.base.clone(), "t", "tg", 0, acked.clone(), Duration::from_millis(1500)));
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
    let stored = verify(&client, &s, "t", Some("tg"), &lock(&acked)).await?;
    let a = lock(&acked);
    Ok(format!(
        "SIGTERM under load: exit 0 in {} ms; {} acknowledged, {stored} stored, 0 lost",
        took.as_millis(),
        a.records.len()
    ))
}

/// 3. EIO from fsync/fdatasync/write, injected with libfiu into the live process.
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
    let stored = verify(&client, &s, "e", None, &lock(&acked)).await?;
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

/// 2. Power cut: the data directory on a loop-mounted ext4 image whose dirty
/// pages are held in memory; the server is killed and the image copied as the
/// "disk" holds it, without the page cache; then e2fsck and a restart on the copy.
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
    mixed_load(s.base.clone(), "p", "pg", 0, acked.clone(), Duration::from_millis(1500)).await;
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
    let a = lock(&acked);
    let at = |p: u64, off: u64| stored.get(&p).and_then(|r| r.iter().find(|(o, _)| *o == off)).map(|(_, v)| v);
    for (p, records) in &stored {
        for pair in records.windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                return fail(format!("partition {p}: offsets not dense ({} then {})", pair[0].0, pair[1].0));
            }
        }
    }
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
