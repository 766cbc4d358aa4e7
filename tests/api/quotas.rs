//! Quotas per principal (SPEC §8): REST over quota gets `429 quota_exceeded`
//! with `Retry-After` while another principal is unaffected; streams are held
//! back, not closed; stream and in-flight limits.

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{TestApp, spawn_app_with};
use gregor::auth::{ApiKey, AuthSettings, QuotaSettings};

const ALICE: &str = "alice-quota-key";
const BOB: &str = "bob-quota-key";
const ADMIN: &str = "admin-quota-key";

fn key(principal: &str, secret: &str) -> ApiKey {
    let hex = gregor::auth::api_key_digest(secret);
    ApiKey {
        principal: principal.into(),
        sha256: std::array::from_fn(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()),
    }
}

async fn quota_app(alice: QuotaSettings) -> TestApp {
    let app = spawn_app_with(move |c| {
        c.auth = AuthSettings {
            api_keys: vec![key("alice", ALICE), key("bob", BOB), key("admin", ADMIN)],
            superusers: vec!["User:alice".into(), "User:bob".into(), "User:admin".into()],
            quotas: vec![QuotaSettings { principal: "User:alice".into(), ..alice }],
            ..AuthSettings::default()
        };
    })
    .await;
    let res =
        app.client.post(app.url("/v1/topics")).bearer_auth(ADMIN).json(&json!({"name": "q"})).send().await.unwrap();
    assert_eq!(res.status(), 201);
    app
}

#[tokio::test]
async fn requests_over_quota_get_429_with_retry_after_and_others_are_unaffected() {
    crate::helpers::within(async {
        let app = quota_app(QuotaSettings { requests_per_sec: Some(2), ..Default::default() }).await;
        let mut refused = None;
        for _ in 0..6 {
            let res = app.client.get(app.url("/v1/topics")).bearer_auth(ALICE).send().await.unwrap();
            if res.status() == 429 {
                let retry = res.headers()["retry-after"].to_str().unwrap().to_owned();
                let body: Value = res.json().await.unwrap();
                refused = Some((retry, body));
                break;
            }
            assert_eq!(res.status(), 200);
        }
        let (retry, body) = refused.expect("alice goes over 2 requests/s");
        assert_eq!(retry, "1");
        assert_eq!((body["code"].as_str(), body["field"].as_str()), (Some("quota_exceeded"), Some("requests_per_sec")));
        for _ in 0..6 {
            let res = app.client.get(app.url("/v1/topics")).bearer_auth(BOB).send().await.unwrap();
            assert_eq!(res.status(), 200, "bob has no quota");
        }
        let metrics =
            app.client.get(app.url("/metrics")).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
        assert!(
            metrics.lines().any(|l| l.starts_with("gregor_principal_denied_total{principal=\"User:alice\"}")),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test]
async fn produce_bytes_over_quota_are_refused_until_the_debt_is_paid() {
    crate::helpers::within(async {
        let app = quota_app(QuotaSettings { produce_bytes_per_sec: Some(1000), ..Default::default() }).await;
        let big = json!({"records": [{"value": "x".repeat(3000)}]});
        let produce =
            |who: &'static str| app.client.post(app.url("/v1/topics/q/records")).bearer_auth(who).json(&big).send();
        assert_eq!(produce(ALICE).await.unwrap().status(), 200, "lent: nothing owed yet");
        let res = produce(ALICE).await.unwrap();
        assert_eq!(res.status(), 429, "2000 bytes in debt at 1000/s");
        assert_eq!(res.headers()["retry-after"], "2");
        assert_eq!(produce(BOB).await.unwrap().status(), 200);
        let part: Value = app
            .client
            .get(app.url("/v1/topics/q/partitions/0"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(part["end_offset"], 2, "the refused request wrote nothing");
    })
    .await;
}

fn ws(app: &TestApp, path: &str, token: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("{}{}", app.base.replace("http://", "ws://"), path).into_client_request().unwrap();
    req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    req
}

#[tokio::test]
async fn streams_are_held_back_not_closed_and_counted() {
    crate::helpers::within(async {
        let app =
            quota_app(QuotaSettings { consume_bytes_per_sec: Some(2000), max_streams: Some(1), ..Default::default() })
                .await;
        for i in 0..6 {
            let res = app
                .client
                .post(app.url("/v1/topics/q/records"))
                .bearer_auth(ADMIN)
                .json(&json!({"records": [{"value": format!("{i}{}", "v".repeat(999))}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
        }
        let (mut stream, _) =
            tokio_tungstenite::connect_async(ws(&app, "/v1/topics/q/stream?from=earliest&max_records=1", ALICE))
                .await
                .unwrap();
        match tokio_tungstenite::connect_async(ws(&app, "/v1/topics/q/stream", ALICE)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 429, "max_streams = 1"),
            other => panic!("a second stream must be refused: {:?}", other.map(|_| ())),
        }
        let (_bobs, _) = tokio_tungstenite::connect_async(ws(&app, "/v1/topics/q/stream", BOB)).await.unwrap();
        // 6,000 bytes at 2,000/s: delivered in full, the stream held back on the way.
        let mut offsets = Vec::new();
        while offsets.len() < 6 {
            match stream.next().await.unwrap().unwrap() {
                Message::Text(t) => {
                    let f: Value = serde_json::from_str(t.as_str()).unwrap();
                    for r in f["records"].as_array().unwrap() {
                        offsets.push(r["offset"].as_u64().unwrap());
                    }
                }
                Message::Close(f) => panic!("a throttled stream is not closed: {f:?}"),
                _ => {}
            }
        }
        assert_eq!(offsets, (0..6).collect::<Vec<_>>());
        let metrics =
            app.client.get(app.url("/metrics")).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
        let throttled: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("gregor_principal_throttle_seconds_total{principal=\"User:alice\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no throttle time for alice in\n{metrics}"));
        assert!(throttled > 0.5, "alice's stream waited: {throttled} s");
        // Closing the stream frees its place.
        drop(stream);
        let reopened = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
            tokio_tungstenite::connect_async(ws(&app, "/v1/topics/q/stream", ALICE)).await.is_ok()
        })
        .await;
        assert!(reopened);
    })
    .await;
}
