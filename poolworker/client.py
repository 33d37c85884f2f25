"""``PoolClient``: send pooling requests to the worker's topic and await their results.

Results are matched by ``request_id``. The client reads the results topic from its end at the
time it starts (records already there are skipped by id anyway), so it needs no consumer group.
It speaks any transport the worker does (``consumers.transport.ClientChannel``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Self

from .consumers.transport import Headers, Reply, open_channel

BINARY = b"application/octet-stream"


def result_of(reply: Reply) -> dict[str, Any] | None:
    """The result message in ``reply``, or None if it is not one. A binary result
    (``encoding_format`` bytes / bytes_only: the raw arrays in the value, docs/contract.md) is
    its ``metadata`` header's JSON (for ``bytes``), or the tags of its headers (``bytes_only``),
    with the raw value under ``"bytes"``."""
    headers = dict(reply.headers)
    if headers.get("content-type") == BINARY:
        try:
            message = json.loads(headers["metadata"]) if "metadata" in headers else {
                name: headers[name].decode("utf-8", "replace") for name in ("request_id", "task", "model") if name in headers}
        except ValueError:
            return None
        message.setdefault("error", None)
        message["bytes"] = reply.value
        return message
    try:
        message = json.loads(reply.value)
    except (TypeError, ValueError):
        return None
    return message if isinstance(message, dict) else None


class PoolClient:
    """Thread-safe; use as a context manager or call ``close()``.

    ``servers`` is the Kafka bootstrap list, or the URL of the queue for ``transport``
    ``redis-streams`` (``redis://HOST:PORT/DB``) and ``nats`` (``nats://HOST:PORT``).
    ``client_options`` go to the transport's client library (kafka-python: each client gets
    the keys it accepts, so SASL/SSL reach both consumer and producer)."""

    def __init__(self, servers: str, *, requests_topic: str = "poolworker.requests",
                 results_topic: str = "poolworker.results", model: str | None = None, transport: str = "kafka",
                 **client_options: Any) -> None:
        self.requests_topic = requests_topic
        self.results_topic = results_topic
        self.model = model
        self.transport = transport
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.channel = open_channel(transport, servers, results_topic=results_topic, options=client_options)
        self._thread = threading.Thread(target=self._read, name="poolclient-results", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            for reply in self.channel.receive(0.1):
                message = result_of(reply)
                if message is None:
                    continue
                request_id = message.get("request_id")
                with self._lock:
                    future = self._pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(message)

    # -- sending ------------------------------------------------------------------------------------
    def submit(self, request: dict[str, Any], *, key: bytes | str | None = None, headers: Headers | None = None) -> Future:
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
        try:
            self.channel.send(self.requests_topic, key, json.dumps(request).encode(), list(headers or ()))
        except BaseException:
            with self._lock:
                self._pending.pop(request["request_id"], None)
            raise
        return future

    def request(self, request: dict[str, Any], timeout_s: float | None = 60.0, **kw) -> dict[str, Any]:
        return self.submit(request, **kw).result(timeout_s)

    async def arequest(self, request: dict[str, Any], **kw) -> dict[str, Any]:
        """asyncio-friendly: await the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(request, **kw))

    def forget(self, request_id: str) -> None:
        """Stop waiting for ``request_id`` (a caller that gave up on it)."""
        with self._lock:
            future = self._pending.pop(request_id, None)
        if future is not None:
            future.cancel()

    def flush(self, timeout_s: float = 30.0) -> None:
        self.channel.flush(timeout_s)

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
        self.channel.close()
        with self._lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
