"""The infer stage: one model loop micro-batches prepared requests under a token budget and
runs forward passes on their token ids — nothing else (no parsing, no tokenizing, no I/O) —
on its own thread or, through ``Forwards``, in a model process of its own (``model_process``).

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
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from .engine.errors import EngineError
from .metrics import Metrics
from .protocol import DEADLINE_HEADER, EXPIRED, ErrorInfo, all_finite
from .tasks import ItemResult, ModelCall, ModelInput, run_call
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


@dataclass(frozen=True, slots=True)
class ModelWork:
    """One engine call of a batch: the inputs of every member request that shares ``call``, as
    the forward passes need them and nothing more (no sources, no bodies), so that the same value
    can run on this thread or be sent to a model process (``model_process``) with the engine
    unbound and bound again there by ``model``."""

    model: str
    call: ModelCall
    members: tuple[tuple[ModelInput, ...], ...]
    request_ids: tuple[str, ...]


# A member's outcome: its items' results in order, or the error that answers the whole request.
Outcome = list[ItemResult] | ErrorInfo
# One ModelWork's outcomes (one per member) and the seconds its engine call took.
Computed = tuple[list[Outcome], float]
Done = Callable[[list[Computed] | BaseException], None]


def compute(work: ModelWork) -> Computed:
    """One engine call for the inputs of every member; each member's slice of the results. A
    failing call is retried member by member, so one bad request cannot fail its neighbours; a
    member that still fails gets an error."""
    start = time.perf_counter()
    try:
        results = run_call(work.call, [x for inputs in work.members for x in inputs])
        outcomes: list[Outcome] = []
        at = 0
        for inputs in work.members:
            outcomes.append(results[at : at + len(inputs)])
            at += len(inputs)
    except Exception:  # noqa: BLE001 - isolate below
        outcomes = []
        for request_id, inputs in zip(work.request_ids, work.members):
            try:
                outcomes.append(run_call(work.call, list(inputs)))
            except Exception as exc:  # noqa: BLE001 - a model failure becomes this request's error
                outcomes.append(_failure(request_id, exc))
    outcomes = [_finite_or_error(request_id, o) for request_id, o in zip(work.request_ids, outcomes)]
    return outcomes, time.perf_counter() - start


def _finite_or_error(request_id: str, outcome: Outcome) -> Outcome:
    """A NaN or an infinity from the model answers the request with an error (and is never
    cached). Checked here, once per request, so the publisher need not walk the result again:
    ``encode_message(..., checked=True)``."""
    if isinstance(outcome, ErrorInfo) or all_finite([r.data for r in outcome]):
        return outcome
    log.error("the model produced a NaN or an infinity for request %s", request_id)
    return ErrorInfo(type="internal_error", message="the model produced a NaN or an infinity for this input")


def _failure(request_id: str, exc: Exception) -> ErrorInfo:
    if isinstance(exc, EngineError):  # validated upstream, so not expected here; still typed
        return ErrorInfo(type=exc.kind, message=exc.message, param=exc.param)
    log.error("inference failed for request %s", request_id, exc_info=exc)
    return ErrorInfo(type="internal_error", message=f"inference failed: {type(exc).__name__}: {exc}")


class Forwards(Protocol):
    """Where a batch's engine calls run. ``run`` hands ``done`` each work's ``Computed`` in
    order — or the exception that ended the forwards for good (a dead model process) — exactly
    once per call and in the order of the calls, on whichever thread finished them."""

    def run(self, work: list[ModelWork], done: Done) -> None: ...


class LocalForwards:
    """The engine calls on the calling thread (``--no-model-process``; engines handed to a
    ``Worker`` in tests and benchmarks)."""

    def run(self, work: list[ModelWork], done: Done) -> None:
        done([compute(w) for w in work])


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """A batch on its way through the forwards: its engine calls and who answers from them."""

    batch: list[Prepared]
    work: list[ModelWork]
    members: list[list[Prepared]]  # the requests of each work, in its order
    early: dict[int, ErrorInfo]  # requests answered without a forward (deadline passed), by id


def plan_batch(batch: list[Prepared], metrics: Metrics | None = None) -> BatchPlan:
    """Group the requests that need a forward by engine call; answer those whose deadline has
    passed with ``expired``."""
    groups: dict[ModelCall, list[Prepared]] = defaultdict(list)
    early: dict[int, ErrorInfo] = {}
    now_ms = time.time() * 1000
    for prepared in batch:
        if (late := _expired(prepared, now_ms)) is not None:
            early[id(prepared)] = late
            if metrics is not None:
                metrics.expired(prepared.model or "unknown", prepared.task or "unknown")
        elif prepared.error is None and prepared.inputs:
            groups[prepared.call].append(prepared)  # type: ignore[index]
    work = [ModelWork(members[0].model or "", call, tuple(tuple(x for _, x in p.inputs) for p in members),
                      tuple(p.request_id for p in members)) for call, members in groups.items()]
    return BatchPlan(batch, work, list(groups.values()), early)


def finish_batch(plan: BatchPlan, computed: list[Computed], metrics: Metrics | None = None) -> list[Finished]:
    """Every request's outcome, in record order, from the forwards' ``computed``."""
    outcome: dict[int, Outcome] = dict(plan.early)
    for members, (outcomes, seconds) in zip(plan.members, computed):
        for prepared, result in zip(members, outcomes):
            outcome[id(prepared)] = result
        if metrics is not None:
            model = members[0].model or "unknown"
            metrics.inference(model, seconds)
            metrics.batch(model, sum(len(p.inputs) for p in members), sum(p.cost_tokens for p in members))
    return [_finished(p, outcome.get(id(p))) for p in plan.batch]


def _finished(prepared: Prepared, computed: Outcome | None) -> Finished:
    if prepared.error is not None:
        return Finished(prepared, error=prepared.error)
    if isinstance(computed, ErrorInfo):
        return Finished(prepared, error=computed)
    results = list(prepared.cached)
    for (i, _), result in zip(prepared.inputs, computed or ()):
        results[i] = result
    return Finished(prepared, tuple(results), fresh=tuple(i for i, _ in prepared.inputs))  # type: ignore[arg-type]


def infer(batch: list[Prepared], metrics: Metrics | None = None) -> list[Finished]:
    """Every request's outcome, in order, computed on this thread (``plan_batch``, the engine
    calls, ``finish_batch``)."""
    plan = plan_batch(batch, metrics)
    return finish_batch(plan, [compute(w) for w in plan.work], metrics)


class MicroBatcher:
    """Queue + model loop. ``handoff(finished)`` receives each batch's outcomes in record order.

    The loop takes a batch, plans it and gives its engine calls to ``forwards``; with a model
    process (``model_process.ModelProcess``) it takes the next batch while the previous one is
    computed there, and the outcomes come back, in order, on the process's reply thread. A
    ``failure`` of the forwards (the model process died) stops the loop: nothing more is handed
    off, so the records in flight stay unacknowledged and are delivered again."""

    def __init__(
        self,
        handoff: Callable[[list[Finished]], None],
        *,
        max_batch_tokens: int,
        max_batch_requests: int,
        max_wait_ms: int,
        metrics: Metrics | None = None,
        forwards: Forwards | None = None,
    ) -> None:
        self.handoff = handoff
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_wait_s = max_wait_ms / 1000
        self.metrics = metrics
        self.forwards = forwards or LocalForwards()
        self.failure: BaseException | None = None
        # (when it was queued, the request): the wait for a batch to fill runs from the first's arrival
        self._queue: deque[tuple[float, Prepared]] = deque()
        self._cond = threading.Condition()
        self._inflight = 0  # batches taken and not yet handed off
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
        now = time.monotonic()
        with self._cond:
            self._queue.extend((now, p) for p in prepared)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._inflight

    def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted request has been handed off; True when that happened in
        time (never after a failure of the forwards: what was in flight is lost)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self._queue or self._inflight) and self.failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return self.failure is None

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _take_batch(self) -> list[Prepared] | None:
        """Block for the first request, then fill the batch until budget, size or deadline; each
        request's wait in the queue goes to the queue-wait metric."""
        with self._cond:
            while not self._queue and not self._stopping and self.failure is None:
                self._cond.wait()
            if not self._queue or self.failure is not None:
                return None
            deadline = self._queue[0][0] + self.max_wait_s
            while True:
                size, tokens = self._fits()
                full = size < len(self._queue) or size >= self.max_batch_requests or tokens >= self.max_batch_tokens
                left = deadline - time.monotonic()
                if full or left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            queued = [self._queue.popleft() for _ in range(size)]
            self._inflight += 1
        if self.metrics is not None:
            now = time.monotonic()
            for since, _ in queued:
                self.metrics.queue_wait(now - since)
        return [prepared for _, prepared in queued]

    def _fits(self) -> tuple[int, int]:
        """How many queued requests the next batch takes, and their tokens."""
        size = tokens = 0
        for _, prepared in self._queue:
            cost = prepared.cost_tokens
            if size and (size >= self.max_batch_requests or tokens + cost > self.max_batch_tokens):
                break
            size += 1
            tokens += cost
        return size, tokens

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                plan = plan_batch(batch, self.metrics)
            except Exception:
                log.exception("batch failed unexpectedly")
                self._hand_off(_failed(batch))
                continue
            try:
                self.forwards.run(plan.work, partial(self._computed, plan))
            except Exception as exc:  # noqa: BLE001 - the forwards are gone (a dead model process)
                self._fail(exc)

    def _computed(self, plan: BatchPlan, computed: list[Computed] | BaseException) -> None:
        if isinstance(computed, BaseException):
            self._fail(computed)
            return
        try:
            finished = finish_batch(plan, computed, self.metrics)
        except Exception:
            log.exception("batch failed unexpectedly")
            finished = _failed(plan.batch)
        self._hand_off(finished)

    def _hand_off(self, finished: list[Finished]) -> None:
        try:
            self.handoff(finished)
        except Exception:
            log.exception("could not hand a batch to the publisher")
        finally:
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self.failure is None:
                log.error("the model stage failed: %s; stopping, the records in flight stay unacknowledged", exc)
                self.failure = exc
            self._cond.notify_all()


def _failed(batch: list[Prepared]) -> list[Finished]:
    error = ErrorInfo(type="internal_error", message="the batch failed unexpectedly")
    return [Finished(p, error=p.error or error) for p in batch]
