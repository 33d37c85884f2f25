"""IO processor plugins: loading by entry point, and the bundled ``text_chunker`` checked against
the model's own tokenizer (passage boundaries) and sentence-transformers (passage vectors)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from poolworker.config import parse_model_options
from poolworker.plugins.chunking import TextChunker
from poolworker.plugins.interface import PluginInputError
from poolworker.plugins.offline import context_for, run_plugin
from poolworker.plugins.registry import load_processor


@pytest.fixture(scope="module")
def chunker(minilm_engine) -> TextChunker:
    return load_processor("text_chunker", context_for(minilm_engine, "minilm"))


@pytest.fixture(scope="module")
def document(corpus) -> str:
    return "\n\n".join(corpus[:40])  # real docstrings: several hundred tokens


def test_the_bundled_plugin_loads_by_its_entry_point_name(chunker) -> None:
    assert isinstance(chunker, TextChunker) and chunker.context.model == "minilm"


def test_an_unknown_plugin_names_the_installed_ones(minilm_engine) -> None:
    with pytest.raises(ValueError, match="text_chunker"):
        load_processor("no_such_plugin", context_for(minilm_engine))


def test_processor_specs_name_served_models() -> None:
    """--io-processor (and --hf-overrides) take MODEL=VALUE for a model the worker serves, once."""
    models = {"minilm": "all-MiniLM-L6-v2"}
    assert parse_model_options(["minilm=text_chunker"], models, "--io-processor") == {"minilm": "text_chunker"}
    for bad, says in ((["minilm"], "MODEL=VALUE"), (["other=text_chunker"], "no --model is named 'other'"),
                      (["minilm=a", "minilm=b"], "twice")):
        with pytest.raises(ValueError, match=says):
            parse_model_options(bad, models, "--io-processor")


def test_passages_cover_the_text_within_the_token_limit(chunker, document, minilm_tokenizer) -> None:
    parsed = chunker.parse_request({"data": {"text": document, "max_tokens": 64, "overlap_tokens": 8}})
    total = len(minilm_tokenizer(document, add_special_tokens=False)["input_ids"])
    assert total > 3 * 64, "the document must need several passages"
    spans = parsed.spans
    assert spans[0][0] == len(document) - len(document.lstrip())
    assert spans[-1][1] == len(document.rstrip())
    for (_, a1), (b0, b1) in pairwise(spans):
        assert b0 < a1 <= b1, "consecutive passages overlap and move forward"
    for start, end in spans:
        assert len(minilm_tokenizer(document[start:end], add_special_tokens=False)["input_ids"]) <= 64 + 2


def test_passage_vectors_equal_sentence_transformers(chunker, document, minilm_engine, minilm_st) -> None:
    data = run_plugin(minilm_engine, chunker, {"data": {"text": document, "max_tokens": 96, "overlap_tokens": 16}})
    passages = data["passages"]
    assert [p["index"] for p in passages] == list(range(len(passages))) and len(passages) >= 3
    reference = minilm_st.encode([p["text"] for p in passages], normalize_embeddings=True)
    for passage, expected in zip(passages, reference):
        assert passage["text"] == document[passage["start"]:passage["end"]]
        np.testing.assert_allclose(passage["embedding"], expected, atol=2e-5)


@pytest.mark.parametrize("data, param", [
    (None, "data"),
    ({"text": ""}, "data.text"),
    ({"text": 42}, "data.text"),
    ({"text": "x", "max_tokens": 0}, "data.max_tokens"),
    ({"text": "x", "max_tokens": 10_000}, "data.max_tokens"),
    ({"text": "x", "max_tokens": 8, "overlap_tokens": 8}, "data.overlap_tokens"),
    ({"text": "x", "max_tokens": True}, "data.max_tokens"),
    ({"text": "x", "stride": 3}, "data.stride"),
])
def test_bad_data_is_a_typed_error_naming_the_field(chunker, data, param) -> None:
    with pytest.raises(PluginInputError) as err:
        chunker.parse_request({"data": data})
    assert err.value.param == param


def test_the_worker_serves_plugin_requests_through_kafka(broker, minilm_engine, minilm_st, document) -> None:
    """Task ``plugin`` and vLLM's ``/pooling`` form (``data`` without ``input``) both go through
    the model's plugin; a model without one, and bad data, are error results naming the field."""
    from streaming import RunningWorker, worker_settings

    from poolworker.cache import make_cache
    from poolworker.client import PoolClient
    from poolworker.metrics import Metrics
    from poolworker.worker import Worker

    settings = worker_settings(broker, io_processors=["chunked=text_chunker"])
    engines = {"chunked": minilm_engine, "plain": minilm_engine}
    running = RunningWorker(Worker(settings, engines=engines, cache=make_cache(None), metrics=Metrics())).start()
    try:
        with PoolClient(broker.bootstrap_servers, requests_topic=settings.requests_topic,
                        results_topic=settings.results_topic) as client:
            data = {"text": document, "max_tokens": 80, "overlap_tokens": 8}
            answers = [client.submit({"task": task, "model": "chunked", "data": data}) for task in ("plugin", "pooling")]
            no_plugin = client.submit({"task": "plugin", "model": "plain", "data": data})
            bad = client.submit({"task": "plugin", "model": "chunked", "data": {"text": document, "max_tokens": 0}})
            client.flush()
            for answer in answers:
                message = answer.result(120)
                assert message["error"] is None and message["task"] == "plugin", message["error"]
                passages = message["data"]["passages"]
                reference = minilm_st.encode([p["text"] for p in passages], normalize_embeddings=True)
                assert len(passages) >= 3 and isinstance(message["created_at"], int)
                for passage, expected in zip(passages, reference):
                    assert passage["text"] == document[passage["start"]:passage["end"]]
                    np.testing.assert_allclose(passage["embedding"], expected, atol=2e-5)
            assert no_plugin.result(60)["error"]["type"] == "unsupported_task"
            assert bad.result(60)["error"] == {"type": "invalid_request", "param": "data.max_tokens",
                                               "message": "data.max_tokens must be an integer from 1 to 254"}
    finally:
        running.stop()
