//! The console and Swagger UI in a real headless Chromium, driven over WebDriver
//! (chromedriver + fantoccini). Screenshots land in `target/screenshots/`.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::helpers::{TestApp, spawn_app};

struct Browser {
    client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

/// chromedriver runs in a process group of its own, with the Chromium it starts: a test that
/// panics before closing its session still leaves no browser behind (its console would keep
/// polling the machine's servers).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
    }
}

async fn browser() -> Browser {
    browser_with(&["--window-size=1400,1000"]).await
}

/// A browser with extra Chromium flags (a window size, a forced colour scheme).
async fn browser_with(flags: &[&str]) -> Browser {
    let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let driver = Command::new(&driver_bin)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {driver_bin} ({e}); scripts/setup installs chromium-driver"));
    let profile = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
    ]
    .into_iter()
    .chain(flags.iter().copied())
    .map(String::from)
    .collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let mut caps = serde_json::Map::new();
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": args
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut last = None;
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
            Ok(client) => return Browser { client, _driver: Driver(driver), _profile: profile },
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot open a browser session: {last:?}");
}

/// chromedriver's log of the page's console (`goog:loggingPrefs`), read and emptied.
#[derive(Debug)]
struct BrowserLog;

type UrlError = <reqwest::Url as std::str::FromStr>::Err;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &reqwest::Url, session: Option<&str>) -> Result<reqwest::Url, UrlError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &reqwest::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

/// Asserts that the page logged no error to its console since the last look (a failed
/// request, an exception, a blocked resource).
async fn assert_no_console_errors(client: &Client) {
    let log = client.issue_cmd(BrowserLog).await.unwrap();
    let errors: Vec<&serde_json::Value> = log.as_array().unwrap().iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let dir = crate::helpers::project_root().join("target").join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

async fn wait_text(client: &Client, css: &str, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(el) = client.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
            && text.contains(want)
        {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no element {css} with text {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `css` finds, finding it again if it went stale: the topics and groups
/// views re-render on their refresh timer, so an element found just before a refresh is gone
/// when clicked.
async fn click(client: &Client, css: &str) {
    for _ in 0..50 {
        if let Ok(el) = client.find(Locator::Css(css)).await
            && el.click().await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not click {css}");
}

/// Chooses `value` in the `<select>` `css` finds.
async fn select(client: &Client, css: &str, value: &str) {
    client.find(Locator::Css(css)).await.unwrap().select_by_value(value).await.unwrap();
}

/// Types `text` into the field `css` finds.
async fn type_into(client: &Client, css: &str, text: &str) {
    client.find(Locator::Css(css)).await.unwrap().send_keys(text).await.unwrap();
}

async fn with_topic() -> TestApp {
    let app = spawn_app().await;
    app.create_topic("browser-topic", 2).await;
    app
}

#[tokio::test]
async fn console_shows_records_live() {
    crate::helpers::within(async {
        let app = with_topic().await;
        let b = browser().await;
        let c = &b.client;
        c.goto(&app.url("/")).await.unwrap();
        wait_text(c, "#topics tbody", "browser-topic").await;
        c.wait().for_element(Locator::Css("#live-topic option[value='browser-topic']")).await.unwrap();
        select(c, "#live-topic", "browser-topic").await;
        select(c, "#live-from", "latest").await;
        click(c, "#live-start").await;
        wait_text(c, "#live-status", "live:").await;

        app.produce("browser-topic", json!([{"key": "k-1", "value": {"hello": "from the test"}, "partition": 1}]))
            .await;
        let row = wait_text(c, "#live-records tr[data-offset='0']", "from the test").await;
        assert!(row.contains("k-1"), "{row}");

        // Groups and errors render too: a bad topic name shows the problem's detail.
        type_into(c, "#create-topic input[name=name]", "..").await;
        c.execute("document.querySelector('#create-topic input[name=name]').removeAttribute('pattern')", vec![])
            .await
            .unwrap();
        click(c, "#create-topic button").await;
        wait_text(c, "#error", "invalid_topic_name").await;
        screenshot(c, "console.png").await;
        b.client.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn swagger_ui_lists_operations_and_tries_one() {
    crate::helpers::within(async {
        let app = with_topic().await;
        let b = browser().await;
        let c = &b.client;
        c.goto(&app.url("/docs/")).await.unwrap();
        c.wait().for_element(Locator::Css(".opblock")).await.unwrap();
        let ops = c.find_all(Locator::Css(".opblock")).await.unwrap();
        assert!(ops.len() >= 20, "operations listed: {}", ops.len());
        let op = "#operations-topics-list_topics";
        click(c, &format!("{op} .opblock-summary")).await;
        c.wait().for_element(Locator::Css(&format!("{op} .try-out__btn"))).await.unwrap().click().await.unwrap();
        c.wait().for_element(Locator::Css(&format!("{op} .execute"))).await.unwrap().click().await.unwrap();
        let status = wait_text(c, &format!("{op} .live-responses-table tr.response .response-col_status"), "200").await;
        assert!(status.contains("200"));
        wait_text(c, &format!("{op} .live-responses-table tr.response .response-col_description"), "browser-topic")
            .await;
        screenshot(c, "swagger-ui.png").await;
        b.client.close().await.unwrap();
    })
    .await;
}

/// With authentication on, the console asks for a token; given one (kept in
/// sessionStorage), it creates and lists topics and follows one live over
/// WebSocket, the token riding in the `gregor.bearer` subprotocol.
#[tokio::test]
async fn console_logs_in_with_a_token_and_streams() {
    crate::helpers::within(async {
        use gregor::auth::{AclEntry, AclOperation, ApiKey, AuthSettings, Pattern, Permission, ResourceType};
        let key = "console-key-5e1b";
        let admin_key = "console-admin-2c7f";
        let sha = |key: &str| -> [u8; 32] {
            let digest = gregor::auth::api_key_digest(key);
            std::array::from_fn(|i| u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).unwrap())
        };
        let (sha256, admin_sha256) = (sha(key), sha(admin_key));
        let app = crate::helpers::spawn_app_with(move |c| {
            c.auth = AuthSettings {
                api_keys: vec![
                    ApiKey { principal: "viewer".into(), sha256 },
                    ApiKey { principal: "admin".into(), sha256: admin_sha256 },
                ],
                superusers: vec!["User:admin".into()],
                acls: vec![AclEntry {
                    principal: "User:viewer".into(),
                    resource: ResourceType::Topic,
                    name: "browser".into(),
                    pattern: Pattern::Prefixed,
                    operations: vec![AclOperation::Create, AclOperation::Read, AclOperation::Write],
                    permission: Permission::Allow,
                }],
                ..AuthSettings::default()
            };
        })
        .await;
        // A topic the viewer may not see.
        let res = app
            .client
            .post(app.url("/v1/topics"))
            .bearer_auth(admin_key)
            .json(&json!({"name": "secret-topic"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let b = browser().await;
        let c = &b.client;
        c.goto(&app.url("/")).await.unwrap();
        wait_text(c, "#error", "unauthenticated").await;
        type_into(c, "#token", key).await;
        click(c, "#auth button").await;
        wait_text(c, "#whoami", "token set").await;
        type_into(c, "#create-topic input[name=name]", "browser-live").await;
        click(c, "#create-topic button").await;
        wait_text(c, "#topics tbody", "browser-live").await;
        c.wait().for_element(Locator::Css("#live-topic option[value='browser-live']")).await.unwrap();
        select(c, "#live-topic", "browser-live").await;
        click(c, "#live-start").await;
        wait_text(c, "#live-status", "live:").await;
        let res = app
            .client
            .post(app.url("/v1/topics/browser-live/records"))
            .bearer_auth(key)
            .json(&json!({"records": [{"value": {"seen": "through the token"}}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        wait_text(c, "#live-records tr[data-offset='0']", "through the token").await;
        // Only what the principal may see: no denied topic anywhere, the cluster's latency
        // chart explained rather than broken.
        let listed = c.find(Locator::Css("#topics tbody")).await.unwrap().text().await.unwrap();
        assert!(listed.contains("browser-live") && !listed.contains("secret-topic"), "{listed}");
        let options = c.find_all(Locator::Css("#live-topic option[value='secret-topic']")).await.unwrap();
        assert!(options.is_empty(), "the denied topic is not offered");
        wait_text(c, "#chart-latency", "Not shown").await;
        screenshot(c, "console-token.png").await;
        b.client.close().await.unwrap();
    })
    .await;
}

/// With authentication on, Swagger UI's "Authorize" takes a bearer token from
/// the OpenAPI security schemes, and "Try it out" then succeeds.
#[tokio::test]
async fn swagger_ui_authorizes_with_a_bearer_token() {
    crate::helpers::within(async {
        use gregor::auth::{ApiKey, AuthSettings};
        let key = "swagger-key-8a2d";
        let digest = gregor::auth::api_key_digest(key);
        let sha256: [u8; 32] = std::array::from_fn(|i| u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).unwrap());
        let app = crate::helpers::spawn_app_with(move |c| {
            c.auth = AuthSettings {
                api_keys: vec![ApiKey { principal: "swagger".into(), sha256 }],
                superusers: vec!["User:swagger".into()],
                ..AuthSettings::default()
            };
        })
        .await;
        let b = browser().await;
        let c = &b.client;
        c.goto(&app.url("/docs/")).await.unwrap();
        c.wait().for_element(Locator::Css(".auth-wrapper .authorize")).await.unwrap().click().await.unwrap();
        // The bearer scheme's box (the basic one asks for a user and a password).
        let bearer = "//div[contains(@class,'auth-container')][.//h4[contains(., 'bearer')]]";
        let input = c.wait().for_element(Locator::XPath(&format!("{bearer}//input"))).await.unwrap();
        input.send_keys(key).await.unwrap();
        c.find(Locator::XPath(&format!("{bearer}//button[contains(@class,'authorize')]")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        click(c, ".modal-ux .close-modal").await;
        let op = "#operations-topics-list_topics";
        click(c, &format!("{op} .opblock-summary")).await;
        c.wait().for_element(Locator::Css(&format!("{op} .try-out__btn"))).await.unwrap().click().await.unwrap();
        c.wait().for_element(Locator::Css(&format!("{op} .execute"))).await.unwrap().click().await.unwrap();
        let status = wait_text(c, &format!("{op} .live-responses-table tr.response .response-col_status"), "200").await;
        assert!(status.contains("200"), "authorized: {status}");
        b.client.close().await.unwrap();
    })
    .await;
}

/// The console shows a topic's schema and renders decoded values with their schema,
/// pretty-printed on a click.
#[tokio::test]
async fn console_shows_a_topics_schema_and_decoded_values() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic_with("users", 1, json!({"value_schema_validation": true})).await;
        let schema =
            r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"}]}"#;
        let res = app
            .client
            .post(app.url("/registry/subjects/users-value/versions"))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(json!({ "schema": schema }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        app.produce("users", json!([{"key": "u1", "value": {"id": 1, "name": "ada"}}])).await;

        let b = browser().await;
        let c = &b.client;
        c.goto(&app.url("/")).await.unwrap();
        wait_text(c, "#topics tbody", "users").await;
        click(c, "#topics tbody tr[data-topic='users']").await;
        wait_text(c, "#topic-detail", "values are validated against subject users-value").await;
        let summary = wait_text(c, "#topic-detail details.schema summary", "users-value v1").await;
        assert!(summary.contains("AVRO"), "{summary}");

        c.wait().for_element(Locator::Css("#live-topic option[value='users']")).await.unwrap();
        select(c, "#live-topic", "users").await;
        select(c, "#live-from", "earliest").await;
        click(c, "#live-start").await;
        let row = wait_text(c, "#live-records tr[data-offset='0']", "ada").await;
        assert!(row.contains("schema 1"), "the decoded value names its schema: {row}");
        // A click pretty-prints the value.
        click(c, "#live-records tr[data-offset='0'] td.expandable").await;
        wait_text(c, "#live-records tr[data-offset='0'] td.expandable .json-tree", "\"name\": \"ada\"").await;
        screenshot(c, "console-schema.png").await;
        assert_no_console_errors(c).await;
        b.client.close().await.unwrap();
    })
    .await;
}

/// The record browser (issue 16): seek to an offset and see exactly the records from there,
/// page on, filter by key and by a JSON path, and open a record's permalink.
#[tokio::test]
async fn console_browses_seeks_and_filters_records() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("orders", 1).await;
        let records: Vec<_> = (0..120)
            .map(|i| {
                let status = if i % 10 == 3 { "failed" } else { "ok" };
                json!({"key": format!("user-{}", i % 7), "value": {"n": i, "status": status}, "partition": 0})
            })
            .collect();
        app.produce("orders", json!(records)).await;

        let b = browser().await;
        let c = &b.client;
        c.goto(&app.url("/")).await.unwrap();
        c.wait().for_element(Locator::Css("#browse select[name=topic] option[value='orders']")).await.unwrap();
        select(c, "#browse select[name=topic]", "orders").await;
        c.wait().for_element(Locator::Css("#browse select[name=partition] option[value='0']")).await.unwrap();
        select(c, "#browse select[name=partition]", "0").await;
        select(c, "#browse select[name=seek]", "offset").await;
        type_into(c, "#browse input[name=offset]", "40").await;
        click(c, "#browse button[type=submit]").await;
        wait_text(c, "#browse-status", "offsets 40–89").await;
        let first = c.find(Locator::Css("#browse-records tr:first-child")).await.unwrap();
        assert_eq!(first.attr("data-offset").await.unwrap().as_deref(), Some("40"));
        let rows = c.find_all(Locator::Css("#browse-records tr")).await.unwrap();
        assert_eq!(rows.len(), 50, "one page from offset 40");

        // The next page, then a JSON path filter: only failed orders of the page.
        click(c, "#browse-next").await;
        wait_text(c, "#browse-status", "offsets 90–119").await;
        type_into(c, "#browse input[name=path]", "$.status == \"failed\"").await;
        click(c, "#browse button[type=submit]").await;
        wait_text(c, "#browse-status", "5 of 50 match").await;
        let offsets: Vec<String> = {
            let mut out = Vec::new();
            for row in c.find_all(Locator::Css("#browse-records tr")).await.unwrap() {
                out.push(row.attr("data-offset").await.unwrap().unwrap_or_default());
            }
            out
        };
        assert_eq!(offsets, ["43", "53", "63", "73", "83"], "failed orders from offset 40");

        // By key: user-3 within the page, with the JSON path still on.
        type_into(c, "#browse input[name=key]", "user-3").await;
        click(c, "#browse button[type=submit]").await;
        wait_text(c, "#browse-status", "1 of 50 match").await;
        let row = wait_text(c, "#browse-records tr", "user-3").await;
        assert!(row.contains("73"), "offset 73 is user-3 and failed: {row}");

        // A permalink opens the browser at its record.
        c.goto(&app.url("/#record=orders/0/117")).await.unwrap();
        c.refresh().await.unwrap();
        wait_text(c, "#browse-records tr.focused", "user-5").await;
        screenshot(c, "console-browse.png").await;
        assert_no_console_errors(c).await;
        b.client.close().await.unwrap();
    })
    .await;
}

/// The topic page edits a topic's configuration, and the groups page resets a group's offsets
/// (after a preview of what moves and a confirmation) and deletes an empty group (issue 16).
#[tokio::test]
async fn console_edits_a_topic_and_resets_and_deletes_a_group() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("events", 2).await;
        app.produce(
            "events",
            json!([{"value": 1, "partition": 0}, {"value": 2, "partition": 0}, {"value": 3, "partition": 1}]),
        )
        .await;
        // A group that committed the ends and left: empty, with offsets.
        let (status, m) = app.post("/v1/groups/billing/members", json!({"topics": ["events"]})).await;
        assert_eq!(status, 201, "{m}");
        let offsets =
            json!([{"topic": "events", "partition": 0, "offset": 2}, {"topic": "events", "partition": 1, "offset": 1}]);
        let (status, body) = app
            .post(
                "/v1/groups/billing/offsets",
                json!({"member_id": m["member_id"], "generation": m["generation"], "offsets": offsets}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let res = app
            .client
            .delete(app.url(&format!("/v1/groups/billing/members/{}", m["member_id"].as_str().unwrap())))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);

        let b = browser().await;
        let c = &b.client;
        c.goto(&app.url("/")).await.unwrap();

        // The topic page: a longer retention, saved with PATCH.
        wait_text(c, "#topics tbody", "events").await;
        click(c, "#topics tbody tr[data-topic='events']").await;
        let retention = c.find(Locator::Css("#topic-settings input[name=retention_ms]")).await.unwrap();
        retention.clear().await.unwrap();
        retention.send_keys("86400000").await.unwrap();
        click(c, "#topic-settings button[type=submit]").await;
        wait_text(c, "#topic-detail h3", "retention 86400000 ms").await;
        let (_, topic) = app.get("/v1/topics/events").await;
        assert_eq!(topic["config"]["retention_ms"], 86_400_000, "{topic}");

        // The group: preview a reset to earliest, confirm it, and see the offsets move.
        wait_text(c, "#groups tbody", "billing").await;
        click(c, "#groups tbody tr").await;
        c.wait().for_element(Locator::Css("#group-reset select[name=to]")).await.unwrap();
        select(c, "#group-reset select[name=to]", "earliest").await;
        click(c, "#group-reset button[type=submit]").await;
        let preview = wait_text(c, "#group-reset-preview", "-2").await;
        assert!(preview.contains("-1"), "partition 1 moves back one: {preview}");
        click(c, "#group-reset-preview button").await;
        c.accept_alert().await.unwrap();
        let moved = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
            let (_, g) = app.get("/v1/groups/billing").await;
            g["offsets"].as_array().is_some_and(|o| o.iter().all(|o| o["committed_offset"] == 0))
        })
        .await;
        assert!(moved, "the reset moved the group to earliest");

        // Deleting the empty group.
        click(c, "#group-delete").await;
        c.accept_alert().await.unwrap();
        let gone = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
            app.client.get(app.url("/v1/groups/billing")).send().await.is_ok_and(|r| r.status() == 404)
        })
        .await;
        assert!(gone, "the group was deleted");
        screenshot(c, "console-groups.png").await;
        assert_no_console_errors(c).await;
        b.client.close().await.unwrap();
    })
    .await;
}

/// The live view filters what it shows and counts it, and a pause holds records until resumed.
#[tokio::test]
async fn console_live_view_filters_counts_and_pauses() {
    crate::helpers::within(async {
        let app = with_topic().await;
        let b = browser().await;
        let c = &b.client;
        c.goto(&app.url("/")).await.unwrap();
        c.wait().for_element(Locator::Css("#live-topic option[value='browser-topic']")).await.unwrap();
        select(c, "#live-topic", "browser-topic").await;
        type_into(c, "#live-path", "$.level == \"error\"").await;
        // The filter applies on change (leaving the field).
        click(c, "#live-key").await;
        click(c, "#live-start").await;
        wait_text(c, "#live-status", "live:").await;

        let batch = |tag: &str| {
            json!([{"value": {"level": "info", "tag": tag}, "partition": 0},
                   {"value": {"level": "error", "tag": tag}, "partition": 0},
                   {"value": {"level": "info", "tag": tag}, "partition": 0}])
        };
        app.produce("browser-topic", batch("first")).await;
        wait_text(c, "#live-counts", "3 received · 1 shown · 2 filtered out").await;
        let rows = c.find_all(Locator::Css("#live-records tr")).await.unwrap();
        assert_eq!(rows.len(), 1, "only the error is shown");

        // Paused: records wait, and arrive on resume.
        click(c, "#live-pause").await;
        app.produce("browser-topic", batch("second")).await;
        wait_text(c, "#live-status", "paused: 3 records waiting").await;
        assert_eq!(c.find_all(Locator::Css("#live-records tr")).await.unwrap().len(), 1);
        click(c, "#live-pause").await;
        wait_text(c, "#live-counts", "6 received · 2 shown · 4 filtered out").await;
        wait_text(c, "#live-records tr:first-child", "second").await;
        assert_no_console_errors(c).await;
        b.client.close().await.unwrap();
    })
    .await;
}

/// Reads a data attribute of the first element matching `css` (empty when absent).
async fn attr(client: &Client, css: &str, name: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(el) => el.attr(name).await.ok().flatten().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until `check` holds for the `name` attribute of `css`; returns its value.
async fn wait_attr(client: &Client, css: &str, name: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = attr(client, css, name).await;
        if check(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{css} [{name}] never {what} (it is {v:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn positive(csv: &str) -> bool {
    csv.split(',').any(|v| v.parse::<f64>().is_ok_and(|v| v > 0.0))
}

/// The charts: a topic's records per second drawn and redrawn while records arrive, produce
/// latency, and a group's lag per partition going to zero once it has consumed everything.
#[tokio::test]
async fn console_charts_rates_latency_and_lag() {
    crate::helpers::within(async {
        let app = with_topic().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let producing = {
            let (client, url, stop) = (app.client.clone(), app.url("/v1/topics/browser-topic/records"), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.is_cancelled() {
                    let recs: Vec<_> = (0..5).map(|k| json!({"value": {"n": i * 5 + k}, "partition": k % 2})).collect();
                    let res = client.post(&url).json(&json!({"records": recs})).send().await.unwrap();
                    assert_eq!(res.status(), 200);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let b = browser().await;
        let c = &b.client;
        c.goto(&app.url("/")).await.unwrap();

        // The overview: the topic's rate, drawn and then redrawn with newer samples.
        wait_attr(c, "#chart-topics", "data-last", "shows a rate", positive).await;
        let line = "#chart-topics path[data-series='browser-topic']";
        let before = attr(c, line, "d").await;
        assert!(!before.is_empty(), "a line for the topic");
        wait_attr(c, line, "d", "is redrawn", |d| !d.is_empty() && d != before).await;
        wait_attr(c, "#chart-latency", "data-last", "shows a latency", positive).await;
        wait_text(c, "#chart-latency .chart-legend", "p99").await;

        // The topic page: per-partition rates, sizes and chart.
        click(c, "#topics tbody tr[data-topic='browser-topic']").await;
        wait_attr(c, "#chart-topic", "data-last", "shows both partitions' rates", |v| {
            v.split(',').filter(|x| x.parse::<f64>().is_ok_and(|x| x > 0.0)).count() == 2
        })
        .await;
        let sizes = wait_text(c, "#topic-partitions", "B").await;
        assert!(sizes.contains("KiB") || sizes.contains(" B"), "{sizes}");
        screenshot(c, "console-charts.png").await;
        assert_no_console_errors(c).await;
        stop.cancel();
        producing.await.unwrap();

        // A group committed at the beginning lags on both partitions ...
        let (status, body) =
            app.post("/v1/groups/chart-g/offsets/reset", json!({"topic": "browser-topic", "to": "earliest"})).await;
        assert_eq!(status, 200, "{body}");
        wait_text(c, "#groups tbody", "chart-g").await;
        click(c, "#groups tbody tr").await;
        let lags = || async {
            let mut out = Vec::new();
            for p in 0..2 {
                let css = format!("#group-offsets tr[data-partition='browser-topic/{p}'] td.lag");
                let text = match c.find(Locator::Css(&css)).await {
                    Ok(el) => el.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                out.push(text.parse::<u64>().ok());
            }
            out
        };
        let lagging = crate::helpers::eventually(Duration::from_secs(20), || async {
            lags().await.iter().all(|l| l.is_some_and(|l| l > 0))
        })
        .await;
        assert!(lagging, "lag per partition shown: {:?}", lags().await);
        wait_attr(c, "#chart-group", "data-last", "charts the lag", positive).await;

        // ... and, once a member consumed and committed everything, by nothing.
        let (status, m) = app.post("/v1/groups/chart-g/members", json!({"topics": ["browser-topic"]})).await;
        assert_eq!(status, 201, "{m}");
        let member = m["member_id"].as_str().unwrap().to_owned();
        let mut ends = std::collections::BTreeMap::new();
        let mut cursor: Option<String> = m["cursor"].as_str().map(str::to_owned);
        let (_, topic) = app.get("/v1/topics/browser-topic").await;
        let want: u64 = topic["partitions"].as_array().unwrap().iter().map(|p| p["end_offset"].as_u64().unwrap()).sum();
        let mut got = 0;
        while got < want {
            let mut url = format!("/v1/groups/chart-g/members/{member}/records?wait_ms=1000&max_records=10000");
            if let Some(cur) = &cursor {
                url.push_str(&format!("&cursor={cur}"));
            }
            let (status, body) = app.get(&url).await;
            assert_eq!(status, 200, "{body}");
            cursor = body["cursor"].as_str().map(str::to_owned);
            for r in body["records"].as_array().unwrap() {
                got += 1;
                let next = r["offset"].as_u64().unwrap() + 1;
                ends.insert(r["partition"].as_u64().unwrap(), next);
            }
        }
        let offsets: Vec<_> =
            ends.iter().map(|(p, o)| json!({"topic": "browser-topic", "partition": p, "offset": o})).collect();
        let (status, body) = app
            .post(
                "/v1/groups/chart-g/offsets",
                json!({"member_id": member, "generation": m["generation"], "offsets": offsets}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let caught_up = crate::helpers::eventually(Duration::from_secs(20), || async {
            lags().await.iter().all(|l| *l == Some(0))
        })
        .await;
        assert!(caught_up, "lag went to zero: {:?}", lags().await);
        wait_attr(c, "#chart-group", "data-last", "charts the caught-up lag", |v| v.split(',').all(|x| x == "0")).await;
        wait_text(c, "#group-offsets", "↓").await;
        c.execute("document.querySelector('#group-detail').scrollIntoView()", vec![]).await.unwrap();
        screenshot(c, "console-lag.png").await;
        assert_no_console_errors(c).await;
        b.client.close().await.unwrap();
    })
    .await;
}

/// The record browser over all partitions at once (merged by time, paged both ways), with a
/// header filter, a hex view of binary values and folding JSON.
#[tokio::test]
async fn console_browses_all_partitions_headers_hex_and_json() {
    crate::helpers::within(async {
        use base64::Engine;
        let app = spawn_app().await;
        app.create_topic("mixed", 3).await;
        // Recent timestamps (retention counts from them), a second apart.
        let base = crate::helpers::now_ms() - 120_000;
        let records: Vec<_> = (0..60u64)
            .map(|i| {
                let value = if i == 4 {
                    json!({"value_base64": base64::engine::general_purpose::STANDARD.encode([0xde, 0xad, 0xbe, 0xef, b'h', b'i'])})
                } else {
                    json!({"value": {"n": i, "deep": {"inner": {"leaf": i}}}})
                };
                let mut r = json!({"partition": i % 3, "timestamp": base + i * 1000,
                    "headers": [{"name": "trace", "value": format!("{i}")}]});
                r.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
                r
            })
            .collect();
        app.produce("mixed", json!(records)).await;

        let b = browser().await;
        let c = &b.client;
        c.goto(&app.url("/")).await.unwrap();
        c.wait().for_element(Locator::Css("#browse select[name=topic] option[value='mixed']")).await.unwrap();
        select(c, "#browse select[name=topic]", "mixed").await;
        c.wait().for_element(Locator::Css("#browse select[name=partition] option[value='2']")).await.unwrap();
        select(c, "#browse select[name=partition]", "all").await;
        click(c, "#browse button[type=submit]").await;
        wait_text(c, "#browse-status", "50 records by time from 3 partitions").await;
        let rows = async || {
            let mut out = Vec::new();
            for row in c.find_all(Locator::Css("#browse-records tr")).await.unwrap() {
                let p = row.attr("data-partition").await.unwrap().unwrap_or_default();
                let o = row.attr("data-offset").await.unwrap().unwrap_or_default();
                out.push(format!("{p}/{o}"));
            }
            out
        };
        let first = rows().await;
        assert_eq!(first.len(), 50);
        assert_eq!(&first[..4], ["0/0", "1/0", "2/0", "0/1"], "merged by time across partitions");
        click(c, "#browse-next").await;
        wait_text(c, "#browse-status", "10 records by time").await;
        assert_eq!(rows().await.first().map(String::as_str), Some("2/16"), "record 50 is partition 2, offset 16");
        click(c, "#browse-prev").await;
        wait_text(c, "#browse-status", "50 records by time").await;
        assert_eq!(rows().await, first, "back to the first page");

        // A header filter: trace=7 is one record.
        type_into(c, "#browse input[name=header]", "trace=7").await;
        click(c, "#browse button[type=submit]").await;
        wait_text(c, "#browse-status", "1 of 50 match").await;
        assert_eq!(rows().await, ["1/2"]);

        // Binary values open as a hex dump; JSON folds below its second level.
        c.find(Locator::Css("#browse input[name=header]")).await.unwrap().clear().await.unwrap();
        type_into(c, "#browse input[name=header]", "trace=4").await;
        click(c, "#browse button[type=submit]").await;
        wait_text(c, "#browse-status", "1 of 50 match").await;
        click(c, "#browse-records td.expandable").await;
        let hex = wait_text(c, "#browse-records pre.hex", "de ad be ef").await;
        assert!(hex.contains("....hi"), "printable bytes beside the hex: {hex}");
        c.find(Locator::Css("#browse input[name=header]")).await.unwrap().clear().await.unwrap();
        type_into(c, "#browse input[name=header]", "trace=3").await;
        click(c, "#browse button[type=submit]").await;
        wait_text(c, "#browse-status", "1 of 50 match").await;
        click(c, "#browse-records td.expandable").await;
        wait_text(c, "#browse-records .json-tree", "\"n\": 3").await;
        let folded: bool = c
            .execute(
                "const inner = [...document.querySelectorAll('#browse-records details.json-tree')]\
                   .find((d) => d.querySelector(':scope > summary').textContent.startsWith('\"inner\"'));\
                 return inner !== undefined && !inner.open;",
                vec![],
            )
            .await
            .unwrap()
            .as_bool()
            .unwrap();
        assert!(folded, "the third level starts folded");
        screenshot(c, "console-browse-all.png").await;
        assert_no_console_errors(c).await;
        b.client.close().await.unwrap();
    })
    .await;
}

/// Usable on a phone-sized screen, in dark mode, by keyboard: nothing scrolls the page
/// sideways, the dark palette applies, and a topic opens from the keyboard.
#[tokio::test]
async fn console_works_on_a_phone_in_dark_mode_by_keyboard() {
    crate::helpers::within(async {
        let app = with_topic().await;
        let b = browser_with(&["--window-size=390,844", "--force-dark-mode"]).await;
        let c = &b.client;
        c.goto(&app.url("/")).await.unwrap();
        wait_text(c, "#topics tbody", "browser-topic").await;
        let fits =
            c.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![]).await.unwrap();
        let widths =
            c.execute("return [document.documentElement.scrollWidth, window.innerWidth]", vec![]).await.unwrap();
        assert_eq!(fits.as_bool(), Some(true), "the page does not scroll sideways: {widths}");
        let dark = c
            .execute(
                "const [r, g, b] = getComputedStyle(document.body).backgroundColor.match(/\\d+/g).map(Number);\
                 return matchMedia('(prefers-color-scheme: dark)').matches && r + g + b < 150;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(dark.as_bool(), Some(true), "dark mode follows the system");
        // Tab reaches a topic row; Enter opens it.
        c.execute("document.querySelector('#topics tbody tr').focus()", vec![]).await.unwrap();
        let row = c.active_element().await.unwrap();
        assert_eq!(row.attr("data-topic").await.unwrap().as_deref(), Some("browser-topic"));
        row.send_keys(&fantoccini::key::Key::Enter.to_string()).await.unwrap();
        wait_text(c, "#topic-detail h3", "browser-topic").await;
        screenshot(c, "console-phone-dark.png").await;
        assert_no_console_errors(c).await;
        b.client.close().await.unwrap();
    })
    .await;
}

/// Over HTTPS the console works the same: its requests and its WebSocket (wss) go to the
/// page's own origin.
#[tokio::test]
async fn console_works_over_https() {
    crate::helpers::within(async {
        let ca = crate::tls::Ca::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue("gregor", &["localhost", "127.0.0.1"]);
        std::fs::write(dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        let settings = gregor::http::tls::TlsSettings {
            cert_file: dir.path().join("server.pem"),
            key_file: dir.path().join("server.key"),
            client_ca_file: None,
            handshake_timeout: Duration::from_secs(5),
        };
        let app = crate::helpers::spawn_app_with(move |c| c.tls = Some(settings)).await;
        let https = app.base.replace("http://127.0.0.1", "https://localhost");
        // The test's CA is not the browser's: it is told to accept the certificate.
        let b = browser_with(&["--window-size=1400,1000", "--ignore-certificate-errors"]).await;
        let c = &b.client;
        c.goto(&format!("{https}/")).await.unwrap();
        wait_text(c, "#health", "ready").await;
        type_into(c, "#create-topic input[name=name]", "secure").await;
        click(c, "#create-topic button").await;
        wait_text(c, "#topics tbody", "secure").await;
        c.wait().for_element(Locator::Css("#live-topic option[value='secure']")).await.unwrap();
        select(c, "#live-topic", "secure").await;
        click(c, "#live-start").await;
        wait_text(c, "#live-status", "live:").await;
        select(c, "#produce select[name=topic]", "secure").await;
        type_into(c, "#produce textarea[name=value]", r#"{"over": "tls"}"#).await;
        click(c, "#produce button[type=submit]").await;
        wait_text(c, "#live-records tr[data-offset='0']", "tls").await;
        assert_no_console_errors(c).await;
        b.client.close().await.unwrap();
        drop(dir);
    })
    .await;
}
