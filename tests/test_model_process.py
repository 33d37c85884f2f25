"""The model process (``poolworker.model_process``): the same results as the forward passes on
this thread, in the order the batches were sent, and a clean failure when it dies or holds other
weights. (A worker whose model process is killed mid-stream: tests/reliability/test_crash.py.)"""

from __future__ import annotations

import json
import os
import signal
import threading

import numpy as np
import pytest
from builders import engine_tensors

from poolworker.batching import compute, plan_batch
from poolworker.cache import make_cache
from poolworker.config import WorkerSettings
from poolworker.model_process import ModelProcess, ModelProcessDied
from poolworker.prepare import Preparer
from poolworker.work import Source

TEXTS = [
    "Kafka partitions spread load.",
    "Bananas are yellow.",
    "A third, rather longer sentence about consumer groups and the offsets they commit.",
    "short",
]


@pytest.fixture(scope="module")
def engines(minilm_engine):
    return {"minilm": minilm_engine}


def _records(*bodies: dict) -> list[tuple[Source, bytes]]:
    return [(Source("req", 0, i, None, None), json.dumps(body).encode()) for i, body in enumerate(bodies)]


def _settings(minilm_path) -> WorkerSettings:
    return WorkerSettings(models=[f"minilm={minilm_path}"], redis_url=None, metrics_port=None)


def _plans(engines, batches: int):
    """``batches`` batches of requests of several shapes: embed (two dimensions, so two engine
    calls in one batch), an all-error batch, and a score."""
    bodies = [{"request_id": f"e{i}", "task": "embed", "input": TEXTS[i % 4:] or TEXTS[:1]} for i in range(6)]
    bodies += [{"request_id": "d", "task": "embed", "input": TEXTS, "dimensions": 64}]
    bodies += [{"request_id": "s", "task": "score", "text_1": TEXTS[0], "text_2": TEXTS[1:]}]
    stage = Preparer(engines, make_cache(None), results_topic="res", allowed_reply_topics=None, max_request_bytes=1 << 20,
                     max_items_per_request=64)
    prepared = stage.prepare(_records(*bodies))
    assert all(p.error is None for p in prepared)
    plans = [plan_batch(prepared[i::batches]) for i in range(batches)]
    assert len({w.call for w in plans[0].work}) >= 2, "one batch should hold several engine calls"
    return plans


def _flat(computed):
    return [r for outcomes, _seconds in computed for outcome in outcomes for r in outcome]


def test_same_results_in_order_then_a_dead_process_fails_what_is_in_flight(engines, minilm_path):
    process = ModelProcess(_settings(minilm_path)).spawn()
    try:
        process.wait_ready({"minilm": engines["minilm"].model.fingerprint})
        plans = _plans(engines, 3)
        got: list[tuple[int, object]] = []
        all_done = threading.Event()

        def done_for(i):
            def done(computed):
                got.append((i, computed))
                if len(got) == len(plans):
                    all_done.set()
            return done

        for i, plan in enumerate(plans):  # three batches sent back to back: two in flight at a time
            process.run(plan.work, done_for(i))
        assert all_done.wait(60)
        assert [i for i, _ in got] == [0, 1, 2]
        for (i, computed), plan in zip(got, plans):
            local = [compute(w) for w in plan.work]
            theirs, ours = _flat(computed), _flat(local)
            assert len(theirs) == len(ours) > 0
            for a, b in zip(theirs, ours):
                assert a.num_tokens == b.num_tokens
                assert np.array_equal(np.asarray(a.data), np.asarray(b.data)), f"batch {i}"

        # the process dies with a batch in flight: that batch fails, and so does any later one
        failed = threading.Event()
        outcome: list[object] = []
        os.kill(process.process.pid, signal.SIGSTOP)  # hold it, so the batch is surely in flight when it dies
        process.run(plans[0].work, lambda computed: (outcome.append(computed), failed.set()))
        os.kill(process.process.pid, signal.SIGKILL)
        assert failed.wait(30)
        assert isinstance(outcome[0], ModelProcessDied)
        with pytest.raises(ModelProcessDied):
            process.run(plans[1].work, lambda computed: pytest.fail("no answer from a dead process"))
    finally:
        process.close()


def test_other_weights_than_the_workers_are_refused(engines, minilm_path):
    process = ModelProcess(_settings(minilm_path)).spawn()
    try:
        with pytest.raises(ModelProcessDied, match="other models"):
            process.wait_ready({"minilm": "not-" + engines["minilm"].model.fingerprint})
    finally:
        process.close()


def test_a_model_that_does_not_load_stops_the_start(tmp_path):
    process = ModelProcess(WorkerSettings(models=[f"broken={tmp_path}"], redis_url=None, metrics_port=None)).spawn()
    try:
        with pytest.raises(ModelProcessDied, match="could not load"):
            process.wait_ready({})
    finally:
        process.close()


def test_openmp_threads_of_the_model_process_sleep_unless_the_user_chose():
    from poolworker.model_process import child_environment

    assert child_environment({}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert child_environment({"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    assert child_environment({"GOMP_SPINCOUNT": "300000"}) == {}


def test_a_send_failing_while_a_batch_is_being_answered_answers_each_batch_once(engines, minilm_path):
    """The reply thread is inside batch 0's callback (with its results) when the process dies
    and the next batch's send fails: batch 0 keeps its results, batch 1 fails, each answered
    once, and the reply thread ends without an error of its own."""
    process = ModelProcess(_settings(minilm_path)).spawn()
    crashed: list[BaseException] = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: crashed.append(args.exc_value)
    try:
        process.wait_ready({"minilm": engines["minilm"].model.fingerprint})
        plans = _plans(engines, 2)
        answers: dict[int, list[object]] = {0: [], 1: []}
        inside, release, failed = threading.Event(), threading.Event(), threading.Event()

        def first(computed):
            answers[0].append(computed)
            inside.set()
            release.wait(30)

        process.run(plans[0].work, first)
        assert inside.wait(60)
        os.kill(process.process.pid, signal.SIGKILL)
        process.process.join(30)
        process.run(plans[1].work, lambda computed: (answers[1].append(computed), failed.set()))  # the send fails
        assert failed.wait(30)
        release.set()
        process._reader.join(30)
        assert not process._reader.is_alive()
        assert len(answers[0]) == 1 and not isinstance(answers[0][0], BaseException)
        assert len(answers[1]) == 1 and isinstance(answers[1][0], ModelProcessDied)
        assert crashed == []
    finally:
        release.set()
        threading.excepthook = previous_hook
        process.close()


def test_a_worker_with_a_model_process_keeps_no_weights_and_its_plans_compute_the_same(engines, minilm_path):
    """The worker process loads its engines without weights (the model process holds the only
    copy): every tensor on the meta device, the same facts as the full engine, and its plans give
    what the full engine's plans give on this thread, bit for bit."""
    from poolworker.worker import Worker

    worker = Worker(_settings(minilm_path))
    try:
        light, full = worker.engines["minilm"], engines["minilm"]
        assert worker.model_process is not None
        assert engine_tensors(light) and all(t.device.type == "meta" for t in engine_tensors(light))
        assert all(t.device.type == "cpu" for t in engine_tensors(full))
        assert light.describe() == full.describe()  # device, dtype, fingerprint, forward path, limits
        assert light.runner.max_batch_tokens == full.runner.max_batch_tokens
        ours, theirs = _plans(worker.engines, 2), _plans(engines, 2)
        got: list = []
        all_done = threading.Event()
        for plan in ours:
            worker.model_process.run(plan.work, lambda computed: (got.append(computed), len(got) == len(ours) and all_done.set()))
        assert all_done.wait(60)
        for computed, plan in zip(got, theirs):
            remote, local = _flat(computed), _flat([compute(w) for w in plan.work])
            assert len(remote) == len(local) > 0
            for a, b in zip(remote, local):
                assert a.num_tokens == b.num_tokens
                assert np.array_equal(np.asarray(a.data), np.asarray(b.data))
    finally:
        worker.model_process.close()
