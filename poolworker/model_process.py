"""The model stage's forward passes in a process of their own, beside the worker process.

Why: a forward pass gives up the interpreter lock inside every torch op and must take it back
after each one. In one process it competes for that lock with the receive and publish threads
(parsing, tokenizing, the Kafka client — all Python); measured with ``bench/gil_contention.py``
on a near-free model, the model stage ran 18-21 µs a text alone and several hundred to several
thousand beside one busy Python thread. In a process of its own it keeps its own lock.

Layout: the worker process keeps everything else — the transport, receive, prepare (it still
loads the models, for their tokenizers and option checks), publish and every at-least-once
mechanism — and spawns one model process that loads the same models from the same settings.
At start the two compare each model's fingerprint (weights, config, dtype), so a worker never
publishes vectors from other weights than it planned for. Each batch's ``ModelWork`` (token ids;
the engine unbound, bound again there by model name) goes down one pipe; the model process runs
``batching.compute`` on it and sends the results (float32 arrays) back up another, in order. Up
to ``DEPTH`` batches are in flight, so the model does not wait for the worker to plan the next.

Failure: the model process never outlives its worker (it ends when the pipe from the worker
closes, so a worker killed with -9 takes it along) and ignores SIGINT and SIGTERM (its worker
drains it; a Ctrl-C or a SIGTERM sent to the whole process group must not end the forwards under
a drain). If it dies, every batch in flight fails with ``ModelProcessDied``: the micro-batcher
stops, nothing in flight is acknowledged, the worker commits what was answered and exits
non-zero, and the unanswered records are delivered again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from .config import WorkerSettings

if TYPE_CHECKING:  # imported where used: spawning must not wait for torch (see start_model_process)
    from .batching import Computed, Done, ModelWork

log = logging.getLogger(__name__)

DEPTH = 2  # batches in flight: one computing, one waiting in the pipe
LOG_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"


def start_model_process(settings: WorkerSettings) -> ModelProcess | None:
    """The model process for a worker about to start, spawned now — before this process imports
    torch, so that the two processes import and load at the same time (measured on 2 cores:
    ready in 14-18 s when the spawn waited for this process's own imports, ~9 s without a model
    process); None when ``settings.model_process`` is off."""
    return ModelProcess(settings).spawn() if settings.model_process else None


def serve_with_early_model_process(settings: WorkerSettings) -> None:
    """``worker.serve`` in the foreground, its model process spawned first
    (``start_model_process``): how ``poolworker run`` and each ``--processes`` child start."""
    early = start_model_process(settings)
    from .worker import serve  # imports torch: only after the spawn

    serve(settings, model_process=early)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What the model process's environment adds to the worker's: OpenMP threads that sleep
    when their work is done (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a wait policy or
    spin count. By default GNU OpenMP keeps its threads spinning for a while after each parallel
    region: measured on 2 cores with a near-free model, the model process then burned a whole
    core spinning between small forwards — the core the worker process needed for its Python."""
    if environ.get("OMP_WAIT_POLICY") or environ.get("GOMP_SPINCOUNT"):
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


@contextmanager
def temporary_environment(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in ``os.environ`` for the ``with`` block, then the previous values back (a child
    spawned inside starts with this environment)."""
    previous = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ModelProcessDied(RuntimeError):
    """The model process ended while the worker needed it."""


class ModelProcess:
    """The worker side of the model process: ``spawn``, then ``wait_ready``, then ``run`` as the
    micro-batcher's ``Forwards``; ``close`` at the end of the drain."""

    def __init__(self, settings: WorkerSettings, depth: int = DEPTH) -> None:
        self.settings = settings
        self.failure: ModelProcessDied | None = None
        self._slots = threading.Semaphore(depth)
        self._pending: deque[Done] = deque()  # one per batch sent, in order; the reader pops after answering
        self._answering = False  # the reader is calling the oldest batch's callback (under _lock)
        self._lock = threading.Lock()
        self._closing = False
        self._reader: threading.Thread | None = None

    def spawn(self) -> ModelProcess:
        """Start the model process; it loads its models while the worker loads its own."""
        ctx = get_context("spawn")  # a fork of a process that imported torch is unsafe
        down_end, self._down = ctx.Pipe(duplex=False)
        self._up, up_end = ctx.Pipe(duplex=False)
        level = logging.getLogger().getEffectiveLevel()
        self.process = ctx.Process(target=_serve, args=(self.settings, down_end, up_end, level),
                                   name="poolworker-model", daemon=True)
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C during its imports
        try:
            with temporary_environment(child_environment(os.environ)):
                self.process.start()
        finally:
            signal.signal(signal.SIGINT, handler)
        down_end.close()  # the child's ends: only the child may hold them, or its death goes unseen
        up_end.close()
        log.info("model process started (pid %d)", self.process.pid)
        return self

    def wait_ready(self, fingerprints: dict[str, str]) -> None:
        """Block until the model process has loaded its models; refuse to go on unless they are
        the worker's own (``fingerprints``: model name → ``LoadedModel.fingerprint``)."""
        while not self._up.poll(0.5):
            if not self.process.is_alive():
                raise ModelProcessDied(f"the model process exited with code {self.process.exitcode} before it loaded "
                                       "the models (its log above says why)")
        try:
            kind, detail = self._up.recv()
        except (EOFError, OSError) as exc:
            raise ModelProcessDied("the model process ended before it loaded the models") from exc
        if kind != "ready":
            raise ModelProcessDied(f"the model process could not load the models: {detail}")
        if detail != fingerprints:
            raise ModelProcessDied(f"the model process loaded other models than the worker: {detail} != {fingerprints}")
        self._reader = threading.Thread(target=self._read, name="poolworker-model-replies", daemon=True)
        self._reader.start()
        log.info("model process ready (pid %d): %s", self.process.pid, ", ".join(sorted(fingerprints)))

    def run(self, work: list[ModelWork], done: Done) -> None:
        """Send one batch's engine calls; ``done`` gets their results on the reply thread, after
        every earlier batch's. Blocks while ``DEPTH`` batches are in flight."""
        with self._lock:
            if self.failure is not None:
                raise self.failure
            if not work and not self._pending:  # nothing to compute and nothing to wait for
                done([])
                return
        self._slots.acquire()
        with self._lock:
            if self.failure is not None:
                self._slots.release()
                raise self.failure
            self._pending.append(done)
        try:
            self._down.send([replace(w, call=replace(w.call, engine=None)) for w in work])
        except (OSError, ValueError) as exc:  # a closed pipe: the process is gone
            self._died(exc)

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the model process to end (after the worker's drain) and wait for it."""
        self._closing = True
        try:
            self._down.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout_s)
        if self.process.is_alive():
            log.warning("model process (pid %d) did not end within %.0f s: killing it", self.process.pid, timeout_s)
            self.process.kill()
            self.process.join()
        if self._reader is not None:
            self._reader.join(timeout_s)
        self._down.close()
        self._up.close()

    def _read(self) -> None:
        """The reply thread: each reply answers the oldest batch in flight."""
        while True:
            try:
                computed = [_unpack(packed) for packed in self._up.recv()]
            except (EOFError, OSError) as exc:
                if not self._closing:
                    self._died(exc)
                return
            with self._lock:
                if self.failure is not None:  # a failed send already answered every batch in flight
                    return
                done = self._pending[0]  # stays queued while answered: a later empty batch must wait for it
                self._answering = True
            try:
                done(computed)
            finally:
                with self._lock:
                    self._answering = False
                    if self._pending and self._pending[0] is done:  # else _died cleared the queue meanwhile
                        self._pending.popleft()
                self._slots.release()

    def _died(self, exc: BaseException) -> None:
        """Fail every batch in flight, except one the reply thread is answering with its
        results right now (a send that failed meanwhile must not answer it a second time)."""
        self.process.join(1.0)
        failure = ModelProcessDied(f"the model process (pid {self.process.pid}) ended with code {self.process.exitcode}")
        failure.__cause__ = exc
        with self._lock:
            if self.failure is not None:
                return
            self.failure = failure
            pending = list(self._pending)[1:] if self._answering else list(self._pending)
            self._pending.clear()
        for done in pending:
            done(failure)
        self._slots.release()  # a run() waiting for a slot sees the failure


def _pack(computed: Computed) -> tuple:
    """One work's results for the pipe. Vectors of one shape (embed, classify: the common
    case) travel as one float32 matrix: pickling an array per item cost ~10 µs an item, split
    between the two processes; anything else (errors, token matrices, scores, several tasks)
    goes as it is."""
    import numpy as np

    outcomes, seconds = computed
    if outcomes and all(type(o) is list for o in outcomes):
        rows = [r for o in outcomes for r in o]  # type: ignore[union-attr]
        if rows and all(type(r.data) is np.ndarray and r.data.ndim == 1 and r.data.dtype == np.float32 for r in rows):
            shapes = {r.data.shape for r in rows}
            if len(shapes) == 1:
                matrix = np.stack([r.data for r in rows])
                return ("matrix", matrix, [r.num_tokens for r in rows], [len(o) for o in outcomes], seconds)  # type: ignore[arg-type]
    return ("as-is", outcomes, seconds)


def _unpack(packed: tuple) -> Computed:
    from .tasks import ItemResult

    if packed[0] == "as-is":
        return packed[1], packed[2]
    _, matrix, num_tokens, sizes, seconds = packed
    rows = [ItemResult(data, n) for data, n in zip(matrix, num_tokens)]
    outcomes: list = []
    at = 0
    for size in sizes:
        outcomes.append(rows[at : at + size])
        at += size
    return outcomes, seconds


def _serve(settings: WorkerSettings, down: Connection, up: Connection, level: int) -> None:
    """The model process's whole life: load the models, answer batches until the worker closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=level, format=LOG_FORMAT)
    try:
        from .batching import compute
        from .worker import freeze_long_lived_objects, load_engines

        engines = load_engines(settings)
    except Exception as exc:  # reported to the worker, which stops with it
        log.exception("could not load the models")
        up.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    freeze_long_lived_objects()  # as the worker does: full collections would walk torch's millions of objects
    up.send(("ready", {name: engine.model.fingerprint for name, engine in engines.items()}))
    while True:
        try:
            work: list[ModelWork] | None = down.recv()
        except (EOFError, OSError):  # the worker is gone
            return
        if work is None:
            return
        up.send([_pack(compute(replace(w, call=replace(w.call, engine=engines[w.model])))) for w in work])
