use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn metrics_report_traffic_lag_queue_and_store() {
    crate::helpers::within(async {
    let app = spawn_app().await;
    app.create_topic("m", 1).await;
    app.produce("m", json!([{"value": 1}, {"value": 2}, {"value": 3}])).await;
    assert_eq!(app.read_all("m", 0, 1).await.len(), 2);
    let (_, joined) =
        app.post("/v1/groups/mg/members", json!({"topics": ["m"], "auto_offset_reset": "earliest"})).await;
    let member = joined["member_id"].as_str().unwrap();
    let (status, _) = app
        .post(
            "/v1/groups/mg/offsets",
            json!({"member_id": member, "generation": joined["generation"], "offsets": [{"topic": "m", "partition": 0, "offset": 1}]}),
        )
        .await;
    assert_eq!(status, 200);

    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = res.text().await.unwrap();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert_eq!(value("gregor_records_in_total{topic=\"m\"}"), 3.0);
    assert_eq!(value("gregor_records_out_total{topic=\"m\"}"), 2.0);
    assert_eq!(value("gregor_consumer_lag{group=\"mg\",topic=\"m\"}"), 2.0);
    assert_eq!(value("gregor_write_queue_bytes "), 0.0);
    assert!(value("gregor_store_bytes ") > 0.0);
    assert!(value("gregor_ws_connections ") >= 0.0);
    assert_eq!(value("gregor_tail_cache_bytes "), 0.0, "nobody waited on a partition: nothing cached");
    let produce_route = "route=\"/v1/topics/{topic}/records\"";
    assert!(
        text.lines().any(|l| l.starts_with("gregor_http_request_duration_seconds_count") && l.contains(produce_route)),
        "latency histogram by route template:\n{text}"
    );
    })
    .await;
}

/// The tail cache keeps a batch appended while a reader waits on the partition,
/// and lets it go at the next append that nobody waits for.
#[tokio::test]
async fn tail_cache_bytes_follow_waiting_readers() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("tc", 1).await;
        let tail_bytes = || async {
            let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("gregor_tail_cache_bytes ")?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no gregor_tail_cache_bytes in\n{text}"))
        };
        let client = app.client.clone();
        let url = app.url("/v1/topics/tc/partitions/0/records?offset=0&wait_ms=30000");
        let poll =
            tokio::spawn(async move { client.get(&url).send().await.unwrap().json::<serde_json::Value>().await });
        // The read is counted as waiting once it is subscribed to the partition's appends.
        app.wait_for_metric("gregor_reads_waiting", 1.0).await;
        app.produce("tc", json!([{"value": "cached"}])).await;
        assert_eq!(poll.await.unwrap().unwrap()["records"][0]["value"], "cached");
        assert!(tail_bytes().await > 0.0, "a batch appended while a reader waited is cached");
        app.produce("tc", json!([{"value": "idle"}])).await;
        assert_eq!(tail_bytes().await, 0.0, "an append nobody waits for empties the cache");
    })
    .await;
}
