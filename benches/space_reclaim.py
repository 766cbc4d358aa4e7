"""How soon gregor gives disk space back after a topic deletion or a retention cut.

Two topics of 2 partitions share the store's blob files: `short` and `kept` (kept forever), N records of 100 bytes
each, produced together over the Kafka listener with confluent-kafka. Then, by mode:
  delete     `short` is deleted; nothing is written after
  retention  `short` has retention_ms 20000; nothing is written after
  busy       `short` has retention_ms 15000; `kept` keeps taking ~40,000 records/s for 150 s
and the store's size (`gregor_store_bytes` on /metrics) is printed every 10 s, with the server's log lines about
reclaiming. Reports figures only; nothing here passes or fails.

  .venv/bin/python benches/space_reclaim.py path/to/gregor MODE [N]   (scripts/setup creates .venv)
"""
import json, os, re, subprocess, sys, tempfile, time, urllib.request

from confluent_kafka import Producer

BIN, MODE = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
HTTP, KAFKA = "127.0.0.1:18093", "127.0.0.1:19093"  # loopback only
work = tempfile.mkdtemp(prefix="gregor-reclaim-")
config = os.path.join(work, "gregor.toml")
with open(config, "w") as f:
    f.write("retention_check_interval_ms = 1000\n")
log = open(os.path.join(work, "log"), "w")
server = subprocess.Popen([BIN, "serve", "--listen", HTTP, "--data-dir", os.path.join(work, "data"),
                           "--kafka-listen", KAFKA, "--config", config], stdout=log, stderr=subprocess.STDOUT)


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{HTTP}{path}", method=method, data=data,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as res:
        return res.read().decode()


def store_mb():
    return int(re.search(r"^gregor_store_bytes (\d+)", call("GET", "/metrics"), re.M).group(1)) / 1e6


try:
    for _ in range(200):
        try:
            call("GET", "/v1/topics")
            break
        except OSError:
            time.sleep(0.1)
    short_ms = {"delete": -1, "retention": 20000, "busy": 15000}[MODE]
    call("POST", "/v1/topics", {"name": "short", "partitions": 2, "config": {"retention_ms": short_ms}})
    call("POST", "/v1/topics", {"name": "kept", "partitions": 2, "config": {"retention_ms": -1}})
    pool = os.urandom(1 << 20)  # values are slices of it: LZ4 finds little to compress
    producer = Producer({"bootstrap.servers": KAFKA, "linger.ms": 5, "batch.size": 1000000,
                         "queue.buffering.max.messages": 1000000, "log_level": 3})

    def send(topic, i):
        at = (i * 37) % (len(pool) - 100)
        while True:
            try:
                producer.produce(topic, pool[at:at + 100], partition=i & 1)
                return
            except BufferError:
                producer.poll(0.01)

    for i in range(N):
        send("short", i)
        send("kept", i)
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush()
    print(f"{MODE}: loaded {2 * N} records; store {store_mb():.0f} MB", flush=True)
    if MODE == "delete":
        call("DELETE", "/v1/topics/short")
    start, i = time.time(), 0
    for tick in range(16 if MODE == "busy" else 9):
        until = start + 10 * tick
        while time.time() < until:
            if MODE == "busy":
                for _ in range(2000):
                    send("kept", i)
                    i += 1
                producer.poll(0)
            time.sleep(0.04 if MODE == "busy" else until - time.time())
        print(f"t+{time.time() - start:4.0f}s store {store_mb():6.0f} MB", flush=True)
    producer.flush()
finally:
    server.terminate()
    server.wait()
    log.close()
    with open(os.path.join(work, "log")) as f:
        for line in f:
            if "garbage collection" in line or "removed records away" in line:
                print(line.strip()[:200])
    subprocess.run(["rm", "-rf", work])
