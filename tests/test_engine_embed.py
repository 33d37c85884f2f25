"""MiniLM embeddings against sentence-transformers / transformers on the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from refs import ATOL, assert_close, embedding, minilm_embed

MAX_LEN = 256


def test_supported_tasks_minilm(minilm_engine):
    tasks = tuple(minilm_engine.supported_tasks)
    assert "embed" in tasks
    assert "classify" not in tasks


def test_corpus_matches_sentence_transformers(minilm_corpus_run):
    ref = minilm_corpus_run["ref"]
    outs = minilm_corpus_run["outs"]
    assert len(outs) == len(ref) == 500
    got = torch.stack([embedding(o) for o in outs])
    assert got.shape == ref.shape == (500, 384)
    # Unit vectors, like ST's Normalize module produces.
    norms = got.norm(dim=-1)
    assert (norms - 1).abs().max().item() < 1e-4
    cos = F.cosine_similarity(got, ref, dim=-1)
    worst = int(cos.argmin())
    assert cos.min().item() >= 0.99999, f"text #{worst}: cosine {cos[worst].item():.7f}"
    assert (got - ref).abs().max().item() <= 1e-4


def test_corpus_token_ids_match_tokenizer(minilm_corpus_run, minilm_tokenizer):
    texts = minilm_corpus_run["texts"]
    outs = minilm_corpus_run["outs"]
    saw_truncated = False
    for text, out in zip(texts, outs):
        expected = minilm_tokenizer(text, truncation=True, max_length=MAX_LEN)["input_ids"]
        assert list(out.prompt_token_ids) == expected
        assert out.num_prompt_tokens == len(expected)
        saw_truncated |= len(minilm_tokenizer(text)["input_ids"]) > MAX_LEN
    # The corpus slice must really exercise truncate_prompt_tokens=-1.
    assert saw_truncated


def test_dimensions_matryoshka(minilm_engine, minilm_corpus_run):
    texts = minilm_corpus_run["texts"][:40]
    ref = minilm_corpus_run["ref"][:40]
    outs = minilm_engine.embed(texts, dimensions=128, truncate_prompt_tokens=-1)
    got = torch.stack([embedding(o) for o in outs])
    expected = F.normalize(ref[:, :128], dim=-1)
    assert_close(got, expected, what="dimensions=128")


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_bundled_names_load_offline(Engine, name, minilm_st, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    eng = Engine(name)
    texts = ["offline loading works", "a second, somewhat longer sentence about embeddings"]
    got = torch.stack([embedding(o) for o in eng.embed(texts)])
    ref = minilm_st.encode(texts, convert_to_tensor=True).float().cpu()
    assert_close(got, ref, what=name)


def test_prompt_forms_agree(minilm_engine, minilm_tokenizer, minilm_hf):
    texts = ["The quick brown fox.", "jumps over the lazy dog, twice!"]
    ids = [minilm_tokenizer(t)["input_ids"] for t in texts]
    by_text = minilm_engine.embed(texts)
    by_ids = minilm_engine.embed(ids)
    single_str = minilm_engine.embed(texts[0])
    single_ids = minilm_engine.embed(ids[0])
    assert len(by_text) == len(by_ids) == 2
    assert len(single_str) == 1 and len(single_ids) == 1
    for i in range(2):
        ref = minilm_embed(minilm_hf, ids[i])
        assert list(by_text[i].prompt_token_ids) == ids[i]
        assert list(by_ids[i].prompt_token_ids) == ids[i]
        assert_close(embedding(by_text[i]), ref, what=f"text {i}")
        assert_close(embedding(by_ids[i]), ref, what=f"ids {i}")
    assert_close(embedding(single_str[0]), minilm_embed(minilm_hf, ids[0]), what="single str")
    assert_close(embedding(single_ids[0]), minilm_embed(minilm_hf, ids[0]), what="single ids")


def test_token_ids_used_as_given(minilm_engine, minilm_hf):
    # No [CLS]/[SEP] added to an id prompt: the engine must embed exactly these ids.
    ids = [7592, 2088, 2003, 1037, 3231]
    out = minilm_engine.embed([ids])[0]
    assert list(out.prompt_token_ids) == ids
    assert out.num_prompt_tokens == len(ids)
    assert_close(embedding(out), minilm_embed(minilm_hf, ids), what="raw ids")


def test_empty_string_allowed(minilm_engine, minilm_st, minilm_tokenizer):
    out = minilm_engine.embed([""])
    assert len(out) == 1
    assert list(out[0].prompt_token_ids) == minilm_tokenizer("")["input_ids"]
    ref = minilm_st.encode([""], convert_to_tensor=True).float().cpu()[0]
    assert_close(embedding(out[0]), ref, what="empty string")


def test_empty_prompt_list_returns_empty(minilm_engine):
    assert list(minilm_engine.embed([])) == []


def test_encode_embed_matches_embed(minilm_engine, minilm_st):
    texts = ["encode with pooling_task=embed", "short"]
    outs = minilm_engine.encode(texts, pooling_task="embed")
    ref = minilm_st.encode(texts, convert_to_tensor=True).float().cpu()
    for i, o in enumerate(outs):
        d = o.outputs.data
        assert isinstance(d, torch.Tensor)
        assert not d.requires_grad, "pooled outputs must not carry an autograd graph"
        assert tuple(d.shape) == (384,)
        assert_close(d, ref[i], what=f"encode embed {i}")


# ----------------------------------------------------------------------------------------------
# Bi-encoder score
# ----------------------------------------------------------------------------------------------
def test_bi_encoder_score(minilm_engine, minilm_st):
    q = "how do I read a file line by line"
    docs = ["Open the file and iterate over it.", "Bananas are rich in potassium.", "Use readline in a loop."]
    ref_q = minilm_st.encode([q], convert_to_tensor=True).float().cpu()
    ref_d = minilm_st.encode(docs, convert_to_tensor=True).float().cpu()
    expected = F.cosine_similarity(ref_q, ref_d, dim=-1)

    one_vs_n = minilm_engine.score(q, docs)
    assert len(one_vs_n) == 3
    assert_close([o.outputs.score for o in one_vs_n], expected, what="1-vs-N")

    one_vs_one = minilm_engine.score(q, docs[1])
    assert len(one_vs_one) == 1
    assert abs(one_vs_one[0].outputs.score - expected[1].item()) <= ATOL

    qs = [q, "fruit nutrition", "loops"]
    ref_qs = minilm_st.encode(qs, convert_to_tensor=True).float().cpu()
    pairwise = minilm_engine.score(qs, docs)
    assert len(pairwise) == 3
    assert_close([o.outputs.score for o in pairwise], F.cosine_similarity(ref_qs, ref_d, dim=-1), what="N-vs-N")


def test_bi_encoder_rerank(minilm_engine, minilm_st):
    q = "python list sorting"
    docs = ["sorted() returns a new sorted list", "The weather is nice", "list.sort() sorts in place", "cats"]
    ref_q = minilm_st.encode([q], convert_to_tensor=True).float().cpu()
    ref_d = minilm_st.encode(docs, convert_to_tensor=True).float().cpu()
    expected = F.cosine_similarity(ref_q, ref_d, dim=-1)
    res = minilm_engine.rerank(q, docs)
    assert [r.index for r in res] == torch.argsort(expected, descending=True).tolist()
    for r in res:
        assert abs(r.relevance_score - expected[r.index].item()) <= ATOL
        assert r.document is not None


# ----------------------------------------------------------------------------------------------
# Batch invariance
# ----------------------------------------------------------------------------------------------
def test_batch_invariance_minilm(minilm_engine, corpus, minilm_tokenizer):
    # 64 inputs of very different lengths (sorted shortest .. longest, then interleaved).
    by_len = sorted(corpus[:300], key=lambda t: len(minilm_tokenizer(t)["input_ids"]))
    picks = by_len[:: max(1, len(by_len) // 64)][:64]
    batch = picks[::2] + picks[1::2][::-1]
    assert len(batch) == 64
    lens = [min(len(minilm_tokenizer(t)["input_ids"]), MAX_LEN) for t in batch]
    assert max(lens) >= 4 * min(lens)
    together = minilm_engine.embed(batch, truncate_prompt_tokens=-1)
    worst = 0.0
    for text, out in zip(batch, together):
        alone = minilm_engine.embed([text], truncate_prompt_tokens=-1)[0]
        worst = max(worst, (embedding(alone) - embedding(out)).abs().max().item())
    assert worst <= 1e-5, f"batch vs alone max abs diff {worst:.3e}"
