use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn topic_lifecycle() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        let res = app
            .client
            .post(app.url("/v1/topics"))
            .json(&json!({"name": "orders", "partitions": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers()["location"], "/v1/topics/orders");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["partition_count"], 3);
        assert_eq!(body["config"]["retention_ms"], 604_800_000);
        assert_eq!(body["config"]["retention_bytes"], -1);
        assert_eq!(body["config"]["max_message_bytes"], 1_048_576);

        let (status, body) = app.post("/v1/topics", json!({"name": "orders", "partitions": 1})).await;
        assert_eq!(status, 409);
        assert_eq!(body["code"], "topic_exists");

        let (status, body) = app.get("/v1/topics").await;
        assert_eq!(status, 200);
        assert_eq!(body["topics"][0]["name"], "orders");
        assert_eq!(body["topics"][0]["partition_count"], 3);

        let (status, body) = app.get("/v1/topics/orders").await;
        assert_eq!(status, 200);
        let parts = body["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p["partition"], i);
            assert_eq!(p["beginning_offset"], 0);
            assert_eq!(p["end_offset"], 0);
        }

        let res = app
            .client
            .patch(app.url("/v1/topics/orders"))
            .json(&json!({"partitions": 5, "config": {"retention_ms": 1000, "max_message_bytes": 2048}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["partition_count"], 5);
        assert_eq!(body["config"]["retention_ms"], 1000);
        assert_eq!(body["config"]["max_message_bytes"], 2048);
        assert_eq!(body["config"]["retention_bytes"], -1, "unpatched fields stay");

        let res = app.client.patch(app.url("/v1/topics/orders")).json(&json!({"partitions": 2})).send().await.unwrap();
        let (status, body) = crate::helpers::status_json(res).await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], "invalid_partitions");

        let res = app
            .client
            .patch(app.url("/v1/topics/orders"))
            .json(&json!({"config": {"retention_ms": -7}}))
            .send()
            .await
            .unwrap();
        let (status, body) = crate::helpers::status_json(res).await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], "invalid_config");
        assert_eq!(body["field"], "config.retention_ms");

        let (status, body) = app.get("/v1/topics/orders/partitions").await;
        assert_eq!(status, 200);
        assert_eq!(body["partitions"].as_array().unwrap().len(), 5);
        let (status, body) = app.get("/v1/topics/orders/partitions/4").await;
        assert_eq!(status, 200);
        assert_eq!(body["end_offset"], 0);
        let (status, body) = app.get("/v1/topics/orders/partitions/5").await;
        assert_eq!(status, 404);
        assert_eq!(body["code"], "unknown_partition");

        let res = app.client.delete(app.url("/v1/topics/orders")).send().await.unwrap();
        assert_eq!(res.status(), 204);
        let (status, body) = app.get("/v1/topics/orders").await;
        assert_eq!(status, 404);
        assert_eq!(body["code"], "unknown_topic");
        let res = app.client.delete(app.url("/v1/topics/orders")).send().await.unwrap();
        assert_eq!(res.status(), 404);
    })
    .await;
}

#[tokio::test]
async fn topic_names_follow_kafkas_rule() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        let long = "x".repeat(250);
        for bad in ["", ".", "..", "has space", "slash/name", "ümlaut", long.as_str()] {
            let (status, body) = app.post("/v1/topics", json!({"name": bad, "partitions": 1})).await;
            assert_eq!(status, 400, "{bad:?}: {body}");
            assert_eq!(body["code"], "invalid_topic_name", "{bad:?}");
        }
        for good in ["a", "A.b_c-9", &"y".repeat(249)] {
            let (status, body) = app.post("/v1/topics", json!({"name": good, "partitions": 1})).await;
            assert_eq!(status, 201, "{good}: {body}");
        }
        for bad in [0, 4097] {
            let (status, body) = app.post("/v1/topics", json!({"name": "p", "partitions": bad})).await;
            assert_eq!(status, 400);
            assert_eq!(body["code"], "invalid_partitions");
        }
        let (status, body) = app.post("/v1/topics", json!({"name": "c", "config": {"retention_hours": 1}})).await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], "invalid_request");
    })
    .await;
}

#[tokio::test]
async fn a_deleted_topic_recreated_starts_empty() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("t", 1).await;
        app.produce("t", json!([{"value": 1}, {"value": 2}])).await;
        let res = app.client.delete(app.url("/v1/topics/t")).send().await.unwrap();
        assert_eq!(res.status(), 204);
        app.create_topic("t", 1).await;
        assert_eq!(app.partition("t", 0).await["end_offset"], 0);
        assert!(app.read_all("t", 0, 0).await.is_empty());
        let offs = app.produce("t", json!([{"value": 3}])).await;
        assert_eq!(offs[0]["offset"], 0);
    })
    .await;
}
