"""Truncation, over-length inputs and chunked processing on MiniLM (max_model_len 256)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from refs import assert_clean_error, assert_close, embedding, mean_pool, minilm_embed

MAX_LEN = 256


@pytest.fixture(scope="session")
def long_texts(corpus, minilm_tokenizer):
    """Corpus texts longer than 256 tokens (and one made longer than 600 by joining)."""
    longs = [t for t in corpus if len(minilm_tokenizer(t)["input_ids"]) > MAX_LEN]
    assert len(longs) >= 3, "corpus slice has too few texts over 256 tokens"
    joined = " ".join(corpus[:200])
    return longs, joined


def _left_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    tok.truncation_side = "left"
    return tok


@pytest.mark.parametrize("k", [8, 33])
def test_truncate_prompt_tokens_right(minilm_engine, minilm_tokenizer, minilm_hf, long_texts, k):
    texts = long_texts[0][:2] + ["a short sentence that still has more than eight tokens in it"]
    outs = minilm_engine.embed(texts, truncate_prompt_tokens=k)
    for text, out in zip(texts, outs):
        ids = minilm_tokenizer(text, truncation=True, max_length=k)["input_ids"]
        assert list(out.prompt_token_ids) == ids
        assert out.num_prompt_tokens == len(ids) <= k
        assert ids[0] == minilm_tokenizer.cls_token_id and ids[-1] == minilm_tokenizer.sep_token_id
        assert_close(embedding(out), minilm_embed(minilm_hf, ids), what=f"truncate {k}")


def test_truncate_prompt_tokens_left(minilm_engine, minilm_path, minilm_hf, long_texts):
    k = 20
    tok_left = _left_tokenizer(minilm_path)
    texts = long_texts[0][:2]
    outs = minilm_engine.embed(texts, truncate_prompt_tokens=k, truncation_side="left")
    for text, out in zip(texts, outs):
        ids = tok_left(text, truncation=True, max_length=k)["input_ids"]
        full = tok_left(text)["input_ids"]
        # Left truncation keeps [CLS] and the end of the text.
        assert ids[1:] == full[-(k - 1):]
        assert list(out.prompt_token_ids) == ids
        assert_close(embedding(out), minilm_embed(minilm_hf, ids), what="left truncation")


def test_truncate_minus_one_is_model_max(minilm_engine, minilm_tokenizer, minilm_hf, long_texts):
    text = long_texts[0][0]
    out = minilm_engine.embed([text], truncate_prompt_tokens=-1)[0]
    ids = minilm_tokenizer(text, truncation=True, max_length=MAX_LEN)["input_ids"]
    assert len(ids) == MAX_LEN
    assert list(out.prompt_token_ids) == ids
    assert_close(embedding(out), minilm_embed(minilm_hf, ids), what="truncate -1")


def test_truncate_longer_than_input_is_noop(minilm_engine, minilm_tokenizer, minilm_hf):
    text = "only a handful of tokens"
    out = minilm_engine.embed([text], truncate_prompt_tokens=100)[0]
    ids = minilm_tokenizer(text)["input_ids"]
    assert list(out.prompt_token_ids) == ids
    assert_close(embedding(out), minilm_embed(minilm_hf, ids), what="no-op truncation")


def test_over_length_raises(minilm_engine, minilm_tokenizer, long_texts):
    text = long_texts[0][0]
    n = len(minilm_tokenizer(text)["input_ids"])
    assert n > MAX_LEN
    exc = assert_clean_error(lambda: minilm_engine.embed([text]), str(n), str(MAX_LEN))
    assert isinstance(exc, ValueError)


def test_over_length_token_ids_raise(minilm_engine):
    ids = [101] + [2003] * 300 + [102]
    exc = assert_clean_error(lambda: minilm_engine.embed([ids]), str(len(ids)), str(MAX_LEN))
    assert isinstance(exc, ValueError)


def test_over_length_in_batch_raises(minilm_engine, long_texts):
    exc = assert_clean_error(lambda: minilm_engine.embed(["short one", long_texts[0][0], "another"]), str(MAX_LEN))
    assert isinstance(exc, ValueError)


# ----------------------------------------------------------------------------------------------
# Chunked processing
# ----------------------------------------------------------------------------------------------
def _chunked_reference(model, ids: list[int], chunk: int) -> torch.Tensor:
    pooled = []
    weights = []
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        pooled.append(mean_pool(model, part))
        weights.append(len(part))
    w = torch.tensor(weights, dtype=torch.float32)
    avg = (torch.stack(pooled) * w[:, None]).sum(0) / w.sum()
    return F.normalize(avg, dim=-1)


@pytest.fixture(scope="session")
def chunked_engine(Engine, PoolerConfig, minilm_path):
    return Engine(str(minilm_path), pooler_config=PoolerConfig(enable_chunked_processing=True, max_embed_len=1024))


def test_chunked_processing_matches_reference(chunked_engine, minilm_tokenizer, minilm_hf, long_texts):
    texts = [t for t in long_texts[0] if len(minilm_tokenizer(t)["input_ids"]) <= 1024][:2]
    assert texts, "no corpus text between 257 and 1024 tokens"
    joined = long_texts[1]
    joined_ids = minilm_tokenizer(joined)["input_ids"]
    # A text of 600..1024 tokens: cut at a word boundary on the tokenizer's side.
    words = joined.split()
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(minilm_tokenizer(" ".join(words[:mid]))["input_ids"]) <= 700:
            lo = mid
        else:
            hi = mid - 1
    mid_text = " ".join(words[:lo])
    texts.append(mid_text)
    assert len(joined_ids) > 1024
    outs = chunked_engine.embed(texts)
    for text, out in zip(texts, outs):
        ids = minilm_tokenizer(text)["input_ids"]
        assert len(ids) > MAX_LEN
        assert list(out.prompt_token_ids) == ids
        ref = _chunked_reference(minilm_hf, ids, MAX_LEN)
        assert_close(embedding(out), ref, what=f"chunked {len(ids)} tokens")
    # The 600+ token text really was split into 3 chunks, the last one partial.
    assert len(minilm_tokenizer(mid_text)["input_ids"]) > 2 * MAX_LEN


def test_chunked_short_input_unchanged(chunked_engine, minilm_tokenizer, minilm_hf):
    text = "short inputs are a single chunk"
    out = chunked_engine.embed([text])[0]
    assert_close(embedding(out), minilm_embed(minilm_hf, minilm_tokenizer(text)["input_ids"]), what="short chunked")


def test_chunked_over_max_embed_len_raises(chunked_engine, minilm_tokenizer, long_texts):
    joined = long_texts[1]
    n = len(minilm_tokenizer(joined)["input_ids"])
    assert n > 1024
    exc = assert_clean_error(lambda: chunked_engine.embed([joined]), "1024")
    assert isinstance(exc, ValueError)


@pytest.mark.parametrize("which", ["minilm", "qwen2", "llama"])
def test_the_direct_rust_tokenizer_path_equals_the_transformers_call(which, corpus, minilm_path, decoder_left_path, llama_path):
    """Texts are tokenized by the Rust tokenizer directly (no per-text Python conversion); every
    corpus text, with and without special tokens, untruncated and truncated on either side, gets
    exactly the ids transformers' tokenizer call gives."""
    from transformers import AutoTokenizer

    from poolworker.engine.prompts import PromptTokenizer, Truncation

    path = {"minilm": minilm_path, "qwen2": decoder_left_path, "llama": llama_path}[which]
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    prompts = PromptTokenizer(tokenizer, vocab_size=len(tokenizer))
    assert prompts._backend is not None, "the fast path must be the one under test"
    texts = corpus[:1500]
    for max_tokens, side in ((None, "right"), (24, "right"), (24, "left"), (3, "left")):
        for special in (True, False):
            trunc = Truncation(max_tokens, side, special_tokens=special)
            got = prompts._call(texts, None, trunc)["input_ids"]
            tokenizer.truncation_side = side
            kwargs = {"truncation": max_tokens is not None, "add_special_tokens": special, "verbose": False}
            if max_tokens is not None:
                kwargs["max_length"] = max_tokens
            expected = tokenizer(texts, **kwargs)["input_ids"]
            assert [list(ids) for ids in got] == [list(ids) for ids in expected], (max_tokens, side, special)
