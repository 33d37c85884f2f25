"""The kafka-python transport's poll while the broker is away.

kafka-python 3 can raise a retriable error (the coordinator lookup's ``KafkaConnectionError``)
out of ``KafkaConsumer.poll`` while the broker restarts; seen killing a worker in
``tests/reliability/test_outages.py``'s server restart. The real client is replaced here by one
whose ``poll`` raises what kafka-python raised, so the behaviour is checked every run, not only
when a restart happens to land inside a coordinator lookup.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from kafka.errors import GroupAuthorizationFailedError, KafkaConnectionError
from kafka.structs import TopicPartition

from poolworker.config import WorkerSettings
from poolworker.consumers.kafka_python import KafkaPythonTransport


class _Consumer:
    """``poll`` answers from a script: an exception to raise, or records to return."""

    def __init__(self, *script) -> None:
        self.script = list(script)

    def poll(self, timeout_ms: int, max_records: int):
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def _transport(consumer: _Consumer) -> KafkaPythonTransport:
    transport = KafkaPythonTransport(WorkerSettings(), on_revoked=lambda _parts: None)
    transport.consumer = consumer  # type: ignore[assignment]
    return transport


def _record(offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic="requests", partition=0, offset=offset, key=b"k", value=b"{}", timestamp=1, headers=[])


def test_a_retriable_error_out_of_poll_is_waited_out_and_the_next_poll_delivers(caplog):
    tp = TopicPartition("requests", 0)
    transport = _transport(_Consumer(KafkaConnectionError("111 ECONNREFUSED"), KafkaConnectionError("111 ECONNREFUSED"),
                                     {tp: [_record(7)]}))
    with caplog.at_level(logging.WARNING, logger="poolworker.consumers.kafka_python"):
        assert transport.poll(0.01, 10) == []
        assert transport.poll(0.01, 10) == []
    records = transport.poll(0.01, 10)
    assert [(r.source.topic, r.source.partition, r.source.offset) for r in records] == [("requests", 0, 7)]
    assert transport.inflight() == 1  # registered only once it was actually handed out
    warnings = [r for r in caplog.records if "polling failed" in r.getMessage()]
    assert len(warnings) == 1 and "KafkaConnectionError" in warnings[0].getMessage()  # one per interval, not per poll


def test_a_non_retriable_error_out_of_poll_still_stops_the_worker():
    transport = _transport(_Consumer(GroupAuthorizationFailedError("not allowed")))
    with pytest.raises(GroupAuthorizationFailedError):
        transport.poll(0.01, 10)
