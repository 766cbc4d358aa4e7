use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn metrics_report_traffic_lag_queue_and_store() {
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
    let produce_route = "route=\"/v1/topics/{topic}/records\"";
    assert!(
        text.lines().any(|l| l.starts_with("gregor_http_request_duration_seconds_count") && l.contains(produce_route)),
        "latency histogram by route template:\n{text}"
    );
}
