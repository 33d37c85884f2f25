"""The ``kafka-librdkafka`` transport against a real broker (Tansu), with confluent-kafka itself as
the peer: a worker on it answers like the engine, commits stop at the oldest unanswered record,
pausing holds every partition (even one assigned while paused), a too-large result becomes
``result_too_large``, and a dead letter keeps the request's headers."""

from __future__ import annotations

import json
import time
import uuid

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, Producer, TopicPartition
from streaming import RunningWorker, worker_settings

from poolworker.broker import free_port
from poolworker.cache import make_cache
from poolworker.client import PoolClient
from poolworker.consumers import librdkafka
from poolworker.consumers.librdkafka import LibrdkafkaTransport, translate_options
from poolworker.consumers.transport import TransportUnavailable
from poolworker.metrics import Metrics
from poolworker.worker import Worker

ATOL = 1e-6
TRANSPORT = "kafka-librdkafka"


# -- peers: confluent-kafka used directly, as any other service on the broker would ---------------------
def send(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]], headers=None, partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for key, value in messages:
        kw = {} if partition is None else {"partition": partition}
        producer.produce(topic, value, key, headers=headers, **kw)
    assert producer.flush(30) == 0


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Every record of ``topic`` from its beginning, waiting until ``expected`` have arrived."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "fetch.wait.max.ms": 20})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out, deadline = [], time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            out += [m for m in consumer.consume(500, 0.2) if m.error() is None]
        return out
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets, asked of the broker (without joining the group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)}
    finally:
        consumer.close()


def wait_for(condition, timeout_s: float, step=lambda: time.sleep(0.05)) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        step()
    return True


def request(request_id: str, text: str, **fields) -> bytes:
    return json.dumps({"request_id": request_id, "task": "embed", "model": "minilm", "input": text, **fields}).encode()


def close_to(a, b) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= ATOL


# -- the worker, end to end ----------------------------------------------------------------------------
def start_worker(broker, minilm_engine, **overrides):
    settings = worker_settings(broker, transport=TRANSPORT, **overrides)
    worker = Worker(settings, engines={"minilm": minilm_engine}, cache=make_cache(None), metrics=Metrics())
    return settings, worker, RunningWorker(worker).start()


def client(broker, settings) -> PoolClient:
    return PoolClient(broker.bootstrap_servers, requests_topic=settings.requests_topic, results_topic=settings.results_topic,
                      transport=TRANSPORT)


def test_worker_answers_like_the_engine_and_commits_everything(broker, minilm_engine):
    settings, _worker, running = start_worker(broker, minilm_engine)
    texts = [f"sentence number {i} about librdkafka" for i in range(24)]
    try:
        with client(broker, settings) as c:
            r = c.embed(texts[:3], model="minilm", dimensions=64)
            assert r["error"] is None and r["task"] == "embed"
            for got, ref in zip(r["data"], minilm_engine.embed(texts[:3], dimensions=64)):
                assert close_to(got["embedding"], ref.outputs.embedding)
            futures = {t: c.submit({"task": "embed", "model": "minilm", "input": t}, key=f"k{i}") for i, t in enumerate(texts)}
            refs = {t: o.outputs.embedding for t, o in zip(texts, minilm_engine.embed(texts))}
            for text, future in futures.items():
                assert close_to(future.result(60)["data"][0]["embedding"], refs[text])
    finally:
        running.stop()
    bs = broker.bootstrap_servers
    results = read_all(bs, settings.results_topic, 25)
    assert len(results) == 25
    assert all(dict(m.headers())["status"] == b"ok" for m in results)
    requests = read_all(bs, settings.requests_topic, 25)
    ends: dict[int, int] = {}
    for m in requests:
        ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
    assert {p: o for p, o in committed(bs, settings.group_id, settings.requests_topic, 3).items() if p in ends} == ends


def test_worker_pauses_under_a_small_inflight_limit_and_answers_everything(broker, minilm_engine):
    settings, worker, running = start_worker(broker, minilm_engine, max_inflight_requests=3, max_poll_records=2)
    transport = worker.loop.transport
    pauses, highest = [], [0]
    pause, inflight = transport.pause, transport.inflight
    transport.pause = lambda: (pauses.append(time.monotonic()), pause())[1]
    transport.inflight = lambda: (n := inflight(), highest.__setitem__(0, max(highest[0], n)))[0]
    texts = [f"backpressure {i}" for i in range(40)]
    try:
        assert wait_for(worker.loop.ready, 30)
        send(broker.bootstrap_servers, settings.requests_topic,
             [(f"k{i}".encode(), request(f"r{i}", t)) for i, t in enumerate(texts)])
        results = read_all(broker.bootstrap_servers, settings.results_topic, len(texts))
    finally:
        running.stop()
    refs = {f"r{i}": o.outputs.embedding for i, o in enumerate(minilm_engine.embed(texts))}
    answers = {json.loads(m.value())["request_id"]: json.loads(m.value()) for m in results}
    assert set(answers) == set(refs)
    assert all(close_to(answers[rid]["data"][0]["embedding"], ref) for rid, ref in refs.items())
    assert pauses, "the worker never paused with 40 requests and max_inflight_requests=3"
    assert highest[0] <= 3 + 2  # the limit plus one poll past it


def test_too_large_result_and_dead_letter_headers(broker, minilm_engine):
    # max_request_size is kafka-python's name: it must reach librdkafka as message.max.bytes
    settings, worker, running = start_worker(broker, minilm_engine, kafka_options={"max_request_size": 100_000})
    bs = broker.bootstrap_servers
    try:
        assert wait_for(worker.loop.ready, 30)
        send(bs, settings.requests_topic, [(b"big", request("big", "x", metadata={"blob": "m" * 200_000}))])
        send(bs, settings.requests_topic, [(b"poison", b"{not json")], headers=[("trace-id", b"abc-123"), ("empty", b"")])
        send(bs, settings.requests_topic, [(b"fine", request("fine", "after the bad ones"))])
        results = {json.loads(m.value())["request_id"]: m for m in read_all(bs, settings.results_topic, 2)}
        dead = read_all(bs, settings.dlq_topic, 1)
    finally:
        running.stop()
    big = json.loads(results["big"].value())
    assert big["error"]["type"] == "result_too_large" and big["metadata"] is None
    assert dict(results["big"].headers())["status"] == b"error" and results["big"].key() == b"big"
    assert json.loads(results["fine"].value())["error"] is None
    assert len(dead) == 1 and dead[0].key() == b"poison" and dead[0].value() == b"{not json"
    headers = dict(dead[0].headers())
    assert headers["trace-id"] == b"abc-123" and headers["empty"] == b""
    assert headers["dlq.source.topic"] == settings.requests_topic.encode() and headers["dlq.reason"]


# -- the transport alone -------------------------------------------------------------------------------
@pytest.fixture
def transport(broker):
    created = []

    def make(**overrides) -> LibrdkafkaTransport:
        t = LibrdkafkaTransport(worker_settings(broker, transport=TRANSPORT, **overrides), on_revoked=lambda _p: None)
        t.start()
        created.append(t)
        return t

    yield make
    for t in created:
        t.close()


def poll_until(t: LibrdkafkaTransport, n: int, timeout_s: float = 30.0) -> list:
    got: list = []
    wait_for(lambda: len(got) >= n, timeout_s, lambda: got.extend(t.poll(0.1, 100)))
    return got


def test_commit_stops_at_the_oldest_unanswered_record(broker, transport):
    t = transport(partitions=1)
    s, bs = t.settings, broker.bootstrap_servers
    send(bs, s.requests_topic, [(f"k{i}".encode(), request(f"r{i}", "x")) for i in range(6)])
    records = poll_until(t, 6)
    assert [r.source.offset for r in records] == list(range(6))
    t.commit()  # nothing is answered yet: nothing may be committed
    t.poll(0.3, 10)
    assert committed(bs, s.group_id, s.requests_topic, 1)[0] <= 0  # at most "start from the first record"

    acked: list[int] = []

    def answer(record) -> None:
        def on_acked() -> None:
            acked.append(record.source.offset)
            t.finish(record.source)

        t.produce(s.results_topic, record.source.key, record.value, [], on_acked, lambda exc: pytest.fail(str(exc)))

    for record in records[:3] + records[4:]:  # record 3 stays unanswered
        answer(record)
    assert wait_for(lambda: len(acked) == 5, 30)  # delivery reports arrive without anyone calling flush
    assert t.inflight() == 1
    t.commit()
    assert wait_for(lambda: committed(bs, s.group_id, s.requests_topic, 1)[0] == 3, 30, lambda: t.poll(0.1, 10))
    answer(records[3])
    assert wait_for(lambda: t.inflight() == 0, 30)
    t.commit()
    assert wait_for(lambda: committed(bs, s.group_id, s.requests_topic, 1)[0] == 6, 30, lambda: t.poll(0.1, 10))
    assert len(read_all(bs, s.results_topic, 6)) == 6
    assert t.lag() == {(s.requests_topic, 0): 0}


def test_pause_holds_partitions_assigned_while_paused_and_resume_loses_nothing(broker, transport):
    t = transport(partitions=2)
    s, bs = t.settings, broker.bootstrap_servers
    t.pause()  # before the group has assigned anything
    assert wait_for(t.ready, 30, lambda: t.poll(0.1, 100) and pytest.fail("a record arrived while paused"))
    send(bs, s.requests_topic, [(f"a{i}".encode(), request(f"a{i}", "x")) for i in range(10)])
    quiet_until = time.monotonic() + 2.0  # two seconds of polling: plenty for 20 ms fetches to deliver
    while time.monotonic() < quiet_until:
        assert t.poll(0.1, 100) == [], "a partition assigned while paused delivered records"
    t.resume()
    first = poll_until(t, 10)
    assert sorted(r.source.key for r in first) == sorted(f"a{i}".encode() for i in range(10))

    t.pause()  # paused with partitions already fetching
    send(bs, s.requests_topic, [(f"b{i}".encode(), request(f"b{i}", "x")) for i in range(6)])
    quiet_until = time.monotonic() + 1.5
    while time.monotonic() < quiet_until:
        assert t.poll(0.1, 100) == []
    t.resume()
    second = poll_until(t, 6)
    assert sorted(r.source.key for r in second) == sorted(f"b{i}".encode() for i in range(6))
    assert t.inflight() == 16


def test_both_kafka_transports_put_a_keys_result_where_the_java_client_would(broker, transport):
    """librdkafka's own default hashes keys with CRC32: a pool mixing the two transports would
    split a key's results over two partitions, so both follow the Java client (murmur2)."""
    from kafka.partitioner.default import (
        murmur2 as java_murmur2,  # kafka-python's port of the Java client's
    )

    from poolworker.consumers.kafka_python import KafkaPythonTransport

    fast = transport(partitions=6)
    s = fast.settings
    plain = KafkaPythonTransport(s, on_revoked=lambda _p: None)
    plain.start()
    acked: list[bytes] = []
    keys = [f"doc-{i}".encode() for i in range(30)]
    try:
        for i, key in enumerate(keys):
            t = fast if i % 2 else plain
            t.produce(s.results_topic, key, b"{}", [], lambda key=key: acked.append(key), lambda exc: pytest.fail(str(exc)))
        assert wait_for(lambda: len(acked) == len(keys), 30, lambda: plain.flush(0.1))
    finally:
        plain.close()
    where = {m.key(): m.partition() for m in read_all(broker.bootstrap_servers, s.results_topic, len(keys))}
    assert where == {key: (java_murmur2(key) & 0x7FFFFFFF) % 6 for key in keys}
    assert len(set(where.values())) > 1


# -- settings and start-up errors ----------------------------------------------------------------------
def test_kafka_python_names_are_translated_and_librdkafka_names_routed():
    options = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u", "sasl_plain_password": "pw",
               "ssl_cafile": "/ca.pem", "ssl_check_hostname": False, "max_request_size": 5000, "linger_ms": 7,
               "fetch_max_wait_ms": 30, "api_version": (2, 5), "statistics.interval.ms": 1000, "queued.min.messages": 10}
    producer, consumer, admin = (translate_options(options, role) for role in ("producer", "consumer", "admin"))
    common = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u", "sasl.password": "pw",
              "ssl.ca.location": "/ca.pem", "ssl.endpoint.identification.algorithm": "none", "statistics.interval.ms": 1000}
    assert producer == {**common, "message.max.bytes": 5000, "linger.ms": 7}
    assert consumer == {**common, "fetch.wait.max.ms": 30, "queued.min.messages": 10}
    assert admin == common  # api_version has no librdkafka twin: ignored (with a warning)
    with pytest.raises(ValueError, match="ssl_context"):
        translate_options({"ssl_context": object()}, "consumer")
    with pytest.raises(ValueError, match="lingr_ms"):
        translate_options({"lingr_ms": 5}, "producer")


def test_unreachable_broker_and_bad_property_fail_at_start(broker, monkeypatch):
    monkeypatch.setattr(librdkafka, "START_TIMEOUT_S", 1.5)
    down = worker_settings(broker, transport=TRANSPORT, bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(TransportUnavailable, match="no Kafka broker answered at 127.0.0.1"):
        LibrdkafkaTransport(down, on_revoked=lambda _p: None).start()
    typo = worker_settings(broker, transport=TRANSPORT, kafka_options={"linger.msx": 5})
    with pytest.raises(ValueError, match="linger.msx"):
        LibrdkafkaTransport(typo, on_revoked=lambda _p: None).start()
    with pytest.raises(TransportUnavailable, match="does not exist"):
        librdkafka.LibrdkafkaChannel(broker.bootstrap_servers, results_topic=f"missing{uuid.uuid4().hex[:6]}", options={})
