use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with};

/// Every bad request gets its documented status and code, and leaves stored data unchanged.
#[tokio::test]
async fn bad_input_gets_stable_codes_and_changes_nothing() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.max_request_bytes = 64 * 1024).await;
        app.create_topic_with("t", 2, json!({"max_message_bytes": 1000})).await;
        app.produce("t", json!([{"value": "keep", "partition": 0}, {"value": "me", "partition": 1}])).await;
        let before = (app.read_all("t", 0, 0).await, app.read_all("t", 1, 0).await);

        let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
            (
                "malformed JSON",
                app.client
                    .post(app.url("/v1/topics/t/records"))
                    .header("content-type", "application/json")
                    .body("{not json"),
                400,
                "invalid_json",
            ),
            (
                "truncated JSON",
                app.client
                    .post(app.url("/v1/topics/t/records"))
                    .header("content-type", "application/json")
                    .body("{\"records\":["),
                400,
                "invalid_json",
            ),
            (
                "wrong shape",
                app.client.post(app.url("/v1/topics/t/records")).json(&json!({"records": {"value": 1}})),
                400,
                "invalid_request",
            ),
            (
                "unknown field",
                app.client.post(app.url("/v1/topics/t/records")).json(&json!({"records": [{"valu": 1}]})),
                400,
                "invalid_request",
            ),
            (
                "no records",
                app.client.post(app.url("/v1/topics/t/records")).json(&json!({"records": []})),
                400,
                "invalid_request",
            ),
            (
                "bad base64 after a good record",
                app.client
                    .post(app.url("/v1/topics/t/records"))
                    .json(&json!({"records": [{"value": "ok"}, {"value_base64": "@@@"}]})),
                422,
                "invalid_record",
            ),
            (
                "both value forms",
                app.client
                    .post(app.url("/v1/topics/t/records"))
                    .json(&json!({"records": [{"value": 1, "value_base64": "AA=="}]})),
                422,
                "invalid_record",
            ),
            (
                "negative timestamp",
                app.client
                    .post(app.url("/v1/topics/t/records"))
                    .json(&json!({"records": [{"value": 1, "timestamp": -5}]})),
                400,
                "invalid_request",
            ),
            (
                "unknown topic",
                app.client.post(app.url("/v1/topics/nope/records")).json(&json!({"records": [{"value": 1}]})),
                404,
                "unknown_topic",
            ),
            (
                "unknown partition in a batch",
                app.client
                    .post(app.url("/v1/topics/t/records"))
                    .json(&json!({"records": [{"value": 1, "partition": 0}, {"value": 2, "partition": 9}]})),
                404,
                "unknown_partition",
            ),
            (
                "oversize record",
                app.client
                    .post(app.url("/v1/topics/t/records"))
                    .json(&json!({"records": [{"value": "ok"}, {"value": "x".repeat(2000)}]})),
                413,
                "record_too_large",
            ),
            (
                "oversize body",
                app.client
                    .post(app.url("/v1/topics/t/records"))
                    .json(&json!({"records": [{"value": "x".repeat(100 * 1024)}]})),
                413,
                "request_too_large",
            ),
            (
                "negative offset",
                app.client.get(app.url("/v1/topics/t/partitions/0/records?offset=-1")),
                400,
                "invalid_parameter",
            ),
            (
                "offset beyond u64",
                app.client.get(app.url("/v1/topics/t/partitions/0/records?offset=99999999999999999999999")),
                400,
                "invalid_parameter",
            ),
            (
                "huge offset",
                app.client.get(app.url("/v1/topics/t/partitions/0/records?offset=18446744073709551615")),
                416,
                "offset_out_of_range",
            ),
            (
                "partition not a number",
                app.client.get(app.url("/v1/topics/t/partitions/abc/records")),
                400,
                "invalid_parameter",
            ),
            (
                "negative partition",
                app.client.get(app.url("/v1/topics/t/partitions/-1/records")),
                400,
                "invalid_parameter",
            ),
            (
                "unknown partition read",
                app.client.get(app.url("/v1/topics/t/partitions/2/records")),
                404,
                "unknown_partition",
            ),
            (
                "unknown topic read",
                app.client.get(app.url("/v1/topics/nope/partitions/0/records")),
                404,
                "unknown_topic",
            ),
            (
                "limit zero",
                app.client.get(app.url("/v1/topics/t/partitions/0/records?limit=0")),
                400,
                "invalid_parameter",
            ),
            (
                "wait too long",
                app.client.get(app.url("/v1/topics/t/partitions/0/records?wait_ms=600000")),
                400,
                "invalid_parameter",
            ),
            (
                "bad encoding",
                app.client.get(app.url("/v1/topics/t/partitions/0/records?encoding=hex")),
                400,
                "invalid_parameter",
            ),
            ("no such route", app.client.get(app.url("/v1/nothing")), 404, "not_found"),
            ("wrong method", app.client.put(app.url("/v1/topics")), 405, "method_not_allowed"),
            (
                "create with bad JSON",
                app.client.post(app.url("/v1/topics")).header("content-type", "application/json").body("["),
                400,
                "invalid_json",
            ),
            (
                "a text/plain body (a page's preflight-free POST)",
                app.client.post(app.url("/v1/topics/t/records")).header("content-type", "text/plain").body("{}"),
                415,
                "unsupported_media_type",
            ),
        ];
        for (name, req, status, code) in cases {
            let res = req.send().await.unwrap();
            let got_status = res.status().as_u16();
            let ct = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            assert_eq!(got_status, status, "{name}: {body}");
            assert_eq!(ct, "application/problem+json", "{name}");
            assert_eq!(body["code"], code, "{name}: {body}");
            assert_eq!(body["status"], status, "{name}");
            assert!(body["type"].as_str().unwrap().ends_with(code), "{name}");
            assert!(!body["detail"].as_str().unwrap().is_empty(), "{name}");
        }

        let (_, body) =
            app.post("/v1/topics/t/records", json!({"records": [{"value": "ok"}, {"value_base64": "@@@"}]})).await;
        assert_eq!(body["index"], 1, "the record at fault is named");
        assert_eq!(body["field"], "value");

        let after = (app.read_all("t", 0, 0).await, app.read_all("t", 1, 0).await);
        assert_eq!(before, after, "no bad request changed stored data");
        assert_eq!(app.partition("t", 0).await["end_offset"], 1);
        assert_eq!(app.partition("t", 1).await["end_offset"], 1);
    })
    .await;
}

#[tokio::test]
async fn a_full_write_queue_answers_503_with_retry_after() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| {
            c.max_request_bytes = 256 * 1024;
            c.write_queue_bytes = 256 * 1024;
        })
        .await;
        app.create_topic("q", 1).await;
        let body = json!({"records": (0..4).map(|_| json!({"value": "y".repeat(50_000)})).collect::<Vec<_>>()});
        let mut tasks = Vec::new();
        for _ in 0..48 {
            let req = app.client.post(app.url("/v1/topics/q/records?acks=all")).json(&body);
            tasks.push(tokio::spawn(async move { req.send().await.unwrap() }));
        }
        let (mut ok, mut full) = (0, 0);
        for t in tasks {
            let res = t.await.unwrap();
            match res.status().as_u16() {
                200 => ok += 1,
                503 => {
                    assert_eq!(res.headers()["retry-after"], "1");
                    let b: Value = res.json().await.unwrap();
                    assert_eq!(b["code"], "write_queue_full");
                    full += 1;
                }
                s => panic!("unexpected status {s}"),
            }
        }
        assert!(ok > 0, "some requests are written");
        assert!(full > 0, "the bounded queue refuses instead of growing");
        assert_eq!(app.read_all("q", 0, 0).await.len(), ok * 4, "exactly the accepted requests are stored");
    })
    .await;
}

#[tokio::test]
async fn auto_create_is_off_by_default_and_can_be_enabled() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        let (status, _) = app.post("/v1/topics/auto/records", json!({"records": [{"value": 1}]})).await;
        assert_eq!(status, 404);
        let app = spawn_app_with(|c| {
            c.auto_create_topics = true;
            c.default_partitions = 2;
        })
        .await;
        let offs = app.produce("auto", json!([{"value": 1}])).await;
        assert_eq!(offs.len(), 1);
        assert_eq!(app.get("/v1/topics/auto").await.1["partition_count"], 2);
    })
    .await;
}
