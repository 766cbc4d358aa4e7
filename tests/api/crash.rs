//! A server *process* killed with SIGKILL while clients produce: every record it
//! acknowledged (acks=leader or acks=all) is present at its offset after restart.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn start_process(dir: &std::path::Path) -> (Child, String) {
    start_process_with_kafka(dir, "127.0.0.1:0").await
}

/// Starts the binary on `dir` with its Kafka listener on `kafka`; answers its REST base URL.
async fn start_process_with_kafka(dir: &std::path::Path, kafka: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gregor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--kafka-listen", kafka, "--data-dir"])
        .arg(dir)
        .env("GREGOR_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.trim().to_owned();
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server prints its address");
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

#[tokio::test]
async fn acknowledged_records_survive_sigkill() {
    crate::helpers::within(async {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, base) = start_process(dir.path()).await;
        let client = reqwest::Client::new();
        let res = client
            .post(format!("{base}/v1/topics"))
            .json(&json!({"name": "crash", "partitions": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);

        // The kill comes once producers have had 20,000 records acknowledged, mid-stream.
        let acked_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut producers = Vec::new();
        for w in 0..8 {
            let client = client.clone();
            let acked_so_far = acked_so_far.clone();
            let acks = if w % 2 == 0 { "leader" } else { "all" };
            let url = format!("{base}/v1/topics/crash/records?acks={acks}");
            producers.push(tokio::spawn(async move {
                let mut acked: Vec<((u64, u64), String)> = Vec::new();
                for n in 0..100_000u64 {
                    let records: Vec<Value> = (0..10)
                        .map(|i| json!({"key": format!("{w}-{n}-{i}"), "value": format!("{w}-{n}-{i}")}))
                        .collect();
                    let res = match client.post(&url).json(&json!({"records": records})).send().await {
                        Ok(r) if r.status() == 200 => r,
                        _ => break,
                    };
                    let Ok(body) = res.json::<Value>().await else { break };
                    for (i, o) in body["offsets"].as_array().unwrap().iter().enumerate() {
                        acked.push((
                            (o["partition"].as_u64().unwrap(), o["offset"].as_u64().unwrap()),
                            format!("{w}-{n}-{i}"),
                        ));
                    }
                    acked_so_far.fetch_add(10, std::sync::atomic::Ordering::Relaxed);
                }
                acked
            }));
        }
        let enough = crate::helpers::eventually(Duration::from_secs(60), || async {
            acked_so_far.load(std::sync::atomic::Ordering::Relaxed) >= 20_000
        })
        .await;
        assert!(enough, "producers got 20,000 acknowledgements before the kill");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        let mut acked = HashMap::new();
        for p in producers {
            for (pos, v) in p.await.unwrap() {
                assert!(acked.insert(pos, v).is_none(), "an offset was acknowledged twice");
            }
        }
        assert!(acked.len() > 100, "producers got acknowledgements before the kill ({})", acked.len());

        let (_child, base) = start_process(dir.path()).await;
        let mut stored = HashMap::new();
        for p in 0..3u64 {
            let mut next = 0;
            loop {
                let body: Value = client
                    .get(format!("{base}/v1/topics/crash/partitions/{p}/records?offset={next}&limit=10000"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let recs = body["records"].as_array().unwrap();
                if recs.is_empty() {
                    break;
                }
                for r in recs {
                    stored.insert((p, r["offset"].as_u64().unwrap()), r["value"].as_str().unwrap().to_owned());
                }
                next = body["next_offset"].as_u64().unwrap();
            }
        }
        for (pos, v) in &acked {
            assert_eq!(stored.get(pos), Some(v), "acknowledged record at {pos:?} survives");
        }
        // And new writes continue after the recovered end offsets.
        let res = client
            .post(format!("{base}/v1/topics/crash/records"))
            .json(&json!({"records": [{"value": "after", "partition": 0}]}))
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        let max0 = stored.keys().filter(|(p, _)| *p == 0).map(|(_, o)| *o).max().map_or(0, |m| m + 1);
        assert_eq!(body["offsets"][0]["offset"].as_u64().unwrap(), max0);
    })
    .await;
}

/// An idempotent librdkafka producer keeps producing while gregor is killed with SIGKILL
/// and started again on the same Kafka port: it retries what was in flight, and the
/// partition holds every value exactly once, in order (no duplicate, no gap).
#[tokio::test]
async fn an_idempotent_producer_retrying_across_sigkill_writes_each_record_once() {
    crate::helpers::within(async {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let kafka = format!("127.0.0.1:{port}");
        let (mut child, base) = start_process_with_kafka(dir.path(), &kafka).await;
        let client = reqwest::Client::new();
        let res = client.post(format!("{base}/v1/topics")).json(&json!({"name": "killed", "partitions": 1})).send();
        assert_eq!(res.await.unwrap().status(), 201);
        const COUNT: u64 = 20_000;
        let producer = {
            let kafka = kafka.clone();
            tokio::spawn(
                async move { crate::kafka::clients_at(&kafka, "idempotent_stream", &[&COUNT.to_string()]).await },
            )
        };
        let end = |base: String| {
            let client = client.clone();
            async move {
                let res = client.get(format!("{base}/v1/topics/killed/partitions/0")).send().await;
                match res {
                    Ok(r) => r.json::<Value>().await.ok().and_then(|b| b["end_offset"].as_u64()).unwrap_or(0),
                    Err(_) => 0,
                }
            }
        };
        let midway =
            crate::helpers::eventually(Duration::from_secs(60), || async { end(base.clone()).await >= 3_000 }).await;
        assert!(midway, "the producer got going");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        let (_child, base) = start_process_with_kafka(dir.path(), &kafka).await;
        let out = producer.await.unwrap();
        assert_eq!(out["delivered"], COUNT);
        let mut values = Vec::new();
        while (values.len() as u64) < COUNT + 1 {
            let url = format!("{base}/v1/topics/killed/partitions/0/records?offset={}&limit=10000", values.len());
            let body: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            let recs = body["records"].as_array().unwrap();
            if recs.is_empty() {
                break;
            }
            // A Kafka value "17" is JSON text: REST shows it as the number.
            values.extend(recs.iter().map(|r| r["value"].as_u64().unwrap()));
        }
        let want: Vec<u64> = (0..COUNT).collect();
        if values != want {
            let dup = values.windows(2).find(|w| w[1] <= w[0]);
            let gap = values.windows(2).find(|w| w[1] > w[0] + 1);
            panic!("{} values stored; first duplicate {dup:?}, first gap {gap:?}", values.len());
        }
    })
    .await;
}
