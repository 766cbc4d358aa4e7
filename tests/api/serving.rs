//! Safe serving by default (SPEC §8): serving limits against slow and idle
//! clients and connection floods, and browser safety (Origin, Host, JSON bodies,
//! CORS only for configured origins), over real sockets.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it sent, or
/// `None` if it is still open after `within`.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    closed.ok().map(|()| String::from_utf8_lossy(&got).into_owned())
}

/// One raw HTTP/1.1 request on a new connection; returns the status and the body.
async fn raw(app: &TestApp, request: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr(app)).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(10)).await.expect("the server answers and closes");
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_client_that_dribbles_headers_is_disconnected_within_the_header_timeout() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.http.header_read_timeout = Duration::from_millis(500)).await;
        let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
        tcp.write_all(b"GET /v1/topics HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
        // One header line every 100 ms, for ever: the server must hang up.
        let (mut rd, mut wr) = tcp.into_split();
        let dribble = tokio::spawn(async move {
            for i in 0..600 {
                if wr.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        });
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the dribbling connection was closed (header timeout 500 ms)");
        dribble.abort();
        // Others are served meanwhile and after.
        let (status, _) = app.get("/v1/topics").await;
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test]
async fn silent_and_idle_keep_alive_connections_are_closed() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.http.header_read_timeout = Duration::from_millis(500)).await;
        // Connects and says nothing.
        let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
        // One request, then idles on the kept-alive connection.
        let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
        idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", addr(&app)).as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut idle, Duration::from_secs(10)).await.expect("closed after idling");
        assert!(answer.starts_with("HTTP/1.1 200"), "the request was answered first: {answer}");
        assert!(read_until_closed(&mut silent, Duration::from_secs(10)).await.is_some(), "silent connection closed");
        app.wait_for_metric("gregor_http_connections", 1.0).await; // the scrape's own
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503_and_the_cap_frees_up() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.http.max_connections = 3).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
            // A complete request, so that each is known to be accepted and counted.
            tcp.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", addr(&app)).as_bytes()).await.unwrap();
            let mut buf = [0u8; 512];
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            held.push(tcp);
        }
        let (status, body) = raw(&app, "GET /v1/topics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 503, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "too_many_connections");
        held.pop();
        let freed = crate::helpers::eventually(Duration::from_secs(10), || async {
            app.client.get(app.url("/healthz")).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(freed, "a closed connection frees its place");
        assert!(app.metric("gregor_http_connections_refused_total").await >= 1.0);
    })
    .await;
}

#[tokio::test]
async fn foreign_origins_are_refused_for_changes_and_upgrades_same_origin_and_curl_pass() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        let create = |origin: Option<&str>, name: &str| {
            let mut req = app.client.post(app.url("/v1/topics")).json(&json!({"name": name}));
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            req
        };
        let res = create(Some("http://evil.example"), "evil").send().await.unwrap();
        assert_eq!(res.status(), 403);
        assert!(res.headers().get("access-control-allow-origin").is_none(), "no CORS for it");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "origin_not_allowed");
        let res = create(Some("null"), "sandboxed").send().await.unwrap();
        assert_eq!(res.status(), 403, "an opaque origin is foreign");
        let res = create(Some(&app.base), "same").send().await.unwrap();
        assert_eq!(res.status(), 201, "the console's own origin");
        let res = create(None, "curl").send().await.unwrap();
        assert_eq!(res.status(), 201, "no Origin: curl and servers");
        let (_, topics) = app.get("/v1/topics").await;
        let names: Vec<&str> =
            topics["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["curl", "same"], "refused requests changed nothing");
        for method in [reqwest::Method::DELETE, reqwest::Method::PATCH] {
            let res = app.client.request(method, app.url("/v1/topics/curl")).header("origin", "http://evil.example");
            assert_eq!(res.send().await.unwrap().status(), 403);
        }
        let (status, _) = app.get("/v1/topics/curl").await;
        assert_eq!(status, 200, "still there");

        let ws_url = format!("{}/v1/topics/same/stream", app.base.replace("http://", "ws://"));
        let mut foreign = ws_url.as_str().into_client_request().unwrap();
        foreign.headers_mut().insert("origin", HeaderValue::from_static("http://evil.example"));
        match tokio_tungstenite::connect_async(foreign).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 403);
                let body: Value = serde_json::from_slice(res.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["code"], "origin_not_allowed");
            }
            other => panic!("a foreign-origin upgrade must be refused: {:?}", other.map(|_| ())),
        }
        let mut own = ws_url.as_str().into_client_request().unwrap();
        own.headers_mut().insert("origin", HeaderValue::from_str(&app.base).unwrap());
        assert!(tokio_tungstenite::connect_async(own).await.is_ok(), "a same-origin page may stream");
        assert!(tokio_tungstenite::connect_async(ws_url.as_str()).await.is_ok(), "no Origin: not a browser");
    })
    .await;
}

#[tokio::test]
async fn bodies_must_be_json() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("m", 1).await;
        let post = |content_type: Option<&'static str>| {
            let mut req = app.client.post(app.url("/v1/topics/m/records")).body(r#"{"records":[{"value":1}]}"#);
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            req.send()
        };
        for ct in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            let res = post(ct).await.unwrap();
            assert_eq!(res.status(), 415, "{ct:?}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["code"], "unsupported_media_type");
        }
        for ct in ["application/json", "application/json; charset=utf-8", "application/vnd.schemaregistry.v1+json"] {
            assert_eq!(post(Some(ct)).await.unwrap().status(), 200, "{ct}");
        }
        assert_eq!(app.partition("m", 0).await["end_offset"], 3, "only the JSON requests were written");
    })
    .await;
}

#[tokio::test]
async fn on_loopback_a_foreign_host_is_refused() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.http.allowed_hosts = vec!["gregor.test".into()]).await;
        let port = addr(&app).rsplit(':').next().unwrap().to_owned();
        let (status, body) =
            raw(&app, &format!("GET /v1/topics HTTP/1.1\r\nHost: rebound.example:{port}\r\nConnection: close\r\n\r\n"))
                .await;
        assert_eq!(status, 403, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "host_not_allowed");
        for host in ["localhost", "127.0.0.1", "[::1]", "gregor.test"] {
            let (status, body) =
                raw(&app, &format!("GET /v1/topics HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"))
                    .await;
            assert_eq!(status, 200, "{host}: {body}");
        }
    })
    .await;
}

#[tokio::test]
async fn cors_answers_only_for_allowed_origins() {
    crate::helpers::within(async {
        let app = spawn_app_with(|c| c.http.allowed_origins = vec!["http://app.example:3000".into()]).await;
        let preflight = |origin: &'static str| {
            app.client
                .request(reqwest::Method::OPTIONS, app.url("/v1/topics"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .send()
        };
        let res = preflight("http://app.example:3000").await.unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        assert_eq!(res.headers()["access-control-allow-origin"], "http://app.example:3000");
        let methods = res.headers()["access-control-allow-methods"].to_str().unwrap().to_owned();
        assert!(methods.contains("POST"), "{methods}");
        let res = preflight("http://evil.example").await.unwrap();
        assert!(res.headers().get("access-control-allow-origin").is_none(), "no CORS for others");

        let res = app
            .client
            .post(app.url("/v1/topics"))
            .header("origin", "http://app.example:3000")
            .json(&json!({"name": "from-app"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers()["access-control-allow-origin"], "http://app.example:3000");
        let res = app
            .client
            .post(app.url("/v1/topics"))
            .header("origin", "http://evil.example")
            .json(&json!({"name": "from-evil"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
    })
    .await;
}
