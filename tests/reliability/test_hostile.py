"""Hostile and malformed messages against a running worker process, on every transport: each
becomes an error result or a dead letter, the worker stays up, every request gets acknowledged
(Kafka: the committed offsets reach the end of the topic), and a normal request sent right after
is answered. (The parser alone is fuzzed by the two 3,000-example
hypothesis tests in tests/test_protocol.py; test_fuzz_worker_path.py fuzzes the worker path around it.)"""

from __future__ import annotations

import json
import time

MAX_REQUEST_BYTES = 4 * 1024 * 1024
MB = 1024 * 1024


def _req(request_id: str, **fields) -> bytes:
    return json.dumps({"request_id": request_id, "model": "minilm", **fields}).encode()


# request_id -> (raw value, expected error type, expected param prefix)
ERRORS: dict[str, tuple[bytes, str, str | None]] = {
    "surrogate": (b'{"request_id":"surrogate","task":"embed","model":"minilm","input":"a \\ud800 b"}', "invalid_request", "input"),
    "surrogate-key": (b'{"request_id":"surrogate-key","task":"embed","model":"minilm","input":"x","metadata":{"\\udfff":1}}',
                      "invalid_request", "metadata"),
    "items-100k": (_req("items-100k", task="embed", input=["w"] * 100_000), "invalid_request", "input"),
    "long-string": (_req("long-string", task="embed", input="word " * 600_000), "input_too_long", "input"),  # 3 MB
    "wrong-type": (_req("wrong-type", task="embed", input=42), "invalid_request", "input"),
    "dims-string": (_req("dims-string", task="embed", input="x", dimensions="64"), "invalid_request", "dimensions"),
    "dict-input": (_req("dict-input", task="embed", input={"text": "x"}), "invalid_request", "input"),
    "dict-docs": (_req("dict-docs", task="rerank", query="q", documents=[{"text": "a"}]), "invalid_request", "documents"),
    "dict-text": (_req("dict-text", task="score", text_1={"t": 1}, text_2="b"), "invalid_request", "text_1"),
    "unknown-model": (_req("unknown-model", task="embed", input="x") .replace(b'"minilm"', b'"gpt-17"'), "unknown_model", "model"),
    "unknown-task": (_req("unknown-task", task="summarize", input="x"), "unsupported_task", "task"),
    "cannot-classify": (_req("cannot-classify", task="classify", input="x"), "unsupported_task", "task"),
    "ids-outside-vocab": (_req("ids-outside-vocab", task="embed", input=[101, 10_000_000, 102]), "invalid_request", "input"),
    "ids-negative": (_req("ids-negative", task="embed", input=[101, -5, 102]), "invalid_request", "input"),
    "dims-negative": (_req("dims-negative", task="embed", input="x", dimensions=-3), "invalid_request", "dimensions"),
    "dims-huge": (_req("dims-huge", task="embed", input="x", dimensions=10**12), "invalid_request", "dimensions"),
    "empty-docs": (_req("empty-docs", task="rerank", query="q", documents=[]), "invalid_request", "documents"),
    "empty-input": (_req("empty-input", task="embed", input=[]), "invalid_request", "input"),
    "nan": (b'{"request_id":"nan","task":"embed","model":"minilm","input":"x","dimensions":NaN}', "invalid_request", "dimensions"),
    "inf": (b'{"request_id":"inf","task":"rerank","model":"minilm","query":"q","documents":["a"],"top_n":Infinity}',
            "invalid_request", "top_n"),
    "overflow": (b'{"request_id":"overflow","task":"embed","model":"minilm","input":"x","dimensions":1e999}', "invalid_request", "dimensions"),
    "reply-internal": (_req("reply-internal", task="embed", input="x", reply_to="__consumer_offsets"), "invalid_request", "reply_to"),
    "reply-other": (_req("reply-other", task="embed", input="x", reply_to="someone.elses.topic"), "invalid_request", "reply_to"),
    "reply-bad-name": (_req("reply-bad-name", task="embed", input="x", reply_to="../etc/passwd"), "invalid_request", "reply_to"),
    "bool-ids": (_req("bool-ids", task="embed", input=[True, False]), "invalid_request", "input"),
    "dup-key": (b'{"request_id":"dup-key","task":"embed","model":"minilm","input":"a","input":"b"}', "invalid_request", "input"),
}
# a 2 MB metadata echo: larger than what Kafka's producer sends by default (1 MB max_request_size),
# so it is answered result_too_large there; on queues that take it, an ordinary answer
HUGE_METADATA = _req("huge-metadata", task="embed", input="x", metadata={"blob": "m" * (2 * MB)})

# key -> raw value: not answerable at all, so dead-lettered
DEAD: dict[bytes, bytes | None] = {
    b"not-json": b"{this is not json",
    b"not-utf8": b'{"request_id":"x","input":"\xff\xfe\xfd"}',
    b"deep": b'{"request_id":"deep","input":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"not-object": b'["embed", "x"]',
    b"tombstone": None,
    b"oversized": b'{"request_id":"oversized","input":"' + b"x" * (MAX_REQUEST_BYTES + 10) + b'"}',
    b"big-garbage": b"\x00garbage" * (MB // 4),  # 2 MB of non-JSON: larger than the DLQ producer's 1 MB limit
}


def test_hostile_messages_get_errors_or_dead_letters_and_the_worker_carries_on(queue, broker, pool, topics, report):
    queue.create(topics, partitions=2)
    worker = pool.worker(broker.bootstrap_servers, topics, "worker", partitions=2, max_request_bytes=MAX_REQUEST_BYTES,
                         **queue.worker_settings())
    if queue.transport.startswith("kafka"):
        worker.wait_for(r"partitions assigned: \[.+\]", 90)
    too_large = queue.max_record_bytes is not None and queue.max_record_bytes < len(HUGE_METADATA)
    messages = [(b"e-" + rid.encode(), value) for rid, (value, _, _) in ERRORS.items()]
    messages += [(b"e-huge-metadata", HUGE_METADATA)] + list(DEAD.items())
    queue.produce(topics["requests_topic"], messages)

    results = queue.reader(topics["results_topic"])
    dead = queue.reader(topics["dlq_topic"])
    try:
        assert results.until(lambda r: len(r) >= len(ERRORS) + 1, 120), worker.tail()
        assert dead.until(lambda r: len(r) >= len(DEAD), 60), worker.tail()
        assert worker.alive(), worker.tail()
        queue.produce(topics["requests_topic"], [(b"fine", _req("fine", task="embed", input="a normal request"))])
        assert results.until(lambda r: any(json.loads(x.value)["request_id"] == "fine" for x in r), 60), worker.tail()
        results.settle(1.0)
        dead.settle(0.5)
    finally:
        results.close()
        dead.close()

    by_id = {}
    for record in results.records:
        message = json.loads(record.value)
        assert message["request_id"] not in by_id, f"{message['request_id']} answered twice"
        by_id[message["request_id"]] = (record, message)
    assert set(by_id) == set(ERRORS) | {"fine", "huge-metadata"}
    for rid, (_, kind, param) in ERRORS.items():
        record, message = by_id[rid]
        assert dict(record.headers)["status"] == b"error", rid
        assert message["error"]["type"] == kind, (rid, message["error"])
        if param is not None:
            assert (message["error"]["param"] or "").startswith(param), (rid, message["error"])
        assert record.key == b"e-" + rid.encode()
        assert "data" not in message and "results" not in message
    huge = by_id["huge-metadata"][1]
    if too_large:
        assert huge["error"]["type"] == "result_too_large", huge["error"]
        assert huge["metadata"] is None  # dropped: it is what made the result too large
    else:
        assert huge["error"] is None and huge["metadata"] == {"blob": "m" * (2 * MB)}
    _, fine = by_id["fine"]
    assert fine["error"] is None and len(fine["data"][0]["embedding"]) == 384

    letters = {r.key: r for r in dead.records}
    assert set(letters) == set(DEAD), sorted(letters)
    for key, value in DEAD.items():
        headers = dict(letters[key].headers)
        assert headers["dlq.source.topic"] == topics["requests_topic"].encode()
        assert headers["dlq.reason"], key
        if value is not None and len(value) < 512 * 1024:
            assert letters[key].value == value, key  # the original bytes, unchanged
    big = dict(letters[b"big-garbage"].headers)
    if too_large:  # too big for the DLQ producer: a prefix + the size
        assert int(big["dlq.value.truncated"]) == len(DEAD[b"big-garbage"])
        assert DEAD[b"big-garbage"].startswith(letters[b"big-garbage"].value)
    else:
        assert letters[b"big-garbage"].value == DEAD[b"big-garbage"]

    # every request is acknowledged (Kafka: the group's commit reaches the end of every partition)
    deadline = time.monotonic() + 20
    while (left := queue.unacknowledged(topics)) != 0:
        assert time.monotonic() < deadline, f"{left} requests never acknowledged"
        time.sleep(0.3)
    assert worker.alive()
    assert worker.scrape("/healthz").strip() == "ok"
    report[f"hostile messages ({queue.transport})"] = f"{len(ERRORS) + 1} results, {len(DEAD)} dead letters, worker up, offsets at the end"
