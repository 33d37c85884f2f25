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


@pytest.fixture(scope="session")
def report() -> dict[str, object]:
    return REPORT


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("reliability measurements")
        for key, value in REPORT.items():
            terminalreporter.write_line(f"{key}: {value}")
