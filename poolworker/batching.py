"""The model thread: micro-batches jobs across messages under a token budget and runs them.

One owner of the queue state (TEI's queue): jobs enter in record order, leave in batches of at
most ``max_batch_requests`` jobs and ``max_batch_tokens`` tokens, after waiting at most
``max_wait_ms`` for a batch to fill. Within a batch, items of every job that share an engine call
(model, task, options) run as one engine call, so small messages share forward passes. Results
are handed to ``finish`` in record order, which keeps per-partition order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import replace
from collections.abc import Callable

from .jobs import Job
from .metrics import Metrics
from .tasks import Item, ItemResult, run_plan

log = logging.getLogger(__name__)


def _run_group(job_items: list[tuple[Job, int]]) -> list[ItemResult]:
    """One engine call for items that share engine, task and options. Encode items go in as
    the token ids the consumer thread already produced (truncation is idempotent on them)."""
    job0 = job_items[0][0]
    if job0.plan.engine_call == "score":
        items = tuple(job.plan.items[i] for job, i in job_items)
    else:
        items = tuple(Item(tuple(job.token_ids[i])) for job, i in job_items)
    return run_plan(job0.engine, replace(job0.plan, pooling_task=job0.pooling_task, items=items))


def run_jobs(jobs: list[Job], metrics: Metrics | None = None) -> None:
    """Fill every job's missing items. A failing group is retried job by job, so one bad
    request cannot fail its neighbours; a job that still fails gets an error."""
    groups: dict[tuple, list[tuple[Job, int]]] = defaultdict(list)
    for job in jobs:
        if job.error is None:
            for i in job.missing:
                groups[(id(job.engine), job.pooling_task, *job.plan.group_key())].append((job, i))
    for members in groups.values():
        start = time.perf_counter()
        try:
            _fill(members)
        except Exception:  # noqa: BLE001 - isolate below
            by_job: dict[int, list[tuple[Job, int]]] = defaultdict(list)
            for job, i in members:
                by_job[id(job)].append((job, i))
            for own in by_job.values():
                try:
                    _fill(own)
                except (ValueError, TypeError) as exc:
                    own[0][0].fail("invalid_request", str(exc), "input")
                except Exception as exc:  # noqa: BLE001 - a model failure becomes this request's error
                    log.exception("inference failed for request %s", own[0][0].request_id)
                    own[0][0].fail("internal_error", f"inference failed: {type(exc).__name__}: {exc}")
        if metrics is not None:
            job0 = members[0][0]
            metrics.inference(job0.model, time.perf_counter() - start)
            metrics.batch(job0.model, len(members), sum(r.num_tokens for j, i in members if (r := j.results[i]) is not None))


def _fill(members: list[tuple[Job, int]]) -> None:
    results = _run_group(members)
    for (job, i), result in zip(members, results):
        job.results[i] = result
        job.fresh.add(i)


class MicroBatcher:
    """Queue + model thread. ``finish(jobs)`` receives each batch's jobs in record order."""

    def __init__(
        self,
        finish: Callable[[list[Job]], None],
        *,
        max_batch_tokens: int,
        max_batch_requests: int,
        max_wait_ms: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.finish = finish
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_wait_s = max_wait_ms / 1000
        self.metrics = metrics
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="poolworker-model", daemon=True)

    def start(self) -> MicroBatcher:
        self._thread.start()
        return self

    def submit(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        with self._cond:
            self._queue.extend(jobs)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted job is finished; True when that happened in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _take_batch(self) -> list[Job] | None:
        """Block for the first job, then fill the batch until budget, size or deadline."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].enqueued_at + self.max_wait_s
            while True:
                batch, tokens = self._fits()
                full = len(batch) < len(self._queue) or len(batch) >= self.max_batch_requests or tokens >= self.max_batch_tokens
                left = deadline - time.monotonic()
                if full or left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            for _ in batch:
                self._queue.popleft()
            self._busy = True
            return batch

    def _fits(self) -> tuple[list[Job], int]:
        batch: list[Job] = []
        tokens = 0
        for job in self._queue:
            cost = job.cost_tokens
            if batch and (len(batch) >= self.max_batch_requests or tokens + cost > self.max_batch_tokens):
                break
            batch.append(job)
            tokens += cost
        return batch, tokens

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                now = time.monotonic()
                if self.metrics is not None:
                    for job in batch:
                        self.metrics.queue_wait(now - job.enqueued_at)
                run_jobs(batch, self.metrics)
                self.finish(batch)
            except Exception:  # noqa: BLE001 - the model thread must survive anything
                log.exception("batch failed unexpectedly")
                for job in batch:
                    if job.error is None and job.missing:
                        job.fail("internal_error", "the batch failed unexpectedly")
                try:
                    self.finish(batch)
                except Exception:  # noqa: BLE001
                    log.exception("could not publish a failed batch")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
