"""The infer stage: one model thread micro-batches prepared requests under a token budget and
runs forward passes on their token ids — nothing else (no parsing, no tokenizing, no I/O).

One owner of the queue state (TEI's queue): requests enter in record order, leave in batches of
at most ``max_batch_requests`` requests and ``max_batch_tokens`` tokens, after waiting at most
``max_wait_ms`` for a batch to fill. Within a batch, the inputs of every request that share a
``ModelCall`` (engine, task, head options) run as one engine call, whose forward batches are cut
by the same ``max_batch_tokens`` (one budget from the settings down to the packing). Each batch
leaves as new ``Finished`` values, in record order, through ``handoff`` (the publisher's queue),
which keeps per-partition order.

Deadlines: a record may carry the header ``deadline_ms`` (absolute Unix epoch milliseconds, ASCII
digits; the HTTP gateway sets it from its timeout). A request still needing a forward when its
deadline has passed is answered with an ``expired`` error instead: its caller has given up, and
the forward would only delay the requests behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from .engine.errors import EngineError
from .metrics import Metrics
from .protocol import DEADLINE_HEADER, EXPIRED, ErrorInfo
from .tasks import ItemResult, ModelCall, run_call
from .work import Finished, Prepared, Source

log = logging.getLogger(__name__)



def deadline_ms(source: Source) -> int | None:
    """The deadline a record's ``deadline_ms`` header carries; None when it has none. A header
    that is not ASCII digits is ignored rather than failing the request: a deadline only ever
    saves work, so a caller's malformed one costs nothing but that saving."""
    for name, value in source.headers:
        if name != DEADLINE_HEADER:
            continue
        try:
            text = bytes(value).decode("ascii")
        except (TypeError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None
    return None


def _expired(prepared: Prepared, now_ms: float) -> ErrorInfo | None:
    """The ``expired`` error for a request that still needs a forward and whose deadline has
    passed; None otherwise (errors and fully cached requests cost no forward, so they are
    answered as they are)."""
    if prepared.error is not None or not prepared.inputs:
        return None
    deadline = deadline_ms(prepared.source)
    if deadline is None or deadline > now_ms:
        return None
    late_ms = int(now_ms - deadline)
    return ErrorInfo(type=EXPIRED, message=f"the request's deadline passed {late_ms} ms before the model reached it; it was not computed")


def _fill(call: ModelCall, members: list[Prepared], out: dict[int, list[ItemResult] | ErrorInfo]) -> None:
    """One engine call for the inputs of ``members``; each member's slice of the results."""
    results = run_call(call, [x for p in members for _, x in p.inputs])
    at = 0
    for p in members:
        out[id(p)] = results[at : at + len(p.inputs)]
        at += len(p.inputs)


def _failure(prepared: Prepared, exc: Exception) -> ErrorInfo:
    if isinstance(exc, EngineError):  # validated upstream, so not expected here; still typed
        return ErrorInfo(type=exc.kind, message=exc.message, param=exc.param)
    log.error("inference failed for request %s", prepared.request_id, exc_info=exc)
    return ErrorInfo(type="internal_error", message=f"inference failed: {type(exc).__name__}: {exc}")


def _finished(prepared: Prepared, computed: list[ItemResult] | ErrorInfo | None) -> Finished:
    if prepared.error is not None:
        return Finished(prepared, error=prepared.error)
    if isinstance(computed, ErrorInfo):
        return Finished(prepared, error=computed)
    results = list(prepared.cached)
    for (i, _), result in zip(prepared.inputs, computed or ()):
        results[i] = result
    return Finished(prepared, tuple(results), fresh=tuple(i for i, _ in prepared.inputs))  # type: ignore[arg-type]


def infer(batch: list[Prepared], metrics: Metrics | None = None) -> list[Finished]:
    """Every request's outcome, in order. A failing engine call is retried request by request,
    so one bad request cannot fail its neighbours; a request that still fails gets an error.
    A request whose deadline has passed is answered ``expired`` without a forward."""
    groups: dict[ModelCall, list[Prepared]] = defaultdict(list)
    computed: dict[int, list[ItemResult] | ErrorInfo] = {}
    now_ms = time.time() * 1000
    for prepared in batch:
        if (late := _expired(prepared, now_ms)) is not None:
            computed[id(prepared)] = late
            if metrics is not None:
                metrics.expired(prepared.model or "unknown", prepared.task or "unknown")
        elif prepared.error is None and prepared.inputs:
            groups[prepared.call].append(prepared)  # type: ignore[index]
    for call, members in groups.items():
        start = time.perf_counter()
        try:
            _fill(call, members, computed)
        except Exception:  # noqa: BLE001 - isolate below
            for prepared in members:
                try:
                    _fill(call, [prepared], computed)
                except Exception as exc:  # noqa: BLE001 - a model failure becomes this request's error
                    computed[id(prepared)] = _failure(prepared, exc)
        if metrics is not None:
            model = members[0].model or "unknown"
            metrics.inference(model, time.perf_counter() - start)
            metrics.batch(model, sum(len(p.inputs) for p in members), sum(p.cost_tokens for p in members))
    return [_finished(p, computed.get(id(p))) for p in batch]


class MicroBatcher:
    """Queue + model thread. ``handoff(finished)`` receives each batch's outcomes in record order."""

    def __init__(
        self,
        handoff: Callable[[list[Finished]], None],
        *,
        max_batch_tokens: int,
        max_batch_requests: int,
        max_wait_ms: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.handoff = handoff
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_wait_s = max_wait_ms / 1000
        self.metrics = metrics
        self._queue: deque[Prepared] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="poolworker-model", daemon=True)

    def start(self) -> MicroBatcher:
        """Run the model loop on a thread of its own."""
        self._thread.start()
        return self

    def serve(self) -> None:
        """Run the model loop on the calling thread until ``stop``."""
        self._loop()

    def submit(self, prepared: list[Prepared]) -> None:
        if not prepared:
            return
        with self._cond:
            self._queue.extend(prepared)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted request has been handed off; True when that happened in time."""
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

    def _take_batch(self) -> list[Prepared] | None:
        """Block for the first request, then fill the batch until budget, size or deadline."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].enqueued_at + self.max_wait_s
            while True:
                size, tokens = self._fits()
                full = size < len(self._queue) or size >= self.max_batch_requests or tokens >= self.max_batch_tokens
                left = deadline - time.monotonic()
                if full or left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            batch = [self._queue.popleft() for _ in range(size)]
            self._busy = True
            return batch

    def _fits(self) -> tuple[int, int]:
        """How many queued requests the next batch takes, and their tokens."""
        size = tokens = 0
        for prepared in self._queue:
            cost = prepared.cost_tokens
            if size and (size >= self.max_batch_requests or tokens + cost > self.max_batch_tokens):
                break
            size += 1
            tokens += cost
        return size, tokens

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                if self.metrics is not None:
                    now = time.monotonic()
                    for prepared in batch:
                        self.metrics.queue_wait(now - prepared.enqueued_at)
                finished = infer(batch, self.metrics)
            except Exception:
                log.exception("batch failed unexpectedly")
                error = ErrorInfo(type="internal_error", message="the batch failed unexpectedly")
                finished = [Finished(p, error=p.error or error) for p in batch]
            try:
                self.handoff(finished)
            except Exception:
                log.exception("could not hand a batch to the publisher")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
