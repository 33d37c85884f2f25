"""Hypothesis fuzz of the worker's whole in-process path, beyond the parser (whose own fuzz tests
are in tests/test_protocol.py): records -> Preparer (parse, route, plan, cache, tokenize) ->
infer (the real MiniLM) -> Publisher (shape, encode, send). For any input, no exception
escapes, every record is sent exactly once (a result or a dead letter), and every record is
finished, so its offset can be committed."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.structs import TopicPartition

from poolworker.batching import infer
from poolworker.cache import make_cache
from poolworker.consumers.publisher import Publisher
from poolworker.metrics import Metrics
from poolworker.prepare import Preparer
from poolworker.protocol import TASKS
from poolworker.work import DeadLetter, Source

from .procs import AckedAtOnce, kafka_transport_over

FIELDS = ["request_id", "task", "model", "input", "text_1", "text_2", "queries", "documents", "query", "pooling_task",
          "dimensions", "truncate_prompt_tokens", "truncation_side", "use_activation", "encoding_format", "top_n",
          "return_documents", "reply_to", "metadata"]
words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | words)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(words, inner, max_size=3), max_leaves=8)
plausible = {
    "task": st.sampled_from([*TASKS, "summarize", ""]),
    "model": st.sampled_from(["minilm", "nope", ""]) | st.none(),
    "input": words | st.lists(words, min_size=0, max_size=4) | st.lists(st.integers(min_value=-5, max_value=40_000), max_size=6),
    "documents": st.lists(words, max_size=4) | values,
    "dimensions": st.integers(min_value=-3, max_value=500) | values,
    "top_n": st.integers(min_value=-1, max_value=6) | values,
    "reply_to": st.sampled_from(["__consumer_offsets", "other", "r.results", "bad name"]) | values,
}
body = st.fixed_dictionaries(
    {"request_id": words | values, "task": plausible["task"]},
    optional={name: plausible.get(name, values) for name in FIELDS if name not in ("request_id", "task")},
)


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, value))
        return AckedAtOnce()


def _serialise(b: object, cut: int | None) -> bytes:
    raw = json.dumps(b, allow_nan=True).encode()
    return raw if cut is None else raw[:cut]


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(st.tuples(body, st.none() | st.integers(min_value=0, max_value=120)), min_size=1, max_size=4))
def test_fuzz_records_through_the_worker_path(minilm_engine, bodies):
    preparer = _preparer(minilm_engine)
    producer = _Producer()
    transport = kafka_transport_over(producer)
    tracker = transport.tracker
    publisher = Publisher(transport, make_cache(None), Metrics(), dlq_topic="dlq")
    records = [(Source("req", 0, i, f"k{i}".encode(), None), _serialise(b, cut)) for i, (b, cut) in enumerate(bodies)]
    for source, _ in records:
        tracker.add(TopicPartition("req", 0), source.offset)
    outcomes = preparer.prepare(records)
    assert len(outcomes) == len(records)
    prepared = []
    for outcome in outcomes:
        if isinstance(outcome, DeadLetter):
            publisher.dead_letter(outcome)
        else:
            prepared.append(outcome)
    publisher.publish(infer(prepared))
    assert len(producer.sent) == len(records)
    assert tracker.inflight() == 0
    for topic, value in producer.sent:
        if topic != "dlq":
            message = json.loads(value)
            assert (message["error"] is None) == ("data" in message or "results" in message), message


_PREPARERS: dict[int, Preparer] = {}


def _preparer(engine) -> Preparer:
    if id(engine) not in _PREPARERS:
        _PREPARERS[id(engine)] = Preparer({"minilm": engine}, make_cache(None), results_topic="r.results",
                                          allowed_reply_topics=r"r\..*", max_request_bytes=1 << 20, max_items_per_request=64)
    return _PREPARERS[id(engine)]
