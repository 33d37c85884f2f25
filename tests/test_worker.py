"""The streaming worker end to end: a real Tansu broker, real Redis, the worker on a thread.

Each test uses its own topics and consumer group. Reference values come from the offline Engine
(itself checked against transformers / sentence-transformers in test_engine_*), so these tests
prove the worker carries every task's output through Kafka unchanged.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from streaming import RunningWorker, as_json, produce, read_topic, worker_settings

from poolworker.cache import make_cache
from poolworker.client import PoolClient
from poolworker.metrics import Metrics
from poolworker.worker import Worker

ATOL = 1e-6


@pytest.fixture(scope="module")
def engines(Engine, minilm_engine, cross_encoder_path, seq_cls_path, reward_path):
    return {
        "minilm": minilm_engine,
        "cross": Engine(str(cross_encoder_path)),
        "sentiment": Engine(str(seq_cls_path)),
        "reward": Engine(str(reward_path)),
    }


def start_worker(broker, engines, *, cache=None, metrics=None, **overrides):
    settings = worker_settings(broker, **overrides)
    metrics = metrics or Metrics()
    worker = Worker(settings, engines=engines, cache=cache or make_cache(None), metrics=metrics)
    return settings, RunningWorker(worker).start()


def client_for(broker, settings) -> PoolClient:
    return PoolClient(broker.bootstrap_servers, requests_topic=settings.requests_topic, results_topic=settings.results_topic)


def close(a, b, atol=ATOL):
    assert len(a) == len(b)
    assert max(abs(x - y) for x, y in zip(a, b)) <= atol


def test_every_task_round_trip(broker, engines):
    settings, running = start_worker(broker, engines)
    texts = ["Kafka partitions spread load.", "Bananas are yellow.", "A third, rather longer sentence about queues."]
    try:
        with client_for(broker, settings) as c:
            minilm, cross, sentiment, reward = (engines[k] for k in ("minilm", "cross", "sentiment", "reward"))

            r = c.embed(texts, model="minilm", dimensions=64)
            assert r["error"] is None and r["model"] == "minilm" and r["task"] == "embed"
            for got, ref in zip(r["data"], minilm.embed(texts, dimensions=64)):
                close(got["embedding"], ref.outputs.embedding)
            assert r["usage"]["prompt_tokens"] == sum(o.num_prompt_tokens for o in minilm.embed(texts))

            r = c.classify(texts, model="sentiment")
            for got, ref in zip(r["data"], sentiment.classify(texts)):
                close(got["probs"], ref.outputs.probs)
                assert got["label"] == ref.outputs.label

            r = c.score("which is a fruit?", texts, model="cross")
            close([d["score"] for d in r["data"]], [o.outputs.score for o in cross.score("which is a fruit?", texts)])

            r = c.score(texts[0], texts, model="minilm")  # bi-encoder
            close([d["score"] for d in r["data"]], [o.outputs.score for o in minilm.score(texts[0], texts)])

            r = c.rerank("which is a fruit?", texts, model="cross", top_n=2)
            ref = cross.rerank("which is a fruit?", texts, top_n=2)
            assert [x["index"] for x in r["results"]] == [x.index for x in ref]
            close([x["relevance_score"] for x in r["results"]], [x.relevance_score for x in ref])
            assert r["results"][0]["document"]["text"] == texts[ref[0].index]

            r = c.encode(texts[:2], model="minilm", pooling_task="token_embed")
            for got, ref in zip(r["data"], minilm.encode(texts[:2], pooling_task="token_embed")):
                assert len(got["data"]) == ref.outputs.data.shape[0]
                close([v for row in got["data"] for v in row], ref.outputs.data.flatten().tolist())

            r = c.request({"task": "reward", "model": "reward", "input": ["hello world", "ab"]})
            for got, ref in zip(r["data"], reward.reward(["hello world", "ab"])):
                close([v for row in got["data"] for v in row], ref.outputs.data.flatten().tolist())

            r = c.request({"task": "token_classify", "model": "sentiment", "input": "tokens please"})
            ref = sentiment.encode("tokens please", pooling_task="token_classify")[0].outputs.data
            close([v for row in r["data"][0]["data"] for v in row], ref.flatten().tolist())

            r = c.embed("base64 please", model="minilm", encoding_format="base64")
            import base64
            import struct

            raw = base64.b64decode(r["data"][0]["embedding"])
            close(list(struct.unpack(f"<{len(raw) // 4}f", raw)), minilm.embed("base64 please")[0].outputs.embedding)
    finally:
        running.stop()


def test_errors_and_dead_letters(broker, engines):
    settings, running = start_worker(broker, engines)
    try:
        produce(broker.bootstrap_servers, settings.requests_topic, [
            (b"k1", b"{not json"),
            (b"k2", b"\xff\xfe\xfa"),
            (b"k3", json.dumps({"request_id": "bad-field", "task": "embed", "model": "minilm", "inputs": ["typo"]}).encode()),
            (b"k4", json.dumps({"request_id": "bad-model", "task": "embed", "model": "nope", "input": "x"}).encode()),
            (b"k5", json.dumps({"request_id": "bad-task", "task": "classify", "model": "minilm", "input": "x"}).encode()),
            (b"k6", json.dumps({"request_id": "bad-dims", "task": "embed", "model": "minilm", "input": "x", "dimensions": 9999}).encode()),
            (b"k7", json.dumps({"request_id": "bad-ids", "task": "embed", "model": "minilm", "input": [5, 999999]}).encode()),
            (b"k8", json.dumps({"request_id": "bad-reply", "task": "embed", "model": "minilm", "input": "x", "reply_to": "__consumer_offsets"}).encode()),
            (b"k9", json.dumps({"request_id": "too-long", "task": "embed", "model": "minilm", "input": "word " * 600}).encode()),
            (b"k10", json.dumps({"request_id": "fine", "task": "embed", "model": "minilm", "input": "after the bad ones"}).encode()),
        ])
        results = {as_json(r)["request_id"]: r for r in read_topic(broker.bootstrap_servers, settings.results_topic, 8)}
        expected = {"bad-field": "inputs", "bad-model": "model", "bad-task": "task", "bad-dims": "dimensions",
                    "bad-ids": "input", "bad-reply": "reply_to", "too-long": "input"}
        for request_id, param in expected.items():
            message = as_json(results[request_id])
            assert message["error"] is not None, request_id
            assert message["error"]["param"].startswith(param), (request_id, message["error"])
            assert dict(results[request_id].headers)["status"] == b"error"
        assert as_json(results["too-long"])["error"]["type"] == "input_too_long"
        assert as_json(results["bad-model"])["error"]["type"] == "unknown_model"
        fine = results["fine"]
        assert as_json(fine)["error"] is None and dict(fine.headers)["status"] == b"ok" and fine.key == b"k10"

        dead = read_topic(broker.bootstrap_servers, settings.dlq_topic, 2)
        assert sorted(r.value for r in dead) == sorted([b"{not json", b"\xff\xfe\xfa"])
        for record in dead:
            headers = dict(record.headers)
            assert headers["dlq.source.topic"] == settings.requests_topic.encode()
            assert int(headers["dlq.source.offset"]) >= 0 and headers["dlq.reason"]
            assert record.key in (b"k1", b"k2")
    finally:
        running.stop()


def test_results_keep_per_partition_order(broker, engines):
    settings, running = start_worker(broker, engines, max_batch_requests=7, max_wait_ms=2)
    keys = [f"doc-{k}".encode() for k in range(6)]
    messages = []
    for seq in range(20):
        for key in keys:
            body = {"request_id": f"{key.decode()}-{seq}", "task": "embed", "model": "minilm",
                    "input": f"text {seq} " * (1 + seq % 5), "metadata": {"seq": seq}}
            messages.append((key, json.dumps(body).encode()))
    try:
        produce(broker.bootstrap_servers, settings.requests_topic, messages)
        results = read_topic(broker.bootstrap_servers, settings.results_topic, len(messages))
        assert len(results) == len(messages)
        by_key: dict[bytes, list[int]] = {}
        for record in sorted(results, key=lambda r: (r.partition, r.offset)):
            by_key.setdefault(record.key, []).append(as_json(record)["metadata"]["seq"])
        assert set(by_key) == set(keys)
        for key, seqs in by_key.items():
            assert seqs == list(range(20)), key
    finally:
        running.stop()


def test_two_workers_share_the_group(broker, engines):
    tag = uuid.uuid4().hex[:8]
    shared = {"requests_topic": f"s{tag}.requests", "results_topic": f"s{tag}.results", "dlq_topic": f"s{tag}.dlq",
                  "group_id": f"s{tag}", "partitions": 4}
    a_metrics, b_metrics = Metrics(), Metrics()
    settings, a = start_worker(broker, engines, metrics=a_metrics, **shared)
    _, b = start_worker(broker, engines, metrics=b_metrics, **shared)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # both members joined and own partitions
            owned = [len(w.worker.loop.transport.consumer.assignment()) if w.worker.loop.transport.consumer else 0 for w in (a, b)]
            if all(owned) and sum(owned) == 4:
                break
            time.sleep(0.2)
        assert all(owned) and sum(owned) == 4, owned
        n = 120
        produce(broker.bootstrap_servers, settings.requests_topic, [
            (f"k{i}".encode(), json.dumps({"request_id": f"r{i}", "task": "embed", "model": "minilm", "input": f"doc {i}"}).encode())
            for i in range(n)
        ])
        results = read_topic(broker.bootstrap_servers, settings.results_topic, n)
        assert sorted(as_json(r)["request_id"] for r in results) == sorted(f"r{i}" for i in range(n))
        served = [sum(s.value for s in m.registry.collect() for s in s.samples
                      if s.name == "poolworker_requests_total" and s.labels.get("status") == "ok") for m in (a_metrics, b_metrics)]
        assert all(served) and sum(served) == n, served
    finally:
        a.stop()
        b.stop()


def _counter(metrics: Metrics, name: str) -> float:
    return sum(s.value for fam in metrics.registry.collect() for s in fam.samples if s.name == name)


def test_repeat_request_is_served_from_redis(broker, engines, redis_url):
    metrics = Metrics()
    cache = make_cache(redis_url, metrics=metrics)
    settings, running = start_worker(broker, engines, cache=cache, metrics=metrics)
    body = {"task": "embed", "model": "minilm", "input": [f"cache me {uuid.uuid4().hex}", "and me"], "dimensions": 32}
    try:
        with client_for(broker, settings) as c:
            first = c.request(body)
            hits_before = _counter(metrics, "poolworker_cache_hits_total")
            second = c.request(body)
        assert _counter(metrics, "poolworker_cache_hits_total") - hits_before == 2
        assert first["data"] == second["data"] and first["usage"] == second["usage"]
        assert first["error"] is None
    finally:
        running.stop()


def test_redis_stopped_mid_run_still_answers(broker, engines, tmp_path):
    from services import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    metrics = Metrics()
    settings, running = start_worker(broker, engines, cache=make_cache(server.url(), metrics=metrics), metrics=metrics)
    try:
        with client_for(broker, settings) as c:
            assert c.embed("before the outage", model="minilm")["error"] is None
            server.stop()
            for i in range(3):
                r = c.embed(f"during the outage {i}", model="minilm")
                assert r["error"] is None and len(r["data"][0]["embedding"]) == 384
        assert _counter(metrics, "poolworker_cache_errors_total") >= 1
    finally:
        running.stop()
        server.stop()


def test_submit_cli_writes_results_in_file_order(broker, engines, tmp_path):
    from typer.testing import CliRunner

    from poolworker.cli import app

    settings, running = start_worker(broker, engines)
    requests = [{"request_id": f"s{i}", "task": "embed", "model": "minilm", "input": f"line {i}"} for i in range(5)]
    requests.append({"request_id": "s-bad", "task": "embed", "model": "minilm", "input": None})
    source = tmp_path / "requests.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in requests) + "\n")
    out = tmp_path / "results.jsonl"
    try:
        result = CliRunner().invoke(app, ["submit", str(source), "--bootstrap-servers", broker.bootstrap_servers,
                                          "--requests-topic", settings.requests_topic, "--results-topic", settings.results_topic,
                                          "-o", str(out), "--timeout-s", "60"])
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [m["request_id"] for m in lines] == [r["request_id"] for r in requests]
        ref = engines["minilm"].embed([r["input"] for r in requests[:5]])
        for message, expected in zip(lines, ref):
            close(message["data"][0]["embedding"], expected.outputs.embedding)
        assert lines[-1]["error"]["param"] == "input"
        assert "6 results, 1 errors" in result.output
    finally:
        running.stop()


def test_client_passes_each_kafka_option_to_the_client_that_takes_it(broker, engines):
    settings, running = start_worker(broker, engines)
    try:
        # fetch_max_wait_ms is consumer-only and linger_ms producer-only: neither may break the other
        with PoolClient(broker.bootstrap_servers, requests_topic=settings.requests_topic,
                        results_topic=settings.results_topic, fetch_max_wait_ms=10, linger_ms=1) as c:
            assert c.channel.consumer.config["fetch_max_wait_ms"] == 10 and c.channel.producer.config["linger_ms"] == 1
            assert c.embed("options reach the right client", model="minilm")["error"] is None
    finally:
        running.stop()


def test_client_returns_binary_results_with_their_metadata(broker, engines):
    """``encoding_format`` bytes / bytes_only results are raw arrays with headers, not JSON: the
    client still matches them to their request and hands back the bytes."""
    import numpy as np

    settings, running = start_worker(broker, engines)
    try:
        with client_for(broker, settings) as c:
            texts = ["binary results", "two of them"]
            ref = np.asarray([o.outputs.embedding for o in engines["minilm"].embed(texts)], dtype=np.float32)
            full = c.embed(texts, model="minilm", encoding_format="bytes", endianness="little", metadata={"doc": 7})
            assert full["error"] is None and full["request_id"] and full["metadata"] == {"doc": 7}
            got = np.frombuffer(full["bytes"], dtype="<f4").reshape(2, 384)
            assert np.abs(got - ref).max() <= ATOL
            assert [item["shape"] for item in full["data"]] == [[384], [384]]
            bare = c.embed(texts[0], model="minilm", encoding_format="bytes_only", endianness="little")
            assert bare["task"] == "embed" and np.abs(np.frombuffer(bare["bytes"], dtype="<f4") - ref[0]).max() <= ATOL
    finally:
        running.stop()
