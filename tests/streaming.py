"""Fixtures for tests against a real broker (Tansu) and a real Redis, started by the tests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from poolworker.broker import FETCH_MAX_WAIT_MS, LocalBroker, start_local_broker
from poolworker.config import WorkerSettings

FAST_GROUP = {"session_timeout_ms": 4000, "heartbeat_interval_ms": 500}
TANSU = {"fetch_max_wait_ms": FETCH_MAX_WAIT_MS}  # what a worker on the tests' broker needs


@pytest.fixture
def pool(tmp_path):
    """Processes a test starts (workers, brokers, moto), all ended when it finishes."""
    from reliability.procs import ProcessPool

    p = ProcessPool(tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="session")
def broker():
    b = start_local_broker()
    yield b
    b.stop()


def unique_topics() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"requests_topic": f"t{tag}.requests", "results_topic": f"t{tag}.results", "dlq_topic": f"t{tag}.dlq", "group_id": f"g{tag}"}


def worker_settings(broker: LocalBroker, **overrides) -> WorkerSettings:
    values = {"bootstrap_servers": broker.bootstrap_servers, "metrics_port": 0, "redis_url": None, "partitions": 3,
              **FAST_GROUP, **TANSU, **unique_topics(), **overrides}
    return WorkerSettings(**values)


@dataclass
class RunningWorker:
    """A Worker on a thread of the test process."""

    worker: object
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> RunningWorker:
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop_event,), daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 60) -> None:
        self.stop_event.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "worker did not stop"


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Every record of ``topic`` from the beginning, waiting until ``expected`` have arrived."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", enable_incremental_fetch_sessions=False)
    try:
        deadline = time.monotonic() + timeout_s  # a worker process creates the topic once it has loaded its model
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts or [])])
        consumer.seek_to_beginning()
        records = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]] | list, headers=None) -> None:
    """Send raw (key, value) pairs, waiting for the broker's acks."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value, headers=headers or [])
        producer.flush()
    finally:
        producer.close()


def as_json(record) -> dict:
    return json.loads(record.value)


REPO = Path(__file__).resolve().parents[1]
