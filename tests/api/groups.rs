//! Consumer groups over real HTTP: splitting, failover, fencing, resets, and a
//! randomized run checking at-least-once delivery and single ownership.

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

struct Member {
    id: String,
    generation: u64,
    assignment: BTreeSet<(String, u64)>,
}

fn parts(v: &Value) -> BTreeSet<(String, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|tp| {
            let t = tp["topic"].as_str().unwrap().to_owned();
            tp["partitions"].as_array().unwrap().iter().map(move |p| (t.clone(), p.as_u64().unwrap()))
        })
        .collect()
}

async fn join(app: &TestApp, group: &str, body: Value) -> Member {
    let (status, b) = app.post(&format!("/v1/groups/{group}/members"), body).await;
    assert_eq!(status, 201, "{b}");
    Member {
        id: b["member_id"].as_str().unwrap().to_owned(),
        generation: b["generation"].as_u64().unwrap(),
        assignment: parts(&b["assignment"]),
    }
}

type PollAnswer = (Vec<Value>, BTreeSet<(String, u64)>);

/// Polls once; updates the member's view; returns (records, revoked).
async fn poll(app: &TestApp, group: &str, m: &mut Member, wait_ms: u64) -> PollAnswer {
    try_poll(app, group, m, wait_ms).await.unwrap_or_else(|| panic!("member {} was fenced", m.id))
}

/// As `poll`, but `None` when the member's session expired (it was fenced).
async fn try_poll(app: &TestApp, group: &str, m: &mut Member, wait_ms: u64) -> Option<PollAnswer> {
    let (status, b) =
        app.get(&format!("/v1/groups/{group}/members/{}/records?max_records=1000&wait_ms={wait_ms}", m.id)).await;
    if status == 404 && b["code"] == "unknown_member" {
        return None;
    }
    assert_eq!(status, 200, "{b}");
    m.generation = b["generation"].as_u64().unwrap();
    m.assignment = parts(&b["assignment"]);
    Some((b["records"].as_array().unwrap().clone(), parts(&b["revoked"])))
}

async fn commit(app: &TestApp, group: &str, m: &Member, offsets: &BTreeMap<(String, u64), u64>) -> (u16, Value) {
    let offsets: Vec<Value> =
        offsets.iter().map(|((t, p), o)| json!({"topic": t, "partition": p, "offset": o})).collect();
    app.post(
        &format!("/v1/groups/{group}/offsets"),
        json!({"member_id": m.id, "generation": m.generation, "offsets": offsets}),
    )
    .await
}

fn next_offsets(records: &[Value]) -> BTreeMap<(String, u64), u64> {
    let mut out = BTreeMap::new();
    for r in records {
        let key = (r["topic"].as_str().unwrap().to_owned(), r["partition"].as_u64().unwrap());
        let next = r["offset"].as_u64().unwrap() + 1;
        let e = out.entry(key).or_insert(next);
        *e = (*e).max(next);
    }
    out
}

#[tokio::test]
async fn three_members_split_six_partitions_and_survive_a_death() {
    crate::helpers::within(async {
        let app = group_app().await;
        app.create_topic("work", 6).await;
        let body = json!({"topics": ["work"], "auto_offset_reset": "earliest", "session_timeout_ms": 600});
        let mut ms =
            vec![join(&app, "g", body.clone()).await, join(&app, "g", body.clone()).await, join(&app, "g", body).await];

        // Cooperative rebalancing converges within a few polls: 2 partitions each.
        for _ in 0..10 {
            for m in ms.iter_mut() {
                poll(&app, "g", m, 0).await;
            }
            if ms.iter().all(|m| m.assignment.len() == 2) {
                break;
            }
        }
        let all: BTreeSet<_> = ms.iter().flat_map(|m| m.assignment.iter().cloned()).collect();
        assert_eq!(
            all.len(),
            6,
            "every partition owned exactly once: {:?}",
            ms.iter().map(|m| &m.assignment).collect::<Vec<_>>()
        );
        assert!(ms.iter().all(|m| m.assignment.len() == 2));

        // 10 records per partition.
        for p in 0..6 {
            let records: Vec<Value> = (0..10).map(|i| json!({"value": format!("{p}-{i}"), "partition": p})).collect();
            app.produce("work", json!(records)).await;
        }
        // Each member reads its 20 records and commits the first 5 of each partition.
        let mut committed = BTreeMap::new();
        for m in ms.iter_mut() {
            let mut got = Vec::new();
            for _ in 0..100 {
                got.extend(poll(&app, "g", m, 200).await.0);
                if got.len() >= 20 {
                    break;
                }
            }
            assert_eq!(got.len(), 20);
            let five: BTreeMap<_, _> = m.assignment.iter().map(|tp| (tp.clone(), 5u64)).collect();
            let (status, b) = commit(&app, "g", m, &five).await;
            assert_eq!(status, 200, "{b}");
            committed.extend(five);
        }

        // The third member dies (stops polling). The others keep polling; after its
        // session expires its partitions move, resuming at its committed offsets.
        let dead = ms.pop().unwrap();
        let mut redelivered: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for m in ms.iter_mut() {
                let (records, _) = poll(&app, "g", m, 50).await;
                for r in &records {
                    let tp = (r["topic"].as_str().unwrap().to_owned(), r["partition"].as_u64().unwrap());
                    if dead.assignment.contains(&tp) {
                        redelivered.entry(tp).or_default().push(r["offset"].as_u64().unwrap());
                    }
                }
            }
            if dead.assignment.iter().all(|tp| redelivered.get(tp).is_some_and(|v| v.len() == 5)) {
                break;
            }
        }
        for tp in &dead.assignment {
            assert_eq!(
                redelivered.get(tp),
                Some(&(5..10).collect::<Vec<_>>()),
                "{tp:?} resumes at the committed offset 5"
            );
        }
        let owned: BTreeSet<_> = ms.iter().flat_map(|m| m.assignment.iter().cloned()).collect();
        assert_eq!(owned.len(), 6);

        // The zombie's commit is refused and changes nothing.
        let zombie: BTreeMap<_, _> = dead.assignment.iter().map(|tp| (tp.clone(), 10u64)).collect();
        let (status, b) = commit(&app, "g", &dead, &zombie).await;
        assert_eq!(status, 404);
        assert_eq!(b["code"], "unknown_member");
        let (_, desc) = app.get("/v1/groups/g").await;
        for o in desc["offsets"].as_array().unwrap() {
            let tp = (o["topic"].as_str().unwrap().to_owned(), o["partition"].as_u64().unwrap());
            if dead.assignment.contains(&tp) {
                assert_eq!(o["committed_offset"], 5, "zombie commit changed nothing");
                assert_eq!(o["lag"], 5);
            }
        }
        assert_eq!(desc["members"].as_array().unwrap().len(), 2);
        assert_eq!(desc["state"], "Stable");
    })
    .await;
}

#[tokio::test]
async fn commits_are_fenced() {
    crate::helpers::within(async {
        let app = group_app().await;
        app.create_topic("f", 2).await;
        let body = json!({"topics": ["f"], "auto_offset_reset": "earliest", "session_timeout_ms": 10000});
        let mut a = join(&app, "fg", body.clone()).await;
        let first_generation = a.generation;
        let mut b = join(&app, "fg", body).await;
        let (_, revoked) = poll(&app, "fg", &mut a, 0).await;
        assert_eq!(revoked.len(), 1, "a must give one partition to b");
        let given = revoked.iter().next().unwrap().clone();
        let kept = a.assignment.iter().next().unwrap().clone();

        // Stale generation.
        let stale = Member { id: a.id.clone(), generation: first_generation, assignment: BTreeSet::new() };
        let (status, body) = commit(&app, "fg", &stale, &BTreeMap::from([(kept.clone(), 0)])).await;
        assert_eq!(status, 409);
        assert_eq!(body["code"], "illegal_generation");
        // A revoked partition may still be committed until it is released...
        let (status, _) = commit(&app, "fg", &a, &BTreeMap::from([(given.clone(), 0)])).await;
        assert_eq!(status, 200);
        poll(&app, "fg", &mut a, 0).await;
        // ...and not after.
        let (status, body) = commit(&app, "fg", &a, &BTreeMap::from([(given.clone(), 0)])).await;
        assert_eq!(status, 409);
        assert_eq!(body["code"], "not_owner");
        poll(&app, "fg", &mut b, 0).await;
        assert_eq!(b.assignment, BTreeSet::from([given.clone()]));
        let (status, _) = commit(&app, "fg", &b, &BTreeMap::from([(given, 0)])).await;
        assert_eq!(status, 200);
        // Unknown member, unknown group.
        let ghost = Member { id: "ghost".into(), generation: a.generation, assignment: BTreeSet::new() };
        let (status, body) = commit(&app, "fg", &ghost, &BTreeMap::from([(kept.clone(), 0)])).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("unknown_member")));
        let (status, body) = commit(&app, "nogroup", &a, &BTreeMap::from([(kept, 0)])).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("unknown_group")));
    })
    .await;
}

#[tokio::test]
async fn offset_reset_policies_and_lag() {
    crate::helpers::within(async {
        let app = group_app().await;
        app.create_topic("r", 1).await;
        app.produce("r", json!([{"value": 1}, {"value": 2}])).await;
        let mut latest = join(&app, "latest", json!({"topics": ["r"]})).await;
        assert!(poll(&app, "latest", &mut latest, 0).await.0.is_empty(), "latest (the default) skips existing records");
        app.produce("r", json!([{"value": 3}])).await;
        let (records, _) = poll(&app, "latest", &mut latest, 1000).await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["value"], 3);

        let mut none = join(&app, "none", json!({"topics": ["r"], "auto_offset_reset": "none"})).await;
        let (status, b) = app.get(&format!("/v1/groups/none/members/{}/records", none.id)).await;
        assert_eq!(status, 200);
        assert_eq!(b["errors"][0]["code"], "no_committed_offset");
        assert!(b["records"].as_array().unwrap().is_empty());
        // An operator sets the offset: the member starts there.
        let (status, b) = app.post("/v1/groups/none/offsets/reset", json!({"topic": "r", "offset": 1})).await;
        assert_eq!(status, 200, "{b}");
        let (records, _) = poll(&app, "none", &mut none, 0).await;
        assert_eq!(records.iter().map(|r| r["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);

        let (status, _) = app.post("/v1/groups/none/offsets/reset", json!({"topic": "r", "offset": 99})).await;
        assert_eq!(status, 416);
        let (status, b) =
            app.post("/v1/groups/none/offsets/reset", json!({"topic": "r", "to": "latest", "offset": 1})).await;
        assert_eq!((status, b["code"].as_str()), (400, Some("invalid_request")));

        let (_, desc) = app.get("/v1/groups/none").await;
        assert_eq!(desc["offsets"][0]["committed_offset"], 1);
        assert_eq!(desc["offsets"][0]["end_offset"], 3);
        assert_eq!(desc["offsets"][0]["lag"], 2);
        assert_eq!(desc["members"][0]["member_id"], none.id.as_str());

        // A group with members cannot be deleted; once empty it can.
        let res = app.client.delete(app.url("/v1/groups/none")).send().await.unwrap();
        assert_eq!(res.status(), 409);
        let res = app.client.delete(app.url(&format!("/v1/groups/none/members/{}", none.id))).send().await.unwrap();
        assert_eq!(res.status(), 204);
        let res = app.client.delete(app.url("/v1/groups/none")).send().await.unwrap();
        assert_eq!(res.status(), 204);
        let (status, _) = app.get("/v1/groups/none").await;
        assert_eq!(status, 404);
        let (_, list) = app.get("/v1/groups").await;
        assert_eq!(list["groups"].as_array().unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn committed_offsets_survive_a_restart() {
    crate::helpers::within(async {
        let app = group_app().await;
        app.create_topic("d", 1).await;
        app.produce("d", json!([{"value": 1}, {"value": 2}, {"value": 3}])).await;
        let mut m = join(&app, "dg", json!({"topics": ["d"], "auto_offset_reset": "earliest"})).await;
        let (records, _) = poll(&app, "dg", &mut m, 0).await;
        assert_eq!(records.len(), 3);
        assert_eq!(commit(&app, "dg", &m, &BTreeMap::from([(("d".to_string(), 0), 2)])).await.0, 200);
        let app = app.restart().await;
        let (status, desc) = app.get("/v1/groups/dg").await;
        assert_eq!(status, 200);
        assert_eq!(desc["state"], "Empty");
        assert_eq!(desc["offsets"][0]["committed_offset"], 2);
        let mut m = join(&app, "dg", json!({"topics": ["d"], "auto_offset_reset": "earliest"})).await;
        let (records, _) = poll(&app, "dg", &mut m, 0).await;
        assert_eq!(records.len(), 1, "resumes at the committed offset");
        assert_eq!(records[0]["offset"], 2);
    })
    .await;
}

#[tokio::test]
async fn static_member_rejoins_without_rebalance() {
    crate::helpers::within(async {
        let app = group_app().await;
        app.create_topic("s", 2).await;
        let body = json!({"topics": ["s"], "instance_id": "host-1", "session_timeout_ms": 5000});
        let first = join(&app, "sg", body.clone()).await;
        let second = join(&app, "sg", body).await;
        assert_ne!(first.id, second.id);
        assert_eq!(second.generation, first.generation, "no rebalance");
        assert_eq!(second.assignment, first.assignment);
        let (status, b) = app.get(&format!("/v1/groups/sg/members/{}/records", first.id)).await;
        assert_eq!((status, b["code"].as_str()), (404, Some("unknown_member")), "the old incarnation is fenced");
    })
    .await;
}

#[tokio::test]
async fn online_offset_reset_moves_a_polling_member() {
    crate::helpers::within(async {
        let app = group_app().await;
        app.create_topic("o", 1).await;
        let records: Vec<Value> = (0..100).map(|i| json!({"value": i})).collect();
        app.produce("o", json!(records)).await;
        let mut m =
            join(&app, "og", json!({"topics": ["o"], "auto_offset_reset": "earliest", "session_timeout_ms": 10000}))
                .await;
        let mut seen = 0;
        for _ in 0..100 {
            seen += poll(&app, "og", &mut m, 0).await.0.len();
            if seen == 100 {
                break;
            }
        }
        assert_eq!(seen, 100);
        // The member is now waiting at the end of the log when an operator resets it.
        let client = app.client.clone();
        let url = app.url(&format!("/v1/groups/og/members/{}/records?max_records=10&wait_ms=60000", m.id));
        let waiting =
            tokio::spawn(async move { client.get(&url).send().await.unwrap().json::<Value>().await.unwrap() });
        app.wait_for_metric("gregor_polls_waiting", 1.0).await;
        let (status, b) = app.post("/v1/groups/og/offsets/reset", json!({"to": "earliest"})).await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["offsets"][0]["offset"], 0);
        // Woken by the reset: a poll that only timed out would answer after 60 s
        // (and, reading once more at its deadline, would pass the checks below).
        let woken = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the reset wakes the waiting poll")
            .unwrap();
        let offsets: Vec<u64> =
            woken["records"].as_array().unwrap().iter().map(|r| r["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, (0..10).collect::<Vec<_>>(), "the waiting poll continues from the new position");
        let (records, _) = poll(&app, "og", &mut m, 0).await;
        assert_eq!(records[0]["offset"], 10);
    })
    .await;
}

type Holding = (String, u64, Vec<Option<Instant>>);

/// Producers run while members join, leave and die at random. Afterwards every
/// produced record was processed (delivered, then committed) at least once, and no
/// partition was ever held by two members at the same time.
#[tokio::test]
async fn randomized_membership_churn_keeps_the_guarantees() {
    crate::helpers::within(async {
        let app = Arc::new(group_app().await);
        app.create_topic("churn", 6).await;
        let stop = Instant::now() + Duration::from_secs(4);

        let producer = crate::helpers::spawn_producer(app.clone(), "churn", 6, Duration::from_millis(10), stop);

        // (member, partition, per response: its time if the member held the partition).
        let holdings: Arc<Mutex<Vec<Holding>>> = Arc::new(Mutex::new(Vec::new()));
        let processed: Arc<Mutex<BTreeSet<(u64, u64)>>> = Arc::new(Mutex::new(BTreeSet::new()));
        let mut slots = Vec::new();
        for slot in 0..3u64 {
            let (app, holdings, processed) = (app.clone(), holdings.clone(), processed.clone());
            slots.push(tokio::spawn(async move {
                let mut next = crate::helpers::xorshift(slot);
                while Instant::now() < stop {
                    let mut m = join(
                        &app,
                        "cg",
                        json!({"topics": ["churn"], "auto_offset_reset": "earliest", "session_timeout_ms": 300}),
                    )
                    .await;
                    let mut timeline: BTreeMap<u64, Vec<Option<Instant>>> = BTreeMap::new();
                    let lifetime = 5 + next() % 25;
                    let mut fate = 0;
                    for _ in 0..lifetime {
                        // A loaded machine can let a 300 ms session expire between two
                        // polls: the member is then dead, which is churn like any other.
                        let Some((records, revoked)) = try_poll(&app, "cg", &mut m, 20).await else { break };
                        let at = Instant::now();
                        for p in 0..6u64 {
                            let held = m.assignment.contains(&("churn".to_string(), p));
                            timeline.entry(p).or_default().push(held.then_some(at));
                        }
                        fate = next() % 10;
                        if fate == 0 {
                            break; // die: no commit for what was just delivered, no leave
                        }
                        let mut offsets = next_offsets(&records);
                        offsets.retain(|tp, _| m.assignment.contains(tp) || revoked.contains(tp));
                        if !offsets.is_empty() {
                            let (status, _) = commit(&app, "cg", &m, &offsets).await;
                            if status == 200 {
                                let mut done = processed.lock().unwrap();
                                for r in &records {
                                    done.insert((r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap()));
                                }
                            }
                        }
                    }
                    if fate == 1 {
                        let _ = app.client.delete(app.url(&format!("/v1/groups/cg/members/{}", m.id))).send().await;
                    }
                    holdings.lock().unwrap().extend(timeline.into_iter().map(|(p, times)| (m.id.clone(), p, times)));
                    if fate == 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        let produced = producer.await.unwrap();
        for s in slots {
            s.await.unwrap();
        }

        // Runs of consecutive responses in which a member held a partition.
        let mut runs: HashMap<u64, Vec<(String, Instant, Instant)>> = HashMap::new();
        for (member, p, times) in holdings.lock().unwrap().iter() {
            let mut current: Option<(Instant, Instant)> = None;
            for t in times.iter().chain(std::iter::once(&None)) {
                match (t, current) {
                    (Some(t), None) => current = Some((*t, *t)),
                    (Some(t), Some((s, _))) => current = Some((s, *t)),
                    (None, Some((s, e))) => {
                        runs.entry(*p).or_default().push((member.clone(), s, e));
                        current = None;
                    }
                    (None, None) => {}
                }
            }
        }
        for (p, rs) in &runs {
            for (i, a) in rs.iter().enumerate() {
                for b in &rs[i + 1..] {
                    let overlap = a.0 != b.0 && a.1 <= b.2 && b.1 <= a.2;
                    assert!(!overlap, "partition {p} held by {} and {} at the same time", a.0, b.0);
                }
            }
        }

        // A final member drains whatever is left, from the committed offsets.
        let mut last =
            join(&app, "cg", json!({"topics": ["churn"], "auto_offset_reset": "earliest", "session_timeout_ms": 5000}))
                .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !produced.is_subset(&processed.lock().unwrap()) {
            let (records, _) = poll(&app, "cg", &mut last, 100).await;
            let offsets = next_offsets(&records);
            if !offsets.is_empty() && commit(&app, "cg", &last, &offsets).await.0 == 200 {
                let mut done = processed.lock().unwrap();
                for r in &records {
                    done.insert((r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap()));
                }
            }
        }
        let missing: Vec<_> = produced.difference(&processed.lock().unwrap()).take(10).copied().collect();
        if !missing.is_empty() {
            let (_, desc) = app.get("/v1/groups/cg").await;
            panic!("records never processed: {missing:?} (of {}); group: {desc}", produced.len());
        }
        assert!(produced.len() > 100);
        assert!(runs.values().map(Vec::len).sum::<usize>() > 5, "the run exercised several ownership changes");
    })
    .await;
}

/// Members waiting in long polls hear about a rebalance at once: the old owner
/// gets its revocation, and after it confirms (its next poll) the newcomer's
/// waiting poll returns with the partitions. No timer is involved.
#[tokio::test]
async fn waiting_polls_are_woken_by_rebalances() {
    crate::helpers::within(async {
        let app = Arc::new(group_app().await);
        app.create_topic("wake", 2).await;
        let body = json!({"topics": ["wake"], "auto_offset_reset": "earliest", "session_timeout_ms": 60000});
        let mut a = join(&app, "wg", body.clone()).await;
        assert_eq!(a.assignment.len(), 2);
        let started = Instant::now();
        let a_task = {
            let app = app.clone();
            tokio::spawn(async move {
                // Waits (nothing to read) until the rebalance revokes a partition.
                let (_, revoked) = poll(&app, "wg", &mut a, 30_000).await;
                assert_eq!(revoked.len(), 1);
                // Confirms the revocation with its next poll.
                poll(&app, "wg", &mut a, 0).await;
                a
            })
        };
        // a's poll is waiting (subscribed to appends and to group changes).
        app.wait_for_metric("gregor_polls_waiting", 1.0).await;
        let mut b = join(&app, "wg", body).await;
        assert!(b.assignment.is_empty());
        let joined = Instant::now();
        poll(&app, "wg", &mut b, 30_000).await;
        let latency = joined.elapsed();
        let a = a_task.await.unwrap();
        assert_eq!(b.assignment.len(), 1, "the newcomer's waiting poll returned with its partition");
        assert_eq!(a.assignment.len(), 1);
        assert!(a.assignment.is_disjoint(&b.assignment));
        // A timer-driven wake-up would take a third of the 60 s session.
        assert!(started.elapsed() < Duration::from_secs(15));
        eprintln!("rebalance latency (join → newcomer has its partitions, both long-polling): {latency:?}");
    })
    .await;
}
