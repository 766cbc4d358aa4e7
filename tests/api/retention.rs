use std::time::Duration;

use serde_json::json;

use crate::helpers::{eventually, now_ms, spawn_app_with};

#[tokio::test]
async fn retention_by_time_moves_the_beginning_offset() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.retention_check_interval = Duration::from_millis(50)).await;
        app.create_topic_with("old", 1, json!({"retention_ms": 60_000})).await;
        let hour_ago = now_ms() - 3_600_000;
        for i in 0..5 {
            app.produce("old", json!([{"value": i, "timestamp": hour_ago + i}])).await;
        }
        let fresh = app.produce("old", json!([{"value": "new"}, {"value": "newer"}])).await;
        assert_eq!(fresh[0]["offset"], 5);
        assert!(
            eventually(Duration::from_secs(10), || async { app.partition("old", 0).await["beginning_offset"] == 5 })
                .await,
            "beginning offset should move past the expired records"
        );
        assert_eq!(app.partition("old", 0).await["end_offset"], 7, "offsets never change");
        let (status, body) = app.get("/v1/topics/old/partitions/0/records?offset=0").await;
        assert_eq!(status, 416);
        assert_eq!(body["beginning_offset"], 5);
        let left = app.read_all("old", 0, 5).await;
        assert_eq!(left.len(), 2);
        assert_eq!(left[0]["value"], "new");

        // Survives a restart: the beginning offset stays, new offsets continue.
        let app = app.restart().await;
        assert_eq!(app.partition("old", 0).await["beginning_offset"], 5);
        let offs = app.produce("old", json!([{"value": "x"}])).await;
        assert_eq!(offs[0]["offset"], 7);
    })
    .await;
}

#[tokio::test]
async fn retention_expiring_everything_keeps_offsets() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.retention_check_interval = Duration::from_millis(50)).await;
        app.create_topic_with("gone", 1, json!({"retention_ms": 1000})).await;
        app.produce("gone", json!([{"value": 1, "timestamp": 10}, {"value": 2, "timestamp": 20}])).await;
        assert!(
            eventually(Duration::from_secs(10), || async { app.partition("gone", 0).await["beginning_offset"] == 2 })
                .await
        );
        assert!(app.read_all("gone", 0, 2).await.is_empty());
        let app = app.restart().await;
        let p = app.partition("gone", 0).await;
        assert_eq!((p["beginning_offset"].as_u64(), p["end_offset"].as_u64()), (Some(2), Some(2)));
        assert_eq!(app.produce("gone", json!([{"value": 3}])).await[0]["offset"], 2, "offsets are never reused");
    })
    .await;
}

#[tokio::test]
async fn retention_by_size_keeps_the_newest_batches() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.retention_check_interval = Duration::from_millis(50)).await;
        app.create_topic_with("big", 1, json!({"retention_ms": -1, "retention_bytes": 3000})).await;
        for i in 0..10 {
            // One batch of ~1 KB per request.
            app.produce("big", json!([{"value": "x".repeat(1000), "key": i.to_string()}])).await;
        }
        assert!(
            eventually(Duration::from_secs(10), || async {
                app.partition("big", 0).await["beginning_offset"].as_u64().unwrap() >= 7
            })
            .await
        );
        let left = app.read_all("big", 0, app.partition("big", 0).await["beginning_offset"].as_u64().unwrap()).await;
        assert!(!left.is_empty() && left.len() <= 3, "at most retention_bytes kept: {}", left.len());
        assert_eq!(left.last().unwrap()["key"], "9");
    })
    .await;
}

#[tokio::test]
async fn a_deleted_topics_space_comes_back_with_nothing_written_after() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.retention_check_interval = Duration::from_millis(50)).await;
        app.create_topic("bulky", 2).await;
        // 40 batches of 100 records of 1 kB: about 4 MB, in blob files and the memtable.
        for i in 0..40u64 {
            let records: Vec<_> = (0..100u64)
                .map(|j| json!({"value": format!("{:0>1000}", (i * 100 + j).wrapping_mul(0x9E37_79B9_7F4A_7C15))}))
                .collect();
            app.produce("bulky", json!(records)).await;
        }
        // The store's size: SST and blob files, memtables.
        let before = app.metric("gregor_store_bytes").await;
        assert!(before > 4e6, "store holds {before} bytes");
        let res = app.client.delete(app.url("/v1/topics/bulky")).send().await.unwrap();
        assert_eq!(res.status(), 204);
        // Nothing is written after the deletion, so only gregor's own compaction of the
        // deleted keys (on the retention tick) gives the space back.
        let shrunk =
            eventually(Duration::from_secs(10), || async { app.metric("gregor_store_bytes").await * 10.0 < before })
                .await;
        assert!(shrunk, "store bytes {before} before deleting, {} after", app.metric("gregor_store_bytes").await);
    })
    .await;
}
