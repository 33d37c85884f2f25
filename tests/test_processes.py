"""``poolworker run --processes N``: real ``poolworker run`` subprocesses against a real Tansu
broker. Two children share one consumer group and split the partitions, each serves on its
own metrics port, every request is answered exactly once, SIGTERM drains both and commits
everything; a child that dies takes the pool down with a non-zero exit, never a half pool."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from reliability.procs import (
    ProcessPool,
    TopicReader,
    committed_offsets,
    create_topics,
    metric_value,
    produce,
)

from poolworker.config import WorkerSettings
from poolworker.processes import child_settings, thread_env

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # bench.models: the random-BERT builder the benchmarks use

from bench.models import tiny_bert

PARTITIONS = 4


# ----------------------------------------------------------------------------------------------
# Pure parts
# ----------------------------------------------------------------------------------------------
def test_threads_are_split_between_children_unless_pinned():
    assert thread_env(2, {}, cpus=16) == {"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "8"}
    assert thread_env(3, {}, cpus=2) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # never 0
    assert thread_env(2, {"OMP_NUM_THREADS": "6"}, cpus=16) == {}  # the user's count is kept
    assert thread_env(2, {"MKL_NUM_THREADS": "6"}, cpus=16) == {}


def test_each_child_gets_its_own_metrics_port():
    base = WorkerSettings(metrics_port=9400, processes=3)
    assert [child_settings(base, i).metrics_port for i in range(3)] == [9400, 9401, 9402]
    assert all(child_settings(base, i).processes == 1 for i in range(3))
    assert child_settings(base.model_copy(update={"metrics_port": 0}), 2).metrics_port == 0  # each picks a free one
    assert child_settings(base.model_copy(update={"metrics_port": None}), 1).metrics_port is None
    with pytest.raises(ValueError, match="65535"):
        child_settings(base.model_copy(update={"metrics_port": 65535}), 1)


def test_processes_comes_from_env_and_file(tmp_path, monkeypatch):
    assert WorkerSettings().processes == 1
    config = tmp_path / "worker.toml"
    config.write_text("[poolworker]\nprocesses = 4\n")
    assert WorkerSettings.load(config).processes == 4
    monkeypatch.setenv("POOLWORKER_PROCESSES", "3")
    assert WorkerSettings.load(config).processes == 3
    assert WorkerSettings.load(config, processes=2).processes == 2
    with pytest.raises(ValueError):
        WorkerSettings(processes=0)


# ----------------------------------------------------------------------------------------------
# Real processes
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_path) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_path)


def _topics() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"requests_topic": f"proc{tag}.requests", "results_topic": f"proc{tag}.results", "dlq_topic": f"proc{tag}.dlq",
            "group_id": f"proc{tag}"}


def _assignments(log: str) -> dict[str, set[str]]:
    """Each child's latest logged assignment (the children tag their lines ``[worker-i]``)."""
    latest: dict[str, set[str]] = {}
    for child, parts in re.findall(r"\[(worker-\d+)\] \S+: partitions assigned: \[(.*?)\]", log):
        latest[child] = {p.strip().strip("'") for p in parts.split(",") if p.strip()}
    return latest


def _wait_split(worker, timeout_s: float = 60) -> dict[str, set[str]]:
    """Until both children own partitions and together own each exactly once (a settled rebalance)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = _assignments(worker.log())
        owned = [p for parts in found.values() for p in parts]
        if len(found) == 2 and all(found.values()) and len(owned) == len(set(owned)) == PARTITIONS:
            return found
        assert worker.alive(), f"the pool exited ({worker.proc.returncode})\n{worker.tail()}"
        assert time.monotonic() < deadline, f"no settled split of {PARTITIONS} partitions over two children\n{worker.tail()}"
        time.sleep(0.2)


def _requests(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{i}".encode(), json.dumps({"request_id": f"r{i}", "task": "embed", "model": "tiny", "input": f"document {i}"}).encode())
            for i in range(n)]


def _start_pool(pool: ProcessPool, broker, tiny_model: Path, topics: dict[str, str]):
    create_topics(broker.bootstrap_servers, topics, PARTITIONS)
    return pool.worker(broker.bootstrap_servers, topics, name="pool", models=[f"tiny={tiny_model}"], processes=2,
                       partitions=PARTITIONS, max_wait_ms=2)


def test_two_processes_split_the_group_answer_once_and_drain_on_sigterm(pool, broker, tiny_model):
    topics = _topics()
    worker = _start_pool(pool, broker, tiny_model, topics)
    split = _wait_split(worker)

    ports = dict(re.findall(r"\[(worker-\d+)\] \S+: metrics on :(\d+)", worker.log()))
    assert set(ports) == {"worker-0", "worker-1"} and len(set(ports.values())) == 2, worker.tail()

    n = 300
    sent = produce(broker.bootstrap_servers, topics["requests_topic"], _requests(n))
    reader = TopicReader(broker.bootstrap_servers, topics["results_topic"])
    try:
        assert reader.until(lambda records: len(records) >= n, 60), f"{len(reader.records)} of {n} answered\n{worker.tail()}"
        served = {}
        for child, port in ports.items():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                served[child] = metric_value(r.read().decode(), "poolworker_requests_total", status="ok")
        reader.settle(1.0)
    finally:
        reader.close()

    answered = Counter(json.loads(r.value)["request_id"] for r in reader.records)
    assert set(answered) == {f"r{i}" for i in range(n)}
    assert max(answered.values()) == 1, f"answered more than once: {[k for k, c in answered.items() if c > 1][:5]}"
    assert not [r for r in reader.records if json.loads(r.value).get("error")]
    # both children served: each owns partitions, and the keys spread over all of them
    assert sum(served.values()) == n and all(v > 0 for v in served.values()), (served, split)

    assert worker.stop(90) == 0, worker.tail()
    log = worker.log()
    assert "worker-0 drained and exited" in log and "worker-1 drained and exited" in log, worker.tail()
    ends: dict[int, int] = {}
    for meta in sent:
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    assert committed_offsets(broker.bootstrap_servers, topics["group_id"]) == ends


def test_a_child_that_dies_stops_the_pool_with_a_non_zero_exit(pool, broker, tiny_model):
    topics = _topics()
    worker = _start_pool(pool, broker, tiny_model, topics)
    _wait_split(worker)  # both serving: serve() has taken over SIGTERM in each
    pids = dict(re.findall(r"started (worker-\d+) \(pid (\d+)", worker.log()))
    os.kill(int(pids["worker-0"]), signal.SIGKILL)

    worker.proc.wait(90)
    log = worker.log()
    assert worker.proc.returncode != 0, worker.tail()
    assert re.search(r"worker-0 \(pid \d+\) exited unexpectedly with code -9", log), worker.tail()
    assert "worker-1 drained and exited" in log, worker.tail()  # the survivor was stopped, gracefully
