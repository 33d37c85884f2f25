"""``poolworker run --processes N``: N worker processes on one host, in one consumer group.

One worker process keeps one CPU core busy with Python (parse, plan, publish hold the GIL) while
torch uses the rest; on a many-core host, or when the model is cheap, the Python stages become
the ceiling. N processes lift it the way N hosts would: each child is a complete ``poolworker
run`` (``worker.serve``: its own consumer, producer, model copy, cache client and metrics
server), and Kafka's group protocol spreads the partitions over them. Nothing is shared between
children but the host (and the GPU, which each child uses as if it were alone).

The supervisor is deliberately small: start N children with the "spawn" context (a fork of a
process that imported torch is unsafe), split the CPU threads between them, forward SIGTERM and
wait for every drain, and, when a child dies unexpectedly, stop the others and exit non-zero.
A pool that silently keeps running at half size would hide a crash loop behind the healthy
metrics of the survivors; the orchestrator (systemd, Kubernetes) should restart the whole unit.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from multiprocessing import get_context
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from .config import WorkerSettings

log = logging.getLogger(__name__)

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
DRAIN_MARGIN_S = 15.0  # past the children's drain_timeout_s: leaving the group, closing clients
ORPHAN_CHECK_S = 1.0
LOG_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_env(processes: int, environ: Mapping[str, str], cpus: int) -> dict[str, str]:
    """The thread variables each child needs so N children do not oversubscribe the CPUs:
    ``max(1, cpus // N)`` each. A count the user pinned (either variable) is left alone, as the
    engine's ``configure_threads`` leaves it alone."""
    if any(environ.get(name) for name in THREAD_VARS):
        return {}
    per_child = str(max(1, cpus // processes))
    return dict.fromkeys(THREAD_VARS, per_child)


def child_settings(settings: WorkerSettings, index: int) -> WorkerSettings:
    """Child ``index``'s settings: one metrics port per process (``metrics_port + index``; 0
    stays 0 so each picks a free port and logs it; unset stays unset)."""
    port = settings.metrics_port
    if port:
        port += index
        if port > 65535:
            raise ValueError(f"--metrics-port {settings.metrics_port} + {index}: past 65535")
    return settings.model_copy(update={"metrics_port": port, "processes": 1})


def _watch_parent(parent_pid: int) -> None:
    """SIGTERM ourselves (a graceful drain) when the supervisor is gone, e.g. killed with -9:
    an orphaned child would otherwise serve on, unsupervised and unseen."""
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_CHECK_S)
    logging.getLogger(__name__).warning("supervisor (pid %d) is gone: draining", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)


def _child_main(settings: WorkerSettings, log_level: str, parent_pid: int) -> None:
    """A child's whole life: logging, the orphan watch, then ``serve`` (which installs its own
    SIGTERM/SIGINT handlers and drains on them)."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="orphan-watch", daemon=True).start()
    drained = threading.Event()
    atexit.register(_exit_now_if, drained)  # registered first, so it runs after every other exit handler
    # torch read OMP_NUM_THREADS at import, from the environment the parent gave us
    from .model_process import serve_with_early_model_process

    serve_with_early_model_process(settings)
    drained.set()


def _exit_now_if(drained: threading.Event) -> None:
    """After a clean drain there is nothing left to do, but tearing down an interpreter that
    loaded torch takes seconds (measured: 2-5 s on 2 busy cores), which a rolling restart waits
    out N times over. So a drained child ends here, after the exit handlers (multiprocessing's
    own clean-up included) and before the module teardown, as a forked child would; a child
    that failed takes the normal way out with its error status."""
    if drained.is_set():
        logging.shutdown()
        os._exit(0)


class Supervisor:
    """Starts ``settings.processes`` children and owns them until they have all exited."""

    def __init__(self, settings: WorkerSettings, log_level: str = "INFO") -> None:
        self.settings = settings
        self.log_level = log_level
        self.children: list[BaseProcess] = []
        self.stop_requested = threading.Event()

    def run(self) -> int:
        """Serve until a signal or a child's death; returns the exit status (0: every child
        drained and exited 0 after a requested stop)."""
        settings = self.settings
        per_child = [child_settings(settings, i) for i in range(settings.processes)]
        threads = thread_env(settings.processes, os.environ, usable_cpus())
        os.environ.update(threads)  # a spawned child starts with this environment, before torch loads
        log.info("starting %d worker processes, CPU threads each: %s", settings.processes,
                 threads.get("OMP_NUM_THREADS") or "as OMP_NUM_THREADS/MKL_NUM_THREADS were set")
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._start(per_child)
            return self._stop(died=self._watch())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame) -> None:
        if self.stop_requested.is_set():
            log.info("signal %s: still waiting for the workers to drain", signal.Signals(signum).name)
        else:
            log.info("signal %s: stopping %d workers", signal.Signals(signum).name, len(self.children))
        self.stop_requested.set()

    def _start(self, per_child: list[WorkerSettings]) -> None:
        ctx = get_context("spawn")
        for i, child in enumerate(per_child):
            if self.stop_requested.is_set():
                return
            process = ctx.Process(target=_child_main, args=(child, self.log_level, os.getpid()), name=f"worker-{i}")
            # SIGINT ignored across the exec: a Ctrl-C while the child still imports torch would
            # otherwise end it with a KeyboardInterrupt; serve() installs its own handler later.
            handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                process.start()
            finally:
                signal.signal(signal.SIGINT, handler)
            self.children.append(process)
            log.info("started %s (pid %d, metrics port %s)", process.name, process.pid,
                     {0: "any free", None: "none"}.get(child.metrics_port, child.metrics_port))

    def _watch(self) -> list[BaseProcess]:
        """Block until a stop is requested (returns []) or children exit on their own (returns them)."""
        while not self.stop_requested.is_set():
            wait([p.sentinel for p in self.children], timeout=0.5)
            dead = [p for p in self.children if p.exitcode is not None]
            if dead and not self.stop_requested.is_set():
                for p in dead:
                    log.error("%s (pid %d) exited unexpectedly with code %s: stopping the other workers",
                              p.name, p.pid, p.exitcode)
                return dead
        return []

    def _stop(self, died: list[BaseProcess]) -> int:
        """SIGTERM every child still running, wait for its drain (SIGKILL past the deadline);
        the status is 0 only if nothing died on its own and every child drained cleanly."""
        for p in self.children:
            if p.exitcode is None:
                os.kill(p.pid, signal.SIGTERM)
        limit = self.settings.drain_timeout_s + DRAIN_MARGIN_S
        deadline = time.monotonic() + limit
        failed = bool(died)
        for p in self.children:
            p.join(max(0.0, deadline - time.monotonic()))
            if p in died:
                continue
            if p.exitcode is None:
                log.error("%s (pid %d) did not drain within %.0f s: killing it", p.name, p.pid, limit)
                p.kill()
                p.join()
                failed = True
            elif p.exitcode == -signal.SIGTERM:
                log.info("%s stopped before it was serving", p.name)  # SIGTERM came before serve() took it over
            elif p.exitcode != 0:
                log.error("%s exited with code %s", p.name, p.exitcode)
                failed = True
            else:
                log.info("%s drained and exited", p.name)
        return 1 if failed else 0


def run_processes(settings: WorkerSettings, log_level: str = "INFO") -> int:
    """``poolworker run`` with ``settings.processes`` > 1; returns the exit status."""
    return Supervisor(settings, log_level).run()
