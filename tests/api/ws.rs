//! WebSocket streams with a real tokio-tungstenite client.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) async fn connect(app: &TestApp, path: &str) -> Ws {
    let url = format!("{}{}", app.base.replace("http://", "ws://"), path);
    connect_async(&url).await.unwrap_or_else(|e| panic!("connect {url}: {e}")).0
}

/// The next JSON text frame (pings are skipped), or None if none arrives within `within`.
pub(crate) async fn next_frame(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.ok()?;
        match msg {
            Message::Text(t) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

pub(crate) async fn frame(ws: &mut Ws) -> Value {
    next_frame(ws, Duration::from_secs(10)).await.expect("a frame within 10 s")
}

pub(crate) async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Collects records frames until `n` records arrived.
pub(crate) async fn records(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = frame(ws).await;
        if f["type"] == "records" {
            out.extend(f["records"].as_array().unwrap().iter().cloned());
        }
    }
    out
}

fn offsets(recs: &[Value]) -> Vec<(u64, u64)> {
    recs.iter().map(|r| (r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap())).collect()
}

#[tokio::test]
async fn topic_streams_from_each_kind_of_position() {
    crate::helpers::within(async {
    let app = spawn_app().await;
    app.create_topic_with("s", 2, json!({"retention_ms": -1})).await;
    app.produce("s", json!([{"value": 0, "partition": 0, "timestamp": 1000}, {"value": 1, "partition": 0, "timestamp": 2000}, {"value": 2, "partition": 1, "timestamp": 3000}])).await;

    let mut earliest = connect(&app, "/v1/topics/s/stream?from=earliest").await;
    let got = records(&mut earliest, 3).await;
    let mut sorted = offsets(&got);
    sorted.sort();
    assert_eq!(sorted, vec![(0, 0), (0, 1), (1, 0)]);
    assert_eq!(got.iter().find(|r| r["partition"] == 1).unwrap()["value"], 2);
    assert!(got.iter().all(|r| r["topic"] == "s" && r["timestamp"].is_u64() && r["headers"].is_array()));

    let mut latest = connect(&app, "/v1/topics/s/stream").await;
    let mut from_offset = connect(&app, "/v1/topics/s/stream?from=1&partitions=0").await;
    let mut from_time = connect(&app, "/v1/topics/s/stream?from=ts:1500").await;
    assert_eq!(offsets(&records(&mut from_offset, 1).await), vec![(0, 1)]);
    let mut by_time = offsets(&records(&mut from_time, 2).await);
    by_time.sort();
    assert_eq!(by_time, vec![(0, 1), (1, 0)]);

    // Appends are pushed to every stream, in offset order per partition.
    for i in 0..20 {
        app.produce("s", json!([{"value": i, "partition": i % 2}])).await;
    }
    for (ws, n) in [(&mut latest, 20), (&mut earliest, 20), (&mut from_time, 20)] {
        let got = records(ws, n).await;
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for (p, o) in offsets(&got) {
            if let Some(prev) = last.insert(p, o) {
                assert_eq!(o, prev + 1, "offsets in order per partition");
            }
        }
    }
    let only0 = records(&mut from_offset, 10).await;
    assert!(only0.iter().all(|r| r["partition"] == 0), "the partition filter holds");

    // Bad requests are answered before the upgrade.
    let (status, body) = app.get("/v1/topics/nope/stream").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("unknown_topic")));
    let (status, body) = app.get("/v1/topics/s/stream?from=99").await;
    assert_eq!((status, body["code"].as_str()), (416, Some("offset_out_of_range")));
    let (status, body) = app.get("/v1/topics/s/stream?from=soon").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_parameter")));
    let (status, body) = app.get("/v1/topics/s/stream").await;
    assert_eq!((status, body["code"].as_str()), (426, Some("websocket_required")));
    })
    .await;
}

/// Followers at the end of the log are served from the partition's in-memory
/// tail cache, others from the store; both must give every record once, in
/// order, with its own value, however the producers' batches (small, and larger
/// than the cache) interleave.
#[tokio::test]
async fn followers_get_every_record_once_in_order_from_cache_or_store() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic_with("tail", 1, json!({"retention_ms": -1})).await;
        let mut follower = connect(&app, "/v1/topics/tail/stream?from=latest&max_records=7").await;
        let big = "y".repeat(64 * 1024);
        let producers: Vec<_> = (0..4)
            .map(|w| {
                let (client, url) = (app.client.clone(), app.url("/v1/topics/tail/records?acks=leader"));
                let big = big.clone();
                tokio::spawn(async move {
                    for i in 0..25 {
                        // Every 10th request is 10 records of 64 KiB: 640 KiB, more than the cache holds.
                        let n = if i % 10 == 9 { 10 } else { 1 + (i % 3) };
                        let recs: Vec<Value> = (0..n)
                            .map(|j| {
                                let pad = if i % 10 == 9 { big.as_str() } else { "" };
                                json!({"key": format!("{w}"), "value": format!("{w}-{i}-{j}{pad}")})
                            })
                            .collect();
                        let res = client.post(&url).json(&json!({"records": recs})).send().await.unwrap();
                        assert_eq!(res.status(), 200);
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
        let (_, part) = app.get("/v1/topics/tail/partitions/0").await;
        let total = part["end_offset"].as_u64().unwrap() as usize;
        let live = records(&mut follower, total).await;
        // A stream that starts from the beginning now reads the same log from the store.
        let mut replay = connect(&app, "/v1/topics/tail/stream?from=earliest&max_records=7").await;
        let replayed = records(&mut replay, total).await;
        let expected: Vec<u64> = (0..total as u64).collect();
        let offsets_of = |recs: &[Value]| recs.iter().map(|r| r["offset"].as_u64().unwrap()).collect::<Vec<_>>();
        assert_eq!(offsets_of(&live), expected, "the follower saw each offset once, in order");
        assert_eq!(offsets_of(&replayed), expected);
        assert_eq!(live, replayed, "cache and store give the same records");
        // Per producer, values arrive in the order they were sent.
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &live {
            let v = r["value"].as_str().unwrap();
            seen.entry(r["key"].as_str().unwrap().to_owned()).or_default().push(v[..v.len().min(12)].to_owned());
        }
        assert_eq!(seen.len(), 4);
        for values in seen.values() {
            assert_eq!(values.len(), total / 4);
            let order: Vec<(u32, u32)> = values
                .iter()
                .map(|v| {
                    let v: String = v.chars().take_while(|c| *c != 'y').collect();
                    let mut it = v.split('-').skip(1).map(|x| x.parse::<u32>().unwrap());
                    (it.next().unwrap(), it.next().unwrap())
                })
                .collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted, "a producer's records keep their order");
        }
    })
    .await;
}

#[tokio::test]
async fn produce_frames_round_trip_and_bad_frames_get_errors() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("p", 1).await;
        let mut ws = connect(&app, "/v1/topics/p/stream?from=earliest").await;
        send(
        &mut ws,
        json!({"type": "produce", "id": "a1", "records": [{"key": "k", "value": {"x": 1}}, {"value_base64": "AAE="}]}),
    )
    .await;
        let mut produced = None;
        let mut seen = Vec::new();
        while produced.is_none() || seen.len() < 2 {
            let f = frame(&mut ws).await;
            match f["type"].as_str().unwrap() {
                "produced" => produced = Some(f),
                "records" => seen.extend(f["records"].as_array().unwrap().iter().cloned()),
                other => panic!("unexpected {other}: {f}"),
            }
        }
        let produced = produced.unwrap();
        assert_eq!(produced["id"], "a1");
        assert_eq!(produced["offsets"][0]["offset"], 0);
        assert_eq!(produced["offsets"][1]["offset"], 1);
        assert_eq!(seen[0]["value"], json!({"x": 1}));
        assert_eq!(seen[1]["value_base64"], "AAE=");

        // Bad frames: each gets an error frame, and the socket keeps working.
        let bad = [
            ("not json", "invalid_json"),
            (r#"{"type":"dance"}"#, "invalid_frame"),
            (r#"{"type":"credit","records":-4}"#, "invalid_frame"),
            (r#"{"type":"commit","offsets":[]}"#, "not_a_group_stream"),
        ];
        for (text, code) in bad {
            ws.send(Message::Text(text.into())).await.unwrap();
            let f = frame(&mut ws).await;
            assert_eq!((f["type"].as_str(), f["code"].as_str()), (Some("error"), Some(code)), "{text}");
        }
        send(&mut ws, json!({"type": "produce", "id": 2, "topic": "missing", "records": [{"value": 1}]})).await;
        let f = frame(&mut ws).await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str(), f["id"].as_u64()),
            (Some("error"), Some("unknown_topic"), Some(2))
        );
        send(&mut ws, json!({"type": "produce", "id": 3, "records": [{"value_base64": "%%"}]})).await;
        let f = frame(&mut ws).await;
        assert_eq!((f["code"].as_str(), f["id"].as_u64()), (Some("invalid_record"), Some(3)));
        ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
        assert_eq!(frame(&mut ws).await["code"], "binary_frames_unsupported");
        send(&mut ws, json!({"type": "produce", "id": 4, "acks": "leader", "records": [{"value": "still here"}]}))
            .await;
        let mut ok = false;
        for _ in 0..3 {
            let f = frame(&mut ws).await;
            if f["type"] == "produced" {
                assert_eq!(f["offsets"][0]["offset"], 2);
                ok = true;
                break;
            }
        }
        assert!(ok, "the socket is still usable after bad frames");
    })
    .await;
}

#[tokio::test]
async fn credit_bounds_what_a_client_receives() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("c", 1).await;
        let mut ws = connect(&app, "/v1/topics/c/stream?from=earliest&credit=100&max_records=30").await;
        for _ in 0..10 {
            let batch: Vec<Value> = (0..100).map(|i| json!({"value": i})).collect();
            app.produce("c", json!(batch)).await;
        }
        let got = records(&mut ws, 100).await;
        assert_eq!(got.len(), 100, "exactly the window");
        // The server holds the other 900 back: it counts the stream as stalled on
        // credit, having sent exactly the window.
        app.wait_for_metric("gregor_ws_credit_stalled", 1.0).await;
        assert_eq!(app.metric("gregor_ws_records_sent_total").await, 100.0, "nothing beyond the credit");
        send(&mut ws, json!({"type": "credit", "records": 50})).await;
        let more = records(&mut ws, 50).await;
        assert_eq!(more.len(), 50);
        assert_eq!(more[0]["offset"], 100);
        app.wait_for_metric("gregor_ws_credit_stalled", 1.0).await;
        assert_eq!(app.metric("gregor_ws_records_sent_total").await, 150.0, "nothing beyond the new credit");
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_keeps_server_memory_bounded() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("flood", 1).await;
        // Small frames; a client that never reads.
        let _silent = connect(&app, "/v1/topics/flood/stream?from=earliest&max_bytes=65536").await;
        let value = "v".repeat(1000);
        // 30 MB in all: well beyond what loopback socket buffers can hold (about 10 MB at most).
        for _ in 0..300 {
            let batch: Vec<Value> = (0..100).map(|_| json!({"value": value})).collect();
            app.produce("flood", json!(batch)).await;
        }
        // Wait until the server is stuck on a frame the client never reads: a send
        // in flight, and the count of records sent no longer moving.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last = -1.0;
        loop {
            let sent = app.metric("gregor_ws_records_sent_total").await;
            if app.metric("gregor_ws_buffered_bytes").await > 0.0 && sent == last {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the server never blocked on the silent client");
            last = sent;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let gauge = |name: &str| -> i64 {
            metrics
                .lines()
                .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in {metrics}"))
        };
        let peak = gauge("gregor_ws_buffered_bytes_peak");
        let sent = gauge("gregor_ws_records_sent_total");
        assert!(peak > 0, "frames were sent");
        // One frame in flight at most: 64 KiB of records plus JSON framing.
        assert!(peak < 200_000, "buffered bytes stay bounded: {peak}");
        assert!(sent < 20_000, "the server stopped reading the log for the client: {sent} of 30000 sent");
        assert_eq!(gauge("gregor_ws_connections"), 1);
    })
    .await;
}

/// Three group sockets split a topic; one closes; the others get new assignments
/// and together receive every record at least once, resuming at committed offsets.
#[tokio::test]
async fn group_sockets_split_rebalance_and_resume_at_committed_offsets() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| {
            c.groups.min_session_timeout_ms = 100;
            c.session_check_interval = Duration::from_millis(20);
        })
        .await;
        app.create_topic("gs", 6).await;
        for p in 0..6 {
            let batch: Vec<Value> = (0..5).map(|i| json!({"value": format!("{p}-{i}"), "partition": p})).collect();
            app.produce("gs", json!(batch)).await;
        }
        let path = "/v1/groups/wsg/stream?topics=gs&auto_offset_reset=earliest&session_timeout_ms=3000";
        let mut socks = Vec::new();
        for _ in 0..3 {
            let mut ws = connect(&app, path).await;
            let f = frame(&mut ws).await;
            assert_eq!(f["type"], "assignment");
            socks.push(ws);
        }
        // Each socket consumes and commits what it gets until the group is balanced and all 30 are seen.
        let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut owned: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); 3];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline && (seen.len() < 30 || owned.iter().any(|o| o.len() != 2)) {
            for (i, ws) in socks.iter_mut().enumerate() {
                let Some(f) = next_frame(ws, Duration::from_millis(100)).await else { continue };
                match f["type"].as_str().unwrap() {
                    "assignment" => {
                        owned[i] = f["assignment"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .flat_map(|t| t["partitions"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()))
                            .collect();
                    }
                    "records" => {
                        let recs = f["records"].as_array().unwrap();
                        let mut next: BTreeMap<u64, u64> = BTreeMap::new();
                        for r in recs {
                            let (p, o) = (r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap());
                            seen.insert((p, o));
                            next.insert(p, o + 1);
                        }
                        let offsets: Vec<Value> =
                            next.iter().map(|(p, o)| json!({"topic": "gs", "partition": p, "offset": o})).collect();
                        send(ws, json!({"type": "commit", "offsets": offsets})).await;
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(seen.len(), 30, "every record delivered");
        assert!(owned.iter().all(|o| o.len() == 2), "balanced: {owned:?}");
        let all: BTreeSet<u64> = owned.iter().flatten().copied().collect();
        assert_eq!(all.len(), 6, "no partition owned twice");

        // Socket 2 closes. Its partitions move to the others; new records there arrive
        // (and nothing before the committed offsets is redelivered).
        let gone = owned[2].clone();
        let mut closing = socks.pop().unwrap();
        closing.close(None).await.unwrap();
        for p in &gone {
            app.produce("gs", json!([{"value": "after", "partition": p}])).await;
        }
        let mut after: Vec<(u64, u64)> = Vec::new();
        let mut reassigned = [false, false];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline && (after.len() < gone.len() || !reassigned.iter().all(|r| *r)) {
            for (i, ws) in socks.iter_mut().enumerate() {
                let Some(f) = next_frame(ws, Duration::from_millis(100)).await else { continue };
                match f["type"].as_str().unwrap() {
                    "assignment" => reassigned[i] = true,
                    "records" => {
                        for r in f["records"].as_array().unwrap() {
                            let (p, o) = (r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap());
                            if gone.contains(&p) {
                                after.push((p, o));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        assert!(reassigned.iter().all(|r| *r), "both remaining sockets got a new assignment frame");
        after.sort();
        let want: Vec<(u64, u64)> = gone.iter().map(|p| (*p, 5)).collect();
        assert_eq!(after, want, "the moved partitions resume at the committed offset 5");
    })
    .await;
}

#[tokio::test]
async fn acks_commit_only_the_contiguous_prefix() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("ak", 1).await;
        let batch: Vec<Value> = (0..5).map(|i| json!({"value": i})).collect();
        app.produce("ak", json!(batch)).await;
        let mut ws = connect(&app, "/v1/groups/akg/stream?topics=ak&auto_offset_reset=earliest").await;
        assert_eq!(frame(&mut ws).await["type"], "assignment");
        let recs = records(&mut ws, 5).await;
        assert_eq!(recs.len(), 5);
        let ack = |o: u64| json!({"type": "ack", "topic": "ak", "partition": 0, "offset": o});
        // Out of order: 1, 3, 2 commit nothing (0 is missing)...
        for o in [1, 3, 2] {
            send(&mut ws, ack(o)).await;
        }
        // Frames are handled in order, and an ack that commits answers before the
        // next frame is read: so if the answer to this empty commit comes first,
        // acks 1, 3 and 2 committed nothing.
        send(&mut ws, json!({"type": "commit", "offsets": []})).await;
        assert_eq!(frame(&mut ws).await, json!({"type": "committed", "offsets": []}), "no commit without offset 0");
        let (_, g) = app.get("/v1/groups/akg").await;
        assert!(g["offsets"][0]["committed_offset"].is_null());
        // ...then 0 commits the prefix 0..=3, i.e. offset 4.
        send(&mut ws, ack(0)).await;
        let f = frame(&mut ws).await;
        assert_eq!(f["type"], "committed");
        assert_eq!(f["offsets"][0]["offset"], 4);
        let (_, g) = app.get("/v1/groups/akg").await;
        assert_eq!(g["offsets"][0]["committed_offset"], 4);
        send(&mut ws, ack(9)).await;
        assert_eq!(frame(&mut ws).await["code"], "ack_not_delivered");
        send(&mut ws, json!({"type": "ack", "records": [{"topic": "ak", "partition": 0, "offset": 4}]})).await;
        assert_eq!(frame(&mut ws).await["offsets"][0]["offset"], 5);
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_a_close_frame() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("bye", 1).await;
        let mut ws = connect(&app, "/v1/topics/bye/stream").await;
        let stopping = tokio::spawn(app.stop());
        let mut code = None;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            if let Message::Close(Some(f)) = msg {
                code = Some(u16::from(f.code));
                break;
            }
        }
        assert_eq!(code, Some(1001), "going away");
        stopping.await.unwrap();
    })
    .await;
}

/// A client that stops answering pings is disconnected, and its group membership ends with it.
#[tokio::test]
async fn unresponsive_clients_are_detected_and_cleaned_up() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.ws_ping_interval = Duration::from_millis(100)).await;
        app.create_topic("dead", 2).await;
        // Never read: tungstenite answers pings only while reading.
        let _mute = connect(&app, "/v1/groups/deadg/stream?topics=dead&session_timeout_ms=60000").await;
        let (_, g) = app.get("/v1/groups/deadg").await;
        assert_eq!(g["members"].as_array().unwrap().len(), 1);
        assert!(
            crate::helpers::eventually(Duration::from_secs(10), || async {
                // Empty, or already removed (a group that never committed holds nothing).
                let (status, g) = app.get("/v1/groups/deadg").await;
                status == 404 || g["members"].as_array().is_some_and(|m| m.is_empty())
            })
            .await,
            "the member left with its dead socket, long before its 60 s session expired"
        );
        let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.lines().any(|l| l == "gregor_ws_connections 0"), "{metrics}");
    })
    .await;
}

/// Not a test: measures produce → frame latency at a modest rate and prints it.
/// Run with `cargo test --release --test api ws::latency -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn latency_report() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("lat", 1).await;
        let mut ws = connect(&app, "/v1/topics/lat/stream").await;
        let n = 2000u64;
        let client = app.client.clone();
        let url = app.url("/v1/topics/lat/records?acks=leader");
        let sent: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>> = Default::default();
        let s2 = sent.clone();
        let producer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1000));
            for i in 0..n {
                tick.tick().await;
                s2.lock().unwrap().push(std::time::Instant::now());
                client.post(&url).json(&json!({"records": [{"value": i}]})).send().await.unwrap();
            }
        });
        let mut lat = Vec::new();
        while (lat.len() as u64) < n {
            let f = frame(&mut ws).await;
            let now = std::time::Instant::now();
            for r in f["records"].as_array().unwrap() {
                let i = r["value"].as_u64().unwrap() as usize;
                lat.push(now - sent.lock().unwrap()[i]);
            }
        }
        producer.await.unwrap();
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        eprintln!(
            "produce (HTTP, acks=leader) → WebSocket frame, {n} records at ~1000/s: p50 {:?} p99 {:?} max {:?}",
            p(0.5),
            p(0.99),
            lat[lat.len() - 1]
        );
    })
    .await;
}

/// A group member that stops granting credit while records wait leaves the group
/// after `max_poll_interval_ms` (4408), so its partitions move; one that grants
/// credit slowly, but within the interval, stays however long that takes.
#[tokio::test]
async fn a_member_holding_records_back_leaves_after_max_poll_interval() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("held", 1).await;
        let batch: Vec<Value> = (0..20).map(|i| json!({"value": i})).collect();
        app.produce("held", json!(batch)).await;
        let base = "/v1/groups/hg/stream?topics=held&auto_offset_reset=earliest&credit=1&max_poll_interval_ms=1000";

        // Slow but consuming: one credit every 400 ms for 2.4 s, well past the interval.
        let mut slow = connect(&app, base).await;
        assert_eq!(frame(&mut slow).await["type"], "assignment");
        let mut got = records(&mut slow, 1).await.len();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            send(&mut slow, json!({"type": "credit", "records": 1})).await;
            got += records(&mut slow, 1).await.len();
        }
        assert_eq!(got, 7);
        let (_, g) = app.get("/v1/groups/hg").await;
        assert_eq!(g["members"].as_array().unwrap().len(), 1, "a slow member stays: {g}");

        // Stalled: no more credit. The member leaves and the socket closes with 4408.
        let started = std::time::Instant::now();
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        let close = close.expect("a close frame with a code");
        assert_eq!(u16::from(close.code), 4408, "{close:?}");
        assert!(started.elapsed() >= Duration::from_millis(500), "not before the interval");
        let (status, g) = app.get("/v1/groups/hg").await;
        // Empty, or already removed (a group that never committed holds nothing).
        assert!(status == 404 || g["members"].as_array().unwrap().is_empty(), "{g}");

        let (status, problem) = app.get("/v1/groups/hg/stream?topics=held&max_poll_interval_ms=10").await;
        assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_parameter")), "{problem}");
    })
    .await;
}

/// With many subscribers, each one's frames shrink so that all frames together
/// stay within the server's budget (32 MiB): 1 MiB frames for a thousand
/// stalled subscribers got the server OOM-killed in a 256 MiB cgroup.
#[tokio::test]
async fn frames_shrink_as_subscribers_grow() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("wide", 1).await;
        let value = "v".repeat(10_000);
        let batch: Vec<Value> = (0..100).map(|_| json!({"value": value})).collect();
        app.produce("wide", json!(batch)).await;
        let mut alone = connect(&app, "/v1/topics/wide/stream?from=earliest").await;
        assert_eq!(first_records_frame(&mut alone).await, 100, "one subscriber: the whole MiB in one frame");
        drop(alone);
        app.wait_for_metric("gregor_ws_connections", 0.0).await;
        // Two thousand sockets (both ends in this process) need more than the usual 1,024 files.
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        let mut crowd = Vec::new();
        for _ in 0..999 {
            crowd.push(connect(&app, "/v1/topics/wide/stream?from=latest").await);
        }
        let mut last = connect(&app, "/v1/topics/wide/stream?from=earliest").await;
        let n = first_records_frame(&mut last).await;
        // 32 MiB / 1,000 connections = 33 KiB: three 10 KB records (at least one).
        assert!((1..=4).contains(&n), "a frame of {n} records among 1,000 subscribers");
    })
    .await;
}

/// The number of records in the first `records` frame.
async fn first_records_frame(ws: &mut Ws) -> usize {
    loop {
        let f = frame(ws).await;
        if f["type"] == "records" {
            return f["records"].as_array().unwrap().len();
        }
    }
}

/// A group member whose client reads slowly, so that a send waits on its full
/// socket for longer than its session, stays a member: the waiting send keeps
/// the session alive. Once the client reads again, it gets everything.
#[tokio::test]
async fn a_slow_reader_keeps_its_session_while_a_send_waits() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| {
            c.groups.min_session_timeout_ms = 100;
            c.session_check_interval = Duration::from_millis(20);
            c.ws_ping_interval = Duration::from_secs(30);
        })
        .await;
        app.create_topic("slow", 1).await;
        // 24 MB: far more than the sockets' buffers hold.
        let value = "v".repeat(100_000);
        for _ in 0..12 {
            let batch: Vec<Value> = (0..20).map(|_| json!({"value": value})).collect();
            app.produce("slow", json!(batch)).await;
        }
        let mut ws =
            connect(&app, "/v1/groups/sg/stream?topics=slow&auto_offset_reset=earliest&session_timeout_ms=1000").await;
        assert_eq!(frame(&mut ws).await["type"], "assignment");
        // Three sessions without reading: the server's send waits on the full socket.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, g) = app.get("/v1/groups/sg").await;
        assert_eq!(g["members"].as_array().unwrap().len(), 1, "still a member: {g}");
        assert_eq!(records(&mut ws, 240).await.len(), 240);
    })
    .await;
}
