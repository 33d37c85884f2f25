"""Long work: a micro-batch is bounded by max_batch_tokens, so its run time is bounded and far
below max_poll_interval_ms; and the consumer thread polls while the model thread works, so even a
backlog that takes much longer than max_poll_interval_ms causes no rebalance. Memory stays bounded
under a large backlog because consuming pauses at max_inflight_requests."""

from __future__ import annotations

import json
import re
import time

import pytest

from poolworker.batching import MicroBatcher, infer
from poolworker.cache import make_cache
from poolworker.config import WorkerSettings
from poolworker.consumers.loop import batch_budget
from poolworker.prepare import Preparer
from poolworker.work import Source

from .procs import TopicReader, create_topics, embed_requests, produce

MAX_INFLIGHT = 256
MAX_POLL_RECORDS = 100
RSS_GROWTH_BOUND_MB = 300  # over the RSS of the warmed-up worker; see docs/reliability.md
LONG_TEXT = " ".join(f"word{i}" for i in range(400))  # truncated to the model's 256 tokens


def test_worst_case_batch_is_far_below_max_poll_interval(minilm_engine, report):
    """Fill the real batcher with maximum-length requests: the batch it takes holds at most
    max_batch_tokens tokens, and running it takes a small fraction of max_poll_interval_ms."""
    settings = WorkerSettings()
    preparer = Preparer({"minilm": minilm_engine}, make_cache(None), results_topic="r", allowed_reply_topics=None,
                        max_request_bytes=settings.max_request_bytes, max_items_per_request=settings.max_items_per_request)
    records = [(Source("t", 0, i, None, None), json.dumps({"request_id": f"r{i}", "task": "embed", "input": LONG_TEXT,
                                                            "truncate_prompt_tokens": -1}).encode()) for i in range(64)]
    prepared = preparer.prepare(records)
    assert all(p.error is None for p in prepared) and prepared[0].cost_tokens == minilm_engine.max_model_len
    budget = batch_budget(settings, {"minilm": minilm_engine})
    batcher = MicroBatcher(lambda finished: None, max_batch_tokens=budget,
                           max_batch_requests=settings.max_batch_requests, max_wait_ms=0)
    batcher.submit(prepared)
    batch = batcher._take_batch()
    tokens = sum(p.cost_tokens for p in batch)
    assert tokens <= budget and len(batch) == budget // minilm_engine.max_model_len
    start = time.perf_counter()
    finished = infer(batch)
    seconds = time.perf_counter() - start
    assert all(f.error is None and len(f.results) == 1 for f in finished)
    budget_s = settings.max_poll_interval_ms / 1000
    assert seconds < budget_s / 10, f"a full batch took {seconds:.1f}s; max_poll_interval_ms is {budget_s:.0f}s"
    report["worst-case batch"] = (f"{len(batch)} x {minilm_engine.max_model_len} tokens = {tokens} tokens "
                                  f"(max_batch_tokens {budget}) in {seconds:.2f}s on this CPU; "
                                  f"max_poll_interval_ms {settings.max_poll_interval_ms}")


def _backlog(broker, pool, topics, report, n: int, label: str) -> None:
    bs = broker.bootstrap_servers
    create_topics(bs, topics, partitions=3)
    messages = embed_requests(n)
    # full-budget requests among the small ones: each is a batch of its own of max_batch_tokens
    long = [(f"long{i}".encode(), json.dumps({"request_id": f"long{i}", "task": "embed", "model": "minilm",
                                                 "input": [LONG_TEXT] * 32, "truncate_prompt_tokens": -1}).encode())
            for i in range(2)]
    messages[n // 3:n // 3] = long[:1]
    messages[2 * n // 3:2 * n // 3] = long[1:]
    produce(bs, topics["requests_topic"], messages)
    worker = pool.worker(bs, topics, "worker", max_inflight_requests=MAX_INFLIGHT, max_poll_records=MAX_POLL_RECORDS,
                         max_poll_interval_ms=10_000)
    reader = TopicReader(bs, topics["results_topic"])
    samples: list[tuple[float, int]] = []
    inflight_max = 0.0
    last_scrape = 0.0

    def sample() -> None:
        nonlocal inflight_max, last_scrape
        samples.append((time.monotonic(), worker.rss_bytes()))
        if time.monotonic() - last_scrape > 0.5:
            inflight_max = max(inflight_max, worker.metric("poolworker_inflight_requests"))
            last_scrape = time.monotonic()

    total = len(messages)
    try:
        assert reader.until(lambda r: len(r) >= 200, 120, on_wait=lambda: worker.alive() or None), worker.tail()
        baseline = worker.rss_bytes()  # model loaded, warmed up, backlog waiting
        started = time.monotonic()
        assert reader.until(lambda r: len(r) >= total, 300, on_wait=sample), worker.tail()
        elapsed = time.monotonic() - started
        reader.settle(1.0)
    finally:
        reader.close()
    ids = [json.loads(r.value)["request_id"] for r in reader.records]
    assert len(ids) == len(set(ids)) == total, "a redelivery (rebalance or failed commit) answered something twice"
    log = worker.log()
    for sign in ("CommitFailedError", "commit failed", "Heartbeat failed", "rebalance", "Revoking previously assigned partitions {"):
        assert sign not in log, f"{sign!r} in the worker log\n{worker.tail()}"
    assert len(re.findall(r"partitions assigned: \[.+\]", log)) == 1  # one assignment, never revoked
    peak = max(rss for _, rss in samples)
    growth_mb = (peak - baseline) / 2**20
    half = len(samples) // 2  # bounded means flat: the second half of the run adds (almost) nothing
    first_half_mb, second_half_mb = (max(r for _, r in part) / 2**20 for part in (samples[:half], samples[half:]))
    assert inflight_max <= MAX_INFLIGHT + MAX_POLL_RECORDS, inflight_max
    assert growth_mb < RSS_GROWTH_BOUND_MB, f"RSS grew {growth_mb:.0f} MB under a backlog of {n}"
    assert second_half_mb - first_half_mb < 60, f"RSS still rising: {first_half_mb:.0f} MB -> {second_half_mb:.0f} MB"
    report[f"backlog {label}"] = (f"{total} requests (2 of 32x256 tokens) in {elapsed:.0f}s with max_poll_interval_ms=10000: "
                                  f"no rebalance, no duplicate; RSS {baseline / 2**20:.0f} MB warm -> peak {peak / 2**20:.0f} MB "
                                  f"(+{growth_mb:.0f} MB, bound {RSS_GROWTH_BOUND_MB}; peak of 1st/2nd half {first_half_mb:.0f}/{second_half_mb:.0f} MB); in-flight max {inflight_max:.0f} "
                                  f"(bound {MAX_INFLIGHT}+{MAX_POLL_RECORDS})")


def test_backlog_5k_bounded_memory_and_no_rebalance(broker, pool, topics, report):
    """Always run: 5,000 requests take ~40 s on a shared 2-core CI machine (~130 short requests/s)."""
    _backlog(broker, pool, topics, report, 5_000, "5k")


@pytest.mark.slow
def test_backlog_50k_bounded_memory_and_no_rebalance(broker, pool, topics, report):
    _backlog(broker, pool, topics, report, 50_000, "50k")
