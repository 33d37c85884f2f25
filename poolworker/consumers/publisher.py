"""Publishes results and dead letters, and marks records finished once the broker acked them.

Results keep the request's key and carry headers ``status`` (ok|error), ``request_id``,
``task`` and ``model``. Only an acked send finishes a record, so a commit never covers a result
the broker does not have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.structs import TopicPartition

from ..cache import ResultCache, encode_value
from ..jobs import DeadLetter, Job
from ..metrics import Metrics
from ..protocol import encode_message, result_message, status_of
from ..tasks import assemble
from .offsets import OffsetTracker

log = logging.getLogger(__name__)
RETRY_DELAY_S = 1.0
DLQ_VALUE_PREFIX_BYTES = 64 * 1024  # what the DLQ keeps of a record too large for the producer
DLQ_KEY_PREFIX_BYTES = 1024


class Publisher:
    def __init__(self, producer, tracker: OffsetTracker, cache: ResultCache, metrics: Metrics, *, dlq_topic: str) -> None:
        self.producer = producer
        self.tracker = tracker
        self.cache = cache
        self.metrics = metrics
        self.dlq_topic = dlq_topic
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    # -- results ---------------------------------------------------------------------------------
    def _message(self, job: Job) -> dict:
        common = dict(request_id=job.request_id, task=job.task, model=job.model, metadata=job.metadata)
        if job.error is None:
            try:
                id2label = getattr(job.engine.model.config, "id2label", None)
                body = assemble(job.request, job.plan, job.results, model=job.model, id2label=id2label)
                return result_message(**common, body=body)
            except Exception as exc:  # noqa: BLE001 - a shaping bug must still answer the request
                log.exception("could not shape the result of %s", job.request_id)
                job.fail("internal_error", f"could not build the result: {type(exc).__name__}")
        return result_message(**common, error=job.error)

    def finish(self, jobs: list[Job]) -> None:
        """Publish each job's result in order, then cache the items computed for them."""
        fresh: dict[str, bytes] = {}
        for job in jobs:
            message = self._message(job)
            if job.error is None:
                for i in job.fresh:
                    result = job.results[i]
                    fresh[job.cache_keys[i]] = encode_value(result.data, result.num_tokens)
            self._publish_result(job, message)
        if fresh:
            self.cache.set_many(fresh)

    def _publish_result(self, job: Job, message: dict) -> None:
        status = status_of(message)
        headers = [("status", status.encode()), ("request_id", job.request_id.encode("utf-8", "replace"))]
        headers += [(k, v.encode()) for k, v in (("task", job.task), ("model", job.model)) if isinstance(v, str)]
        tokens = sum(r.num_tokens for r in job.results if r is not None) if job.error is None else 0

        def acked() -> None:
            self._finished(job.source.topic, job.source.partition, job.source.offset)
            model, task = job.model or "unknown", job.task or "unknown"
            self.metrics.request(model, task, status)
            if job.error is None:
                self.metrics.items(model, task, len(job.results))
                self.metrics.tokens(model, task, tokens)
            if job.source.timestamp_ms:
                self.metrics.end_to_end(model, task, max(0.0, time.time() - job.source.timestamp_ms / 1000))

        value = encode_message(message)
        try:
            self._send(job.reply_topic, job.source.key, value, headers, acked)
        except MessageSizeTooLargeError:
            if job.error is not None and job.error.type == "result_too_large":
                # Not even the bare error fits (an oversized key): the DLQ says where the request is.
                self.dead_letter(DeadLetter(job.source, None, f"result_too_large: even the error result is {len(value)} bytes"))
                return
            # The echoed metadata may be what is too large (it is the caller's, up to max_request_bytes),
            # so the error result goes without it; the error says so.
            job.fail("result_too_large", f"the result ({len(value)} bytes) exceeds the producer's max_request_size; "
                     "send fewer items per request, smaller metadata (dropped from this error) or encoding_format=base64")
            job.metadata = None
            self._publish_result(job, result_message(request_id=job.request_id, task=job.task, model=job.model,
                                                     metadata=None, error=job.error))

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

        def acked() -> None:
            self._finished(src.topic, src.partition, src.offset)
            self.metrics.dlq(letter.reason.split(":", 1)[0][:40])
            self.metrics.request("unknown", "unknown", "dlq")

        key, value = src.key, letter.value
        if key is None and value is None:
            value = b""  # a record with neither key nor value (another client's tombstone): the producer refuses None/None
        try:
            self._send(self.dlq_topic, key, value, headers, acked)
        except MessageSizeTooLargeError:
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
    def _finished(self, topic: str, partition: int, offset: int) -> None:
        self.tracker.done(TopicPartition(topic, partition), offset)

    def _send(self, topic: str, key: bytes | None, value: bytes | None, headers: list, acked: Callable[[], None]) -> None:
        try:
            future = self.producer.send(topic, key=key, value=value, headers=headers)
        except MessageSizeTooLargeError:
            raise  # permanent: the caller sends something smaller instead
        except KafkaError as exc:  # e.g. no metadata within max_block_ms: retried like a failed ack, never raised
            self._retry(exc, topic, key, value, headers, acked)
            return
        future.add_callback(lambda _meta: acked())
        future.add_errback(lambda exc: self._retry(exc, topic, key, value, headers, acked))

    def _retry(self, exc: Exception, topic: str, key, value, headers, acked) -> None:
        """Sends failing after the producer's own retries are tried again until shutdown: the
        record stays uncommitted meanwhile, so nothing is lost even if we never succeed."""
        if self._closed.is_set():
            log.error("dropping a send to %s at shutdown (%s); the request stays uncommitted and will be replayed", topic, exc)
            return
        log.warning("send to %s failed (%s); retrying in %.1fs", topic, exc, RETRY_DELAY_S)

        def again() -> None:
            try:
                self._send(topic, key, value, headers, acked)
            except KafkaError as err:
                self._retry(err, topic, key, value, headers, acked)

        timer = threading.Timer(RETRY_DELAY_S, again)
        timer.daemon = True
        timer.start()


__all__ = ["Publisher"]
