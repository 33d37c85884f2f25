"""Prometheus metrics and health probes for the worker.

Every metric lives in a per-instance ``CollectorRegistry`` rather than prometheus-client's global
one, so tests (and an embedding process) can build several ``Metrics`` without name clashes or
shared state. ``MetricsServer`` serves ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon
thread so a stuck consumer loop cannot block a scrape — which is exactly when the probes matter.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ["Metrics", "MetricsServer"]

# Latency from 1 ms (a cache-served request) to 60 s (a large batch queued behind others).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# Powers of two: batchers cap sizes at powers of two, so bucket edges land on the caps.
BATCH_SIZE_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(13))  # 1 .. 4096
BATCH_TOKEN_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(4, 18))  # 16 .. 131072
IGNORED_FIELD_NAMES = 100  # distinct ignored-field names counted by name; later ones as IGNORED_FIELD_OTHER
IGNORED_FIELD_OTHER = "other"
ANSWERED_BATCH = 256  # ``Metrics.answered`` calls queued before they are applied (a scrape applies them too)


class _LatencyHistogram:
    """A labelled Prometheus histogram over ``LATENCY_BUCKETS`` kept as plain counts, for the
    per-request end-to-end latency: ``observe_many`` takes a whole bulk of ``answered`` calls
    under one lock, where prometheus-client's ``Histogram`` takes two locks per observation
    (its bucket and its sum). Exposed exactly as a ``Histogram`` is: cumulative ``_bucket``
    series with ``le``, ``_count`` and ``_sum``."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._bounds = list(LATENCY_BUCKETS)
        self._les = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}  # labels → (counts per bucket, [sum])

    def observe_many(self, observations: list[tuple[tuple[str, ...], float]]) -> None:
        with self._lock:
            for labels, value in observations:
                series = self._series.get(labels)
                if series is None:
                    series = self._series[labels] = ([0] * len(self._les), [0.0])
                series[0][bisect_left(self._bounds, value)] += 1  # the first bucket whose bound is >= value
                series[1][0] += value

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))

    def describe(self) -> Iterator:
        yield self._family()

    def collect(self) -> Iterator:
        family = self._family()
        with self._lock:
            snapshot = [(labels, list(counts), total[0]) for labels, (counts, total) in self._series.items()]
        for labels, counts, total in snapshot:
            family.add_metric(list(labels), list(zip(self._les, accumulate(counts))), total)
        yield family


class _AnsweredCollector:
    """Reports the per-request metrics, after applying the ``answered`` calls still queued:
    whoever reads the registry (a scrape, a test) sees every request acked so far."""

    def __init__(self, metrics: Metrics, collectors: tuple) -> None:
        self.metrics = metrics
        self.collectors = collectors

    def describe(self) -> Iterator:
        for collector in self.collectors:
            yield from collector.describe()

    def collect(self) -> Iterator:
        self.metrics.apply_answered()
        for collector in self.collectors:
            yield from collector.collect()


class Metrics:
    """The worker's metrics plus the heartbeat/readiness state the probes report.

    Methods are thin, typed wrappers so call sites name *what happened* and never touch
    prometheus-client objects or label spellings directly. It also satisfies the cache's
    ``CacheMetrics`` protocol (``hit``, ``miss``, ``error``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry: CollectorRegistry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        # The per-request metrics are registered through ``_AnsweredCollector``, which applies
        # the queued ``answered`` calls before it reports them (see ``answered``).
        self._requests = Counter(
            "poolworker_requests", "Requests finished, by outcome (ok|error|dlq).",
            ["model", "task", "status"], registry=None,
        )
        self._items = Counter(
            "poolworker_items", "Input items (texts, pairs) processed.", ["model", "task"], registry=None,
        )
        self._tokens = Counter(
            "poolworker_tokens", "Tokens run through the model.", ["model", "task"], registry=None,
        )
        self._dlq = Counter(
            "poolworker_dlq", "Records sent to the dead-letter topic, by reason.", ["reason"], registry=r,
        )
        self._ignored_fields = Counter(
            "poolworker_ignored_fields", "Unknown request fields ignored (vLLM ignores them too), by field name.",
            ["field"], registry=r,
        )
        self._expired = Counter(
            "poolworker_expired_requests", "Requests dropped unanswered by a model because their deadline had passed.",
            ["model", "task"], registry=r,
        )
        self._cache_hits = Counter("poolworker_cache_hits", "Result-cache hits.", registry=r)
        self._cache_misses = Counter("poolworker_cache_misses", "Result-cache misses.", registry=r)
        self._cache_errors = Counter(
            "poolworker_cache_errors", "Result-cache operations that failed.", registry=r,
        )

        self._batch_size = Histogram(
            "poolworker_batch_size", "Items per model batch.", ["model"],
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self._batch_tokens = Histogram(
            "poolworker_batch_tokens", "Tokens per model batch.", ["model"],
            buckets=BATCH_TOKEN_BUCKETS, registry=r,
        )
        self._queue_wait = Histogram(
            "poolworker_queue_wait_seconds", "Time a request waited before its batch ran.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self._inference = Histogram(
            "poolworker_inference_seconds", "Model forward time per batch.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self._end_to_end = _LatencyHistogram(
            "poolworker_end_to_end_seconds", "Kafka record timestamp to result acknowledgement.", ("model", "task"),
        )
        self._answered: deque[tuple[str, str, str, int, int, float | None]] = deque()
        self._ignored_names: set[str] = set()  # the ignored-field names that have a series (see ignored_field)
        r.register(_AnsweredCollector(self, (self._requests, self._items, self._tokens, self._end_to_end)))

        self._lag = Gauge(
            "poolworker_consumer_lag", "Records behind the partition's high watermark.",
            ["topic", "partition"], registry=r,
        )
        self._inflight = Gauge("poolworker_inflight_requests", "Requests accepted, not yet acked.", registry=r)
        self._paused = Gauge(
            "poolworker_paused_partitions", "1 while consuming is paused for backpressure (on Kafka every assigned partition is).", registry=r,
        )
        self._cache_up = Gauge("poolworker_cache_up", "1 when the result cache is reachable.", registry=r)
        # Info appends ``_info``: exposed as ``poolworker_build_info{...} 1``.
        self._build = Info("poolworker_build", "Build and deployment details.", registry=r)

        # Labelled children of the per-request metrics, by (metric, labels): ``labels()`` checks and
        # locks on every call, and these are updated several times per request (see ``_child``).
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}

        # Health state. Monotonic so wall-clock jumps (NTP) cannot fake a stall or hide one.
        self._lock = threading.Lock()
        self._last_heartbeat: float | None = None
        self._ready = False

    def _child(self, metric, *labels: str):
        """``metric.labels(*labels)``, looked up once per label set: on a near-free model the
        label checks were a visible share of the publisher's time per request. Only metrics whose
        series are never removed go through here (the lag gauge's are, on a revoke)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- counters --------------------------------------------------------------------------
    def answered(self, model: str, task: str, status: str, items: int, tokens: int, end_to_end_s: float | None) -> None:
        """One request answered (its result acked): ``request``, ``items``, ``tokens`` and
        ``end_to_end`` at once, queued and applied in bulk — every ``ANSWERED_BATCH`` calls, and
        before any scrape, so ``/metrics`` never lags. Called once per request on the
        producer's acknowledgement thread: four metric updates there, each taking a lock, were a
        visible share of the worker's interpreter-lock time on a near-free model."""
        self._answered.append((model, task, status, items, tokens, end_to_end_s))
        if len(self._answered) >= ANSWERED_BATCH:
            self.apply_answered()

    def apply_answered(self) -> None:
        """Apply the queued ``answered`` calls: one increment per label set and counter, one
        observation per latency. Safe from any thread (the queue is popped item by item)."""
        counts: dict[tuple[str, str, str], int] = {}
        work: dict[tuple[str, str], list[int]] = {}
        latencies: list[tuple[tuple[str, str], float]] = []
        queue = self._answered
        while True:
            try:
                model, task, status, items, tokens, seconds = queue.popleft()
            except IndexError:
                break
            counts[model, task, status] = counts.get((model, task, status), 0) + 1
            if status == "ok":
                done = work.setdefault((model, task), [0, 0])
                done[0] += items
                done[1] += tokens
            if seconds is not None:
                latencies.append(((model, task), seconds))
        for (model, task, status), n in counts.items():
            self.request(model, task, status, n)
        for (model, task), (items, tokens) in work.items():
            self.items(model, task, items)
            self.tokens(model, task, tokens)
        self._end_to_end.observe_many(latencies)

    def request(self, model: str, task: str, status: str, n: int = 1) -> None:
        self._child(self._requests, model, task, status).inc(n)

    def items(self, model: str, task: str, n: int) -> None:
        self._child(self._items, model, task).inc(n)

    def tokens(self, model: str, task: str, n: int) -> None:
        self._child(self._tokens, model, task).inc(n)

    def dlq(self, reason: str) -> None:
        self._dlq.labels(reason).inc()

    def ignored_field(self, name: str) -> None:
        """An unknown field a request carried (answered with a warning naming it). The names
        are the callers': the first ``IGNORED_FIELD_NAMES`` distinct ones get a series each, any
        later one counts under ``other`` — a client sending invented names cannot grow the
        worker's series without bound."""
        name = name[:64]
        if name not in self._ignored_names:
            if len(self._ignored_names) >= IGNORED_FIELD_NAMES:
                name = IGNORED_FIELD_OTHER
            else:
                self._ignored_names.add(name)
        self._ignored_fields.labels(name).inc()

    def expired(self, model: str, task: str) -> None:
        """A request whose deadline passed before its forward pass (answered ``expired``)."""
        self._expired.labels(model, task).inc()

    # -- cache (CacheMetrics protocol) -----------------------------------------------------
    def hit(self, n: int) -> None:
        self._cache_hits.inc(n)

    def miss(self, n: int) -> None:
        self._cache_misses.inc(n)

    def error(self) -> None:
        self._cache_errors.inc()

    # -- histograms ------------------------------------------------------------------------
    def batch(self, model: str, size: int, tokens: int) -> None:
        self._child(self._batch_size, model).observe(size)
        self._child(self._batch_tokens, model).observe(tokens)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def inference(self, model: str, seconds: float) -> None:
        self._child(self._inference, model).observe(seconds)

    # -- gauges ----------------------------------------------------------------------------
    def lag(self, topic: str, partition: int, value: int) -> None:
        self._lag.labels(topic, str(partition)).set(value)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop a revoked partition's lag series, so a stale value does not linger (and alert)."""
        try:
            self._lag.remove(topic, str(partition))
        except KeyError:  # older prometheus-client raises for an unknown series; newer ignores it
            pass

    def inflight(self, n: int) -> None:
        self._inflight.set(n)

    def paused(self, n: int) -> None:
        self._paused.set(n)

    def cache_up(self, up: bool) -> None:
        self._cache_up.set(1 if up else 0)

    def info(self, **labels: str) -> None:
        self._build.info({k: str(v) for k, v in labels.items()})

    # -- health ----------------------------------------------------------------------------
    def heartbeat(self) -> None:
        with self._lock:
            self._last_heartbeat = time.monotonic()

    def set_ready(self, ready: bool) -> None:
        with self._lock:
            self._ready = ready

    def liveness(self, max_silence_s: float = 60.0) -> tuple[bool, str]:
        """Alive unless the loop went quiet for ``max_silence_s`` after its first heartbeat.

        Before the first heartbeat the worker counts as alive: loading a model can take minutes,
        and a liveness failure then would only get the pod restarted into the same slow load.
        """
        with self._lock:
            last = self._last_heartbeat
        if last is None:
            return True, "starting: no heartbeat yet"
        silence = time.monotonic() - last
        if silence > max_silence_s:
            return False, f"no heartbeat for {silence:.1f}s (limit {max_silence_s:g}s)"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            ready = self._ready
        return (True, "ready") if ready else (False, "not ready")


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` for one ``Metrics`` on a daemon thread."""

    def __init__(
        self, metrics: Metrics, host: str = "0.0.0.0", port: int = 9400, max_silence_s: float = 60.0,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.max_silence_s = max_silence_s
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and serve in the background; returns the bound port (useful with ``port=0``)."""
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        server = ThreadingHTTPServer((self.host, self.port), self._handler_class())
        server.daemon_threads = True  # a hung scrape must not keep the process from exiting
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="poolworker-metrics", daemon=True,
        )
        self._thread.start()
        return int(server.server_address[1])

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice or before ``start``."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        """A handler class bound to this server's metrics (http.server instantiates per request)."""
        metrics, max_silence_s = self.metrics, self.max_silence_s

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    # choose_encoder honours Prometheus' Accept header (OpenMetrics when asked),
                    # and gives the classic text format (CONTENT_TYPE_LATEST) otherwise.
                    encode, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._reply(HTTPStatus.OK, encode(metrics.registry), content_type)
                elif path == "/healthz":
                    self._probe(*metrics.liveness(max_silence_s))
                elif path == "/readyz":
                    self._probe(*metrics.readiness())
                else:
                    self._reply(HTTPStatus.NOT_FOUND, b"not found\n")

            def _probe(self, ok: bool, reason: str) -> None:
                body = b"ok\n" if ok else f"{reason}\n".encode()
                self._reply(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body)

            def _reply(
                self, status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8",
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Silenced: probes hit every few seconds and would flood stderr."""

        return Handler
