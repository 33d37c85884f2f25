"""One small interface over the queues the worker runs on, so each reliability test runs
unchanged on every transport: a ``QueuePeer`` creates the names, produces requests the way a
real producer of that queue would, reads a topic/stream/subject from its beginning, and restarts
its server. Each peer uses the queue's own client library, not the worker's code.

Peers: ``KafkaPeer`` (Tansu; worker transports ``kafka`` and ``kafka-librdkafka``),
``tests/reliability/peer_redis.py`` (Redis Streams) and ``tests/reliability/peer_nats.py``
(NATS JetStream), each on a private server on a free port.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Received:
    """A record read back: what every reader yields (Kafka's own records have the same fields)."""

    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Reader:
    """Reads one topic from its beginning and keeps everything read; ``until`` polls on.
    Subclasses implement ``fetch`` (new records since the last call) and ``close``."""

    def __init__(self) -> None:
        self.records: list = []

    def fetch(self, timeout_s: float) -> list:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def poll(self, timeout_s: float = 0.2) -> None:
        self.records.extend(self.fetch(timeout_s))

    def until(self, done: Callable[[list], bool], timeout_s: float, on_wait: Callable[[], None] | None = None) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done(self.records):
            if time.monotonic() > deadline:
                return False
            if on_wait is not None:
                on_wait()
            self.poll()
        return True

    def settle(self, quiet_s: float = 1.5) -> None:
        """Poll until nothing new arrived for ``quiet_s`` (late duplicates land here)."""
        last, count = time.monotonic(), len(self.records)
        while time.monotonic() - last < quiet_s:
            self.poll()
            if len(self.records) != count:
                last, count = time.monotonic(), len(self.records)

    def messages(self) -> list[dict]:
        return [json.loads(r.value) for r in self.records]


class QueuePeer(Protocol):
    """What a reliability test needs of a queue (see the module docstring)."""

    transport: str  # the worker's --transport
    max_record_bytes: int | None  # the largest record the worker's producer may send (None: no limit)

    def worker_settings(self) -> dict[str, Any]:
        """Settings a worker needs to reach this queue (transport, transport_url or
        bootstrap_servers), merged into the worker's ``POOLWORKER_*`` environment."""

    def create(self, topics: dict[str, str], partitions: int) -> None:
        """Make the request, result and DLQ names exist where the queue needs it (no-op otherwise)."""

    def produce(self, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]],
                headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send (key, value) pairs (value None: a tombstone where the queue has them, else an
        empty value) and wait until the queue acked each."""

    def reader(self, topic: str) -> Reader:
        """A reader of ``topic`` from its first record."""

    def unacknowledged(self, topics: dict[str, str]) -> int:
        """Records of ``topics["requests_topic"]`` the worker group has not acknowledged yet
        (Kafka: produced past the committed offsets; Redis: pending plus unread entries; NATS:
        the durable consumer's pending plus ack-pending messages)."""

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server, wait ``down_s``, start it again on the same address with its data."""

    def stop(self) -> None:
        """End the server (if this peer started it)."""


class KafkaPeer:
    """Tansu through kafka-python, for the worker's ``kafka`` or ``kafka-librdkafka`` transport."""

    max_record_bytes = 1024 * 1024  # the producer's default max_request_size

    def __init__(self, broker, transport: str = "kafka") -> None:
        self.broker = broker
        self.transport = transport
        self._ends: dict[str, dict[int, int]] = {}  # topic → partition → one past the last produced offset

    def worker_settings(self) -> dict[str, Any]:
        return {"transport": self.transport, "bootstrap_servers": self.broker.bootstrap_servers}

    def create(self, topics: dict[str, str], partitions: int) -> None:
        from .procs import create_topics

        create_topics(self.broker.bootstrap_servers, topics, partitions)

    def produce(self, topic, messages, headers=None) -> None:
        from .procs import produce

        ends = self._ends.setdefault(topic, {})
        for meta in produce(self.broker.bootstrap_servers, topic, messages, headers, max_request_size=64 * 1024 * 1024):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)

    def unacknowledged(self, topics: dict[str, str]) -> int:
        from .procs import committed_offsets

        committed = committed_offsets(self.broker.bootstrap_servers, topics["group_id"])
        ends = self._ends.get(topics["requests_topic"], {})
        return sum(max(0, end - committed.get(p, 0)) for p, end in ends.items())

    def reader(self, topic: str) -> Reader:
        from .procs import TopicReader

        return TopicReader(self.broker.bootstrap_servers, topic)

    def restart(self, down_s: float = 0.0) -> None:
        """Keeps the data only for a broker on durable storage (``storage="s3://..."``)."""
        self.broker.stop()
        time.sleep(down_s)
        self.broker.start()

    def stop(self) -> None:
        pass  # the session's broker outlives the test


#: --transport → "module:factory" of its peer; a factory takes the session's Tansu broker (used
#: by Kafka peers, ignored by the others) and returns a started peer.
PEERS = {
    "kafka": "reliability.peers:kafka_peer",
    "kafka-librdkafka": "reliability.peers:librdkafka_peer",
    "redis-streams": "reliability.peer_redis:start_peer",
    "nats": "reliability.peer_nats:start_peer",
}


def kafka_peer(broker) -> KafkaPeer:
    return KafkaPeer(broker, "kafka")


def librdkafka_peer(broker) -> KafkaPeer:
    return KafkaPeer(broker, "kafka-librdkafka")


def start_peer(transport: str, broker) -> QueuePeer:
    module_name, _, factory = PEERS[transport].partition(":")
    return getattr(importlib.import_module(module_name), factory)(broker)
