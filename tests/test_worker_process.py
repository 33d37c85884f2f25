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

from streaming import FAST_GROUP, REPO, as_json, produce, read_topic, unique_topics


def start_worker_process(broker, topics: dict[str, str], log_path) -> subprocess.Popen:
    env = {**os.environ, "POOLWORKER_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "POOLWORKER_REDIS_URL": "none",
           "POOLWORKER_METRICS_PORT": "0", "POOLWORKER_PARTITIONS": "3", "POOLWORKER_MODELS": '["minilm=all-MiniLM-L6-v2"]',
           "POOLWORKER_MAX_BATCH_REQUESTS": "16", "POOLWORKER_MAX_INFLIGHT_REQUESTS": "32", "POOLWORKER_MAX_POLL_RECORDS": "16",
           **{f"POOLWORKER_{k.upper()}": str(v) for k, v in {**topics, **FAST_GROUP}.items()}}
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
