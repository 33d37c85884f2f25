"""The ``redis-streams`` transport against a real Redis, checked with redis-py as the peer.

End-to-end tests run a real in-process worker (MiniLM) on the machine's Redis with streams of
their own; the ones that stop the server or need a password use a private redis-server on a free
port. Each asserts on what Redis itself holds (XPENDING, XRANGE, XLEN), not on the transport's
own view.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from services import RedisServer
from streaming import RunningWorker

from poolworker.broker import free_port
from poolworker.cache import make_cache
from poolworker.client import PoolClient
from poolworker.config import WorkerSettings
from poolworker.consumers import redis_streams
from poolworker.consumers.redis_streams import (
    RedisStreamsChannel,
    RedisStreamsTransport,
    connect,
)
from poolworker.consumers.transport import RecordTooLarge, TransportUnavailable
from poolworker.metrics import Metrics
from poolworker.worker import Worker

ATOL = 1e-6
PASSWORD = "s3cret-Redis-pw"


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def names(redis_url) -> Iterator[dict[str, str]]:
    """Stream and group names of one test, deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    out = {"requests_topic": f"rs{tag}.requests", "results_topic": f"rs{tag}.results", "dlq_topic": f"rs{tag}.dlq",
           "group_id": f"rs{tag}"}
    yield out
    client = redis.Redis.from_url(redis_url)
    client.delete(out["requests_topic"], out["results_topic"], out["dlq_topic"])
    client.close()


@pytest.fixture
def raw(redis_url) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def settings_for(url: str, names: dict[str, str], **overrides) -> WorkerSettings:
    return WorkerSettings(transport="redis-streams", transport_url=url, redis_url=None, metrics_port=None,
                          **names, **overrides)


def start_worker(settings: WorkerSettings, engine, transport=None) -> RunningWorker:
    worker = Worker(settings, engines={"minilm": engine}, cache=make_cache(None), metrics=Metrics())
    if transport is not None:
        worker.loop.transport = transport
    return RunningWorker(worker).start()


def request(request_id: str, text: str = "a short text") -> bytes:
    return json.dumps({"request_id": request_id, "task": "embed", "model": "minilm", "input": text}).encode()


def entries(client: redis.Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return client.xrange(stream)


def wait_for(condition: Callable[[], object], timeout_s: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def results_by_id(client: redis.Redis, stream: str) -> dict[str, tuple[dict[bytes, bytes], dict]]:
    return {json.loads(f[b"value"])["request_id"]: (f, json.loads(f[b"value"])) for _, f in entries(client, stream)}


def pending(client: redis.Redis, names: dict[str, str]) -> int:
    return client.xpending(names["requests_topic"], names["group_id"])["pending"]


# ------------------------------------------------------------------------------------------------
# end to end: a worker and PoolClient over Redis Streams
# ------------------------------------------------------------------------------------------------
def test_embed_round_trip_vectors_equal_engine_and_entries_before_start_are_served(redis_url, names, raw, minilm_engine):
    settings = settings_for(redis_url, names)
    raw.xadd(names["requests_topic"], {"value": request("early", "written before any worker"), "key": b"doc-early"})
    running = start_worker(settings, minilm_engine)
    texts = ["Redis streams carry requests.", "Bananas are yellow.", "A third, longer sentence about queues and workers."]
    try:
        with PoolClient(redis_url, transport="redis-streams", requests_topic=names["requests_topic"],
                        results_topic=names["results_topic"]) as client:
            result = client.embed(texts, model="minilm", timeout_s=60)
            assert result["error"] is None
            for got, ref in zip(result["data"], minilm_engine.embed(texts), strict=True):
                assert max(abs(a - b) for a, b in zip(got["embedding"], ref.outputs.embedding, strict=True)) <= ATOL
            futures = [client.submit({"task": "embed", "model": "minilm", "input": f"doc {i}"}, key=f"k{i}") for i in range(20)]
            assert all(f.result(60)["error"] is None for f in futures)
        found = wait_for(lambda: results_by_id(raw, names["results_topic"]).get("early"), what="the early request's result")
        fields, message = found
        assert fields[b"key"] == b"doc-early" and fields[b"status"] == b"ok" and fields[b"request_id"] == b"early"
        assert fields[b"task"] == b"embed" and fields[b"model"] == b"minilm"
        assert len(message["data"][0]["embedding"]) == 384
        wait_for(lambda: pending(raw, names) == 0, what="every request XACKed")
        assert raw.xinfo_groups(names["requests_topic"])[0]["lag"] == 0
    finally:
        running.stop()
    # a worker that stopped with nothing pending leaves the group (its consumer name is never used again)
    assert raw.xinfo_consumers(names["requests_topic"], names["group_id"]) == []


class HeldPublisher(RedisStreamsTransport):
    """The real transport with its publish path held shut until ``release`` is set, and a check,
    at the moment each result entry exists, of whether its request was still pending."""

    def __init__(self, settings: WorkerSettings, client: redis.Redis) -> None:
        super().__init__(settings, on_revoked=lambda _parts: None)
        self.raw = client
        self.reached = threading.Event()
        self.release = threading.Event()
        self.seen_when_written: list[tuple[bool, int]] = []  # (result entry there, requests pending)

    def produce(self, topic, key, value, headers, on_acked, on_failed):
        self.reached.set()
        self.release.wait(60)
        request_id = dict(headers)["request_id"].decode()

        def acked() -> None:  # the XADD returned: the result entry is in the stream
            self.seen_when_written.append((request_id in results_by_id(self.raw, topic),
                                           pending(self.raw, {"requests_topic": self.stream, "group_id": self.group})))
            on_acked()

        super().produce(topic, key, value, headers, acked, on_failed)


def test_xack_only_after_the_result_entry_was_written(redis_url, names, raw, minilm_engine):
    settings = settings_for(redis_url, names)
    transport = HeldPublisher(settings, raw)
    running = start_worker(settings, minilm_engine, transport)
    try:
        raw.xadd(names["requests_topic"], {"value": request("held")})
        assert transport.reached.wait(60), "the worker never tried to publish"
        # the result is computed but cannot be written: the request stays pending, through commits
        assert pending(raw, names) == 1 and raw.xlen(names["results_topic"]) == 0
        transport.release.set()
        wait_for(lambda: pending(raw, names) == 0, what="the XACK after the result was written")
        assert transport.seen_when_written == [(True, 1)]  # the result written, its request still pending
        assert list(results_by_id(raw, names["results_topic"])) == ["held"]
    finally:
        transport.release.set()
        running.stop()


def test_dead_consumers_entry_is_claimed_and_one_delivered_too_often_is_dead_lettered(redis_url, names, raw, minilm_engine):
    stream, group = names["requests_topic"], names["group_id"]
    raw.xgroup_create(stream, group, id="0", mkstream=True)
    orphan = raw.xadd(stream, {"value": request("orphan"), "key": b"k-orphan"})
    poison = raw.xadd(stream, {"value": request("poison"), "key": b"k-poison", "trace": b"t-1"})
    raw.xreadgroup(group, "dead-1", {stream: ">"}, count=2)  # a worker that read both, then died: delivery 1
    raw.xclaim(stream, group, "dead-2", 0, [poison])  # the poison one was taken over once more and killed that too: 2
    settings = settings_for(redis_url, names, redelivery_timeout_s=0.5, max_deliveries=2)
    running = start_worker(settings, minilm_engine)
    try:
        found = wait_for(lambda: results_by_id(raw, names["results_topic"]).get("orphan"), what="the orphan's result")
        assert found[1]["error"] is None and found[0][b"key"] == b"k-orphan"
        letter = wait_for(lambda: entries(raw, names["dlq_topic"]), what="the poison entry's dead letter")
        assert len(letter) == 1
        fields = letter[0][1]
        assert fields[b"value"] == request("poison") and fields[b"key"] == b"k-poison" and fields[b"trace"] == b"t-1"
        assert fields[b"dlq.reason"].startswith(b"too_many_deliveries: handed out 3 times")
        assert fields[b"dlq.source.topic"] == stream.encode()
        wait_for(lambda: pending(raw, names) == 0, what="both entries XACKed")
        assert "poison" not in results_by_id(raw, names["results_topic"])
        assert orphan != poison
    finally:
        running.stop()


def test_headers_pass_through_and_unanswerable_entries_are_dead_lettered(redis_url, names, raw, minilm_engine):
    stream = names["requests_topic"]
    running = start_worker(settings_for(redis_url, names), minilm_engine)
    try:
        # duplicate header names and their order survive (redis-py's dict API would merge them)
        raw.execute_command("XADD", stream, "*", "value", b"{not json", "key", b"k-bad", "h", b"1", "h", b"2", "bin", b"\xff\x00")
        raw.xadd(stream, {"key": b"k-tombstone", "origin": b"indexer"})  # no value field: the Redis tombstone
        raw.xadd(stream, {"value": request("fine"), "key": b"k-fine"})
        wait_for(lambda: "fine" in results_by_id(raw, names["results_topic"]), what="the fine request's result")
        flat = redis.Redis.from_url(redis_url)
        flat.set_response_callback("XRANGE", lambda reply, **_: reply)  # the fields as stored, in order
        letters = wait_for(lambda: len(e := flat.xrange(names["dlq_topic"])) == 2 and e, what="two dead letters")
        flat.close()
        bad = dict(zip(letters[0][1][::2], letters[0][1][1::2], strict=True))
        assert letters[0][1][:10] == [b"value", b"{not json", b"key", b"k-bad", b"h", b"1", b"h", b"2", b"bin", b"\xff\x00"]
        assert bad[b"dlq.reason"].startswith(b"not JSON")
        tomb = dict(zip(letters[1][1][::2], letters[1][1][1::2], strict=True))
        assert b"value" not in tomb and tomb[b"key"] == b"k-tombstone" and tomb[b"origin"] == b"indexer"
        assert tomb[b"dlq.reason"].startswith(b"tombstone")
        wait_for(lambda: pending(raw, names) == 0, what="all three XACKed")
    finally:
        running.stop()


# ------------------------------------------------------------------------------------------------
# the transport on its own
# ------------------------------------------------------------------------------------------------
def started(url: str, names: dict[str, str], **overrides) -> RedisStreamsTransport:
    transport = RedisStreamsTransport(settings_for(url, names, **overrides), on_revoked=lambda _p: None)
    transport.start()
    return transport


def test_results_stream_is_trimmed_to_about_max_len_and_the_dlq_never(redis_url, names, raw):
    transport = started(redis_url, names, results_max_len=10)
    acked: list[int] = []
    try:
        for i in range(300):
            for topic in (names["results_topic"], names["dlq_topic"]):
                transport.produce(topic, None, b"x%d" % i, [], lambda: acked.append(1), pytest.fail)
        transport.flush(30)
        assert len(acked) == 600
        # MAXLEN ~ removes whole stream nodes (100 entries each by default): about 10, never all 300
        assert 10 <= raw.xlen(names["results_topic"]) <= 110
        assert [f[b"value"] for _, f in entries(raw, names["dlq_topic"])] == [b"x%d" % i for i in range(300)]  # in order
        assert entries(raw, names["results_topic"])[-1][1][b"value"] == b"x299"
        with pytest.raises(RecordTooLarge):
            transport.produce(names["results_topic"], None, b"x" * (16 * 1024 * 1024 + 1), [], pytest.fail, pytest.fail)
    finally:
        transport.close()


def test_lag_pause_and_finish_then_commit(redis_url, names, raw):
    transport = started(redis_url, names)
    try:
        for i in range(5):
            raw.xadd(names["requests_topic"], {"value": b"v%d" % i})
        assert transport.ready()
        assert transport.lag() == {(names["requests_topic"], 0): 5}
        transport.pause()
        assert transport.poll(0.05, 10) == []
        transport.resume()
        records = transport.poll(0.5, 2)
        assert [r.value for r in records] == [b"v0", b"v1"]
        assert [r.source.handle for r in records] == [e[0].decode() for e in entries(raw, names["requests_topic"])[:2]]
        assert records[0].source.timestamp_ms == int(records[0].source.handle.split("-")[0])
        assert transport.lag() == {(names["requests_topic"], 0): 3} and transport.inflight() == 2
        transport.finish(records[0].source)
        assert pending(raw, names) == 2  # finished, not XACKed before commit
        transport.commit()
        assert pending(raw, names) == 1 and transport.inflight() == 1
    finally:
        transport.close()


def test_a_deleted_stream_and_group_are_made_again(redis_url, names, raw):
    """What a Redis without persistence looks like after a restart: no stream, no group."""
    transport = started(redis_url, names, redelivery_timeout_s=0.3)
    try:
        raw.xadd(names["requests_topic"], {"value": b"before"})
        assert [r.value for r in transport.poll(0.5, 10)] == [b"before"]  # in flight, so renewed on each poll
        raw.delete(names["requests_topic"])
        time.sleep(0.2)  # past the renewal interval: the next poll's first command meets the missing group
        assert transport.poll(0.1, 10) == []  # NOGROUP: the group is created again
        raw.xadd(names["requests_topic"], {"value": b"after"})
        assert [r.value for r in wait_for(lambda: transport.poll(0.1, 10), what="the new entry")] == [b"after"]
    finally:
        transport.close()


def test_own_pending_entry_from_a_lost_reply_is_served_first(redis_url, names, raw):
    stream, group = names["requests_topic"], names["group_id"]
    transport = RedisStreamsTransport(settings_for(redis_url, names), on_revoked=lambda _p: None)
    transport.start()
    try:
        raw.xadd(stream, {"value": b"lost"})
        raw.xreadgroup(group, transport.consumer, {stream: ">"})  # handed to this consumer; the reply never arrived
        records = wait_for(lambda: transport.poll(0.1, 10), what="the lost entry")
        assert [(r.value, r.source.deliveries) for r in records] == [(b"lost", 2)]
        raw.xadd(stream, {"value": b"next"})
        assert [r.value for r in wait_for(lambda: transport.poll(0.1, 10), what="the next entry")] == [b"next"]
    finally:
        transport.close()


def test_a_live_worker_keeps_its_slow_entries_and_a_silent_one_loses_them(redis_url, names, raw):
    stream = names["requests_topic"]
    slow = started(redis_url, names, redelivery_timeout_s=1.5)
    other = started(redis_url, names, redelivery_timeout_s=1.5)
    try:
        raw.xadd(stream, {"value": b"slow work"})
        held = wait_for(lambda: slow.poll(0.1, 10), what="the entry")
        deadline = time.monotonic() + 3.5  # over two redelivery timeouts while `slow` keeps polling (renewing)
        while time.monotonic() < deadline:
            assert slow.poll(0.05, 10) == []
            assert other.poll(0.05, 10) == [], "a live worker's entry was taken over"
        taken = wait_for(lambda: other.poll(0.1, 10), timeout_s=10, what="the claim once `slow` stopped renewing")
        assert [r.source.handle for r in taken] == [held[0].source.handle] and taken[0].source.deliveries == 2
    finally:
        slow.close()
        other.close()


def test_a_dead_workers_consumer_with_nothing_pending_leaves_the_group(redis_url, names, raw, monkeypatch):
    """kill -9 leaves a consumer name behind; the claim pass removes the idle ones that hold
    nothing, and keeps any consumer with a pending entry (it would be dropped with it) or that
    read recently."""
    monkeypatch.setattr(redis_streams, "PRUNE_IDLE_MIN_S", 1.5)  # margin for "recent" on a loaded machine
    stream, group = names["requests_topic"], names["group_id"]
    transport = started(redis_url, names, redelivery_timeout_s=30)  # nothing is claimed during the test
    try:
        for i in range(3):
            raw.xadd(stream, {"value": b"v%d" % i})
        done = raw.xreadgroup(group, "dead-done", {stream: ">"}, count=1)[0][1][0][0]
        raw.xack(stream, group, done)
        raw.xreadgroup(group, "dead-holding", {stream: ">"}, count=1)
        time.sleep(1.6)
        recent = raw.xreadgroup(group, "recent", {stream: ">"}, count=1)[0][1][0][0]
        raw.xack(stream, group, recent)
        assert transport.poll(0.1, 10) == []  # a claim pass (nothing idle for 30 s), then the prune
        consumers = {c["name"].decode(): c["pending"] for c in raw.xinfo_consumers(stream, group)}
        consumers.pop(transport.consumer, None)  # whether an empty read made it depends on the Redis version
        assert consumers == {"dead-holding": 1, "recent": 0}
    finally:
        transport.close()


def test_channel_reads_results_written_after_it_was_built_and_none_before(redis_url, names, raw):
    results = names["results_topic"]
    fresh = RedisStreamsChannel(redis_url, results_topic=results, options={})  # the stream does not exist yet
    raw.xadd(results, {"value": b"old"})
    channel = RedisStreamsChannel(redis_url, results_topic=results, options={})
    try:
        raw.xadd(results, {"value": b"new-1", "key": b"k"})  # before the first receive: must not be missed
        channel.send(names["requests_topic"], b"key", b"body", [("h", b"v")])
        got: list[bytes] = []
        wait_for(lambda: got.extend(channel.receive(0.1)) or got, what="the new result")
        assert [reply.value for reply in got] == [b"new-1"] and dict(got[0].headers) == {}
        sent = entries(raw, names["requests_topic"])[0][1]
        assert sent == {b"value": b"body", b"key": b"key", b"h": b"v"}
        assert [reply.value for reply in fresh.receive(0.5)] == [b"old", b"new-1"]  # built before the stream existed: from its first entry
    finally:
        channel.close()
        fresh.close()


# ------------------------------------------------------------------------------------------------
# a private server: URLs, passwords, restarts
# ------------------------------------------------------------------------------------------------
def test_bad_urls_and_unreachable_servers_fail_at_start_without_the_password(tmp_path):
    with pytest.raises(TransportUnavailable, match="--transport-url redis://HOST:PORT/DB"):
        connect(None)
    with pytest.raises(TransportUnavailable, match="expected a redis://"):
        connect(f"http://:{PASSWORD}@127.0.0.1:6379/0")
    with pytest.raises(TransportUnavailable, match="cannot reach Redis") as unreachable:
        connect(f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0")
    server = RedisServer(tmp_path, "--requirepass", PASSWORD)
    server.start()
    try:
        with pytest.raises(TransportUnavailable, match="refused the credentials") as refused:
            connect(server.url(":wrong-password@"))
        with pytest.raises(TransportUnavailable, match="refused the credentials"):
            RedisStreamsTransport(settings_for(server.url(), {}), on_revoked=lambda _p: None).start()
    finally:
        server.stop()
    for exc in (unreachable, refused):
        assert PASSWORD not in str(exc.value) and "wrong-password" not in str(exc.value)


def test_redis_restart_mid_run_everything_answered_worker_never_dies(tmp_path, names, minilm_engine, caplog):
    caplog.set_level(logging.INFO)
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always", "--requirepass", PASSWORD)
    server.start()
    url = server.url(f":{PASSWORD}@")
    raw = redis.Redis.from_url(url)
    running = start_worker(settings_for(url, names, redelivery_timeout_s=2), minilm_engine)
    try:
        for i in range(40):
            raw.xadd(names["requests_topic"], {"value": request(f"before{i}", f"text number {i}")})
        wait_for(lambda: raw.xlen(names["results_topic"]) >= 5, 60, "some results")
        raw.close()
        server.stop()  # mid-run: entries in flight, results and XACKs failing
        time.sleep(1.5)
        assert running.thread.is_alive()
        server.start()
        raw = redis.Redis.from_url(url)
        for i in range(20):
            raw.xadd(names["requests_topic"], {"value": request(f"after{i}", f"another text {i}")})
        expected = {f"before{i}" for i in range(40)} | {f"after{i}" for i in range(20)}
        wait_for(lambda: set(results_by_id(raw, names["results_topic"])) >= expected, 90, "every request answered")
        wait_for(lambda: pending(raw, names) == 0, 30, "every request XACKed")
        assert running.thread.is_alive()
    finally:
        running.stop()
        raw.close()
        server.stop()
    assert any("failed" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records), "no outage was seen"
    assert PASSWORD not in caplog.text


def test_the_reliability_peer_keeps_streams_group_and_pending_entries_across_restart():
    """tests/reliability/peer_redis.py, which the crash/outage tests trust to keep data."""
    from reliability.peer_redis import start_peer

    peer = start_peer(None)
    try:
        topics = {"requests_topic": "p.requests", "group_id": "g"}
        peer.produce("p.requests", [(b"k1", b"v1"), (b"k2", None)], headers=[("h", b"x")])
        client = redis.Redis.from_url(peer.url)
        client.xgroup_create("p.requests", "g", id="0")
        client.xreadgroup("g", "c", {"p.requests": ">"}, count=1)
        assert peer.unacknowledged(topics) == 2  # one pending, one unread
        peer.restart(down_s=0.2)
        assert client.xpending("p.requests", "g")["pending"] == 1 and peer.unacknowledged(topics) == 2
        reader = peer.reader("p.requests")
        assert reader.until(lambda r: len(r) == 2, 10)
        assert [(r.key, r.value, r.headers) for r in reader.records] == [(b"k1", b"v1", [("h", b"x")]), (b"k2", None, [("h", b"x")])]
        reader.close()
        client.close()
    finally:
        peer.stop()
