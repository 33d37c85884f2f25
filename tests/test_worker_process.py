"""``poolworker run`` as a real process: SIGTERM drains in-flight work and commits, so a
restarted worker in the same group answers nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from streaming import (
    FAST_GROUP,
    REPO,
    TANSU,
    as_json,
    produce,
    read_topic,
    unique_topics,
)


def start_worker_process(broker, topics: dict[str, str], log_path) -> subprocess.Popen:
    env = {**os.environ, "POOLWORKER_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "POOLWORKER_REDIS_URL": "none",
           "POOLWORKER_METRICS_PORT": "0", "POOLWORKER_PARTITIONS": "3", "POOLWORKER_MODELS": '["minilm=all-MiniLM-L6-v2"]',
           "POOLWORKER_MAX_BATCH_REQUESTS": "16", "POOLWORKER_MAX_INFLIGHT_REQUESTS": "32", "POOLWORKER_MAX_POLL_RECORDS": "16",
           **{f"POOLWORKER_{k.upper()}": str(v) for k, v in {**topics, **FAST_GROUP, **TANSU}.items()}}
    return subprocess.Popen([sys.executable, "-m", "poolworker.cli", "run", "--log-level", "INFO"], cwd=REPO, env=env,
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def test_sigterm_drains_commits_and_restart_answers_nothing_twice(broker, tmp_path):
    topics = unique_topics()
    n = 400
    produce(broker.bootstrap_servers, topics["requests_topic"], [
        (f"k{i}".encode(), json.dumps({"request_id": f"r{i}", "task": "embed", "input": f"document number {i} " * 8}).encode())
        for i in range(n)
    ])
    first = start_worker_process(broker, topics, tmp_path / "first.log")
    try:
        partial = read_topic(broker.bootstrap_servers, topics["results_topic"], 40, timeout_s=90)
        assert len(partial) >= 40, (tmp_path / "first.log").read_text()[-3000:]
        first.send_signal(signal.SIGTERM)
        assert first.wait(90) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    log = (tmp_path / "first.log").read_text()
    assert "draining" in log and "worker stopped" in log
    answered_by_first = len(read_topic(broker.bootstrap_servers, topics["results_topic"], n, timeout_s=3))
    assert answered_by_first < n, "the first worker answered everything; the restart proves nothing"

    second = start_worker_process(broker, topics, tmp_path / "second.log")
    try:
        results = read_topic(broker.bootstrap_servers, topics["results_topic"], n, timeout_s=120)
        time.sleep(2)  # anything answered twice would arrive now
        results = read_topic(broker.bootstrap_servers, topics["results_topic"], n + 1, timeout_s=3)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(90)
    ids = Counter(as_json(r)["request_id"] for r in results)
    assert set(ids) == {f"r{i}" for i in range(n)}
    duplicates = {k: v for k, v in ids.items() if v > 1}
    assert not duplicates, f"{len(duplicates)} answered twice"
    assert all(as_json(r)["error"] is None for r in results)


def test_dev_stopped_by_sigterm_stops_the_broker_it_started(tmp_path):
    """``poolworker dev`` (what ``make run`` runs) under SIGTERM — docker stop, systemd, timeout —
    cleans up as under Ctrl-C: it exits 0 and its local broker stops with it instead of running on
    as an orphan holding the port."""
    import socket

    from poolworker.broker import free_port

    port = free_port()
    log_path = tmp_path / "dev.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env = {k: v for k, v in env.items() if not k.startswith("POOLWORKER_")}
    dev = subprocess.Popen([sys.executable, "-m", "poolworker.cli", "dev", "--documents", "8", "--port", str(port),
                            "--gateway-port", "0", "--redis-url", "none"], cwd=REPO, env=env,
                           stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C stops." not in log_path.read_text() and dev.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "Ctrl-C stops." in log_path.read_text(), log_path.read_text()[-3000:]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the broker serves while dev runs
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(90) == 0, log_path.read_text()[-3000:]
    finally:
        if dev.poll() is None:
            dev.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break  # nothing listens any more: the broker is gone
        time.sleep(0.3)
    else:
        raise AssertionError(f"the broker on port {port} outlived poolworker dev")
