"""The worker's receive and infer stages on their own, without a broker: the Preparer
(parse → route → plan → cache → tokenize a whole poll) and the MicroBatcher/infer (token budget,
order, isolation of failures). References: the offline Engine (itself checked against
transformers / sentence-transformers in test_engine_*) and the cache's own encoding."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import numpy as np
import pytest

from poolworker.batching import MicroBatcher, infer
from poolworker.cache import MemoryCache, encode_value, make_cache
from poolworker.prepare import Preparer
from poolworker.tasks import run_call
from poolworker.work import DeadLetter, Finished, Prepared, Source

TEXTS = ["Kafka partitions spread load.", "Bananas are yellow.", "A third, rather longer sentence about consumer groups."]


def records(*bodies: object) -> list[tuple[Source, bytes | None]]:
    out = []
    for i, body in enumerate(bodies):
        value = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        out.append((Source("req", 0, i, f"k{i}".encode(), None), value))
    return out


def preparer(engines, cache=None) -> Preparer:
    return Preparer(engines, make_cache(None) if cache is None else cache, results_topic="res", allowed_reply_topics=None,
                    max_request_bytes=1 << 20, max_items_per_request=64)


@pytest.fixture(scope="module")
def engines(minilm_engine):
    return {"minilm": minilm_engine}


# ------------------------------------------------------------------------------------------------
# Preparer
# ------------------------------------------------------------------------------------------------
def test_prepared_requests_carry_the_engines_own_token_ids(engines, minilm_engine):
    out = preparer(engines).prepare(records(
        {"request_id": "a", "task": "embed", "input": TEXTS[:2]},
        {"request_id": "b", "task": "embed", "input": TEXTS[2], "truncate_prompt_tokens": 5},
    ))
    a, b = out
    assert isinstance(a, Prepared) and a.error is None
    assert [x.ids for _, x in a.inputs] == minilm_engine.tokenize(TEXTS[:2], pooling_task="embed")
    assert [x.ids for _, x in b.inputs] == minilm_engine.tokenize([TEXTS[2]], pooling_task="embed", truncate_prompt_tokens=5)
    assert a.cost_tokens == sum(len(x.ids) for _, x in a.inputs)


def test_option_sets_are_checked_once_and_their_errors_every_time(engines, minilm_engine, monkeypatch):
    """The preparer reuses a model call per option set across polls; a refused option set is
    refused again each time (never remembered as accepted), and another set gets its own call."""
    import poolworker.prepare as prepare_module

    checked = []
    real = prepare_module.model_call
    monkeypatch.setattr(prepare_module, "model_call", lambda engine, plan: checked.append(plan.options) or real(engine, plan))
    p = preparer(engines)
    good = {"request_id": "g", "task": "embed", "input": TEXTS[0]}
    bad = {"request_id": "b", "task": "embed", "input": TEXTS[0], "dimensions": 4096}  # past MiniLM's 384: refused
    first = p.prepare(records(good, bad, good))
    second = p.prepare(records(bad, good, {**good, "truncate_prompt_tokens": 4}))
    assert [o.error is None for o in first + second] == [True, False, True, False, True, True]
    assert first[1].error.type == second[0].error.type == "invalid_request"
    assert first[1].error.param == second[0].error.param == "dimensions"
    assert first[0].call is first[2].call is second[1].call  # one call object per option set
    assert [x.ids for _, x in second[2].inputs] == minilm_engine.tokenize([TEXTS[0]], pooling_task="embed", truncate_prompt_tokens=4)
    good_options = first[0].plan.options
    assert checked.count(good_options) == 1  # checked once for three requests in two polls
    assert len([o for o in checked if ("dimensions", 4096) in o]) == 2  # the refused set, each time


def test_one_outcome_per_record_in_order_with_typed_errors(engines):
    out = preparer(engines).prepare(records(
        b"{not json",
        {"request_id": "long", "task": "embed", "input": ["fine", "word " * 600]},
        {"request_id": "vocab", "task": "embed", "input": [[101, 7592, 102], [101, 10**7, 102]]},
        {"request_id": "task", "task": "classify", "input": "x"},
        {"request_id": "dims", "task": "embed", "input": "x", "dimensions": 999},
        {"request_id": "room", "task": "embed", "input": "x", "truncate_prompt_tokens": 1},
        {"request_id": "ok", "task": "embed", "input": "after the bad ones"},
    ))
    assert isinstance(out[0], DeadLetter) and out[0].reason.startswith("not JSON")
    got = {p.request_id: p.error for p in out[1:]}
    assert (got["long"].type, got["long"].param) == ("input_too_long", "input[1]")
    assert (got["vocab"].type, got["vocab"].param) == ("invalid_request", "input[1]")
    assert (got["task"].type, got["task"].param) == ("unsupported_task", "task")
    assert (got["dims"].type, got["dims"].param) == ("invalid_request", "dimensions")
    assert (got["room"].type, got["room"].param) == ("invalid_request", "truncate_prompt_tokens")
    assert got["ok"] is None
    assert all(not p.inputs for p in out[1:-1])  # a failed request sends nothing to the model


def test_whole_poll_is_tokenized_in_one_call_per_model_and_truncation(engines, minilm_engine, monkeypatch):
    calls = []
    real = minilm_engine.tokenizer.encode_each

    def spy(prompts, trunc, labels):
        calls.append((len(prompts), trunc))
        return real(prompts, trunc, labels)

    monkeypatch.setattr(minilm_engine.tokenizer, "encode_each", spy)
    preparer(engines).prepare(records(*(
        {"request_id": f"r{i}", "task": "embed", "input": TEXTS[i % 3]} for i in range(20)
    ), {"request_id": "t", "task": "embed", "input": TEXTS, "truncate_prompt_tokens": 8}))
    assert sorted(n for n, _ in calls) == [3, 20]


def test_cached_items_skip_tokenization_and_the_rest_still_run(engines, minilm_engine):
    cache = MemoryCache()
    prep = preparer(engines, cache)
    first = prep.prepare(records({"request_id": "a", "task": "embed", "input": TEXTS[:2]}))[0]
    done = infer([first])[0]
    cache.set_many({first.cache_keys[i]: encode_value(done.results[i].data, done.results[i].num_tokens) for i in done.fresh})
    again = prep.prepare(records({"request_id": "b", "task": "embed", "input": TEXTS}))[0]
    assert [r is not None for r in again.cached] == [True, True, False]
    assert [i for i, _ in again.inputs] == [2]
    finished = infer([again])[0]
    assert finished.fresh == (2,)
    reference = [o.outputs.embedding for o in minilm_engine.embed(TEXTS, use_tqdm=False)]
    for result, ref in zip(finished.results, reference):
        np.testing.assert_allclose(result.data, ref, atol=1e-6)


def test_score_pairs_are_prepared_as_token_ids_of_both_sides(engines, minilm_engine):
    prepared = preparer(engines).prepare(records({"request_id": "s", "task": "score", "text_1": "q", "text_2": TEXTS}))[0]
    assert prepared.error is None and prepared.call.mode == "bi-encoder"
    finished = infer([prepared])[0]
    reference = [o.outputs.score for o in minilm_engine.score("q", TEXTS, use_tqdm=False)]
    np.testing.assert_allclose([r.data for r in finished.results], reference, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# infer and the MicroBatcher
# ------------------------------------------------------------------------------------------------
def test_infer_matches_the_engine_across_requests_sharing_a_call(engines, minilm_engine):
    prepared = preparer(engines).prepare(records(*({"request_id": f"r{i}", "task": "embed", "input": t} for i, t in enumerate(TEXTS))))
    assert len({p.call for p in prepared}) == 1
    finished = infer(prepared)
    reference = minilm_engine.embed(TEXTS, use_tqdm=False)
    assert [f.prepared.request_id for f in finished] == ["r0", "r1", "r2"]
    for f, ref in zip(finished, reference):
        np.testing.assert_allclose(f.results[0].data, ref.outputs.embedding, atol=1e-6)
        assert f.results[0].num_tokens == ref.num_prompt_tokens


def test_a_failing_request_does_not_fail_its_neighbours(engines, monkeypatch):
    prepared = preparer(engines).prepare(records(*({"request_id": f"r{i}", "task": "embed", "input": t} for i, t in enumerate(TEXTS))))
    poisoned = prepared[1].inputs[0][1]

    def fragile(call, inputs):
        if poisoned in inputs:
            raise RuntimeError("boom")
        return run_call(call, inputs)

    monkeypatch.setattr("poolworker.batching.run_call", fragile)
    finished = infer(prepared)
    assert [f.error is None for f in finished] == [True, False, True]
    assert finished[1].error.type == "internal_error" and "boom" in finished[1].error.message


def test_a_nan_from_the_model_answers_that_request_with_an_error(engines, monkeypatch):
    """The model stage checks what it computed, once per request: the publisher then writes
    arrays without looking into them, so a NaN must never get past this point."""
    prepared = preparer(engines).prepare(records(*({"request_id": f"r{i}", "task": "embed", "input": t} for i, t in enumerate(TEXTS))))
    poisoned = prepared[1].inputs[0][1]

    def broken(call, inputs):
        results = run_call(call, inputs)
        return [replace(r, data=np.full_like(r.data, np.nan)) if x is poisoned else r for r, x in zip(results, inputs)]

    monkeypatch.setattr("poolworker.batching.run_call", broken)
    finished = infer(prepared)
    assert [f.error is None for f in finished] == [True, False, True]
    assert finished[1].error.type == "internal_error" and "NaN" in finished[1].error.message
    assert finished[1].fresh == ()  # nothing of it is cached


def test_batches_respect_the_token_budget_and_keep_record_order(engines):
    prepared = preparer(engines).prepare(records(*({"request_id": f"r{i}", "task": "embed", "input": TEXTS[i % 3]} for i in range(30))))
    budget = 40
    batches: list[list[Finished]] = []
    done = threading.Event()

    def handoff(batch):
        batches.append(batch)
        if sum(map(len, batches)) == len(prepared):
            done.set()

    batcher = MicroBatcher(handoff, max_batch_tokens=budget, max_batch_requests=8, max_wait_ms=0).start()
    try:
        batcher.submit(prepared)
        assert done.wait(60)
    finally:
        batcher.stop()
    assert [f.prepared.request_id for b in batches for f in b] == [p.request_id for p in prepared]
    for batch in batches:
        assert len(batch) <= 8
        assert len(batch) == 1 or sum(f.prepared.cost_tokens for f in batch) <= budget
    assert all(f.error is None for b in batches for f in b)


def test_errors_travel_through_the_ordered_queue_without_model_work(engines, monkeypatch):
    prepared = preparer(engines).prepare(records({"request_id": "bad", "task": "classify", "input": "x"}))
    monkeypatch.setattr("poolworker.batching.run_call", lambda call, inputs: pytest.fail("no model work for an error"))
    (finished,) = infer(prepared)
    assert finished.error.type == "unsupported_task" and finished.results == ()


def test_ignored_fields_are_counted_and_travel_as_warnings(engines):
    from prometheus_client import CollectorRegistry

    from poolworker.metrics import Metrics

    registry = CollectorRegistry()
    stage = Preparer(engines, make_cache(None), results_topic="res", allowed_reply_topics=None, max_request_bytes=1 << 20,
                     max_items_per_request=64, metrics=Metrics(registry))
    out = stage.prepare(records({"request_id": "w", "task": "embed", "input": "x", "foo": 1, "top_n": 2},
                                {"request_id": "v", "task": "embed", "input": "y", "foo": 2}))
    assert all(p.error is None for p in out)
    assert out[0].request.warnings == ("unknown field 'foo' ignored",
                                       "field 'top_n' does not apply to a completion 'embed' request; ignored")
    assert registry.get_sample_value("poolworker_ignored_fields_total", {"field": "foo"}) == 2
    assert registry.get_sample_value("poolworker_ignored_fields_total", {"field": "top_n"}) == 1
