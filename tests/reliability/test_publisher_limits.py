"""The publisher's last lines of defence, without a broker: records that kafka-python refuses to
send (too large for ``max_request_size``, or neither key nor value) still finish as a dead letter
or an error result, so the worker never crashes on them and their offsets can be committed."""

from __future__ import annotations

from kafka.errors import MessageSizeTooLargeError
from kafka.structs import TopicPartition

from poolworker.cache import make_cache
from poolworker.consumers.publisher import (
    DLQ_KEY_PREFIX_BYTES,
    DLQ_VALUE_PREFIX_BYTES,
    Publisher,
)
from poolworker.metrics import Metrics
from poolworker.protocol import ErrorInfo
from poolworker.work import DeadLetter, Finished, Prepared, Source

from .procs import AckedAtOnce, kafka_transport_over

LIMIT = 1024 * 1024


class _Producer:
    """Refuses like kafka-python: None/None with ValueError, oversized records synchronously."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, dict]] = []

    def send(self, topic, key=None, value=None, headers=None):
        if key is None and value is None:
            raise ValueError("Need at least one: key or value")
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers or [])
        if size > LIMIT:
            raise MessageSizeTooLargeError(f"{size} bytes")
        self.sent.append((topic, key, value, dict(headers or [])))
        return AckedAtOnce()


def _setup(*offsets: int):
    producer = _Producer()
    transport = kafka_transport_over(producer)
    for offset in offsets:
        transport.tracker.add(TopicPartition("req", 0), offset)
    return transport.tracker, producer, Publisher(transport, make_cache(None), Metrics(), dlq_topic="dlq")


def test_dead_letters_too_large_or_empty_are_still_sent():
    tracker, producer, publisher = _setup(0, 1, 2)
    big = b"x" * (3 * LIMIT)
    publisher.dead_letter(DeadLetter(Source("req", 0, 0, None, None), big, "message is too large"))
    publisher.dead_letter(DeadLetter(Source("req", 0, 1, None, None), None, "tombstone"))
    huge_key = b"k" * (2 * LIMIT)
    publisher.dead_letter(DeadLetter(Source("req", 0, 2, huge_key, None, (("h", b"v"),)), None, "tombstone"))
    assert tracker.inflight() == 0
    (_, _, v0, h0), (_, k1, v1, _), (_, k2, v2, h2) = producer.sent
    assert v0 == big[:DLQ_VALUE_PREFIX_BYTES] and h0["dlq.value.truncated"] == str(len(big)).encode()
    assert (k1, v1) == (None, b"")
    assert k2 == huge_key[:DLQ_KEY_PREFIX_BYTES] and v2 is None
    assert h2["dlq.key.truncated"] == str(len(huge_key)).encode() and h2["dlq.headers.dropped"] == b"1"


def test_a_result_too_large_becomes_an_error_without_metadata_or_a_dead_letter():
    tracker, producer, publisher = _setup(0, 1)
    wrong = ErrorInfo(type="invalid_request", message="input is wrong", param="input")
    job = Prepared(Source("req", 0, 0, b"k", None), "r0", "embed", "m", "res", metadata={"blob": "m" * (2 * LIMIT)}, error=wrong)
    publisher.publish([Finished(job, error=wrong)])
    huge = Prepared(Source("req", 0, 1, b"k" * (2 * LIMIT), None), "r1", "embed", "m", "res", error=wrong)
    publisher.publish([Finished(huge, error=wrong)])
    assert tracker.inflight() == 0
    (topic0, _, value0, headers0), (topic1, key1, _, headers1) = producer.sent
    assert topic0 == "res" and b'"result_too_large"' in value0 and b'"metadata":null' in value0
    assert headers0["status"] == b"error"
    assert topic1 == "dlq" and len(key1) == DLQ_KEY_PREFIX_BYTES and headers1["dlq.reason"].startswith(b"result_too_large")


def test_metrics_label_requests_only_with_served_model_names_and_known_tasks():
    """Error results echo whatever model and task the caller sent; as metric labels those would
    grow one series per invented name, kept for good. Only served names and real tasks label."""
    producer = _Producer()
    transport = kafka_transport_over(producer)
    metrics = Metrics()
    publisher = Publisher(transport, make_cache(None), metrics, dlq_topic="dlq", served_models={"minilm"})
    wrong = ErrorInfo(type="unknown_model", message="not served", param="model")
    answers = [("minilm", "embed"), ("made-up-1", "embed"), ("made-up-2", "no-such-task"), (None, None)]
    for offset, (model, task) in enumerate(answers):
        transport.tracker.add(TopicPartition("req", 0), offset)
        source = Source("req", 0, offset, None, None)
        publisher.publish([Finished(Prepared(source, f"r{offset}", task, model, "res"), error=wrong)])
    assert len(producer.sent) == 4

    def count(model, task):
        return metrics.registry.get_sample_value("poolworker_requests_total", {"model": model, "task": task, "status": "error"})

    assert count("minilm", "embed") == 1
    assert count("unknown", "embed") == 1
    assert count("unknown", "unknown") == 2
    labelled = {s.labels["model"] for m in metrics.registry.collect() if m.name == "poolworker_requests" for s in m.samples}
    assert labelled == {"minilm", "unknown"}
