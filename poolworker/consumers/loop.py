"""The consumer loop: the receive stage's thread — poll, prepare, commit, backpressure.

kafka-python's consumer is not thread-safe, so everything that touches it (poll, pause,
resume, commit, lag) happens here. Each poll is prepared whole (``prepare.Preparer``) and handed
on: requests to the model thread (``batching.MicroBatcher``), dead letters to the publisher
thread (``publisher.Publisher``), which also receives the model thread's outcomes. Offsets are
committed only up to the oldest record whose result (or dead letter) the broker has not acked.
"""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from ..batching import MicroBatcher
from ..cache import ResultCache
from ..config import WorkerSettings
from ..engine import Engine
from ..metrics import Metrics
from ..prepare import Preparer
from ..work import DeadLetter, Prepared, Source
from .offsets import OffsetTracker
from .publisher import Publisher
from .topics import ensure_topics

log = logging.getLogger(__name__)
COMMIT_INTERVAL_S = 0.5
LAG_INTERVAL_S = 2.0


class _CommitOnRevoke(AsyncConsumerRebalanceListener):
    """Commits what is finished for partitions we are about to lose, then forgets them. kafka-
    python 3 runs listeners on its IO loop, where only the async commit may be awaited."""

    def __init__(self, loop: WorkerLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked):
        revoked = set(revoked)
        offsets = self.loop.tracker.committable(revoked)
        if offsets:
            try:
                await self.loop.consumer.commit_async(_as_commit(offsets))
            except Exception as exc:  # noqa: BLE001 - the new owner replays from the last commit
                log.warning("commit on revoke failed: %s", exc)
        self.loop.tracker.forget(revoked)
        for tp in revoked:
            self.loop.metrics.forget_partition(tp.topic, tp.partition)
        log.info("partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    async def on_partitions_assigned(self, assigned):
        log.info("partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


def batch_budget(settings: WorkerSettings, engines: dict[str, Engine]) -> int:
    """Tokens per micro-batch: the setting, or else the largest forward batch of the engines
    (which ``load_engines`` built with the setting), so one budget runs from settings to packing."""
    if settings.max_batch_tokens is not None:
        return settings.max_batch_tokens
    return max((e.runner.max_batch_tokens for e in engines.values()), default=2048)


def _as_commit(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


class WorkerLoop:
    """Consumes ``settings.requests_topic`` and serves it with ``engines`` until ``stop`` is set."""

    def __init__(self, settings: WorkerSettings, engines: dict[str, Engine], cache: ResultCache, metrics: Metrics) -> None:
        self.settings = settings
        self.engines = engines
        self.metrics = metrics
        self.cache = cache
        self.tracker = OffsetTracker()
        self.preparer = Preparer(
            engines,
            cache,
            results_topic=settings.results_topic,
            allowed_reply_topics=settings.allowed_reply_topics,
            max_request_bytes=settings.max_request_bytes,
            max_items_per_request=settings.max_items_per_request,
        )
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self.publisher: Publisher | None = None
        self.batcher: MicroBatcher | None = None
        self._paused = False

    # -- lifecycle -----------------------------------------------------------------------------
    def _connect(self) -> None:
        s = self.settings
        ensure_topics(s.admin_options(), [s.requests_topic, s.results_topic, s.dlq_topic],
                      partitions=s.partitions, replication_factor=s.replication_factor)
        self.producer = KafkaProducer(**s.producer_options())
        self.publisher = Publisher(self.producer, self.tracker, self.cache, self.metrics, dlq_topic=s.dlq_topic).start()
        self.batcher = MicroBatcher(self.publisher.submit, max_batch_tokens=batch_budget(s, self.engines),
                                    max_batch_requests=s.max_batch_requests, max_wait_ms=s.max_wait_ms, metrics=self.metrics)
        self.consumer = KafkaConsumer(**s.consumer_options())
        self.consumer.subscribe([s.requests_topic], listener=_CommitOnRevoke(self))

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then drain: finish and publish what is in flight,
        commit, and leave the group.

        The model runs on the calling thread — the one that loaded it — and the receive loop on
        a thread of its own: torch's OpenMP pool is the calling thread's, and the same forward
        passes ran ~20% slower from a second thread (MiniLM, 2 cores: 120 vs 95-100 docs/s)."""
        self._connect()
        failure: list[BaseException] = []

        def receive() -> None:
            try:
                self._receive(stop)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                failure.append(exc)

        thread = threading.Thread(target=receive, name="poolworker-receive", daemon=True)
        thread.start()
        self.batcher.serve()  # returns once the receive loop's shutdown stops the batcher
        thread.join()
        if failure:
            raise failure[0]

    def _receive(self, stop: threading.Event) -> None:
        last_commit = last_lag = 0.0
        self.metrics.set_ready(True)
        try:
            while not stop.is_set():
                self.metrics.heartbeat()
                self._flow_control()
                polled = self.consumer.poll(timeout_ms=100, max_records=self.settings.max_poll_records)
                if polled:
                    self._handle(polled)
                now = time.monotonic()
                if now - last_commit >= COMMIT_INTERVAL_S:
                    self._commit()
                    last_commit = now
                if now - last_lag >= LAG_INTERVAL_S:
                    self._report_lag()
                    self.metrics.cache_up(self.cache.available)
                    last_lag = now
        finally:
            self.metrics.set_ready(False)
            self._shutdown()

    def _shutdown(self) -> None:
        drained = self.batcher.drain(self.settings.drain_timeout_s) if self.batcher else True
        drained = drained and (self.publisher.drain(self.settings.drain_timeout_s) if self.publisher else True)
        if not drained:
            log.warning("drain timed out after %.0fs; unfinished requests stay uncommitted and will be replayed",
                        self.settings.drain_timeout_s)
        if self.producer is not None:
            self.producer.flush(timeout=self.settings.drain_timeout_s)
        if self.consumer is not None:
            self._commit()
        if self.publisher is not None:
            self.publisher.close()
        if self.batcher is not None:
            self.batcher.stop()
        if self.consumer is not None:
            self.consumer.close(autocommit=False)  # leaves the group: partitions move at once
        if self.producer is not None:
            self.producer.close(timeout=5)
        log.info("worker stopped")

    # -- the loop's steps ----------------------------------------------------------------------------
    def _handle(self, polled: dict) -> None:
        records = []
        for tp, batch in polled.items():
            for rec in batch:
                self.tracker.add(tp, rec.offset)
                headers = tuple((k, v if v is not None else b"") for k, v in (rec.headers or ()))
                records.append((Source(rec.topic, rec.partition, rec.offset, rec.key, rec.timestamp, headers), rec.value))
        prepared: list[Prepared] = []
        for outcome in self.preparer.prepare(records):
            if isinstance(outcome, DeadLetter):
                log.warning("dead letter %s: %s", outcome.source.label, outcome.reason)
                self.publisher.submit_dead_letter(outcome)
            else:
                prepared.append(outcome)
        self.batcher.submit(prepared)

    def _commit(self) -> None:
        offsets = self.tracker.committable()
        if not offsets:
            return
        try:
            self.consumer.commit(_as_commit(offsets))
            self.tracker.mark_committed(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("commit failed (%s); will retry", exc)

    def _flow_control(self) -> None:
        """Pause every partition while too much is in flight; resume below half of the limit."""
        inflight = self.tracker.inflight()
        self.metrics.inflight(inflight)
        limit = self.settings.max_inflight_requests
        assigned = self.consumer.assignment()
        if not self._paused and inflight >= limit and assigned:
            self.consumer.pause(*assigned)
            self._paused = True
        elif self._paused and inflight <= limit // 2:
            self.consumer.resume(*self.consumer.paused())
            self._paused = False
        elif self._paused:
            newly = set(assigned) - set(self.consumer.paused())
            if newly:  # partitions assigned while paused
                self.consumer.pause(*newly)
        self.metrics.paused(len(self.consumer.paused()))

    def _report_lag(self) -> None:
        """Lag = highwater − position, from the consumer (Tansu's admin LATEST offsets are wrong)."""
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = self.consumer.position(tp, timeout_ms=100)
            except Exception:  # noqa: BLE001 - no position yet
                continue
            if position is not None:
                self.metrics.lag(tp.topic, tp.partition, max(0, high - position))
