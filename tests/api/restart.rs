use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn everything_survives_a_restart_and_offsets_continue() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic_with("keep", 3, json!({"retention_ms": -1, "max_message_bytes": 5000})).await;
        app.create_topic("other", 1).await;
        for i in 0..20 {
            app.produce("keep", json!([{"key": format!("k{i}"), "value": {"i": i}, "timestamp": 1000 + i}])).await;
        }
        app.produce("other", json!([{"value_base64": "AAEC"}])).await;
        let mut before = Vec::new();
        for p in 0..3 {
            before.push(app.read_all("keep", p, 0).await);
        }

        let app = app.restart().await;
        let (_, body) = app.get("/v1/topics/keep").await;
        assert_eq!(body["partition_count"], 3);
        assert_eq!(body["config"]["retention_ms"], -1);
        assert_eq!(body["config"]["max_message_bytes"], 5000);
        for p in 0..3 {
            assert_eq!(app.read_all("keep", p, 0).await, before[p as usize]);
            assert_eq!(app.partition("keep", p).await["end_offset"], before[p as usize].len());
        }
        assert_eq!(app.read_all("other", 0, 0).await[0]["value_base64"], "AAEC");
        let (_, body) = app.get("/v1/topics/keep/partitions/0/offsets?timestamp=1005").await;
        assert!(body["timestamp"].as_u64().unwrap() >= 1005);

        let offs = app.produce("keep", json!([{"value": "after", "partition": 1}])).await;
        assert_eq!(offs[0]["offset"], before[1].len(), "offsets continue where they stopped");

        // Topic ids are never reused: a topic created after restart does not see old data.
        let app = app.restart().await;
        app.create_topic("fresh", 1).await;
        assert!(app.read_all("fresh", 0, 0).await.is_empty());
        assert_eq!(app.read_all("keep", 1, 0).await.last().unwrap()["value"], "after");
    })
    .await;
}

/// A data directory written by gregor before its batches were Kafka's RecordBatch v2
/// (tests/fixtures/datadir-v1, written by commit 50b440e: every form of key, value and header)
/// opens, is migrated, and reads back exactly what that version answered, then takes new records.
#[tokio::test]
async fn a_data_directory_written_before_record_batch_v2_keeps_every_record() {
    crate::helpers::within(async {
        let fixture = crate::helpers::project_root().join("tests/fixtures/datadir-v1");
        let expected: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(crate::helpers::project_root().join("tests/fixtures/datadir-v1.expected.json"))
                .unwrap(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&fixture).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        let app = crate::helpers::spawn_app_in(dir).await;
        for p in 0..3u32 {
            let want = expected[p.to_string()].as_array().unwrap();
            assert!(!want.is_empty());
            assert_eq!(&app.read_all("legacy", p, 0).await, want, "partition {p}");
            assert_eq!(app.partition("legacy", p).await["end_offset"], want.len());
        }
        let offs = app.produce("legacy", json!([{"value": {"new": true}, "partition": 2}])).await;
        assert_eq!(offs[0]["offset"], expected["2"].as_array().unwrap().len());
        // A second start finds the store migrated and everything still there.
        let app = app.restart().await;
        let p2 = app.read_all("legacy", 2, 0).await;
        assert_eq!(&p2[..p2.len() - 1], expected["2"].as_array().unwrap().as_slice());
        assert_eq!(p2.last().unwrap()["value"], json!({"new": true}));
    })
    .await;
}
