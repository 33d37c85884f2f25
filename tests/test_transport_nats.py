"""The ``nats`` transport against a real NATS JetStream server, with nats-py itself as the peer.

End-to-end tests run a Worker in-process on the machine's NATS (127.0.0.1:4222, started per
../shared/SERVICES.md when it does not answer), each on subjects, streams and a consumer group
of its own, removed afterwards. Reference vectors come from the offline Engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import uuid

import nats
import nats.js.errors
import pytest
from nats.js import api
from streaming import RunningWorker

from poolworker.broker import free_port, wait_for_port
from poolworker.cache import make_cache
from poolworker.client import PoolClient
from poolworker.config import WorkerSettings
from poolworker.consumers import nats_jetstream
from poolworker.consumers.nats_jetstream import (
    KEY_HEADER,
    NatsTransport,
    key_and_headers,
    nats_headers,
    server_urls,
    stream_name,
)
from poolworker.consumers.transport import RecordTooLarge, TransportUnavailable
from poolworker.metrics import Metrics
from poolworker.worker import Worker

URL = "nats://127.0.0.1:4222"
START = ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/nats-server", "--",
         "-a", "127.0.0.1", "-p", "4222", "-js", "-sd", "/var/lib/nats-server", "-l", "/var/log/nats-server.log"]


def run(coro, timeout_s: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def _answers(url: str) -> bool:
    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=1)
    except Exception:  # noqa: BLE001
        return False
    try:
        await nc.jetstream().account_info()
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def nats_url() -> str:
    """The machine's NATS with JetStream, started when it does not answer."""
    if not run(_answers(URL)):
        if shutil.which(START[0]) is None:
            pytest.fail("NATS is not running on 127.0.0.1:4222 and start-stop-daemon is missing (see SERVICES.md)")
        subprocess.run(START, check=False)
        deadline = time.monotonic() + 15
        while not run(_answers(URL)):
            assert time.monotonic() < deadline, "nats-server did not start (see /var/log/nats-server.log)"
            time.sleep(0.2)
    return URL


@pytest.fixture
def names(nats_url):
    """Subjects and a group of this test's own; their streams are deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    topics = {"requests_topic": f"nt{tag}.requests", "results_topic": f"nt{tag}.results",
              "dlq_topic": f"nt{tag}.dlq", "group_id": f"nt{tag}"}
    yield topics

    async def cleanup():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for role in ("requests_topic", "results_topic", "dlq_topic"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(await js.find_stream_name_by_subject(topics[role]))
        await nc.close()
    run(cleanup())


def settings_for(url: str, names: dict[str, str], **overrides) -> WorkerSettings:
    return WorkerSettings(transport="nats", transport_url=url, redis_url=None, metrics_port=0,
                          **names, **{"redelivery_timeout_s": 2.0, **overrides})


def start_worker(settings: WorkerSettings, engines: dict) -> RunningWorker:
    worker = Worker(settings, engines=engines, cache=make_cache(None), metrics=Metrics())
    running = RunningWorker(worker).start()
    deadline = time.monotonic() + 30
    while not worker.loop.ready():
        assert running.thread.is_alive() and time.monotonic() < deadline, "the nats worker did not start"
        time.sleep(0.05)
    return running


async def read_stream(url: str, subject: str, expected: int, timeout_s: float = 30) -> list:
    """Every message the stream capturing ``subject`` holds, waiting for ``expected`` of them."""
    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().subscribe(subject, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL)
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            with contextlib.suppress(nats.errors.TimeoutError):
                out.append(await sub.next_msg(timeout=0.5))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def consumer_state(url: str, names: dict[str, str]) -> api.ConsumerInfo:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        stream = await js.find_stream_name_by_subject(names["requests_topic"])
        return await js.consumer_info(stream, stream_name(names["group_id"]))
    finally:
        await nc.close()


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


async def group_member(url: str, settings: WorkerSettings, request: bytes, headers: dict[str, str] | None = None):
    """A raw nats-py member of the worker's group (the stream and durable consumer the worker
    would create), after publishing ``request``: (connection, pull subscription)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = await nats_jetstream.ensure_stream(js, settings.requests_topic)
    await js.add_consumer(stream, nats_jetstream.consumer_config(settings))
    await js.publish(settings.requests_topic, request, headers=headers)
    return nc, await js.pull_subscribe_bind(durable=stream_name(settings.group_id), stream=stream)


def embed_request(request_id: str, text: str) -> bytes:
    return json.dumps({"request_id": request_id, "task": "embed", "model": "minilm", "input": text}).encode()


# ------------------------------------------------------------------------------------------------
# Pure helpers
# ------------------------------------------------------------------------------------------------
def test_keys_and_headers_round_trip_as_nats_headers():
    for key in (b"doc-42", b"\xff\x00binary", b" padded ", b"", None):
        hdrs = nats_headers(key, [("task", b"embed"), ("Nats-Expected-Stream", b"X"), ("bad name", b"v")])
        assert "Nats-Expected-Stream" not in hdrs and "bad name" not in hdrs  # never copied onto a publish
        got_key, rest = key_and_headers(hdrs)
        assert got_key == key and rest == (("task", b"embed"),)
    assert nats_headers(b"doc-42", [])[KEY_HEADER] == "doc-42"  # a text key is readable by any NATS client


def test_urls_are_checked_at_start_and_names_derived():
    assert server_urls("nats://a:4222, nats://u:p@b:4223") == ["nats://a:4222", "nats://u:p@b:4223"]
    for bad in (None, "", "redis://h:6379", "nats://h:port"):
        with pytest.raises(ValueError, match="transport-url"):
            server_urls(bad)
    with pytest.raises(ValueError) as err:
        server_urls("http://user:s3cret@h:4222")
    assert "s3cret" not in str(err.value)
    assert stream_name("poolworker.requests") == "poolworker_requests"
    assert stream_name("orders.*.new >") == "orders___new__"


def test_unreachable_server_is_a_clear_error_without_the_password(monkeypatch):
    monkeypatch.setattr(nats_jetstream, "CONNECT_TIMEOUT_S", 1.0)
    url = f"nats://user:s3cret@127.0.0.1:{free_port()}"
    transport = NatsTransport(WorkerSettings(transport="nats", transport_url=url), on_revoked=lambda _p: None)
    with pytest.raises(TransportUnavailable, match="cannot connect to NATS") as err:
        transport.start()
    assert "s3cret" not in str(err.value)


# ------------------------------------------------------------------------------------------------
# The transport alone
# ------------------------------------------------------------------------------------------------
def test_transport_creates_streams_polls_produces_and_acks(nats_url, names):
    settings = settings_for(nats_url, names)
    transport = NatsTransport(settings, on_revoked=lambda _p: None)
    transport.start()
    try:
        async def send():
            nc = await nats.connect(nats_url)
            js = nc.jetstream()
            for i in range(3):
                await js.publish(names["requests_topic"], f"v{i}".encode(), headers={KEY_HEADER: f"k{i}", "h": "x"})
            await nc.close()
        run(send())
        records = []
        wait_until(lambda: records.extend(transport.poll(0.2, 10)) or len(records) >= 3, 10, "no records polled")
        assert [(r.source.key, r.value, r.source.deliveries, r.source.headers) for r in records] == [
            (f"k{i}".encode(), f"v{i}".encode(), 1, (("h", b"x"),)) for i in range(3)]
        assert [r.source.offset for r in records] == [1, 2, 3]  # stream sequences
        assert transport.inflight() == 3
        assert transport.lag() == {(names["requests_topic"], 0): 0}

        with pytest.raises(RecordTooLarge):  # checked at once against the server's max_payload
            transport.produce(names["results_topic"], None, b"x" * (transport.nc.max_payload + 1), [], lambda: None,
                              lambda _e: None)
        acked = []
        for record in records:
            transport.produce(names["results_topic"], record.source.key, record.value, [("status", b"ok")],
                              lambda s=record.source: (acked.append(s), transport.finish(s)), pytest.fail)
        transport.flush(10)
        assert len(acked) == 3
        wait_until(lambda: transport.inflight() == 0, 5, "finish did not ack")
        wait_until(lambda: run(consumer_state(nats_url, names)).num_ack_pending == 0, 10, "acks not seen by the server")
        stored = run(read_stream(nats_url, names["results_topic"], 3))
        assert [(m.data, m.headers[KEY_HEADER], m.headers["status"]) for m in stored] == [
            (f"v{i}".encode(), f"k{i}", "ok") for i in range(3)]
        assert transport.lag() == {(names["requests_topic"], 0): 0}
    finally:
        transport.close()


def test_an_existing_group_is_updated_to_the_settings_and_a_foreign_filter_refused(nats_url, names):
    """Restarting the group with another redelivery timeout changes the consumer's ack_wait;
    a group id already reading another subject is an error, not a silent takeover."""
    settings = settings_for(nats_url, names, redelivery_timeout_s=30.0)

    async def check():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            stream = await nats_jetstream.ensure_stream(js, settings.requests_topic)
            await nats_jetstream.ensure_consumer(js, stream, nats_jetstream.consumer_config(settings))
            faster = settings.model_copy(update={"redelivery_timeout_s": 7.0})
            await nats_jetstream.ensure_consumer(js, stream, nats_jetstream.consumer_config(faster))
            config = (await js.consumer_info(stream, stream_name(settings.group_id))).config
            assert (config.ack_wait, config.max_deliver, config.max_ack_pending) == (7.0, -1, -1)
            other = settings.model_copy(update={"requests_topic": settings.requests_topic + ".other"})
            with pytest.raises(TransportUnavailable, match="choose another --group-id"):
                await nats_jetstream.ensure_consumer(js, stream, nats_jetstream.consumer_config(other))
        finally:
            await nc.close()
    run(check())


async def _publish(url: str, subject: str, values: list[bytes]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for value in values:
            await js.publish(subject, value)
    finally:
        await nc.close()


async def _delete_consumer(url: str, names: dict[str, str]) -> None:
    """What an operator does with ``nats consumer rm``: the group's durable consumer is gone."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.delete_consumer(await js.find_stream_name_by_subject(names["requests_topic"]), stream_name(names["group_id"]))
    finally:
        await nc.close()


def _poll_values(transport: NatsTransport, want: int, timeout_s: float = 10) -> list:
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < want and time.monotonic() < deadline:
        records.extend(transport.poll(0.2, 10))
    return records


def test_a_deleted_consumer_is_made_again_above_the_groups_ack_floor(nats_url, names):
    """An operator deletes the group's consumer while a worker runs: before, every pull went to
    nobody and the worker waited for ever. The periodic lag check makes it again from just above
    the ack floor it last read: what was answered is not served again, what came after is; a
    later start with another redelivery timeout updates it and keeps its start."""
    settings = settings_for(nats_url, names)
    transport = NatsTransport(settings, on_revoked=lambda _p: None)
    transport.start()
    try:
        run(_publish(nats_url, names["requests_topic"], [b"a", b"b"]))
        first = _poll_values(transport, 2)
        assert [r.value for r in first] == [b"a", b"b"]
        for record in first:
            transport.finish(record.source)
        wait_until(lambda: run(consumer_state(nats_url, names)).ack_floor.stream_seq == 2, 10, "acks not seen by the server")
        assert transport.lag() == {(names["requests_topic"], 0): 0}  # reads the floor, as the loop does every 2 s
        run(_delete_consumer(nats_url, names))
        run(_publish(nats_url, names["requests_topic"], [b"c", b"d"]))
        assert transport.lag() == {(names["requests_topic"], 0): 2}  # the consumer is back, c and d pending
        later = _poll_values(transport, 2)
        assert [(r.value, r.source.offset) for r in later] == [(b"c", 3), (b"d", 4)]
        assert transport.poll(0.5, 10) == []  # a and b were answered: not served again
        config = run(consumer_state(nats_url, names)).config
        assert (config.deliver_policy, config.opt_start_seq) == (api.DeliverPolicy.BY_START_SEQUENCE, 3)
    finally:
        transport.close()

    slower = NatsTransport(settings.model_copy(update={"redelivery_timeout_s": 9.0}), on_revoked=lambda _p: None)
    slower.start()  # JetStream refuses to change a consumer's start: the update keeps it
    slower.close()
    config = run(consumer_state(nats_url, names)).config
    assert (config.ack_wait, config.deliver_policy, config.opt_start_seq) == (9.0, api.DeliverPolicy.BY_START_SEQUENCE, 3)


def test_two_workers_making_the_lost_consumer_again_keep_the_first_ones_start(nats_url, names):
    """Every worker of the group notices the loss; the second one to make the consumer again,
    with an older ack floor, finds it made (JetStream refuses another start) and pulls from it."""
    settings = settings_for(nats_url, names)
    first, second = (NatsTransport(settings, on_revoked=lambda _p: None) for _ in range(2))
    first.start()
    second.start()
    try:
        run(_publish(nats_url, names["requests_topic"], [b"a", b"b"]))
        taken = _poll_values(first, 2)
        for record in taken:
            first.finish(record.source)
        wait_until(lambda: run(consumer_state(nats_url, names)).ack_floor.stream_seq == 2, 10, "acks not seen by the server")
        first.lag()
        run(_delete_consumer(nats_url, names))
        first.lag()  # made again from sequence 3
        second._ack_floor = 1  # read before the last ack
        second.io.run(second._recreate(RuntimeError("consumer not found")), 30)
        config = run(consumer_state(nats_url, names)).config
        assert (config.deliver_policy, config.opt_start_seq) == (api.DeliverPolicy.BY_START_SEQUENCE, 3)
        run(_publish(nats_url, names["requests_topic"], [b"c"]))
        assert [r.value for r in _poll_values(second, 1)] == [b"c"]
    finally:
        first.close()
        second.close()


def test_a_deleted_requests_stream_is_made_again_with_the_group(nats_url, names):
    """The requests stream itself deleted (and the consumer with it): both are made again, the
    consumer from the new stream's first message, so requests published from then on are served."""
    settings = settings_for(nats_url, names)
    transport = NatsTransport(settings, on_revoked=lambda _p: None)
    transport.start()
    try:
        run(_publish(nats_url, names["requests_topic"], [b"a"]))
        first = _poll_values(transport, 1)
        transport.finish(first[0].source)
        wait_until(lambda: run(consumer_state(nats_url, names)).ack_floor.stream_seq == 1, 10, "ack not seen by the server")
        transport.lag()

        async def delete_stream():
            nc = await nats.connect(nats_url)
            js = nc.jetstream()
            await js.delete_stream(await js.find_stream_name_by_subject(names["requests_topic"]))
            await nc.close()
        run(delete_stream())
        transport.lag()  # makes stream and consumer again
        run(_publish(nats_url, names["requests_topic"], [b"b"]))
        later = _poll_values(transport, 1)
        assert [(r.value, r.source.offset) for r in later] == [(b"b", 1)]
        assert run(consumer_state(nats_url, names)).config.deliver_policy == api.DeliverPolicy.ALL
    finally:
        transport.close()


def test_messages_held_longer_than_ack_wait_are_kept_alive_not_redelivered(nats_url, names, monkeypatch):
    """Handed over or still buffered (delivered while paused), a message gets +WPI: after three
    ack_waits nothing was redelivered, and every message arrives once, delivery count 1. Buffered
    messages do not count as in flight (else a paused loop would never take them)."""
    monkeypatch.setattr(nats_jetstream, "PULL_EXPIRES_S", 30.0)  # the first pull stays open while paused
    transport = NatsTransport(settings_for(nats_url, names, redelivery_timeout_s=1.0), on_revoked=lambda _p: None)
    transport.start()

    async def send(values):
        nc = await nats.connect(nats_url)
        for value in values:
            await nc.jetstream().publish(names["requests_topic"], value)
        await nc.close()

    try:
        run(send([b"v0"]))
        first = []
        wait_until(lambda: first.extend(transport.poll(0.2, 20)) or first, 10, "nothing polled")
        transport.pause()
        assert transport.poll(0.1, 20) == []
        run(send([f"v{i}".encode() for i in range(1, 20)]))  # delivered to the open pull: buffered
        wait_until(lambda: len(transport.puller.inflight) == 20, 10, "the open pull did not deliver")
        assert transport.inflight() == 1
        time.sleep(3.0)  # three ack_waits
        assert run(consumer_state(nats_url, names)).num_redelivered == 0
        transport.resume()
        rest = []
        wait_until(lambda: rest.extend(transport.poll(0.2, 50)) or len(first) + len(rest) >= 20, 10, "messages missing")
        records = first + rest
        assert sorted(r.source.offset for r in records) == list(range(1, 21))
        assert {r.source.deliveries for r in records} == {1}
        for record in records:
            transport.finish(record.source)
        wait_until(lambda: run(consumer_state(nats_url, names)).num_ack_pending == 0, 10, "not acked")
    finally:
        transport.close()


# ------------------------------------------------------------------------------------------------
# A real worker
# ------------------------------------------------------------------------------------------------
def test_worker_answers_pool_client_over_nats_with_engine_vectors(nats_url, names, minilm_engine):
    running = start_worker(settings_for(nats_url, names), {"minilm": minilm_engine})
    texts = ["NATS subjects carry requests.", "Bananas are yellow.", "A third one."]
    try:
        with PoolClient(nats_url, transport="nats", requests_topic=names["requests_topic"],
                        results_topic=names["results_topic"]) as client:
            result = client.embed(texts, model="minilm", timeout_s=60)
            futures = [client.submit({"task": "embed", "model": "minilm", "input": t}, key=f"doc-{i}") for i, t in enumerate(texts)]
            client.flush(10)
            singles = [f.result(60) for f in futures]
    finally:
        running.stop()
    assert result["error"] is None
    for got, ref in zip(result["data"], minilm_engine.embed(texts)):
        assert max(abs(a - b) for a, b in zip(got["embedding"], ref.outputs.embedding)) <= 1e-6
    for single, ref in zip(singles, minilm_engine.embed(texts)):
        assert max(abs(a - b) for a, b in zip(single["data"][0]["embedding"], ref.outputs.embedding)) <= 1e-6
    stored = run(read_stream(nats_url, names["results_topic"], 4))  # results persist in their stream
    keyed = {m.headers.get(KEY_HEADER): m.headers for m in stored}
    assert {f"doc-{i}" for i in range(3)} <= set(keyed)
    assert keyed["doc-0"]["status"] == "ok" and keyed["doc-0"]["task"] == "embed"
    state = run(consumer_state(nats_url, names))
    assert state.num_ack_pending == 0 and state.num_pending == 0


def test_reply_to_a_subject_no_stream_captures_reaches_live_subscribers(nats_url, names, minilm_engine):
    """reply_to names a subject without a stream: the result goes out as core NATS (request-reply
    style) to whoever listens, and the request is acked."""
    reply = names["results_topic"].replace(".results", ".replies")
    running = start_worker(settings_for(nats_url, names, allowed_reply_topics=r"nt[0-9a-f]+\.replies"),
                           {"minilm": minilm_engine})

    async def ask():
        nc = await nats.connect(nats_url)
        sub = await nc.subscribe(reply)
        await nc.flush()
        request = json.loads(embed_request("direct", "answer me here"))
        await nc.jetstream().publish(names["requests_topic"], json.dumps({**request, "reply_to": reply}).encode())
        answer = await sub.next_msg(timeout=30)
        await nc.close()
        return answer

    try:
        answer = run(ask(), 40)
        wait_until(lambda: run(consumer_state(nats_url, names)).num_ack_pending == 0, 10, "not acked")
    finally:
        running.stop()
    assert json.loads(answer.data)["request_id"] == "direct" and answer.headers["status"] == "ok"


def test_request_is_acked_only_after_its_result_is_stored(nats_url, names, minilm_engine):
    """With the results stream gone, the answer cannot be stored: the request stays ack-pending
    (and is not redelivered: the worker keeps it in progress); once the stream is back, the
    publisher's retry stores the result and only then is the request acked."""
    running = start_worker(settings_for(nats_url, names, redelivery_timeout_s=1.0), {"minilm": minilm_engine})

    async def drop_results_stream():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.delete_stream(await js.find_stream_name_by_subject(names["results_topic"]))
        await js.publish(names["requests_topic"], embed_request("held", "stored first, acked second"))
        await nc.close()

    async def restore_results_stream():
        nc = await nats.connect(nats_url)
        await nc.jetstream().add_stream(name=f"{names['group_id']}-results", subjects=[names["results_topic"]])
        await nc.close()

    try:
        run(drop_results_stream())
        wait_until(lambda: run(consumer_state(nats_url, names)).num_ack_pending == 1, 20, "the request was not taken")
        held_since = time.monotonic()
        while time.monotonic() - held_since < 3.0:  # three ack_waits: still held, never acked, never redelivered
            state = run(consumer_state(nats_url, names))
            assert (state.num_ack_pending, state.num_redelivered) == (1, 0)
            time.sleep(0.2)
        run(restore_results_stream())
        stored = run(read_stream(nats_url, names["results_topic"], 1))
        assert [json.loads(m.data)["request_id"] for m in stored] == ["held"]
        wait_until(lambda: run(consumer_state(nats_url, names)).num_ack_pending == 0, 20, "not acked after the result")
    finally:
        running.stop()


def test_message_a_dead_consumer_held_is_redelivered_after_ack_wait(nats_url, names, minilm_engine):
    """A raw nats-py member of the group fetches a request and never acks it (a crashed worker);
    after ack_wait JetStream hands it to the worker, which answers it."""
    settings = settings_for(nats_url, names, redelivery_timeout_s=1.0)

    async def take_and_drop():
        nc, sub = await group_member(nats_url, settings, embed_request("orphan", "taken by a worker that died"))
        taken = await sub.fetch(1, timeout=5)
        await nc.close()  # never acked
        return taken[0].metadata.num_delivered

    assert run(take_and_drop()) == 1
    running = start_worker(settings, {"minilm": minilm_engine})
    try:
        stored = run(read_stream(nats_url, names["results_topic"], 1))
        assert [json.loads(m.data)["request_id"] for m in stored] == ["orphan"]
        assert json.loads(stored[0].data)["error"] is None
        wait_until(lambda: run(consumer_state(nats_url, names)).num_ack_pending == 0, 20, "the redelivery was not acked")
        assert run(consumer_state(nats_url, names)).num_redelivered == 0  # acked, so no longer counted
    finally:
        running.stop()


def test_message_delivered_too_often_goes_to_the_dlq_with_its_headers(nats_url, names, minilm_engine):
    """Delivered max_deliveries times without an ack (here: two nak'ing consumers), the next
    delivery goes to the DLQ subject with the original bytes, key and headers plus dlq.*."""
    settings = settings_for(nats_url, names, max_deliveries=2)

    async def deliver_twice():
        nc, sub = await group_member(nats_url, settings, embed_request("poison", "kills workers"),
                                     {KEY_HEADER: "poison-key", "origin": "test"})
        counts = []
        for _ in range(2):
            msg = (await sub.fetch(1, timeout=5))[0]
            counts.append(msg.metadata.num_delivered)
            await msg.nak()
        await nc.close()
        return counts

    assert run(deliver_twice()) == [1, 2]
    running = start_worker(settings, {"minilm": minilm_engine})
    try:
        letters = run(read_stream(nats_url, names["dlq_topic"], 1))
        wait_until(lambda: run(consumer_state(nats_url, names)).num_ack_pending == 0, 20, "the dead letter's request was not acked")
    finally:
        running.stop()
    assert len(letters) == 1
    letter = letters[0]
    assert letter.data == embed_request("poison", "kills workers")
    assert letter.headers[KEY_HEADER] == "poison-key" and letter.headers["origin"] == "test"
    assert letter.headers["dlq.reason"].startswith("too_many_deliveries: handed out 3 times")
    assert letter.headers["dlq.source.topic"] == names["requests_topic"]
    assert letter.headers["dlq.source.offset"] == "1"
    assert not run(read_stream(nats_url, names["results_topic"], 1, timeout_s=1))  # dead-lettered, not answered


# ------------------------------------------------------------------------------------------------
# A private server that restarts
# ------------------------------------------------------------------------------------------------
def test_transport_survives_a_server_restart(tmp_path):
    """Streams on disk survive; the transport reconnects; a fetch or publish during the outage
    fails softly (an empty poll, ``on_failed``) and works again once the server is back."""
    port = free_port()
    cmd = ["/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "store")]

    def start():
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", port, 10)
        return proc

    url = f"nats://127.0.0.1:{port}"
    server = start()
    names = {"requests_topic": "r.requests", "results_topic": "r.results", "dlq_topic": "r.dlq", "group_id": "g"}
    transport = NatsTransport(settings_for(url, names), on_revoked=lambda _p: None)
    try:
        transport.start()
        server.terminate()
        server.wait(10)
        assert transport.poll(0.2, 10) == []  # down: an empty poll, not an exception
        failed = []
        transport.produce("r.results", b"k", b"v", [], lambda: failed.append(None), failed.append)
        transport.flush(15)
        assert len(failed) == 1 and failed[0] is not None  # the publisher would retry it
        server = start()

        async def send():
            nc = await nats.connect(url)
            await nc.jetstream().publish("r.requests", b"after", headers={KEY_HEADER: "k"})
            await nc.close()
        run(send())
        got = []
        wait_until(lambda: got.extend(transport.poll(0.2, 10)) or got, 30, "nothing polled after the restart")
        assert got[0].value == b"after"
        acked = []
        transport.produce("r.results", b"k", b"v", [], lambda: acked.append(1), lambda _e: None)
        transport.flush(10)
        assert acked == [1]
    finally:
        transport.close()
        server.terminate()
        server.wait(10)
