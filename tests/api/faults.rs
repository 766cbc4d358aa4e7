//! Failures are never silent: a store write that fails (a real RocksDB error,
//! injected) or a writer reply that is lost poisons the log. Every later write is
//! refused with `503 storage_error`, `/readyz` fails, and after a restart every
//! acknowledged record is there and offsets continue densely.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{TestApp, spawn_app};

async fn produce_status(app: &TestApp, value: &str) -> (u16, Value) {
    app.post("/v1/topics/f/records?acks=all", json!({"records": [{"value": value}]})).await
}

/// `/readyz`'s status (its body is a health document, not a problem).
async fn readyz(app: &TestApp) -> u16 {
    app.client.get(app.url("/readyz")).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_failed_store_write_poisons_the_log_and_loses_nothing_acknowledged() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("f", 1).await;
        for v in ["a", "b", "c"] {
            app.produce("f", json!([{"value": v}])).await;
        }
        app.faults.fail_writes(1);
        let (status, body) = produce_status(&app, "lost").await;
        assert_eq!((status, body["code"].as_str()), (503, Some("storage_error")), "{body}");
        assert!(!body["detail"].as_str().unwrap().contains("WAL"), "the store's message stays in the log: {body}");
        assert_eq!(readyz(&app).await, 503);

        // The store would take this write; the poisoned log must not.
        let (status, body) = produce_status(&app, "after").await;
        assert_eq!((status, body["code"].as_str()), (503, Some("storage_error")), "{body}");
        let (status, body) = app.post("/v1/topics", json!({"name": "g", "partitions": 1})).await;
        assert_eq!((status, body["code"].as_str()), (503, Some("storage_error")), "{body}");
        // The same code reaches WebSocket clients, from the same table.
        let url = format!("{}/v1/topics/f/stream", app.base.replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let frame = json!({"type": "produce", "id": 1, "records": [{"value": "ws"}]});
        ws.send(Message::Text(frame.to_string().into())).await.unwrap();
        let answer = loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => break serde_json::from_str::<Value>(t.as_str()).unwrap(),
                _ => continue,
            }
        };
        assert_eq!((answer["type"].as_str(), answer["code"].as_str()), (Some("error"), Some("storage_error")));
        drop(ws);

        let app = app.restart().await;
        assert_eq!(readyz(&app).await, 200, "a restart clears the poison");
        let values: Vec<Value> = app.read_all("f", 0, 0).await.iter().map(|r| r["value"].clone()).collect();
        assert_eq!(values, vec![json!("a"), json!("b"), json!("c")], "every acknowledged record, nothing else");
        let offsets = app.produce("f", json!([{"value": "d"}])).await;
        assert_eq!(offsets[0]["offset"], 3, "offsets continue densely");
    })
    .await;
}

/// A writer that drops a reply it owes (as a dead or buggy writer would): the
/// request is answered `503 storage_error`, not success and not `shutting_down`,
/// and the log is poisoned.
#[tokio::test]
async fn a_lost_writer_reply_is_a_storage_error_and_poisons_the_log() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("f", 1).await;
        app.faults.drop_replies(1);
        let (status, body) = produce_status(&app, "x").await;
        assert_eq!((status, body["code"].as_str()), (503, Some("storage_error")), "{body}");
        assert_eq!(readyz(&app).await, 503);
        let (status, body) = produce_status(&app, "y").await;
        assert_eq!((status, body["code"].as_str()), (503, Some("storage_error")), "{body}");
    })
    .await;
}
