"""Wires one worker process: settings → engines, cache, metrics server, consumer loop.

``serve`` is what ``poolworker run`` calls; SIGTERM/SIGINT start a graceful drain.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Mapping

from . import __version__
from .cache import ResultCache, make_cache
from .config import WorkerSettings, parse_model_options, parse_model_specs
from .consumers.loop import WorkerLoop
from .engine import Engine
from .metrics import Metrics, MetricsServer
from .model_process import ModelProcess, start_model_process
from .plugins.interface import IOProcessor

log = logging.getLogger(__name__)


def load_engines(settings: WorkerSettings, *, weights: bool = True) -> dict[str, Engine]:
    """Every ``--model``, loaded once, under the name requests route by (``weights=False``:
    everything but the weights, for a worker process whose model process runs the forwards)."""
    engines = {}
    specs = parse_model_specs(settings.models)
    overrides = parse_model_options(settings.hf_overrides, specs, "--hf-overrides")
    for name, path in specs.items():
        log.info("loading model %s from %s", name, path)
        engines[name] = Engine(path, device=settings.device, dtype=settings.dtype, max_batch_tokens=settings.max_batch_tokens,
                               trust_remote_code=settings.trust_remote_code, allow_pickle=settings.allow_pickle,
                               hf_overrides=overrides.get(name), weights=weights)
    return engines


def load_processors(settings: WorkerSettings, engines: Mapping[str, Engine]) -> dict[str, IOProcessor]:
    """Every ``--io-processor MODEL=PLUGIN``, loaded once at start (a missing plugin stops the
    start, naming the installed ones)."""
    from .plugins.offline import context_for
    from .plugins.registry import load_processor

    specs = parse_model_options(settings.io_processors, engines, "--io-processor")
    return {model: load_processor(plugin, context_for(engines[model], model)) for model, plugin in specs.items()}


class Worker:
    """A whole worker; ``run(stop)`` blocks until ``stop`` is set and the drain has finished."""

    def __init__(self, settings: WorkerSettings, *, engines: Mapping[str, Engine] | None = None,
                 cache: ResultCache | None = None, metrics: Metrics | None = None, dev: bool = False,
                 model_process: ModelProcess | None = None) -> None:
        if engines is not None and model_process is not None:
            raise ValueError("engines passed in are served on a thread of this process; a model_process cannot run them")
        self.settings = settings
        self.metrics = metrics or Metrics()
        # Engines passed in (tests, benchmarks) are served on a thread: a model process loads its
        # own copy from the settings, which only holds when the worker loaded them the same way.
        # ``model_process``: one ``start_model_process`` spawned already (before torch was imported).
        self.model_process = (model_process or start_model_process(settings)) if engines is None else None
        self.engines = dict(engines) if engines is not None else self._load(settings)
        self.cache = cache or make_cache(settings.redis_url, dev=dev, ttl_s=settings.cache_ttl_s, metrics=self.metrics)
        self.metrics.info(version=__version__, models=",".join(sorted(self.engines)), transport=settings.transport)
        self.server: MetricsServer | None = None
        self.metrics_port: int | None = None
        self.processors = load_processors(settings, self.engines)
        self.loop = WorkerLoop(settings, self.engines, self.cache, self.metrics, processors=self.processors,
                               forwards=self.model_process)

    def _load(self, settings: WorkerSettings) -> dict[str, Engine]:
        """The worker's own engines (tokenizers, option checks), loaded while the model process
        loads its copy; then the two are checked to hold the same models. With a model process
        the worker's engines hold no weights: one copy per worker, on the device only once."""
        try:
            engines = load_engines(settings, weights=self.model_process is None)
            if self.model_process is not None:
                self.model_process.wait_ready({name: engine.model.fingerprint for name, engine in engines.items()})
        except BaseException:
            if self.model_process is not None:
                self.model_process.close()
            raise
        return engines

    def run(self, stop: threading.Event) -> None:
        freeze_long_lived_objects()
        if self.settings.metrics_port is not None:
            self.server = MetricsServer(self.metrics, self.settings.metrics_host, self.settings.metrics_port)
            self.metrics_port = self.server.start()
            log.info("metrics on :%d (/metrics, /healthz, /readyz)", self.metrics_port)
        try:
            self.loop.run(stop)
        finally:
            if self.model_process is not None:
                self.model_process.close()
            self.cache.close()
            if self.server is not None:
                self.server.stop()


# The collector's thresholds once serving (CPython's defaults: 700, 10, 10). Serving allocates a
# few dozen tracked objects per request and frees nearly all of them by reference counting, so a
# young-generation collection every 700 allocations mostly walks the requests still in flight:
# measured on a near-free model, ~12% of the worker process's interpreter-lock time went to
# ~500 collections a second. Every 50,000 allocations, the requests in flight are walked ~70
# times less often; cycles (rare here) wait a little longer to be freed.
SERVING_GC_THRESHOLDS = (50_000, 20, 100)


def freeze_long_lived_objects() -> None:
    """Move everything alive now (torch, transformers, the models: millions of objects) out of
    the garbage collector's reach, and collect less often from here on
    (``SERVING_GC_THRESHOLDS``). Otherwise every full collection walks them all: on a
    near-free model those 0.2-0.5 s pauses were the longest gaps between results."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)


def serve(settings: WorkerSettings, model_process: ModelProcess | None = None) -> None:
    """Run a worker in the foreground until SIGTERM or SIGINT (``model_process``: spawned
    already by ``start_model_process``, or None to spawn it here if the settings want one)."""
    log.info("starting with %s", settings.redacted())
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %s: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Worker(settings, model_process=model_process).run(stop)
