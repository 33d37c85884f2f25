"""``PoolClient``: send pooling requests to the worker's topic and await their results.

Results are matched by ``request_id``. The client reads the results topic from its end at the
time it starts (records already there are skipped by id anyway), so it needs no consumer group.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from .config import options_for

# How long a fetch may wait on the broker for data. Some Kafka-protocol brokers (Tansu among them)
# answer a fetch only when this runs out, so it bounds the latency a result can sit unread.
FETCH_MAX_WAIT_MS = 20


class PoolClient:
    """Thread-safe; use as a context manager or call ``close()``. ``kafka_options`` go to
    kafka-python (each client gets the keys it accepts: SASL/SSL reach both)."""

    def __init__(self, bootstrap_servers: str, *, requests_topic: str = "poolworker.requests",
                 results_topic: str = "poolworker.results", model: str | None = None, **kafka_options: Any) -> None:
        self.requests_topic = requests_topic
        self.results_topic = results_topic
        self.model = model
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.producer = KafkaProducer(**{"bootstrap_servers": bootstrap_servers, "acks": "all", "linger_ms": 2,
                                         **options_for("producer", kafka_options)})
        self.consumer = KafkaConsumer(**{"bootstrap_servers": bootstrap_servers, "group_id": None, "enable_auto_commit": False,
                                         "enable_incremental_fetch_sessions": False, "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
                                         **options_for("consumer", kafka_options)})
        parts = self._partitions(results_topic)
        self.consumer.assign(parts)
        for tp in parts:  # pin the start now so results of requests sent from here on are never missed
            self.consumer.position(tp)
        self._thread = threading.Thread(target=self._read, name="poolclient-results", daemon=True)
        self._thread.start()

    def _partitions(self, topic: str):
        from kafka.structs import TopicPartition

        ids = None
        for _ in range(50):
            ids = self.consumer.partitions_for_topic(topic)
            if ids:
                break
            self._stop.wait(0.1)
        if not ids:
            raise RuntimeError(f"topic {topic!r} does not exist (is a worker running?)")
        return [TopicPartition(topic, p) for p in sorted(ids)]

    def _read(self) -> None:
        while not self._stop.is_set():
            for records in self.consumer.poll(timeout_ms=100).values():
                for rec in records:
                    try:
                        message = json.loads(rec.value)
                    except (TypeError, ValueError):
                        continue
                    with self._lock:
                        future = self._pending.pop(message.get("request_id"), None)
                    if future is not None and not future.done():
                        future.set_result(message)

    # -- sending ------------------------------------------------------------------------------------
    def submit(self, request: dict[str, Any], *, key: bytes | str | None = None) -> Future:
        """Send one request (a dict in the message contract); the future resolves to its result
        message. A missing ``request_id`` is generated."""
        request = dict(request)
        request.setdefault("request_id", uuid.uuid4().hex)
        if self.model is not None:
            request.setdefault("model", self.model)
        future: Future = Future()
        with self._lock:
            self._pending[request["request_id"]] = future
        if isinstance(key, str):
            key = key.encode()
        self.producer.send(self.requests_topic, key=key, value=json.dumps(request).encode())
        return future

    def request(self, request: dict[str, Any], timeout_s: float | None = 60.0, **kw) -> dict[str, Any]:
        return self.submit(request, **kw).result(timeout_s)

    async def arequest(self, request: dict[str, Any], **kw) -> dict[str, Any]:
        """asyncio-friendly: await the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(request, **kw))

    def flush(self) -> None:
        self.producer.flush()

    # -- task helpers (vLLM field names; options are request fields) ------------------------------
    def embed(self, input: str | Sequence, *, timeout_s: float | None = 60.0, **options: Any) -> dict[str, Any]:
        return self.request({"task": "embed", "input": input, **options}, timeout_s)

    def classify(self, input: str | Sequence, *, timeout_s: float | None = 60.0, **options: Any) -> dict[str, Any]:
        return self.request({"task": "classify", "input": input, **options}, timeout_s)

    def score(self, text_1: str | Sequence[str], text_2: str | Sequence[str], *, timeout_s: float | None = 60.0,
              **options: Any) -> dict[str, Any]:
        return self.request({"task": "score", "text_1": text_1, "text_2": text_2, **options}, timeout_s)

    def rerank(self, query: str, documents: Sequence[str], *, timeout_s: float | None = 60.0, **options: Any) -> dict[str, Any]:
        return self.request({"task": "rerank", "query": query, "documents": list(documents), **options}, timeout_s)

    def encode(self, input: str | Sequence, *, pooling_task: str | None = None, timeout_s: float | None = 60.0,
               **options: Any) -> dict[str, Any]:
        """vLLM's generic pooling: any task the model supports (default: the model's own)."""
        return self.request({"task": "pooling", "input": input, "pooling_task": pooling_task, **options}, timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.producer.close(timeout=5)
        self.consumer.close()
        with self._lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
