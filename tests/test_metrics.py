"""Metrics and probes, checked the way Prometheus and Kubernetes see them: over HTTP."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from poolworker.metrics import Metrics, MetricsServer

SILENCE_S = 0.2


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def port(metrics: Metrics) -> Iterator[int]:
    server = MetricsServer(metrics, host="127.0.0.1", port=0, max_silence_s=SILENCE_S)
    bound = server.start()
    try:
        yield bound
    finally:
        server.stop()


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) — HTTP errors are answers here, not exceptions."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def scrape(port: int) -> list[Sample]:
    status, _, body = get(port, "/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(body))
    assert families, "empty exposition"
    bad = [f.name for f in families if not f.name.startswith("poolworker_")]
    assert not bad, f"families without the poolworker_ prefix: {bad}"
    return [s for f in families for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The value of the one sample with exactly this name and labels, None when absent."""
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) <= 1
    return found[0] if found else None


def test_metrics_endpoint_content_type_and_prefix(metrics: Metrics, port: int) -> None:
    metrics.request("m", "embed", "ok")
    status, content_type, _ = get(port, "/metrics")
    assert status == 200
    # No Accept header: the classic text format, labelled the way prometheus-client labels it.
    assert content_type == choose_encoder("")[1]
    assert content_type.startswith("text/plain; version=")
    scrape(port)  # asserts the prefix on every family


def test_metrics_endpoint_negotiates_openmetrics(metrics: Metrics, port: int) -> None:
    """Prometheus asks for OpenMetrics in its Accept header; the server should honour it."""
    metrics.request("m", "embed", "ok")
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.read().decode().rstrip().endswith("# EOF")


def test_counters(metrics: Metrics, port: int) -> None:
    metrics.request("minilm", "embed", "ok")
    metrics.request("minilm", "embed", "ok")
    metrics.request("minilm", "embed", "error")
    metrics.request("bge", "rerank", "dlq")
    metrics.items("minilm", "embed", 7)
    metrics.items("minilm", "embed", 3)
    metrics.tokens("minilm", "embed", 120)
    metrics.dlq("bad_json")
    metrics.dlq("bad_json")
    metrics.dlq("too_long")
    metrics.hit(5)
    metrics.miss(2)
    metrics.miss(1)
    metrics.error()

    s = scrape(port)
    assert value(s, "poolworker_requests_total", model="minilm", task="embed", status="ok") == 2
    assert value(s, "poolworker_requests_total", model="minilm", task="embed", status="error") == 1
    assert value(s, "poolworker_requests_total", model="bge", task="rerank", status="dlq") == 1
    assert value(s, "poolworker_items_total", model="minilm", task="embed") == 10
    assert value(s, "poolworker_tokens_total", model="minilm", task="embed") == 120
    assert value(s, "poolworker_dlq_total", reason="bad_json") == 2
    assert value(s, "poolworker_dlq_total", reason="too_long") == 1
    assert value(s, "poolworker_cache_hits_total") == 5
    assert value(s, "poolworker_cache_misses_total") == 3
    assert value(s, "poolworker_cache_errors_total") == 1


def test_histograms(metrics: Metrics, port: int) -> None:
    metrics.batch("minilm", size=3, tokens=100)
    metrics.batch("minilm", size=4096, tokens=131072)
    metrics.queue_wait(0.0005)
    metrics.queue_wait(0.02)
    metrics.inference("minilm", 0.04)
    metrics.answered("minilm", "embed", "ok", 1, 10, 1.5)
    metrics.answered("minilm", "embed", "ok", 1, 10, 120.0)  # beyond the last bucket: only +Inf holds it

    s = scrape(port)
    m = {"model": "minilm"}
    assert value(s, "poolworker_batch_size_count", **m) == 2
    assert value(s, "poolworker_batch_size_sum", **m) == 4099
    assert value(s, "poolworker_batch_size_bucket", **m, le="1.0") == 0
    assert value(s, "poolworker_batch_size_bucket", **m, le="4.0") == 1
    assert value(s, "poolworker_batch_size_bucket", **m, le="4096.0") == 2
    assert value(s, "poolworker_batch_tokens_count", **m) == 2
    assert value(s, "poolworker_batch_tokens_bucket", **m, le="16.0") == 0
    assert value(s, "poolworker_batch_tokens_bucket", **m, le="128.0") == 1
    assert value(s, "poolworker_batch_tokens_bucket", **m, le="131072.0") == 2

    assert value(s, "poolworker_queue_wait_seconds_count") == 2
    assert value(s, "poolworker_queue_wait_seconds_bucket", le="0.001") == 1
    assert value(s, "poolworker_queue_wait_seconds_bucket", le="0.025") == 2
    assert value(s, "poolworker_inference_seconds_sum", **m) == pytest.approx(0.04)
    assert value(s, "poolworker_inference_seconds_bucket", **m, le="0.05") == 1

    e2e = {"model": "minilm", "task": "embed"}
    assert value(s, "poolworker_end_to_end_seconds_count", **e2e) == 2
    assert value(s, "poolworker_end_to_end_seconds_bucket", **e2e, le="60.0") == 1
    assert value(s, "poolworker_end_to_end_seconds_bucket", **e2e, le="+Inf") == 2


def test_gauges_and_info(metrics: Metrics, port: int) -> None:
    metrics.lag("requests", 0, 42)
    metrics.lag("requests", 1, 7)
    metrics.lag("requests", 1, 9)  # a gauge: the latest value wins
    metrics.inflight(12)
    metrics.paused(1)
    metrics.cache_up(True)
    metrics.info(version="0.1.0", models="minilm,bge")

    s = scrape(port)
    assert value(s, "poolworker_consumer_lag", topic="requests", partition="0") == 42
    assert value(s, "poolworker_consumer_lag", topic="requests", partition="1") == 9
    assert value(s, "poolworker_inflight_requests") == 12
    assert value(s, "poolworker_paused_partitions") == 1
    assert value(s, "poolworker_cache_up") == 1
    assert value(s, "poolworker_build_info", version="0.1.0", models="minilm,bge") == 1

    metrics.cache_up(False)
    metrics.inflight(0)
    s = scrape(port)
    assert value(s, "poolworker_cache_up") == 0
    assert value(s, "poolworker_inflight_requests") == 0


def test_forget_partition_removes_only_that_series(metrics: Metrics, port: int) -> None:
    metrics.lag("requests", 0, 5)
    metrics.lag("requests", 1, 6)
    metrics.forget_partition("requests", 0)
    metrics.forget_partition("requests", 99)  # never seen: a no-op, not an error

    s = scrape(port)
    assert value(s, "poolworker_consumer_lag", topic="requests", partition="0") is None
    assert value(s, "poolworker_consumer_lag", topic="requests", partition="1") == 6


def test_healthz_follows_heartbeats(metrics: Metrics, port: int) -> None:
    # Before the first heartbeat: alive, however long model loading takes.
    time.sleep(SILENCE_S * 1.5)
    assert get(port, "/healthz")[0] == 200

    metrics.heartbeat()
    status, _, body = get(port, "/healthz")
    assert (status, body.strip()) == (200, "ok")

    time.sleep(SILENCE_S * 1.5)
    status, _, body = get(port, "/healthz")
    assert status == 503
    assert "no heartbeat" in body

    metrics.heartbeat()  # the loop recovered
    assert get(port, "/healthz")[0] == 200


def test_readyz_follows_set_ready(metrics: Metrics, port: int) -> None:
    status, _, body = get(port, "/readyz")
    assert status == 503
    assert "not ready" in body

    metrics.set_ready(True)
    assert get(port, "/readyz")[0] == 200

    metrics.set_ready(False)  # e.g. draining on shutdown
    assert get(port, "/readyz")[0] == 503


def test_probe_methods_directly(metrics: Metrics) -> None:
    assert metrics.liveness()[0] is True
    metrics.heartbeat()
    assert metrics.liveness(max_silence_s=60.0) == (True, "ok")
    alive, reason = metrics.liveness(max_silence_s=0.0)
    assert not alive and reason
    assert metrics.readiness()[0] is False


def test_unknown_path_is_404(port: int) -> None:
    assert get(port, "/nope")[0] == 404
    assert get(port, "/")[0] == 404


def test_query_string_is_ignored(port: int) -> None:
    assert get(port, "/metrics?debug=1")[0] == 200


def test_instances_do_not_share_state() -> None:
    a, b = Metrics(), Metrics()  # a shared registry would raise on the duplicate names here
    assert a.registry is not b.registry
    a.request("m", "embed", "ok")
    a.lag("t", 0, 3)
    a.heartbeat()
    a.set_ready(True)

    assert a.registry.get_sample_value(
        "poolworker_requests_total", {"model": "m", "task": "embed", "status": "ok"}
    ) == 1
    assert b.registry.get_sample_value(
        "poolworker_requests_total", {"model": "m", "task": "embed", "status": "ok"}
    ) is None
    assert b.registry.get_sample_value("poolworker_consumer_lag", {"topic": "t", "partition": "0"}) is None
    assert b.liveness(max_silence_s=0.0)[0] is True  # b has had no heartbeat
    assert b.readiness()[0] is False


def test_two_servers_serve_their_own_metrics() -> None:
    a, b = Metrics(), Metrics()
    sa = MetricsServer(a, host="127.0.0.1", port=0)
    sb = MetricsServer(b, host="127.0.0.1", port=0)
    pa, pb = sa.start(), sb.start()
    try:
        assert pa != pb
        a.dlq("x")
        assert value(scrape(pa), "poolworker_dlq_total", reason="x") == 1
        assert value(scrape(pb), "poolworker_dlq_total", reason="x") is None
    finally:
        sa.stop()
        sb.stop()


def test_accepts_an_explicit_registry() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.hit(1)
    assert m.registry is registry
    assert registry.get_sample_value("poolworker_cache_hits_total") == 1


def test_stop_releases_the_port_and_is_idempotent(metrics: Metrics) -> None:
    server = MetricsServer(metrics, host="127.0.0.1", port=0)
    server.stop()  # before start: nothing to do
    bound = server.start()
    assert get(bound, "/healthz")[0] == 200
    server.stop()
    server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{bound}/healthz", timeout=2)


def test_answered_requests_are_all_counted_by_the_next_scrape_even_from_many_threads(metrics: Metrics, port: int) -> None:
    """``answered`` queues its four updates and applies them in bulk: a scrape taken while
    four threads answer, and one after, must show exactly what was answered by then — nothing
    lost or counted twice between the queue and the counters, however few calls were queued."""
    import threading

    from poolworker.metrics import ANSWERED_BATCH

    metrics.answered("minilm", "embed", "ok", 2, 11, 0.003)
    metrics.answered("minilm", "embed", "error", 5, 99, None)  # an error's items and tokens are not work done
    s = scrape(port)  # two calls, far below the batch size: the scrape applies them
    assert value(s, "poolworker_requests_total", model="minilm", task="embed", status="ok") == 1
    assert value(s, "poolworker_requests_total", model="minilm", task="embed", status="error") == 1
    assert value(s, "poolworker_items_total", model="minilm", task="embed") == 2
    assert value(s, "poolworker_tokens_total", model="minilm", task="embed") == 11
    assert value(s, "poolworker_end_to_end_seconds_count", model="minilm", task="embed") == 1
    assert value(s, "poolworker_end_to_end_seconds_bucket", model="minilm", task="embed", le="0.005") == 1

    per_thread = ANSWERED_BATCH * 3 + 17
    threads = [threading.Thread(target=lambda: [metrics.answered("minilm", "embed", "ok", 1, 3, 0.5) for _ in range(per_thread)])
               for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        scrape(port)  # scrapes apply the queue while the threads fill it
    for t in threads:
        t.join()
    s = scrape(port)
    assert value(s, "poolworker_requests_total", model="minilm", task="embed", status="ok") == 1 + 4 * per_thread
    assert value(s, "poolworker_items_total", model="minilm", task="embed") == 2 + 4 * per_thread
    assert value(s, "poolworker_tokens_total", model="minilm", task="embed") == 11 + 3 * 4 * per_thread
    assert value(s, "poolworker_end_to_end_seconds_count", model="minilm", task="embed") == 1 + 4 * per_thread


def test_ignored_field_names_are_capped_so_callers_cannot_grow_the_series(metrics: Metrics, port: int) -> None:
    from poolworker.metrics import IGNORED_FIELD_NAMES, IGNORED_FIELD_OTHER

    for i in range(IGNORED_FIELD_NAMES + 50):
        metrics.ignored_field(f"invented_{i}")
    metrics.ignored_field("invented_0")  # a name with a series keeps counting under its own name
    s = scrape(port)
    named = {sample.labels["field"] for sample in s if sample.name == "poolworker_ignored_fields_total"}
    assert len(named) == IGNORED_FIELD_NAMES + 1 and IGNORED_FIELD_OTHER in named
    assert value(s, "poolworker_ignored_fields_total", field="invented_0") == 2
    assert value(s, "poolworker_ignored_fields_total", field=IGNORED_FIELD_OTHER) == 50


def test_end_to_end_latency_is_exposed_exactly_as_prometheus_clients_histogram(metrics: Metrics) -> None:
    """The end-to-end histogram keeps plain counts (one lock per bulk of answered requests);
    its samples must be the ones prometheus-client's own ``Histogram`` gives for the same
    observations — bucket edges included, values on an edge, beyond the last edge, zero."""
    import random

    from prometheus_client import Histogram

    from poolworker.metrics import LATENCY_BUCKETS

    reference = CollectorRegistry()
    histogram = Histogram("poolworker_end_to_end_seconds", "reference", ["model", "task"], buckets=LATENCY_BUCKETS,
                          registry=reference)
    rng = random.Random(7)
    for i in range(2000):
        seconds = rng.choice((*LATENCY_BUCKETS, 0.0, 120.0)) if i % 3 == 0 else rng.expovariate(2.0)
        task = ("embed", "score")[i % 2]
        metrics.answered("minilm", task, "ok", 1, 4, seconds)
        histogram.labels("minilm", task).observe(seconds)

    def samples(registry: CollectorRegistry) -> list:
        return sorted((s.name, sorted(s.labels.items()), round(s.value, 9)) for family in registry.collect()
                      if family.name == "poolworker_end_to_end_seconds" for s in family.samples if not s.name.endswith("_created"))

    ours = samples(metrics.registry)
    assert ours == samples(reference) and len(ours) == 2 * (len(LATENCY_BUCKETS) + 3)
