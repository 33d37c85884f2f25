"""The gateway's Prometheus metrics (``GET /metrics``), in a registry of its own so a gateway and
a worker in one process (``poolworker dev``, the tests) never clash on names."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ..metrics import LATENCY_BUCKETS


class GatewayMetrics:
    """Calls by route and status, their latency, and the calls awaiting the pool."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._calls = Counter("poolworker_gateway_requests", "HTTP calls answered, by route and status code.",
                              ["route", "status"], registry=r)
        self._latency = Histogram("poolworker_gateway_request_seconds", "HTTP call to answer, by route.", ["route"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._inflight = Gauge("poolworker_gateway_inflight_requests", "Calls awaiting the pool.", registry=r)

    def answered(self, route: str, status: int, seconds: float) -> None:
        self._calls.labels(route, str(status)).inc()
        self._latency.labels(route).observe(seconds)

    def inflight(self, n: int) -> None:
        self._inflight.set(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["GatewayMetrics"]
