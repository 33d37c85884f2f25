"""PyLate ColBERT checkpoints (issue 14, item 4): Transformer → PyLate ``Dense`` → normalize per
token, scored with MaxSim, and refused at load when PyLate would prepare the inputs (markers,
query expansion, skiplist, query/document truncation), which the engine does not do.

PyLate 1.6.0 (the release on PyPI) does not run with sentence-transformers 6.2: it reads none of
its own config and ``encode`` fails (no ``_text_length``). The reference is therefore PyLate's
published pipeline for a checkpoint configured to feed the text as given, computed here with
transformers' ``BertModel`` on the same weights, each text alone: ``Dense`` (a bias-free Linear)
on every token's hidden state, L2-normalized per token; ``colbert_scores`` = sum over query tokens
of the max dot product with the document's tokens.
"""

from __future__ import annotations

from pathlib import Path

import builders
import pytest
import torch
import torch.nn.functional as F
from fidelity_models import FAMILIES, build
from refs import as_tensor, assert_clean_error

ATOL = 1e-4
DIM = 24
AS_GIVEN = {"query_prefix": "", "document_prefix": "", "query_length": 256, "document_length": 256,
            "do_query_expansion": False, "attend_to_expansion_tokens": False, "skiplist_words": []}
QUERY = "what carries the requests?"
DOCS = ["Kafka carries the requests, and workers answer.", "bread", "A much longer document about pooling models " * 3]


def _pylate_folder(out: Path, pylate_config: dict | None) -> Path:
    """A tiny BERT saved the way PyLate saves a ColBERT: Transformer + ``pylate.models.Dense``."""
    from safetensors.torch import save_file

    build(FAMILIES["bert"], "embed", out)
    builders._write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ])
    builders._write_json(out / "1_Dense" / "config.json", {
        "in_features": 64, "out_features": DIM, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False,
    })
    weight = torch.randn(DIM, 64, generator=builders._gen(5)) * 0.2
    save_file({"linear.weight": weight}, str(out / "1_Dense" / "model.safetensors"))
    builders._write_json(out / "sentence_bert_config.json", {"max_seq_length": 256, "do_lower_case": False})
    if pylate_config is not None:
        builders._write_json(out / "config_sentence_transformers.json", {**pylate_config, "similarity_fn_name": "MaxSim"})
    return out


@pytest.fixture(scope="module")
def pylate_path(tmp_path_factory) -> Path:
    return _pylate_folder(tmp_path_factory.mktemp("pylate"), AS_GIVEN)


@pytest.fixture(scope="module")
def token_vectors(pylate_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(str(pylate_path)).eval()
    tok = AutoTokenizer.from_pretrained(str(pylate_path))
    weight = load_file(str(pylate_path / "1_Dense" / "model.safetensors"))["linear.weight"]

    @torch.no_grad()
    def run(text: str) -> torch.Tensor:
        ids = torch.tensor([tok(text)["input_ids"]])
        return F.normalize(model(input_ids=ids).last_hidden_state[0] @ weight.T, dim=-1)

    return run


def _colbert_score(q: torch.Tensor, d: torch.Tensor) -> float:
    return (q @ d.T).max(dim=1).values.sum().item()


def test_token_embed_and_maxsim_match_pylate_pipeline(pylate_path, token_vectors, Engine):
    engine = Engine(str(pylate_path), device="cpu")
    assert engine.default_task == "token_embed" and engine.score_mode == "late-interaction"
    texts = [QUERY, *DOCS]
    batched = engine.encode(texts, pooling_task="token_embed", use_tqdm=False)
    for text, out in zip(texts, batched):
        expected = token_vectors(text)
        alone = engine.encode([text], pooling_task="token_embed", use_tqdm=False)[0]
        for what, got in (("batched", out), ("alone", alone)):
            diff = (as_tensor(got.outputs.data) - expected).abs().max().item()
            assert as_tensor(got.outputs.data).shape == expected.shape and diff <= ATOL, f"{what} {text[:15]!r}: {diff:.2e}"
    expected = torch.tensor([_colbert_score(token_vectors(QUERY), token_vectors(d)) for d in DOCS])
    got = torch.tensor([o.outputs.score for o in engine.score(QUERY, DOCS, use_tqdm=False)])
    assert (got - expected).abs().max().item() <= ATOL


@pytest.mark.parametrize(("config", "needles"), [
    (None, ["'[Q] '", "'[D] '", "expansion", "skiplist", "query_length=32"]),
    ({}, ["marker"]),
    ({**AS_GIVEN, "query_prefix": "[Q] "}, ["query marker '[Q] '"]),
    ({**AS_GIVEN, "do_query_expansion": True}, ["expansion tokens"]),
    ({**AS_GIVEN, "skiplist_words": [","]}, ["skiplist"]),
    ({**AS_GIVEN, "document_length": 180}, ["truncates documents"]),
])
def test_pylate_input_preparation_is_refused(config, needles, tmp_path, Engine):
    path = _pylate_folder(tmp_path / "m", config)
    assert_clean_error(lambda: Engine(str(path), device="cpu"), "PyLate", *needles)
