"""The ``kafka`` transport (the default): kafka-python's consumer and producer.

kafka-python's consumer is not thread-safe, so everything that touches it (poll, pause,
resume, commit, lag) runs on the receive thread; the producer is thread-safe and is used from
the publisher thread. Offsets are committed only up to the oldest record whose answer the
broker has not acked (``OffsetTracker``), and partitions about to be revoked get their finished
offsets committed first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError, MessageSizeTooLargeError
from kafka.structs import OffsetAndMetadata, TopicPartition

from ..config import WorkerSettings
from ..work import Source
from .kafka_partitioner import KeyHashPartitioner
from .offsets import OffsetTracker
from .topics import ensure_topics
from .transport import Headers, OnRevoked, Record, RecordTooLarge, Reply

log = logging.getLogger(__name__)
UNREACHABLE_WARN_INTERVAL_S = 5.0


def as_commit(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


class _CommitOnRevoke(AsyncConsumerRebalanceListener):
    """Commits what is finished for partitions we are about to lose, then forgets them. kafka-
    python 3 runs listeners on its IO loop, where only the async commit may be awaited."""

    def __init__(self, transport: KafkaPythonTransport) -> None:
        self.transport = transport

    async def on_partitions_revoked(self, revoked):
        revoked = set(revoked)
        t = self.transport
        offsets = t.tracker.committable(revoked)
        if offsets:
            try:
                await t.consumer.commit_async(as_commit(offsets))
            except Exception as exc:  # noqa: BLE001 - the new owner replays from the last commit
                log.warning("commit on revoke failed: %s", exc)
        t.tracker.forget(revoked)
        t.on_revoked([(tp.topic, tp.partition) for tp in revoked])
        log.info("partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    async def on_partitions_assigned(self, assigned):
        log.info("partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


class KafkaPythonTransport:
    """``Transport`` over kafka-python (pure Python; see ``librdkafka`` for the fast one)."""

    name = "kafka"

    def __init__(self, settings: WorkerSettings, *, on_revoked: OnRevoked) -> None:
        self.settings = settings
        self.on_revoked = on_revoked
        self.tracker = OffsetTracker()
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self._paused = False
        self._last_poll_warning = float("-inf")

    def start(self) -> None:
        s = self.settings
        ensure_topics(s.admin_options(), [s.requests_topic, s.results_topic, s.dlq_topic],
                      partitions=s.partitions, replication_factor=s.replication_factor)
        self.producer = KafkaProducer(**s.producer_options())
        self.consumer = KafkaConsumer(**s.consumer_options())
        self.consumer.subscribe([s.requests_topic], listener=_CommitOnRevoke(self))

    # -- receiving -------------------------------------------------------------------------------
    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        """The records the consumer has for us. A retriable client error (the broker restarting:
        kafka-python 3 can raise the coordinator lookup's ``KafkaConnectionError`` out of
        ``poll``) is waited out here, ``timeout_s`` at a time, instead of stopping the worker:
        nothing was handed out, the records stay where they were, and the next poll reconnects.
        A non-retriable error (authorization, a fatal group error) still propagates."""
        self._keep_paused()
        try:
            polled = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            if not getattr(exc, "retriable", False):
                raise
            self._warn_unreachable(exc)
            time.sleep(timeout_s)
            return []
        records = []
        for tp, batch in polled.items():
            for rec in batch:
                self.tracker.add(tp, rec.offset)
                headers = tuple((k, v if v is not None else b"") for k, v in (rec.headers or ()))
                records.append(Record(Source(rec.topic, rec.partition, rec.offset, rec.key, rec.timestamp, headers), rec.value))
        return records

    def _warn_unreachable(self, exc: KafkaError) -> None:
        """One warning per ``UNREACHABLE_WARN_INTERVAL_S`` while polls keep failing."""
        now = time.monotonic()
        if now - self._last_poll_warning >= UNREACHABLE_WARN_INTERVAL_S:
            self._last_poll_warning = now
            log.warning("polling failed (%s: %s); retrying until the broker answers", type(exc).__name__, exc)

    def finish(self, source: Source) -> None:
        self.tracker.done(TopicPartition(source.topic, source.partition), source.offset)

    def inflight(self) -> int:
        return self.tracker.inflight()

    def commit(self) -> None:
        offsets = self.tracker.committable()
        if not offsets:
            return
        try:
            self.consumer.commit(as_commit(offsets))
            self.tracker.mark_committed(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("commit failed (%s); will retry", exc)

    def pause(self) -> None:
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)
        self._paused = True

    def resume(self) -> None:
        self.consumer.resume(*self.consumer.paused())
        self._paused = False

    def _keep_paused(self) -> None:
        """Partitions assigned while paused arrive unpaused: pause them too."""
        if self._paused:
            newly = set(self.consumer.assignment()) - set(self.consumer.paused())
            if newly:
                self.consumer.pause(*newly)

    def lag(self) -> Mapping[tuple[str, int], int]:
        """highwater − position, from the consumer (Tansu's admin LATEST offsets are wrong)."""
        out = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = self.consumer.position(tp, timeout_ms=100)
            except Exception:  # noqa: BLE001, S112 - no position yet: this partition's lag is unknown this time
                continue
            if position is not None:
                out[(tp.topic, tp.partition)] = max(0, high - position)
        return out

    def ready(self) -> bool:
        return self.consumer is not None and bool(self.consumer.assignment())

    # -- producing -------------------------------------------------------------------------------
    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
                on_acked: Callable[[], None], on_failed: Callable[[Exception], None]) -> None:
        try:
            future = self.producer.send(topic, key=key, value=value, headers=headers)
        except MessageSizeTooLargeError as exc:
            raise RecordTooLarge(str(exc)) from exc
        except KafkaError as exc:  # e.g. no metadata within max_block_ms: a failure like a failed ack
            on_failed(exc)
            return
        future.add_callback(lambda _meta: on_acked())
        future.add_errback(on_failed)

    def flush(self, timeout_s: float) -> None:
        if self.producer is not None:
            self.producer.flush(timeout=timeout_s)

    def close(self) -> None:
        if self.consumer is not None:
            self.commit()
            self.consumer.close(autocommit=False)  # leaves the group: partitions move at once
        if self.producer is not None:
            self.producer.close(timeout=5)


# How long a client's fetch may wait on the broker for data. Some Kafka-protocol brokers (Tansu
# among them) answer a fetch only when this runs out, so it bounds how long a result sits unread.
CLIENT_FETCH_MAX_WAIT_MS = 20


class KafkaPythonChannel:
    """``ClientChannel`` over kafka-python. The results topic is read without a consumer group,
    from each partition's end as it was when the channel was built."""

    def __init__(self, servers: str, *, results_topic: str, options: dict) -> None:
        from ..config import PRODUCER_BATCH_BYTES, options_for

        self.producer = KafkaProducer(**{"bootstrap_servers": servers, "acks": "all", "linger_ms": 2, "batch_size": PRODUCER_BATCH_BYTES,
                                         "partitioner": KeyHashPartitioner(), **options_for("producer", options)})
        self.consumer = KafkaConsumer(**{"bootstrap_servers": servers, "group_id": None, "enable_auto_commit": False,
                                         "enable_incremental_fetch_sessions": False, "fetch_max_wait_ms": CLIENT_FETCH_MAX_WAIT_MS,
                                         **options_for("consumer", options)})
        parts = self._partitions(results_topic)
        self.consumer.assign(parts)
        for tp in parts:  # pin the start now so results of requests sent from here on are never missed
            self.consumer.position(tp)
        self._lock = threading.Lock()  # kafka-python's consumer is not thread-safe

    def _partitions(self, topic: str) -> list[TopicPartition]:
        ids = None
        for _ in range(50):
            ids = self.consumer.partitions_for_topic(topic)
            if ids:
                break
            time.sleep(0.1)
        if not ids:
            raise RuntimeError(f"topic {topic!r} does not exist (is a worker running?)")
        return [TopicPartition(topic, p) for p in sorted(ids)]

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        self.producer.send(topic, key=key, value=value, headers=headers or None)

    def flush(self, timeout_s: float) -> None:
        self.producer.flush(timeout=timeout_s)

    def receive(self, timeout_s: float) -> list[Reply]:
        with self._lock:
            polled = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        return [Reply(rec.value, tuple((k, v or b"") for k, v in rec.headers or ()))
                for batch in polled.values() for rec in batch if rec.value is not None]

    def close(self) -> None:
        self.producer.close(timeout=5)
        with self._lock:
            self.consumer.close()


__all__ = ["KafkaPythonChannel", "KafkaPythonTransport", "as_commit"]
