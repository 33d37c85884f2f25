"""The consumer loop: the receive stage's thread — poll, prepare, commit, backpressure.

The loop talks to its queue only through a ``Transport`` (``consumers.transport``), so the same
loop serves Kafka, Redis Streams and NATS. Each poll is prepared whole (``prepare.Preparer``) and
handed on: requests to the model thread (``batching.MicroBatcher``), dead letters to the
publisher thread (``publisher.Publisher``), which also receives the model thread's outcomes and
tells the transport when a record is answered. The transport acknowledges a record to its queue
only after the answer was acked (Kafka: commits stop at the oldest unanswered record).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from ..batching import Forwards, MicroBatcher
from ..cache import ResultCache
from ..config import WorkerSettings
from ..engine import Engine
from ..metrics import Metrics
from ..plugins.interface import IOProcessor
from ..prepare import Preparer
from ..work import DeadLetter, Prepared
from .publisher import Publisher
from .transport import Record, Transport, make_transport

log = logging.getLogger(__name__)
COMMIT_INTERVAL_S = 0.5
LAG_INTERVAL_S = 2.0
POLL_TIMEOUT_S = 0.1


def batch_budget(settings: WorkerSettings, engines: dict[str, Engine]) -> int:
    """Tokens per micro-batch: the setting, or else the largest forward batch of the engines
    (which ``load_engines`` built with the setting), so one budget runs from settings to packing."""
    if settings.max_batch_tokens is not None:
        return settings.max_batch_tokens
    return max((e.runner.max_batch_tokens for e in engines.values()), default=2048)


class WorkerLoop:
    """Consumes ``settings.requests_topic`` and serves it with ``engines`` until ``stop`` is set."""

    def __init__(self, settings: WorkerSettings, engines: dict[str, Engine], cache: ResultCache, metrics: Metrics,
                 transport: Transport | None = None, processors: Mapping[str, IOProcessor] | None = None,
                 forwards: Forwards | None = None) -> None:
        self.settings = settings
        self.forwards = forwards
        self.engines = engines
        self.metrics = metrics
        self.cache = cache
        self.preparer = Preparer(
            engines,
            cache,
            results_topic=settings.results_topic,
            allowed_reply_topics=settings.allowed_reply_topics,
            max_request_bytes=settings.max_request_bytes,
            max_items_per_request=settings.max_items_per_request,
            metrics=metrics,
            processors=processors,
        )
        self.transport = transport or make_transport(settings, on_revoked=self._revoked)
        self.publisher: Publisher | None = None
        self.batcher: MicroBatcher | None = None
        self._paused = False

    # -- lifecycle -----------------------------------------------------------------------------
    def _connect(self) -> None:
        s = self.settings
        self.transport.start()
        self.publisher = Publisher(self.transport, self.cache, self.metrics, dlq_topic=s.dlq_topic,
                                   served_models=self.engines).start()
        self.batcher = MicroBatcher(self.publisher.submit, max_batch_tokens=batch_budget(s, self.engines),
                                    max_batch_requests=s.max_batch_requests, max_wait_ms=s.max_wait_ms, metrics=self.metrics,
                                    forwards=self.forwards)

    def ready(self) -> bool:
        """True once the transport can receive (Kafka: partitions assigned)."""
        return self.publisher is not None and self.transport.ready()

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then drain: finish and publish what is in flight,
        commit, and leave the group. A failure of the model stage (its process died) ends the
        serving too, after the same drain of what was answered, and is raised.

        The model loop runs on the calling thread — the one that loaded the models — and the
        receive loop on a thread of its own: without a model process torch's OpenMP pool is the
        calling thread's, and the same forward passes ran ~20% slower from a second thread
        (MiniLM, 2 cores: 120 vs 95-100 docs/s)."""
        self._connect()
        failure: list[BaseException] = []

        def receive() -> None:
            try:
                self._receive(stop)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                failure.append(exc)

        thread = threading.Thread(target=receive, name="poolworker-receive", daemon=True)
        thread.start()
        self.batcher.serve()  # returns once the receive loop's shutdown stops the batcher, or on a failure
        thread.join()
        if failure:
            raise failure[0]
        if self.batcher.failure is not None:
            raise self.batcher.failure

    def _receive(self, stop: threading.Event) -> None:
        last_commit = last_lag = 0.0
        self.metrics.set_ready(True)
        try:
            while not stop.is_set() and self.batcher.failure is None:
                self.metrics.heartbeat()
                self._flow_control()
                records = self.transport.poll(POLL_TIMEOUT_S, self.settings.max_poll_records)
                if records:
                    self._handle(records)
                now = time.monotonic()
                if now - last_commit >= COMMIT_INTERVAL_S:
                    self.transport.commit()
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
        failed = self.batcher is not None and self.batcher.failure is not None
        if (drained or failed) and self.publisher is not None:  # what the model stage answered is published even after it failed
            drained = self.publisher.drain(self.settings.drain_timeout_s) and drained
        if failed:
            log.error("the model stage failed; unfinished requests stay uncommitted and will be replayed")
        elif not drained:
            log.warning("drain timed out after %.0fs; unfinished requests stay uncommitted and will be replayed",
                        self.settings.drain_timeout_s)
        self.transport.flush(self.settings.drain_timeout_s)
        self.transport.commit()
        if self.publisher is not None:
            self.publisher.close()
        if self.batcher is not None:
            self.batcher.stop()
        self.transport.close()
        log.info("worker stopped")

    # -- the loop's steps ----------------------------------------------------------------------------
    def _handle(self, records: list[Record]) -> None:
        prepared: list[Prepared] = []
        limit = self.settings.max_deliveries
        fresh = []
        for record in records:
            if record.source.deliveries > limit:  # a poison record that keeps killing or stalling workers
                self._dead_letter(DeadLetter(record.source, record.value,
                                             f"too_many_deliveries: handed out {record.source.deliveries} times (max_deliveries={limit})"))
            else:
                fresh.append((record.source, record.value))
        for outcome in self.preparer.prepare(fresh):
            if isinstance(outcome, DeadLetter):
                self._dead_letter(outcome)
            else:
                prepared.append(outcome)
        self.batcher.submit(prepared)

    def _dead_letter(self, letter: DeadLetter) -> None:
        log.warning("dead letter %s: %s", letter.source.label, letter.reason)
        self.publisher.submit_dead_letter(letter)

    def _revoked(self, partitions: list[tuple[str, int]]) -> None:
        for topic, partition in partitions:
            self.metrics.forget_partition(topic, partition)

    def _flow_control(self) -> None:
        """Pause while too much is in flight; resume below half of the limit."""
        inflight = self.transport.inflight()
        self.metrics.inflight(inflight)
        limit = self.settings.max_inflight_requests
        if not self._paused and inflight >= limit:
            self.transport.pause()
            self._paused = True
        elif self._paused and inflight <= limit // 2:
            self.transport.resume()
            self._paused = False
        self.metrics.paused(1 if self._paused else 0)

    def _report_lag(self) -> None:
        for (topic, partition), lag in self.transport.lag().items():
            self.metrics.lag(topic, partition, lag)
