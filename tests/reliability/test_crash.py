"""Crashes: ``kill -9`` of a worker mid-run, alone and in a two-worker group, on every transport
(the ``queue`` fixture). Nothing is lost (every request_id answered at least once); replays are
duplicates with identical results."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from .procs import embed_requests, ids_answered

N = 1000
# Redis Streams / NATS hand a dead worker's unacknowledged records to another after this long
# (ignored on Kafka, where a revoke moves them); short so the tests wait seconds, not a minute.
REDELIVERY = {"redelivery_timeout_s": 5}
ATOL = 1e-6  # replays run in other batches (other padding); float32 sums may differ in the last bit


def _check_duplicates(records: list) -> tuple[int, float]:
    """Every copy of a request's result carries the same body; returns (duplicates, max |diff|)."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_id[json.loads(record.value)["request_id"]].append(json.loads(record.value))
    duplicates, worst = 0, 0.0
    for request_id, copies in by_id.items():
        first = copies[0]
        assert first["error"] is None, first
        for other in copies[1:]:
            duplicates += 1
            assert {k: v for k, v in other.items() if k != "data"} == {k: v for k, v in first.items() if k != "data"}
            a, b = first["data"][0]["embedding"], other["data"][0]["embedding"]
            assert len(a) == len(b) == 384
            diff = max(abs(x - y) for x, y in zip(a, b))
            assert diff <= ATOL, (request_id, diff)
            worst = max(worst, diff)
    return duplicates, worst


def test_kill9_mid_run_then_restart_answers_everything(queue, broker, topics, pool, report):
    bs = broker.bootstrap_servers
    queue.create(topics, partitions=3)
    first = pool.worker(bs, topics, "first", max_inflight_requests=256, **REDELIVERY, **queue.worker_settings())
    queue.produce(topics["requests_topic"], embed_requests(N))
    reader = queue.reader(topics["results_topic"])
    try:
        assert reader.until(lambda r: len(r) >= N // 4, 120), first.tail()
        first.kill()  # SIGKILL: no drain, no commit for what is in flight
        answered_before = len(ids_answered(reader.records))
        assert answered_before < N, "the first worker finished before the kill; nothing was tested"

        second = pool.worker(bs, topics, "second", max_inflight_requests=256, **REDELIVERY, **queue.worker_settings())
        assert reader.until(lambda r: len(ids_answered(r)) >= N, 180), second.tail()
        reader.settle()
    finally:
        reader.close()
    assert ids_answered(reader.records) == {f"r{i}" for i in range(N)}
    duplicates, worst = _check_duplicates(reader.records)
    report[f"kill -9 (one worker, {queue.transport})"] = (f"{N} requests, killed after {answered_before} answered; {duplicates} duplicates "
                                      f"(max |diff| {worst:.1e}); {len(reader.records)} results")


def test_two_workers_one_killed_the_other_takes_over(queue, broker, topics, pool, report):
    """Both workers serve (each answered something), one is killed; the survivor answers
    everything, including what the dead one had taken (Kafka: its partitions move; Redis
    Streams: its pending entries are claimed; NATS: they are redelivered after ack_wait)."""
    bs = broker.bootstrap_servers
    kafka = queue.transport.startswith("kafka")
    queue.create(topics, partitions=4)
    settings = dict(partitions=4, max_inflight_requests=256, **REDELIVERY, **queue.worker_settings())
    a = pool.worker(bs, topics, "a", **settings)
    b = pool.worker(bs, topics, "b", **settings)
    if kafka:  # wait for the group to settle, so both own partitions before the requests arrive
        deadline = time.monotonic() + 90
        while not (a.assigned() and b.assigned() and len(a.assigned() | b.assigned()) == 4):
            assert time.monotonic() < deadline, a.tail() + b.tail()
            assert a.alive() and b.alive(), a.tail() + b.tail()
            time.sleep(0.2)
        assert not a.assigned() & b.assigned()
        b_partitions = {int(p.rsplit("/", 1)[1]) for p in b.assigned()}

    queue.produce(topics["requests_topic"], embed_requests(N))
    reader = queue.reader(topics["results_topic"])

    def both_answered(_records) -> bool:
        return all(w.metric("poolworker_requests_total", status="ok") > 0 for w in (a, b))

    try:
        assert reader.until(both_answered, 120), a.tail() + b.tail()
        b.kill()
        killed_at = time.monotonic()
        answered_before = len(ids_answered(reader.records))
        assert answered_before < N, "the workers finished before the kill; nothing was tested"
        if kafka:
            all_four = {f"{topics['requests_topic']}/{p}" for p in range(4)}
            assert reader.until(lambda r: a.assigned() == all_four, 60), a.tail()
        takeover_s = time.monotonic() - killed_at
        assert reader.until(lambda r: len(ids_answered(r)) >= N, 180), a.tail()
        reader.settle()
    finally:
        reader.close()
    assert a.alive()
    assert ids_answered(reader.records) == {f"r{i}" for i in range(N)}
    duplicates, worst = _check_duplicates(reader.records)
    if kafka:  # the survivor answered requests of the dead worker's partitions (its own keys hash elsewhere)
        assert any(record.partition in b_partitions for record in reader.records)
    report[f"kill -9 (one of two, {queue.transport})"] = (
        f"{N} requests, b killed after {answered_before} answered; "
        + (f"a owned all 4 partitions {takeover_s:.1f}s later; " if kafka else "")
        + f"{duplicates} duplicates (max |diff| {worst:.1e})")


def _model_process_of(pid: int) -> int:
    """The pid of a worker's model process (its spawned child running ``spawn_main``)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            return int(child)
    raise AssertionError(f"worker {pid} has no model process among its children {children}")


@pytest.mark.parametrize("queue", ["kafka"], indirect=True)  # the mechanism is the worker's, not the transport's
def test_model_process_killed_the_worker_stops_and_a_restart_answers_everything(queue, broker, topics, pool, report):
    """kill -9 of the model process alone: its worker must not go on without it (nor answer
    the batches in flight with errors); it exits non-zero, and a new worker answers everything."""
    bs = broker.bootstrap_servers
    queue.create(topics, partitions=3)
    first = pool.worker(bs, topics, "first", max_inflight_requests=256, **queue.worker_settings())
    queue.produce(topics["requests_topic"], embed_requests(N))
    reader = queue.reader(topics["results_topic"])
    try:
        assert reader.until(lambda r: len(r) >= N // 4, 120), first.tail()
        os.kill(_model_process_of(first.pid), signal.SIGKILL)
        assert first.proc.wait(60) != 0, first.tail()
        answered_before = len(ids_answered(reader.records))
        assert answered_before < N, "the worker finished before the kill; nothing was tested"
        second = pool.worker(bs, topics, "second", max_inflight_requests=256, **queue.worker_settings())
        assert reader.until(lambda r: len(ids_answered(r)) >= N, 180), second.tail()
        reader.settle()
    finally:
        reader.close()
    assert ids_answered(reader.records) == {f"r{i}" for i in range(N)}  # and no error results: checked below
    duplicates, worst = _check_duplicates(reader.records)
    report["model process kill -9"] = (f"{N} requests, model process killed after {answered_before} answered; worker exited "
                                       f"{first.proc.returncode}; {duplicates} duplicates (max |diff| {worst:.1e})")
