//! `Idempotency-Key` on REST produce: a retry gets the first answer and writes
//! nothing, across restarts and concurrent retries; a key reused for another
//! request is refused.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

pub(crate) async fn produce_with_key(app: &TestApp, topic: &str, key: &str, body: &Value) -> (u16, Value, bool) {
    let res = app
        .client
        .post(app.url(&format!("/v1/topics/{topic}/records?acks=all")))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let replayed = res.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    let (status, body) = crate::helpers::status_json(res).await;
    (status, body, replayed)
}

async fn end_offsets(app: &TestApp, topic: &str) -> u64 {
    let (_, t) = app.get(&format!("/v1/topics/{topic}")).await;
    t["partitions"].as_array().unwrap().iter().map(|p| p["end_offset"].as_u64().unwrap()).sum()
}

#[tokio::test]
async fn a_retried_produce_is_answered_again_and_written_once() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("idem", 3).await;
        let body = json!({"records": [{"key": "a", "value": 1}, {"key": "b", "value": 2}, {"value": "x"}]});
        let (status, first, replayed) = produce_with_key(&app, "idem", "order-7", &body).await;
        assert_eq!((status, replayed), (200, false), "{first}");
        assert_eq!(end_offsets(&app, "idem").await, 3);

        let (status, again, replayed) = produce_with_key(&app, "idem", "order-7", &body).await;
        assert_eq!((status, replayed), (200, true), "{again}");
        assert_eq!(again, first, "the first answer, offsets and timestamps alike");
        assert_eq!(end_offsets(&app, "idem").await, 3, "nothing written twice");

        // The same key for another request is a client bug: refused, nothing written.
        let other = json!({"records": [{"value": "different"}]});
        let (status, problem, _) = produce_with_key(&app, "idem", "order-7", &other).await;
        assert_eq!((status, problem["code"].as_str()), (422, Some("idempotency_key_reused")), "{problem}");
        assert_eq!(problem["field"], "Idempotency-Key");
        // Another key is another request.
        let (status, _, replayed) = produce_with_key(&app, "idem", "order-8", &body).await;
        assert_eq!((status, replayed), (200, false));
        assert_eq!(end_offsets(&app, "idem").await, 6);

        for bad in ["", &"k".repeat(256), "two words"] {
            let (status, problem, _) = produce_with_key(&app, "idem", bad, &body).await;
            assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_parameter")), "{bad:?}: {problem}");
        }

        // The key is stored with the records: a restart still replays.
        let app = app.restart().await;
        let (status, after, replayed) = produce_with_key(&app, "idem", "order-7", &body).await;
        assert_eq!((status, replayed), (200, true));
        assert_eq!(after, first);
        assert_eq!(end_offsets(&app, "idem").await, 6);

        // Deleting the topic forgets its keys: a new topic of that name writes.
        let res = app.client.delete(app.url("/v1/topics/idem")).send().await.unwrap();
        assert_eq!(res.status(), 204);
        app.create_topic("idem", 3).await;
        let (status, _, replayed) = produce_with_key(&app, "idem", "order-7", &body).await;
        assert_eq!((status, replayed), (200, false), "no answer of the deleted topic is replayed");
        assert_eq!(end_offsets(&app, "idem").await, 3);
    })
    .await;
}

#[tokio::test]
async fn concurrent_retries_write_once() {
    crate::helpers::within(async {
        let app = std::sync::Arc::new(spawn_app().await);
        app.create_topic("race", 2).await;
        let body = json!({"records": (0..20).map(|i| json!({"key": format!("k{i}"), "value": i})).collect::<Vec<_>>()});
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (app, body) = (app.clone(), body.clone());
            tasks.push(tokio::spawn(async move { produce_with_key(&app, "race", "batch-1", &body).await }));
        }
        let mut answers = Vec::new();
        let mut fresh = 0;
        for t in tasks {
            let (status, answer, replayed) = t.await.unwrap();
            assert_eq!(status, 200, "{answer}");
            fresh += usize::from(!replayed);
            answers.push(answer);
        }
        assert_eq!(fresh, 1, "exactly one of the racing requests wrote");
        assert!(answers.iter().all(|a| *a == answers[0]));
        assert_eq!(end_offsets(&app, "race").await, 20);
    })
    .await;
}

/// A WebSocket `produce` frame with an `idempotency_key` is written once; its
/// retry is answered with the first offsets and `"replayed":true`.
#[tokio::test]
async fn websocket_produce_frames_take_an_idempotency_key() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("wsidem", 1).await;
        let url = format!("{}/v1/topics/wsidem/stream?from=latest", app.base.replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let mut answers = Vec::new();
        for id in [1, 2] {
            let frame = json!({"type": "produce", "id": id, "acks": "all", "idempotency_key": "ws-1",
                               "records": [{"value": "once"}]});
            ws.send(Message::Text(frame.to_string().into())).await.unwrap();
            loop {
                let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("socket ended") };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "produced" {
                    answers.push(v);
                    break;
                }
            }
        }
        assert_eq!(answers[0]["offsets"], answers[1]["offsets"]);
        assert_eq!(answers[0].get("replayed"), None);
        assert_eq!(answers[1]["replayed"], true);
        assert_eq!(end_offsets(&app, "wsidem").await, 1, "written once");
    })
    .await;
}
