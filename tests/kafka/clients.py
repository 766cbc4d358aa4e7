"""Real Kafka clients against a running gregor: `clients.py SCENARIO BOOTSTRAP`.

Run by the Rust integration tests (tests/api/kafka.rs), which start gregor on ephemeral ports,
prepare what a scenario reads, and check over REST and WebSocket what it wrote. Each scenario
asserts what the clients saw and prints one JSON line for the Rust side; a failed assertion
exits non-zero with the reason.
"""

import json
import sys

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

TIMEOUT = 20


def admin(bs):
    a = AdminClient({"bootstrap.servers": bs})
    futures = a.create_topics(
        [
            NewTopic("adm-a", num_partitions=2, replication_factor=1, config={"retention.ms": "3600000"}),
            NewTopic("adm-b", num_partitions=1, replication_factor=1),
        ]
    )
    for f in futures.values():
        f.result(TIMEOUT)
    # Creating it again is Kafka's TOPIC_ALREADY_EXISTS; a config gregor lacks is INVALID_CONFIG.
    again = a.create_topics([NewTopic("adm-a", num_partitions=1, replication_factor=1)])["adm-a"]
    try:
        again.result(TIMEOUT)
        raise AssertionError("a second create succeeded")
    except KafkaException as e:
        assert e.args[0].name() == "TOPIC_ALREADY_EXISTS", e
    bad = a.create_topics([NewTopic("adm-c", 1, 1, config={"cleanup.policy": "compact"})])["adm-c"]
    try:
        bad.result(TIMEOUT)
        raise AssertionError("cleanup.policy=compact was accepted")
    except KafkaException as e:
        assert e.args[0].name() == "INVALID_CONFIG", e
    a.create_partitions([NewPartitions("adm-a", 5)])["adm-a"].result(TIMEOUT)
    md = a.list_topics(timeout=TIMEOUT)
    assert len(md.topics["adm-a"].partitions) == 5, md.topics["adm-a"].partitions
    assert "adm-c" not in md.topics
    configs = a.describe_configs([ConfigResource("TOPIC", "adm-a")])
    entries = list(configs.values())[0].result(TIMEOUT)
    assert entries["retention.ms"].value == "3600000", entries["retention.ms"]
    a.delete_topics(["adm-b"])["adm-b"].result(TIMEOUT)
    md = a.list_topics(timeout=TIMEOUT)
    assert "adm-b" not in md.topics
    print(json.dumps({"topics": sorted(md.topics.keys())}))


def produce_codecs(bs):
    """Keyed records with every codec, placed by Kafka's murmur2 as REST places keys."""
    delivered = []

    def on_delivery(err, msg):
        assert err is None, err
        delivered.append({"key": msg.key().decode(), "partition": msg.partition(), "offset": msg.offset()})

    for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
        p = Producer(
            {
                "bootstrap.servers": bs,
                "compression.type": codec,
                "partitioner": "murmur2_random",
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 20,
            }
        )
        for i in range(40):
            value = json.dumps({"codec": codec, "i": i}) if i % 2 == 0 else f"text {codec} {i}"
            p.produce("codecs", key=f"{codec}-{i}", value=value, headers=[("codec", codec.encode())], on_delivery=on_delivery)
        assert p.flush(TIMEOUT) == 0
    assert len(delivered) == 200, len(delivered)
    print(json.dumps({"delivered": delivered}))


def consume_assign(bs):
    """Reads what REST produced to `from-rest` (3 partitions) by assignment, from the start."""
    c = Consumer({"bootstrap.servers": bs, "group.id": "unused", "enable.auto.commit": False})
    c.assign([TopicPartition("from-rest", p, 0) for p in range(3)])
    records = []
    while True:
        m = c.poll(3)
        if m is None:
            break
        assert m.error() is None, m.error()
        records.append(
            {
                "partition": m.partition(),
                "offset": m.offset(),
                "key": m.key().decode() if m.key() is not None else None,
                "value": m.value().decode() if m.value() is not None else None,
                "headers": [[k, v.decode()] for k, v in (m.headers() or [])],
                "timestamp": m.timestamp()[1],
            }
        )
    low, high = c.get_watermark_offsets(TopicPartition("from-rest", 0), timeout=TIMEOUT)
    found = c.offsets_for_times([TopicPartition("from-rest", 0, 1_500)], timeout=TIMEOUT)[0]
    c.close()
    print(json.dumps({"records": records, "watermarks": [low, high], "offset_for_1500": found.offset}))


def kafka_python(bs):
    """The other client library: produce with gzip, read back by assignment."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    p = KafkaProducer(bootstrap_servers=bs, acks="all", compression_type="gzip")
    futures = [p.send("kp", key=b"k%d" % i, value=b"value %d" % i, partition=i % 2) for i in range(30)]
    p.flush()
    offsets = [f.get(TIMEOUT).offset for f in futures]
    assert offsets[:4] == [0, 0, 1, 1], offsets[:4]
    c = KafkaConsumer(bootstrap_servers=bs, auto_offset_reset="earliest", consumer_timeout_ms=3000)
    c.assign([KTP("kp", 0), KTP("kp", 1)])
    values = sorted(m.value.decode() for m in c)
    assert len(values) == 30, len(values)
    ends = c.end_offsets([KTP("kp", 0), KTP("kp", 1)])
    assert sorted(ends.values()) == [15, 15], ends
    c.close()
    # Its group consumer: join, read everything, commit; a second one resumes after the commit.
    g = KafkaConsumer("kp", bootstrap_servers=bs, group_id="kp-g", auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=5000)
    grouped = sorted(m.value.decode() for m in g)
    assert grouped == values, grouped
    g.commit()
    g.close()
    g = KafkaConsumer("kp", bootstrap_servers=bs, group_id="kp-g", auto_offset_reset="earliest",
                      consumer_timeout_ms=3000)
    again = [m.value for m in g]
    g.close()
    assert again == [], again
    print(json.dumps({"values": values}))


def idempotent_stream(bs, count="20000"):
    """An idempotent producer writing "0".."count-1" to `killed`/0, paced, while the Rust side
    kills gregor with SIGKILL and starts it again on the same port: librdkafka retries what
    was in flight, and the partition must end up holding every value once, in order."""
    count = int(count)
    errors = []
    delivered = [0]

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            delivered[0] += 1

    p = Producer(
        {
            "bootstrap.servers": bs,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.num.messages": 50,
            "message.timeout.ms": 60000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
        }
    )
    for i in range(count):
        while True:
            try:
                p.produce("killed", value=str(i), partition=0, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        if i % 50 == 49:
            p.poll(0.005)
    left = p.flush(90)
    assert left == 0, f"{left} records never delivered"
    assert not errors, errors[:5]
    assert delivered[0] == count, delivered[0]
    print(json.dumps({"delivered": delivered[0]}))


def _consumer(bs, group, strategy, name):
    return Consumer(
        {
            "bootstrap.servers": bs,
            "group.id": group,
            "client.id": name,
            "partition.assignment.strategy": strategy,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 300,
        }
    )


def _drain(consumers, until, seconds=30):
    """Polls every consumer in turn until `until()` holds; returns what each received."""
    import time

    got = {id(c): [] for c in consumers}
    deadline = time.time() + seconds
    while not until(got) and time.time() < deadline:
        for c in consumers:
            m = c.poll(0.1)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got[id(c)].append((m.partition(), m.offset(), m.value().decode()))
    assert until(got), {k: len(v) for k, v in got.items()}
    return got


def group_split(bs, strategy="range"):
    """Two members split `grp` (4 partitions, 40 records from REST), commit, one leaves, the
    other takes every partition and reads what is produced next; then it commits and leaves."""
    a = _consumer(bs, "kg-" + strategy, strategy, "a")
    b = _consumer(bs, "kg-" + strategy, strategy, "b")
    a.subscribe(["grp"])
    b.subscribe(["grp"])
    # An eager rebalance (range) may hand a partition over before anything was committed:
    # its records are read again (at-least-once), so count distinct values.
    distinct = lambda g: len({v for recs in g.values() for (_, _, v) in recs})  # noqa: E731
    got = _drain([a, b], lambda g: distinct(g) >= 40 and all(g.values()))
    # Both must hold partitions at the end, disjoint, covering all four.
    import time

    deadline = time.time() + 20
    while time.time() < deadline:
        pa = {tp.partition for tp in a.assignment()}
        pb = {tp.partition for tp in b.assignment()}
        if pa and pb and not (pa & pb) and (pa | pb) == {0, 1, 2, 3}:
            break
        a.poll(0.1)
        b.poll(0.1)
    split = [sorted(pa), sorted(pb)]
    assert pa and pb and not (pa & pb) and (pa | pb) == {0, 1, 2, 3}, split
    values = {v for recs in got.values() for (_, _, v) in recs}
    assert values == {f"p{p}-{i}" for p in range(4) for i in range(10)}, sorted(values)
    a.commit(asynchronous=False)
    b.commit(asynchronous=False)
    b.close()
    # a takes over all four partitions.
    deadline = time.time() + 30
    while time.time() < deadline and len(a.assignment()) != 4:
        a.poll(0.1)
    assert len(a.assignment()) == 4, a.assignment()
    p = Producer({"bootstrap.servers": bs, "partitioner": "murmur2_random"})
    for i in range(8):
        p.produce("grp", key=f"late-{i}", value=f"late {i}", partition=i % 4)
    assert p.flush(TIMEOUT) == 0
    later = _drain([a], lambda g: sum(map(len, g.values())) >= 8)[id(a)]
    assert sorted(v for (_, _, v) in later) == [f"late {i}" for i in range(8)], later
    a.commit(asynchronous=False)
    committed = a.committed([TopicPartition("grp", p) for p in range(4)], timeout=TIMEOUT)
    a.close()
    print(json.dumps({"split": split, "committed": [tp.offset for tp in committed]}))


def group_resume(bs, group):
    """A new member of `group` resumes at its committed offsets: it reads only what came after."""
    c = _consumer(bs, group, "range", "resumer")
    c.subscribe(["grp"])
    got = _drain([c], lambda g: sum(map(len, g.values())) >= 4)[id(c)]
    import time

    end = time.time() + 2
    while time.time() < end:
        m = c.poll(0.1)
        if m is not None and m.error() is None:
            got.append((m.partition(), m.offset(), m.value().decode()))
    c.close()
    print(json.dumps({"values": sorted(v for (_, _, v) in got)}))


def sasl(bs, password):
    """SASL/PLAIN as gregor's user `kafka-alice`: allowed to write and read `sasl-ok` in group
    `sasl-g`; denied `sasl-no` and other groups; a wrong password and no SASL are refused."""
    from confluent_kafka import KafkaError

    def conf(pw, **extra):
        c = {
            "bootstrap.servers": bs,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "kafka-alice",
            "sasl.password": pw,
        }
        c.update(extra)
        return c

    outcomes = {}

    def on_delivery(err, msg):
        outcomes[msg.topic()] = err.name() if err else "ok"

    p = Producer(conf(password, **{"enable.idempotence": True, "message.timeout.ms": 10000}))
    p.produce("sasl-ok", key="k", value="allowed", on_delivery=on_delivery)
    assert p.flush(TIMEOUT) == 0
    p2 = Producer(conf(password, **{"message.timeout.ms": 5000}))
    try:
        p2.produce("sasl-no", value="denied", on_delivery=on_delivery)
    except KafkaException as e:
        # librdkafka reports the denial from produce() itself when the topic's metadata,
        # already marked unauthorized, reached the producer first; otherwise in the report.
        outcomes["sasl-no"] = e.args[0].name()
    p2.flush(TIMEOUT)
    assert outcomes == {"sasl-ok": "ok", "sasl-no": "TOPIC_AUTHORIZATION_FAILED"}, outcomes

    c = Consumer(conf(password, **{"group.id": "sasl-g", "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    c.subscribe(["sasl-ok"])
    got = None
    for _ in range(100):
        m = c.poll(0.2)
        if m is not None:
            assert m.error() is None, m.error()
            got = m.value().decode()
            break
    assert got == "allowed", got
    c.commit(asynchronous=False)
    c.close()

    denied_group = None
    c = Consumer(conf(password, **{"group.id": "not-hers", "auto.offset.reset": "earliest"}))
    c.subscribe(["sasl-ok"])
    for _ in range(50):
        m = c.poll(0.2)
        if m is not None and m.error() is not None:
            denied_group = m.error().name()
            break
    c.close()
    assert denied_group == "GROUP_AUTHORIZATION_FAILED", denied_group

    def refused(config):
        """What the client reports when it cannot get in: the errors its error_cb saw."""
        seen = []
        config = dict(config, error_cb=lambda e: seen.append(e.name()), log_level=0)
        a = AdminClient(config)
        try:
            a.list_topics(timeout=3)
            return "listed"
        except KafkaException as e:
            seen.append(e.args[0].name())
        a.poll(1)  # error_cb runs from poll
        return "_AUTHENTICATION" if "_AUTHENTICATION" in seen else seen[-1]

    wrong = refused(conf("not-the-password"))
    assert wrong == "_AUTHENTICATION", wrong
    plain = refused({"bootstrap.servers": bs})
    assert plain in ("_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN"), plain
    print(json.dumps({"outcomes": outcomes, "wrong_password": wrong, "no_sasl": plain}))


def broker_view(bs, topic, partitions, group):
    """What Kafka's own client sees on the cluster behind gregor's Kafka backend: every
    record of `topic` (values as text) and `group`'s committed offsets."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bs, "group.id": group, "enable.auto.commit": False})
    tps = [TopicPartition(topic, p) for p in range(int(partitions))]
    committed = {str(tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
    c.assign([TopicPartition(topic, p, 0) for p in range(int(partitions))])
    values, idle = [], 0
    while idle < 4:
        m = c.poll(0.5)
        if m is None:
            idle += 1
            continue
        if m.error():
            raise SystemExit(f"consume failed: {m.error()}")
        values.append(m.value().decode())
        idle = 0
    c.close()
    print(json.dumps({"values": sorted(values), "committed": committed}))


def registry(bs, url):
    """Confluent's own Schema Registry client against gregor's `/registry`: register, look up,
    check compatibility, levels, deletes and error codes; then Avro records produced with
    AvroSerializer through gregor's Kafka listener and read back with AvroDeserializer."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = SchemaRegistryClient({"url": url})
    v1 = Schema(json.dumps({"type": "record", "name": "Order", "fields": [{"name": "id", "type": "long"}]}), "AVRO")
    v2 = Schema(
        json.dumps({"type": "record", "name": "Order", "fields": [
            {"name": "id", "type": "long"}, {"name": "note", "type": "string", "default": ""}]}),
        "AVRO",
    )
    broken = Schema(json.dumps({"type": "record", "name": "Order", "fields": [{"name": "id", "type": "string"}]}), "AVRO")
    id1 = client.register_schema("py-value", v1)
    assert client.register_schema("py-value", v1) == id1, "registering again answers the same id"
    assert client.test_compatibility("py-value", v2), "adding a field with a default is BACKWARD compatible"
    assert not client.test_compatibility("py-value", broken), "changing a type is not"
    id2 = client.register_schema("py-value", v2)
    latest = client.get_latest_version("py-value")
    assert (latest.version, latest.schema_id) == (2, id2), latest
    found = client.lookup_schema("py-value", v1)
    assert (found.version, found.schema_id) == (1, id1), found
    assert json.loads(client.get_schema(id1).schema_str) == json.loads(v1.schema_str)
    assert client.get_versions("py-value") == [1, 2]
    codes = {}
    try:
        client.register_schema("py-value", broken)
    except SchemaRegistryError as e:
        codes["incompatible"] = e.error_code
    try:
        client.get_latest_version("no-such-subject")
    except SchemaRegistryError as e:
        codes["subject_not_found"] = e.error_code
    try:
        client.get_version("py-value", 9)
    except SchemaRegistryError as e:
        codes["version_not_found"] = e.error_code
    try:
        client.get_schema(99999)
    except SchemaRegistryError as e:
        codes["schema_not_found"] = e.error_code
    try:
        client.register_schema("py-value", Schema("{not json", "AVRO"))
    except SchemaRegistryError as e:
        codes["invalid_schema"] = e.error_code
    client.set_compatibility("py-value", "NONE")
    level = client.get_compatibility("py-value")
    json_schema = Schema(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}), "JSON")
    json_id = client.register_schema("pyj-value", json_schema)
    assert client.get_latest_version("pyj-value").schema.schema_type == "JSON"
    try:
        client.delete_subject("pyj-value", permanent=True)
    except SchemaRegistryError as e:
        codes["not_soft_deleted"] = e.error_code
    soft = client.delete_subject("pyj-value")
    hard = client.delete_subject("pyj-value", permanent=True)

    # Confluent's serializers, through gregor's Kafka listener.
    topic = "orders-avro"
    serializer = AvroSerializer(client, v1.schema_str)
    producer = Producer({"bootstrap.servers": bs})
    for i in range(3):
        value = serializer({"id": i}, SerializationContext(topic, MessageField.VALUE))
        producer.produce(topic, value=value, partition=0)
    assert producer.flush(TIMEOUT) == 0
    deserializer = AvroDeserializer(client)
    consumer = Consumer({"bootstrap.servers": bs, "group.id": "avro-reader", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    read = []
    while len(read) < 3:
        m = consumer.poll(TIMEOUT)
        assert m is not None and not m.error(), m and m.error()
        read.append(deserializer(m.value(), SerializationContext(topic, MessageField.VALUE)))
    consumer.close()
    print(json.dumps({
        "ids": [id1, id2, json_id], "codes": codes, "level": level, "soft": soft, "hard": hard,
        "avro_values": read, "avro_subjects": client.get_subjects(),
    }))


def schemas(bs, url):
    """Validated topics across protocols: AvroDeserializer reads what REST produced to `users`;
    JSONSerializer produces to `events` through the Kafka listener; a value without a schema id
    on `users` is refused with INVALID_RECORD."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.schema_registry.json_schema import JSONSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = SchemaRegistryClient({"url": url})
    deserializer = AvroDeserializer(client)
    consumer = Consumer({"bootstrap.servers": bs, "group.id": "users-reader", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition("users", 0, 0)])
    users = []
    while True:
        m = consumer.poll(2)
        if m is None:
            break
        assert not m.error(), m.error()
        users.append(deserializer(m.value(), SerializationContext("users", MessageField.VALUE)))
    consumer.close()

    events = client.get_latest_version("events-value").schema.schema_str
    serializer = JSONSerializer(events, client, conf={"auto.register.schemas": False, "use.latest.version": True})
    producer = Producer({"bootstrap.servers": bs})
    for n in range(2):
        value = serializer({"kind": "click", "n": n}, SerializationContext("events", MessageField.VALUE))
        producer.produce("events", value=value, partition=0)
    assert producer.flush(TIMEOUT) == 0

    refused = []
    producer.produce("users", value=b"no schema id", partition=0,
                     on_delivery=lambda err, msg: refused.append(err.name() if err else "delivered"))
    assert producer.flush(TIMEOUT) == 0
    print(json.dumps({"users": users, "refused": refused}))


SCENARIOS = {
    f.__name__: f
    for f in [
        admin,
        produce_codecs,
        consume_assign,
        kafka_python,
        idempotent_stream,
        group_split,
        group_resume,
        sasl,
        broker_view,
        registry,
        schemas,
    ]
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](*sys.argv[2:])
