"""Fixtures for the reliability tests (the process pool, whose processes end with each test, is
the `pool` fixture of tests/streaming.py); the numbers the tests measure (duplicates, RSS, batch times) are printed at the end of the run."""

from __future__ import annotations

import uuid

import pytest

REPORT: dict[str, object] = {}


@pytest.fixture
def topics() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"requests_topic": f"rel{tag}.requests", "results_topic": f"rel{tag}.results",
            "dlq_topic": f"rel{tag}.dlq", "group_id": f"rel{tag}"}


from poolworker.consumers.transport import TRANSPORTS


@pytest.fixture(params=TRANSPORTS)
def queue(request, broker):
    """The queue a test runs on, once per transport (``peers.QueuePeer``); Redis and NATS are
    private servers of the test."""
    from .peers import start_peer

    peer = start_peer(request.param, broker)
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(params=TRANSPORTS)
def durable_queue(request, broker, pool):
    """A queue whose server can restart without losing records: Kafka transports get a private
    Tansu on S3 storage (a moto server), Redis and NATS their private persistent servers."""
    from poolworker.broker import LocalBroker, free_port

    from .peers import KafkaPeer, start_peer
    from .procs import start_moto

    if request.param.startswith("kafka"):
        _, aws_env = start_moto(pool)
        yield KafkaPeer(pool.add(LocalBroker(free_port(), storage="s3://tansu/", env=aws_env).start()), request.param)
        return
    peer = start_peer(request.param, broker)
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="session")
def report() -> dict[str, object]:
    return REPORT


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("reliability measurements")
        for key, value in REPORT.items():
            terminalreporter.write_line(f"{key}: {value}")
