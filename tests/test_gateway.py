"""The HTTP gateway end to end with client libraries nobody here wrote: the openai SDK, httpx,
huggingface_hub's InferenceClient (TEI routes) and cohere's ClientV2, against a real Tansu
broker and a real worker on a thread. References: the offline Engine (itself checked against
transformers) and sentence-transformers for the embeddings.

Also the deadline path on the worker side (``batching``): a request whose ``deadline_ms`` has
passed is answered ``expired``, counted, and never reaches the model.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from streaming import RunningWorker, produce, read_topic, worker_settings

from poolworker.cache import MemoryCache
from poolworker.client import PoolClient
from poolworker.gateway.server import serve_in_thread
from poolworker.gateway.settings import GatewaySettings
from poolworker.metrics import Metrics
from poolworker.worker import Worker

REPLY_TOPICS = r"poolworker\.replies\..+"
TEXTS = ["Kafka partitions spread load over consumers.", "Bananas are rich in potassium.", "Queues decouple producers."]
ATOL = 1e-5


@pytest.fixture(scope="module")
def engines(minilm_engine, Engine, cross_encoder_path, seq_cls_path, token_cls_path, splade_path):
    cross = Engine(str(cross_encoder_path))
    # "reranker" and "tokcls" are the names the conformance bodies use for the same kinds of model
    return {"minilm": minilm_engine, "cross": cross, "reranker": cross, "sentiment": Engine(str(seq_cls_path)),
            "tokcls": Engine(str(token_cls_path)), "splade": Engine(str(splade_path))}


@pytest.fixture(scope="module")
def stack(broker, engines):
    """A worker allowing the gateways' reply topics, and a gateway in front of it. The worker
    caches results in memory, so a body sent on Kafka and then over HTTP gets the same floats
    (a forward's last bits may depend on its batch companions)."""
    metrics = Metrics()
    settings = worker_settings(broker, allowed_reply_topics=REPLY_TOPICS, partitions=1)
    running = RunningWorker(Worker(settings, engines=engines, cache=MemoryCache(), metrics=metrics)).start()
    gateway = serve_in_thread(GatewaySettings(bootstrap_servers=broker.bootstrap_servers, port=0, partitions=1,
                                              requests_topic=settings.requests_topic, models=["minilm", "cross", "sentiment"],
                                              timeout_s=30))
    try:
        yield {"url": gateway.url, "worker": settings, "metrics": metrics, "gateway": gateway}
    finally:
        gateway.stop()
        running.stop()


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack["url"], timeout=60) as client:
        yield client


def close(a, b, atol=ATOL) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape and np.abs(a - b).max() <= atol


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# -- vLLM's routes ----------------------------------------------------------------------------------
def test_openai_sdk_embeddings_equal_sentence_transformers(stack, minilm_st):
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack['url']}/v1", api_key="unused", max_retries=0)
    response = client.embeddings.create(model="minilm", input=TEXTS)  # the SDK asks for base64 and decodes it
    reference = minilm_st.encode(TEXTS, normalize_embeddings=False)
    assert [d.index for d in response.data] == [0, 1, 2] and response.model == "minilm"
    for got, ref in zip(response.data, reference):
        assert cosine(got.embedding, ref) >= 0.99999
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0

    raw = client.embeddings.with_raw_response.create(model="minilm", input="one text", encoding_format="float")
    body = json.loads(raw.text)
    assert body["id"].startswith("embd-") and body["object"] == "list" and isinstance(body["created"], int)
    assert list(body) == ["id", "object", "created", "model", "data", "usage"]
    assert body["usage"]["completion_tokens"] == 0 and "request_id" not in body
    assert cosine(body["data"][0]["embedding"], minilm_st.encode("one text")) >= 0.99999


def test_base64_over_http_is_little_endian_float32(http, minilm_engine):
    body = http.post("/v1/embeddings", json={"input": "decode me", "encoding_format": "base64"}).json()  # default model
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    close(vector, minilm_engine.embed("decode me")[0].outputs.embedding)
    assert body["model"] == "minilm"


def test_classify_score_rerank_pooling(http, engines):
    cross, sentiment, minilm = engines["cross"], engines["sentiment"], engines["minilm"]

    body = http.post("/classify", json={"model": "sentiment", "input": TEXTS}).json()
    assert body["id"].startswith("classify-") and body["object"] == "list"
    for got, ref in zip(body["data"], sentiment.classify(TEXTS)):
        close(got["probs"], ref.outputs.probs)
        assert got["label"] == ref.outputs.label and got["num_classes"] == len(ref.outputs.probs)

    for path in ("/score", "/v1/score"):
        body = http.post(path, json={"model": "cross", "text_1": "which is a fruit?", "text_2": TEXTS}).json()
        assert body["id"].startswith("score-") and [d["object"] for d in body["data"]] == ["score"] * 3
        close([d["score"] for d in body["data"]], [o.outputs.score for o in cross.score("which is a fruit?", TEXTS)])

    reference = cross.rerank("which is a fruit?", TEXTS, top_n=2)
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        body = http.post(path, json={"model": "cross", "query": "which is a fruit?", "documents": TEXTS, "top_n": 2}).json()
        assert body["id"].startswith("score-") and list(body) == ["id", "model", "usage", "results"]
        assert [r["index"] for r in body["results"]] == [r.index for r in reference]
        close([r["relevance_score"] for r in body["results"]], [r.relevance_score for r in reference])
        assert body["results"][0]["document"] == {"text": TEXTS[reference[0].index], "multi_modal": None}

    body = http.post("/pooling", json={"model": "minilm", "input": TEXTS[:1], "task": "token_embed"}).json()
    assert body["id"].startswith("pool-") and body["data"][0]["object"] == "pooling"
    close(body["data"][0]["data"], minilm.encode(TEXTS[:1], pooling_task="token_embed")[0].outputs.data)


def test_invocations_choose_the_api_by_body(http, engines):
    body = http.post("/invocations", json={"model": "minilm", "input": "hello"}).json()
    assert body["id"].startswith("embd-")
    close(body["data"][0]["embedding"], engines["minilm"].embed("hello")[0].outputs.embedding)
    body = http.post("/invocations", json={"model": "sentiment", "input": "hello"}).json()  # cannot embed: classify
    assert body["id"].startswith("classify-")
    close(body["data"][0]["probs"], engines["sentiment"].classify("hello")[0].outputs.probs)
    body = http.post("/invocations", json={"model": "cross", "query": "q", "documents": ["a", "b"]}).json()
    assert body["id"].startswith("score-") and len(body["results"]) == 2


def test_errors_have_vllms_body_and_status(http):
    def error(path, payload, **kw):
        response = http.post(path, json=payload, **kw) if payload is not None else http.post(path, **kw)
        return response.status_code, response.json()["error"]

    status, err = error("/v1/embeddings", {"model": "nope", "input": "x"})
    assert status == 404 and err["type"] == "NotFoundError" and err["code"] == 404
    status, err = error("/classify", {"model": "minilm", "input": "x"})  # an embedding model cannot classify
    assert status == 404 and err["code"] == 404
    status, err = error("/v1/embeddings", {"model": "minilm", "input": "x", "dimensions": 100000})
    assert (status, err["type"], err["param"], err["code"]) == (400, "BadRequestError", "dimensions", 400)
    status, err = error("/v1/embeddings", None, content=b"{not json", headers={"content-type": "application/json"})
    assert status == 400 and err["type"] == "BadRequestError"
    status, err = error("/v1/embeddings", None, content=b'{"input": "x"}', headers={"content-type": "text/plain"})
    assert status == 400 and "application/json" in err["message"]
    response = http.get("/no/such/route")
    assert response.status_code == 404 and response.json()["error"]["code"] == 404


def test_models_health_version_metrics(http):
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["minilm", "cross", "sentiment"]
    assert http.get("/health").status_code == 200
    assert "version" in http.get("/version").json()
    http.post("/v1/embeddings", json={"input": "count me"})
    assert 'poolworker_gateway_requests_total{route="/v1/embeddings",status="200"}' in http.get("/metrics").text


# -- TEI's routes ---------------------------------------------------------------------------------
def test_tei_routes_with_huggingface_hub(stack, http, engines, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    # the suite runs with HF_HUB_OFFLINE=1 (no hub look-ups); this client only talks to the gateway
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)

    minilm, cross, sentiment = engines["minilm"], engines["cross"], engines["sentiment"]
    vectors = InferenceClient(model=f"{stack['url']}/embed").feature_extraction(TEXTS[0])
    close(vectors[0], minilm.embed(TEXTS[0])[0].outputs.embedding)

    assert np.asarray(http.post("/embed", json={"inputs": TEXTS}).json()).shape == (3, 384)
    matrices = http.post("/embed_all", json={"inputs": [TEXTS[1]]}).json()
    close(matrices[0], minilm.encode([TEXTS[1]], pooling_task="token_embed")[0].outputs.data)

    ranks = http.post("/rerank", json={"model": "cross", "query": "which is a fruit?", "texts": TEXTS, "return_text": True}).json()
    reference = cross.rerank("which is a fruit?", TEXTS)
    assert [r["index"] for r in ranks] == [r.index for r in reference] and ranks[0]["text"] == TEXTS[reference[0].index]
    close([r["score"] for r in ranks], [r.relevance_score for r in reference])

    predictions = http.post("/predict", json={"model": "sentiment", "inputs": TEXTS[0]}).json()
    ref = sentiment.classify(TEXTS[0])[0].outputs
    assert predictions[0]["label"] == ref.label
    close(sorted(p["score"] for p in predictions), sorted(ref.probs))

    sparse = http.post("/embed_sparse", json={"model": "splade", "inputs": [TEXTS[0]]}).json()
    dense = np.asarray(engines["splade"].embed(TEXTS[0])[0].outputs.embedding)
    assert [e["index"] for e in sparse[0]] == np.flatnonzero(dense).tolist()
    close([e["value"] for e in sparse[0]], dense[dense != 0])

    response = http.post("/embed", json={"inputs": "x", "model": "nope"})
    assert response.status_code == 422 and response.json()["error_type"] == "Validation"
    response = http.post("/predict", json={"model": "sentiment", "inputs": ["a pair", "of texts"]})
    assert response.status_code == 422 and "pair" in response.json()["error"]


def test_cohere_client_embed_and_rerank(stack, engines, minilm_st):
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=stack["url"])
    # input_type is a required argument; MiniLM defines no task instructions, so it can only be None
    embedded = client.embed(model="minilm", texts=TEXTS[:2], input_type=None, embedding_types=["float"])
    assert embedded.id.startswith("embd-")
    for got, ref in zip(embedded.embeddings.float_, minilm_st.encode(TEXTS[:2])):
        assert cosine(got, ref) >= 0.99999

    response = client.rerank(model="cross", query="which is a fruit?", documents=TEXTS, top_n=2)
    reference = engines["cross"].rerank("which is a fruit?", TEXTS, top_n=2)
    assert [r.index for r in response.results] == [r.index for r in reference]
    close([r.relevance_score for r in response.results], [r.relevance_score for r in reference])


# -- overload and deadlines ---------------------------------------------------------------------------
def test_429_at_the_inflight_cap_and_504_past_the_deadline(broker):
    """No worker reads this request topic: one call waits, the next is refused at once, and the
    waiting one times out with 504 and is forgotten."""
    import threading

    settings = GatewaySettings(bootstrap_servers=broker.bootstrap_servers, port=0, partitions=1, max_inflight=1,
                               timeout_s=1.5, retry_after_s=2, requests_topic=f"t{uuid.uuid4().hex[:10]}.requests")
    gateway = serve_in_thread(settings)
    try:
        first: dict = {}
        thread = threading.Thread(target=lambda: first.update(r=httpx.post(f"{gateway.url}/v1/embeddings", json={"input": "x"}, timeout=30)))
        thread.start()
        pool = gateway.server.config.app.state.gateway.pool
        deadline = time.monotonic() + 10
        while pool.inflight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        second = httpx.post(f"{gateway.url}/v1/embeddings", json={"input": "y"}, timeout=30)
        assert second.status_code == 429 and second.headers["retry-after"] == "2"
        assert second.json()["error"]["code"] == 429
        thread.join(30)
        assert first["r"].status_code == 504 and first["r"].json()["error"]["code"] == 504
        assert not pool.client._pending  # the timed-out call was forgotten
    finally:
        gateway.stop()


def test_the_listening_socket_is_tcp_so_asyncio_turns_nagle_off():
    """asyncio sets TCP_NODELAY only on sockets whose proto is TCP; with Nagle on, every response
    body waited for the client's delayed ACK (+40 ms a call, measured by bench/gateway_bench.py)."""
    import socket

    from poolworker.gateway.server import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_a_restarted_gateway_reuses_its_reply_topic(broker, stack):
    """A gateway holds nothing the pool needs: stopped and started again with the same instance
    id, it answers on the same reply topic (read from its end, so old replies are skipped)."""
    settings = GatewaySettings(bootstrap_servers=broker.bootstrap_servers, port=0, partitions=1, instance_id=f"restart-{uuid.uuid4().hex[:8]}",
                               requests_topic=stack["worker"].requests_topic, models=["minilm"])
    topics = []
    for _ in range(2):
        gateway = serve_in_thread(settings)
        try:
            topics.append(gateway.reply_topic)
            assert httpx.post(f"{gateway.url}/v1/embeddings", json={"input": "again"}, timeout=60).status_code == 200
        finally:
            gateway.stop()
    assert topics[0] == topics[1] == f"poolworker.replies.{settings.instance_id}"


def test_worker_answers_expired_without_a_forward(stack, engines, monkeypatch):
    """A request whose deadline_ms header is in the past: error ``expired``, counted, and the
    model is never called for it (a request without a deadline still is)."""
    from poolworker import batching
    forwards = []
    real = batching.run_call
    monkeypatch.setattr(batching, "run_call", lambda call, inputs: forwards.append(len(inputs)) or real(call, inputs))
    settings = stack["worker"]
    with PoolClient(settings.bootstrap_servers, requests_topic=settings.requests_topic, results_topic=settings.results_topic) as client:
        past = str(int(time.time() * 1000) - 1000).encode()
        late = client.submit({"task": "embed", "model": "minilm", "input": "too late"}, headers=[("deadline_ms", past)])
        result = late.result(60)
        assert result["error"]["type"] == "expired" and "data" not in result
        assert forwards == []
        assert stack["metrics"].registry.get_sample_value("poolworker_expired_requests_total",
                                                          {"model": "minilm", "task": "embed"}) == 1
        future = str(int(time.time() * 1000) + 60_000).encode()
        ok = client.submit({"task": "embed", "model": "minilm", "input": "in time"}, headers=[("deadline_ms", future)]).result(60)
        assert ok["error"] is None and forwards == [1]
        # a deadline that is not ASCII digits is ignored: the request is computed
        odd = client.submit({"task": "embed", "model": "minilm", "input": "odd deadline"}, headers=[("deadline_ms", b"soon")]).result(60)
        assert odd["error"] is None and forwards == [1, 1]


# -- vLLM's own request bodies, over HTTP and on Kafka ------------------------------------------------
CONFORMANCE = Path(__file__).parent / "conformance" / "vllm_bodies.json"
# The conformance stand-ins this file serves (tests/test_conformance.py serves the decoders too).
SERVED = ("minilm", "reranker", "tokcls")
HTTP_ROUTE = {"embed": "/v1/embeddings", "classify": "/classify", "score": "/score", "rerank": "/rerank", "pooling": "/pooling"}


def _conformance_cases() -> list[dict]:
    if not CONFORMANCE.exists():
        return []
    cases = json.loads(CONFORMANCE.read_text())["cases"]
    return [c for c in cases if c["model"] in SERVED and c["task"] in HTTP_ROUTE]


def _http_call(case: dict, body: dict) -> tuple[str, dict]:
    """The route and HTTP body for a case: Cohere bodies on /v2/embed; on /pooling the pooling
    task is vLLM's body field ``task``."""
    if case["id"].startswith("cohere"):
        return "/v2/embed", body
    if case["task"] == "pooling":
        body = {("task" if k == "pooling_task" else k): v for k, v in body.items()}
    return HTTP_ROUTE[case["task"]], body


@pytest.mark.parametrize("case", _conformance_cases(), ids=lambda c: c["id"])
def test_vllm_bodies_are_answered_over_http_as_on_kafka(case, stack, http, minilm_path):
    """Each body from vLLM's tests (tests/conformance/vllm_bodies.json, checked against vLLM's
    answers on Kafka by test_conformance.py) gets the same answer over HTTP: the same values,
    vLLM's envelope, and for the bodies vLLM refuses, 400 naming the same field."""
    from transformers import AutoTokenizer

    body = {**case["body"], "model": case["model"]}
    if isinstance(body.get("input"), str) and body["input"].startswith("TOKEN_IDS("):
        body["input"] = AutoTokenizer.from_pretrained(str(minilm_path))(body["input"][len("TOKEN_IDS("):-1])["input_ids"]
    path, http_body = _http_call(case, body)
    worker = stack["worker"]
    if body.get("encoding_format") in ("bytes", "bytes_only"):  # Kafka: the raw arrays in the record value
        raw = _kafka_raw_value(worker, body, case["task"])
        response = http.post(path, json=http_body)
        assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
        assert response.content == raw
        if body["encoding_format"] == "bytes":
            items = json.loads(response.headers["metadata"])["data"]
            assert [i["end"] - i["start"] for i in items] == [len(raw) // len(items)] * len(items)
        return
    with PoolClient(worker.bootstrap_servers, requests_topic=worker.requests_topic, results_topic=worker.results_topic) as client:
        kafka = client.request({**body, "task": case["task"]}, 60)
    response = http.post(path, json=http_body)
    if kafka["error"] is not None:
        assert kafka["error"]["type"] == case["error"] and kafka["error"]["param"] == case.get("param")
        error = response.json()["error"]
        assert (response.status_code, error["code"], error["type"], error["param"]) == (400, 400, "BadRequestError", case.get("param"))
        return
    assert response.status_code == 200, response.text
    got = response.json()
    if case.get("warnings"):  # the ignored fields, named in a header (the body stays vLLM's)
        warnings = json.loads(response.headers["x-poolworker-warnings"])
        assert warnings == kafka["warnings"] and all(any(name in w for w in warnings) for name in case["warnings"])
    if path == "/v2/embed":
        assert got["id"].startswith("embd-") and got["embeddings"] == kafka["embeddings"]
    elif case["task"] == "rerank":
        assert got["id"].startswith("score-") and got["model"] == case["model"]
        assert [(r["index"], r["relevance_score"], r["document"]["text"]) for r in got["results"]] == \
            [(r["index"], r["relevance_score"], r["document"]["text"]) for r in kafka["results"]]
    else:
        prefix = {"embed": "embd-", "score": "score-", "pooling": "pool-"}[case["task"]]
        assert got["id"].startswith(prefix) and got["object"] == "list" and got["model"] == case["model"]
        assert got["data"] == kafka["data"]
    if "usage" in kafka:
        assert got["usage"]["prompt_tokens"] == kafka["usage"]["prompt_tokens"]


def _kafka_raw_value(worker, body: dict, task: str) -> bytes:
    """The value of the worker's ``bytes`` result record for ``body`` (PoolClient reads JSON only)."""
    request_id = uuid.uuid4().hex
    produce(worker.bootstrap_servers, worker.requests_topic, [(None, json.dumps({**body, "task": task, "request_id": request_id}).encode())])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in read_topic(worker.bootstrap_servers, worker.results_topic, 1 << 30, timeout_s=1):
            if dict(record.headers).get("request_id") == request_id.encode():
                return record.value
    raise AssertionError(f"no result for {request_id}")


# -- the command --------------------------------------------------------------------------------------
def test_gateway_command_imports_light_and_takes_its_options():
    """``poolworker/cli.py`` imports the command at start: no FastAPI, uvicorn or torch then."""
    import subprocess
    import sys

    import typer
    from typer.testing import CliRunner

    code = "import sys, poolworker.gateway.cli; print(sorted(m for m in ('fastapi', 'uvicorn', 'torch') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"

    from poolworker.gateway.cli import gateway

    app = typer.Typer()
    app.command("gateway")(gateway)
    app.command("other")(lambda: None)  # two commands, as in poolworker's CLI
    help_text = CliRunner().invoke(app, ["gateway", "--help"], terminal_width=200).output
    for flag in ("--bootstrap-servers", "--transport", "--transport-url", "--host", "--port", "--requests-topic", "--timeout-s",
                 "--max-inflight", "--config", "--model"):
        assert flag in help_text
    result = CliRunner().invoke(app, ["gateway", "--transport", "carrier-pigeon"])
    assert result.exit_code == 2 and "unknown transport" in result.output
    result = CliRunner().invoke(app, ["gateway", "--transport", "nats"])
    assert result.exit_code == 2 and "transport_url" in result.output
