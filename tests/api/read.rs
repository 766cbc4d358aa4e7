use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn long_poll_returns_when_a_record_is_appended() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("lp", 1).await;
        let client = app.client.clone();
        let url = app.url("/v1/topics/lp/partitions/0/records?offset=0&wait_ms=30000");
        let started = Instant::now();
        let poll =
            tokio::spawn(
                async move { client.get(&url).send().await.unwrap().json::<serde_json::Value>().await.unwrap() },
            );
        app.wait_for_metric("gregor_reads_waiting", 1.0).await;
        assert!(!poll.is_finished(), "the long-poll waits while the log is empty");
        app.produce("lp", json!([{"value": "wake"}])).await;
        let body = poll.await.unwrap();
        // Had the poll not been woken by the append, it would return empty after 30 s.
        assert_eq!(body["records"][0]["value"], "wake");
        assert!(started.elapsed() < Duration::from_secs(25));
    })
    .await;
}

#[tokio::test]
async fn long_poll_times_out_empty() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("lp", 1).await;
        let (status, body) = app.get("/v1/topics/lp/partitions/0/records?offset=0&wait_ms=100").await;
        assert_eq!(status, 200);
        assert_eq!(body["records"], json!([]));
        assert_eq!(body["next_offset"], 0);
        assert_eq!(body["end_offset"], 0);
    })
    .await;
}

#[tokio::test]
async fn limits_and_paging() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("pg", 1).await;
        let records: Vec<_> = (0..50).map(|i| json!({"value": "x".repeat(100), "key": i.to_string()})).collect();
        for chunk in records.chunks(7) {
            app.produce("pg", json!(chunk)).await;
        }
        let (_, body) = app.get("/v1/topics/pg/partitions/0/records?offset=3&limit=10").await;
        let recs = body["records"].as_array().unwrap();
        assert_eq!(recs.len(), 10);
        assert_eq!(recs[0]["offset"], 3);
        assert_eq!(recs[9]["offset"], 12);
        assert_eq!(body["next_offset"], 13);
        assert_eq!(body["end_offset"], 50);

        // max_bytes bounds the answer but always returns at least one record.
        let (_, body) = app.get("/v1/topics/pg/partitions/0/records?offset=0&max_bytes=250").await;
        assert_eq!(body["records"].as_array().unwrap().len(), 2);
        let (_, body) = app.get("/v1/topics/pg/partitions/0/records?offset=0&max_bytes=1").await;
        assert_eq!(body["records"].as_array().unwrap().len(), 1);

        // Without an offset, reading starts at the beginning.
        let (_, body) = app.get("/v1/topics/pg/partitions/0/records?limit=1").await;
        assert_eq!(body["records"][0]["offset"], 0);

        // Reading at the end is empty, past it is 416 with the valid range.
        let (status, body) = app.get("/v1/topics/pg/partitions/0/records?offset=50").await;
        assert_eq!(status, 200);
        assert_eq!(body["records"], json!([]));
        let (status, body) = app.get("/v1/topics/pg/partitions/0/records?offset=51").await;
        assert_eq!(status, 416);
        assert_eq!(body["code"], "offset_out_of_range");
        assert_eq!(body["beginning_offset"], 0);
        assert_eq!(body["end_offset"], 50);

        let all = app.read_all("pg", 0, 0).await;
        assert_eq!(all.len(), 50);
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r["key"], i.to_string());
        }
    })
    .await;
}

#[tokio::test]
async fn offset_for_timestamp() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        // These timestamps are from 1970: keep them from the default 7-day retention.
        app.create_topic_with("ts", 2, json!({"retention_ms": -1})).await;
        app.produce(
            "ts",
            json!([{"value": 0, "timestamp": 1000, "partition": 1}, {"value": 1, "timestamp": 2000, "partition": 1}]),
        )
        .await;
        app.produce(
            "ts",
            json!([{"value": 2, "timestamp": 1500, "partition": 1}, {"value": 3, "timestamp": 3000, "partition": 1}]),
        )
        .await;
        let q = |ts: u64| format!("/v1/topics/ts/partitions/1/offsets?timestamp={ts}");
        let (status, body) = app.get(&q(0)).await;
        assert_eq!(status, 200);
        assert_eq!(body["offset"], 0);
        assert_eq!(body["timestamp"], 1000);
        let (_, body) = app.get(&q(1001)).await;
        assert_eq!(body["offset"], 1);
        assert_eq!(body["timestamp"], 2000);
        let (_, body) = app.get(&q(2001)).await;
        assert_eq!(body["offset"], 3, "a later record with an older timestamp is skipped");
        let (_, body) = app.get(&q(3001)).await;
        assert_eq!(body["offset"], 4, "past every record: the end offset");
        assert!(body["timestamp"].is_null());
        let (_, body) = app.get("/v1/topics/ts/partitions/0/offsets?timestamp=0").await;
        assert_eq!(body["offset"], 0);
        assert!(body["timestamp"].is_null());
        let (status, body) = app.get("/v1/topics/ts/partitions/1/offsets").await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], "invalid_parameter");
    })
    .await;
}
