"""ColBERT-style late interaction: per-token projections and MaxSim scores vs a direct computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from builders import colbert_dense_weight
from refs import ATOL, assert_close, bert_hidden, data

QUERY = "what is late interaction retrieval"
DOCS = [
    "ColBERT encodes queries and documents into token-level vectors and scores them with MaxSim.",
    "A recipe for banana bread.",
    "Late interaction keeps one vector per token.",
]


@pytest.fixture(scope="session")
def colbert_engine(Engine, colbert_path):
    return Engine(str(colbert_path))


@pytest.fixture(scope="session")
def colbert_ref(colbert_path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(colbert_path)).eval()
    tok = AutoTokenizer.from_pretrained(str(colbert_path))
    weight = colbert_dense_weight(colbert_path)

    def token_vectors(text: str) -> torch.Tensor:
        ids = tok(text)["input_ids"]
        return F.normalize(bert_hidden(model, ids) @ weight.T, dim=-1)

    return tok, token_vectors


def _maxsim(q: torch.Tensor, d: torch.Tensor) -> float:
    return (q @ d.T).max(dim=1).values.sum().item()


def test_colbert_supported_tasks(colbert_engine):
    assert "token_embed" in tuple(colbert_engine.supported_tasks)


def test_colbert_token_embed(colbert_engine, colbert_ref):
    tok, token_vectors = colbert_ref
    texts = [QUERY] + DOCS
    outs = colbert_engine.encode(texts, pooling_task="token_embed")
    assert len(outs) == len(texts)
    for t, o in zip(texts, outs):
        n = len(tok(t)["input_ids"])
        d = o.outputs.data
        assert isinstance(d, torch.Tensor)
        assert tuple(d.shape) == (n, 48)
        assert_close(d, token_vectors(t), what=f"token_embed {t[:20]!r}")


def test_colbert_token_embed_vs_sentence_transformers(colbert_engine, colbert_path):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(colbert_path), device="cpu")
    text = DOCS[0]
    ref = st.encode([text], output_value="token_embeddings", convert_to_tensor=False)[0]
    ref = F.normalize(torch.as_tensor(ref).float(), dim=-1)
    got = data(colbert_engine.encode([text], pooling_task="token_embed")[0])
    assert_close(got, ref, what="vs ST token_embeddings")


def test_colbert_maxsim_score(colbert_engine, colbert_ref):
    _, token_vectors = colbert_ref
    qv = token_vectors(QUERY)
    expected = torch.tensor([_maxsim(qv, token_vectors(d)) for d in DOCS])
    outs = colbert_engine.score(QUERY, DOCS)
    assert len(outs) == len(DOCS)
    assert_close([o.outputs.score for o in outs], expected, atol=1e-4, what="MaxSim 1-vs-N")

    one = colbert_engine.score(QUERY, DOCS[1])
    assert len(one) == 1 and abs(one[0].outputs.score - expected[1].item()) <= 1e-4

    queries = [QUERY, "banana", "vectors per token"]
    pair = colbert_engine.score(queries, DOCS)
    exp_pair = torch.tensor([_maxsim(token_vectors(q), token_vectors(d)) for q, d in zip(queries, DOCS)])
    assert_close([o.outputs.score for o in pair], exp_pair, atol=1e-4, what="MaxSim N-vs-N")


def test_colbert_rerank(colbert_engine, colbert_ref):
    _, token_vectors = colbert_ref
    qv = token_vectors(QUERY)
    expected = torch.tensor([_maxsim(qv, token_vectors(d)) for d in DOCS])
    res = colbert_engine.rerank(QUERY, DOCS, top_n=2)
    assert [r.index for r in res] == torch.argsort(expected, descending=True).tolist()[:2]
    for r in res:
        assert abs(r.relevance_score - expected[r.index].item()) <= 1e-4


def test_colbert_batch_invariance(colbert_engine):
    texts = [QUERY] + DOCS
    together = colbert_engine.encode(texts, pooling_task="token_embed")
    for t, o in zip(texts, together):
        alone = colbert_engine.encode([t], pooling_task="token_embed")[0]
        assert_close(data(alone), data(o), atol=ATOL, what="token_embed alone vs batch")
