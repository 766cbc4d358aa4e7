//! Idempotent polls (SPEC §3, "Lost answers lose nothing") over real HTTP: a poll
//! repeated with the cursor of the last answer received gets the same records;
//! forged and foreign cursors are refused; a randomized run that drops answers
//! misses nothing. Also: deleting a topic drops every group's offsets for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with};

async fn group_app() -> TestApp {
    spawn_app_with(|c| {
        c.groups.min_session_timeout_ms = 100;
        c.session_check_interval = Duration::from_millis(20);
    })
    .await
}

/// A member as its client knows it: id, generation, and the cursor of the last
/// answer it received.
#[derive(Clone)]
struct Member {
    id: String,
    generation: u64,
    cursor: String,
}

async fn join(app: &TestApp, group: &str, body: Value) -> Member {
    let (status, b) = app.post(&format!("/v1/groups/{group}/members"), body).await;
    assert_eq!(status, 201, "{b}");
    let cursor = b["cursor"].as_str().expect("a join answer carries a cursor").to_owned();
    Member { id: b["member_id"].as_str().unwrap().to_owned(), generation: b["generation"].as_u64().unwrap(), cursor }
}

/// One poll with `cursor` (none: the server-held positions); the raw answer.
async fn poll_with(app: &TestApp, group: &str, member: &str, cursor: Option<&str>, max: u32) -> (u16, Value) {
    long_poll(app, group, member, cursor, max, 0).await
}

async fn long_poll(
    app: &TestApp,
    group: &str,
    member: &str,
    cursor: Option<&str>,
    max: u32,
    wait_ms: u64,
) -> (u16, Value) {
    let mut url = app.url(&format!("/v1/groups/{group}/members/{member}/records"));
    url.push_str(&format!("?max_records={max}&wait_ms={wait_ms}"));
    let mut req = app.client.get(url);
    if let Some(c) = cursor {
        req = req.query(&[("cursor", c)]);
    }
    crate::helpers::status_json(req.send().await.unwrap()).await
}

/// (partition, offset) of every record of an answer, in order.
fn offsets(answer: &Value) -> Vec<(u64, u64)> {
    answer["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap()))
        .collect()
}

fn next_offsets(topic: &str, records: &[(u64, u64)]) -> Value {
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    for (p, o) in records {
        let e = next.entry(*p).or_insert(o + 1);
        *e = (*e).max(o + 1);
    }
    json!(next.iter().map(|(p, o)| json!({"topic": topic, "partition": p, "offset": o})).collect::<Vec<_>>())
}

async fn commit(app: &TestApp, group: &str, m: &Member, offsets: Value) -> (u16, Value) {
    app.post(
        &format!("/v1/groups/{group}/offsets"),
        json!({"member_id": m.id, "generation": m.generation, "offsets": offsets}),
    )
    .await
}

async fn produce_n(app: &TestApp, topic: &str, n: usize) {
    let records: Vec<Value> = (0..n).map(|i| json!({"key": format!("k{i}"), "value": i})).collect();
    assert_eq!(app.produce(topic, json!(records)).await.len(), n);
}

#[tokio::test]
async fn a_lost_poll_answer_is_answered_again_with_its_cursor() {
    crate::helpers::within(async {
        let app = group_app().await;
        app.create_topic("lost", 2).await;
        produce_n(&app, "lost", 10).await;
        let mut m = join(&app, "g", json!({"topics": ["lost"], "auto_offset_reset": "earliest"})).await;

        // Even the first poll's answer can be lost: the join's cursor repeats it.
        let mut received = Vec::new();
        loop {
            let (status, first) = poll_with(&app, "g", &m.id, Some(&m.cursor), 4).await;
            assert_eq!(status, 200, "{first}");
            // The answer is lost on the way; the client polls again with the same cursor.
            let (_, again) = poll_with(&app, "g", &m.id, Some(&m.cursor), 4).await;
            assert_eq!(offsets(&again), offsets(&first), "a repeated poll answers the same records");
            assert_eq!(again["cursor"], first["cursor"]);
            if offsets(&again).is_empty() {
                break;
            }
            received.extend(offsets(&again));
            m.cursor = again["cursor"].as_str().unwrap().to_owned();
            m.generation = again["generation"].as_u64().unwrap();
        }
        let set: BTreeSet<_> = received.iter().copied().collect();
        assert_eq!(set.len(), 10, "every record, once: {received:?}");
        let (status, b) = commit(&app, "g", &m, next_offsets("lost", &received)).await;
        assert_eq!(status, 200, "{b}");
        let (_, desc) = app.get("/v1/groups/g").await;
        for o in desc["offsets"].as_array().unwrap() {
            assert_eq!(o["committed_offset"], o["end_offset"], "{desc}");
            assert_eq!(o["lag"], 0, "{desc}");
        }

        // Without a cursor the server-held position moves on: the documented contrast.
        produce_n(&app, "lost", 4).await;
        let (_, lost) = poll_with(&app, "g", &m.id, None, 100).await;
        assert_eq!(offsets(&lost).len(), 4);
        let (_, after) = poll_with(&app, "g", &m.id, None, 100).await;
        assert!(offsets(&after).is_empty(), "without a cursor a lost answer is not repeated");
        // ... but the cursor of the last answer received still brings it back.
        let (_, back) = poll_with(&app, "g", &m.id, Some(&m.cursor), 100).await;
        let set = |a: &Value| offsets(a).into_iter().collect::<BTreeSet<_>>();
        assert_eq!(set(&back), set(&lost));
    })
    .await;
}

#[tokio::test]
async fn concurrent_polls_with_one_cursor_return_the_same_records() {
    crate::helpers::within(async {
        let app = Arc::new(group_app().await);
        app.create_topic("same", 3).await;
        produce_n(&app, "same", 60).await;
        let m = join(&app, "g", json!({"topics": ["same"], "auto_offset_reset": "earliest"})).await;
        let mut polls = Vec::new();
        for _ in 0..6 {
            let (app, m) = (app.clone(), m.clone());
            polls.push(tokio::spawn(async move { poll_with(&app, "g", &m.id, Some(&m.cursor), 25).await }));
        }
        let mut answers = Vec::new();
        for p in polls {
            let (status, answer) = p.await.unwrap();
            assert_eq!(status, 200, "{answer}");
            answers.push(offsets(&answer));
        }
        assert_eq!(answers[0].len(), 25);
        assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    })
    .await;
}

#[tokio::test]
async fn forged_foreign_and_stale_cursors() {
    crate::helpers::within(async {
        let app = group_app().await;
        app.create_topic("cur", 4).await;
        produce_n(&app, "cur", 40).await;
        let a = join(&app, "g", json!({"topics": ["cur"], "auto_offset_reset": "earliest"})).await;
        let (_, first) = poll_with(&app, "g", &a.id, Some(&a.cursor), 100).await;
        assert_eq!(offsets(&first).len(), 40);
        let cursor = first["cursor"].as_str().unwrap().to_owned();

        // Forged, altered, or another member's: 400 invalid_cursor, nothing read.
        let mut altered = cursor.clone().into_bytes();
        let i = altered.len() / 2;
        altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        let b = join(&app, "g", json!({"topics": ["cur"], "auto_offset_reset": "earliest"})).await;
        for (who, bad) in
            [(&a.id, "not-a-cursor"), (&a.id, altered.as_str()), (&b.id, cursor.as_str()), (&a.id, b.cursor.as_str())]
        {
            let (status, problem) = poll_with(&app, "g", who, Some(bad), 8).await;
            assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_cursor")), "{bad}: {problem}");
            assert_eq!(problem["field"], "cursor");
        }
        let (status, problem) = poll_with(&app, "other", &a.id, Some(&cursor), 8).await;
        assert_eq!(status, 400, "a cursor is bound to its group too: {problem}");

        // `first` was lost. b's join started a new generation since; the cursor a
        // sent for `first` (its join's) is from the previous one. Repeating the
        // poll still returns the lost records of the partitions a kept, and
        // nothing from the partitions it is giving up.
        let (status, retry) = poll_with(&app, "g", &a.id, Some(&a.cursor), 100).await;
        assert_eq!(status, 200, "{retry}");
        assert!(retry["generation"].as_u64().unwrap() > first["generation"].as_u64().unwrap());
        let revoked: BTreeSet<u64> = retry["revoked"][0]["partitions"]
            .as_array()
            .map(|ps| ps.iter().map(|p| p.as_u64().unwrap()).collect())
            .unwrap_or_default();
        assert!(!revoked.is_empty(), "{retry}");
        assert!(offsets(&retry).iter().all(|(p, _)| !revoked.contains(p)), "{retry}");
        let kept: BTreeSet<(u64, u64)> = offsets(&first).into_iter().filter(|(p, _)| !revoked.contains(p)).collect();
        assert!(!kept.is_empty());
        let again: BTreeSet<(u64, u64)> = offsets(&retry).into_iter().collect();
        assert_eq!(again, kept, "the kept partitions' records come again: {retry}");

        // The revoked partitions reach b from the committed offset (none: earliest),
        // so the records of a's lost answer are not lost there either.
        let (_, released) = poll_with(&app, "g", &a.id, Some(retry["cursor"].as_str().unwrap()), 8).await;
        assert_eq!(released["revoked"], json!([]));
        let (_, to_b) = poll_with(&app, "g", &b.id, Some(&b.cursor), 100).await;
        let got: BTreeSet<u64> = offsets(&to_b).iter().map(|(p, _)| *p).collect();
        assert_eq!(got, revoked, "{to_b}");
        for p in &revoked {
            let first_offset = offsets(&to_b).iter().filter(|(q, _)| q == p).map(|(_, o)| *o).min();
            assert_eq!(first_offset, Some(0), "partition {p} starts at its committed offset (none: earliest)");
        }
    })
    .await;
}

/// Members whose answers are dropped at random retry with the cursor of the last
/// answer they received. Every record is processed (at least once), and no record
/// reaches two members in answers of the same generation.
#[tokio::test]
async fn randomized_lost_answers_lose_nothing() {
    crate::helpers::within(async {
        let app = Arc::new(group_app().await);
        app.create_topic("flaky", 6).await;
        let stop = Instant::now() + Duration::from_secs(4);
        let producer = crate::helpers::spawn_producer(app.clone(), "flaky", 30, Duration::from_millis(20), stop);
        // (partition, offset, generation) → members whose received answers held it.
        type Deliveries = HashMap<(u64, u64, u64), BTreeSet<String>>;
        let delivered: Arc<Mutex<Deliveries>> = Arc::default();
        let processed: Arc<Mutex<BTreeSet<(u64, u64)>>> = Arc::default();
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut slots = Vec::new();
        for slot in 0..3u64 {
            let (app, delivered, processed, dropped) =
                (app.clone(), delivered.clone(), processed.clone(), dropped.clone());
            slots.push(tokio::spawn(async move {
                let mut next = crate::helpers::xorshift(slot + 7);
                let body = json!({"topics": ["flaky"], "auto_offset_reset": "earliest", "session_timeout_ms": 1000});
                while Instant::now() < stop {
                    let mut m = join(&app, "lg", body.clone()).await;
                    for _ in 0..(10 + next() % 30) {
                        let (status, answer) = long_poll(&app, "lg", &m.id, Some(&m.cursor), 50, 200).await;
                        if status == 404 {
                            break; // the session expired on a loaded machine: churn like any other
                        }
                        assert_eq!(status, 200, "{answer}");
                        if next() % 10 < 3 && !offsets(&answer).is_empty() {
                            dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            continue; // lost on the way: retry with the same cursor
                        }
                        m.cursor = answer["cursor"].as_str().unwrap().to_owned();
                        m.generation = answer["generation"].as_u64().unwrap();
                        let records = offsets(&answer);
                        {
                            let mut d = delivered.lock().unwrap();
                            for (p, o) in &records {
                                d.entry((*p, *o, m.generation)).or_default().insert(m.id.clone());
                            }
                        }
                        if !records.is_empty() && commit(&app, "lg", &m, next_offsets("flaky", &records)).await.0 == 200
                        {
                            processed.lock().unwrap().extend(records);
                        }
                    }
                    // Leave half the time; otherwise just vanish and let the session expire.
                    if next().is_multiple_of(2) {
                        let _ = app.client.delete(app.url(&format!("/v1/groups/lg/members/{}", m.id))).send().await;
                    }
                }
            }));
        }
        let produced = producer.await.unwrap();
        for s in slots {
            s.await.unwrap();
        }
        // A final member drains what is left from the committed offsets.
        let mut last =
            join(&app, "lg", json!({"topics": ["flaky"], "auto_offset_reset": "earliest", "session_timeout_ms": 5000}))
                .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !produced.is_subset(&processed.lock().unwrap()) {
            let (status, answer) = poll_with(&app, "lg", &last.id, Some(&last.cursor), 500).await;
            assert_eq!(status, 200, "{answer}");
            last.cursor = answer["cursor"].as_str().unwrap().to_owned();
            last.generation = answer["generation"].as_u64().unwrap();
            let records = offsets(&answer);
            if !records.is_empty() && commit(&app, "lg", &last, next_offsets("flaky", &records)).await.0 == 200 {
                processed.lock().unwrap().extend(records);
            }
        }
        let missing: Vec<_> = produced.difference(&processed.lock().unwrap()).take(10).copied().collect();
        assert!(missing.is_empty(), "records never processed: {missing:?} of {}", produced.len());
        for ((p, o, generation), members) in delivered.lock().unwrap().iter() {
            assert_eq!(members.len(), 1, "record {p}/{o} went to {members:?} in generation {generation}");
        }
        assert!(produced.len() > 100);
        assert!(dropped.load(std::sync::atomic::Ordering::Relaxed) > 10, "the run dropped answers with records");
    })
    .await;
}

#[tokio::test]
async fn deleting_a_topic_drops_every_groups_offsets_for_it() {
    crate::helpers::within(async {
        let app = group_app().await;
        app.create_topic("gone", 1).await;
        app.create_topic("kept", 1).await;
        produce_n(&app, "gone", 3).await;
        produce_n(&app, "kept", 3).await;
        for group in ["g1", "g2"] {
            let m = join(&app, group, json!({"topics": ["gone", "kept"], "auto_offset_reset": "earliest"})).await;
            let offsets =
                json!([{"topic": "gone", "partition": 0, "offset": 2}, {"topic": "kept", "partition": 0, "offset": 3}]);
            let (status, b) = commit(&app, group, &m, offsets).await;
            assert_eq!(status, 200, "{b}");
            let res = app.client.delete(app.url(&format!("/v1/groups/{group}/members/{}", m.id))).send().await.unwrap();
            assert_eq!(res.status(), 204);
        }
        let res = app.client.delete(app.url("/v1/topics/gone")).send().await.unwrap();
        assert_eq!(res.status(), 204);
        app.create_topic("gone", 1).await;

        let committed = |desc: &Value| -> BTreeMap<String, Value> {
            desc["offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| (o["topic"].as_str().unwrap().to_owned(), o["committed_offset"].clone()))
                .collect()
        };
        for group in ["g1", "g2"] {
            let (_, desc) = app.get(&format!("/v1/groups/{group}")).await;
            let c = committed(&desc);
            assert_eq!(c.get("kept"), Some(&json!(3)), "{desc}");
            assert!(c.get("gone").is_none_or(Value::is_null), "{desc}");
        }
        // The store forgot them too: a restart does not bring them back.
        let app = app.restart().await;
        for group in ["g1", "g2"] {
            let (status, desc) = app.get(&format!("/v1/groups/{group}")).await;
            assert_eq!(status, 200, "{desc}");
            let c = committed(&desc);
            assert_eq!(c.get("kept"), Some(&json!(3)), "{desc}");
            assert!(c.get("gone").is_none_or(Value::is_null), "the recreated topic inherits nothing: {desc}");
        }
    })
    .await;
}

/// `max_bytes` bounds a poll's answer (at least one record), and the cursor
/// continues after what was returned.
#[tokio::test]
async fn max_bytes_bounds_a_poll() {
    crate::helpers::within(async {
        let app = group_app().await;
        app.create_topic("bytes", 1).await;
        produce_n(&app, "bytes", 5).await;
        let m = join(&app, "g", json!({"topics": ["bytes"], "auto_offset_reset": "earliest"})).await;
        let url = |cursor: &str, max_bytes: u64| {
            let mut u = app.url(&format!("/v1/groups/g/members/{}/records?max_bytes={max_bytes}", m.id));
            u.push_str("&cursor=");
            u.push_str(cursor);
            u
        };
        let (status, one) = crate::helpers::status_json(app.client.get(url(&m.cursor, 1)).send().await.unwrap()).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(offsets(&one), vec![(0, 0)], "one record, however small the limit");
        let next = one["cursor"].as_str().unwrap();
        let (_, rest) = crate::helpers::status_json(app.client.get(url(next, 1 << 20)).send().await.unwrap()).await;
        assert_eq!(offsets(&rest), vec![(0, 1), (0, 2), (0, 3), (0, 4)]);
        let (status, problem) = crate::helpers::status_json(app.client.get(url(next, 0)).send().await.unwrap()).await;
        assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_parameter")), "{problem}");
    })
    .await;
}
