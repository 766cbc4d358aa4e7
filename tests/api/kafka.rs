//! The Kafka listener against real clients: confluent-kafka (librdkafka) and kafka-python,
//! run from `.venv` (made by scripts/setup) by tests/kafka/clients.py, with what they wrote
//! checked over REST and WebSocket here. Plus a fuzzer of the frame decoder.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, InitProducerIdRequest, InitProducerIdResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName, join_group_request, produce_request,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, project_root, spawn_app};

/// Runs one scenario of tests/kafka/clients.py against `app` and returns its JSON line.
async fn clients(app: &TestApp, scenario: &str) -> Value {
    let bootstrap = app.kafka.clone().expect("the Kafka listener is on");
    clients_at(&bootstrap, scenario, &[]).await
}

/// Runs one scenario of tests/kafka/clients.py against `bootstrap` with extra arguments.
pub(crate) async fn clients_at(bootstrap: &str, scenario: &str, args: &[&str]) -> Value {
    let python = project_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
    let out = tokio::process::Command::new(&python)
        .arg(project_root().join("tests/kafka/clients.py"))
        .arg(scenario)
        .arg(bootstrap)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scenario {scenario} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("scenario {scenario} printed no JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn kafka_admin_clients_manage_the_topics_rest_sees() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        let out = clients(&app, "admin").await;
        assert_eq!(out["topics"], json!(["adm-a"]));
        let (status, body) = app.get("/v1/topics/adm-a").await;
        assert_eq!(status, 200);
        assert_eq!(body["partition_count"], 5);
        assert_eq!(body["config"]["retention_ms"], 3_600_000);
        assert_eq!(app.get("/v1/topics/adm-b").await.0, 404);
        assert_eq!(app.get("/v1/topics/adm-c").await.0, 404);
    })
    .await;
}

#[tokio::test]
async fn kafka_produce_with_every_codec_reads_back_over_rest_and_websocket() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic_with("codecs", 4, json!({"retention_ms": -1})).await;
        let out = clients(&app, "produce_codecs").await;
        let delivered = out["delivered"].as_array().unwrap();
        assert_eq!(delivered.len(), 200);
        let mut by_partition = std::collections::BTreeMap::<u64, Vec<Value>>::new();
        for p in 0..4 {
            by_partition.insert(p, app.read_all("codecs", p as u32, 0).await);
        }
        assert_eq!(by_partition.values().map(Vec::len).sum::<usize>(), 200, "no duplicate, nothing lost");
        for d in delivered {
            let (p, offset, key) =
                (d["partition"].as_u64().unwrap(), d["offset"].as_u64().unwrap(), d["key"].as_str().unwrap());
            let rec = &by_partition[&p][offset as usize];
            assert_eq!(rec["offset"], offset);
            assert_eq!(rec["key"], key, "keys are text");
            let (codec, i) = key.rsplit_once('-').unwrap();
            let i: u64 = i.parse().unwrap();
            if i.is_multiple_of(2) {
                assert_eq!(rec["value"], json!({"codec": codec, "i": i}), "JSON bytes read back as JSON");
            } else {
                assert_eq!(rec["value"], format!("text {codec} {i}"), "other UTF-8 reads back as text");
            }
            assert_eq!(rec["headers"], json!([{"name": "codec", "value": codec}]));
        }
        // murmur2: REST places each key where the Kafka client (murmur2_random) did.
        let records: Vec<Value> = delivered.iter().map(|d| json!({"key": d["key"], "value": 1})).collect();
        let offsets = app.produce("codecs", Value::Array(records)).await;
        for (d, o) in delivered.iter().zip(&offsets) {
            assert_eq!(d["partition"], o["partition"], "key {}", d["key"]);
        }
        // A WebSocket stream delivers the Kafka client's records (compressed or not) as well.
        let mut ws = crate::ws::connect(&app, "/v1/topics/codecs/stream?from=earliest").await;
        let streamed = crate::ws::records(&mut ws, 400).await;
        assert_eq!(streamed.len(), 400);
        assert!(streamed.iter().any(|r| r["key"] == "zstd-0" && r["value"] == json!({"codec": "zstd", "i": 0})));
    })
    .await;
}

#[tokio::test]
async fn rest_records_reach_kafka_consumers_as_their_bytes() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic_with("from-rest", 3, json!({"retention_ms": -1})).await;
        app.produce(
            "from-rest",
            json!([
                {"key": "j", "value": {"a": 1}, "partition": 0, "timestamp": 1000},
                {"key": "t", "value": "hello", "partition": 0, "timestamp": 2000,
                 "headers": [{"name": "h", "value": "x"}]},
                {"value_base64": "aGk=", "partition": 0, "timestamp": 3000},
                {"key": "n", "value": null, "partition": 1},
                {"value": [1, 2], "partition": 2}
            ]),
        )
        .await;
        let out = clients(&app, "consume_assign").await;
        let recs = out["records"].as_array().unwrap();
        assert_eq!(recs.len(), 5);
        let p0: Vec<&Value> = recs.iter().filter(|r| r["partition"] == 0).collect();
        assert_eq!(p0[0]["value"], r#"{"a":1}"#, "a REST JSON value is its JSON text");
        assert_eq!(p0[0]["key"], "j");
        assert_eq!(p0[0]["timestamp"], 1000);
        assert_eq!(p0[1]["value"], "hello");
        assert_eq!(p0[1]["headers"], json!([["h", "x"]]));
        assert_eq!(p0[2]["value"], "hi");
        assert_eq!(p0[2]["key"], Value::Null);
        let p1 = recs.iter().find(|r| r["partition"] == 1).unwrap();
        assert_eq!(p1["value"], Value::Null, "a null value stays a tombstone");
        assert_eq!(recs.iter().find(|r| r["partition"] == 2).unwrap()["value"], "[1,2]");
        assert_eq!(out["watermarks"], json!([0, 3]));
        assert_eq!(out["offset_for_1500"], 1);
    })
    .await;
}

#[tokio::test]
async fn kafka_python_produces_and_consumes() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("kp", 2).await;
        let out = clients(&app, "kafka_python").await;
        assert_eq!(out["values"].as_array().unwrap().len(), 30);
        assert_eq!(app.read_all("kp", 1, 0).await[0]["value"], "value 1");
        // Its group consumer's commits are the group's committed offsets over REST.
        let (_, group) = app.get("/v1/groups/kp-g").await;
        let committed: Vec<Value> =
            group["offsets"].as_array().unwrap().iter().map(|o| o["committed_offset"].clone()).collect();
        assert_eq!(committed, vec![json!(15), json!(15)], "{group}");
    })
    .await;
}

/// Sends one frame (size prefix included in `bytes`) and reads the answer's body, if any.
async fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> Option<Vec<u8>> {
    stream.write_all(bytes).await.ok()?;
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut len)).await.ok()?.ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// A framed request with an empty body and a v1 header (no client id): `api_key` at
/// `version` with correlation id `id`.
fn request(api_key: i16, version: i16, id: i32) -> Vec<u8> {
    let mut req = Vec::new();
    req.extend_from_slice(&api_key.to_be_bytes());
    req.extend_from_slice(&version.to_be_bytes());
    req.extend_from_slice(&id.to_be_bytes());
    req.extend_from_slice(&(-1i16).to_be_bytes());
    let mut framed = (req.len() as i32).to_be_bytes().to_vec();
    framed.extend(req);
    framed
}

/// An ApiVersions v0 request with correlation id `id`.
fn api_versions(id: i32) -> Vec<u8> {
    request(18, 0, id)
}

/// Random, truncated and lying frames: each gets an error answer or a closed connection,
/// never a crash or an allocation of what it claims; the server still answers and nothing
/// was created or stored.
#[tokio::test]
async fn the_frame_decoder_survives_random_truncated_and_huge_frames() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("f", 1).await;
        let addr = app.kafka.clone().unwrap();
        let mut rng = crate::helpers::xorshift(0x006b_6166_6b61);
        // Valid request headers for APIs with arrays, followed by garbage bodies (huge counts).
        let apis: [(i16, i16); 14] = [
            (0, 9),
            (1, 12),
            (2, 7),
            (3, 12),
            (8, 8),
            (9, 7),
            (11, 9),
            (14, 5),
            (19, 7),
            (20, 5),
            (22, 4),
            (32, 4),
            (36, 2),
            (37, 3),
        ];
        for round in 0..600u32 {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            let mut body = Vec::new();
            match round % 4 {
                0 => {
                    let (key, version) = apis[(rng() as usize) % apis.len()];
                    body.extend_from_slice(&key.to_be_bytes());
                    body.extend_from_slice(&version.to_be_bytes());
                    body.extend_from_slice(&(round as i32).to_be_bytes());
                    body.extend_from_slice(&(-1i16).to_be_bytes());
                    if version >= 9 {
                        body.push(0);
                    }
                    for _ in 0..(rng() % 40) {
                        // Mostly 0xff and 0x7f runs: lengths and counts near their maxima.
                        body.push(match rng() % 3 {
                            0 => 0xff,
                            1 => 0x7f,
                            _ => rng() as u8,
                        });
                    }
                }
                1 => body.extend((0..(rng() % 64)).map(|_| rng() as u8)),
                2 => {
                    // A real request cut short.
                    let full = api_versions(7);
                    body.extend_from_slice(&full[4..4 + (rng() as usize % (full.len() - 4))]);
                }
                _ => {
                    // A length prefix claiming far more than will come, or more than allowed.
                    let claim = if rng().is_multiple_of(2) { i32::MAX } else { 1 << 20 };
                    stream.write_all(&claim.to_be_bytes()).await.unwrap();
                    let _ = stream.write_all(&[0u8; 16]).await;
                    drop(stream);
                    continue;
                }
            }
            let mut framed = (body.len() as i32).to_be_bytes().to_vec();
            framed.extend(&body);
            let _ = exchange(&mut stream, &framed).await;
        }
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let answer = exchange(&mut stream, &api_versions(42)).await.expect("ApiVersions still answers");
        assert_eq!(&answer[..4], &42i32.to_be_bytes(), "correlation id");
        assert_eq!(&answer[4..6], &0i16.to_be_bytes(), "error code NONE");
        let (_, topics) = app.get("/v1/topics").await;
        assert_eq!(topics["topics"].as_array().map(Vec::len), Some(1), "nothing created: {topics}");
        assert_eq!(app.partition("f", 0).await["end_offset"], 0, "nothing stored");
    })
    .await;
}

#[tokio::test]
async fn unsupported_apis_and_versions_get_unsupported_version() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        let mut stream = TcpStream::connect(app.kafka.clone().unwrap()).await.unwrap();
        // ApiVersions at a version from the future: v0 answer, error 35, and the versions served.
        let answer = exchange(&mut stream, &request(18, 99, 5)).await.unwrap();
        assert_eq!(&answer[..4], &5i32.to_be_bytes());
        assert_eq!(&answer[4..6], &35i16.to_be_bytes());
        // An API gregor does not serve (EndTxn, 26): error 35, and the connection stays open.
        let answer = exchange(&mut stream, &request(26, 0, 6)).await.unwrap();
        assert_eq!(&answer[..4], &6i32.to_be_bytes());
        assert_eq!(&answer[4..6], &35i16.to_be_bytes());
        let answer = exchange(&mut stream, &api_versions(7)).await.expect("the connection still serves");
        assert_eq!(&answer[4..6], &0i16.to_be_bytes());
    })
    .await;
}

/// Encodes a request body behind its header and the frame's size prefix.
fn framed<T: Encodable + HeaderVersion>(key: ApiKey, version: i16, id: i32, body: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(id);
    header.encode(&mut buf, key.request_header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

/// Decodes an answer body (after the size prefix) to `key` at `version`.
fn answer<T: Decodable>(key: ApiKey, version: i16, body: Vec<u8>) -> T {
    let mut buf = Bytes::from(body);
    ResponseHeader::decode(&mut buf, key.response_header_version(version)).unwrap();
    T::decode(&mut buf, version).unwrap()
}

async fn init_producer_id(stream: &mut TcpStream) -> i64 {
    let req = framed(
        ApiKey::InitProducerId,
        4,
        1,
        &InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(-1),
    );
    let res: InitProducerIdResponse = answer(ApiKey::InitProducerId, 4, exchange(stream, &req).await.unwrap());
    assert_eq!(res.error_code, 0);
    assert_eq!(res.producer_epoch, 0);
    res.producer_id.0
}

/// Produces one idempotent batch of 3 records to `topic`/0 (acks=all); answers
/// (error code, base offset).
async fn produce_idempotent(stream: &mut TcpStream, topic: &str, pid: i64, epoch: i16, first: i32) -> (i16, i64) {
    let req = idempotent_request(topic, pid, epoch, first);
    let res: ProduceResponse =
        answer(ApiKey::Produce, 9, exchange(stream, &framed(ApiKey::Produce, 9, 2, &req)).await.unwrap());
    let p = &res.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// A Produce (acks=all) of one idempotent batch of 3 records to `topic`/0.
fn idempotent_request(topic: &str, pid: i64, epoch: i16, first: i32) -> ProduceRequest {
    let count = 3;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: first + i,
            timestamp: now,
            key: None,
            value: Some(Bytes::from(format!("{pid}/{epoch}/{}", first + i))),
            headers: Default::default(),
        })
        .collect();
    let mut batch = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut batch, &records, &options).unwrap();
    let partition = produce_request::PartitionProduceData::default().with_index(0).with_records(Some(batch.freeze()));
    let data = produce_request::TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
        .with_partition_data(vec![partition]);
    ProduceRequest::default().with_acks(-1).with_timeout_ms(5_000).with_topic_data(vec![data])
}

/// Reads one answer frame's body.
async fn read_answer(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len)).await.unwrap().unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.unwrap();
    body
}

/// A framed ListOffsets (v7) for the latest offset of `topic`/0.
fn latest_offset_request(topic: &str, id: i32) -> Vec<u8> {
    let partition = kafka_protocol::messages::list_offsets_request::ListOffsetsPartition::default()
        .with_partition_index(0)
        .with_timestamp(-1);
    let topic = kafka_protocol::messages::list_offsets_request::ListOffsetsTopic::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
        .with_partitions(vec![partition]);
    let list =
        kafka_protocol::messages::ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![topic]);
    framed(ApiKey::ListOffsets, 7, id, &list)
}

/// Reads the answers to `count` Produces (v9) sent with correlation ids `first`, `first + 1`,
/// …, asserting they come in that order; answers each one's (error code, base offset).
async fn produce_answers(stream: &mut TcpStream, first: i32, count: i32) -> Vec<(i16, i64)> {
    let mut answers = Vec::new();
    for i in 0..count {
        let body = read_answer(stream).await;
        assert_eq!(&body[..4], &(first + i).to_be_bytes(), "answers in request order");
        let res: ProduceResponse = answer(ApiKey::Produce, 9, body);
        let p = &res.responses[0].partition_responses[0];
        answers.push((p.error_code, p.base_offset));
    }
    answers
}

/// Produces sent back to back on one connection, without waiting for answers (as librdkafka
/// keeps five in flight), are applied and answered in order: an idempotent producer's
/// sequences 0, 3, 6, … land at offsets 0, 3, 6, …; a request of another kind after them
/// sees their records.
#[tokio::test]
async fn back_to_back_produces_are_applied_and_answered_in_order() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("pipe", 1).await;
        let mut s = TcpStream::connect(app.kafka.clone().unwrap()).await.unwrap();
        let pid = init_producer_id(&mut s).await;
        let mut burst = Vec::new();
        for i in 0..20 {
            burst.extend(framed(ApiKey::Produce, 9, 100 + i, &idempotent_request("pipe", pid, 0, i * 3)));
        }
        burst.extend(latest_offset_request("pipe", 500));
        s.write_all(&burst).await.unwrap();
        let answers = produce_answers(&mut s, 100, 20).await;
        assert_eq!(answers, (0..20).map(|i| (0, i * 3)).collect::<Vec<_>>());
        let res: kafka_protocol::messages::ListOffsetsResponse =
            answer(ApiKey::ListOffsets, 7, read_answer(&mut s).await);
        assert_eq!(res.topics[0].partitions[0].offset, 60, "ListOffsets after the produces sees all of them");
    })
    .await;
}

/// Produces with `acks=0` get no answer, are stored and counted: the next request's answer is
/// the first one back, and it sees their records.
#[tokio::test]
async fn acks_zero_produces_are_stored_and_counted_without_an_answer() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("ack0", 1).await;
        let mut s = TcpStream::connect(app.kafka.clone().unwrap()).await.unwrap();
        let mut burst = Vec::new();
        for i in 0..2 {
            // Not idempotent: no producer id, epoch or sequence.
            let req = idempotent_request("ack0", -1, -1, -1).with_acks(0);
            burst.extend(framed(ApiKey::Produce, 9, 100 + i, &req));
        }
        burst.extend(latest_offset_request("ack0", 500));
        s.write_all(&burst).await.unwrap();
        let body = read_answer(&mut s).await;
        assert_eq!(&body[..4], &500i32.to_be_bytes(), "no answer to the acks=0 produces");
        let res: kafka_protocol::messages::ListOffsetsResponse = answer(ApiKey::ListOffsets, 7, body);
        assert_eq!(res.topics[0].partitions[0].offset, 6);
        assert_eq!(app.metric("gregor_records_in_total{topic=\"ack0\"}").await, 6.0);
    })
    .await;
}

/// A refused Produce among overlapping ones leaves the others as Kafka's broker would: the
/// requests before it are stored, it is refused (a CRC mismatch: CORRUPT_MESSAGE, 2), the
/// ones after it leave a gap in the producer's sequences (OUT_OF_ORDER_SEQUENCE_NUMBER, 45),
/// every answer in request order; the producer's retries from the refused batch are stored.
#[tokio::test]
async fn a_refused_produce_among_overlapping_ones_leaves_the_others_in_order() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("pipe-bad", 1).await;
        let mut s = TcpStream::connect(app.kafka.clone().unwrap()).await.unwrap();
        let pid = init_producer_id(&mut s).await;
        let mut burst = Vec::new();
        for i in 0..6 {
            let mut req = idempotent_request("pipe-bad", pid, 0, i * 3);
            if i == 3 {
                let part = &mut req.topic_data[0].partition_data[0];
                let mut batch = part.records.take().unwrap().to_vec();
                let last = batch.len() - 1;
                batch[last] ^= 1;
                part.records = Some(Bytes::from(batch));
            }
            burst.extend(framed(ApiKey::Produce, 9, 100 + i, &req));
        }
        s.write_all(&burst).await.unwrap();
        let answers = produce_answers(&mut s, 100, 6).await;
        assert_eq!(answers, vec![(0, 0), (0, 3), (0, 6), (2, -1), (45, -1), (45, -1)]);
        assert_eq!(produce_idempotent(&mut s, "pipe-bad", pid, 0, 9).await, (0, 9), "the retry of the refused batch");
        assert_eq!(produce_idempotent(&mut s, "pipe-bad", pid, 0, 12).await, (0, 12));
        assert_eq!(app.partition("pipe-bad", 0).await["end_offset"], 15);
    })
    .await;
}

/// Kafka's idempotent producer rules on the wire, and across a restart: a retried batch
/// gets its first offset and is not stored again, a gap is OUT_OF_ORDER_SEQUENCE_NUMBER
/// (45), an older epoch INVALID_PRODUCER_EPOCH (47); producer ids are never handed out twice.
#[tokio::test]
async fn idempotent_batches_are_stored_once_and_out_of_order_ones_refused() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("idem", 1).await;
        let mut s = TcpStream::connect(app.kafka.clone().unwrap()).await.unwrap();
        let pid = init_producer_id(&mut s).await;
        assert_eq!(init_producer_id(&mut s).await, pid + 1, "a new id each time");
        assert_eq!(produce_idempotent(&mut s, "idem", pid, 0, 0).await, (0, 0));
        assert_eq!(produce_idempotent(&mut s, "idem", pid, 0, 0).await, (0, 0), "a retry: its first offset");
        assert_eq!(produce_idempotent(&mut s, "idem", pid, 0, 3).await, (0, 3));
        assert_eq!(produce_idempotent(&mut s, "idem", pid, 0, 9).await.0, 45, "a gap");
        assert_eq!(produce_idempotent(&mut s, "idem", pid + 1, 0, 0).await, (0, 6), "another producer");
        assert_eq!(produce_idempotent(&mut s, "idem", pid, 1, 3).await.0, 45, "a new epoch starts at 0");
        assert_eq!(produce_idempotent(&mut s, "idem", pid, 1, 0).await, (0, 9));
        assert_eq!(produce_idempotent(&mut s, "idem", pid, 0, 6).await.0, 47, "the old epoch is fenced");
        assert_eq!(app.partition("idem", 0).await["end_offset"], 12);
        drop(s);

        let app = app.restart().await;
        let mut s = TcpStream::connect(app.kafka.clone().unwrap()).await.unwrap();
        assert_eq!(produce_idempotent(&mut s, "idem", pid, 1, 0).await, (0, 9), "remembered across a restart");
        assert_eq!(produce_idempotent(&mut s, "idem", pid, 1, 6).await.0, 45);
        assert_eq!(produce_idempotent(&mut s, "idem", pid, 1, 3).await, (0, 12));
        assert_eq!(init_producer_id(&mut s).await, pid + 2, "ids are not handed out again");
        let values: Vec<Value> = app.read_all("idem", 0, 0).await.iter().map(|r| r["value"].clone()).collect();
        let want: Vec<String> = [(pid, 0, 0), (pid, 0, 3), (pid + 1, 0, 0), (pid, 1, 0), (pid, 1, 3)]
            .iter()
            .flat_map(|(p, e, f)| (0..3).map(move |i| format!("{p}/{e}/{}", f + i)))
            .collect();
        assert_eq!(values, want.iter().map(|v| json!(v)).collect::<Vec<_>>(), "each batch once, in order");
    })
    .await;
}

/// Two confluent-kafka consumers in one group split a topic's partitions, commit, and when
/// one leaves the other takes every partition; what they committed is the group's committed
/// offsets over REST, and after a restart a new member resumes there. Run with the eager
/// (range) and the cooperative (cooperative-sticky) assignors.
async fn group_members_split_rebalance_commit_and_resume(strategy: &str) {
    let app = spawn_app().await;
    app.create_topic_with("grp", 4, json!({"retention_ms": -1})).await;
    for p in 0..4u32 {
        let records: Vec<Value> = (0..10).map(|i| json!({"value": format!("p{p}-{i}"), "partition": p})).collect();
        app.produce("grp", json!(records)).await;
    }
    let bootstrap = app.kafka.clone().unwrap();
    let out = clients_at(&bootstrap, "group_split", &[strategy]).await;
    assert_eq!(out["committed"], json!([12, 12, 12, 12]), "{out}");
    let group = format!("kg-{strategy}");
    let (status, body) = app.get(&format!("/v1/groups/{group}")).await;
    assert_eq!(status, 200, "{body}");
    let committed: Vec<(u64, u64)> = body["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["partition"].as_u64().unwrap(), o["committed_offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(committed, vec![(0, 12), (1, 12), (2, 12), (3, 12)], "{body}");

    let app = app.restart().await;
    let records: Vec<Value> = (0..4u32).map(|p| json!({"value": format!("new-{p}"), "partition": p})).collect();
    app.produce("grp", json!(records)).await;
    let out = clients_at(&app.kafka.clone().unwrap(), "group_resume", &[&group]).await;
    assert_eq!(out["values"], json!(["new-0", "new-1", "new-2", "new-3"]), "resumed at the committed offsets");
}

#[tokio::test]
async fn kafka_group_with_the_range_assignor() {
    crate::helpers::within(group_members_split_rebalance_commit_and_resume("range")).await;
}

#[tokio::test]
async fn kafka_group_with_the_cooperative_sticky_assignor() {
    crate::helpers::within(group_members_split_rebalance_commit_and_resume("cooperative-sticky")).await;
}

/// A raw JoinGroup v3 (no member id round trip) for `group`, and the answer.
async fn raw_join(stream: &mut TcpStream, group: &str, member: &str) -> JoinGroupResponse {
    let protocol = join_group_request::JoinGroupRequestProtocol::default()
        .with_name(StrBytes::from_static_str("range"))
        .with_metadata(Bytes::from_static(b"\0\0\0\0\0\x01\0\x03grp\0\0\0\0"));
    let req = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_session_timeout_ms(30_000)
        .with_rebalance_timeout_ms(30_000)
        .with_member_id(StrBytes::from_string(member.to_owned()))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![protocol]);
    answer(ApiKey::JoinGroup, 3, exchange(stream, &framed(ApiKey::JoinGroup, 3, 3, &req)).await.unwrap())
}

async fn raw_delete_group(stream: &mut TcpStream, group: &str) -> i16 {
    let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
    let res: DeleteGroupsResponse =
        answer(ApiKey::DeleteGroups, 2, exchange(stream, &framed(ApiKey::DeleteGroups, 2, 4, &req)).await.unwrap());
    res.results[0].error_code
}

/// One group id, one protocol at a time: a Kafka JoinGroup to a group with REST members is
/// INCONSISTENT_GROUP_PROTOCOL, a REST join to a group with Kafka members is `409
/// group_protocol_conflict`; Kafka's tools list and describe both kinds, and delete only
/// empty ones.
#[tokio::test]
async fn a_group_id_is_used_by_one_protocol_at_a_time() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("grp", 2).await;
        let (status, _) = app.post("/v1/groups/rest-owned/members", json!({"topics": ["grp"]})).await;
        assert_eq!(status, 201);
        let mut s = TcpStream::connect(app.kafka.clone().unwrap()).await.unwrap();
        assert_eq!(raw_join(&mut s, "rest-owned", "").await.error_code, 23, "INCONSISTENT_GROUP_PROTOCOL");

        let joined = raw_join(&mut s, "kafka-owned", "").await;
        assert_eq!((joined.error_code, joined.generation_id), (0, 1));
        assert_eq!(joined.leader, joined.member_id, "the only member leads");
        assert_eq!(joined.members.len(), 1);
        let (status, body) = app.post("/v1/groups/kafka-owned/members", json!({"topics": ["grp"]})).await;
        assert_eq!((status, body["code"].as_str()), (409, Some("group_protocol_conflict")), "{body}");
        let (_, body) = app.get("/v1/groups/kafka-owned").await;
        assert_eq!((body["protocol"].as_str(), body["assignor"].as_str()), (Some("kafka"), Some("range")), "{body}");
        assert_eq!(body["members"][0]["member_id"], json!(joined.member_id.as_str()));
        assert_eq!(body["members"][0]["topics"], json!(["grp"]), "read from the consumer protocol metadata");

        let req = ListGroupsRequest::default();
        let listed: ListGroupsResponse =
            answer(ApiKey::ListGroups, 4, exchange(&mut s, &framed(ApiKey::ListGroups, 4, 5, &req)).await.unwrap());
        let mut groups: Vec<(String, String)> =
            listed.groups.iter().map(|g| (g.group_id.0.to_string(), g.protocol_type.to_string())).collect();
        groups.sort();
        assert_eq!(groups, vec![("kafka-owned".into(), "consumer".into()), ("rest-owned".into(), "gregor".into())]);
        let req = DescribeGroupsRequest::default().with_groups(vec![
            GroupId(StrBytes::from_static_str("kafka-owned")),
            GroupId(StrBytes::from_static_str("none")),
        ]);
        let described: DescribeGroupsResponse = answer(
            ApiKey::DescribeGroups,
            5,
            exchange(&mut s, &framed(ApiKey::DescribeGroups, 5, 6, &req)).await.unwrap(),
        );
        assert_eq!(described.groups[0].group_state.as_str(), "CompletingRebalance");
        assert_eq!(described.groups[0].protocol_data.as_str(), "range");
        assert_eq!(described.groups[0].members[0].member_id, joined.member_id);
        assert_eq!(described.groups[1].group_state.as_str(), "Dead", "an unknown group");

        assert_eq!(raw_delete_group(&mut s, "kafka-owned").await, 68, "NON_EMPTY_GROUP");
        let leave = LeaveGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("kafka-owned")))
            .with_member_id(joined.member_id.clone());
        let left: LeaveGroupResponse =
            answer(ApiKey::LeaveGroup, 2, exchange(&mut s, &framed(ApiKey::LeaveGroup, 2, 7, &leave)).await.unwrap());
        assert_eq!(left.error_code, 0);
        let (status, _) = app.post("/v1/groups/kafka-owned/members", json!({"topics": ["grp"]})).await;
        assert_eq!(status, 201, "free once the Kafka member left");
        let m = raw_join(&mut s, "kafka-owned", &joined.member_id).await;
        assert_eq!(m.error_code, 23, "and now REST holds it");
        assert_eq!(raw_delete_group(&mut s, "never-was").await, 69, "GROUP_ID_NOT_FOUND");
    })
    .await;
}

/// SASL/PLAIN with gregor's users, under the ACLs of SPEC §8: the principal may write and
/// read what its ACLs allow and gets TOPIC_/GROUP_AUTHORIZATION_FAILED elsewhere; a wrong
/// password and a client without SASL are refused.
#[tokio::test]
async fn sasl_plain_users_are_held_to_their_acls() {
    crate::helpers::within(async {
        const PASSWORD: &str = "alice-kafka-pw-9";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gregor.toml");
        let hash = gregor::auth::hash_password(PASSWORD).unwrap();
        let toml = format!(
            r#"
[auth]
superusers = ["User:admin"]

[[auth.users]]
name = "kafka-alice"
password_hash = "{hash}"

[[auth.users]]
name = "admin"
password_hash = "{hash}"

[[acl]]
principal = "User:kafka-alice"
resource = "topic"
name = "sasl-ok"
operations = ["read", "write", "describe"]

[[acl]]
principal = "User:kafka-alice"
resource = "group"
name = "sasl-g"
operations = ["read", "describe"]
"#
        );
        std::fs::write(&file, toml).unwrap();
        let auth = gregor::config::load_auth(&file).unwrap();
        let app = crate::helpers::spawn_app_with(move |c| c.auth = auth).await;
        for topic in ["sasl-ok", "sasl-no"] {
            let res = app
                .client
                .post(app.url("/v1/topics"))
                .basic_auth("admin", Some(PASSWORD))
                .json(&json!({"name": topic, "partitions": 1}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
        }
        let out = clients_at(&app.kafka.clone().unwrap(), "sasl", &[PASSWORD]).await;
        assert_eq!(out["wrong_password"], "_AUTHENTICATION");
        let read = |topic: &'static str| {
            let app = &app;
            async move {
                let url = app.url(&format!("/v1/topics/{topic}/partitions/0"));
                let res = app.client.get(url).basic_auth("admin", Some(PASSWORD)).send().await.unwrap();
                res.json::<Value>().await.unwrap()["end_offset"].clone()
            }
        };
        assert_eq!(read("sasl-ok").await, 1, "the allowed record is stored");
        assert_eq!(read("sasl-no").await, 0, "nothing stored where denied");
    })
    .await;
}

/// One Fetch from `offsets` (partition → next offset) of topic `topic`, at `version`, with
/// per-partition and total byte limits; answers each partition's (error, high watermark, records).
async fn fetch_once(
    stream: &mut TcpStream,
    topic: &str,
    offsets: &[i64],
    version: i16,
    partition_max: i32,
    max: i32,
) -> Vec<(i16, i64, Bytes)> {
    use kafka_protocol::messages::{FetchRequest, FetchResponse, fetch_request};
    let partitions = offsets
        .iter()
        .enumerate()
        .map(|(p, &o)| {
            fetch_request::FetchPartition::default()
                .with_partition(p as i32)
                .with_fetch_offset(o)
                .with_partition_max_bytes(partition_max)
        })
        .collect();
    let req =
        FetchRequest::default().with_replica_id(BrokerId(-1)).with_max_wait_ms(0).with_max_bytes(max).with_topics(
            vec![
                fetch_request::FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(partitions),
            ],
        );
    let res: FetchResponse =
        answer(ApiKey::Fetch, version, exchange(stream, &framed(ApiKey::Fetch, version, 9, &req)).await.unwrap());
    res.responses[0]
        .partitions
        .iter()
        .map(|p| (p.error_code, p.high_watermark, p.records.clone().unwrap_or_default()))
        .collect()
}

/// Fetch answers carry the stored batches whole, within the byte limits, in old and flexible
/// versions alike, whether the batches come from the store (one buffer per read, shared by
/// the answer), from the tail cache (copied together) or as one batch: reading two partitions
/// of 1.6 MB each (three times the tail cache) from offset 0 to the end gives every record
/// once, in order, with its value.
#[tokio::test]
async fn fetch_answers_carry_the_stored_batches_whole_within_the_limits() {
    use kafka_protocol::records::RecordBatchDecoder;
    crate::helpers::within(async {
        let app = spawn_app().await;
        app.create_topic("big", 2).await;
        let value = |p: u64, o: u64| format!("{p}:{o}:{}", "x".repeat(180));
        for p in 0..2u64 {
            for request in 0..80u64 {
                let records: Vec<Value> =
                    (0..40).map(|i| json!({"partition": p, "value": value(p, request * 40 + i)})).collect();
                app.produce("big", Value::Array(records)).await;
            }
        }
        let mut s = TcpStream::connect(app.kafka.clone().unwrap()).await.unwrap();
        for (version, partition_max, max) in [(12, 100_000, 150_000), (4, 64 * 1024, 10 << 20), (11, 1, 1)] {
            let mut offsets = vec![0i64; 2];
            let mut fetches = 0;
            while offsets.iter().any(|&o| o < 3200) {
                fetches += 1;
                assert!(fetches < 400, "v{version}: no progress from {offsets:?}");
                let answer = fetch_once(&mut s, "big", &offsets, version, partition_max, max).await;
                let (mut total, mut sent) = (0, 0);
                for (p, (error, high, mut records)) in answer.into_iter().enumerate() {
                    assert_eq!((error, high), (0, 3200), "v{version} partition {p}");
                    let size = records.len();
                    let mut batches = 0;
                    while !records.is_empty() {
                        let set = RecordBatchDecoder::decode(&mut records).unwrap();
                        batches += 1;
                        for r in set.records {
                            let o = offsets[p];
                            assert_eq!(r.offset, o, "v{version} partition {p}: offsets follow on");
                            assert_eq!(r.value.as_deref(), Some(value(p as u64, o as u64).as_bytes()));
                            offsets[p] += 1;
                        }
                    }
                    // Beyond the first batch, a partition's answer stays within its limit.
                    assert!(batches <= 1 || size <= partition_max as usize, "v{version} partition {p}: {size} bytes");
                    total += size;
                    sent += batches;
                }
                // Kafka's rule: beyond the answer's first batch, the total stays within its limit.
                assert!(sent <= 1 || total <= max as usize, "v{version}: {total} bytes in one answer");
                assert!(sent >= 1, "v{version}: an answer with nothing from {offsets:?}");
            }
            assert_eq!(offsets, vec![3200, 3200], "v{version}");
        }
    })
    .await;
}
