use std::collections::HashMap;

use serde_json::{Value, json};

use crate::helpers::{eventually, spawn_app};

#[tokio::test]
async fn binary_text_and_json_round_trip() {
    crate::helpers::within(async {
    let app = spawn_app().await;
    // One record is from 1970: keep it from the default 7-day retention.
    app.create_topic_with("rt", 1, json!({"retention_ms": -1})).await;
    let records = json!([
        {"key_base64": "AP8BAg==", "value_base64": "3q2+7w==",
         "headers": [{"name": "bin", "value_base64": "AAE="}, {"name": "txt", "value": "hé"}, {"name": "txt", "value": null}]},
        {"key": "user-1", "value": {"nested": [1, 2.5, "x", null], "unicode": "\u{e9}\u{1f600}"}},
        {"key": {"composite": 1}, "value": "plain \"text\"\n"},
        {"value": [1, 2, 3], "timestamp": 1234},
        {"key": "tombstone"},
        {"value": 42},
    ]);
    let offs = app.produce("rt", records.clone()).await;
    assert_eq!(offs.len(), 6);
    for (i, o) in offs.iter().enumerate() {
        assert_eq!(o["partition"], 0);
        assert_eq!(o["offset"], i);
        assert!(o["timestamp"].as_u64().unwrap() > 0);
    }
    assert_eq!(offs[3]["timestamp"], 1234);

    let got = app.read_all("rt", 0, 0).await;
    assert_eq!(got.len(), 6);
    assert_eq!(got[0]["key_base64"], "AP8BAg==");
    assert_eq!(got[0]["value_base64"], "3q2+7w==");
    assert_eq!(
        got[0]["headers"],
        json!([{"name": "bin", "value_base64": "AAE="}, {"name": "txt", "value": "hé"}, {"name": "txt", "value": null}])
    );
    assert_eq!(got[1]["key"], "user-1");
    assert_eq!(got[1]["value"], records[1]["value"]);
    assert_eq!(got[2]["key"], json!({"composite": 1}));
    assert_eq!(got[2]["value"], "plain \"text\"\n");
    assert_eq!(got[3]["value"], json!([1, 2, 3]));
    assert_eq!(got[3]["timestamp"], 1234);
    assert_eq!(got[4]["value"], Value::Null);
    assert_eq!(got[5]["value"], 42);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r["topic"], "rt");
        assert_eq!(r["partition"], 0);
        assert_eq!(r["offset"], i);
        assert_eq!(r["timestamp"], offs[i]["timestamp"]);
    }

    // encoding=base64 shows every byte string as base64, including the UTF-8 text.
    let (status, body) = app.get("/v1/topics/rt/partitions/0/records?offset=1&limit=1&encoding=base64").await;
    assert_eq!(status, 200);
    let r = &body["records"][0];
    assert_eq!(r["key_base64"], "dXNlci0x"); // "user-1"
    assert!(r.get("key").is_none());
    assert!(r["value_base64"].is_string());
    })
    .await;
}

#[tokio::test]
async fn keyed_records_follow_kafkas_murmur2_partitioner() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("keys", 10).await;
        let offs = app
            .produce("keys", json!([{"key": "foobar", "value": 1}, {"key": "abc", "value": 2}, {"key": "21"}]))
            .await;
        assert_eq!(offs[0]["partition"], 6);
        assert_eq!(offs[1]["partition"], 7);
        // (murmur2("21") & 0x7fffffff) % 10 = (-973932308 & 0x7fffffff) % 10 = 1173551340 % 10
        assert_eq!(offs[2]["partition"], 0);
        // The same key bytes sent as base64 land on the same partition.
        let offs = app.produce("keys", json!([{"key_base64": "Zm9vYmFy"}])).await;
        assert_eq!(offs[0]["partition"], 6);
    })
    .await;
}

#[tokio::test]
async fn explicit_partitions_and_the_partition_route() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("ex", 3).await;
        let offs = app
            .produce(
                "ex",
                json!([{"value": "a", "partition": 2}, {"value": "b", "partition": 0}, {"value": "c", "partition": 2}]),
            )
            .await;
        assert_eq!(
            offs.iter().map(|o| (o["partition"].as_u64().unwrap(), o["offset"].as_u64().unwrap())).collect::<Vec<_>>(),
            vec![(2, 0), (0, 0), (2, 1)]
        );

        let (status, body) = app
            .post(
                "/v1/topics/ex/partitions/1/records",
                json!({"records": [{"value": "x", "key": "k"}, {"value": "y"}]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        for o in body["offsets"].as_array().unwrap() {
            assert_eq!(o["partition"], 1);
        }
        let (status, body) =
            app.post("/v1/topics/ex/partitions/1/records", json!({"records": [{"value": "x", "partition": 2}]})).await;
        assert_eq!(status, 422);
        assert_eq!(body["code"], "invalid_record");
        let (status, body) = app.post("/v1/topics/ex/partitions/3/records", json!({"records": [{"value": "x"}]})).await;
        assert_eq!(status, 404);
        assert_eq!(body["code"], "unknown_partition");
    })
    .await;
}

#[tokio::test]
async fn unkeyed_records_stick_to_one_partition_per_request_and_rotate() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("spread", 4).await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let offs = app.produce("spread", json!([{"value": 1}, {"value": 2}, {"value": 3}])).await;
            let p = offs[0]["partition"].as_u64().unwrap();
            assert!(offs.iter().all(|o| o["partition"] == p), "one partition per request");
            seen.push(p);
        }
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3], "consecutive requests rotate over partitions");
    })
    .await;
}

#[tokio::test]
async fn acks_modes() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("acks", 1).await;
        for acks in ["leader", "all", "1", "-1"] {
            let (status, body) =
                app.post(&format!("/v1/topics/acks/records?acks={acks}"), json!({"records": [{"value": acks}]})).await;
            assert_eq!(status, 200, "{acks}: {body}");
        }
        let (status, body) = app
            .post("/v1/topics/acks/records?acks=none", json!({"records": [{"value": "fire"}, {"value": "forget"}]}))
            .await;
        assert_eq!(status, 202);
        assert_eq!(body["accepted"], 2);
        assert!(
            eventually(std::time::Duration::from_secs(5), || async { app.read_all("acks", 0, 0).await.len() == 6 })
                .await
        );
        let (status, body) = app.post("/v1/topics/acks/records?acks=2", json!({"records": [{"value": 1}]})).await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], "invalid_parameter");
    })
    .await;
}

#[tokio::test]
async fn concurrent_producers_get_dense_unique_offsets() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("conc", 4).await;
        let tasks = 16;
        let requests = 10;
        let per_request = 100;
        let mut handles = Vec::new();
        for t in 0..tasks {
            let client = app.client.clone();
            let url = app.url("/v1/topics/conc/records?acks=leader");
            handles.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for r in 0..requests {
                    let records: Vec<Value> = (0..per_request)
                        .map(|i| json!({"key": format!("k{}", (t * 7 + i) % 13), "value": {"t": t, "r": r, "i": i}}))
                        .collect();
                    let res = client.post(&url).json(&json!({"records": records})).send().await.unwrap();
                    assert_eq!(res.status(), 200);
                    let body: Value = res.json().await.unwrap();
                    for (i, o) in body["offsets"].as_array().unwrap().iter().enumerate() {
                        acked.push(((t, r, i), o["partition"].as_u64().unwrap(), o["offset"].as_u64().unwrap()));
                    }
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for h in handles {
            acked.extend(h.await.unwrap());
        }
        assert_eq!(acked.len(), tasks * requests * per_request);

        let mut by_position = HashMap::new();
        let mut total = 0;
        for p in 0..4u64 {
            let records = app.read_all("conc", p as u32, 0).await;
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r["offset"].as_u64().unwrap(), i as u64, "partition {p} offsets are dense");
                let v = &r["value"];
                let id = (
                    v["t"].as_u64().unwrap() as usize,
                    v["r"].as_u64().unwrap() as usize,
                    v["i"].as_u64().unwrap() as usize,
                );
                assert!(by_position.insert((p, i as u64), id).is_none());
            }
            total += records.len();
        }
        assert_eq!(total, tasks * requests * per_request, "each record stored exactly once");
        for (id, p, off) in acked {
            assert_eq!(by_position.get(&(p, off)), Some(&id), "acked offset holds the acked record");
        }
    })
    .await;
}
