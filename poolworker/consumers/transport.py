"""What the worker needs from a queue, and nothing more: the ``Transport`` interface.

The receive loop, the preparer, the micro-batcher, the publisher, the cache and the metrics
only ever see this interface, so the same worker runs on Kafka (kafka-python or librdkafka),
Redis Streams or NATS JetStream. A transport owns its client objects and their threading
rules; the contract below says which methods are called from which thread.

Records travel as ``Record(source, value)``. ``Source.topic`` is the topic, stream or subject;
``partition``/``offset`` are the transport's coordinates (Kafka partition and offset; the
stream sequence on NATS; 0 and a per-worker arrival number on Redis); ``handle`` is what the
transport needs to acknowledge the record (a Redis entry id, a NATS message) and
``deliveries`` how many times the queue has handed it out (1 where the queue does not count).

Delivery is at-least-once everywhere: a record is acknowledged (``finish``) only after the
record answering it — its result or its dead letter — was acknowledged by the queue, so a crash
at any point replays it instead of losing it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..work import Source

if TYPE_CHECKING:
    from ..config import WorkerSettings

#: ``--transport`` name → the module and class implementing it (imported only when chosen, so
#: an optional client library is needed only by the transport that uses it).
IMPLEMENTATIONS = {
    "kafka": "poolworker.consumers.kafka_python:KafkaPythonTransport",
    "kafka-librdkafka": "poolworker.consumers.librdkafka:LibrdkafkaTransport",
    "redis-streams": "poolworker.consumers.redis_streams:RedisStreamsTransport",
    "nats": "poolworker.consumers.nats_jetstream:NatsTransport",
}
TRANSPORTS = tuple(IMPLEMENTATIONS)

#: ``transport`` name → the class of its client side (``ClientChannel``), for ``PoolClient``,
#: ``poolworker submit`` and the gateway.
CLIENT_CHANNELS = {
    "kafka": "poolworker.consumers.kafka_python:KafkaPythonChannel",
    "kafka-librdkafka": "poolworker.consumers.librdkafka:LibrdkafkaChannel",
    "redis-streams": "poolworker.consumers.redis_streams:RedisStreamsChannel",
    "nats": "poolworker.consumers.nats_jetstream:NatsChannel",
}

#: Called with the (topic, partition) pairs a transport stops owning (a Kafka revoke), so
#: per-partition metrics can be forgotten.
OnRevoked = Callable[[list[tuple[str, int]]], None]

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Reply:
    """One record read back by a ``ClientChannel``: its value and headers (a binary result,
    ``encoding_format`` bytes, is told apart and matched by its headers)."""

    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Record:
    """One received message: where it came from and its raw value (None: a Kafka tombstone)."""

    source: Source
    value: bytes | None


class RecordTooLarge(Exception):
    """The queue refuses a record this large; raised synchronously by ``Transport.produce`` so
    the publisher can send something smaller instead (it is never retried as it is)."""


class TransportUnavailable(RuntimeError):
    """A transport cannot be used here: its optional client library is missing, or its URL is
    invalid. Raised at start, with what to install or fix."""


@runtime_checkable
class Transport(Protocol):
    """One worker's connection to its queue.

    Threads: ``start``, ``poll``, ``commit``, ``pause``/``resume``, ``lag``, ``ready`` and
    ``close`` are called from the receive thread only; ``produce``, ``flush`` and ``finish``
    from the publisher thread and from the callbacks ``produce`` runs; ``inflight`` from any
    thread.
    """

    name: str

    def start(self) -> None:
        """Connect; create the request, result and DLQ topics/streams and the consumer group
        when missing; subscribe."""

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first. Records
        polled are in flight until ``finish``; a paused transport returns none (and keeps
        its group membership alive)."""

    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
                on_acked: Callable[[], None], on_failed: Callable[[Exception], None]) -> None:
        """Queue one record for ``topic``; exactly one of ``on_acked`` / ``on_failed`` runs once
        the queue has (or has not) durably taken it. Raises ``RecordTooLarge`` synchronously;
        every other failure goes to ``on_failed`` (the publisher retries it)."""

    def finish(self, source: Source) -> None:
        """The record at ``source`` is answered (its result or dead letter is acked): it may be
        acknowledged to the queue. Thread-safe; a record of a partition no longer owned is
        ignored."""

    def commit(self) -> None:
        """Push finished acknowledgements to the queue (Kafka: commit each partition's
        contiguous point); called periodically and at shutdown. Failures are logged and
        retried on the next call, never raised."""

    def inflight(self) -> int:
        """Records polled and not yet finished (the flow-control measure)."""

    def pause(self) -> None:
        """Stop fetching new records (flow control); in-flight work continues."""

    def resume(self) -> None:
        """Fetch again after ``pause``."""

    def lag(self) -> Mapping[tuple[str, int], int]:
        """Records waiting in the queue for this consumer group, per (topic, partition); empty
        when the queue cannot say right now."""

    def ready(self) -> bool:
        """True once records can be received (Kafka: partitions are assigned)."""

    def flush(self, timeout_s: float) -> None:
        """Wait until every produced record was acked or failed, at most ``timeout_s``."""

    def close(self) -> None:
        """Commit what is finished, leave the group (Kafka: so partitions move at once) and
        release the connections. Unfinished records stay unacknowledged and are replayed."""


@runtime_checkable
class ClientChannel(Protocol):
    """The client side of a transport: send requests, read one results topic.

    Built as ``Channel(servers, *, results_topic, options)`` where ``servers`` is the Kafka
    bootstrap list or the transport URL and ``options`` the client library's own settings.
    ``receive`` returns the records (value and headers) appended to ``results_topic`` after the channel
    was built (never earlier ones, never one missed in between); thread-safe ``send``."""

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        """Queue one request record."""

    def flush(self, timeout_s: float) -> None:
        """Wait until every sent record was acked by the queue."""

    def receive(self, timeout_s: float) -> list[Reply]:
        """Results that arrived, waiting at most ``timeout_s`` for the first."""

    def close(self) -> None:
        """Release the connections."""


def _load(table: dict[str, str], transport: str):
    """The class ``table`` names for ``transport``, importing its module only now."""
    if transport not in table:
        raise ValueError(f"unknown transport {transport!r}; choose one of {', '.join(table)}")
    module_name, _, class_name = table[transport].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"kafka-librdkafka": "librdkafka", "nats": "nats"}.get(transport)
        hint = f" (pip install 'poolworker[{extra}]')" if extra else ""
        raise TransportUnavailable(f"transport {transport!r} needs {exc.name or exc}{hint}") from exc
    return getattr(module, class_name)


def open_channel(transport: str, servers: str, *, results_topic: str, options: dict | None = None) -> ClientChannel:
    """The client side of ``transport`` (see ``ClientChannel``)."""
    return _load(CLIENT_CHANNELS, transport)(servers, results_topic=results_topic, options=dict(options or {}))


def make_transport(settings: WorkerSettings, *, on_revoked: OnRevoked | None = None) -> Transport:
    """The transport ``settings.transport`` names, built from the settings (not started).

    Every implementation takes ``(settings, *, on_revoked)``; a missing optional client
    library is a ``TransportUnavailable`` that says which extra to install."""
    cls = _load(IMPLEMENTATIONS, settings.transport)
    return cls(settings, on_revoked=on_revoked or (lambda _parts: None))


__all__ = ["CLIENT_CHANNELS", "IMPLEMENTATIONS", "TRANSPORTS", "ClientChannel", "Headers", "OnRevoked", "Record", "RecordTooLarge", "Reply", "Transport", "TransportUnavailable", "make_transport", "open_channel"]
