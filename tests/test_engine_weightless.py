"""An engine loaded with ``weights=False`` (what a worker process holds while its model process
runs the forwards): for every model family the tests build, the same facts, limits and token
ids as the full engine from the same folder, no tensor off the meta device, and a forward pass
refused with ``WeightsNotLoaded`` rather than run on nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import engine_tensors

from poolworker.engine.prompts import Truncation
from poolworker.engine.runner import WeightsNotLoaded

FAMILIES = ["minilm_path", "splade_path", "seq_cls_path", "cross_encoder_path", "token_cls_path", "colbert_path",
            "decoder_left_path", "llama_path", "reward_path"]


@pytest.fixture(scope="module")
def pylate_path(tmp_path_factory) -> Path:
    """A PyLate checkpoint: its Sentence-Transformers Dense projector is loaded apart from the backbone."""
    import pylate_models as pm

    return pm.build_checkpoint(tmp_path_factory.mktemp("pylate"), "bert", next(iter(pm.CONFIGS.values())))


@pytest.mark.parametrize("family", [*FAMILIES, "pylate_path"])
def test_an_engine_without_weights_knows_what_the_full_one_knows(family, request, Engine, corpus):
    path = request.getfixturevalue(family)
    full, light = Engine(str(path)), Engine(str(path), weights=False)
    if family == "pylate_path":
        assert full.model.projector is not None and full.model.pylate is not None
    assert light.describe() == full.describe()
    assert light.runner.max_batch_tokens == full.runner.max_batch_tokens
    assert light.model.vocab_size == full.model.vocab_size
    assert light.model.accepts_token_type_ids == full.model.accepts_token_type_ids
    assert (light.model.packed is None) == (full.model.packed is None)
    tensors = engine_tensors(light)
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert all(t.device.type != "meta" for t in engine_tensors(full))
    texts = corpus[:50]
    for trunc in (Truncation(None, "right", special_tokens=True), Truncation(16, "left", special_tokens=False)):
        labels = [f"input[{i}]" for i in range(len(texts))]
        assert light.tokenizer.encode_each(texts, trunc, labels) == full.tokenizer.encode_each(texts, trunc, labels)
    with pytest.raises(WeightsNotLoaded, match="without weights"):
        light.runner.forward([[1, 2, 3]])
