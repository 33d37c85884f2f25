"""Sequence / token classifiers and the cross-encoder, against transformers and sentence-transformers."""

from __future__ import annotations

import pytest
import torch
from builders import SEQ_CLS_LABELS, TOKEN_CLS_LABELS
from refs import ATOL, assert_close, data

TEXTS = [
    "I absolutely loved this film, the acting was superb.",
    "Meh.",
    "The service was slow and the food arrived cold; I will not be coming back to this place again.",
    "",
    "Neutral statement about the weather in Paris on a Tuesday afternoon.",
]


# ----------------------------------------------------------------------------------------------
# Sequence classifier (3 labels)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def seq_cls_engine(Engine, seq_cls_path):
    return Engine(str(seq_cls_path))


@pytest.fixture(scope="session")
def seq_cls_ref(seq_cls_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(seq_cls_path)).eval()
    tok = AutoTokenizer.from_pretrained(str(seq_cls_path))
    logits = []
    with torch.no_grad():
        for t in TEXTS:  # one at a time: no padding in the reference
            enc = tok(t, return_tensors="pt")
            logits.append(model(**enc).logits[0].float())
    return torch.stack(logits), tok


def test_seq_cls_supported_tasks(seq_cls_engine):
    assert "classify" in tuple(seq_cls_engine.supported_tasks)


def test_seq_cls_probs_and_labels(seq_cls_engine, seq_cls_ref):
    logits, tok = seq_cls_ref
    expected = torch.softmax(logits, dim=-1)
    # The seeded head must give clearly different, non-uniform probabilities.
    assert (expected.max(dim=-1).values - expected.min(dim=-1).values).min() > 0.05
    outs = seq_cls_engine.classify(TEXTS)
    assert len(outs) == len(TEXTS)
    for i, o in enumerate(outs):
        assert len(o.outputs.probs) == 3
        assert_close(o.outputs.probs, expected[i], what=f"probs {i}")
        assert o.outputs.label == SEQ_CLS_LABELS[int(expected[i].argmax())]
        assert list(o.prompt_token_ids) == tok(TEXTS[i])["input_ids"]


def test_seq_cls_raw_logits(seq_cls_engine, seq_cls_ref):
    logits, _ = seq_cls_ref
    outs = seq_cls_engine.classify(TEXTS, use_activation=False)
    for i, o in enumerate(outs):
        assert_close(o.outputs.probs, logits[i], what=f"raw logits {i}")


def test_seq_cls_encode_classify(seq_cls_engine, seq_cls_ref):
    logits, _ = seq_cls_ref
    outs = seq_cls_engine.encode(TEXTS, pooling_task="classify")
    for i, o in enumerate(outs):
        assert tuple(o.outputs.data.shape) == (3,)
        assert_close(data(o), torch.softmax(logits[i], -1), what=f"encode classify {i}")


def test_seq_cls_calibration(Engine, PoolerConfig, seq_cls_path, seq_cls_ref):
    logits, _ = seq_cls_ref
    mean, sigma = 0.7, 2.5
    eng = Engine(str(seq_cls_path), pooler_config=PoolerConfig(logit_mean=mean, logit_sigma=sigma))
    outs = eng.classify(TEXTS)
    expected = torch.softmax((logits - mean) / sigma, dim=-1)
    for i, o in enumerate(outs):
        assert_close(o.outputs.probs, expected[i], what=f"calibrated {i}")


def test_seq_cls_token_id_prompts(seq_cls_engine, seq_cls_ref):
    logits, tok = seq_cls_ref
    ids = [tok(t)["input_ids"] for t in TEXTS[:3]]
    outs = seq_cls_engine.classify(ids)
    for i, o in enumerate(outs):
        assert_close(o.outputs.probs, torch.softmax(logits[i], -1), what=f"ids {i}")


def test_seq_cls_batch_invariance(seq_cls_engine):
    together = seq_cls_engine.classify(TEXTS)
    for t, o in zip(TEXTS, together):
        alone = seq_cls_engine.classify([t])[0]
        assert_close(alone.outputs.probs, o.outputs.probs, what="classify alone vs batch")


# ----------------------------------------------------------------------------------------------
# Cross-encoder (num_labels=1)
# ----------------------------------------------------------------------------------------------
QUERY = "How do I sort a list in Python?"
DOCS = [
    "Use the built-in sorted() function or list.sort().",
    "The Eiffel Tower is in Paris.",
    "Python lists have a sort method that sorts in place; sorted returns a new list.",
    "Bananas are yellow.",
    "To reverse a list, call list.reverse().",
]


@pytest.fixture(scope="session")
def ce_engine(Engine, cross_encoder_path):
    return Engine(str(cross_encoder_path))


@pytest.fixture(scope="session")
def ce_ref(cross_encoder_path):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(cross_encoder_path), device="cpu")


def _ce_scores(ce_ref, pairs):
    return torch.as_tensor(ce_ref.predict(pairs, convert_to_numpy=True, batch_size=1)).float().reshape(-1)


def test_cross_encoder_one_vs_n(ce_engine, ce_ref):
    expected = _ce_scores(ce_ref, [(QUERY, d) for d in DOCS])
    assert expected.max() - expected.min() > 1e-3, "seeded head gives indistinguishable scores"
    outs = ce_engine.score(QUERY, DOCS)
    assert len(outs) == len(DOCS)
    assert all(type(o.outputs.score) is float for o in outs)
    assert_close([o.outputs.score for o in outs], expected, what="cross-encoder 1-vs-N")


def test_cross_encoder_one_vs_one(ce_engine, ce_ref):
    expected = _ce_scores(ce_ref, [(QUERY, DOCS[2])])
    outs = ce_engine.score(QUERY, DOCS[2])
    assert len(outs) == 1
    assert abs(outs[0].outputs.score - expected[0].item()) <= ATOL


def test_cross_encoder_n_vs_n(ce_engine, ce_ref):
    queries = [QUERY, "Where is the Eiffel Tower?", "fruit colours"]
    docs = DOCS[:3]
    expected = _ce_scores(ce_ref, list(zip(queries, docs)))
    outs = ce_engine.score(queries, docs)
    assert len(outs) == 3
    assert_close([o.outputs.score for o in outs], expected, what="cross-encoder N-vs-N")


def test_cross_encoder_rerank(ce_engine, ce_ref):
    expected = _ce_scores(ce_ref, [(QUERY, d) for d in DOCS])
    order = torch.argsort(expected, descending=True).tolist()

    res = ce_engine.rerank(QUERY, DOCS)
    assert [r.index for r in res] == order
    scores = [r.relevance_score for r in res]
    assert scores == sorted(scores, reverse=True)
    for r in res:
        assert abs(r.relevance_score - expected[r.index].item()) <= ATOL
        doc = r.document
        text = doc if isinstance(doc, str) else getattr(doc, "text", doc)
        assert text == DOCS[r.index]

    top = ce_engine.rerank(QUERY, DOCS, top_n=2)
    assert [r.index for r in top] == order[:2]

    bare = ce_engine.rerank(QUERY, DOCS, return_documents=False)
    assert [r.index for r in bare] == order
    assert all(r.document is None for r in bare)

    every = ce_engine.rerank(QUERY, DOCS, top_n=len(DOCS))
    assert [r.index for r in every] == order


def test_cross_encoder_supported_tasks(ce_engine):
    tasks = tuple(ce_engine.supported_tasks)
    assert "score" in tasks or "classify" in tasks


# ----------------------------------------------------------------------------------------------
# Token classifier
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def token_cls_engine(Engine, token_cls_path):
    return Engine(str(token_cls_path))


def test_token_classify(token_cls_engine, token_cls_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(str(token_cls_path)).eval()
    tok = AutoTokenizer.from_pretrained(str(token_cls_path))
    assert model.config.id2label == TOKEN_CLS_LABELS
    texts = ["John lives in Berlin.", "Marie Curie was born in Warsaw and worked in Paris for decades.", "x"]
    outs = token_cls_engine.encode(texts, pooling_task="token_classify")
    assert len(outs) == len(texts)
    for t, o in zip(texts, outs):
        ids = tok(t)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        d = o.outputs.data
        assert isinstance(d, torch.Tensor)
        assert not d.requires_grad, "pooled outputs must not carry an autograd graph"
        assert tuple(d.shape) == (len(ids), 5), "one row per prompt token, [CLS] and [SEP] included"
        assert_close(d, torch.softmax(logits, dim=-1), what=f"token_classify {t!r}")


def test_token_classify_supported(token_cls_engine):
    assert "token_classify" in tuple(token_cls_engine.supported_tasks)
