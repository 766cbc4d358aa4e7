//! Authentication and ACLs (SPEC §8) over real HTTP and WebSocket clients: every
//! route allowed, denied (403 naming the operation) and unauthenticated (401 with
//! `WWW-Authenticate`); API keys, Basic passwords, the WebSocket subprotocol;
//! reloads; protected mode; no secret in the logs.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{TestApp, spawn_app_with};

const ADMIN_KEY: &str = "admin-key-3f9a";
const ALICE_KEY: &str = "alice-key-77c1";
const CAROL_KEY: &str = "carol-key-0d2e";
const BOB_PASSWORD: &str = "bob-password-51";

/// The security settings as an operator writes them.
fn config_toml(bob_hash: &str, extra: &str) -> String {
    let sha = gregor::auth::api_key_digest;
    format!(
        r#"
[auth]
superusers = ["User:admin"]

[[auth.api_keys]]
principal = "admin"
sha256 = "{admin}"

[[auth.api_keys]]
principal = "alice"
sha256 = "{alice}"

[[auth.api_keys]]
principal = "carol"
sha256 = "{carol}"

[[auth.users]]
name = "bob"
password_hash = "{bob_hash}"

# alice: the orders-* topics, read and write; not orders-secret; the workers group.
[[acl]]
principal = "User:alice"
resource = "topic"
name = "orders"
pattern = "prefixed"
operations = ["read", "write"]

[[acl]]
principal = "User:alice"
resource = "topic"
name = "orders-secret"
operations = ["all"]
permission = "deny"

[[acl]]
principal = "User:alice"
resource = "group"
name = "workers"
operations = ["read"]

# Everyone may read the public topic.
[[acl]]
principal = "User:*"
resource = "topic"
name = "public"
operations = ["read"]

# bob may create and delete topics, and read the metrics.
[[acl]]
principal = "User:bob"
resource = "cluster"
operations = ["create", "describe"]

[[acl]]
principal = "User:bob"
resource = "topic"
name = "*"
operations = ["delete", "alter"]
{extra}
"#,
        admin = sha(ADMIN_KEY),
        alice = sha(ALICE_KEY),
        carol = sha(CAROL_KEY),
    )
}

struct Secured {
    app: TestApp,
    file: std::path::PathBuf,
    bob_hash: String,
    _dir: tempfile::TempDir,
}

async fn secured_app(extra: &str) -> Secured {
    secured_app_with(extra, |_| {}).await
}

async fn secured_app_with(extra: &str, tune: impl FnOnce(&mut gregor::config::Config) + Send + 'static) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gregor.toml");
    let bob_hash = gregor::auth::hash_password(BOB_PASSWORD).unwrap();
    std::fs::write(&file, config_toml(&bob_hash, extra)).unwrap();
    let auth = gregor::config::load_auth(&file).unwrap();
    let path = file.clone();
    let app = spawn_app_with(move |c| {
        c.auth = auth;
        c.file = Some(path);
        tune(c);
    })
    .await;
    // The admin creates what the tests use.
    for (name, partitions) in [("orders", 2), ("orders-secret", 1), ("public", 1), ("invoices", 1)] {
        let res = app
            .client
            .post(app.url("/v1/topics"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"name": name, "partitions": partitions}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{name}");
    }
    Secured { app, file, bob_hash, _dir: dir }
}

/// (who, method, path, body, expected status, the operation a 403 names)
type Case = (Who, &'static str, String, Option<Value>, u16, Option<&'static str>);

#[derive(Clone, Copy)]
enum Who {
    Nobody,
    Key(&'static str),
    Bob,
}

async fn call(app: &TestApp, who: Who, method: &str, path: &str, body: Option<Value>) -> (u16, Value, Option<String>) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = app.client.request(method, app.url(path));
    req = match who {
        Who::Nobody => req,
        Who::Key(k) => req.bearer_auth(k),
        Who::Bob => req.basic_auth("bob", Some(BOB_PASSWORD)),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let challenge = res.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), challenge)
}

#[tokio::test]
async fn every_route_is_allowed_denied_or_unauthenticated_by_the_acls() {
    crate::helpers::within(async {
        let s = secured_app("").await;
        let app = &s.app;
        let alice = Who::Key(ALICE_KEY);
        let produce = json!({"records": [{"value": 1}]});
        let join = json!({"topics": ["orders"], "auto_offset_reset": "earliest"});
        // (who, method, path, body, expected status, operation named by a 403)
        let cases: Vec<Case> = vec![
            (alice, "POST", "/v1/topics/orders/records".into(), Some(produce.clone()), 200, None),
            (alice, "POST", "/v1/topics/orders-eu/records".into(), Some(produce.clone()), 404, None),
            (alice, "POST", "/v1/topics/orders-secret/records".into(), Some(produce.clone()), 403, Some("write")),
            (alice, "POST", "/v1/topics/public/records".into(), Some(produce.clone()), 403, Some("write")),
            (alice, "POST", "/v1/topics/orders/partitions/1/records".into(), Some(produce.clone()), 200, None),
            (alice, "GET", "/v1/topics/orders/partitions/0/records".into(), None, 200, None),
            (alice, "GET", "/v1/topics/invoices/partitions/0/records".into(), None, 403, Some("read")),
            (alice, "GET", "/v1/topics/public/partitions/0/records".into(), None, 200, None),
            (alice, "GET", "/v1/topics/orders".into(), None, 200, None),
            (alice, "GET", "/v1/topics/invoices".into(), None, 403, Some("describe")),
            (alice, "GET", "/v1/topics/orders/partitions".into(), None, 200, None),
            (alice, "GET", "/v1/topics/orders/partitions/0".into(), None, 200, None),
            (alice, "GET", "/v1/topics/invoices/partitions/0/offsets?timestamp=0".into(), None, 403, Some("describe")),
            (alice, "POST", "/v1/topics".into(), Some(json!({"name": "orders-new"})), 403, Some("create")),
            (Who::Bob, "POST", "/v1/topics".into(), Some(json!({"name": "made-by-bob"})), 201, None),
            (alice, "PATCH", "/v1/topics/orders".into(), Some(json!({"partitions": 3})), 403, Some("alter")),
            (Who::Bob, "PATCH", "/v1/topics/made-by-bob".into(), Some(json!({"partitions": 2})), 200, None),
            (alice, "DELETE", "/v1/topics/orders".into(), None, 403, Some("delete")),
            (Who::Bob, "DELETE", "/v1/topics/made-by-bob".into(), None, 204, None),
            (alice, "POST", "/v1/groups/workers/members".into(), Some(join.clone()), 201, None),
            (alice, "POST", "/v1/groups/others/members".into(), Some(join.clone()), 403, Some("read")),
            (
                alice,
                "POST",
                "/v1/groups/workers/members".into(),
                Some(json!({"topics": ["invoices"]})),
                403,
                Some("read"),
            ),
            (alice, "GET", "/v1/groups/workers".into(), None, 200, None),
            (alice, "DELETE", "/v1/groups/workers".into(), None, 403, Some("delete")),
            (alice, "POST", "/v1/groups/workers/offsets/reset".into(), Some(json!({"to": "earliest"})), 200, None),
            (alice, "GET", "/metrics".into(), None, 403, Some("describe")),
            (Who::Bob, "GET", "/metrics".into(), None, 200, None),
            (alice, "GET", "/v1/history/topics".into(), None, 200, None),
            (alice, "GET", "/v1/history/topics/orders".into(), None, 200, None),
            (alice, "GET", "/v1/history/topics/invoices".into(), None, 403, Some("describe")),
            (alice, "GET", "/v1/history/groups/workers".into(), None, 200, None),
            (alice, "GET", "/v1/history/groups/others".into(), None, 403, Some("describe")),
            (alice, "GET", "/v1/history/produce".into(), None, 403, Some("describe")),
            (Who::Bob, "GET", "/v1/history/produce".into(), None, 200, None),
            (Who::Key(ADMIN_KEY), "DELETE", "/v1/topics/invoices".into(), None, 204, None),
            (Who::Key(CAROL_KEY), "GET", "/v1/topics/orders".into(), None, 403, Some("describe")),
            (Who::Key(CAROL_KEY), "GET", "/v1/topics/public/partitions/0/records".into(), None, 200, None),
        ];
        for (who, method, path, body, status, operation) in cases {
            let (got, problem, _) = call(app, who, method, &path, body).await;
            assert_eq!(got, status, "{method} {path}: {problem}");
            if let Some(op) = operation {
                assert_eq!(problem["code"], "forbidden", "{method} {path}");
                assert_eq!(problem["operation"], op, "{method} {path}: {problem}");
                assert!(problem["detail"].as_str().unwrap().contains(op), "{problem}");
            }
        }
        // A listing shows only what the principal may describe.
        let (_, list, _) = call(app, alice, "GET", "/v1/topics", None).await;
        let names: Vec<&str> = list["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["orders", "public"], "orders-secret is denied, invoices was never allowed");
        let (_, list, _) = call(app, Who::Key(ADMIN_KEY), "GET", "/v1/topics", None).await;
        assert_eq!(list["topics"].as_array().unwrap().len(), 3);
        // So does the chart data: once sampled, alice's topic rates name only hers.
        let sampled = crate::helpers::eventually(Duration::from_secs(20), || async {
            let (_, h, _) = call(app, alice, "GET", "/v1/history/topics", None).await;
            let names: Vec<String> =
                h["topics"].as_array().unwrap().iter().map(|t| t["topic"].as_str().unwrap().to_owned()).collect();
            assert!(names.iter().all(|n| n == "orders" || n == "public"), "{names:?}");
            names.len() == 2
        })
        .await;
        assert!(sampled, "alice's topics were never sampled");
        let (_, h, _) = call(app, Who::Key(ADMIN_KEY), "GET", "/v1/history/topics", None).await;
        assert!(h["topics"].as_array().unwrap().iter().any(|t| t["topic"] == "orders-secret"), "{h}");

        // Group member routes: poll, commit, heartbeat, leave need read on the group.
        let (_, joined, _) = call(app, alice, "POST", "/v1/groups/workers/members", Some(join.clone())).await;
        let member = joined["member_id"].as_str().unwrap().to_owned();
        let (status, _, _) = call(app, alice, "GET", &format!("/v1/groups/workers/members/{member}/records"), None).await;
        assert_eq!(status, 200);
        let (status, problem, _) =
            call(app, Who::Key(CAROL_KEY), "GET", &format!("/v1/groups/workers/members/{member}/records"), None).await;
        assert_eq!((status, problem["operation"].as_str()), (403, Some("read")), "{problem}");
        let commit = json!({"member_id": member, "generation": joined["generation"], "offsets": [{"topic": "orders", "partition": 0, "offset": 0}]});
        let (status, problem, _) = call(app, alice, "POST", "/v1/groups/workers/offsets", Some(commit.clone())).await;
        // Past authorization: the coordinator answers (this new member owns nothing yet).
        assert_eq!(problem["code"], "not_owner", "{status} {problem}");
        let (status, _, _) = call(app, Who::Key(CAROL_KEY), "POST", "/v1/groups/workers/offsets", Some(commit)).await;
        assert_eq!(status, 403);
    })
    .await;
}

#[tokio::test]
async fn credentials_are_required_checked_and_public_routes_stay_public() {
    crate::helpers::within(async {
        let s = secured_app("").await;
        let app = &s.app;
        for (method, path) in [("GET", "/v1/topics"), ("POST", "/v1/topics/orders/records"), ("GET", "/metrics")] {
            let (status, problem, challenge) = call(app, Who::Nobody, method, path, None).await;
            assert_eq!((status, problem["code"].as_str()), (401, Some("unauthenticated")), "{method} {path}");
            assert_eq!(challenge.as_deref(), Some("Bearer realm=\"gregor\""));
        }
        let (status, _, challenge) = call(app, Who::Key("not-a-key"), "GET", "/v1/topics", None).await;
        assert_eq!((status, challenge.is_some()), (401, true));
        let res = app.client.get(app.url("/v1/topics")).basic_auth("bob", Some("wrong")).send().await.unwrap();
        assert_eq!(res.status(), 401);
        let res = app.client.get(app.url("/v1/topics")).header("authorization", "Digest x").send().await.unwrap();
        assert_eq!(res.status(), 401, "an unknown scheme is refused, not taken as anonymous");
        let (status, _, _) = call(app, Who::Bob, "GET", "/v1/topics", None).await;
        assert_eq!(status, 200, "Basic with the right password");
        for path in ["/healthz", "/readyz", "/openapi.json", "/docs/", "/", "/console.js", "/chart.js"] {
            let res = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(res.status(), 200, "{path} is public");
        }
    })
    .await;
}

fn ws_request(app: &TestApp, path: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    format!("{}{}", app.base.replace("http://", "ws://"), path).into_client_request().unwrap()
}

async fn next_text(
    ws: &mut (impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.ok()??.ok()? {
            m @ (Message::Text(_) | Message::Close(_)) => return Some(m),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn websockets_authenticate_before_the_upgrade_and_authorize_every_frame() {
    crate::helpers::within(async {
        let s = secured_app("").await;
        let app = &s.app;
        // No credentials: a plain HTTP 401 problem, no upgrade.
        match tokio_tungstenite::connect_async(ws_request(app, "/v1/topics/orders/stream")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
            other => panic!("expected 401: {:?}", other.map(|_| ())),
        }
        // A topic alice may not read: 403 before the upgrade.
        let mut req = ws_request(app, "/v1/topics/invoices/stream");
        req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {ALICE_KEY}")).unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
            other => panic!("expected 403: {:?}", other.map(|_| ())),
        }
        // A browser: the token rides in a subprotocol; the server selects gregor.v1 only.
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ALICE_KEY);
        let mut req = ws_request(app, "/v1/topics/orders/stream?from=earliest");
        let offered = format!("gregor.v1, gregor.bearer.{token}");
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(&offered).unwrap());
        let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(res.headers()["sec-websocket-protocol"], "gregor.v1", "the token is never echoed");
        // A produce frame to a topic without write: an error frame; the socket stays.
        let frame = json!({"type": "produce", "id": 1, "topic": "public", "records": [{"value": 1}]});
        ws.send(Message::Text(frame.to_string().into())).await.unwrap();
        let Some(Message::Text(t)) = next_text(&mut ws).await else { panic!("an error frame") };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str(), f["id"].as_u64()),
            (Some("error"), Some("forbidden"), Some(1))
        );
        let frame = json!({"type": "produce", "id": 2, "records": [{"value": "allowed"}]});
        ws.send(Message::Text(frame.to_string().into())).await.unwrap();
        let mut produced = false;
        for _ in 0..3 {
            let Some(Message::Text(t)) = next_text(&mut ws).await else { break };
            let f: Value = serde_json::from_str(t.as_str()).unwrap();
            if f["type"] == "produced" {
                produced = true;
                break;
            }
        }
        assert!(produced, "the socket still works after a refused frame");
    })
    .await;
}

#[tokio::test]
async fn a_reload_that_removes_read_closes_open_streams_with_4403() {
    crate::helpers::within(async {
        let s = secured_app("").await;
        let app = &s.app;
        let mut req = ws_request(app, "/v1/topics/orders/stream");
        req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {ALICE_KEY}")).unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut group = ws_request(app, "/v1/groups/workers/stream?topics=orders");
        group.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {ALICE_KEY}")).unwrap());
        let (mut member, _) = tokio_tungstenite::connect_async(group).await.unwrap();
        assert!(matches!(next_text(&mut member).await, Some(Message::Text(_))), "the assignment frame");

        // The operator takes alice's read on orders-* away and sends SIGHUP.
        let deny = "\n[[acl]]\nprincipal = \"User:alice\"\nresource = \"topic\"\nname = \"orders\"\noperations = [\"read\"]\npermission = \"deny\"\n";
        std::fs::File::options().append(true).open(&s.file).unwrap().write_all(deny.as_bytes()).unwrap();
        s.app.reloader.reload().unwrap();
        for socket in [&mut ws, &mut member] {
            match next_text(socket).await {
                Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4403, "{}", f.reason),
                other => panic!("expected a 4403 close, got {other:?}"),
            }
        }
        let (status, _, _) = call(app, Who::Key(ALICE_KEY), "GET", "/v1/topics/orders/partitions/0/records", None).await;
        assert_eq!(status, 403, "REST sees the reload too");
        // A bad file changes nothing.
        std::fs::write(&s.file, "[auth]\nno_such_key = 1\n").unwrap();
        assert!(s.app.reloader.reload().is_err());
        let (status, _, _) = call(app, Who::Key(ADMIN_KEY), "GET", "/v1/topics", None).await;
        assert_eq!(status, 200, "the running settings stay");
        let _ = &s.bob_hash;
    })
    .await;
}

#[tokio::test]
async fn anonymous_requests_follow_the_acls_when_allowed() {
    crate::helpers::within(async {
        let s = secured_app("").await;
        let original = std::fs::read_to_string(&s.file).unwrap();
        std::fs::write(&s.file, original.replace("[auth]\n", "[auth]\nallow_anonymous = true\n")).unwrap();
        s.app.reloader.reload().unwrap();
        let (status, _, _) = call(&s.app, Who::Nobody, "GET", "/v1/topics/public/partitions/0/records", None).await;
        assert_eq!(status, 200, "User:ANONYMOUS is covered by User:*");
        let (status, problem, _) = call(&s.app, Who::Nobody, "GET", "/v1/topics/orders", None).await;
        assert_eq!((status, problem["code"].as_str()), (403, Some("forbidden")));
    })
    .await;
}

/// Producing to a missing topic with auto-create on needs `create` as well as `write`.
#[tokio::test]
async fn auto_create_on_produce_needs_create() {
    crate::helpers::within(async {
        let s = secured_app_with("", |c| c.auto_create_topics = true).await;
        let record = Some(json!({"records": [{"value": "x"}]}));
        let (status, problem, _) =
            call(&s.app, Who::Key(ALICE_KEY), "POST", "/v1/topics/orders-new/records", record.clone()).await;
        assert_eq!((status, problem["operation"].as_str()), (403, Some("create")), "{problem}");
        let (status, _, _) = call(&s.app, Who::Key(ADMIN_KEY), "GET", "/v1/topics/orders-new", None).await;
        assert_eq!(status, 404, "the refused produce created nothing");
        let (status, _, _) =
            call(&s.app, Who::Key(ALICE_KEY), "POST", "/v1/topics/orders/records", record.clone()).await;
        assert_eq!(status, 200, "an existing topic needs only write");
        let (status, _, _) = call(&s.app, Who::Key(ADMIN_KEY), "POST", "/v1/topics/orders-new/records", record).await;
        assert_eq!(status, 200, "a principal that may create does");
    })
    .await;
}

/// `gregor serve` as a process on `config`, logging at `log`: the child, its
/// address, its stdout lines (the rest still to read) and what it printed so far.
async fn serve_process(
    dir: &std::path::Path,
    config: &std::path::Path,
    log: &str,
    stderr: std::process::Stdio,
) -> (tokio::process::Child, String, tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gregor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(config)
        .env("GREGOR_LOG", log)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    loop {
        let line = lines.next_line().await.unwrap().expect("the server prints its address");
        printed.push_str(&line);
        if let Some(rest) = line.split("listening on ").nth(1) {
            let base = rest.trim().to_owned();
            return (child, base, lines, printed);
        }
    }
}

/// The binary, run as an operator would.
fn gregor() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_gregor"))
}

#[tokio::test]
async fn serving_a_public_address_without_credentials_is_refused() {
    crate::helpers::within(async {
        let dir = tempfile::tempdir().unwrap();
        let out = gregor().args(["serve", "--listen", "0.0.0.0:0", "--data-dir"]).arg(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "a configuration error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refusing to serve") && err.contains("auth.allow_anonymous"), "{err}");
        assert!(err.contains("gregor new-api-key") && err.contains("gregor hash-password"), "says how: {err}");
    })
    .await;
}

#[tokio::test]
async fn keys_and_hashes_from_the_cli_work_and_no_secret_reaches_the_log() {
    crate::helpers::within(async {
        use std::process::Stdio;
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let out = gregor().args(["new-api-key", "--principal", "svc"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let key = text.lines().nth(1).unwrap().trim_start_matches("# ").to_owned();
        let entry: String = text.lines().skip(2).collect::<Vec<_>>().join("\n");
        let mut hashing = gregor().arg("hash-password").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        hashing.stdin.take().unwrap().write_all(b"s3cret-passw0rd\n").unwrap();
        let hashed = hashing.wait_with_output().unwrap();
        assert!(hashed.status.success());
        let phc = String::from_utf8(hashed.stdout).unwrap().trim().to_owned();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        let config = dir.path().join("gregor.toml");
        std::fs::write(
            &config,
            format!(
                "{entry}\n[[auth.users]]\nname = \"dora\"\npassword_hash = \"{phc}\"\n[auth]\nsuperusers = [\"User:svc\", \"User:dora\"]\n"
            ),
        )
        .unwrap();
        let (mut child, base, mut lines, mut stdout) = serve_process(dir.path(), &config, "trace", Stdio::piped()).await;
        let mut stderr = child.stderr.take().unwrap();
        let log = tokio::spawn(async move {
            let mut all = String::new();
            let _ = stderr.read_to_string(&mut all).await;
            all
        });
        let client = reqwest::Client::new();
        let url = format!("{base}/v1/topics");
        assert_eq!(client.get(&url).bearer_auth(&key).send().await.unwrap().status(), 200, "the new key works");
        let res = client.get(&url).basic_auth("dora", Some("s3cret-passw0rd")).send().await.unwrap();
        assert_eq!(res.status(), 200, "the hashed password works");
        let res = client.get(&url).basic_auth("dora", Some("wrong-passw0rd-x")).send().await.unwrap();
        assert_eq!(res.status(), 401);
        let res = client.get(&url).bearer_auth("wrong-key-abcdef").send().await.unwrap();
        assert_eq!(res.status(), 401);
        let ws = format!("{}/v1/topics/none/stream", base.replace("http://", "ws://"));
        let mut req = ws.into_client_request().unwrap();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key);
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(&format!("gregor.v1, gregor.bearer.{token}")).unwrap());
        let _ = tokio_tungstenite::connect_async(req).await;
        // Stop it and read everything it wrote.
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        child.wait().await.unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            stdout.push_str(&line);
        }
        let all = format!("{stdout}\n{}", log.await.unwrap());
        assert!(all.contains("authentication failed"), "the refusals were logged: {all}");
        assert!(all.contains("Basic(dora, <redacted>)"), "with the user, not the password: {all}");
        let basic = base64::engine::general_purpose::STANDARD.encode("dora:s3cret-passw0rd");
        for secret in [key.as_str(), &token, "s3cret-passw0rd", "wrong-passw0rd-x", "wrong-key-abcdef", &basic] {
            assert!(!all.contains(secret), "a secret reached the log: {secret}");
        }
    })
    .await;
}

/// Frames on a group stream are authorized one by one: a commit naming a topic
/// the principal may not read gets a `forbidden` error frame; the socket stays.
#[tokio::test]
async fn commit_frames_are_authorized_on_their_own() {
    crate::helpers::within(async {
        let s = secured_app("").await;
        let mut req = ws_request(&s.app, "/v1/groups/workers/stream?topics=orders&auto_offset_reset=earliest");
        req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {ALICE_KEY}")).unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert!(matches!(next_text(&mut ws).await, Some(Message::Text(_))), "the assignment frame");
        let commit = json!({"type": "commit", "offsets": [{"topic": "invoices", "partition": 0, "offset": 0}]});
        ws.send(Message::Text(commit.to_string().into())).await.unwrap();
        let Some(Message::Text(t)) = next_text(&mut ws).await else { panic!("an error frame") };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!((f["type"].as_str(), f["code"].as_str()), (Some("error"), Some("forbidden")), "{f}");
        let ack = json!({"type": "ack", "topic": "invoices", "partition": 0, "offset": 0});
        ws.send(Message::Text(ack.to_string().into())).await.unwrap();
        let Some(Message::Text(t)) = next_text(&mut ws).await else { panic!("an error frame") };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(f["code"], "ack_not_delivered", "nothing of invoices was delivered here: {f}");
        let commit = json!({"type": "commit", "offsets": []});
        ws.send(Message::Text(commit.to_string().into())).await.unwrap();
        let Some(Message::Text(t)) = next_text(&mut ws).await else { panic!("the socket stays") };
        assert_eq!(serde_json::from_str::<Value>(t.as_str()).unwrap()["type"], "committed");
    })
    .await;
}

/// The real signal: `kill -HUP` makes a running gregor read its configuration
/// again, and a stream that lost its permission is closed with 4403.
#[tokio::test]
async fn sighup_reloads_the_acls_of_a_running_process() {
    crate::helpers::within(async {
        use std::process::Stdio;
        let dir = tempfile::tempdir().unwrap();
        let bob_hash = gregor::auth::hash_password(BOB_PASSWORD).unwrap();
        let config = dir.path().join("gregor.toml");
        std::fs::write(&config, config_toml(&bob_hash, "")).unwrap();
        let (mut child, base, mut lines, _) = serve_process(dir.path(), &config, "info", Stdio::null()).await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = reqwest::Client::new();
        let res = client
            .post(format!("{base}/v1/topics"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"name": "orders"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let mut req = format!("{}/v1/topics/orders/stream", base.replace("http://", "ws://")).into_client_request().unwrap();
        req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {ALICE_KEY}")).unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let deny = "\n[[acl]]\nprincipal = \"User:alice\"\nresource = \"topic\"\nname = \"orders\"\noperations = [\"read\"]\npermission = \"deny\"\n";
        std::fs::File::options().append(true).open(&config).unwrap().write_all(deny.as_bytes()).unwrap();
        let pid = child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
        match next_text(&mut ws).await {
            Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4403),
            other => panic!("expected a 4403 close after SIGHUP, got {other:?}"),
        }
        let _ = child.start_kill();
    })
    .await;
}

/// The worked configuration in README's "Securing gregor" loads, and its example
/// credentials are the ones its comments say.
#[tokio::test]
async fn the_readme_configuration_is_valid() {
    crate::helpers::within(async {
        let readme = std::fs::read_to_string(crate::helpers::project_root().join("README.md")).unwrap();
        let start = readme.find("cat > gregor.toml <<'TOML'\n").expect("the worked configuration") + 27;
        let toml = &readme[start..start + readme[start..].find("\nTOML\n").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gregor.toml");
        std::fs::write(&path, toml).unwrap();
        let args = gregor::config::ServeArgs { config: Some(path.clone()), ..Default::default() };
        let config = gregor::config::Config::load(&args).unwrap();
        assert!(config.tls.is_some() && config.auth.enabled());
        let security = gregor::auth::Security::new(&config.auth);
        let who = |c: gregor::auth::Credentials| {
            let security = &security;
            async move { security.authenticate(&c).await.map(|id| id.principal.to_string()) }
        };
        use gregor::auth::Credentials::{Basic, Bearer};
        assert_eq!(who(Bearer("admin-key-change-me".into())).await.unwrap(), "User:admin");
        assert_eq!(who(Bearer("alice-key-change-me".into())).await.unwrap(), "User:alice");
        let bob = Basic { user: "bob".into(), password: "bob-password-change-me".into() };
        assert_eq!(who(bob).await.unwrap(), "User:bob");
    })
    .await;
}

/// The Schema Registry under the ACLs: a `<topic>-value` subject is the topic's (alice may
/// register under `orders-value`, not under `orders-secret-value` or `invoices-value`);
/// refusals come in Confluent's error body, which its clients read.
#[tokio::test]
async fn registry_subjects_follow_their_topics_acls() {
    crate::helpers::within(async {
        let s = secured_app("").await;
        let app = &s.app;
        let schema = json!({"schema": "{\"type\": \"string\"}"});
        let register = |subject: &str, key: Option<&'static str>| {
            let mut req = app
                .client
                .post(app.url(&format!("/registry/subjects/{subject}/versions")))
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .body(schema.to_string());
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            async move {
                let res = req.send().await.unwrap();
                let status = res.status().as_u16();
                (status, res.json::<Value>().await.unwrap())
            }
        };
        let (status, body) = register("orders-value", Some(ALICE_KEY)).await;
        assert_eq!(status, 200, "{body}");
        for subject in ["orders-secret-value", "invoices-value", "free-form"] {
            let (status, body) = register(subject, Some(ALICE_KEY)).await;
            assert_eq!((status, body["error_code"].as_u64()), (403, Some(40301)), "{subject}: {body}");
        }
        let (status, body) = register("orders-value", None).await;
        assert_eq!((status, body["error_code"].as_u64()), (401, Some(40101)), "{body}");
        let (status, body) = register("invoices-value", Some(ADMIN_KEY)).await;
        assert_eq!(status, 200, "{body}");
        let res = app.client.get(app.url("/registry/subjects")).bearer_auth(ALICE_KEY).send().await.unwrap();
        let listed: Value = res.json().await.unwrap();
        assert_eq!(listed, json!(["orders-value"]), "only the subjects of topics alice may describe");
    })
    .await;
}
