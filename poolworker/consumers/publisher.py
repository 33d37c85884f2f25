"""The publish stage: its own thread turns ``Finished`` requests into result records and dead
letters into DLQ records, and tells the transport a record is finished once the queue acked its
answer.

Results keep the request's key and carry headers ``status`` (ok|error), ``request_id``,
``task`` and ``model``. Only an acked send finishes a record, so a commit never covers a result
the queue does not have. Body shaping, serialization, the cache SET and ``producer.send`` all
happen here, never on the model thread; batches are published in the order the model thread
handed them over, which keeps per-partition order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection

from ..cache import ResultCache, encode_value, is_null
from ..metrics import Metrics
from ..protocol import TASKS, ErrorInfo, PoolingRequest, encode_message, result_message
from ..tasks import BINARY_FORMATS, assemble, binary_result, vector_key
from ..work import DeadLetter, Finished, Prepared
from .transport import RecordTooLarge, Transport

log = logging.getLogger(__name__)
RETRY_DELAY_S = 1.0
RETRY_WARN_INTERVAL_S = 5.0
DLQ_VALUE_PREFIX_BYTES = 64 * 1024  # what the DLQ keeps of a record too large for the producer
DLQ_KEY_PREFIX_BYTES = 1024
_STOP = object()


class Publisher:
    """``submit``/``submit_dead_letter`` queue work for the publisher thread (``start``);
    ``publish``/``dead_letter`` do that work synchronously (the thread's body, and tests')."""

    def __init__(self, transport: Transport, cache: ResultCache, metrics: Metrics, *, dlq_topic: str,
                 served_models: Collection[str] = ()) -> None:
        self.transport = transport
        self.served_models = frozenset(served_models)  # the only model names metrics label requests with
        self.cache = cache
        self.caching = not is_null(cache)
        self.metrics = metrics
        self.dlq_topic = dlq_topic
        self._closed = threading.Event()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._failed_sends = 0
        self._last_retry_warning = float("-inf")
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="poolworker-publish", daemon=True)

    # -- the stage -----------------------------------------------------------------------------
    def start(self) -> Publisher:
        self._thread.start()
        return self

    def submit(self, batch: list[Finished]) -> None:
        self._enqueue(batch)

    def submit_dead_letter(self, letter: DeadLetter) -> None:
        self._enqueue(letter)

    def _enqueue(self, work: object) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(work)

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted has been handed to the producer."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        """Stop retrying failed sends and stop the thread (after what is queued)."""
        self._closed.set()
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(10)

    def _loop(self) -> None:
        while True:
            work = self._queue.get()
            if work is _STOP:
                return
            try:
                if isinstance(work, DeadLetter):
                    self.dead_letter(work)
                else:
                    self.publish(work)
            except Exception:
                log.exception("publishing failed; the records stay uncommitted and will be replayed")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    # -- results ---------------------------------------------------------------------------------
    def publish(self, batch: list[Finished]) -> None:
        """Each request's result in order, then one cache SET for the items computed for them."""
        fresh: dict[str, bytes] = {}
        for finished in batch:
            published_ok = self._publish_result(finished)
            keys = finished.prepared.cache_keys
            if published_ok and self.caching and keys:  # multi-task items have none: not cached
                for i in finished.fresh:
                    result = finished.results[i]
                    fresh[keys[i]] = encode_value(result.data, result.num_tokens)
        if fresh:
            self.cache.set_many(fresh)

    def _publish_result(self, finished: Finished) -> bool:
        """Send one result; True when it went out as an answer (its items may be cached)."""
        p = finished.prepared
        error = finished.error
        value = None
        extra: list[tuple[str, bytes]] = []
        if error is None:
            try:
                body = assemble(p.request, p.plan, finished.results, model=p.model, id2label=p.labels,  # type: ignore[arg-type]
                                plugin=p.plugin)
                message = result_message(request_id=p.request_id, task=p.task, model=p.model, metadata=p.metadata, body=body)
                if p.request.encoding_format in BINARY_FORMATS and "data" in body:  # type: ignore[union-attr]
                    value, extra = _binary_record(p.request, message)  # type: ignore[arg-type]
                else:
                    # every number was checked where it was made, except in a plugin's output
                    value = encode_message(message, checked=p.plugin is None)
            except Exception as exc:
                log.exception("could not shape the result of %s", p.request_id)
                error = ErrorInfo(type="internal_error", message=f"could not build the result: {type(exc).__name__}")
        if error is not None:
            value = encode_message(result_message(request_id=p.request_id, task=p.task, model=p.model,
                                                  metadata=p.metadata, error=error))
        self._send_result(p, value, error, len(finished.results), finished.num_tokens, [] if error is not None else extra)
        return error is None

    def _send_result(self, p: Prepared, value: bytes, error: ErrorInfo | None, items: int, tokens: int,
                     extra_headers: list[tuple[str, bytes]] | None = None) -> None:
        status = "ok" if error is None else "error"
        headers = [("status", status.encode()), ("request_id", p.request_id.encode("utf-8", "replace"))]
        headers += [(k, v.encode()) for k, v in (("task", p.task), ("model", p.model)) if isinstance(v, str)]
        headers += extra_headers or []

        def acked() -> None:
            self.transport.finish(p.source)
            stamp = p.source.timestamp_ms
            self.metrics.answered(self._model_label(p.model), p.task if p.task in TASKS else "unknown", status,
                                  items, tokens, max(0.0, time.time() - stamp / 1000) if stamp else None)

        try:
            self._send(p.reply_topic, p.source.key, value, headers, acked)
        except RecordTooLarge:
            if error is not None and error.type == "result_too_large":
                # Not even the bare error fits (an oversized key): the DLQ says where the request is.
                self.dead_letter(DeadLetter(p.source, None, f"result_too_large: even the error result is {len(value)} bytes"))
                return
            # The echoed metadata may be what is too large (it is the caller's, up to max_request_bytes),
            # so the error result goes without it; the error says so.
            too_large = ErrorInfo(type="result_too_large", message=(
                f"the result ({len(value)} bytes) exceeds the producer's max_request_size; send fewer items per "
                "request, smaller metadata (dropped from this error) or encoding_format=base64"))
            bare = encode_message(result_message(request_id=p.request_id, task=p.task, model=p.model, metadata=None,
                                                 error=too_large))
            self._send_result(p, bare, too_large, 0, 0)

    def _model_label(self, model: str | None) -> str:
        """A served model's name, else ``unknown``: an error result may carry whatever name the
        caller sent, and each distinct label value would be a new series kept for good."""
        return model if model in self.served_models else "unknown"

    # -- dead letters ----------------------------------------------------------------------------
    def dead_letter(self, letter: DeadLetter) -> None:
        """The original bytes and headers, plus where they came from and why they are here."""
        src = letter.source
        headers = list(src.headers) + [
            ("dlq.source.topic", src.topic.encode()),
            ("dlq.source.partition", str(src.partition).encode()),
            ("dlq.source.offset", str(src.offset).encode()),
            ("dlq.reason", letter.reason.encode("utf-8", "replace")[:1000]),
        ]
        if isinstance(src.handle, str):  # the queue's own id of the record (a Redis entry id): what finds it again
            headers.append(("dlq.source.id", src.handle.encode()))

        def acked() -> None:
            self.transport.finish(src)
            self.metrics.dlq(letter.reason.split(":", 1)[0][:40])
            self.metrics.request("unknown", "unknown", "dlq")

        key, value = src.key, letter.value
        if key is None and value is None:
            value = b""  # a record with neither key nor value (another client's tombstone): the producer refuses None/None
        try:
            self._send(self.dlq_topic, key, value, headers, acked)
        except RecordTooLarge:
            # Larger than our producer may send (the request limit is max_request_bytes, the producer's
            # max_request_size is usually smaller): keep prefixes and the original sizes; the source
            # coordinates in the headers still lead to the full record while the topic retains it.
            cut = [(name, raw) for name, raw in headers if name.startswith("dlq.")]
            cut.append(("dlq.value.truncated", str(len(value or b"")).encode()))
            if key is not None and len(key) > DLQ_KEY_PREFIX_BYTES:
                cut.append(("dlq.key.truncated", str(len(key)).encode()))
            if src.headers:
                cut.append(("dlq.headers.dropped", str(len(src.headers)).encode()))
            self._send(self.dlq_topic, key if key is None else key[:DLQ_KEY_PREFIX_BYTES],
                       value if value is None else value[:DLQ_VALUE_PREFIX_BYTES], cut, acked)

    # -- sending -----------------------------------------------------------------------------------
    def _warn_retry(self, topic: str, exc: Exception) -> None:
        """One warning per RETRY_WARN_INTERVAL_S with the count since the last one: an outage
        with hundreds of records in flight would otherwise log a line per record per second."""
        with self._idle:
            self._failed_sends += 1
            now = time.monotonic()
            if now - self._last_retry_warning < RETRY_WARN_INTERVAL_S:
                return
            count, self._failed_sends, self._last_retry_warning = self._failed_sends, 0, now
        log.warning("send to %s failed (%s); retrying every %.1fs (%d failed sends since the last warning)",
                    topic, exc, RETRY_DELAY_S, count)

    def _send(self, topic: str, key: bytes | None, value: bytes | None, headers: list, acked: Callable[[], None]) -> None:
        """Hand one record to the transport; ``RecordTooLarge`` propagates (the caller sends
        something smaller), every other failure is retried."""
        self.transport.produce(topic, key, value, headers, acked,
                               lambda exc: self._retry(exc, topic, key, value, headers, acked))

    def _retry(self, exc: Exception, topic: str, key, value, headers, acked) -> None:
        """Sends failing after the client's own retries are tried again until shutdown: the
        record stays unacknowledged meanwhile, so nothing is lost even if we never succeed."""
        if self._closed.is_set():
            log.error("dropping a send to %s at shutdown (%s); the request stays uncommitted and will be replayed", topic, exc)
            return
        self._warn_retry(topic, exc)

        def again() -> None:
            try:
                self._send(topic, key, value, headers, acked)
            except RecordTooLarge as err:  # it fitted before: a changed limit; keep it unacknowledged
                log.error("send to %s refused as too large on retry (%s); the request will be replayed", topic, err)

        timer = threading.Timer(RETRY_DELAY_S, again)
        timer.daemon = True
        timer.start()


def _binary_record(request: PoolingRequest, message: dict) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A ``bytes``/``bytes_only`` result (docs/contract.md): the record value is every item's
    array, raw, one after the other; ``content-type`` says so. ``bytes`` adds a ``metadata``
    header: the rest of the result message as JSON (vLLM's bytes metadata, with each item's
    ``start``/``end``/``shape``, plus our envelope); ``bytes_only`` sends no metadata."""
    value, metadata = binary_result(message, vector_key(request), request.embed_dtype, request.endianness)
    headers = [("content-type", b"application/octet-stream"), ("encoding_format", request.encoding_format.encode())]
    if request.encoding_format == "bytes":
        headers.append(("metadata", encode_message(metadata)))
    return value, headers


__all__ = ["Publisher"]
